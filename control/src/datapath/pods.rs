//! The host-side ends of the pods' interfaces (`XLB_POD_IFACES`): where the datapath may put a
//! packet for a local pod straight into the pod, past the kernel's IP stack (`xdp/src/pod.rs`).
//!
//! A pod's interface is, for every CNI that gives pods a veth (or netkit), a pair whose host
//! side sits in the node's namespace and whose peer sits in the pod's. The kernel says both of a
//! link (`IFLA_INFO_KIND`, `IFLA_LINK_NETNSID`), so the set is read from the node's links, not
//! configured: every such link gets an entry, brought up to date whenever a link changes.
//! `bpf_redirect_peer` drops what it cannot deliver (a target that is not a pair, or whose peer
//! is in this namespace), which is why the program never guesses and takes only these.
use std::{collections::BTreeMap, path::Path};

use anyhow::Context as _;
use aya::maps::{HashMap, Map, MapData};
use lb_common::maps::{MAP_POD_IFACES, PodIface, deliver_name};

use crate::{datapath::pins, sys::links};

/// What `--pod-delivery` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// This method (`DELIVER_*`), or `None`: the kernel routes every packet to the pod.
    Fixed(Option<u8>),
    /// `bpf_redirect_peer` while this namespace's netfilter tracks no connections, the kernel
    /// otherwise ([`choose`]).
    Auto,
}

/// Where `auto` stands, given this namespace's `nf_conntrack_count` (`None`: no conntrack).
///
/// A packet put into a pod past netfilter is never seen by conntrack, so the pod's answer is
/// the first packet of its flow that conntrack sees: a SYN-ACK without a SYN, which it marks
/// INVALID. kube-proxy's forward chain (iptables and nftables modes) drops INVALID, so on a node
/// where netfilter tracks connections every TCP reply would be lost. Conntrack tracks nothing
/// in a namespace until a rule or NAT needs it, so a count of 0 means nothing can drop those
/// replies; any tracked connection means something might, and the kernel path is kept.
pub fn choose(d: Delivery, conntrack_count: Option<u64>) -> (Option<u8>, &'static str) {
    match d {
        Delivery::Fixed(how) => (how, "--pod-delivery"),
        Delivery::Auto => match conntrack_count {
            Some(n) if n > 0 => (
                None,
                "netfilter tracks connections in this namespace (kube-proxy or other rules): \
                 replies of pods entered past it would be INVALID to conntrack and dropped",
            ),
            _ => (
                Some(lb_common::maps::DELIVER_PEER),
                "no connection tracking in this namespace",
            ),
        },
    }
}

/// This namespace's `net.netfilter.nf_conntrack_count`, `None` without conntrack loaded.
pub fn conntrack_count() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// Opens `XLB_POD_IFACES` as pinned in `pin_dir`.
fn open(pin_dir: &Path) -> anyhow::Result<HashMap<MapData, u32, PodIface>> {
    let path = pins::map_pin(pin_dir, MAP_POD_IFACES);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening pinned map {}", path.display()))?;
    HashMap::try_from(Map::from_map_data(data)?)
        .with_context(|| format!("map {MAP_POD_IFACES} has an unexpected type or layout"))
}

/// The entries `XLB_POD_IFACES` should hold for these links: every pair whose peer is in
/// another namespace, delivered the way `how` says (`DELIVER_*`; `None`: no fast path).
pub fn wanted(ifaces: &[links::Interface], how: Option<u8>) -> BTreeMap<u32, (String, PodIface)> {
    let Some(how) = how else {
        return BTreeMap::new();
    };
    ifaces
        .iter()
        .filter(|i| i.peer_elsewhere)
        .map(|i| {
            let v = PodIface { how, _pad: [0; 3] };
            (i.index, (i.name.clone(), v))
        })
        .collect()
}

/// Brings `XLB_POD_IFACES` in `pin_dir` to the node's links now: adds the pods' interfaces that
/// appeared, removes the ones gone. Returns how many it holds.
pub fn sync(pin_dir: &Path, how: Option<u8>) -> anyhow::Result<usize> {
    let want = wanted(&links::interfaces().context("listing links")?, how);
    let mut map = open(pin_dir)?;
    let have: Vec<u32> = map.keys().filter_map(Result::ok).collect();
    for i in have {
        if !want.contains_key(&i) {
            map.remove(&i)
                .with_context(|| format!("removing {i} from {MAP_POD_IFACES}"))?;
            tracing::debug!(ifindex = i, "pod interface gone");
        }
    }
    for (i, (name, v)) in &want {
        if map.get(i, 0).ok() != Some(*v) {
            map.insert(i, v, 0)
                .with_context(|| format!("writing {MAP_POD_IFACES} for {name}"))?;
            tracing::debug!(
                ifindex = i,
                iface = name.as_str(),
                delivery = deliver_name(v.how),
                "pod interface"
            );
        }
    }
    Ok(want.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::maps::DELIVER_PEER;

    fn link(index: u32, name: &str, peer_elsewhere: bool) -> links::Interface {
        links::Interface {
            index,
            name: name.into(),
            xdp_prog_id: None,
            peer_elsewhere,
        }
    }

    #[test]
    fn auto_keeps_the_kernel_path_where_netfilter_tracks_connections() {
        assert_eq!(choose(Delivery::Auto, None).0, Some(DELIVER_PEER));
        assert_eq!(choose(Delivery::Auto, Some(0)).0, Some(DELIVER_PEER));
        assert_eq!(choose(Delivery::Auto, Some(3)).0, None);
        // A method asked for is taken whatever netfilter does.
        assert_eq!(
            choose(Delivery::Fixed(Some(DELIVER_PEER)), Some(3)).0,
            Some(DELIVER_PEER)
        );
        assert_eq!(choose(Delivery::Fixed(None), None).0, None);
    }

    #[test]
    fn only_pairs_into_other_namespaces_are_pods() {
        let links = [
            link(1, "lo", false),
            link(2, "eth0", false),
            link(5, "lxc0", true),
            link(6, "veth-local", false),
        ];
        let w = wanted(&links, Some(DELIVER_PEER));
        assert_eq!(w.keys().copied().collect::<Vec<_>>(), vec![5]);
        assert_eq!(w[&5].1.how, DELIVER_PEER);
        assert!(wanted(&links, None).is_empty());
    }
}
