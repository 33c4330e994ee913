//! Every datapath counter read at one instant, and rates between two readings: what `xlb stats
//! --interval`, `xlb top` and `/metrics` share.
use std::{collections::HashMap, time::Instant};

use lb_common::maps::{Counter, Reason};

use crate::datapath::{maps::Maps, reconcile::Snapshot};

/// How a global counter's reason reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ReasonClass {
    /// The packet was handed to the kernel untouched (`pass_*`).
    Passed,
    /// The packet was dropped (`drop_*`, and failures that drop).
    Dropped,
    /// Everything else: forwarding paths, conntrack and reply events. Not exclusive (a
    /// forwarded packet also counts a conntrack event).
    Event,
}

impl ReasonClass {
    pub fn of(name: &str) -> ReasonClass {
        if name.starts_with("pass_") {
            ReasonClass::Passed
        } else if name.starts_with("drop_") {
            ReasonClass::Dropped
        } else {
            ReasonClass::Event
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            ReasonClass::Passed => "passed to the kernel",
            ReasonClass::Dropped => "dropped",
            ReasonClass::Event => "forwarding, conntrack and reply events",
        }
    }
}

/// The global counters, in `Reason::ALL` order.
pub fn global(maps: &Maps) -> anyhow::Result<Vec<(&'static str, u64)>> {
    Reason::ALL
        .iter()
        .map(|r| Ok((r.name(), maps.global(*r)?)))
        .collect()
}

/// One reading.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Instant,
    pub global: Vec<(&'static str, u64)>,
    /// By frontend id, for the frontends in the snapshot.
    pub frontends: HashMap<u32, Counter>,
    /// By backend id, for the backends in the snapshot.
    pub backends: HashMap<u32, Counter>,
}

/// Reads the counters of everything in `snap` (never the connection table: connections come
/// from the census, [`crate::observe::census`]).
pub fn read(maps: &Maps, snap: &Snapshot) -> anyhow::Result<Sample> {
    let at = Instant::now();
    let global = global(maps)?;
    // Batched reads of ids 0..=max (ids are allocated densely from 0).
    let max_fe = snap
        .services
        .iter()
        .flat_map(|s| s.frontends.iter().map(|f| f.frontend_id))
        .max();
    let max_be = snap
        .services
        .iter()
        .flat_map(|s| s.backends.iter().map(|b| b.backend_id))
        .max();
    let fe_all = max_fe.map_or(Ok(Vec::new()), |m| maps.frontend_counters(m + 1))?;
    let be_all = max_be.map_or(Ok(Vec::new()), |m| maps.backend_counters(m + 1))?;
    let mut frontends = HashMap::new();
    let mut backends = HashMap::new();
    for s in &snap.services {
        for f in &s.frontends {
            let c = fe_all
                .get(f.frontend_id as usize)
                .copied()
                .unwrap_or_default();
            frontends.insert(f.frontend_id, c);
        }
        for b in &s.backends {
            let c = be_all
                .get(b.backend_id as usize)
                .copied()
                .unwrap_or_default();
            backends.insert(b.backend_id, c);
        }
    }
    Ok(Sample {
        at,
        global,
        frontends,
        backends,
    })
}

/// `(cur - prev) / seconds`; a counter that went backwards (an id reused and reset) counts from 0.
pub fn per_sec(prev: u64, cur: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        return 0.0;
    }
    let d = if cur >= prev { cur - prev } else { cur };
    d as f64 / secs
}

impl Sample {
    pub fn global_value(&self, name: &str) -> u64 {
        self.global
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, v)| *v)
    }

    /// Seconds from `prev` to `self`.
    pub fn secs_since(&self, prev: &Sample) -> f64 {
        self.at.duration_since(prev.at).as_secs_f64()
    }

    /// Per-second rate of each global counter since `prev`.
    pub fn global_rates(&self, prev: &Sample) -> Vec<(&'static str, f64)> {
        let dt = self.secs_since(prev);
        self.global
            .iter()
            .map(|(n, v)| (*n, per_sec(prev.global_value(n), *v, dt)))
            .collect()
    }

    /// Packets/s and bytes/s of frontend `id` since `prev`.
    pub fn frontend_rate(&self, prev: &Sample, id: u32) -> (f64, f64) {
        rate_of(&self.frontends, &prev.frontends, id, self.secs_since(prev))
    }

    pub fn backend_rate(&self, prev: &Sample, id: u32) -> (f64, f64) {
        rate_of(&self.backends, &prev.backends, id, self.secs_since(prev))
    }

    /// New flows/s of frontend `id` since `prev` (the datapath's exact counter).
    pub fn frontend_new_flows_rate(&self, prev: &Sample, id: u32) -> f64 {
        let c = self.frontends.get(&id).copied().unwrap_or_default();
        let p = prev.frontends.get(&id).copied().unwrap_or_default();
        per_sec(p.new_flows, c.new_flows, self.secs_since(prev))
    }
}

fn rate_of(
    cur: &HashMap<u32, Counter>,
    prev: &HashMap<u32, Counter>,
    id: u32,
    secs: f64,
) -> (f64, f64) {
    let c = cur.get(&id).copied().unwrap_or_default();
    let p = prev.get(&id).copied().unwrap_or_default();
    (
        per_sec(p.packets, c.packets, secs),
        per_sec(p.bytes, c.bytes, secs),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert_eq!(ReasonClass::of("pass_no_frontend"), ReasonClass::Passed);
        assert_eq!(ReasonClass::of("drop_no_backend"), ReasonClass::Dropped);
        assert_eq!(ReasonClass::of("forward_local"), ReasonClass::Event);
        assert_eq!(
            ReasonClass::of("conntrack_insert_failed"),
            ReasonClass::Event
        );
        // Every reason the datapath has falls in a class, and names are unique.
        let mut names: Vec<_> = Reason::ALL.iter().map(|r| r.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Reason::ALL.len());
    }

    #[test]
    fn rates() {
        assert_eq!(per_sec(10, 30, 2.0), 10.0);
        assert_eq!(per_sec(100, 5, 1.0), 5.0);
        assert_eq!(per_sec(1, 2, 0.0), 0.0);
    }
}
