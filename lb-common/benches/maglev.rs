//! Build time of Maglev tables.
//!
//! `cargo bench -p lb-common --features std --bench maglev -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use lb_common::maglev::{MaglevBackend, build_table};

/// `n` distinct backends in 198.18.0.0/15 (pods on port 8080), with the given weight rule.
fn backends(n: u32, weight: impl Fn(u32) -> u32) -> Vec<MaglevBackend> {
    (0..n)
        .map(|i| MaglevBackend::new(0xC612_0000 + i * 7 + 1, 8080, weight(i)))
        .collect()
}

fn build(c: &mut Criterion) {
    let mut g = c.benchmark_group("maglev_build");
    for m in [16_381u32, 65_537] {
        for n in [100u32, 1000] {
            let equal = backends(n, |_| 1);
            g.bench_with_input(
                BenchmarkId::new(format!("equal/n={n}"), m),
                &equal,
                |b, bs| b.iter(|| build_table(black_box(bs), black_box(m)).unwrap()),
            );
            // Mixed weights 1..=4 with every tenth backend draining.
            let weighted = backends(n, |i| if i % 10 == 9 { 0 } else { 1 + i % 4 });
            g.bench_with_input(
                BenchmarkId::new(format!("weighted/n={n}"), m),
                &weighted,
                |b, bs| b.iter(|| build_table(black_box(bs), black_box(m)).unwrap()),
            );
            // One backend 1000 times heavier than the rest: the heap path.
            let skewed = backends(n, |i| if i == 0 { 1000 } else { 1 });
            g.bench_with_input(
                BenchmarkId::new(format!("skewed/n={n}"), m),
                &skewed,
                |b, bs| b.iter(|| build_table(black_box(bs), black_box(m)).unwrap()),
            );
        }
    }
    g.finish();
}

criterion_group!(benches, build);
criterion_main!(benches);
