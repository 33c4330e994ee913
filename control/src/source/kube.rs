//! The Kubernetes API source: watches Services, `discovery.k8s.io/v1` EndpointSlices and Nodes
//! and feeds them into the same [`ClusterState`] the manifest source fills.
//!
//! Three `kube` [`watcher`]s (one per kind) run on a tokio runtime. Each is a reflector whose
//! store is the run loop's [`ClusterState`]: a watcher turns list and watch responses into
//! [`Update`]s and queues them; the run loop drains the queue, applies every queued update to
//! its state in one go (a burst of changes becomes one compile and one map update), and
//! programs the result. Nothing is programmed before each of the three kinds has been listed
//! once, so a restarted `xlb run` keeps serving what the pinned maps hold until it knows the
//! whole cluster.
//!
//! # Resilience
//!
//! * The API server unreachable, a watch failing or a connection closing: the watcher retries
//!   with exponential backoff ([`KubeOptions::backoff_initial`] doubling up to
//!   [`KubeOptions::backoff_max`], with jitter) and resumes the watch from the last
//!   `resourceVersion` it saw. The datapath meanwhile keeps serving the last state.
//! * `410 Gone` (the resumed version is too old): the watcher lists again. The fresh list
//!   replaces that kind in the state at once (objects the list no longer has are deleted), and
//!   [`ClusterState`] records only what differs from before, so a relist that finds the cluster
//!   unchanged compiles nothing and writes nothing: no table is rewritten and no conntrack entry
//!   is touched.
//! * What is watched is what kube-proxy watches: Services and EndpointSlices without the
//!   `service.kubernetes.io/service-proxy-name` and `service.kubernetes.io/headless` labels
//!   (the selector runs on the API server), and all Nodes (remote backends need every node's
//!   address). Stored objects are trimmed to what compile reads (no `managedFields`; of a Node
//!   only its name, labels and addresses), which keeps a large cluster's state small.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ::kube::runtime::utils::{Backoff, StreamBackoff};
use ::kube::runtime::watcher::{self, Event};
use ::kube::{Api, Client, Config, Resource};
use anyhow::Context as _;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Node, NodeStatus, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use tokio::runtime::Handle;

use crate::source::cluster::{ANNOTATION_TRIGGER_TIME, ClusterState, ClusterStateError, ObjectKey};

/// The label selector kube-proxy watches Services and EndpointSlices with.
pub const PROXY_LABEL_SELECTOR: &str =
    "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

/// Where the API server is and how to talk to it.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// A kubeconfig file (its current context); `None` = the in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    /// First delay after a failed list or watch; doubles up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// `timeoutSeconds` of each watch request: the server ends the watch after this long and the
    /// watcher resumes it; a watch silent for this long plus 5 s counts as dead.
    pub watch_timeout: Duration,
}

impl Default for KubeOptions {
    fn default() -> KubeOptions {
        KubeOptions {
            kubeconfig: None,
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            watch_timeout: Duration::from_secs(120),
        }
    }
}

/// The three kinds xlb watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Service,
    EndpointSlice,
    Node,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Service, Kind::EndpointSlice, Kind::Node];

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Service => "Services",
            Kind::EndpointSlice => "EndpointSlices",
            Kind::Node => "Nodes",
        })
    }
}

/// One change to apply to the state, as a watcher saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    Service(Delta<Service>),
    EndpointSlice(Delta<EndpointSlice>),
    Node(Delta<Node>),
}

/// An object added or modified, deleted, or the complete list of a kind (a list or relist).
#[derive(Debug, Clone, PartialEq)]
pub enum Delta<K> {
    Apply(Box<K>),
    Delete(Box<K>),
    Replace(Vec<K>),
}

