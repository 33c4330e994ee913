//! `xlb-bench maglev`: the Maglev tables xlb programs (`lb_common::maglev`, the same builder the
//! datapath's tables come from): balance (max / mean slots per backend), disruption (share of
//! slots, hence of new flows' hash space, that move when 1 of N backends leaves or one joins,
//! against the minimum 1/N or 1/(N+1)), and build time, for M = 16381 and 65537 and N = 10,
//! 100, 1000. Pure computation, no root needed.
//!
//! The *ladder* rows measure the sizes xlb actually gives a Service
//! (`lb_common::maglev::table_size_for`): balance at that size, and the share of flow hashes
//! whose backend changes when one backend leaves, with and without a step of the ladder between
//! the two sizes (hash space sampled, since slot positions mean nothing across sizes), and the
//! bytes of the inner map.

use std::net::Ipv4Addr;
use std::time::Instant;

use anyhow::{Result, anyhow};
use lb_common::maglev::{MaglevBackend, MaglevTable, build_table};

use crate::say;
use crate::scenarios::{Machine, median};

#[derive(Clone, Debug, serde::Serialize)]
pub struct MaglevRow {
    pub m: u32,
    pub n: u32,
    /// Most slots any backend owns, over the mean M/N.
    pub max_over_mean: f64,
    /// Fewest slots, over the mean.
    pub min_over_mean: f64,
    /// Share of all slots whose backend changed when backend `n/2` left.
    pub leave_moved: f64,
    /// Of those, the share that did not belong to the backend that left (needless moves).
    pub leave_extra: f64,
    pub leave_min: f64,
    /// Share of all slots that changed when one backend joined.
    pub join_moved: f64,
    pub join_min: f64,
    /// Median build time of the full table, milliseconds.
    pub build_ms: f64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct MaglevReport {
    pub scenario: &'static str,
    pub machine: Machine,
    pub rows: Vec<MaglevRow>,
    pub ladder: Vec<LadderRow>,
}

/// One backend of `n` leaves a Service whose size follows the ladder under `cap`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LadderRow {
    pub cap: u32,
    pub n: u32,
    /// Table size with `n` backends, and with `n - 1`.
    pub m_before: u32,
    pub m_after: u32,
    /// Most slots any backend owns over the mean, at `m_before`.
    pub max_over_mean: f64,
    /// Share of sampled flow hashes whose backend changed.
    pub moved: f64,
    /// The minimum: the leaving backend's share, 1/n.
    pub moved_min: f64,
    /// Bytes of the inner map's elements (header, ids, 16-bit slots) at `m_before`.
    pub table_bytes: u64,
}

/// Flow hashes sampled per ladder row (an odd stride over the 32-bit space).
const HASH_SAMPLES: u32 = 1 << 20;

pub fn ladder_row(n: u32, cap: u32) -> Result<LadderRow> {
    use lb_common::maglev::table_size_for;
    let all = backends(n);
    let gone = all[(n / 2) as usize].identity();
    let fewer: Vec<MaglevBackend> = all
        .iter()
        .copied()
        .filter(|b| b.identity() != gone)
        .collect();
    let (m_before, m_after) = (table_size_for(&all, cap), table_size_for(&fewer, cap));
    let (before, after) = (build(&all, m_before)?, build(&fewer, m_after)?);
    let stride = (u32::MAX / HASH_SAMPLES) | 1;
    let moved = (0..HASH_SAMPLES)
        .map(|i| i.wrapping_mul(stride))
        .filter(|&h| {
            before.lookup(h).map(|b| b.identity()) != after.lookup(h).map(|b| b.identity())
        })
        .count();
    let counts = before.slot_counts();
    let mean = m_before as f64 / n as f64;
    let ids: Vec<u32> = (0..n).collect();
    let words = lb_common::maglev::encode(&before, &ids).map_err(|e| anyhow!("{e}"))?;
    Ok(LadderRow {
        cap,
        n,
        m_before,
        m_after,
        max_over_mean: *counts.iter().max().unwrap_or(&0) as f64 / mean,
        moved: moved as f64 / HASH_SAMPLES as f64,
        moved_min: 1.0 / n as f64,
        table_bytes: words.len() as u64 * 4,
    })
}

/// The ladder cases: 100 backends at three caps (no step: 100 and 99 need the same size), and
/// removals that cross a step (82 -> 81 and 41 -> 40 under the default cap, 11 -> 10).
pub const LADDER_CASES: [(u32, u32); 7] = [
    (100, 16_381),
    (100, 4_093),
    (100, 65_521),
    (82, 16_381),
    (41, 16_381),
    (11, 16_381),
    (10, 16_381),
];

fn backends(n: u32) -> Vec<MaglevBackend> {
    (0..n)
        .map(|i| {
            let a = Ipv4Addr::new(198, 18, 16 + (i / 250) as u8, 1 + (i % 250) as u8);
            MaglevBackend::from_ipv4(a, 8080, 1)
        })
        .collect()
}

/// Each slot's backend as its address and port (comparable across tables).
fn owners(t: &MaglevTable) -> Vec<Option<(u32, u16)>> {
    (0..t.size())
        .map(|s| t.backend_at(s).map(|b| b.identity()))
        .collect()
}

fn build(b: &[MaglevBackend], m: u32) -> Result<MaglevTable> {
    build_table(b, m).map_err(|e| anyhow!("{e}"))
}

