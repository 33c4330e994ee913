//! `xlb run --metrics-addr ADDR`: Prometheus metrics at `/metrics`, and `/healthz`, `/readyz`.
//!
//! The server is `std::net::TcpListener` with a small HTTP/1.1 handler rather than an HTTP
//! crate: it answers three GET paths with short text bodies, one request per connection
//! (`Connection: close`), for a scraper and the kubelet's probes. That needs no keep-alive,
//! chunking, TLS or routing, and a thread per connection (at most [`MAX_CONNECTIONS`], each
//! with read/write timeouts) keeps a slow client from blocking the probes. Everything the
//! handler does is visible in this file.
//!
//! Readiness: `/readyz` answers 200 only once the run loop has completed its first full
//! programming of the datapath ([`RunStatus::programmed`]); a config source that needs an
//! initial sync (the Kubernetes API) calls it only after that sync was programmed.
//! `/healthz` answers 200 while the run loop keeps ticking ([`RunStatus::heartbeat`]).
//!
//! Every scrape opens the pinned maps afresh (a handful of syscalls) and reads the counters of
//! the programmed frontends and backends, plus one scan of the connection table for the
//! per-frontend and per-backend connection gauges.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde::Serialize;

use crate::{
    counters::{self, ReasonClass},
    datapath::Maps,
    output::unix_now,
    reconcile::Snapshot,
};

/// Requests served at the same time; more get a 503 at once.
pub const MAX_CONNECTIONS: usize = 16;
/// Read and write timeout of a connection.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest request head read.
const MAX_REQUEST: usize = 8192;
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

/// What the run loop reports, for the metrics and the probes.
#[derive(Debug, Clone)]
pub struct StatusView {
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
    pub heartbeat: Instant,
    pub started_unix: f64,
}

/// Shared between the run loop and the server.
#[derive(Debug)]
pub struct RunStatus {
    inner: Mutex<StatusView>,
}

