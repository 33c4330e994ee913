//! A fake Kubernetes API server for tests: plain HTTP/1.1 on a TCP listener, speaking the real
//! list/watch protocol for `v1` Services, `discovery.k8s.io/v1` EndpointSlices and `v1` Nodes.
//!
//! * Lists: `GET /api/v1/services?labelSelector=..&limit=N&continue=T` answers a typed list
//!   (`ServiceList`, ...) with `metadata.resourceVersion`, paginated with `continue` tokens
//!   (a consistent snapshot per list; an unknown token is `410 Gone`). Items leave out
//!   `apiVersion`/`kind`, as the real server does.
//! * Watches: `?watch=true&resourceVersion=RV&allowWatchBookmarks=true&timeoutSeconds=S`
//!   answers a chunked stream of `{"type": "ADDED"|"MODIFIED"|"DELETED"|"BOOKMARK"|"ERROR",
//!   "object": ...}` lines: every change after `RV`, then new ones as they happen. A version
//!   older than the retained history gets an `ERROR` event with a `410 Gone` Status (what the
//!   real server sends for an expired watch). The stream ends after `timeoutSeconds`.
//! * Label selectors (`key`, `!key`, `key=value`, `key!=value`, comma = and) are evaluated on
//!   the server, with the real transitions: an object that stops matching is `DELETED`, one that
//!   starts matching `ADDED`.
//! * Faults: [`FakeApiServer::close_watches`] cuts every open watch (no final chunk),
//!   [`FakeApiServer::compact`] forgets the history (resumed watches get `410`),
//!   [`FakeApiServer::expire_watches`] sends `410 Gone` down every open watch,
//!   [`FakeApiServer::set_outage`] refuses every request (connection closed at once) or answers
//!   them with an error status, and [`FakeApiServer::bookmark`] sends a `BOOKMARK`.
//!
//! Objects are `k8s-openapi` values; the server stamps `resourceVersion`, `uid` and a default
//! namespace. Every thread is bounded: connections end with the server, watches poll a stop flag.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub mod objects;

/// The resources served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Res {
    Services,
    EndpointSlices,
    Nodes,
}

impl Res {
    fn from_path(path: &str) -> Option<Res> {
        match path {
            "/api/v1/services" => Some(Res::Services),
            "/apis/discovery.k8s.io/v1/endpointslices" => Some(Res::EndpointSlices),
            "/api/v1/nodes" => Some(Res::Nodes),
            _ => None,
        }
    }

    fn of_kind(kind: &str) -> Res {
        match kind {
            "Service" => Res::Services,
            "EndpointSlice" => Res::EndpointSlices,
            "Node" => Res::Nodes,
            other => panic!("the fake API server does not serve {other}"),
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Res::Services => "Service",
            Res::EndpointSlices => "EndpointSlice",
            Res::Nodes => "Node",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Res::EndpointSlices => "discovery.k8s.io/v1",
            _ => "v1",
        }
    }

    fn namespaced(self) -> bool {
        self != Res::Nodes
    }
}

/// How the server misbehaves, if at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outage {
    /// Serving normally.
    None,
    /// Every connection is closed as soon as it is accepted (and open watches are cut).
    Refuse,
    /// Every request is answered with this HTTP status and a Status body (open watches cut).
    Status(u16),
}

struct Change {
    rv: u64,
    res: Res,
    old: Option<Value>,
    /// `None`: deleted (`old` holds the object, stamped with the deletion's version).
    new: Option<Value>,
}

struct Store {
    rv: u64,
    objects: BTreeMap<(Res, String, String), Value>,
    history: Vec<Change>,
    /// Watches from a version below this get 410 Gone.
    oldest: u64,
    outage: Outage,
    /// Bumped to cut open watches / to send them 410 / to send a bookmark.
    cut: u64,
    expire: u64,
    bookmark: u64,
    pages: HashMap<String, (u64, Vec<Value>)>,
    next_page: u64,
    open_watches: BTreeMap<Res, usize>,
    requests: Vec<String>,
    /// Resources whose requests fail with 503 (and whose watches are cut).
    held: std::collections::BTreeSet<Res>,
    /// When each event was put into the history (for latency measurements).
    emitted: BTreeMap<u64, Instant>,
}

