//! `xlb run --metrics-addr ADDR`: Prometheus metrics at `/metrics`, and the probes (`/livez`,
//! `/healthz`, `/readyz`, with the meanings [`health::probe`] gives them on every server).
//!
//! Every scrape opens the pinned maps afresh (a handful of syscalls) and reads the counters of
//! the programmed frontends and backends. It never reads the connection table: the connection
//! gauges come from the last connection census ([`census`]), whose age is a metric of its own,
//! so a scrape costs the same with ten flows or ten million. [`render`] writes the families in
//! groups: frontends, backends, datapath reasons, connection table, control plane.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use serde::Serialize;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use crate::{
    datapath::conntrack,
    datapath::maps::Maps,
    datapath::reconcile::Snapshot,
    observe::census::Census,
    observe::counters::{self, ReasonClass},
    observe::health::{self, Readiness},
    observe::http::{self, Request, Response, Router},
    observe::ifaces,
    observe::series::{self, Counts, Detail, MetricsOptions, SeriesCache},
    sys::clock::unix_now,
};

/// Upper bounds of the reconcile duration histogram, in seconds.
const BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A Prometheus histogram (cumulative buckets when rendered).
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    pub fn observe(&mut self, v: f64) {
        if let Some(i) = BUCKETS.iter().position(|b| v <= *b) {
            self.counts[i] += 1;
        }
        self.count += 1;
        self.sum += v;
    }
}

/// Upper bounds of the sync and apply duration histograms, in seconds: a change costs well
/// under a millisecond, a full sync of a large cluster seconds.
const SYNC_BUCKETS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Upper bounds of `xlb_network_programming_duration_seconds`: from milliseconds (xlb's own
/// part) to the minutes an EndpointSlice controller may lag by.
const NETWORK_BUCKETS: [f64; 18] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
];

/// A Prometheus histogram over a fixed list of upper bounds.
#[derive(Debug, Clone)]
pub struct Bounded {
    bounds: &'static [f64],
    counts: Vec<u64>,
    pub count: u64,
    pub sum: f64,
}

impl Bounded {
    fn new(bounds: &'static [f64]) -> Bounded {
        Bounded {
            bounds,
            counts: vec![0; bounds.len()],
            count: 0,
            sum: 0.0,
        }
    }

    pub fn observe(&mut self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.counts[i] += 1;
        }
        self.count += 1;
        self.sum += v;
    }

    /// (upper bound, observations at or below it), cumulative, without `+Inf`.
    pub fn cumulative(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        self.bounds.iter().zip(&self.counts).scan(0, |cum, (b, n)| {
            *cum += n;
            Some((*b, *cum))
        })
    }
}

/// The programming figures kube-proxy exports, under xlb's names (`docs/operations.md`).
#[derive(Debug, Clone)]
pub struct Programming {
    /// `xlb_sync_duration_seconds`: one programming pass (kube-proxy's
    /// `sync_proxy_rules_duration_seconds`).
    pub sync: Bounded,
    /// `xlb_apply_duration_seconds`: the map writes of a pass.
    pub apply: Bounded,
    /// `xlb_network_programming_duration_seconds`: an EndpointSlice's
    /// `last-change-trigger-time` to its change programmed.
    pub network: Bounded,
}

impl Default for Programming {
    fn default() -> Programming {
        Programming {
            sync: Bounded::new(&SYNC_BUCKETS),
            apply: Bounded::new(&SYNC_BUCKETS),
            network: Bounded::new(&NETWORK_BUCKETS),
        }
    }
}

/// What the run loop reports, for the metrics and the probes.
#[derive(Debug, Clone)]
pub struct StatusView {
    /// As `/readyz` answers.
    pub ready: bool,
    pub generation: u64,
    pub last_success_unix: f64,
    pub reconcile: Histogram,
    pub reconcile_errors: u64,
    /// Totals of each `ApplyReport` field.
    pub changes: BTreeMap<String, u64>,
    pub expired_flows: u64,
    pub released_backends: u64,
    /// Backends out of the plan still kept for their open flows.
    pub draining_backends: u64,
    pub snapshot: Snapshot,
    pub started_unix: f64,
    /// Every configured interface, by name.
    pub ifaces: BTreeMap<String, IfaceView>,
    /// The last connection census, and every census's totals.
    pub census: Option<Arc<Census>>,
    pub census_walks: u64,
    pub census_cpu_s: f64,
    pub census_read: u64,
    /// kube-proxy's programming figures.
    pub programming: Programming,
}

