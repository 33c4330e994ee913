//! Health of `xlb run`: its own probes, and the `healthCheckNodePort`s of
//! `externalTrafficPolicy: Local` Services, answered the way kube-proxy answers them so that a
//! cloud load balancer's health check sends traffic only to nodes with a local endpoint.
//!
//! * [`Readiness`] is what the probes report, shared by every server that answers them
//!   (`--health-addr`, `--metrics-addr`): the run loop's heartbeat and whether the first
//!   complete configuration has been programmed into the maps.
//! * [`probe`] gives each probe path one meaning on every server: `/livez` and `/healthz` answer
//!   200 while the run loop ticks (a heartbeat within [`Readiness::with_live_within`]), 503 when
//!   it is stuck; `/readyz` answers 200 once the first complete configuration is programmed and
//!   while the datapath is attached to every configured interface, 503 otherwise (a later
//!   config error does not unready it: the last good state keeps serving; an interface that is
//!   gone does, until it is back and attached again).
//! * [`HealthServer::serve_probes`] serves the probes on one address (`xlb run --health-addr`).
//! * [`HealthServer::update`] keeps one listener per `healthCheckNodePort` of the plan, on every
//!   address (`0.0.0.0:port`, as kube-proxy binds by default). Any request gets
//!   `{"service": {"namespace": .., "name": ..}, "localEndpoints": N, "serviceProxyHealthy": B}`
//!   with the `X-Load-Balancing-Endpoint-Weight: N` header, status 200 when `N > 0` and xlb is
//!   ready, 503 otherwise. A port another process holds (kube-proxy, when it runs beside xlb)
//!   is reported once and retried at every update; kube-proxy's answer counts the same local
//!   ready endpoints.
//!
//! The listeners are [`http`] servers on the caller's tokio runtime.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use crate::compile::plan::HealthCheckPlan;
use crate::observe::http::{self, Request, Response, Router};

/// How recent the heartbeat must be for `/livez` unless told otherwise.
pub const LIVE_WITHIN: Duration = Duration::from_secs(60);

/// What the probes report: the run loop's heartbeat, whether `xlb run` has programmed its
/// first complete configuration, and which configured interfaces it is not attached to.
/// Clones share the state.
#[derive(Debug, Clone)]
pub struct Readiness(Arc<ProbeState>);

#[derive(Debug)]
struct ProbeState {
    ready: AtomicBool,
    /// Configured interfaces the datapath is not attached to now.
    detached: Mutex<BTreeSet<String>>,
    started: Instant,
    /// Milliseconds from `started` to the last heartbeat.
    beat_ms: AtomicU64,
    live_within: Duration,
}

impl Default for Readiness {
    fn default() -> Readiness {
        Readiness::new()
    }
}

impl Readiness {
    /// Not ready; live for [`LIVE_WITHIN`] after the last heartbeat (now).
    pub fn new() -> Readiness {
        Readiness::with_live_within(LIVE_WITHIN)
    }

    /// Not ready; live for `live_within` after the last heartbeat (now).
    pub fn with_live_within(live_within: Duration) -> Readiness {
        Readiness(Arc::new(ProbeState {
            ready: AtomicBool::new(false),
            detached: Mutex::default(),
            started: Instant::now(),
            beat_ms: AtomicU64::new(0),
            live_within,
        }))
    }

    /// Marks the first full sync as programmed into the maps. Stays set.
    pub fn set_ready(&self) {
        self.0.ready.store(true, Ordering::SeqCst);
    }

    /// Whether the first full sync is in the maps.
    pub fn is_synced(&self) -> bool {
        self.0.ready.load(Ordering::SeqCst)
    }

    /// Records whether the datapath is attached to configured interface `iface`.
    pub fn set_attached(&self, iface: &str, attached: bool) {
        let mut d = self.0.detached.lock().unwrap_or_else(|e| e.into_inner());
        if attached {
            d.remove(iface);
        } else {
            d.insert(iface.to_string());
        }
    }

    /// The configured interfaces the datapath is not attached to now.
    pub fn detached(&self) -> Vec<String> {
        let d = self.0.detached.lock().unwrap_or_else(|e| e.into_inner());
        d.iter().cloned().collect()
    }

    /// The first full sync is programmed and every configured interface is attached.
    pub fn is_ready(&self) -> bool {
        self.is_synced() && self.detached().is_empty()
    }

