//! Keeps the prepared next hops of the remote path current (`datapath::hops`): a neighbour,
//! route, link or address notification makes the next turn look again, and so does a timer, so
//! that a lost notification (or a socket that could not be opened) delays a change by seconds.
//! Until a node's hop is prepared again its packets take the lookup path, which is always
//! correct.
use std::time::{Duration, Instant};

use crate::{
    datapath::reconcile::{HopReport, Reconciler},
    sys::neigh::HopEvents,
};

/// How often the hops are looked at without a notification.
const RECHECK_EVERY: Duration = Duration::from_secs(5);

pub struct HopWatch {
    events: Option<HopEvents>,
    last_check: Instant,
    last: Option<HopReport>,
}

impl HopWatch {
    pub fn new() -> HopWatch {
        let events = match HopEvents::open() {
            Ok(e) => Some(e),
            Err(e) => {
                tracing::warn!(
                    "cannot subscribe to neighbour and route notifications ({e}); the remote \
                     nodes' prepared next hops follow changes within {} s instead",
                    RECHECK_EVERY.as_secs()
                );
                None
            }
        };
        HopWatch {
            events,
            last_check: Instant::now(),
            last: None,
        }
    }

    /// Refreshes the hops if something changed or the timer is due.
    pub fn tick(&mut self, reconciler: &mut Reconciler) {
        let notified = self.events.as_mut().is_some_and(HopEvents::changed);
        if !notified && self.last_check.elapsed() < RECHECK_EVERY {
            return;
        }
        self.last_check = Instant::now();
        match reconciler.refresh_hops() {
            Ok(r) => {
                let moved = r.written > 0 || r.removed > 0;
                let counts = |x: &HopReport| (x.prepared, x.unresolved);
                if moved || self.last.as_ref().map(counts) != Some(counts(&r)) {
                    tracing::info!(
                        prepared = r.prepared,
                        unresolved = r.unresolved,
                        written = r.written,
                        removed = r.removed,
                        "remote nodes' next hops updated"
                    );
                }
                self.last = Some(r);
            }
            Err(e) => tracing::warn!(
                error = format!("{e:#}"),
                "cannot refresh the remote nodes' next hops; keeping the last ones"
            ),
        }
    }
}

impl Default for HopWatch {
    fn default() -> Self {
        Self::new()
    }
}