impl Store {
    /// Whether requests for `res` fail now. Lists and watches check it again under the lock
    /// they serve from: a request that passed the first check just before an outage began must
    /// not open a watch after the outage's cut, or list what the test hides from xlb.
    fn failing(&self, res: Res) -> bool {
        self.outage != Outage::None || self.held.contains(&res)
    }
}

struct Inner {
    store: Mutex<Store>,
    changed: Condvar,
    stop: AtomicBool,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The server. Dropping it stops it and every connection thread.
pub struct FakeApiServer {
    inner: Arc<Inner>,
    addr: SocketAddr,
    accept: Option<JoinHandle<()>>,
}

/// How long a watch thread sleeps between checks of the stop flag and the history.
const WATCH_POLL: Duration = Duration::from_millis(20);

impl FakeApiServer {
    /// Serves on 127.0.0.1, any free port.
    pub fn start() -> FakeApiServer {
        FakeApiServer::start_on(TcpListener::bind("127.0.0.1:0").expect("binding the fake API"))
    }

    /// Serves on `listener` (bound wherever the test needs, e.g. inside a lab namespace).
    pub fn start_on(listener: TcpListener) -> FakeApiServer {
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let inner = Arc::new(Inner {
            store: Mutex::new(Store {
                rv: 100,
                objects: BTreeMap::new(),
                history: Vec::new(),
                oldest: 100,
                outage: Outage::None,
                cut: 0,
                expire: 0,
                bookmark: 0,
                pages: HashMap::new(),
                next_page: 0,
                open_watches: BTreeMap::new(),
                requests: Vec::new(),
                held: Default::default(),
                emitted: BTreeMap::new(),
            }),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let accept_inner = inner.clone();
        let accept = std::thread::Builder::new()
            .name("fake-apiserver".into())
            .spawn(move || accept_loop(listener, accept_inner))
            .unwrap();
        FakeApiServer {
            inner,
            addr,
            accept: Some(accept),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig that points at this server.
    pub fn write_kubeconfig(&self, path: &Path) {
        std::fs::write(path, self.kubeconfig()).expect("writing the kubeconfig");
    }

    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster: {{server: \"{}\"}}
users:
- name: fake
  user: {{}}
contexts:
- name: fake
  context: {{cluster: fake, user: fake, namespace: default}}
current-context: fake
",
            self.url()
        )
    }

    /// Creates or replaces an object; returns its new resourceVersion.
    pub fn apply<K: k8s_openapi::Resource + serde::Serialize>(&self, object: &K) -> u64 {
        let mut value = serde_json::to_value(object).expect("serialising");
        let res = Res::of_kind(K::KIND);
        let meta = value["metadata"].as_object_mut().expect("metadata");
        let name = meta["name"].as_str().expect("metadata.name").to_string();
        let namespace = if res.namespaced() {
            let ns = meta
                .get("namespace")
                .and_then(Value::as_str)
                .unwrap_or("default")
                .to_string();
            meta.insert("namespace".into(), json!(ns));
            ns
        } else {
            String::new()
        };
        let mut store = self.inner.lock();
        store.rv += 1;
        let rv = store.rv;
        let key = (res, namespace.clone(), name.clone());
        let old = store.objects.get(&key).cloned();
        let meta = value["metadata"].as_object_mut().unwrap();
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        let uid = old
            .as_ref()
            .and_then(|o| o["metadata"]["uid"].as_str().map(str::to_string))
            .unwrap_or_else(|| format!("uid-{namespace}-{name}-{rv}"));
        meta.insert("uid".into(), json!(uid));
        store.objects.insert(key, value.clone());
        store.history.push(Change {
            rv,
            res,
            old,
            new: Some(value),
        });
        store.emitted.insert(rv, Instant::now());
        drop(store);
        self.inner.changed.notify_all();
        rv
    }

    /// Deletes an object; returns whether it existed.
    pub fn delete<K: k8s_openapi::Resource>(&self, namespace: &str, name: &str) -> bool {
        let res = Res::of_kind(K::KIND);
        let namespace = if res.namespaced() { namespace } else { "" };
        let mut store = self.inner.lock();
        let Some(mut old) = store
            .objects
            .remove(&(res, namespace.to_string(), name.to_string()))
        else {
            return false;
        };
        store.rv += 1;
        let rv = store.rv;
        old["metadata"]["resourceVersion"] = json!(rv.to_string());
        store.history.push(Change {
            rv,
            res,
            old: Some(old),
            new: None,
        });
        store.emitted.insert(rv, Instant::now());
        drop(store);
        self.inner.changed.notify_all();
        true
    }

    /// The current resourceVersion (of the last change).
    pub fn resource_version(&self) -> u64 {
        self.inner.lock().rv
    }

    /// When the change with this resourceVersion was made.
    pub fn emitted_at(&self, rv: u64) -> Option<Instant> {
        self.inner.lock().emitted.get(&rv).copied()
    }

    /// Forgets the history: watches resuming from before now get `410 Gone`.
    pub fn compact(&self) {
        let mut store = self.inner.lock();
        store.history.clear();
        store.oldest = store.rv;
        store.pages.clear();
    }

    /// Cuts every open watch connection (no final chunk, as a broken connection).
    pub fn close_watches(&self) {
        self.inner.lock().cut += 1;
        self.inner.changed.notify_all();
    }

    /// Sends `ERROR 410 Gone` down every open watch and ends it.
    pub fn expire_watches(&self) {
        let mut store = self.inner.lock();
        store.expire += 1;
        store.oldest = store.rv;
        store.history.clear();
        drop(store);
        self.inner.changed.notify_all();
    }

    /// Sends a `BOOKMARK` with the current version down every open watch that asked for them.
    pub fn bookmark(&self) {
        self.inner.lock().bookmark += 1;
        self.inner.changed.notify_all();
    }

    /// Starts or ends an outage. Starting one cuts the open watches.
    pub fn set_outage(&self, outage: Outage) {
        let mut store = self.inner.lock();
        store.outage = outage;
        if outage != Outage::None {
            store.cut += 1;
        }
        drop(store);
        self.inner.changed.notify_all();
    }

    /// Makes every request for `res` fail with `503` (and cuts its watches), or serves it
    /// again.
    pub fn hold(&self, res: Res, held: bool) {
        let mut store = self.inner.lock();
        if held {
            store.held.insert(res);
            store.cut += 1;
        } else {
            store.held.remove(&res);
        }
        drop(store);
        self.inner.changed.notify_all();
    }

    /// Open watch streams per resource.
    pub fn open_watches(&self, res: Res) -> usize {
        self.inner
            .lock()
            .open_watches
            .get(&res)
            .copied()
            .unwrap_or(0)
    }

    /// Waits until every resource has at least one open watch.
    pub fn wait_for_watches(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if [Res::Services, Res::EndpointSlices, Res::Nodes]
                .iter()
                .all(|r| self.open_watches(*r) > 0)
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// The requests served so far (`GET path?query`), oldest first.
    pub fn requests(&self) -> Vec<String> {
        self.inner.lock().requests.clone()
    }

    /// How many list requests (first pages) each resource got.
    pub fn lists(&self, res: Res) -> usize {
        let path = match res {
            Res::Services => "/api/v1/services?",
            Res::EndpointSlices => "/apis/discovery.k8s.io/v1/endpointslices?",
            Res::Nodes => "/api/v1/nodes?",
        };
        self.requests()
            .iter()
            .filter(|r| r.contains(path) && !r.contains("watch=") && !r.contains("continue="))
            .count()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        self.inner.changed.notify_all();
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: TcpListener, inner: Arc<Inner>) {
    let mut connections: Vec<JoinHandle<()>> = Vec::new();
    while !inner.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nonblocking(false);
                if inner.lock().outage == Outage::Refuse {
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                    continue;
                }
                let inner = inner.clone();
                connections.retain(|c| !c.is_finished());
                connections.push(
                    std::thread::Builder::new()
                        .name("fake-apiserver-conn".into())
                        .spawn(move || {
                            let _ = serve(stream, &inner);
                        })
                        .unwrap(),
                );
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    for c in connections {
        let _ = c.join();
    }
}

fn query_params(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A parsed label selector: every requirement must hold.
#[derive(Debug, Clone, Default)]
struct Selector(Vec<(String, Op)>);

#[derive(Debug, Clone)]
enum Op {
    Exists,
    NotExists,
    Equals(String),
    NotEquals(String),
}

impl Selector {
    fn parse(s: &str) -> Selector {
        Selector(
            s.split(',')
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .map(|r| {
                    if let Some(key) = r.strip_prefix('!') {
                        (key.to_string(), Op::NotExists)
                    } else if let Some((k, v)) = r.split_once("!=") {
                        (k.to_string(), Op::NotEquals(v.to_string()))
                    } else if let Some((k, v)) = r.split_once("==").or_else(|| r.split_once('=')) {
                        (k.to_string(), Op::Equals(v.to_string()))
                    } else {
                        (r.to_string(), Op::Exists)
                    }
                })
                .collect(),
        )
    }

    fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        self.0.iter().all(|(key, op)| {
            let value = labels.get(key).and_then(Value::as_str);
            match op {
                Op::Exists => value.is_some(),
                Op::NotExists => value.is_none(),
                Op::Equals(v) => value == Some(v.as_str()),
                Op::NotEquals(v) => value != Some(v.as_str()),
            }
        })
    }
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn respond(stream: &mut TcpStream, code: u16, body: &Value) -> std::io::Result<()> {
    let text = body.to_string();
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        410 => "Gone",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    };
    write!(
        stream,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{text}",
        text.len()
    )?;
    stream.flush()
}

fn serve(mut stream: TcpStream, inner: &Inner) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Headers (ignored) up to the blank line.
    let mut header = String::new();
    for _ in 0..100 {
        header.clear();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" || header == "\n" {
            break;
        }
    }
    let target = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_string();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let params = query_params(query);
    {
        let mut store = inner.lock();
        store.requests.push(format!("GET {target}"));
        // A connection accepted just before an outage began is refused here too: otherwise a
        // watch could open after the outage's cut and deliver what the test hides from xlb.
        if store.outage == Outage::Refuse {
            drop(store);
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return Ok(());
        }
        if let Outage::Status(code) = store.outage {
            drop(store);
            return respond(
                &mut stream,
                code,
                &status_body(code, "ServiceUnavailable", "the fake API server is failing"),
            );
        }
    }
    let Some(res) = Res::from_path(path) else {
        return respond(
            &mut stream,
            404,
            &status_body(404, "NotFound", &format!("no resource at {path}")),
        );
    };
    if inner.lock().held.contains(&res) {
        return respond(
            &mut stream,
            503,
            &status_body(503, "ServiceUnavailable", "held by the test"),
        );
    }
    let selector = Selector::parse(params.get("labelSelector").map_or("", String::as_str));
    let watch = params.get("watch").is_some_and(|w| w == "true" || w == "1");
    if watch {
        serve_watch(stream, inner, res, &selector, &params)
    } else {
        serve_list(&mut stream, inner, res, &selector, &params)
    }
}

fn strip_type(mut object: Value) -> Value {
    if let Some(map) = object.as_object_mut() {
        map.remove("apiVersion");
        map.remove("kind");
    }
    object
}

fn serve_list(
    stream: &mut TcpStream,
    inner: &Inner,
    res: Res,
    selector: &Selector,
    params: &HashMap<String, String>,
) -> std::io::Result<()> {
    let limit: usize = params
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|&l| l > 0)
        .unwrap_or(usize::MAX);
    let mut store = inner.lock();
    if store.failing(res) {
        drop(store);
        return stream.shutdown(std::net::Shutdown::Both);
    }
    let (rv, items) = match params.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => match store.pages.remove(token) {
            Some(page) => page,
            None => {
                drop(store);
                return respond(
                    stream,
                    410,
                    &status_body(
                        410,
                        "Expired",
                        "The provided continue parameter is too old to display a consistent list result.",
                    ),
                );
            }
        },
        None => {
            let items: Vec<Value> = store
                .objects
                .iter()
                .filter(|((r, _, _), o)| *r == res && selector.matches(o))
                .map(|(_, o)| strip_type(o.clone()))
                .collect();
            (store.rv, items)
        }
    };
    let mut items = items;
    let rest = if items.len() > limit {
        items.split_off(limit)
    } else {
        Vec::new()
    };
    let mut metadata = json!({ "resourceVersion": rv.to_string() });
    if !rest.is_empty() {
        store.next_page += 1;
        let token = format!("page-{}", store.next_page);
        metadata["continue"] = json!(token);
        metadata["remainingItemCount"] = json!(rest.len());
        store.pages.insert(token, (rv, rest));
    }
    drop(store);
    let body = json!({
        "apiVersion": res.api_version(),
        "kind": format!("{}List", res.kind()),
        "metadata": metadata,
        "items": items,
    });
    respond(stream, 200, &body)
}

fn write_chunk(stream: &mut TcpStream, event: &Value) -> std::io::Result<()> {
    let line = format!("{event}\n");
    write!(stream, "{:x}\r\n{line}\r\n", line.len())?;
    stream.flush()
}

fn end_chunks(stream: &mut TcpStream) -> std::io::Result<()> {
    stream.write_all(b"0\r\n\r\n")?;
    stream.flush()
}

/// Decrements the open-watch count when the watch ends, however it ends.
struct WatchGuard<'a> {
    inner: &'a Inner,
    res: Res,
}

impl Drop for WatchGuard<'_> {
    fn drop(&mut self) {
        if let Some(n) = self.inner.lock().open_watches.get_mut(&self.res) {
            *n = n.saturating_sub(1);
        }
    }
}

fn serve_watch(
    mut stream: TcpStream,
    inner: &Inner,
    res: Res,
    selector: &Selector,
    params: &HashMap<String, String>,
) -> std::io::Result<()> {
    let bookmarks = params
        .get("allowWatchBookmarks")
        .is_some_and(|b| b == "true" || b == "1");
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);
    let ends = Instant::now() + timeout;
    let requested = params.get("resourceVersion").cloned().unwrap_or_default();