    /// The run loop is alive.
    pub fn heartbeat(&self) {
        let ms = self.0.started.elapsed().as_millis() as u64;
        self.0.beat_ms.store(ms, Ordering::SeqCst);
    }

    /// Time since the last heartbeat.
    pub fn since_heartbeat(&self) -> Duration {
        let beat = Duration::from_millis(self.0.beat_ms.load(Ordering::SeqCst));
        self.0.started.elapsed().saturating_sub(beat)
    }

    pub fn is_live(&self) -> bool {
        self.since_heartbeat() <= self.0.live_within
    }
}

/// The answer to a probe path (`/livez`, `/healthz`, `/readyz`), `None` for any other path.
pub fn probe(path: &str, readiness: &Readiness) -> Option<Response> {
    let response = match path {
        "/livez" | "/healthz" if readiness.is_live() => Response::text(200, "ok\n"),
        "/livez" | "/healthz" => Response::text(
            503,
            format!(
                "the run loop has not ticked for {:.0} s\n",
                readiness.since_heartbeat().as_secs_f64()
            ),
        ),
        "/readyz" if readiness.is_ready() => Response::text(200, "ready\n"),
        "/readyz" if !readiness.is_synced() => Response::text(
            503,
            "not ready: the datapath has not been fully programmed yet\n",
        ),
        "/readyz" => Response::text(
            503,
            format!(
                "not ready: not attached to {} (interface gone; attached again when it is \
                 back)\n",
                readiness.detached().join(", ")
            ),
        ),
        _ => return None,
    };
    Some(response)
}

/// GET and HEAD only: the answer to any other method, `None` for those two.
pub fn read_only(request: &Request) -> Option<Response> {
    (request.method != "GET" && request.method != "HEAD")
        .then(|| Response::text(405, "only GET and HEAD\n"))
}

type Checks = Arc<RwLock<BTreeMap<u16, HealthCheckPlan>>>;

enum Port {
    Serving(JoinHandle<()>),
    /// Could not bind (the message was logged once).
    Failed(String),
}

/// The health endpoints. Dropping it closes every listener.
pub struct HealthServer {
    runtime: Handle,
    readiness: Readiness,
    checks: Checks,
    ports: BTreeMap<u16, Port>,
    bind: Ipv4Addr,
    probes: Vec<JoinHandle<()>>,
}

impl HealthServer {
    /// Health-check ports will listen on `bind` (`0.0.0.0` = every address, kube-proxy's
    /// default).
    pub fn new(runtime: Handle, readiness: Readiness, bind: Ipv4Addr) -> HealthServer {
        HealthServer {
            runtime,
            readiness,
            checks: Checks::default(),
            ports: BTreeMap::new(),
            bind,
            probes: Vec::new(),
        }
    }

    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// Serves `/readyz`, `/healthz` and `/livez` on `addr`; returns the bound address.
    pub fn serve_probes(&mut self, addr: SocketAddr) -> anyhow::Result<SocketAddr> {
        let listener = http::bind(addr).with_context(|| format!("--health-addr {addr}"))?;
        let bound = listener.local_addr()?;
        let readiness = self.readiness.clone();
        let router: Router = Arc::new(move |request: &Request| {
            read_only(request)
                .or_else(|| probe(&request.path, &readiness))
                .unwrap_or_else(|| Response::text(404, "not found\n"))
        });
        self.probes
            .push(http::serve(&self.runtime, listener, router));
        Ok(bound)
    }

    /// Makes the health-check listeners match `checks`: new ports are opened, ports no longer
    /// planned closed, and the answers of the others follow the new counts at once. Returns one
    /// line per port that could not be opened (only the first time it fails).
    pub fn update(&mut self, checks: &BTreeMap<u16, HealthCheckPlan>) -> Vec<String> {
        *self.checks.write().unwrap_or_else(|e| e.into_inner()) = checks.clone();
        self.ports.retain(|port, state| {
            let keep = checks.contains_key(port);
            if !keep && let Port::Serving(task) = state {
                task.abort();
            }
            keep
        });
        let mut messages = Vec::new();
        for (&port, check) in checks {
            if !matches!(self.ports.get(&port), Some(Port::Serving(_))) {
                messages.extend(self.open(port, check));
            }
        }
        messages
    }