/// Applies one update to the state. Objects without a name are refused (the API never sends
/// them).
pub fn apply_update(state: &mut ClusterState, update: Update) -> Result<(), ClusterStateError> {
    fn key(meta: &ObjectMeta) -> Option<ObjectKey> {
        ObjectKey::of(meta)
    }
    match update {
        Update::Service(Delta::Apply(s)) => state.upsert_service(*s).map(drop),
        Update::Service(Delta::Delete(s)) => {
            if let Some(k) = key(&s.metadata) {
                state.delete_service(&k.namespace, &k.name);
            }
            Ok(())
        }
        Update::Service(Delta::Replace(all)) => state.replace_services(all),
        Update::EndpointSlice(Delta::Apply(s)) => state.upsert_endpoint_slice(*s).map(drop),
        Update::EndpointSlice(Delta::Delete(s)) => {
            if let Some(k) = key(&s.metadata) {
                state.delete_endpoint_slice(&k.namespace, &k.name);
            }
            Ok(())
        }
        Update::EndpointSlice(Delta::Replace(all)) => state.replace_endpoint_slices(all),
        Update::Node(Delta::Apply(n)) => state.upsert_node(*n).map(drop),
        Update::Node(Delta::Delete(n)) => {
            if let Some(name) = n.metadata.name.as_deref() {
                state.delete_node(name);
            }
            Ok(())
        }
        Update::Node(Delta::Replace(all)) => state.replace_nodes(all),
    }
}

/// Trims what compile does not read from a Service: `managedFields` and annotations.
pub fn trim_service(mut service: Service) -> Service {
    service.metadata.managed_fields = None;
    service.metadata.annotations = None;
    service
}

/// Trims what compile does not read from an EndpointSlice: `managedFields` and annotations,
/// except the `last-change-trigger-time` the network programming latency starts from; and of
/// each endpoint its `targetRef`, `hostname`, `zone`, `hints` and `deprecatedTopology` (the
/// endpoints are most of a slice's memory, and most of `xlb run`'s at 10,000 Services).
pub fn trim_endpoint_slice(mut slice: EndpointSlice) -> EndpointSlice {
    slice.metadata.managed_fields = None;
    slice.metadata.annotations = slice.metadata.annotations.and_then(|mut all| {
        let trigger = all.remove(ANNOTATION_TRIGGER_TIME)?;
        Some([(ANNOTATION_TRIGGER_TIME.to_owned(), trigger)].into())
    });
    for endpoint in slice.endpoints.iter_mut().flatten() {
        endpoint.target_ref = None;
        endpoint.hostname = None;
        endpoint.zone = None;
        endpoint.hints = None;
        endpoint.deprecated_topology = None;
    }
    slice
}

/// Keeps of a Node only its name, labels, resource version and addresses (a Node's status
/// carries image lists and conditions that change often and matter not at all here).
pub fn trim_node(node: Node) -> Node {
    Node {
        metadata: ObjectMeta {
            name: node.metadata.name,
            labels: node.metadata.labels,
            resource_version: node.metadata.resource_version,
            ..ObjectMeta::default()
        },
        spec: None,
        status: Some(NodeStatus {
            addresses: node.status.and_then(|s| s.addresses),
            ..NodeStatus::default()
        }),
    }
}

/// How one watcher is doing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchStatus {
    /// The kind has been listed completely at least once.
    pub synced: bool,
    /// Lists completed (the first sync and every relist).
    pub lists: u64,
    /// The last error, until the watcher next receives something (a watch that resumes without
    /// news says nothing, so this clears at the kind's next event).
    pub error: Option<String>,
    /// Errors seen since start.
    pub errors: u64,
}

#[derive(Default)]
struct Queue {
    updates: Vec<Update>,
    /// When the oldest update in `updates` arrived.
    oldest: Option<Instant>,
    status: [WatchStatus; 3],
    /// Set by [`KubeSource::stop`]: watchers end.
    stopped: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A watcher task that panicked while holding the lock leaves a consistent queue.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What [`KubeSource::wait`] hands the run loop.
#[derive(Debug)]
pub struct Batch {
    pub updates: Vec<Update>,
    /// When the oldest of them arrived from the API server.
    pub oldest: Instant,
}

/// The running watchers, and the queue between them and the run loop.
pub struct KubeSource {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Builds a client from a kubeconfig file or the in-cluster service account.
pub async fn client(opts: &KubeOptions) -> anyhow::Result<Client> {
    let config = match &opts.kubeconfig {
        Some(path) => {
            let kubeconfig = ::kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("--kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .with_context(|| format!("--kubeconfig {}", path.display()))?
        }
        None => Config::incluster().context(
            "no --manifests or --kubeconfig given, and not running in a Kubernetes Pod \
             (in-cluster configuration)",
        )?,
    };
    Client::try_from(config).context("creating the Kubernetes client")
}

impl KubeSource {
    /// Starts the three watchers on `runtime`. Connection problems are not errors here: the
    /// watchers retry, and [`KubeSource::status`] tells how they are doing.
    pub fn start(runtime: &Handle, client: Client, opts: &KubeOptions) -> KubeSource {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            changed: Condvar::new(),
        });
        let selected = watcher::Config::default()
            .labels(PROXY_LABEL_SELECTOR)
            .timeout(opts.watch_timeout.as_secs().max(1) as u32);
        let all = watcher::Config::default().timeout(opts.watch_timeout.as_secs().max(1) as u32);
        let tasks = vec![
            runtime.spawn(watch(
                Api::<Service>::all(client.clone()),
                selected.clone(),
                Kind::Service,
                |d| Update::Service(map_delta(d, trim_service)),
                shared.clone(),
                opts.clone(),
            )),
            runtime.spawn(watch(
                Api::<EndpointSlice>::all(client.clone()),
                selected,
                Kind::EndpointSlice,
                |d| Update::EndpointSlice(map_delta(d, trim_endpoint_slice)),
                shared.clone(),
                opts.clone(),
            )),
            runtime.spawn(watch(
                Api::<Node>::all(client),
                all,
                Kind::Node,
                |d| Update::Node(map_delta(d, trim_node)),
                shared.clone(),
                opts.clone(),
            )),
        ];
        KubeSource { shared, tasks }
    }

