//! The interfaces xlb sends frames out of: the way chosen for each at attach (`XLB_IFACES`)
//! and the driver's XDP error counters (ethtool), so that a path the kernel drops frames on is
//! visible in `xlb stats` and `/metrics`.
use lb_common::maps::{EgressWhy, IfaceValue, XDP_MODE_GENERIC, XDP_MODE_NATIVE, egress_path_name};

use crate::{
    datapath::maps::Maps,
    sys::{ethtool, links},
};

/// One interface as read now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iface {
    pub ifindex: u32,
    /// `None` when the interface is gone.
    pub name: Option<String>,
    pub value: IfaceValue,
    /// The driver's XDP error statistics, by ethtool name.
    pub xdp_errors: Vec<(String, u64)>,
}

impl Iface {
    pub fn path(&self) -> &'static str {
        egress_path_name(self.value.path)
    }

    pub fn why(&self) -> EgressWhy {
        EgressWhy::from_u8(self.value.why)
    }

    pub fn xdp_mode(&self) -> &'static str {
        match self.value.xdp_mode {
            XDP_MODE_NATIVE => "native",
            XDP_MODE_GENERIC => "generic",
            _ => "none",
        }
    }
}

/// Every interface in `XLB_IFACES`, by ifindex.
pub fn read(maps: &Maps) -> Vec<Iface> {
    let mut out: Vec<Iface> = maps
        .ifaces
        .iter()
        .flatten()
        .map(|(ifindex, value)| {
            let name = links::ifname(ifindex);
            let xdp_errors = name
                .as_deref()
                .and_then(|n| ethtool::xdp_errors(n).ok())
                .unwrap_or_default();
            Iface {
                ifindex,
                name,
                value,
                xdp_errors,
            }
        })
        .collect();
    out.sort_by_key(|i| i.ifindex);
    out
}