    /// Opens the listener of `port`; returns what to report (a failure the first time, a
    /// recovery).
    fn open(&mut self, port: u16, check: &HealthCheckPlan) -> Option<String> {
        let addr = SocketAddr::from((self.bind, port));
        let previous = self.ports.remove(&port);
        match http::bind(addr) {
            Ok(listener) => {
                let checks = self.checks.clone();
                let readiness = self.readiness.clone();
                let router: Router =
                    Arc::new(move |_: &Request| health_check_response(port, &checks, &readiness));
                let task = http::serve(&self.runtime, listener, router);
                self.ports.insert(port, Port::Serving(task));
                matches!(previous, Some(Port::Failed(_))).then(|| {
                    format!(
                        "healthCheckNodePort {port} ({}/{}) is served now",
                        check.namespace, check.name
                    )
                })
            }
            Err(e) => {
                let message = format!(
                    "cannot serve healthCheckNodePort {port} of {}/{} on {addr}: {e} \
                     (another process, kube-proxy?, may answer it); retrying at every update",
                    check.namespace, check.name
                );
                let repeated = matches!(&previous, Some(Port::Failed(m)) if *m == message);
                self.ports.insert(port, Port::Failed(message.clone()));
                (!repeated).then_some(message)
            }
        }
    }

    /// The health-check ports currently listening.
    pub fn serving(&self) -> Vec<u16> {
        self.ports
            .iter()
            .filter(|(_, p)| matches!(p, Port::Serving(_)))
            .map(|(port, _)| *port)
            .collect()
    }
}

impl Drop for HealthServer {
    fn drop(&mut self) {
        for (_, port) in std::mem::take(&mut self.ports) {
            if let Port::Serving(task) = port {
                task.abort();
            }
        }
        for task in self.probes.drain(..) {
            task.abort();
        }
    }
}

/// kube-proxy's answer, fields in its order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HealthCheckAnswer<'a> {
    service: ServiceName<'a>,
    local_endpoints: u32,
    service_proxy_healthy: bool,
}

#[derive(Serialize)]
struct ServiceName<'a> {
    namespace: &'a str,
    name: &'a str,
}

