//! The per-object series of `/metrics` (per frontend, per backend), and how many of them a
//! scrape exports.
//!
//! At 10,000 Services × 10 endpoints these are nearly all of the exposition (half a million
//! lines), so they are rendered from label text prepared once per Service port and kept while
//! the port's snapshot part is unchanged ([`SeriesCache`]): a scrape copies prepared text and
//! formats numbers, and a change to one port prepares that port again, not the others.
//!
//! What is exported is `--metrics-detail` (`backends`, `frontends`, `none`), capped by
//! `--metrics-max-series`: when the per-object series of the detail asked for would exceed the
//! cap, the next lower detail whose series fit is exported, with a warning in the log and
//! `xlb_metrics_detail_capped 1` (see docs/operations.md).
use std::{
    collections::HashMap,
    fmt::Write as _,
    sync::{Arc, OnceLock},
};

use lb_common::maps::Counter;

use crate::datapath::reconcile::{ServiceSnapshot, Snapshot};

/// Which per-object series `/metrics` exports, from least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Detail {
    /// Totals only: no series per frontend or backend.
    None,
    /// Four series per frontend (packets, bytes, new flows, connections).
    Frontends,
    /// Also four per backend, and the Maglev slots of each (Service port, backend).
    Backends,
}

impl Detail {
    pub fn name(self) -> &'static str {
        match self {
            Detail::None => "none",
            Detail::Frontends => "frontends",
            Detail::Backends => "backends",
        }
    }

    fn lower(self) -> Option<Detail> {
        match self {
            Detail::Backends => Some(Detail::Frontends),
            Detail::Frontends => Some(Detail::None),
            Detail::None => None,
        }
    }
}

/// What `/metrics` is asked to export.
#[derive(Debug, Clone, Copy)]
pub struct MetricsOptions {
    pub detail: Detail,
    /// Per-object series at most (the detail steps down beyond it).
    pub max_series: usize,
}

/// Default `--metrics-max-series`: about 10 MB of exposition, what a Prometheus scraping every
/// 15 s takes in stride; 1,000 Services × 10 endpoints (58,000 series) fit whole.
pub const DEFAULT_MAX_SERIES: usize = 100_000;

impl Default for MetricsOptions {
    fn default() -> MetricsOptions {
        MetricsOptions {
            detail: Detail::Backends,
            max_series: DEFAULT_MAX_SERIES,
        }
    }
}

/// How many per-object series each detail exports for a snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub frontends: usize,
    /// Distinct backend ids (a pod port shared by two Service ports has one set).
    pub backends: usize,
    /// (Service port, backend) pairs: the `xlb_backend_slots` series.
    pub slots: usize,
}

impl Counts {
    pub fn series(&self, detail: Detail) -> usize {
        match detail {
            Detail::None => 0,
            Detail::Frontends => 4 * self.frontends,
            Detail::Backends => 4 * self.frontends + 4 * self.backends + self.slots,
        }
    }

    /// The most detailed level, at most `opts.detail`, whose series fit `opts.max_series`.
    pub fn choose(&self, opts: &MetricsOptions) -> Detail {
        let mut d = opts.detail;
        while self.series(d) > opts.max_series {
            match d.lower() {
                Some(l) => d = l,
                None => break,
            }
        }
        d
    }
}

/// One Service port's label text, prepared once: the frontends' at once, the backends' when a
/// scrape first exports them (at the `frontends` detail they are never written).
#[derive(Debug)]
pub struct PortSeries {
    /// Held so that the pointer the cache is keyed by stays this part's.
    snap: Arc<ServiceSnapshot>,
    /// (frontend id, `{service=...,frontend=...}`).
    frontends: Vec<(u32, Box<str>)>,
    backends: OnceLock<BackendText>,
}

#[derive(Debug)]
struct BackendText {
    /// (backend id, `{backend=...,protocol=...,node=...}`).
    labels: Vec<(u32, Box<str>)>,
    /// The port's whole `xlb_backend_slots` lines (their values are the snapshot's).
    slots: String,
}

