//! How frames the XDP program builds leave each interface: probed at attach (every attach,
//! re-attaches included), written to `XLB_IFACES` for the program, and logged with the reason.
//!
//! An `XDP_TX` or redirect hands an XDP frame to the egress driver's `ndo_xdp_xmit`. A veth
//! delivers it only when its peer has NAPI running, i.e. runs an XDP program or has GRO on;
//! otherwise the kernel drops it and counts `xdp_tx_errors`. The peer may sit in a namespace
//! xlb cannot see (a kind node's `eth0`, a container's interface), but since Linux 6.3 the
//! kernel says it on our side: a veth reports `NETDEV_XDP_ACT_NDO_XMIT` exactly when its peer
//! is ready. Where frames would be dropped, the program passes them to the TC ingress program,
//! which redirects the skb out of the interface (see docs/datapath.md).
use std::path::Path;

use anyhow::Context as _;
use aya::maps::{HashMap, Map, MapData};
use lb_common::maps::{
    EGRESS_TC_REDIRECT, EGRESS_XDP, EGRESS_XDP_GENERIC, EgressWhy, IfaceValue, MAP_IFACES,
    XDP_MODE_GENERIC, XDP_MODE_NATIVE, egress_path_name,
};

use crate::{
    datapath::pins,
    sys::{ethtool, links, netdev},
};

/// What the kernel says about an interface.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Probe {
    /// Driver name (ethtool), when it answers.
    pub driver: Option<String>,
    /// `XDP_ATTACHED_*` of the program attached now.
    pub attached: Option<u8>,
    /// `NETDEV_XDP_ACT_*` bits, `None` on kernels without xdp_features.
    pub features: Option<u64>,
}

impl Probe {
    pub fn of(ifindex: u32, iface: &str) -> Probe {
        Probe {
            driver: ethtool::driver(iface).ok(),
            attached: links::xdp_attached(ifindex).ok().flatten(),
            features: netdev::xdp_features(ifindex).ok().flatten(),
        }
    }

    fn is_veth(&self) -> bool {
        self.driver.as_deref() == Some("veth")
    }
}

/// The way frames leave an interface, from what the kernel says about it.
pub fn choose(p: &Probe) -> IfaceValue {
    let value = |xdp_mode, path, why: EgressWhy| IfaceValue {
        xdp_mode,
        path,
        why: why as u8,
        _pad: 0,
    };
    if p.attached == Some(links::XDP_ATTACHED_SKB) {
        return value(XDP_MODE_GENERIC, EGRESS_XDP_GENERIC, EgressWhy::Generic);
    }
    let native = |path, why| value(XDP_MODE_NATIVE, path, why);
    match (p.features, p.is_veth()) {
        // The kernel says the peer has NAPI, from an XDP program or from GRO alone; in the lab
        // a GRO-only peer did not deliver the frames (sent, never received), so until the two
        // can be told apart a veth gets the skb path.
        (Some(f), true) if f & netdev::XDP_ACT_NDO_XMIT != 0 => {
            native(EGRESS_TC_REDIRECT, EgressWhy::VethPeerUnverified)
        }
        (Some(f), false) if f & netdev::XDP_ACT_NDO_XMIT != 0 => {
            native(EGRESS_XDP, EgressWhy::DriverXmit)
        }
        (Some(_), true) => native(EGRESS_TC_REDIRECT, EgressWhy::VethPeerNotReady),
        (Some(_), false) => native(EGRESS_TC_REDIRECT, EgressWhy::DriverNoXmit),
        (None, true) => native(EGRESS_TC_REDIRECT, EgressWhy::VethUnknownPeer),
        (None, false) => native(EGRESS_XDP, EgressWhy::AssumedNative),
    }
}

/// One line for the log: the path and why.
pub fn describe(iface: &str, v: &IfaceValue) -> String {
    format!(
        "{iface}: frames xlb sends out of it take the {} path: {}",
        egress_path_name(v.path),
        EgressWhy::from_u8(v.why).text()
    )
}

/// Opens `XLB_IFACES` as pinned in `pin_dir`.
pub fn open(pin_dir: &Path) -> anyhow::Result<HashMap<MapData, u32, IfaceValue>> {
    let path = pins::map_pin(pin_dir, MAP_IFACES);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening pinned map {}", path.display()))?;
    HashMap::try_from(Map::from_map_data(data)?)
        .with_context(|| format!("map {MAP_IFACES} has an unexpected type or layout"))
}

/// Probes `iface`, writes its way to `XLB_IFACES` and logs it.
pub fn record(pin_dir: &Path, ifindex: u32, iface: &str) -> anyhow::Result<IfaceValue> {
    let v = choose(&Probe::of(ifindex, iface));
    open(pin_dir)?
        .insert(ifindex, v, 0)
        .with_context(|| format!("writing {MAP_IFACES} for {iface}"))?;
    tracing::info!("{}", describe(iface, &v));
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(driver: &str, attached: u8, features: Option<u64>) -> Probe {
        Probe {
            driver: Some(driver.into()),
            attached: Some(attached),
            features,
        }
    }

    fn why(v: IfaceValue) -> EgressWhy {
        EgressWhy::from_u8(v.why)
    }

    #[test]
    fn a_veth_whose_peer_takes_no_frames_uses_the_tc_path() {
        // BASIC | REDIRECT | RX_SG: what a veth reports when its peer has no XDP and no GRO.
        let v = choose(&probe("veth", links::XDP_ATTACHED_DRV, Some(0x23)));
        assert_eq!(
            (v.xdp_mode, v.path, why(v)),
            (
                XDP_MODE_NATIVE,
                EGRESS_TC_REDIRECT,
                EgressWhy::VethPeerNotReady
            )
        );
        let v = choose(&probe("veth", links::XDP_ATTACHED_DRV, Some(0x67)));
        assert_eq!(
            (v.path, why(v)),
            (EGRESS_TC_REDIRECT, EgressWhy::VethPeerUnverified)
        );
    }

    #[test]
    fn without_xdp_features_only_veths_are_distrusted() {
        let v = choose(&probe("veth", links::XDP_ATTACHED_DRV, None));
        assert_eq!(
            (v.path, why(v)),
            (EGRESS_TC_REDIRECT, EgressWhy::VethUnknownPeer)
        );
        let v = choose(&probe("mlx5_core", links::XDP_ATTACHED_DRV, None));
        assert_eq!((v.path, why(v)), (EGRESS_XDP, EgressWhy::AssumedNative));
    }

    #[test]
    fn drivers_say_whether_they_transmit_xdp_frames() {
        let v = choose(&probe("ixgbe", links::XDP_ATTACHED_DRV, Some(0x7)));
        assert_eq!((v.path, why(v)), (EGRESS_XDP, EgressWhy::DriverXmit));
        let v = choose(&probe("somenic", links::XDP_ATTACHED_DRV, Some(0x3)));
        assert_eq!(
            (v.path, why(v)),
            (EGRESS_TC_REDIRECT, EgressWhy::DriverNoXmit)
        );
    }

    #[test]
    fn generic_mode_sends_skbs() {
        let v = choose(&probe("veth", links::XDP_ATTACHED_SKB, Some(0x23)));
        assert_eq!(
            (v.xdp_mode, v.path, why(v)),
            (XDP_MODE_GENERIC, EGRESS_XDP_GENERIC, EgressWhy::Generic)
        );
    }
}