fn health_check_response(port: u16, checks: &Checks, readiness: &Readiness) -> Response {
    let check = checks
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&port)
        .cloned();
    let json = |status, body| Response {
        status,
        content_type: http::JSON,
        headers: vec![("X-Content-Type-Options", "nosniff".into())],
        body,
    };
    let Some(check) = check else {
        // The port is closing (no longer planned).
        return json(503, String::new());
    };
    let healthy = readiness.is_ready();
    let count = check.local_endpoints;
    let answer = HealthCheckAnswer {
        service: ServiceName {
            namespace: &check.namespace,
            name: &check.name,
        },
        local_endpoints: count,
        service_proxy_healthy: healthy,
    };
    json(
        if count > 0 && healthy { 200 } else { 503 },
        serde_json::to_string_pretty(&answer).unwrap_or_default(),
    )
    .with_header("X-Load-Balancing-Endpoint-Weight", count.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};
    use std::net::TcpListener as StdListener;

    fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let status = out[9..12].parse().unwrap();
        (status, out)
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn probes_have_one_meaning() {
        let rt = runtime();
        let readiness = Readiness::with_live_within(Duration::from_secs(1));
        let mut server =
            HealthServer::new(rt.handle().clone(), readiness.clone(), Ipv4Addr::LOCALHOST);
        let addr = server.serve_probes("127.0.0.1:0".parse().unwrap()).unwrap();
        readiness.heartbeat();
        assert_eq!(get(addr, "/livez").0, 200);
        assert_eq!(get(addr, "/healthz").0, 200);
        assert_eq!(get(addr, "/readyz").0, 503);
        assert_eq!(get(addr, "/nope").0, 404);
        readiness.set_ready();
        let (status, text) = get(addr, "/readyz");
        assert_eq!(status, 200);
        assert!(text.ends_with("\r\n\r\nready\n"), "{text}");
        // The run loop stops ticking: not live, still ready.
        std::thread::sleep(Duration::from_millis(1200));
        let (status, text) = get(addr, "/healthz");
        assert_eq!(status, 503, "{text}");
        assert!(text.contains("has not ticked"), "{text}");
        assert_eq!(get(addr, "/livez").0, 503);
        assert_eq!(get(addr, "/readyz").0, 200);
        readiness.heartbeat();
        assert_eq!(get(addr, "/livez").0, 200);
        // An interface goes away: not ready until it is attached again.
        readiness.set_attached("eth1", false);
        let (status, text) = get(addr, "/readyz");
        assert_eq!(status, 503, "{text}");
        assert!(text.contains("not attached to eth1"), "{text}");
        readiness.set_attached("eth1", true);
        assert_eq!(get(addr, "/readyz").0, 200);
    }

    #[test]
    fn readiness_needs_the_sync_and_every_interface() {
        let readiness = Readiness::new();
        readiness.set_attached("eth0", false);
        assert!(!readiness.is_ready());
        readiness.set_attached("eth0", true);
        assert!(!readiness.is_ready(), "not synced yet");
        readiness.set_ready();
        assert!(readiness.is_ready());
        readiness.set_attached("eth0", false);
        readiness.set_attached("eth1", false);
        assert_eq!(readiness.detached(), ["eth0", "eth1"]);
        assert!(!readiness.is_ready());
        assert!(readiness.is_synced());
        readiness.set_attached("eth1", true);
        readiness.set_attached("eth0", true);
        assert!(readiness.is_ready());
    }

    #[test]
    fn probes_answer_only_reads() {
        let readiness = Readiness::new();
        let request = |method: &str| Request {
            method: method.into(),
            path: "/livez".into(),
            accept: String::new(),
        };
        assert_eq!(read_only(&request("POST")).unwrap().status, 405);
        assert!(read_only(&request("GET")).is_none());
        assert!(read_only(&request("HEAD")).is_none());
        assert_eq!(probe("/livez", &readiness).unwrap().status, 200);
        assert!(probe("/metrics", &readiness).is_none());
    }

    #[test]
    fn health_check_ports_answer_like_kube_proxy() {
        let rt = runtime();
        let readiness = Readiness::new();
        let mut server =
            HealthServer::new(rt.handle().clone(), readiness.clone(), Ipv4Addr::LOCALHOST);
        // A free port, found by binding port 0.
        let port = StdListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let check = |n| HealthCheckPlan {
            namespace: "default".into(),
            name: "web".into(),
            local_endpoints: n,
        };
        assert!(server.update(&[(port, check(2))].into()).is_empty());
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        // Not ready yet: 503 even with endpoints.
        assert_eq!(get(addr, "/").0, 503);
        readiness.set_ready();
        let (status, text) = get(addr, "/anything");
        assert_eq!(status, 200);
        assert!(
            text.contains("X-Load-Balancing-Endpoint-Weight: 2\r\n"),
            "{text}"
        );
        assert!(
            text.contains("Content-Type: application/json\r\n"),
            "{text}"
        );
        assert!(
            text.contains("X-Content-Type-Options: nosniff\r\n"),
            "{text}"
        );
        // kube-proxy's field order.
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        assert!(
            body.find("\"service\"") < body.find("\"localEndpoints\"")
                && body.find("\"localEndpoints\"") < body.find("\"serviceProxyHealthy\""),
            "{body}"
        );
        let body: serde_json::Value =
            serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "service": {"namespace": "default", "name": "web"},
                "localEndpoints": 2,
                "serviceProxyHealthy": true
            })
        );
        // The count follows the plan; zero is 503.
        server.update(&[(port, check(0))].into());
        let (status, text) = get(addr, "/");
        assert_eq!(status, 503);
        assert!(text.contains("\"localEndpoints\": 0"), "{text}");
        // Gone from the plan: the port closes.
        server.update(&BTreeMap::new());
        assert!(server.serving().is_empty());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(addr).is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "port {port} still open"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn a_port_in_use_is_reported_once_and_retried() {
        let rt = runtime();
        let mut server =
            HealthServer::new(rt.handle().clone(), Readiness::new(), Ipv4Addr::LOCALHOST);
        let holder = StdListener::bind("127.0.0.1:0").unwrap();
        let port = holder.local_addr().unwrap().port();
        let checks: BTreeMap<u16, HealthCheckPlan> = [(
            port,
            HealthCheckPlan {
                namespace: "default".into(),
                name: "web".into(),
                local_endpoints: 1,
            },
        )]
        .into();
        let first = server.update(&checks);
        assert_eq!(first.len(), 1, "{first:?}");
        assert!(first[0].contains(&format!("cannot serve healthCheckNodePort {port}")));
        assert!(server.update(&checks).is_empty(), "reported again");
        drop(holder);
        let recovered = server.update(&checks);
        assert_eq!(server.serving(), [port]);
        assert!(recovered[0].contains("is served now"), "{recovered:?}");
    }
}