impl PortSeries {
    fn new(s: &Arc<ServiceSnapshot>) -> PortSeries {
        let frontends = s
            .frontends
            .iter()
            .map(|f| {
                let frontend = match f.addr {
                    Some(a) => format!("{a}:{}", f.port),
                    None => format!("*:{}", f.port),
                };
                let l = labels(&[
                    ("service", &s.name),
                    ("protocol", &s.protocol),
                    ("kind", &f.kind),
                    ("frontend", &frontend),
                ]);
                (f.frontend_id, l.into_boxed_str())
            })
            .collect();
        PortSeries {
            snap: s.clone(),
            frontends,
            backends: OnceLock::new(),
        }
    }

    fn backends(&self) -> &BackendText {
        self.backends.get_or_init(|| {
            let s = &self.snap;
            let mut labels_by_id = Vec::with_capacity(s.backends.len());
            let mut slots = String::new();
            for b in &s.backends {
                let backend = format!("{}:{}", b.addr, b.port);
                let l = labels(&[
                    ("backend", &backend),
                    ("protocol", &s.protocol),
                    ("node", b.node.as_deref().unwrap_or_default()),
                ]);
                labels_by_id.push((b.backend_id, l.into_boxed_str()));
                slots.push_str("xlb_backend_slots");
                slots.push_str(&labels(&[
                    ("service", &s.name),
                    ("backend", &backend),
                    ("protocol", &s.protocol),
                    ("state", &b.state),
                ]));
                let _ = writeln!(slots, " {}", b.slots);
            }
            BackendText {
                labels: labels_by_id,
                slots,
            }
        })
    }
}

/// `{k="v",...}` with the values escaped as the text format wants.
pub fn labels(pairs: &[(&str, &str)]) -> String {
    let mut out = String::from("{");
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        escape_into(&mut out, v);
        out.push('"');
    }
    out.push('}');
    out
}

