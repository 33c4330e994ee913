//! How many entries the user-space-written maps hold, chosen when `xlb run` creates them
//! (`--max-services`, `--max-frontends`, `--max-backends`; the connection tables have
//! `--conntrack-size`). The kernel programs never read a capacity: every lookup is bounded by
//! the map itself, so the sizes in the object are only the defaults the loader overrides.
//!
//! A pinned map keeps the size it was created with: a restart with another value reuses the
//! running datapath (and its connections) at its old size, and says so
//! ([`Capacity::differences`]); the new size takes effect once the pins are gone (`xlb down`).
use std::os::fd::AsFd as _;

use anyhow::Context as _;
use aya::maps::IterableMap as _;
use lb_common::maps::{
    MAP_BACKEND_STATS, MAP_BACKENDS, MAP_FRONTEND_STATS, MAP_FRONTENDS, MAP_LOCAL_BACKENDS,
    MAP_MAGLEV, MAP_SVC_BACKENDS, MAX_BACKENDS, MAX_FRONTENDS, MAX_SERVICES,
};

use crate::{datapath::maps::Maps, sys::bpf};

/// The largest value each `--max-*` flag accepts: ids stay far from `NO_BACKEND` (`u32::MAX`),
/// and `XLB_SVC_BACKENDS` (twice the backends) still fits a `u32`.
pub const MAX_CAPACITY: u32 = 1 << 24;

/// The capacities of the maps user space writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Service ports (`--max-services`): entries of `XLB_MAGLEV`, one table each.
    pub services: u32,
    /// Frontends (`--max-frontends`): `XLB_FRONTENDS` and `XLB_FRONTEND_STATS`.
    pub frontends: u32,
    /// Backend ids (`--max-backends`): `XLB_BACKENDS`, `XLB_BACKEND_STATS`,
    /// `XLB_LOCAL_BACKENDS`, and twice that for `XLB_SVC_BACKENDS` (a pod serving several
    /// Service ports is one backend id per port and protocol, but one member per Service).
    pub backends: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        Capacity {
            services: MAX_SERVICES,
            frontends: MAX_FRONTENDS,
            backends: MAX_BACKENDS,
        }
    }
}

/// One sized map: its name, its entries, the flag that sets them.
pub type SizedMap = (&'static str, u32, &'static str);

impl Capacity {
    /// Refuses a value the maps cannot be created with, naming its flag.
    pub fn validate(&self) -> anyhow::Result<()> {
        for (flag, v) in [
            ("--max-services", self.services),
            ("--max-frontends", self.frontends),
            ("--max-backends", self.backends),
        ] {
            if !(1..=MAX_CAPACITY).contains(&v) {
                anyhow::bail!("{flag} {v}: must be 1..={MAX_CAPACITY}");
            }
        }
        Ok(())
    }

    /// `max_entries` of every map these capacities size.
    pub fn sized_maps(&self) -> [SizedMap; 7] {
        [
            (MAP_MAGLEV, self.services, "--max-services"),
            (MAP_FRONTENDS, self.frontends, "--max-frontends"),
            (MAP_FRONTEND_STATS, self.frontends, "--max-frontends"),
            (MAP_BACKENDS, self.backends, "--max-backends"),
            (MAP_BACKEND_STATS, self.backends, "--max-backends"),
            (MAP_LOCAL_BACKENDS, self.backends, "--max-backends"),
            (MAP_SVC_BACKENDS, 2 * self.backends, "--max-backends"),
        ]
    }

    /// `XLB_SVC_BACKENDS`' entries.
    pub fn members(&self) -> u32 {
        2 * self.backends
    }

    /// What the maps hold: the smallest capacity among the maps each flag sizes (they agree
    /// unless an earlier layout's datapath was taken over with other sizes).
    pub fn of(maps: &Maps) -> anyhow::Result<Capacity> {
        let entries = |name: &str, fd: std::os::fd::BorrowedFd<'_>| -> anyhow::Result<u32> {
            Ok(bpf::map_shape(fd)
                .with_context(|| format!("reading the size of {name}"))?
                .max_entries)
        };
        let frontends = entries(MAP_FRONTENDS, maps.frontends.map().fd().as_fd())?.min(entries(
            MAP_FRONTEND_STATS,
            maps.frontend_stats.map().fd().as_fd(),
        )?);
        let backends = [
            entries(MAP_BACKENDS, maps.backends.map().fd().as_fd())?,
            entries(MAP_BACKEND_STATS, maps.backend_stats.map().fd().as_fd())?,
            entries(MAP_LOCAL_BACKENDS, maps.local_backends.map().fd().as_fd())?,
            entries(MAP_SVC_BACKENDS, maps.svc_backends.map().fd().as_fd())? / 2,
        ]
        .into_iter()
        .min()
        .unwrap_or(0);
        Ok(Capacity {
            services: entries(MAP_MAGLEV, maps.maglev_fd.as_fd())?,
            frontends,
            backends,
        })
    }

    /// Where the maps in use (`actual`, e.g. pinned by an earlier run) differ from what the
    /// flags asked for (`self`): one sentence per flag.
    pub fn differences(&self, actual: &Capacity) -> Vec<String> {
        [
            ("--max-services", self.services, actual.services),
            ("--max-frontends", self.frontends, actual.frontends),
            ("--max-backends", self.backends, actual.backends),
        ]
        .into_iter()
        .filter(|(_, want, have)| want != have)
        .map(|(flag, want, have)| {
            format!(
                "{flag} is {want}, but the running datapath's maps were created with {have} \
                 entries and keep that size (the datapath and its connections are reused): \
                 {have} is the capacity in force; the new value takes effect after `xlb down` \
                 (which drops open connections) and a new start"
            )
        })
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_names_the_flag() {
        let c = Capacity {
            backends: 0,
            ..Capacity::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("--max-backends 0"), "{e}");
        let c = Capacity {
            services: MAX_CAPACITY + 1,
            ..Capacity::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("--max-services")
        );
        assert!(Capacity::default().validate().is_ok());
    }

    #[test]
    fn differences_name_each_changed_flag() {
        let want = Capacity {
            services: 100,
            ..Capacity::default()
        };
        assert!(want.differences(&want).is_empty());
        let d = want.differences(&Capacity::default());
        assert_eq!(d.len(), 1);
        assert!(d[0].starts_with("--max-services is 100"), "{}", d[0]);
        assert!(d[0].contains(&MAX_SERVICES.to_string()), "{}", d[0]);
    }

    #[test]
    fn every_sized_map_is_a_map_of_the_datapath() {
        for (name, entries, flag) in Capacity::default().sized_maps() {
            assert!(lb_common::maps::ALL_MAPS.contains(&name), "{name}");
            assert!(entries > 0 && flag.starts_with("--max-"));
        }
    }
}
