//! TC ingress: the second half of the skb paths of `deliver.rs` and `pod.rs`. A frame the XDP
//! program passed with xlb's metadata is redirected, as an skb: out of the interface the
//! metadata names (which every driver transmits), or into the namespace of that veth's peer
//! (a pod). Everything else goes on untouched (the XDP program counted it).
use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_OK},
    helpers::{bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer},
    programs::TcContext,
};
use lb_common::maps::{XDP_META_MAGIC, XDP_META_NEIGH, XDP_META_PEER, XdpMeta};

#[inline(always)]
pub fn run(ctx: &TcContext) -> i32 {
    let skb: *mut __sk_buff = ctx.skb.skb;
    // SAFETY: reading the context's data pointers, as the verifier allows for TC.
    let (meta, data) = unsafe { ((*skb).data_meta as usize, (*skb).data as usize) };
    let len = core::mem::size_of::<XdpMeta>();
    if meta + len > data {
        return TC_ACT_OK;
    }
    // SAFETY: len bytes at meta were bounds-checked against data just above.
    let m = unsafe { core::ptr::read_unaligned(meta as *const XdpMeta) };
    if m.magic != XDP_META_MAGIC && m.magic != XDP_META_PEER && m.magic != XDP_META_NEIGH {
        return TC_ACT_OK;
    }
    // The metadata stays in the skb's headroom; clear the mark so that nothing downstream can
    // read it as a request again.
    // SAFETY: as above; the metadata area is writable from TC.
    unsafe { core::ptr::write_unaligned(meta as *mut u32, 0) };
    // SAFETY: plain helper calls; each returns TC_ACT_REDIRECT (or TC_ACT_SHOT for bad flags).
    unsafe {
        match m.magic {
            // Into the pod's namespace: its interface's ingress sees the skb next, as if its
            // own NIC had received it (no backlog queue, no routing, no netfilter here).
            XDP_META_PEER => bpf_redirect_peer(m.ifindex, 0) as i32,
            XDP_META_NEIGH => bpf_redirect_neigh(m.ifindex, core::ptr::null_mut(), 0, 0) as i32,
            _ => bpf_redirect(m.ifindex, 0) as i32,
        }
    }
}
