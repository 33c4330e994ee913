//! The link watch of `xlb run`: every configured interface that goes away (driver reset, bond
//! rebuild, veth re-created) is reported at once, and when an interface of that name comes back
//! (with a new ifindex) the datapath is attached to it again, through the same
//! [`loader::attach`] as at start, which replaces the pinned links left for the old index.
//!
//! Link notifications (rtnetlink) say when to look; what is looked at is always the name: which
//! index `--iface NAME` has now. A timer looks too, so that a lost notification (or a netlink
//! socket that could not be opened) delays a re-attach by seconds, never forever.
use std::path::PathBuf;
use std::time::{Duration, Instant};

use aya::{Ebpf, programs::XdpMode};

use crate::{
    datapath::tc_attach::TcAttach,
    datapath::{loader, pods},
    observe::metrics::RunStatus,
    sys::links::{LinkEvent, LinkEvents},
};

/// How often every interface is looked at without a notification.
const RECHECK_EVERY: Duration = Duration::from_secs(5);

/// How soon a failed re-attach is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Attached to this ifindex.
    Attached(u32),
    /// No interface of this name now; it had this ifindex.
    Gone { was: u32 },
    /// Back under this ifindex, but attaching failed (the error as last logged).
    Failed {
        ifindex: u32,
        error: String,
        at: Instant,
    },
}

struct Watched {
    name: String,
    state: State,
}

pub struct LinkWatch {
    events: Option<LinkEvents>,
    ifaces: Vec<Watched>,
    pin_dir: PathBuf,
    mode: XdpMode,
    tc: TcAttach,
    last_check: Instant,
    /// `--pod-delivery`, and what it last came to (`DELIVER_*`, `None`: the kernel).
    pod_delivery: pods::Delivery,
    pod_how: Option<u8>,
    /// When `XLB_POD_IFACES` was last brought up to date (and whether that worked).
    pods_synced: (Instant, bool),
}

