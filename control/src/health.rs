//! HTTP health endpoints of `xlb run`: its own readiness, and the `healthCheckNodePort`s of
//! `externalTrafficPolicy: Local` Services, answered the way kube-proxy answers them so that a
//! cloud load balancer's health check sends traffic only to nodes with a local endpoint.
//!
//! * [`Readiness`] is a shared flag: set once the first complete configuration has been
//!   programmed into the maps. Any server that answers `/readyz` (this one, a metrics server)
//!   reads the same flag.
//! * [`HealthServer::serve_probes`] answers `/readyz` and `/healthz` (200 once ready, 503 before)
//!   and `/livez` (200 while the process runs) on one address (`xlb run --health-addr`).
//! * [`HealthServer::update`] keeps one listener per `healthCheckNodePort` of the plan, on every
//!   address (`0.0.0.0:port`, as kube-proxy binds by default). Any request gets
//!   `{"service": {"namespace": .., "name": ..}, "localEndpoints": N, "serviceProxyHealthy": B}`
//!   with the `X-Load-Balancing-Endpoint-Weight: N` header, status 200 when `N > 0` and xlb is
//!   ready, 503 otherwise. A port another process holds (kube-proxy, when it runs beside xlb)
//!   is reported once and retried at every update; kube-proxy's answer counts the same local
//!   ready endpoints.
//!
//! The servers run on the caller's tokio runtime; each connection is answered once and closed,
//! reading at most 8 KiB of request within 5 s.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use crate::plan::HealthCheckPlan;

/// Whether `xlb run` has programmed its first complete configuration. Clones share the flag.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn new() -> Readiness {
        Readiness::default()
    }

    /// Marks the process ready (the first full sync is in the maps). Stays set.
    pub fn set_ready(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// The longest request head read.
const MAX_REQUEST: usize = 8192;
/// How long a client gets to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

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
        let listener = bind(addr).with_context(|| format!("--health-addr {addr}"))?;
        let bound = listener.local_addr()?;
        let readiness = self.readiness.clone();
        let task = self.runtime.spawn(async move {
            let Ok(listener) = TcpListener::from_std(listener) else {
                return;
            };
            accept_loop(listener, move |path| probe_response(path, &readiness)).await;
        });
        self.probes.push(task);
        Ok(bound)
    }

    /// Makes the health-check listeners match `checks`: new ports are opened, ports no longer
    /// planned closed, and the answers of the others follow the new counts at once. Returns one
    /// line per port that could not be opened (only the first time it fails).
    pub fn update(&mut self, checks: &BTreeMap<u16, HealthCheckPlan>) -> Vec<String> {
        *self.checks.write().unwrap_or_else(|e| e.into_inner()) = checks.clone();
        let mut messages = Vec::new();
        self.ports.retain(|port, state| {
            let keep = checks.contains_key(port);
            if !keep && let Port::Serving(task) = state {
                task.abort();
            }
            keep
        });
        for (&port, check) in checks {
            if matches!(self.ports.get(&port), Some(Port::Serving(_))) {
                continue;
            }
            let addr = SocketAddr::from((self.bind, port));
            match bind(addr) {
                Ok(listener) => {
                    let checks = self.checks.clone();
                    let readiness = self.readiness.clone();
                    let task = self.runtime.spawn(async move {
                        let Ok(listener) = TcpListener::from_std(listener) else {
                            return;
                        };
                        accept_loop(listener, move |_| {
                            health_check_response(port, &checks, &readiness)
                        })
                        .await;
                    });
                    if let Some(Port::Failed(_)) = self.ports.get(&port) {
                        messages.push(format!(
                            "healthCheckNodePort {port} ({}/{}) is served now",
                            check.namespace, check.name
                        ));
                    }
                    self.ports.insert(port, Port::Serving(task));
                }
                Err(e) => {
                    let message = format!(
                        "cannot serve healthCheckNodePort {port} of {}/{} on {addr}: {e} \
                         (another process, kube-proxy?, may answer it); retrying at every update",
                        check.namespace, check.name
                    );
                    let repeated =
                        matches!(self.ports.get(&port), Some(Port::Failed(m)) if *m == message);
                    if !repeated {
                        messages.push(message.clone());
                    }
                    self.ports.insert(port, Port::Failed(message));
                }
            }
        }
        messages
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

fn bind(addr: SocketAddr) -> std::io::Result<StdListener> {
    let listener = StdListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// A response: status code, extra headers, JSON body.
struct Response {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
}

async fn accept_loop<F>(listener: TcpListener, respond: F)
where
    F: Fn(&str) -> Response + Send + Sync + Clone + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors and the like: do not spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let respond = respond.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, respond)).await;
        });
    }
}

async fn answer<F>(mut stream: TcpStream, respond: F) -> std::io::Result<()>
where
    F: Fn(&str) -> Response,
{
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let mut request_line = text.lines().next().unwrap_or_default().split_whitespace();
    let method = request_line.next().unwrap_or_default();
    let path = request_line.next().unwrap_or("/");
    let path = path.split('?').next().unwrap_or("/");
    let response = if method.is_empty() {
        return Ok(());
    } else {
        respond(path)
    };
    let reason = match response.status {
        200 => "OK",
        404 => "Not Found",
        _ => "Service Unavailable",
    };
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: application/json\r\n\
         X-Content-Type-Options: nosniff\r\nContent-Length: {}\r\nConnection: close\r\n",
        response.status,
        response.body.len()
    );
    for (name, value) in &response.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    if method != "HEAD" {
        out.push_str(&response.body);
    }
    stream.write_all(out.as_bytes()).await?;
    stream.shutdown().await
}

fn probe_response(path: &str, readiness: &Readiness) -> Response {
    let ready = readiness.is_ready();
    let status = match path {
        "/livez" => 200,
        "/readyz" | "/healthz" if ready => 200,
        "/readyz" | "/healthz" => 503,
        _ => 404,
    };
    Response {
        status,
        headers: Vec::new(),
        body: serde_json::json!({ "ready": ready }).to_string(),
    }
}

fn health_check_response(port: u16, checks: &Checks, readiness: &Readiness) -> Response {
    let check = checks
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&port)
        .cloned();
    let Some(check) = check else {
        // The port is closing (no longer planned).
        return Response {
            status: 503,
            headers: Vec::new(),
            body: String::new(),
        };
    };
    let healthy = readiness.is_ready();
    let count = check.local_endpoints;
    Response {
        status: if count > 0 && healthy { 200 } else { 503 },
        headers: vec![("X-Load-Balancing-Endpoint-Weight", count.to_string())],
        body: serde_json::to_string_pretty(&serde_json::json!({
            "service": { "namespace": check.namespace, "name": check.name },
            "localEndpoints": count,
            "serviceProxyHealthy": healthy,
        }))
        .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};

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
    fn probes_follow_readiness() {
        let rt = runtime();
        let readiness = Readiness::new();
        let mut server =
            HealthServer::new(rt.handle().clone(), readiness.clone(), Ipv4Addr::LOCALHOST);
        let addr = server.serve_probes("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_eq!(get(addr, "/livez").0, 200);
        assert_eq!(get(addr, "/readyz").0, 503);
        assert_eq!(get(addr, "/healthz").0, 503);
        assert_eq!(get(addr, "/nope").0, 404);
        readiness.set_ready();
        assert_eq!(get(addr, "/readyz").0, 200);
        let (_, text) = get(addr, "/healthz");
        assert!(text.ends_with("{\"ready\":true}"), "{text}");
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