/// A configured interface as the link watch last saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IfaceView {
    pub attached: bool,
    /// The interface index attached to (0: never attached).
    pub ifindex: u32,
    /// Times the datapath was attached again after the interface came back.
    pub reattached: u64,
}

/// Shared between the run loop and the server.
#[derive(Debug)]
pub struct RunStatus {
    readiness: Readiness,
    inner: Mutex<StatusView>,
}

impl RunStatus {
    /// Reports liveness and readiness through `readiness` (shared with the health server).
    pub fn new(readiness: Readiness) -> Arc<RunStatus> {
        Arc::new(RunStatus {
            readiness,
            inner: Mutex::new(StatusView {
                ready: false,
                generation: 0,
                last_success_unix: 0.0,
                reconcile: Histogram::default(),
                reconcile_errors: 0,
                changes: BTreeMap::new(),
                expired_flows: 0,
                released_backends: 0,
                draining_backends: 0,
                snapshot: Snapshot::default(),
                started_unix: unix_now(),
                ifaces: BTreeMap::new(),
                census: None,
                census_walks: 0,
                census_cpu_s: 0.0,
                census_read: 0,
                programming: Programming::default(),
            }),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut StatusView) -> T) -> T {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    pub fn view(&self) -> StatusView {
        let mut view = self.with(|s| s.clone());
        view.ready = self.readiness.is_ready();
        view
    }

    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// The generation programmed last (0: none yet).
    pub fn generation(&self) -> u64 {
        self.with(|s| s.generation)
    }

    /// The run loop is alive.
    pub fn heartbeat(&self) {
        self.readiness.heartbeat();
    }

    /// A full programming succeeded: generation `generation`, `report` (an `ApplyReport`: every
    /// numeric field is added to `xlb_reconcile_changes_total{change=...}`, except
    /// `backends_draining`, a level), what is now programmed. Makes `/readyz` answer 200;
    /// returns whether this was the first time.
    pub fn programmed(
        &self,
        generation: u64,
        took: Duration,
        report: &impl Serialize,
        snapshot: &Snapshot,
    ) -> bool {
        let fields = serde_json::to_value(report).unwrap_or_default();
        self.with(|s| {
            s.generation = generation;
            s.last_success_unix = unix_now();
            s.reconcile.observe(took.as_secs_f64());
            if let Some(obj) = fields.as_object() {
                for (k, v) in obj {
                    match (k.as_str(), v.as_u64()) {
                        ("backends_draining", Some(n)) => s.draining_backends = n,
                        (_, Some(n)) => *s.changes.entry(k.clone()).or_default() += n,
                        _ => {}
                    }
                }
            }
            s.snapshot = snapshot.clone();
        });
        let first = !self.readiness.is_synced();
        self.readiness.set_ready();
        first
    }

    /// Times of one successful programming pass: `sync` the whole pass (compile, apply, state
    /// file), `apply` the map writes of it, and the `endpoints.kubernetes.io/last-change-
    /// trigger-time`s of the EndpointSlice changes it programmed. Trigger times before the
    /// process started are not counted (as kube-proxy does): a restart's first sync would
    /// otherwise report how old the cluster's slices are, not how fast xlb programs them.
    pub fn observe_programming(
        &self,
        sync: Duration,
        apply: Duration,
        triggers: &[std::time::SystemTime],
    ) {
        let now = unix_now();
        self.with(|s| {
            let p = &mut s.programming;
            p.sync.observe(sync.as_secs_f64());
            p.apply.observe(apply.as_secs_f64());
            for t in triggers {
                let Ok(at) = t.duration_since(std::time::UNIX_EPOCH) else {
                    continue;
                };
                let at = at.as_secs_f64();
                if at < s.started_unix {
                    continue;
                }
                p.network.observe((now - at).max(0.0));
            }
        });
    }

    /// The datapath is attached to `iface` (index `ifindex`); `again`: after the interface
    /// came back.
    pub fn iface_attached(&self, iface: &str, ifindex: u32, again: bool) {
        self.with(|s| {
            let v = s.ifaces.entry(iface.to_string()).or_default();
            v.attached = true;
            v.ifindex = ifindex;
            v.reattached += u64::from(again);
        });
        self.readiness.set_attached(iface, true);
    }

    /// `iface` is gone (or could not be attached again): `/readyz` answers 503 until
    /// [`Self::iface_attached`].
    pub fn iface_detached(&self, iface: &str) {
        self.with(|s| s.ifaces.entry(iface.to_string()).or_default().attached = false);
        self.readiness.set_attached(iface, false);
    }

    /// A connection census ended (and swept the idle flows it found).
    pub fn census_taken(&self, census: Census) {
        self.with(|s| {
            s.census_walks += 1;
            s.census_cpu_s += census.cpu_s;
            s.census_read += census.read;
            s.expired_flows += census.expired;
            s.census = Some(Arc::new(census));
        });
    }

    /// The last census and its number (`census_walks`), if it is later than census `seen`.
    pub fn census_after(&self, seen: u64) -> Option<(u64, Arc<Census>)> {
        self.with(|s| {
            (s.census_walks > seen)
                .then(|| s.census.clone().map(|c| (s.census_walks, c)))
                .flatten()
        })
    }

    /// A programming attempt failed (bad config, map error); the last good state stays.
    pub fn program_failed(&self) {
        self.with(|s| s.reconcile_errors += 1);
    }

    /// Drained backends were released; `draining` are left.
    pub fn swept(&self, released: usize, draining: usize) {
        self.with(|s| {
            s.released_backends += released as u64;
            s.draining_backends = draining as u64;
        });
    }
}

/// Binds the metrics address (before anything is attached, so a bad address fails fast).
pub fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    http::bind(addr).with_context(|| format!("--metrics-addr {addr}"))
}

/// Serves `/metrics` (under `opts`) and the probes on `listener` from a task of `runtime`.
pub fn serve(
    runtime: &Handle,
    listener: TcpListener,
    pin_dir: PathBuf,
    status: Arc<RunStatus>,
    opts: MetricsOptions,
) -> anyhow::Result<JoinHandle<()>> {
    let addr = listener.local_addr()?;
    let scraper = Arc::new(Scraper {
        pin_dir,
        opts,
        // Scrapes take turns: the prepared text is shared, and two at once would only double
        // the memory of the largest exposition.
        cache: Mutex::new(SeriesCache::default()),
    });
    runtime.spawn(keep_prepared(scraper.clone(), status.clone()));
    let router: Router = Arc::new(move |request: &Request| route(&scraper, &status, request));
    tracing::info!(%addr, "serving /metrics, /livez, /healthz and /readyz");
    Ok(http::serve(runtime, listener, router))
}

const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How soon after a programming the label text of the changed Service ports is prepared.
const PREPARE_EVERY: Duration = Duration::from_secs(1);

/// Prepares the label text of each generation as it is programmed, so that no scrape pays for
/// it (at 10,000 Services, a cold preparation costs more than the scrape that uses it).
async fn keep_prepared(scraper: Arc<Scraper>, status: Arc<RunStatus>) {
    let mut tick = tokio::time::interval(PREPARE_EVERY);
    let mut prepared = None;
    loop {
        tick.tick().await;
        let generation = status.generation();
        if prepared == Some(generation) {
            continue;
        }
        prepared = Some(generation);
        let (scraper, status) = (scraper.clone(), status.clone());
        let _ = tokio::task::spawn_blocking(move || {
            let mut cache = scraper.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache.refresh(&status.view().snapshot);
            let detail = cache.choose(&scraper.opts);
            cache.prepare(detail);
        })
        .await;
    }
}

/// What a `/metrics` scrape reads and keeps.
struct Scraper {
    pin_dir: PathBuf,
    opts: MetricsOptions,
    cache: Mutex<SeriesCache>,
}

fn route(scraper: &Scraper, status: &RunStatus, request: &Request) -> Response {
    let response = health::read_only(request)
        .or_else(|| health::probe(&request.path, status.readiness()))
        .unwrap_or_else(|| match request.path.as_str() {
            "/metrics" => scrape(
                scraper,
                &status.view(),
                request.accept.contains("application/openmetrics-text"),
            ),
            "/" => Response::text(
                200,
                "xlb: /metrics (Prometheus), /livez, /healthz, /readyz\n",
            ),
            _ => Response::text(404, "not found\n"),
        });
    response.with_header("Cache-Control", "no-cache".into())
}

fn scrape(scraper: &Scraper, view: &StatusView, openmetrics: bool) -> Response {
    let mut cache = scraper.cache.lock().unwrap_or_else(|p| p.into_inner());
    let body = Maps::from_pins(&scraper.pin_dir)
        .and_then(|maps| render_with(&maps, view, openmetrics, &scraper.opts, &mut cache));
    drop(cache);
    match body {
        Ok(body) => Response {
            status: 200,
            content_type: if openmetrics { OPENMETRICS } else { PROMETHEUS },
            headers: Vec::new(),
            body,
        },
        Err(e) => {
            tracing::warn!(
                error = format!("{e:#}"),
                "cannot read the datapath for /metrics"
            );
            Response::text(500, format!("reading the datapath: {e:#}\n"))
        }
    }
}

/// The exposition text being built: families with their HELP and TYPE, then samples.
struct Expo {
    out: String,
    openmetrics: bool,
}

impl Expo {
    /// Starts family `name` (counters are named with their `_total` suffix here).
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        family_into(&mut self.out, self.openmetrics, name, kind, help);
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", number(value));
    }

