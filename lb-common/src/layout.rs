//! The layout history: what this build knows of the map layouts before its own, so that it can
//! take over a datapath an older xlb pinned (see `docs/operations.md`, "Upgrade") without
//! losing its connections.
//!
//! A takeover goes map by map through the current layout's maps ([`crate::maps::ALL_MAPS`]):
//!
//! * a map the older layout did not have starts empty;
//! * a map whose record is unchanged is carried over: the same kernel map is pinned into the
//!   new directory, so the old and the new program share it and nothing is copied;
//! * a map whose record changed has an entry in [`PastLayout::changed`]: either a conversion,
//!   applied entry by entry from the old map into the new one, or [`Carry::Empty`];
//! * a map the current layout no longer has goes away with the old directory.
//!
//! Bumping [`crate::maps::LAYOUT_VERSION`] therefore means adding the previous version to
//! [`HISTORY`], listing the maps whose key or value changed. Before a carried map is shared, its
//! kernel key and value sizes are checked against [`record`], so a forgotten entry is an error
//! at takeover, never a program reading a record of another shape.
use crate::maps::*;

/// What a takeover does with one map of an older layout.
#[derive(Clone, Copy, Debug)]
pub enum Carry {
    /// The record did not change: the kernel map itself is pinned into the new directory.
    Same,
    /// The record changed: each entry is rewritten by the conversion into the new map.
    Convert(Conversion),
    /// The record changed and its entries are not worth converting (counters): the new map
    /// starts empty.
    Empty,
}

/// How to rewrite one entry of an older layout's map.
#[derive(Clone, Copy, Debug)]
pub struct Conversion {
    /// The older layout's key and value sizes, in bytes (checked against the pinned map).
    pub key_size: u32,
    pub value_size: u32,
    pub convert: ConvertFn,
}

/// Writes the entry `(old_key, old_value)` as the current layout has it; `key` and `value` come
/// zeroed and sized as [`record`] says. `now_ns` is the monotonic clock of `bpf_ktime_get_ns`, for
/// a timestamp the older record did not have.
pub type ConvertFn =
    fn(old_key: &[u8], old_value: &[u8], now_ns: u64, key: &mut [u8], value: &mut [u8]);

/// An older layout this build can take over from.
#[derive(Debug)]
pub struct PastLayout {
    /// Its [`LAYOUT_VERSION`] (the name of its pin directory).
    pub version: &'static str,
    /// The maps whose record differs from the current layout's.
    pub changed: &'static [(&'static str, Carry)],
}

impl PastLayout {
    /// What a takeover from this layout does with `map`, a map both layouts have.
    pub fn carry(&self, map: &str) -> Carry {
        self.changed
            .iter()
            .find(|(name, _)| *name == map)
            .map_or(Carry::Same, |(_, c)| *c)
    }
}

/// v4's reverse-NAT record from v3's: v4 appended `last_ns` to `RevNatValue`.
#[cfg(not(feature = "layout-next"))]
const V3_REVNAT: Carry = Carry::Convert(Conversion {
    key_size: 16,
    value_size: 8,
    convert: v3::revnat,
});

/// v5's conntrack record from v4's (and v3's and v2's, which are the same): v5 appended the
/// flow's flags (closing).
#[cfg(not(feature = "layout-next"))]
const V4_CONNTRACK: Carry = Carry::Convert(Conversion {
    key_size: 16,
    value_size: 24,
    convert: v4::conntrack,
});

/// v5's config from v4's (and older): v5 appended the SYN guard's rate and `ports_ready`,
/// both 0 until the first apply (no guard, the full frontend lookup for every packet).
#[cfg(not(feature = "layout-next"))]
const V4_CONFIG: Carry = Carry::Convert(Conversion {
    key_size: 4,
    value_size: 8,
    convert: v4::config,
});