    let mut store = inner.lock();
    if store.failing(res) {
        drop(store);
        return stream.shutdown(std::net::Shutdown::Both);
    }
    let (mut cursor, initial) = if requested.is_empty() || requested == "0" {
        // "Any version": the current objects as ADDED, then changes.
        let objects: Vec<Value> = store
            .objects
            .iter()
            .filter(|((r, _, _), o)| *r == res && selector.matches(o))
            .map(|(_, o)| o.clone())
            .collect();
        (store.rv, objects)
    } else {
        match requested.parse::<u64>() {
            Ok(rv) => (rv, Vec::new()),
            Err(_) => {
                drop(store);
                return respond(
                    &mut stream,
                    400,
                    &status_body(400, "BadRequest", "invalid resourceVersion"),
                );
            }
        }
    };
    let (cut, expire, mut bookmark) = (store.cut, store.expire, store.bookmark);
    *store.open_watches.entry(res).or_default() += 1;
    let _guard = WatchGuard { inner, res };
    drop(store);

    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n"
    )?;
    for object in initial {
        write_chunk(&mut stream, &json!({"type": "ADDED", "object": object}))?;
    }
    loop {
        if inner.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let store = inner.lock();
        if store.cut != cut {
            // A broken connection: no final chunk.
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return Ok(());
        }
        if store.expire != expire || cursor < store.oldest {
            let oldest = store.oldest;
            drop(store);
            write_chunk(
                &mut stream,
                &json!({"type": "ERROR", "object": status_body(
                    410,
                    "Expired",
                    &format!("too old resource version: {cursor} ({oldest})"),
                )}),
            )?;
            return end_chunks(&mut stream);
        }
        if Instant::now() >= ends {
            drop(store);
            return end_chunks(&mut stream);
        }
        let mut events = Vec::new();
        for change in store
            .history
            .iter()
            .filter(|c| c.rv > cursor && c.res == res)
        {
            let old = change.old.as_ref().filter(|o| selector.matches(o));
            let new = change.new.as_ref().filter(|o| selector.matches(o));
            let event = match (old, new, &change.new) {
                (None, Some(n), _) => Some(("ADDED", n.clone())),
                (Some(_), Some(n), _) => Some(("MODIFIED", n.clone())),
                // Deleted, or no longer selected (sent as its new state).
                (Some(o), None, None) => Some(("DELETED", o.clone())),
                (Some(_), None, Some(n)) => Some(("DELETED", n.clone())),
                (None, None, _) => None,
            };
            if let Some((kind, object)) = event {
                events.push(json!({"type": kind, "object": object}));
            }
        }
        let latest = store.rv;
        let send_bookmark = bookmarks && store.bookmark != bookmark;
        bookmark = store.bookmark;
        if events.is_empty() && !send_bookmark {
            let _ = inner
                .changed
                .wait_timeout(store, WATCH_POLL)
                .unwrap_or_else(|e| e.into_inner());
            continue;
        }
        drop(store);
        cursor = latest;
        for event in &events {
            write_chunk(&mut stream, event)?;
        }
        if send_bookmark {
            write_chunk(
                &mut stream,
                &json!({"type": "BOOKMARK", "object": {
                    "kind": res.kind(),
                    "apiVersion": res.api_version(),
                    "metadata": {"resourceVersion": latest.to_string()},
                }}),
            )?;
        }
    }
}