pub fn row(m: u32, n: u32, timing_runs: usize) -> Result<MaglevRow> {
    let all = backends(n);
    let mut times = Vec::new();
    let mut table = None;
    for _ in 0..timing_runs.max(1) {
        let t0 = Instant::now();
        let t = build(&all, m)?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
        table = Some(t);
    }
    let table = table.expect("built at least once");
    let counts = table.slot_counts();
    let mean = m as f64 / n as f64;
    let max = *counts.iter().max().unwrap_or(&0) as f64;
    let min = *counts.iter().min().unwrap_or(&0) as f64;
    let before = owners(&table);

    let gone = all[(n / 2) as usize].identity();
    let fewer: Vec<MaglevBackend> = all
        .iter()
        .copied()
        .filter(|b| b.identity() != gone)
        .collect();
    let after = owners(&build(&fewer, m)?);
    let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    let extra = before
        .iter()
        .zip(&after)
        .filter(|(a, b)| a != b && **a != Some(gone))
        .count();

    let mut more = all.clone();
    more.push(MaglevBackend::from_ipv4(
        Ipv4Addr::new(198, 18, 15, 1),
        8080,
        1,
    ));
    let joined = owners(&build(&more, m)?);
    let join_moved = before.iter().zip(&joined).filter(|(a, b)| a != b).count();

    Ok(MaglevRow {
        m,
        n,
        max_over_mean: max / mean,
        min_over_mean: min / mean,
        leave_moved: moved as f64 / m as f64,
        leave_extra: extra as f64 / m as f64,
        leave_min: 1.0 / n as f64,
        join_moved: join_moved as f64 / m as f64,
        join_min: 1.0 / (n + 1) as f64,
        build_ms: median(&times),
    })
}

pub fn run(ms: &[u32], ns: &[u32], timing_runs: usize) -> Result<MaglevReport> {
    let mut rows = Vec::new();
    for &m in ms {
        for &n in ns {
            rows.push(row(m, n, timing_runs)?);
        }
    }
    let ladder = LADDER_CASES
        .iter()
        .map(|&(n, cap)| ladder_row(n, cap))
        .collect::<Result<Vec<_>>>()?;
    Ok(MaglevReport {
        scenario: "maglev",
        machine: Machine::this(),
        rows,
        ladder,
    })
}

pub fn print(rep: &MaglevReport) {
    say!("maglev: balance, disruption and build time (equal weights; lb_common::maglev)");
    say!(
        "{:>6} {:>5} {:>9} {:>9} {:>11} {:>9} {:>11} {:>9} {:>10}",
        "M",
        "N",
        "max/mean",
        "min/mean",
        "leave moved",
        "min 1/N",
        "join moved",
        "min",
        "build ms"
    );
    for r in &rep.rows {
        say!(
            "{:>6} {:>5} {:>9.3} {:>9.3} {:>10.2}% {:>8.2}% {:>10.2}% {:>8.2}% {:>10.3}",
            r.m,
            r.n,
            r.max_over_mean,
            r.min_over_mean,
            r.leave_moved * 100.0,
            r.leave_min * 100.0,
            r.join_moved * 100.0,
            r.join_min * 100.0,
            r.build_ms
        );
    }
    say!(
        "maglev: the size ladder (M = table_size_for(backends, cap)); one of N leaves; moved = share of flow hashes whose backend changed"
    );
    say!(
        "{:>6} {:>5} {:>7} {:>7} {:>9} {:>9} {:>9} {:>11}",
        "cap",
        "N",
        "M",
        "M after",
        "max/mean",
        "moved",
        "min 1/N",
        "table bytes"
    );
    for r in &rep.ladder {
        say!(
            "{:>6} {:>5} {:>7} {:>7} {:>9.3} {:>8.2}% {:>8.2}% {:>11}",
            r.cap,
            r.n,
            r.m_before,
            r.m_after,
            r.max_over_mean,
            r.moved * 100.0,
            r.moved_min * 100.0,
            r.table_bytes
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_table_properties() {
        let r = row(251, 10, 1).unwrap();
        assert!(r.max_over_mean >= 1.0 && r.min_over_mean <= 1.0);
        // At least the departed backend's share moves; Maglev keeps the rest mostly put.
        assert!(r.leave_moved >= r.leave_min * 0.5, "{r:?}");
        assert!(r.leave_moved < 0.5, "{r:?}");
        assert!(r.join_moved > 0.0 && r.join_moved < 0.5, "{r:?}");
    }

    #[test]
    fn ladder_rows() {
        // No step: Maglev's usual small disruption.
        let r = ladder_row(10, 16_381).unwrap();
        assert_eq!((r.m_before, r.m_after), (1_021, 1_021));
        assert!(r.moved >= r.moved_min * 0.9 && r.moved < 0.3, "{r:?}");
        // A step: the slot of most hashes changes, and with it their backend.
        let r = ladder_row(11, 16_381).unwrap();
        assert_eq!((r.m_before, r.m_after), (2_039, 1_021));
        assert!(r.moved > 0.5, "{r:?}");
        // 16-bit slots: header and ids, then two bytes per slot.
        assert_eq!(
            r.table_bytes,
            4 * 2 * lb_common::maps::maglev_elems(2_039, 11) as u64
        );
    }
}