pub fn escape_into(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// The prepared text of every programmed port, kept across scrapes.
#[derive(Debug, Default)]
pub struct SeriesCache {
    ports: Vec<Arc<PortSeries>>,
    counts: Counts,
    /// Highest frontend and backend ids (their counters are read `0..=max` in one batch).
    max_frontend: Option<u32>,
    max_backend: Option<u32>,
    /// The detail last exported, to log when the cap changes it.
    exported: Option<Detail>,
    /// Length of the last exposition (the next one's buffer is sized from it).
    pub last_len: usize,
}

impl SeriesCache {
    /// Brings the cache to `snapshot`: ports whose snapshot part is the same `Arc` keep their
    /// text, the others are prepared again.
    pub fn refresh(&mut self, snapshot: &Snapshot) {
        let same = self.ports.len() == snapshot.services.len()
            && self
                .ports
                .iter()
                .zip(&snapshot.services)
                .all(|(p, s)| Arc::ptr_eq(&p.snap, s));
        if same {
            return;
        }
        let mut old: HashMap<usize, Arc<PortSeries>> = self
            .ports
            .drain(..)
            .map(|p| (Arc::as_ptr(&p.snap) as usize, p))
            .collect();
        self.ports = snapshot
            .services
            .iter()
            .map(|s| {
                old.remove(&(Arc::as_ptr(s) as usize))
                    .filter(|p| Arc::ptr_eq(&p.snap, s))
                    .unwrap_or_else(|| Arc::new(PortSeries::new(s)))
            })
            .collect();
        self.max_frontend = self
            .ports
            .iter()
            .flat_map(|p| p.frontends.iter().map(|(id, _)| *id))
            .max();
        self.max_backend = self
            .ports
            .iter()
            .flat_map(|p| p.snap.backends.iter().map(|b| b.backend_id))
            .max();
        let mut seen = vec![false; self.max_backend.map_or(0, |m| m as usize + 1)];
        let mut counts = Counts::default();
        for p in &self.ports {
            counts.frontends += p.frontends.len();
            counts.slots += p.snap.backends.len();
            for b in &p.snap.backends {
                if !std::mem::replace(&mut seen[b.backend_id as usize], true) {
                    counts.backends += 1;
                }
            }
        }
        self.counts = counts;
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// The ids whose counters `detail` needs: `0..n` of frontends and of backends.
    pub fn id_ranges(&self, detail: Detail) -> (u32, u32) {
        let n = |m: Option<u32>| m.map_or(0, |m| m + 1);
        match detail {
            Detail::None => (0, 0),
            Detail::Frontends => (n(self.max_frontend), 0),
            Detail::Backends => (n(self.max_frontend), n(self.max_backend)),
        }
    }

    /// Prepares now the text a scrape at `detail` writes (the backends' is otherwise prepared
    /// by the first scrape that exports it).
    pub fn prepare(&self, detail: Detail) {
        if detail >= Detail::Backends {
            for p in &self.ports {
                p.backends();
            }
        }
    }

    /// The detail to export under `opts`; logs when the cap makes it differ from the last one.
    pub fn choose(&mut self, opts: &MetricsOptions) -> Detail {
        let d = self.counts.choose(opts);
        if self.exported != Some(d) {
            if d < opts.detail {
                tracing::warn!(
                    asked = opts.detail.name(),
                    exported = d.name(),
                    series_asked = self.counts.series(opts.detail),
                    series_exported = self.counts.series(d),
                    max_series = opts.max_series,
                    "/metrics: the per-object series of --metrics-detail exceed \
                     --metrics-max-series; exporting a lower detail (raise the cap to get them)"
                );
            } else if self.exported.is_some() {
                tracing::info!(
                    exported = d.name(),
                    series = self.counts.series(d),
                    "/metrics: exporting the detail asked for again"
                );
            }
            self.exported = Some(d);
        }
        d
    }
}

/// What the per-object families show: counters by id, and the census's active flows by id.
pub struct Readings<'a> {
    pub frontends: &'a [Counter],
    pub backends: &'a [Counter],
    pub frontend_conns: &'a [u64],
    pub backend_conns: &'a [u64],
}

/// The per-object families of `detail` (nothing for [`Detail::None`]). `family` writes a
/// family's HELP and TYPE lines.
pub fn write(
    out: &mut String,
    cache: &SeriesCache,
    detail: Detail,
    r: &Readings,
    mut family: impl FnMut(&mut String, &str, &str, &str),
) {
    if detail >= Detail::Frontends {
        let fes = || {
            cache
                .ports
                .iter()
                .flat_map(|p| p.frontends.iter().map(|(id, l)| (*id as usize, &**l)))
        };
        let c = |id: usize| r.frontends.get(id).copied().unwrap_or_default();
        let n = |id: usize| r.frontend_conns.get(id).copied().unwrap_or(0);
        for (name, kind, help, value) in [
            (
                "xlb_frontend_packets_total",
                "counter",
                "Packets forwarded through a frontend (LoadBalancer IP, externalIP or NodePort).",
                &(|id| c(id).packets) as &dyn Fn(usize) -> u64,
            ),
            (
                "xlb_frontend_bytes_total",
                "counter",
                "Bytes (whole frames as received) forwarded through a frontend.",
                &|id| c(id).bytes,
            ),
            (
                "xlb_frontend_new_flows_total",
                "counter",
                "Flows (TCP connections, UDP flows) a frontend's traffic opened: connection-table entries created.",
                &|id| c(id).new_flows,
            ),
            (
                "xlb_frontend_connections",
                "gauge",
                "Active flows of a frontend in the connection table, as the last census counted them.",
                &n,
            ),
        ] {
            family(out, name, kind, help);
            for (id, l) in fes() {
                line(out, name, l, value(id));
            }
        }
    }
    if detail >= Detail::Backends {
        // One series per backend id, labelled as the first port that lists it.
        let mut by_id: Vec<Option<&str>> =
            vec![None; cache.max_backend.map_or(0, |m| m + 1) as usize];
        for p in &cache.ports {
            for (id, l) in &p.backends().labels {
                by_id[*id as usize].get_or_insert(&**l);
            }
        }
        let bes = || {
            by_id
                .iter()
                .enumerate()
                .filter_map(|(id, l)| l.map(|l| (id, l)))
        };
        let c = |id: usize| r.backends.get(id).copied().unwrap_or_default();
        let n = |id: usize| r.backend_conns.get(id).copied().unwrap_or(0);
        for (name, kind, help, value) in [
            (
                "xlb_backend_packets_total",
                "counter",
                "Packets forwarded to a backend (pod address and target port).",
                &(|id| c(id).packets) as &dyn Fn(usize) -> u64,
            ),
            (
                "xlb_backend_bytes_total",
                "counter",
                "Bytes (whole frames as received) forwarded to a backend.",
                &|id| c(id).bytes,
            ),
            (
                "xlb_backend_new_flows_total",
                "counter",
                "Flows the datapath sent to a backend: connection-table entries created for it.",
                &|id| c(id).new_flows,
            ),
            (
                "xlb_backend_connections",
                "gauge",
                "Active flows to a backend in the connection table, as the last census counted them.",
                &n,
            ),
        ] {
            family(out, name, kind, help);
            for (id, l) in bes() {
                line(out, name, l, value(id));
            }
        }
        family(
            out,
            "xlb_backend_slots",
            "gauge",
            "Maglev table slots a Service port gives a backend (0: takes no new flows).",
        );
        for p in &cache.ports {
            out.push_str(&p.backends().slots);
        }
    }
}

fn line(out: &mut String, name: &str, labels: &str, v: u64) {
    out.push_str(name);
    out.push_str(labels);
    let _ = writeln!(out, " {v}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::reconcile::{BackendSnapshot, FrontendSnapshot};

    fn port(name: &str, fe: u32, bes: &[u32]) -> Arc<ServiceSnapshot> {
        Arc::new(ServiceSnapshot {
            name: name.into(),
            protocol: "TCP".into(),
            service_id: fe,
            table_size: 1021,
            frontends: vec![FrontendSnapshot {
                addr: Some([198, 19, 0, fe as u8].into()),
                port: 80,
                kind: "LoadBalancer".into(),
                frontend_id: fe,
            }],
            backends: bes
                .iter()
                .map(|id| BackendSnapshot {
                    addr: [198, 18, 1, *id as u8].into(),
                    port: 8080,
                    node: Some("n\"1".into()),
                    local: true,
                    weight: 1,
                    state: "ready".into(),
                    backend_id: *id,
                    slots: 10 + id,
                })
                .collect(),
        })
    }

    fn render(cache: &SeriesCache, detail: Detail) -> String {
        let fe = [Counter {
            packets: 5,
            bytes: 300,
            new_flows: 2,
        }; 4];
        let be = [Counter {
            packets: 7,
            bytes: 9,
            new_flows: 1,
        }; 4];
        let mut out = String::new();
        write(
            &mut out,
            cache,
            detail,
            &Readings {
                frontends: &fe,
                backends: &be,
                frontend_conns: &[0, 3],
                backend_conns: &[],
            },
            |o, name, kind, _| {
                let _ = writeln!(o, "# TYPE {name} {kind}");
            },
        );
        out
    }

    #[test]
    fn details_export_what_they_name() {
        let mut cache = SeriesCache::default();
        let snap = Snapshot {
            services: vec![port("ns/a:http", 1, &[0, 2]), port("ns/b:http", 2, &[2, 3])],
        };
        cache.refresh(&snap);
        assert_eq!(
            cache.counts(),
            Counts {
                frontends: 2,
                backends: 3,
                slots: 4
            }
        );
        let all = render(&cache, Detail::Backends);
        assert!(all.contains(
            "xlb_frontend_connections{service=\"ns/a:http\",protocol=\"TCP\",kind=\"LoadBalancer\",frontend=\"198.19.0.1:80\"} 3\n"
        ), "{all}");
        assert!(all.contains(
            "xlb_backend_packets_total{backend=\"198.18.1.2:8080\",protocol=\"TCP\",node=\"n\\\"1\"} 7\n"
        ), "{all}");
        // A backend shared by two ports: one counter series, a slots series per port.
        assert_eq!(all.matches("xlb_backend_bytes_total{").count(), 3);
        assert_eq!(all.matches("xlb_backend_slots{").count(), 4);
        assert!(all.contains("state=\"ready\"} 12\n"), "{all}");
        assert_eq!(
            all.lines().filter(|l| !l.starts_with('#')).count(),
            cache.counts().series(Detail::Backends)
        );
        let fes = render(&cache, Detail::Frontends);
        assert!(!fes.contains("xlb_backend"), "{fes}");
        assert_eq!(
            fes.lines().filter(|l| !l.starts_with('#')).count(),
            cache.counts().series(Detail::Frontends)
        );
        assert_eq!(render(&cache, Detail::None), "");
    }

    #[test]
    fn a_changed_port_is_prepared_again_the_others_kept() {
        let mut cache = SeriesCache::default();
        let a = port("ns/a:http", 1, &[0]);
        cache.refresh(&Snapshot {
            services: vec![a.clone(), port("ns/b:http", 2, &[1])],
        });
        let kept = cache.ports[0].clone();
        let b2 = port("ns/b:http", 2, &[1, 3]);
        cache.refresh(&Snapshot {
            services: vec![a, b2.clone()],
        });
        assert!(Arc::ptr_eq(&cache.ports[0], &kept));
        assert!(Arc::ptr_eq(&cache.ports[1].snap, &b2));
        assert!(
            cache.ports[1].backends.get().is_none(),
            "prepared when first exported"
        );
        assert_eq!(cache.counts().backends, 3);
        assert!(render(&cache, Detail::Backends).contains("198.18.1.3:8080"));
        cache.refresh(&Snapshot::default());
        assert_eq!(cache.counts(), Counts::default());
        assert_eq!(
            render(&cache, Detail::Backends),
            "# TYPE xlb_frontend_packets_total counter\n# TYPE xlb_frontend_bytes_total counter\n# TYPE xlb_frontend_new_flows_total counter\n# TYPE xlb_frontend_connections gauge\n# TYPE xlb_backend_packets_total counter\n# TYPE xlb_backend_bytes_total counter\n# TYPE xlb_backend_new_flows_total counter\n# TYPE xlb_backend_connections gauge\n# TYPE xlb_backend_slots gauge\n"
        );
    }

    #[test]
    fn the_cap_steps_the_detail_down_until_the_series_fit() {
        let c = Counts {
            frontends: 20_000,
            backends: 100_000,
            slots: 100_000,
        };
        let opts = |detail, max_series| MetricsOptions { detail, max_series };
        assert_eq!(c.series(Detail::Backends), 580_000);
        assert_eq!(c.choose(&opts(Detail::Backends, 580_000)), Detail::Backends);
        assert_eq!(
            c.choose(&opts(Detail::Backends, 579_999)),
            Detail::Frontends
        );
        assert_eq!(c.choose(&opts(Detail::Backends, 79_999)), Detail::None);
        assert_eq!(
            c.choose(&opts(Detail::Frontends, usize::MAX)),
            Detail::Frontends
        );
        assert_eq!(c.choose(&opts(Detail::None, 0)), Detail::None);
        let mut cache = SeriesCache {
            counts: c,
            ..Default::default()
        };
        assert_eq!(
            cache.choose(&opts(Detail::Backends, 100_000)),
            Detail::Frontends
        );
        assert_eq!(cache.exported, Some(Detail::Frontends));
    }
}