/// The older layouts this build takes over from, newest first.
#[cfg(not(feature = "layout-next"))]
pub const HISTORY: &[PastLayout] = &[
    PastLayout {
        version: "v4",
        // v5 added five delivery counters, three flow counters and two encapsulation counters
        // to the global ones (the array grew); the flow's flags to the conntrack value (FIN/RST
        // close tracking); the SYN guard's rate and `ports_ready` to the config; and the
        // XLB_POD_IFACES (filled from the node's links), XLB_PORTS, XLB_SYN_GUARD,
        // XLB_NODE_HOPS (filled from the neighbour table) and XLB_SCRATCH (the program's
        // per-packet working memory) maps, which start empty (`ports_ready` stays 0 until the
        // first apply has filled XLB_PORTS).
        // v5 also made each Maglev inner table self-describing (header with M and the backend
        // list, 16-bit ordinal slots). The outer map's record (a map id) is the same, but the
        // inner tables it points at are not: the new map starts empty and the first apply
        // rebuilds every table from the plan. Until then new flows of a Service are dropped and
        // counted (`drop_no_table`); established flows keep their backend through conntrack.
        changed: &[
            (MAP_CONNTRACK, V4_CONNTRACK),
            (MAP_CONFIG, V4_CONFIG),
            (MAP_GLOBAL_STATS, Carry::Empty),
            (MAP_MAGLEV, Carry::Empty),
        ],
    },
    PastLayout {
        version: "v3",
        // v4 added `last_ns` to the reverse-NAT value, three counters to the global ones (the
        // array grew) and the XLB_LOCAL_BACKENDS and XLB_IFACES maps (which start empty and are
        // filled by the first apply and the attach).
        changed: &[
            (MAP_REVNAT, V3_REVNAT),
            (MAP_GLOBAL_STATS, Carry::Empty),
            (MAP_MAGLEV, Carry::Empty),
            (MAP_CONNTRACK, V4_CONNTRACK),
            (MAP_CONFIG, V4_CONFIG),
        ],
    },
    PastLayout {
        version: "v2",
        // v3 added `new_flows` to the per-CPU counters.
        changed: &[
            (MAP_FRONTEND_STATS, Carry::Empty),
            (MAP_BACKEND_STATS, Carry::Empty),
            (MAP_REVNAT, V3_REVNAT),
            (MAP_GLOBAL_STATS, Carry::Empty),
            (MAP_MAGLEV, Carry::Empty),
            (MAP_CONNTRACK, V4_CONNTRACK),
            (MAP_CONFIG, V4_CONFIG),
        ],
    },
];

/// The older layouts this build takes over from, newest first.
#[cfg(feature = "layout-next")]
pub const HISTORY: &[PastLayout] = &[PastLayout {
    version: "v5",
    changed: &[(
        MAP_CONNTRACK,
        Carry::Convert(Conversion {
            key_size: 16,
            value_size: 32,
            convert: v5::conntrack,
        }),
    )],
}];

/// The entry of `version`, if this build knows it.
pub fn past(version: &str) -> Option<&'static PastLayout> {
    HISTORY.iter().find(|p| p.version == version)
}

/// Key and value sizes, in bytes, of `map` in the current layout, as the kernel reports them
/// (an array of maps holds a 4-byte map id; a per-CPU map's value is one CPU's).
pub fn record(map: &str) -> Option<(u32, u32)> {
    const fn size<T>() -> u32 {
        core::mem::size_of::<T>() as u32
    }
    Some(match map {
        MAP_FRONTENDS => (size::<FrontendKey>(), size::<FrontendValue>()),
        MAP_LOCAL_ADDRS => (size::<LocalAddrKey>(), size::<u32>()),
        MAP_BACKENDS => (size::<u32>(), size::<Backend>()),
        MAP_MAGLEV => (size::<u32>(), size::<u32>()),
        MAP_CONNTRACK => (size::<FlowKey>(), size::<CtValue>()),
        MAP_REVNAT => (size::<FlowKey>(), size::<RevNatValue>()),
        // An LPM key: the prefix length, then the data.
        MAP_SRC_RANGES => (size::<u32>() + size::<SrcRangeKey>(), size::<u32>()),
        MAP_GLOBAL_STATS => (size::<u32>(), size::<u64>()),
        MAP_FRONTEND_STATS | MAP_BACKEND_STATS => (size::<u32>(), size::<Counter>()),
        MAP_CONFIG => (size::<u32>(), size::<Config>()),
        MAP_NODES => (size::<u32>(), size::<u32>()),
        MAP_AFFINITY => (size::<AffinityKey>(), size::<AffinityValue>()),
        MAP_SVC_BACKENDS => (size::<SvcBackendKey>(), size::<u32>()),
        MAP_LOCAL_BACKENDS => (size::<LocalBackendKey>(), size::<u32>()),
        MAP_IFACES => (size::<u32>(), size::<IfaceValue>()),
        MAP_POD_IFACES => (size::<u32>(), size::<PodIface>()),
        MAP_PORTS => (size::<u32>(), size::<u32>()),
        MAP_SYN_GUARD => (size::<u32>(), size::<SynGuardState>()),
        MAP_NODE_HOPS => (size::<u32>(), size::<NodeHop>()),
        MAP_SCRATCH => (size::<u32>(), size::<Scratch>()),
        _ => return None,
    })
}