impl LinkWatch {
    /// Watches `attached` (each configured interface and the index it was attached to at start).
    pub fn new(
        attached: &[(String, u32)],
        pin_dir: PathBuf,
        mode: XdpMode,
        tc: TcAttach,
        pod_delivery: pods::Delivery,
        status: &RunStatus,
    ) -> LinkWatch {
        let events = match LinkEvents::open() {
            Ok(e) => Some(e),
            Err(e) => {
                tracing::warn!(
                    "cannot subscribe to link notifications ({e}); interfaces that go away and \
                     come back are noticed within {} s instead",
                    RECHECK_EVERY.as_secs()
                );
                None
            }
        };
        for (name, ifindex) in attached {
            status.iface_attached(name, *ifindex, false);
        }
        let (pod_how, why) = pods::choose(pod_delivery, pods::conntrack_count());
        let pods_ok = match pods::sync(&pin_dir, pod_how) {
            Ok(n) => {
                tracing::info!(
                    pod_interfaces = n,
                    delivery = pod_how.map_or("kernel", lb_common::maps::deliver_name),
                    why,
                    "packets for local pods enter them this way"
                );
                true
            }
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "cannot read the pods' interfaces; local pods are reached through the kernel"
                );
                false
            }
        };
        LinkWatch {
            events,
            ifaces: attached
                .iter()
                .map(|(name, i)| Watched {
                    name: name.clone(),
                    state: State::Attached(*i),
                })
                .collect(),
            pin_dir,
            mode,
            tc,
            last_check: Instant::now(),
            pod_delivery,
            pod_how,
            pods_synced: (Instant::now(), pods_ok),
        }
    }

    /// Brings the pods' interfaces up to date: on any link notification (a pod's veth created or
    /// deleted), and on the timer. A failure is logged when it starts and when it ends.
    fn sync_pods(&mut self, any_event: bool) {
        if !any_event && self.pods_synced.0.elapsed() < RECHECK_EVERY {
            return;
        }
        // `auto` follows netfilter: kube-proxy may start after xlb.
        let (how, why) = pods::choose(self.pod_delivery, pods::conntrack_count());
        if how != self.pod_how {
            tracing::info!(
                delivery = how.map_or("kernel", lb_common::maps::deliver_name),
                why,
                "packets for local pods now enter them this way"
            );
            self.pod_how = how;
        }
        let ok = match pods::sync(&self.pin_dir, how) {
            Ok(_) => true,
            Err(e) => {
                if self.pods_synced.1 {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "cannot update the pods' interfaces; new pods are reached through the kernel"
                    );
                }
                false
            }
        };
        if ok && !self.pods_synced.1 {
            tracing::info!("the pods' interfaces are up to date again");
        }
        self.pods_synced = (Instant::now(), ok);
    }

    /// Reads the notifications and, when one concerns a configured interface (or a timer is
    /// due), brings every configured interface up to date: reports the ones gone, attaches the
    /// ones back. Returns whether an interface was attached again (its addresses may have
    /// changed: the NodePorts' local addresses are read anew).
    pub fn tick(&mut self, ebpf: &mut Ebpf, status: &RunStatus) -> bool {
        let events = self
            .events
            .as_mut()
            .map(LinkEvents::drain)
            .unwrap_or_default();
        self.sync_pods(!events.is_empty());
        let removed = self.removed(&events);
        let relevant = !removed.is_empty() || events.iter().any(|e| self.concerns(e));
        let retry_due = self.ifaces.iter().any(|w| match &w.state {
            State::Failed { at, .. } => at.elapsed() >= RETRY_AFTER,
            _ => false,
        });
        if !(relevant || retry_due || self.last_check.elapsed() >= RECHECK_EVERY) {
            return false;
        }
        self.last_check = Instant::now();
        let mut reattached = false;
        for i in 0..self.ifaces.len() {
            // Deleted and created again between two looks may give back the same index (an
            // interface moved out of the namespace and back): its attachment is gone all the
            // same.
            if removed.contains(&i)
                && let State::Attached(was) = self.ifaces[i].state
            {
                self.gone(i, was, status);
            }
            reattached |= self.check(i, ebpf, status);
        }
        reattached
    }

    /// Configured interfaces (by position) that a notification says were removed.
    fn removed(&self, events: &[LinkEvent]) -> Vec<usize> {
        let mut out = Vec::new();
        for e in events {
            if let LinkEvent::Removed { index, name } = e {
                for (i, w) in self.ifaces.iter().enumerate() {
                    let same_index = matches!(w.state, State::Attached(a) if a == *index);
                    if (same_index || name.as_deref() == Some(w.name.as_str())) && !out.contains(&i)
                    {
                        out.push(i);
                    }
                }
            }
        }
        out
    }

    fn concerns(&self, event: &LinkEvent) -> bool {
        match event {
            LinkEvent::Lost => true,
            LinkEvent::Changed { index, name } | LinkEvent::Removed { index, name } => {
                self.ifaces.iter().any(|w| {
                    name.as_deref() == Some(w.name.as_str())
                        || matches!(w.state, State::Attached(a) if a == *index)
                })
            }
        }
    }

    fn gone(&mut self, i: usize, was: u32, status: &RunStatus) {
        let w = &mut self.ifaces[i];
        tracing::warn!(
            iface = %w.name,
            ifindex = was,
            "interface gone: the datapath is detached from it and not ready; it is attached \
             again when an interface of this name comes back"
        );
        w.state = State::Gone { was };
        status.iface_detached(&w.name);
    }

    /// Looks up interface `i` by name and acts on what changed; returns whether it was attached
    /// again.
    fn check(&mut self, i: usize, ebpf: &mut Ebpf, status: &RunStatus) -> bool {
        let now = loader::ifindex(&self.ifaces[i].name).ok();
        match (self.ifaces[i].state.clone(), now) {
            (State::Attached(a), Some(n)) if a == n => false,
            (State::Attached(a), None) => {
                self.gone(i, a, status);
                false
            }
            (State::Attached(a), Some(n)) => {
                // Gone and back between two looks.
                self.gone(i, a, status);
                self.reattach(i, n, ebpf, status)
            }
            (State::Gone { .. }, Some(n)) => self.reattach(i, n, ebpf, status),
            (State::Failed { at, .. }, Some(_)) if at.elapsed() < RETRY_AFTER => false,
            (State::Failed { .. }, Some(n)) => self.reattach(i, n, ebpf, status),
            (State::Failed { ifindex, .. }, None) => {
                self.ifaces[i].state = State::Gone { was: ifindex };
                false
            }
            (State::Gone { .. }, None) => false,
        }
    }

    fn reattach(&mut self, i: usize, ifindex: u32, ebpf: &mut Ebpf, status: &RunStatus) -> bool {
        let w = &mut self.ifaces[i];
        let was = match &w.state {
            State::Gone { was } => Some(*was),
            _ => None,
        };
        if was.is_some() {
            tracing::info!(iface = %w.name, ifindex, "interface back");
        }
        match loader::attach(ebpf, &self.pin_dir, &w.name, self.mode, self.tc) {
            Ok(_) => {
                tracing::info!(
                    iface = %w.name,
                    ifindex,
                    old_ifindex = was,
                    pin_dir = %self.pin_dir.display(),
                    "re-attached with new ifindex"
                );
                w.state = State::Attached(ifindex);
                status.iface_attached(&w.name, ifindex, true);
                true
            }
            Err(e) => {
                let error = format!("{e:#}");
                let repeated =
                    matches!(&w.state, State::Failed { error: last, .. } if *last == error);
                if !repeated {
                    tracing::error!(
                        iface = %w.name,
                        ifindex,
                        error,
                        "cannot attach to the interface that came back; retrying every {} s",
                        RETRY_AFTER.as_secs()
                    );
                }
                w.state = State::Failed {
                    ifindex,
                    error,
                    at: Instant::now(),
                };
                status.iface_detached(&w.name);
                false
            }
        }
    }
}