impl RunStatus {
    pub fn new() -> Arc<RunStatus> {
        Arc::new(RunStatus {
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
                heartbeat: Instant::now(),
                started_unix: unix_now(),
            }),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut StatusView) -> T) -> T {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    pub fn view(&self) -> StatusView {
        self.with(|s| s.clone())
    }

    /// The run loop is alive.
    pub fn heartbeat(&self) {
        self.with(|s| s.heartbeat = Instant::now());
    }

    /// A full programming succeeded: generation `generation`, `report` (an `ApplyReport`: every
    /// numeric field is added to `xlb_reconcile_changes_total{change=...}`, except
    /// `backends_draining`, a level), what is now programmed. Makes `/readyz` answer 200.
    pub fn programmed(
        &self,
        generation: u64,
        took: Duration,
        report: &impl Serialize,
        snapshot: &Snapshot,
    ) {
        let fields = serde_json::to_value(report).unwrap_or_default();
        self.with(|s| {
            s.ready = true;
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
    }

    /// A programming attempt failed (bad config, map error); the last good state stays.
    pub fn program_failed(&self) {
        self.with(|s| s.reconcile_errors += 1);
    }

    /// A sweep expired idle flows and released drained backends; `draining` are left.
    pub fn swept(&self, expired: usize, released: usize, draining: usize) {
        self.with(|s| {
            s.expired_flows += expired as u64;
            s.released_backends += released as u64;
            s.draining_backends = draining as u64;
        });
    }
}

/// Binds the metrics address (before anything is attached, so a bad address fails fast).
pub fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).with_context(|| format!("--metrics-addr {addr}"))
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` from a background thread.
/// `healthy_within`: how recent the last heartbeat must be for `/healthz`.
pub fn serve(
    listener: TcpListener,
    pin_dir: PathBuf,
    status: Arc<RunStatus>,
    healthy_within: Duration,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let ctx = Arc::new(Ctx {
        pin_dir,
        status,
        healthy_within,
        active: AtomicUsize::new(0),
    });
    std::thread::Builder::new()
        .name("xlb-metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                if ctx.active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                    ctx.active.fetch_sub(1, Ordering::SeqCst);
                    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
                    let _ = respond(&mut stream, false, 503, TEXT, "busy\n");
                    continue;
                }
                let ctx = ctx.clone();
                let spawned = std::thread::Builder::new()
                    .name("xlb-metrics-conn".into())
                    .spawn({
                        let ctx = ctx.clone();
                        move || {
                            handle(&ctx, stream);
                            ctx.active.fetch_sub(1, Ordering::SeqCst);
                        }
                    });
                if spawned.is_err() {
                    ctx.active.fetch_sub(1, Ordering::SeqCst);
                }
            }
        })
        .context("starting the metrics server thread")?;
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    Ok(())
}

struct Ctx {
    pin_dir: PathBuf,
    status: Arc<RunStatus>,
    healthy_within: Duration,
    active: AtomicUsize,
}

const TEXT: &str = "text/plain; charset=utf-8";
const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A parsed request head.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    method: String,
    path: String,
    openmetrics: bool,
}

fn parse_request(head: &str) -> Option<Request> {
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let target = first.next()?;
    if !first.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let path = target.split('?').next().unwrap_or("").to_string();
    let openmetrics = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("accept") && v.contains("application/openmetrics-text")
        })
    });
    Some(Request {
        method,
        path,
        openmetrics,
    })
}

fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if buf.len() >= MAX_REQUEST {
            return None;
        }
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(buf).ok()
}

fn respond(
    stream: &mut TcpStream,
    head_only: bool,
    code: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        _ => "Service Unavailable",
    };
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-cache\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if !head_only {
        out.push_str(body);
    }
    stream.write_all(out.as_bytes())?;
    stream.flush()
}

fn handle(ctx: &Ctx, mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let Some(req) = read_head(&mut stream).as_deref().and_then(parse_request) else {
        let _ = respond(&mut stream, false, 400, TEXT, "bad request\n");
        return;
    };
    let head_only = req.method == "HEAD";
    if req.method != "GET" && !head_only {
        let _ = respond(&mut stream, false, 405, TEXT, "only GET and HEAD\n");
        return;
    }
    let (code, ctype, body) = route(ctx, &req);
    let _ = respond(&mut stream, head_only, code, ctype, &body);
}

fn route(ctx: &Ctx, req: &Request) -> (u16, &'static str, String) {
    let view = ctx.status.view();
    match req.path.as_str() {
        "/metrics" => {
            let datapath = Maps::from_pins(&ctx.pin_dir);
            match datapath.and_then(|maps| render(&maps, &view, req.openmetrics)) {
                Ok(body) => (
                    200,
                    if req.openmetrics {
                        OPENMETRICS
                    } else {
                        PROMETHEUS
                    },
                    body,
                ),
                Err(e) => {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "cannot read the datapath for /metrics"
                    );
                    (500, TEXT, format!("reading the datapath: {e:#}\n"))
                }
            }
        }
        "/healthz" => {
            let age = view.heartbeat.elapsed();
            if age <= ctx.healthy_within {
                (200, TEXT, "ok\n".into())
            } else {
                (
                    503,
                    TEXT,
                    format!(
                        "the run loop has not ticked for {:.0} s\n",
                        age.as_secs_f64()
                    ),
                )
            }
        }
        "/readyz" => {
            if view.ready {
                (
                    200,
                    TEXT,
                    format!("ready: generation {} programmed\n", view.generation),
                )
            } else {
                (
                    503,
                    TEXT,
                    "not ready: the datapath has not been fully programmed yet\n".into(),
                )
            }
        }
        "/" => (
            200,
            TEXT,
            "xlb: /metrics (Prometheus), /healthz, /readyz\n".into(),
        ),
        _ => (404, TEXT, "not found\n".into()),
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
        let base = if self.openmetrics && kind == "counter" {
            name.strip_suffix("_total").unwrap_or(name)
        } else {
            name
        };
        let _ = writeln!(self.out, "# HELP {base} {help}");
        let _ = writeln!(self.out, "# TYPE {base} {kind}");
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
}

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

/// The whole exposition: datapath counters read from `maps` now, control-plane state from
/// `st`. Prometheus text format 0.0.4, or OpenMetrics 1.0 (`# EOF`, counter families named
/// without `_total`).
pub fn render(maps: &Maps, st: &StatusView, openmetrics: bool) -> anyhow::Result<String> {
    let sample = counters::read(maps, &st.snapshot, true)?;
    let flows = sample.flows.clone().unwrap_or_default();
    let mut e = Expo {
        out: String::new(),
        openmetrics,
    };

    // Frontends.
    struct Fe<'a> {
        service: &'a str,
        protocol: &'a str,
        kind: &'a str,
        frontend: String,
        id: u32,
    }
    let mut fes = Vec::new();
    for s in &st.snapshot.services {
        for f in &s.frontends {
            fes.push(Fe {
                service: &s.name,
                protocol: &s.protocol,
                kind: &f.kind,
                frontend: match f.addr {
                    Some(a) => format!("{a}:{}", f.port),
                    None => format!("*:{}", f.port),
                },
                id: f.frontend_id,
            });
        }
    }
    let fe_labels = |f: &Fe<'_>| -> Vec<(&'static str, String)> {
        vec![
            ("service", f.service.to_string()),
            ("protocol", f.protocol.to_string()),
            ("kind", f.kind.to_string()),
            ("frontend", f.frontend.clone()),
        ]
    };
    let metric = |e: &mut Expo, name: &str, labels: &[(&'static str, String)], v: f64| {
        let l: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        e.sample(name, &l, v);
    };
    e.family(
        "xlb_frontend_packets_total",
        "counter",
        "Packets forwarded through a frontend (LoadBalancer IP, externalIP or NodePort).",
    );
    for f in &fes {
        let c = sample.frontends.get(&f.id).copied().unwrap_or_default();
        metric(
            &mut e,
            "xlb_frontend_packets_total",
            &fe_labels(f),
            c.packets as f64,
        );
    }
    e.family(
        "xlb_frontend_bytes_total",
        "counter",
        "Bytes (whole frames as received) forwarded through a frontend.",
    );
    for f in &fes {
        let c = sample.frontends.get(&f.id).copied().unwrap_or_default();
        metric(
            &mut e,
            "xlb_frontend_bytes_total",
            &fe_labels(f),
            c.bytes as f64,
        );
    }
    e.family(
        "xlb_frontend_new_flows_total",
        "counter",
        "Flows (TCP connections, UDP flows) a frontend's traffic opened: connection-table entries created.",
    );
    for f in &fes {
        let c = sample.frontends.get(&f.id).copied().unwrap_or_default();
        metric(
            &mut e,
            "xlb_frontend_new_flows_total",
            &fe_labels(f),
            c.new_flows as f64,
        );
    }
    e.family(
        "xlb_frontend_connections",
        "gauge",
        "Flows of a frontend in the connection table.",
    );
    for f in &fes {
        let n = flows.per_frontend.get(&f.id).copied().unwrap_or(0);
        metric(&mut e, "xlb_frontend_connections", &fe_labels(f), n as f64);
    }

    // Backends: one series per backend (a pod port shared by two Service ports has one set of
    // counters), and the Maglev slots each Service port gives it.
    let mut bes: BTreeMap<u32, Vec<(&'static str, String)>> = BTreeMap::new();
    for s in &st.snapshot.services {
        for b in &s.backends {
            bes.entry(b.backend_id).or_insert_with(|| {
                vec![
                    ("backend", format!("{}:{}", b.addr, b.port)),
                    ("protocol", s.protocol.clone()),
                    ("node", b.node.clone().unwrap_or_default()),
                ]
            });
        }
    }
    e.family(
        "xlb_backend_packets_total",
        "counter",
        "Packets forwarded to a backend (pod address and target port).",
    );
    for (id, l) in &bes {
        let c = sample.backends.get(id).copied().unwrap_or_default();
        metric(&mut e, "xlb_backend_packets_total", l, c.packets as f64);
    }
    e.family(
        "xlb_backend_bytes_total",
        "counter",
        "Bytes (whole frames as received) forwarded to a backend.",
    );
    for (id, l) in &bes {
        let c = sample.backends.get(id).copied().unwrap_or_default();
        metric(&mut e, "xlb_backend_bytes_total", l, c.bytes as f64);
    }
    e.family(
        "xlb_backend_new_flows_total",
        "counter",
        "Flows the datapath sent to a backend: connection-table entries created for it.",
    );
    for (id, l) in &bes {
        let c = sample.backends.get(id).copied().unwrap_or_default();
        metric(&mut e, "xlb_backend_new_flows_total", l, c.new_flows as f64);
    }
    e.family(
        "xlb_backend_connections",
        "gauge",
        "Flows to a backend in the connection table.",
    );
    for (id, l) in &bes {
        let n = flows.per_backend.get(id).copied().unwrap_or(0);
        metric(&mut e, "xlb_backend_connections", l, n as f64);
    }
    e.family(
        "xlb_backend_slots",
        "gauge",
        "Maglev table slots a Service port gives a backend (0: takes no new flows).",
    );
    for s in &st.snapshot.services {
        for b in &s.backends {
            let l = vec![
                ("service", s.name.clone()),
                ("backend", format!("{}:{}", b.addr, b.port)),
                ("protocol", s.protocol.clone()),
                ("state", b.state.clone()),
            ];
            metric(&mut e, "xlb_backend_slots", &l, b.slots as f64);
        }
    }

    // Global counters by reason.
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
        for (reason, v) in &sample.global {
            if ReasonClass::of(reason) == class {
                e.sample(name, &[("reason", reason)], *v as f64);
            }
        }
    }

    e.family(
        "xlb_conntrack_entries",
        "gauge",
        "Flows in the connection table.",
    );
    e.sample("xlb_conntrack_entries", &[], flows.total as f64);
    e.family(
        "xlb_conntrack_capacity",
        "gauge",
        "Capacity of the connection table (--conntrack-size); the LRU evicts beyond it.",
    );
    e.sample("xlb_conntrack_capacity", &[], flows.capacity as f64);
    e.family(
        "xlb_conntrack_expired_total",
        "counter",
        "Idle flows removed from the connection table by the periodic sweep.",
    );
    e.sample("xlb_conntrack_expired_total", &[], st.expired_flows as f64);
    e.family(
        "xlb_backends_released_total",
        "counter",
        "Drained backends released once no flow used them.",
    );
    e.sample(
        "xlb_backends_released_total",
        &[],
        st.released_backends as f64,
    );
    e.family(
        "xlb_backends_draining",
        "gauge",
        "Backends no longer planned, kept while open flows still use them.",
    );
    e.sample("xlb_backends_draining", &[], st.draining_backends as f64);

    // Control plane.
    e.family(
        "xlb_service_ports",
        "gauge",
        "Service ports programmed into the datapath.",
    );
    e.sample("xlb_service_ports", &[], st.snapshot.services.len() as f64);
    e.family(
        "xlb_config_generation",
        "gauge",
        "Generation of the configuration programmed (increments on every successful reload).",
    );
    e.sample("xlb_config_generation", &[], st.generation as f64);
    e.family(
        "xlb_config_last_success_timestamp_seconds",
        "gauge",
        "Unix time of the last successful programming (0: none yet).",
    );
    e.sample(
        "xlb_config_last_success_timestamp_seconds",
        &[],
        st.last_success_unix,
    );
    e.family(
        "xlb_reconcile_duration_seconds",
        "histogram",
        "Time to load, compile and apply a configuration to the maps.",
    );
    let mut cum = 0;
    for (i, b) in BUCKETS.iter().enumerate() {
        cum += st.reconcile.counts[i];
        e.sample(
            "xlb_reconcile_duration_seconds_bucket",
            &[("le", &number(*b))],
            cum as f64,
        );
    }
    e.sample(
        "xlb_reconcile_duration_seconds_bucket",
        &[("le", "+Inf")],
        st.reconcile.count as f64,
    );
    e.sample("xlb_reconcile_duration_seconds_sum", &[], st.reconcile.sum);
    e.sample(
        "xlb_reconcile_duration_seconds_count",
        &[],
        st.reconcile.count as f64,
    );
    e.family(
        "xlb_reconcile_errors_total",
        "counter",
        "Configurations that failed to load or apply (the last good state stays programmed).",
    );
    e.sample(
        "xlb_reconcile_errors_total",
        &[],
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
    e.family(
        "xlb_ready",
        "gauge",
        "1 once the datapath has been fully programmed (what /readyz reports).",
    );
    e.sample("xlb_ready", &[], if st.ready { 1.0 } else { 0.0 });
    e.family(
        "xlb_start_time_seconds",
        "gauge",
        "Unix time the xlb run process started.",
    );
    e.sample("xlb_start_time_seconds", &[], st.started_unix);
    e.family("xlb_build_info", "gauge", "The xlb version (value 1).");
    e.sample(
        "xlb_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
    if openmetrics {
        e.out.push_str("# EOF\n");
    }
    Ok(e.out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        let r = parse_request("GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAccept: text/plain\r\n\r\n")
            .unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/metrics");
        assert!(!r.openmetrics);
        let r = parse_request(
            "GET /metrics HTTP/1.1\r\naccept: application/openmetrics-text;version=1.0.0\r\n\r\n",
        )
        .unwrap();
        assert!(r.openmetrics);
        assert!(parse_request("garbage\r\n\r\n").is_none());
        assert!(parse_request("GET / SPDY/3\r\n\r\n").is_none());
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
        #[derive(Serialize)]
        struct R {
            frontends_written: usize,
            tables_swapped: usize,
            backends_draining: usize,
        }
        let st = RunStatus::new();
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
    fn numbers() {
        assert_eq!(number(3.0), "3");
        assert_eq!(number(0.001), "0.001");
        assert_eq!(number(f64::INFINITY), "+Inf");
    }
}