    /// Whether every kind has been listed once.
    pub fn synced(&self) -> bool {
        self.shared.lock().status.iter().all(|s| s.synced)
    }

    /// How each watcher is doing, in [`Kind::ALL`] order.
    pub fn status(&self) -> [WatchStatus; 3] {
        self.shared.lock().status.clone()
    }

    /// Waits at most `timeout` for updates; returns every queued update once all three kinds
    /// have been listed, `None` if there is nothing (yet) to program.
    pub fn wait(&self, timeout: Duration) -> Option<Batch> {
        let deadline = Instant::now() + timeout;
        let mut queue = self.shared.lock();
        loop {
            let synced = queue.status.iter().all(|s| s.synced);
            if synced && !queue.updates.is_empty() {
                let updates = std::mem::take(&mut queue.updates);
                let oldest = queue.oldest.take().unwrap_or_else(Instant::now);
                return Some(Batch { updates, oldest });
            }
            let now = Instant::now();
            if now >= deadline || queue.stopped {
                return None;
            }
            queue = self
                .shared
                .changed
                .wait_timeout(queue, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Stops the watchers.
    pub fn stop(&mut self) {
        self.shared.lock().stopped = true;
        self.shared.changed.notify_all();
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        self.stop();
    }
}

fn map_delta<K>(delta: Delta<K>, trim: fn(K) -> K) -> Delta<K> {
    match delta {
        Delta::Apply(k) => Delta::Apply(Box::new(trim(*k))),
        Delta::Delete(k) => Delta::Delete(k),
        Delta::Replace(all) => Delta::Replace(all.into_iter().map(trim).collect()),
    }
}

/// Exponential backoff with jitter: `initial`, doubling up to `max`; reset by any success.
struct Exponential {
    initial: Duration,
    max: Duration,
    next: Duration,
    seed: u64,
}

impl Exponential {
    fn new(initial: Duration, max: Duration) -> Exponential {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        Exponential {
            initial,
            max: max.max(initial),
            next: initial,
            seed,
        }
    }
}

impl Iterator for Exponential {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        // xorshift: up to +25% so that the three watchers (and many nodes) spread out.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let jitter = base.mul_f64((self.seed % 1000) as f64 / 4000.0);
        Some(base + jitter)
    }
}

impl Backoff for Exponential {
    fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// One watcher: list, then watch from the list's version; relist on `410 Gone`; retry with
/// backoff on any error. Queues what it sees.
async fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    kind: Kind,
    to_update: fn(Delta<K>) -> Update,
    shared: Arc<Shared>,
    opts: KubeOptions,
) where
    K: Resource + Clone + DeserializeOwned + fmt::Debug + Send + 'static,
{
    let backoff = Exponential::new(opts.backoff_initial, opts.backoff_max);
    let mut stream = StreamBackoff::new(watcher::watcher(api, config), backoff).boxed();
    // Objects of a list in progress; they replace the kind only once the list is complete.
    let mut listing: Option<Vec<K>> = None;
    while let Some(event) = stream.next().await {
        let update = match event {
            Ok(Event::Init) => {
                listing = Some(Vec::new());
                None
            }
            Ok(Event::InitApply(object)) => {
                listing.get_or_insert_with(Vec::new).push(object);
                None
            }
            Ok(Event::InitDone) => Some(Delta::Replace(listing.take().unwrap_or_default())),
            Ok(Event::Apply(object)) => Some(Delta::Apply(Box::new(object))),
            Ok(Event::Delete(object)) => Some(Delta::Delete(Box::new(object))),
            Err(e) => {
                let message = e.to_string();
                let mut queue = shared.lock();
                let status = &mut queue.status[kind.index()];
                status.errors += 1;
                if status.error.as_deref() != Some(message.as_str()) {
                    tracing::warn!(
                        kind = %kind,
                        error = %message,
                        "watching the Kubernetes API failed; retrying with backoff, the datapath \
                         keeps the last state"
                    );
                    status.error = Some(message);
                }
                continue;
            }
        };
        let Some(delta) = update else { continue };
        let mut queue = shared.lock();
        if queue.stopped {
            return;
        }
        let status = &mut queue.status[kind.index()];
        if status.error.take().is_some() {
            tracing::info!(kind = %kind, "watching the Kubernetes API again");
        }
        if let Delta::Replace(all) = &delta {
            status.lists += 1;
            tracing::info!(
                kind = %kind,
                objects = all.len(),
                first = !status.synced,
                "listed"
            );
            status.synced = true;
        }
        queue.updates.push(to_update(delta));
        queue.oldest.get_or_insert_with(Instant::now);
        drop(queue);
        shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeAddress;

    #[test]
    fn the_selector_excludes_what_compile_skips() {
        use crate::source::cluster::{LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME};
        assert_eq!(
            PROXY_LABEL_SELECTOR,
            format!("!{LABEL_SERVICE_PROXY_NAME},!{LABEL_HEADLESS}")
        );
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Exponential::new(Duration::from_millis(100), Duration::from_millis(800));
        let got: Vec<Duration> = (0..6).map(|_| b.next().unwrap()).collect();
        let bases = [100, 200, 400, 800, 800, 800];
        for (d, base) in got.iter().zip(bases) {
            let base = Duration::from_millis(base);
            assert!(*d >= base && *d <= base.mul_f64(1.25), "{got:?}");
        }
        b.reset();
        assert!(b.next().unwrap() < Duration::from_millis(126));
    }

    #[test]
    fn nodes_keep_only_what_compile_reads() {
        let node = Node {
            metadata: ObjectMeta {
                name: Some("node-a".into()),
                resource_version: Some("7".into()),
                annotations: Some([("a".to_string(), "b".to_string())].into()),
                ..Default::default()
            },
            spec: Some(Default::default()),
            status: Some(NodeStatus {
                addresses: Some(vec![NodeAddress {
                    type_: "InternalIP".into(),
                    address: "198.18.0.1".into(),
                }]),
                images: Some(vec![Default::default()]),
                ..Default::default()
            }),
        };
        let trimmed = trim_node(node);
        assert_eq!(trimmed.metadata.name.as_deref(), Some("node-a"));
        assert!(trimmed.metadata.annotations.is_none());
        assert!(trimmed.spec.is_none());
        let status = trimmed.status.unwrap();
        assert_eq!(status.addresses.unwrap().len(), 1);
        assert!(status.images.is_none());
    }

    #[test]
    fn updates_apply_and_relists_record_only_differences() {
        let service = |name: &str, port: i32| Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            spec: Some(k8s_openapi::api::core::v1::ServiceSpec {
                ports: Some(vec![k8s_openapi::api::core::v1::ServicePort {
                    port,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut state = ClusterState::new();
        apply_update(
            &mut state,
            Update::Service(Delta::Replace(vec![service("a", 80), service("b", 80)])),
        )
        .unwrap();
        assert_eq!(state.take_changes().services.len(), 2);
        // A relist with one change and one deletion.
        apply_update(
            &mut state,
            Update::Service(Delta::Replace(vec![service("a", 81)])),
        )
        .unwrap();
        let changed: Vec<String> = state
            .take_changes()
            .services
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(changed, ["default/a", "default/b"]);
        assert_eq!(state.service_count(), 1);
        // The same list again changes nothing.
        apply_update(
            &mut state,
            Update::Service(Delta::Replace(vec![service("a", 81)])),
        )
        .unwrap();
        assert!(state.take_changes().is_empty());
        apply_update(
            &mut state,
            Update::Service(Delta::Delete(Box::new(service("a", 0)))),
        )
        .unwrap();
        assert_eq!(state.service_count(), 0);
    }
}