/// Records of layout v3 that a later layout changed.
pub mod v3 {
    /// `XLB_REVNAT` of v3: `FlowKey` (16 bytes) → frontend address, port and padding (8 bytes).
    /// v4 appends `last_ns`: set to now, so a migrated live flow keeps its frontend against a
    /// tunnel packet naming another one, as a flow the new program saw would.
    pub fn revnat(old_key: &[u8], old_value: &[u8], now_ns: u64, key: &mut [u8], value: &mut [u8]) {
        key[..16].copy_from_slice(&old_key[..16]);
        value[..8].copy_from_slice(&old_value[..8]);
        value[8..16].copy_from_slice(&now_ns.to_ne_bytes());
    }
}

/// Records of layout v4 that v5 changed.
pub mod v4 {
    /// `XLB_CONNTRACK` of v4 (and v3, v2): `FlowKey` (16 bytes) → backend id, frontend id,
    /// created and last-seen times (24 bytes). v5 appends the flags: 0, an open flow (a closed
    /// one closes again at its next FIN or expires by idle time).
    pub fn conntrack(
        old_key: &[u8],
        old_value: &[u8],
        _now_ns: u64,
        key: &mut [u8],
        value: &mut [u8],
    ) {
        key[..16].copy_from_slice(&old_key[..16]);
        value[..24].copy_from_slice(&old_value[..24]);
    }

    /// `XLB_CONFIG` of v4 (and older): node address, tunnel port, padding (8 bytes). v5 appends
    /// the SYN guard's rate and `ports_ready`, left 0 for the first apply to set.
    pub fn config(
        old_key: &[u8],
        old_value: &[u8],
        _now_ns: u64,
        key: &mut [u8],
        value: &mut [u8],
    ) {
        key[..4].copy_from_slice(&old_key[..4]);
        value[..8].copy_from_slice(&old_value[..8]);
    }
}

