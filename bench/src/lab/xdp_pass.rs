//! A pass-through XDP program (`return XDP_PASS`, two instructions) for the bridge side of the
//! lab's fabric links.
//!
//! Why: when an XDP program on a node's uplink (a veth) answers `XDP_TX`, the kernel's veth
//! driver queues the frame on the peer's receive ring, but kicks the peer's NAPI only if the
//! peer has an XDP program of its own (`veth_xdp_flush`: "xdp_ring is initialized on receive
//! side?"); GRO on the peer enables its NAPI but does not kick it. Without a program there, the
//! frames wait until some unrelated packet schedules that NAPI, or are never seen. Real NICs
//! have no such peer. The lab attaches this program to every bridge port, so `XDP_TX` from a
//! node reaches the fabric at once, as it would leave a physical port.
//!
//! The program is `xlb_pass` of `xdp-bench`, embedded by `build.rs`. Its links belong to the
//! loaded object, which the [`super::Lab`] holds: nothing is pinned, and dropping the object
//! detaches every port.

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    programs::{Xdp, XdpMode},
};

use super::netns::Netns;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb-pass"));
const PROG: &str = "xlb_pass";

/// Loads the program (not attached anywhere yet).
pub fn load() -> Result<Ebpf> {
    if OBJECT.is_empty() {
        bail!("this xlb-bench was built with AYA_BUILD_SKIP and carries no xlb-pass program");
    }
    let mut ebpf = Ebpf::load(OBJECT).context("loading xlb-pass")?;
    program(&mut ebpf)?
        .load()
        .context("loading the lab's XDP pass program")?;
    Ok(ebpf)
}

fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    Ok(ebpf
        .program_mut(PROG)
        .context("xlb-pass has no program xlb_pass")?
        .try_into()?)
}

/// Attaches the program of `ebpf` to interface `ifname` of `ns` (driver mode: veths support
/// it); detached when `ebpf` is dropped or the interface goes away.
pub fn attach(ns: &Netns, ebpf: &mut Ebpf, ifname: &str) -> Result<()> {
    let prog = program(ebpf)?;
    let iface = ifname.to_string();
    ns.run(move || {
        prog.attach(&iface, XdpMode::Driver)
            .with_context(|| format!("attaching XDP to {iface}"))?;
        Ok(())
    })
    .with_context(|| {
        format!(
            "attaching the XDP pass program to {ifname} in {}",
            ns.name()
        )
    })
}
