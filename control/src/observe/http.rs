//! The one HTTP server of `xlb run`: metrics, probes and `healthCheckNodePort`s are each a
//! [`Router`] served by [`serve`] on a listener from [`bind`].
//!
//! HTTP/1.1 (hyper) on the caller's tokio runtime, one request per connection
//! (`Connection: close`): the clients are a scraper, the kubelet's probes and a cloud load
//! balancer's health checks, which need nothing more. Limits per listener: a request head of at
//! most [`MAX_REQUEST`] bytes, read within [`HEAD_TIMEOUT`]; a whole exchange within
//! [`CONNECTION_TIMEOUT`]; at most [`MAX_CONNECTIONS`] served at once (more wait in the
//! listen backlog). The router runs on the blocking pool: a scrape reads maps and scans the
//! connection table, and must not hold up the Kubernetes watchers on the same runtime.

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// The longest request head read (hyper's smallest buffer limit).
pub const MAX_REQUEST: usize = 8192;
/// How long a client gets to send its request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a whole exchange may take, the answer included (a scrape of a large connection
/// table takes a while).
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at the same time on one listener.
pub const MAX_CONNECTIONS: usize = 64;

pub const TEXT: &str = "text/plain; charset=utf-8";
pub const JSON: &str = "application/json";

/// What a router sees of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The `Accept` header, if any.
    pub accept: String,
}

/// A router's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl Response {
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: TEXT,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    pub fn with_header(mut self, name: &'static str, value: String) -> Response {
        self.headers.push((name, value));
        self
    }
}

/// Answers one request; called on the blocking pool.
pub type Router = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// Binds `addr` now (so that a bad or busy address fails before anything else happens); serve
/// it with [`serve`].
pub fn bind(addr: SocketAddr) -> std::io::Result<StdListener> {
    let listener = StdListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Serves `router` on `listener` from a task of `runtime` until the task is aborted (which
/// closes the listener).
pub fn serve(runtime: &Handle, listener: StdListener, router: Router) -> JoinHandle<()> {
    runtime.spawn(async move {
        let listener = match TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot serve HTTP");
                return;
            }
        };
        accept_loop(listener, router).await;
    })
}

async fn accept_loop(listener: TcpListener, router: Router) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors and the like: do not spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let router = router.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection(stream, router)).await;
            drop(slot);
        });
    }
}

async fn connection(stream: tokio::net::TcpStream, router: Router) -> hyper::Result<()> {
    let service = service_fn(move |req| answer(req, router.clone()));
    hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .title_case_headers(true)
        .max_buf_size(MAX_REQUEST)
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .await
}

async fn answer(
    req: hyper::Request<Incoming>,
    router: Router,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let request = Request {
        method: req.method().as_str().to_string(),
        path: req.uri().path().to_string(),
        accept: req
            .headers()
            .get(hyper::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
    };
    let response = tokio::task::spawn_blocking(move || router(&request))
        .await
        .unwrap_or_else(|_| Response::text(500, "internal error\n"));
    Ok(to_hyper(response))
}

fn to_hyper(response: Response) -> hyper::Response<Full<Bytes>> {
    let mut out = hyper::Response::new(Full::new(Bytes::from(response.body)));
    *out.status_mut() = hyper::StatusCode::from_u16(response.status)
        .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let headers = out.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static(response.content_type),
    );
    for (name, value) in response.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            headers.append(name, value);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};

    /// Sends `request` raw and reads the answer until the server closes.
    fn exchange(addr: SocketAddr, request: &str) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    fn echo_server(rt: &tokio::runtime::Runtime) -> SocketAddr {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let router: Router = Arc::new(|r: &Request| {
            Response::text(200, format!("{} {} [{}]", r.method, r.path, r.accept))
                .with_header("X-Load-Balancing-Endpoint-Weight", "2".into())
        });
        serve(rt.handle(), listener, router);
        addr
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn one_request_per_connection_with_the_router_answer() {
        let rt = runtime();
        let addr = echo_server(&rt);
        let out = exchange(
            addr,
            "GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAccept: text/plain\r\n\r\n",
        );
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.contains("\r\nConnection: close\r\n"), "{out}");
        assert!(out.contains("\r\nContent-Length: 25\r\n"), "{out}");
        assert!(
            out.contains("\r\nX-Load-Balancing-Endpoint-Weight: 2\r\n"),
            "{out}"
        );
        assert!(out.ends_with("\r\n\r\nGET /metrics [text/plain]"), "{out}");
        // HEAD: the same head, no body.
        let out = exchange(addr, "HEAD /x HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\n"), "{out}");
    }

    #[test]
    fn oversized_and_malformed_requests_are_refused() {
        let rt = runtime();
        let addr = echo_server(&rt);
        let out = exchange(addr, "garbage\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");
        let big = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(2 * MAX_REQUEST)
        );
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // The server may close before the whole request is written.
        let _ = s.write_all(big.as_bytes());
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(!out.contains(" 200 "), "{out}");
    }
}