/// Records of layout v5 that a later layout changed (the `layout-next` test build).
pub mod v5 {
    /// `XLB_CONNTRACK` of v5: `FlowKey` (16 bytes) → `CtValue` (32 bytes). A later layout that
    /// appends fields to the value keeps these 32 bytes in front and zeroes the rest.
    pub fn conntrack(
        old_key: &[u8],
        old_value: &[u8],
        _now_ns: u64,
        key: &mut [u8],
        value: &mut [u8],
    ) {
        key[..16].copy_from_slice(&old_key[..16]);
        value[..32].copy_from_slice(&old_value[..32]);
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::{vec, vec::Vec};

    /// The converted `value`, read back as the current layout's `T`.
    fn read_value<T: Default>(value: &[u8]) -> T {
        assert_eq!(value.len(), core::mem::size_of::<T>());
        let mut got = T::default();
        // SAFETY: `value` holds size_of::<T>() bytes, and T is one of the plain #[repr(C)]
        // map records, valid for any bytes.
        unsafe {
            core::ptr::copy_nonoverlapping(
                value.as_ptr(),
                (&mut got as *mut T).cast::<u8>(),
                value.len(),
            )
        };
        got
    }

    #[test]
    fn every_current_map_has_a_record() {
        for map in ALL_MAPS {
            assert!(record(map).is_some(), "{map} has no record");
        }
    }

    #[test]
    fn history_names_only_older_layouts_and_current_maps() {
        for past in HISTORY {
            assert_ne!(past.version, LAYOUT_VERSION);
            for (map, _) in past.changed {
                assert!(
                    ALL_MAPS.contains(map),
                    "{}: unknown map {map}",
                    past.version
                );
            }
        }
    }

    #[test]
    fn conversions_fill_records_of_the_current_size() {
        for past in HISTORY {
            for (map, carry) in past.changed {
                let Carry::Convert(c) = carry else { continue };
                let (ks, vs) = record(map).unwrap();
                let old_key: Vec<u8> = (0..c.key_size as u8).collect();
                let old_value: Vec<u8> = (0..c.value_size as u8).map(|b| !b).collect();
                let mut key = vec![0u8; ks as usize];
                let mut value = vec![0u8; vs as usize];
                (c.convert)(&old_key, &old_value, 0, &mut key, &mut value);
                let n = ks.min(c.key_size) as usize;
                assert_eq!(key[..n], old_key[..n], "{map}");
            }
        }
    }

    #[test]
    fn v4_conntrack_keeps_the_flow_and_its_backend() {
        let flow = FlowKey {
            src_addr: u32::from_ne_bytes([198, 18, 0, 10]),
            dst_addr: u32::from_ne_bytes([198, 19, 255, 1]),
            src_port: 40000u16.to_be(),
            dst_port: 80u16.to_be(),
            proto: IPPROTO_TCP,
            _pad: [0; 3],
        };
        let ct = CtValue::new(7, 3, 123_456_789);
        // SAFETY: both are plain #[repr(C)] data; a v4 value is the first 24 bytes of any
        // CtValue (asserted by the layout pins in maps.rs), and a new one has no flags.
        let key_bytes: [u8; 16] = unsafe { core::mem::transmute(flow) };
        let value_bytes = unsafe {
            core::slice::from_raw_parts((&ct as *const CtValue).cast::<u8>(), 24).to_vec()
        };
        let mut key = [0u8; 16];
        let mut value = vec![0u8; core::mem::size_of::<CtValue>()];
        v4::conntrack(&key_bytes, &value_bytes, 0, &mut key, &mut value);
        let got: CtValue = read_value(&value);
        assert_eq!(got, ct);
        assert_eq!(key, key_bytes);
    }

    #[test]
    fn v4_config_keeps_the_tunnel_and_leaves_the_guard_and_ports_off() {
        let old = Config {
            node_addr: u32::from_ne_bytes([198, 18, 0, 2]),
            tunnel_port: 6081u16.to_be(),
            _pad: 0,
            syn_guard_rate: 0,
            ports_ready: 0,
        };
        // SAFETY: plain #[repr(C)] data; v4's record is its first 8 bytes.
        let bytes = unsafe {
            core::slice::from_raw_parts((&old as *const Config).cast::<u8>(), 8).to_vec()
        };
        let mut key = [0u8; 4];
        let mut value = vec![0xffu8; core::mem::size_of::<Config>()];
        value[8..].fill(0);
        v4::config(&[0, 0, 0, 0], &bytes, 0, &mut key, &mut value);
        let got: Config = read_value(&value);
        assert_eq!(got, old);
    }

    #[test]
    fn v3_revnat_keeps_the_frontend_and_stamps_now() {
        let old_key: Vec<u8> = (1..=16).collect();
        let old_value = [198, 19, 255, 1, 0, 80, 0, 0];
        let mut key = [0u8; 16];
        let mut value = vec![0u8; core::mem::size_of::<RevNatValue>()];
        v3::revnat(&old_key, &old_value, 42_000, &mut key, &mut value);
        let got: RevNatValue = read_value(&value);
        assert_eq!(key[..], old_key[..]);
        assert_eq!(got.frontend_addr, u32::from_ne_bytes([198, 19, 255, 1]));
        assert_eq!(got.frontend_port, u16::from_ne_bytes([0, 80]));
        assert_eq!(got.last_ns, 42_000);
    }
}