    fn labelled(&mut self, name: &str, labels: &Labels, value: f64) {
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.sample(name, &labels, value);
    }

    /// A family of one sample without labels.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// A family of one sample per labelled series.
    fn series<'a>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        series: impl IntoIterator<Item = (&'a Labels, f64)>,
    ) {
        self.family(name, kind, help);
        for (labels, value) in series {
            self.labelled(name, labels, value);
        }
    }
}

/// Writes family `name`'s HELP and TYPE lines (OpenMetrics names a counter family without its
/// `_total`).
fn family_into(out: &mut String, openmetrics: bool, name: &str, kind: &str, help: &str) {
    let base = if openmetrics && kind == "counter" {
        name.strip_suffix("_total").unwrap_or(name)
    } else {
        name
    };
    let _ = writeln!(out, "# HELP {base} {help}");
    let _ = writeln!(out, "# TYPE {base} {kind}");
}

/// A series' labels, in exposition order.
type Labels = Vec<(&'static str, String)>;

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// The whole exposition with the default [`MetricsOptions`] and no prepared text: datapath
/// counters read from `maps` now, control-plane state from `st`. Prometheus text format 0.0.4,
/// or OpenMetrics 1.0 (`# EOF`, counter families named without `_total`).
pub fn render(maps: &Maps, st: &StatusView, openmetrics: bool) -> anyhow::Result<String> {
    render_with(
        maps,
        st,
        openmetrics,
        &MetricsOptions::default(),
        &mut SeriesCache::default(),
    )
}

/// [`render`] under `opts`, with the per-object label text kept in `cache` across scrapes.
pub fn render_with(
    maps: &Maps,
    st: &StatusView,
    openmetrics: bool,
    opts: &MetricsOptions,
    cache: &mut SeriesCache,
) -> anyhow::Result<String> {
    cache.refresh(&st.snapshot);
    let detail = cache.choose(opts);
    // Batched reads of ids 0..n (ids are allocated densely from 0), only those exported.
    let (n_fe, n_be) = cache.id_ranges(detail);
    let fe = if n_fe > 0 {
        maps.frontend_counters(n_fe)?
    } else {
        Vec::new()
    };
    let be = if n_be > 0 {
        maps.backend_counters(n_be)?
    } else {
        Vec::new()
    };
    let global = counters::global(maps)?;
    let capacity = conntrack::capacity(maps)?;
    let census = st.census.as_deref();
    let fe_conns = dense(census.map(|c| &c.per_frontend), n_fe);
    let be_conns = dense(census.map(|c| &c.per_backend), n_be);
    let mut e = Expo {
        out: String::with_capacity(cache.last_len + 64 * 1024),
        openmetrics,
    };
    series::write(
        &mut e.out,
        cache,
        detail,
        &series::Readings {
            frontends: &fe,
            backends: &be,
            frontend_conns: &fe_conns,
            backend_conns: &be_conns,
        },
        |out, name, kind, help| family_into(out, openmetrics, name, kind, help),
    );
    detail_families(&mut e, opts, detail, cache.counts());
    reason_families(&mut e, &global);
    conntrack_families(&mut e, st, capacity);
    syn_guard_families(&mut e, maps)?;
    control_plane_families(&mut e, st);
    attach_families(&mut e, st);
    egress_families(&mut e, &ifaces::read(maps));
    if openmetrics {
        e.out.push_str("# EOF\n");
    }
    cache.last_len = e.out.len();
    Ok(e.out)
}

/// A census's counts by id as a vector of `0..n` (a scrape looks each id up once).
fn dense(by_id: Option<&BTreeMap<u32, u64>>, n: u32) -> Vec<u64> {
    let mut out = vec![0; n as usize];
    for (id, v) in by_id.into_iter().flatten() {
        if let Some(slot) = out.get_mut(*id as usize) {
            *slot = *v;
        }
    }
    out
}

/// The per-object detail exported, and whether `--metrics-max-series` lowered it.
fn detail_families(e: &mut Expo, opts: &MetricsOptions, detail: Detail, counts: Counts) {
    e.family(
        "xlb_metrics_detail",
        "gauge",
        "The per-object series this endpoint exports (1 for the level): backends, frontends or none (--metrics-detail, capped by --metrics-max-series).",
    );
    e.sample("xlb_metrics_detail", &[("level", detail.name())], 1.0);
    e.single(
        "xlb_metrics_detail_capped",
        "gauge",
        "1 while --metrics-max-series keeps the per-object series below the --metrics-detail asked for.",
        if detail < opts.detail { 1.0 } else { 0.0 },
    );
    e.single(
        "xlb_metrics_object_series",
        "gauge",
        "Per-object series (per frontend, per backend) the --metrics-detail asked for would export.",
        counts.series(opts.detail) as f64,
    );
}

/// The global counters, one family per [`ReasonClass`], labelled by reason.
fn reason_families(e: &mut Expo, global: &[(&'static str, u64)]) {
    for (class, name, help) in [
        (
            ReasonClass::Passed,
            "xlb_passed_packets_total",
            "Packets handed to the kernel untouched, by reason (the names `xlb stats` prints).",
        ),
        (
            ReasonClass::Dropped,
            "xlb_dropped_packets_total",
            "Packets dropped by the datapath, by reason.",
        ),
        (
            ReasonClass::Event,
            "xlb_datapath_events_total",
            "Forwarding paths, conntrack and reply events, by reason (one packet may count several).",
        ),
    ] {
        e.family(name, "counter", help);
        for (reason, v) in global {
            if ReasonClass::of(reason) == class {
                e.sample(name, &[("reason", reason)], *v as f64);
            }
        }
    }
}

/// The way frames leave each interface, and its driver's XDP errors: a path the kernel drops
/// frames on shows here (`xlb_iface_xdp_errors_total` is what the shipped alert watches).
fn egress_families(e: &mut Expo, list: &[ifaces::Iface]) {
    e.family(
        "xlb_iface_egress_path",
        "gauge",
        "The way frames xlb builds leave an interface (1 for the path in use), with the reason.",
    );
    for i in list {
        let name = i.name.clone().unwrap_or_else(|| i.ifindex.to_string());
        e.sample(
            "xlb_iface_egress_path",
            &[
                ("iface", &name),
                ("xdp_mode", i.xdp_mode()),
                ("path", i.path()),
                ("reason", i.why().name()),
            ],
            1.0,
        );
    }
    e.family(
        "xlb_iface_xdp_errors_total",
        "counter",
        "XDP frames the interface's driver failed to transmit or redirect, by ethtool statistic.",
    );
    for i in list {
        let Some(name) = &i.name else { continue };
        for (stat, v) in &i.xdp_errors {
            e.sample(
                "xlb_iface_xdp_errors_total",
                &[("iface", name), ("stat", stat)],
                *v as f64,
            );
        }
    }
}

/// The connection table (as the last census saw it), the census itself, and what the sweep
/// removes from the table.
fn conntrack_families(e: &mut Expo, st: &StatusView, capacity: u32) {
    if let Some(c) = &st.census {
        e.single(
            "xlb_conntrack_entries",
            "gauge",
            "Flows in the connection table (its fill, closing ones included), as the last census counted them.",
            c.entries as f64,
        );
        e.single(
            "xlb_conntrack_active",
            "gauge",
            "Active connections: flows neither closed by a FIN/RST nor idle beyond their timeout (the connection gauges count these).",
            c.active as f64,
        );
        e.single(
            "xlb_conntrack_census_timestamp_seconds",
            "gauge",
            "Unix time the last connection census ended (the connection gauges are this old).",
            c.taken_unix,
        );
        e.single(
            "xlb_conntrack_census_duration_seconds",
            "gauge",
            "Wall time of the last connection census (paced by --census-rate).",
            c.walk_s,
        );
    }
    e.single(
        "xlb_conntrack_census_walks_total",
        "counter",
        "Connection censuses completed.",
        st.census_walks as f64,
    );
    e.single(
        "xlb_conntrack_census_entries_read_total",
        "counter",
        "Connection-table entries the censuses read.",
        st.census_read as f64,
    );
    e.single(
        "xlb_conntrack_census_cpu_seconds_total",
        "counter",
        "CPU time the connection censuses used (their thread, syscalls included).",
        st.census_cpu_s,
    );
    e.single(
        "xlb_conntrack_capacity",
        "gauge",
        "Capacity of the connection table (--conntrack-size); the LRU evicts beyond it.",
        capacity as f64,
    );
    e.single(
        "xlb_conntrack_expired_total",
        "counter",
        "Idle flows removed from the connection table by the idle sweep (after each connection census).",
        st.expired_flows as f64,
    );
    e.single(
        "xlb_backends_released_total",
        "counter",
        "Drained backends released once no flow used them.",
        st.released_backends as f64,
    );
    e.single(
        "xlb_backends_draining",
        "gauge",
        "Backends no longer planned, kept while open flows still use them.",
        st.draining_backends as f64,
    );
}

/// The SYN-flood guard: its rate, where it is engaged now, how often it engaged.
fn syn_guard_families(e: &mut Expo, maps: &Maps) -> anyhow::Result<()> {
    let g = maps.syn_guard(crate::sys::clock::monotonic_ns())?;
    e.single(
        "xlb_syn_guard_rate",
        "gauge",
        "New flows per second per CPU above which SYNs get no conntrack write (0: off).",
        maps.syn_guard_rate()? as f64,
    );
    e.single(
        "xlb_syn_guard_engaged_cpus",
        "gauge",
        "CPUs on which the SYN-flood guard is engaged in the current second.",
        g.engaged_cpus as f64,
    );
    e.single(
        "xlb_syn_guard_trips_total",
        "counter",
        "Seconds (per CPU) in which the SYN-flood guard engaged.",
        g.trips as f64,
    );
    Ok(())
}

/// What the run loop reports: the programmed configuration, reconciles, readiness, the process.
fn control_plane_families(e: &mut Expo, st: &StatusView) {
    e.single(
        "xlb_service_ports",
        "gauge",
        "Service ports programmed into the datapath.",
        st.snapshot.services.len() as f64,
    );
    e.single(
        "xlb_config_generation",
        "gauge",
        "Generation of the configuration programmed (increments on every successful reload).",
        st.generation as f64,
    );
    e.single(
        "xlb_config_last_success_timestamp_seconds",
        "gauge",
        "Unix time of the last successful programming (0: none yet).",
        st.last_success_unix,
    );
    reconcile_histogram(e, &st.reconcile);
    programming_families(e, &st.programming);
    e.single(
        "xlb_reconcile_errors_total",
        "counter",
        "Configurations that failed to load or apply (the last good state stays programmed).",
        st.reconcile_errors as f64,
    );
    e.family(
        "xlb_reconcile_changes_total",
        "counter",
        "Map changes written by reconciles, by kind.",
    );
    for (k, v) in &st.changes {
        e.sample("xlb_reconcile_changes_total", &[("change", k)], *v as f64);
    }
    e.single(
        "xlb_ready",
        "gauge",
        "1 once the datapath has been fully programmed (what /readyz reports).",
        if st.ready { 1.0 } else { 0.0 },
    );
    e.single(
        "xlb_start_time_seconds",
        "gauge",
        "Unix time the xlb run process started.",
        st.started_unix,
    );
    e.family("xlb_build_info", "gauge", "The xlb version (value 1).");
    e.sample(
        "xlb_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
}

/// The configured interfaces: attached now, and how often attached again.
fn attach_families(e: &mut Expo, st: &StatusView) {
    let labels: Vec<(Labels, &IfaceView)> = st
        .ifaces
        .iter()
        .map(|(name, v)| (vec![("iface", name.clone())], v))
        .collect();
    e.series(
        "xlb_iface_attached",
        "gauge",
        "1 while the datapath is attached to a configured interface, 0 while it is gone.",
        labels
            .iter()
            .map(|(l, v)| (l, if v.attached { 1.0 } else { 0.0 })),
    );
    e.series(
        "xlb_iface_reattach_total",
        "counter",
        "Times the datapath was attached again to a configured interface that came back (new ifindex).",
        labels.iter().map(|(l, v)| (l, v.reattached as f64)),
    );
}

fn reconcile_histogram(e: &mut Expo, h: &Histogram) {
    e.family(
        "xlb_reconcile_duration_seconds",
        "histogram",
        "Time to load, compile and apply a configuration to the maps.",
    );
    let mut cum = 0;
    for (i, b) in BUCKETS.iter().enumerate() {
        cum += h.counts[i];
        e.sample(
            "xlb_reconcile_duration_seconds_bucket",
            &[("le", &number(*b))],
            cum as f64,
        );
    }
    e.sample(
        "xlb_reconcile_duration_seconds_bucket",
        &[("le", "+Inf")],
        h.count as f64,
    );
    e.sample("xlb_reconcile_duration_seconds_sum", &[], h.sum);
    e.sample("xlb_reconcile_duration_seconds_count", &[], h.count as f64);
}

/// kube-proxy's programming histograms.
fn programming_families(e: &mut Expo, p: &Programming) {
    bounded_histogram(
        e,
        "xlb_sync_duration_seconds",
        "Time of one programming pass: compile the changes, apply them to the maps, write the state file.",
        &p.sync,
    );
    bounded_histogram(
        e,
        "xlb_apply_duration_seconds",
        "Time of the map writes of one programming pass.",
        &p.apply,
    );
    bounded_histogram(
        e,
        "xlb_network_programming_duration_seconds",
        "Time from an EndpointSlice's endpoints.kubernetes.io/last-change-trigger-time to its change programmed into the maps.",
        &p.network,
    );
}

fn bounded_histogram(e: &mut Expo, name: &str, help: &str, h: &Bounded) {
    e.family(name, "histogram", help);
    let bucket = format!("{name}_bucket");
    for (b, cum) in h.cumulative() {
        e.sample(&bucket, &[("le", &number(b))], cum as f64);
    }
    e.sample(&bucket, &[("le", "+Inf")], h.count as f64);
    e.sample(&format!("{name}_sum"), &[], h.sum);
    e.sample(&format!("{name}_count"), &[], h.count as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let status = RunStatus::new(Readiness::new());
        status.heartbeat();
        let scraper = Scraper {
            pin_dir: "/nonexistent/xlb-pins".into(),
            opts: MetricsOptions::default(),
            cache: Mutex::new(SeriesCache::default()),
        };
        let get = |method: &str, path: &str| {
            route(
                &scraper,
                &status,
                &Request {
                    method: method.into(),
                    path: path.into(),
                    accept: "*/*".into(),
                },
            )
        };
        assert_eq!(get("GET", "/healthz").status, 200);
        assert_eq!(get("GET", "/livez").status, 200);
        assert_eq!(get("GET", "/readyz").status, 503);
        assert_eq!(get("HEAD", "/").status, 200);
        assert_eq!(get("GET", "/nope").status, 404);
        assert_eq!(get("POST", "/metrics").status, 405);
        // No pinned maps to read.
        let metrics = get("GET", "/metrics");
        assert_eq!(metrics.status, 500, "{metrics:?}");
        assert!(
            metrics
                .headers
                .contains(&("Cache-Control", "no-cache".into()))
        );
        let r = R {
            frontends_written: 1,
            tables_swapped: 0,
            backends_draining: 0,
        };
        assert!(status.programmed(1, Duration::from_millis(1), &r, &Snapshot::default()));
        assert!(!status.programmed(2, Duration::from_millis(1), &r, &Snapshot::default()));
        assert_eq!(get("GET", "/readyz").status, 200);
    }

    #[derive(Serialize)]
    struct R {
        frontends_written: usize,
        tables_swapped: usize,
        backends_draining: usize,
    }

    #[test]
    fn exposition_lines() {
        let mut e = Expo {
            out: String::new(),
            openmetrics: false,
        };
        e.family("xlb_x_total", "counter", "X.");
        e.sample("xlb_x_total", &[("a", "q\"\\\n")], 3.0);
        e.sample("xlb_x_total", &[], 0.25);
        assert_eq!(
            e.out,
            "# HELP xlb_x_total X.\n# TYPE xlb_x_total counter\n\
             xlb_x_total{a=\"q\\\"\\\\\\n\"} 3\nxlb_x_total 0.25\n"
        );
        let mut e = Expo {
            out: String::new(),
            openmetrics: true,
        };
        e.family("xlb_x_total", "counter", "X.");
        assert!(e.out.contains("# TYPE xlb_x counter"), "{}", e.out);
    }

    #[test]
    fn histogram_buckets() {
        let mut h = Histogram::default();
        h.observe(0.0005);
        h.observe(0.003);
        h.observe(100.0);
        assert_eq!(h.count, 3);
        assert_eq!(h.counts[0], 1);
        assert_eq!(h.counts[2], 1);
        assert_eq!(h.counts.iter().sum::<u64>(), 2, "100 s only lands in +Inf");
    }

    #[test]
    fn status_changes_accumulate() {
        let st = RunStatus::new(Readiness::new());
        assert!(!st.view().ready);
        let r = R {
            frontends_written: 2,
            tables_swapped: 1,
            backends_draining: 3,
        };
        st.programmed(1, Duration::from_millis(3), &r, &Snapshot::default());
        st.programmed(2, Duration::from_millis(3), &r, &Snapshot::default());
        st.program_failed();
        let v = st.view();
        assert!(v.ready);
        assert_eq!(v.generation, 2);
        assert_eq!(v.changes["frontends_written"], 4);
        assert_eq!(v.draining_backends, 3);
        assert!(!v.changes.contains_key("backends_draining"));
        assert_eq!(v.reconcile.count, 2);
        assert_eq!(v.reconcile_errors, 1);
    }

    #[test]
    fn programming_histograms_count_trigger_times_since_start() {
        use std::time::SystemTime;
        let st = RunStatus::new(Readiness::new());
        let started = st.view().started_unix;
        let since_start = |s: f64| SystemTime::UNIX_EPOCH + Duration::from_secs_f64(started + s);
        // A change triggered 0.1 s after start, and one from before the process started.
        st.observe_programming(
            Duration::from_micros(300),
            Duration::from_micros(200),
            &[since_start(0.0), since_start(-3600.0)],
        );
        let p = st.view().programming;
        assert_eq!((p.sync.count, p.apply.count), (1, 1));
        assert_eq!(
            p.network.count, 1,
            "the trigger before start is not counted"
        );
        let mut e = Expo {
            out: String::new(),
            openmetrics: false,
        };
        programming_families(&mut e, &p);
        assert!(
            e.out
                .contains("xlb_network_programming_duration_seconds_bucket{le=\"600\"} 1\n"),
            "{}",
            e.out
        );
        assert!(
            e.out
                .contains("xlb_sync_duration_seconds_bucket{le=\"0.0005\"} 1\n")
        );
        assert!(
            e.out
                .contains("xlb_apply_duration_seconds_bucket{le=\"0.0001\"} 0\n")
        );
        assert!(e.out.contains("xlb_apply_duration_seconds_count 1\n"));
    }

    #[test]
    fn interfaces_gone_and_back() {
        let st = RunStatus::new(Readiness::new());
        st.iface_attached("eth0", 4, false);
        st.programmed(
            1,
            Duration::from_millis(1),
            &R {
                frontends_written: 0,
                tables_swapped: 0,
                backends_draining: 0,
            },
            &Snapshot::default(),
        );
        assert!(st.view().ready);
        st.iface_detached("eth0");
        let v = st.view();
        assert!(!v.ready);
        assert_eq!(
            v.ifaces["eth0"],
            IfaceView {
                attached: false,
                ifindex: 4,
                reattached: 0
            }
        );
        st.iface_attached("eth0", 9, true);
        let v = st.view();
        assert!(v.ready);
        assert_eq!(
            v.ifaces["eth0"],
            IfaceView {
                attached: true,
                ifindex: 9,
                reattached: 1
            }
        );
        let mut e = Expo {
            out: String::new(),
            openmetrics: false,
        };
        attach_families(&mut e, &v);
        assert!(
            e.out.contains("xlb_iface_attached{iface=\"eth0\"} 1\n"),
            "{}",
            e.out
        );
        assert!(
            e.out
                .contains("xlb_iface_reattach_total{iface=\"eth0\"} 1\n"),
            "{}",
            e.out
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(number(3.0), "3");
        assert_eq!(number(0.001), "0.001");
        assert_eq!(number(f64::INFINITY), "+Inf");
    }
}
