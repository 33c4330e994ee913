//! The cluster as xlb sees it: the Kubernetes objects compile reads, whichever source they came
//! from (the kube watchers or manifest files).
//!
//! Objects are stored as the `k8s-openapi` types, unmodified, in ordered maps so that iteration
//! (and with it [`compile`](crate::compile::compile)) is deterministic whatever order the source
//! delivered them in. Namespaced objects are keyed by [`ObjectKey`] (namespace, name); Nodes by
//! name. A namespaced object without `metadata.namespace` is stored under `default`, the way
//! `kubectl apply` would create it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// Services with this label belong to another proxy; kube-proxy (and xlb) leave them alone.
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";

/// EndpointSlices (and Services) of headless Services carry this label; kube-proxy does not
/// watch them, and neither does the Kubernetes source.
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";

/// The label an EndpointSlice carries to name the Service it belongs to.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";

/// The annotation the EndpointSlice controller sets to when the change behind a slice's
/// current content happened (a Pod or Service change): where kube-proxy's (and xlb's)
/// network programming latency starts.
pub const ANNOTATION_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// The namespace of a namespaced object that does not name one.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Namespace and name of a namespaced object. Ordered by namespace, then name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> ObjectKey {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The key of a namespaced object's metadata; `None` without a (non-empty) name. A missing
    /// namespace means [`DEFAULT_NAMESPACE`].
    pub fn of(meta: &ObjectMeta) -> Option<ObjectKey> {
        let name = meta.name.as_deref().filter(|n| !n.is_empty())?;
        let namespace = meta
            .namespace
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or(DEFAULT_NAMESPACE);
        Some(ObjectKey::new(namespace, name))
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// An object the state cannot hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterStateError {
    #[error("{kind} has no metadata.name")]
    MissingName { kind: &'static str },
}

/// What changed in a [`ClusterState`] since the last [`ClusterState::take_changes`]: what the
/// incremental compiler ([`Compiler`](crate::compile::Compiler)) must look at again.
///
/// Only real changes are recorded: upserting an object equal to the stored one (a resync, a
/// relist that finds nothing new) records nothing, and a Node counts as changed only when its
/// `status.addresses` (all that compile reads of a Node) change, or it appears or goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Services (namespace/name) whose Service object or any of whose EndpointSlices changed.
    pub services: BTreeSet<ObjectKey>,
    /// Nodes added, removed, or whose addresses changed.
    pub nodes: BTreeSet<String>,
    /// The [`ANNOTATION_TRIGGER_TIME`] of every EndpointSlice change recorded (those that
    /// carry one), for the network programming latency. Not a change by itself.
    pub triggers: Vec<SystemTime>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.nodes.is_empty()
    }

    /// Adds `other`'s changes to these.
    pub fn merge(&mut self, other: Changes) {
        self.services.extend(other.services);
        self.nodes.extend(other.nodes);
        self.triggers.extend(other.triggers);
    }
}

/// Services, EndpointSlices and Nodes, keyed for deterministic iteration.
///
/// Besides the objects it keeps an index from Service to its EndpointSlices (by the
/// [`LABEL_SERVICE_NAME`] label) so that [`ClusterState::endpoint_slices_for`] costs a map lookup,
/// not a scan: compile calls it once per Service; and it records what changed
/// ([`ClusterState::take_changes`]) so that compile can redo only that. Equality compares the
/// objects only, not the change record.
#[derive(Debug, Clone, Default)]
pub struct ClusterState {
    /// Boxed: a map node has room for eleven entries, and an unboxed Service or EndpointSlice is
    /// most of a kilobyte, so half-full nodes would waste several megabytes per 10,000 objects.
    services: BTreeMap<ObjectKey, Box<Service>>,
    endpoint_slices: BTreeMap<ObjectKey, Box<EndpointSlice>>,
    nodes: BTreeMap<String, Node>,
    /// Service key -> names of the EndpointSlices (same namespace) labelled with it.
    slices_by_service: BTreeMap<ObjectKey, BTreeSet<String>>,
    changes: Changes,
}

impl PartialEq for ClusterState {
    fn eq(&self, other: &ClusterState) -> bool {
        // The index is a function of the slices; the change record is history, not state.
        self.services == other.services
            && self.endpoint_slices == other.endpoint_slices
            && self.nodes == other.nodes
    }
}

/// The part of a Node that compile reads.
fn node_addresses(node: &Node) -> Option<&Vec<k8s_openapi::api::core::v1::NodeAddress>> {
    node.status.as_ref().and_then(|s| s.addresses.as_ref())
}

/// A slice's [`ANNOTATION_TRIGGER_TIME`], if it has a valid one (RFC 3339).
pub fn trigger_time(slice: &EndpointSlice) -> Option<SystemTime> {
    let text = slice
        .metadata
        .annotations
        .as_ref()?
        .get(ANNOTATION_TRIGGER_TIME)?;
    let at: k8s_openapi::jiff::Timestamp = text.parse().ok()?;
    let ns = at.as_nanosecond();
    let since = Duration::from_nanos(u64::try_from(ns.unsigned_abs()).ok()?);
    if ns >= 0 {
        SystemTime::UNIX_EPOCH.checked_add(since)
    } else {
        SystemTime::UNIX_EPOCH.checked_sub(since)
    }
}

fn slice_service(key: &ObjectKey, slice: &EndpointSlice) -> Option<ObjectKey> {
    let service = slice.metadata.labels.as_ref()?.get(LABEL_SERVICE_NAME)?;
    if service.is_empty() {
        return None;
    }
    Some(ObjectKey::new(key.namespace.clone(), service.clone()))
}

impl ClusterState {
    pub fn new() -> ClusterState {
        ClusterState::default()
    }

    /// No objects at all.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.endpoint_slices.is_empty() && self.nodes.is_empty()
    }

    /// What changed since the last call (or since the state was created), and forgets it.
    pub fn take_changes(&mut self) -> Changes {
        std::mem::take(&mut self.changes)
    }

    /// What changed since the last [`ClusterState::take_changes`], without forgetting it.
    pub fn changes(&self) -> &Changes {
        &self.changes
    }

    /// Replaces every object with those of `other` (a manifest reload), recording only what
    /// differs.
    pub fn replace_all(&mut self, other: ClusterState) -> Result<(), ClusterStateError> {
        self.replace_services(other.services.into_values().map(|s| *s))?;
        self.replace_endpoint_slices(other.endpoint_slices.into_values().map(|s| *s))?;
        self.replace_nodes(other.nodes.into_values())
    }

    // ---- Services ----

    /// Inserts or replaces a Service; returns the one it replaced.
    pub fn upsert_service(
        &mut self,
        service: Service,
    ) -> Result<Option<Service>, ClusterStateError> {
        let key = ObjectKey::of(&service.metadata)
            .ok_or(ClusterStateError::MissingName { kind: "Service" })?;
        if self.services.get(&key).map(|s| &**s) != Some(&service) {
            self.changes.services.insert(key.clone());
        }
        Ok(self.services.insert(key, Box::new(service)).map(|s| *s))
    }

    /// Removes a Service; returns it if it was present.
    pub fn delete_service(&mut self, namespace: &str, name: &str) -> Option<Service> {
        let key = ObjectKey::new(namespace, name);
        let previous = self.services.remove(&key)?;
        self.changes.services.insert(key);
        Some(*previous)
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        self.services
            .get(&ObjectKey::new(namespace, name))
            .map(|s| &**s)
    }

    /// All Services, ordered by namespace and name.
    pub fn services(&self) -> impl Iterator<Item = (&ObjectKey, &Service)> {
        self.services.iter().map(|(k, s)| (k, &**s))
    }

    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// Replaces every Service (a watcher's re-list).
    pub fn replace_services(
        &mut self,
        services: impl IntoIterator<Item = Service>,
    ) -> Result<(), ClusterStateError> {
        let mut map = BTreeMap::new();
        for service in services {
            let key = ObjectKey::of(&service.metadata)
                .ok_or(ClusterStateError::MissingName { kind: "Service" })?;
            map.insert(key, Box::new(service));
        }
        let changed = changed_keys(&self.services, &map, |a, b| a == b);
        self.changes.services.extend(changed);
        self.services = map;
        Ok(())
    }

    // ---- EndpointSlices ----

    /// Inserts or replaces an EndpointSlice; returns the one it replaced.
    pub fn upsert_endpoint_slice(
        &mut self,
        slice: EndpointSlice,
    ) -> Result<Option<EndpointSlice>, ClusterStateError> {
        let key = ObjectKey::of(&slice.metadata).ok_or(ClusterStateError::MissingName {
            kind: "EndpointSlice",
        })?;
        if self.endpoint_slices.get(&key).map(|s| &**s) == Some(&slice) {
            return Ok(Some(slice));
        }
        let previous = self.remove_slice(&key);
        if let Some(service) = slice_service(&key, &slice) {
            self.changes.services.insert(service.clone());
            self.changes.triggers.extend(trigger_time(&slice));
            self.slices_by_service
                .entry(service)
                .or_default()
                .insert(key.name.clone());
        }
        self.endpoint_slices.insert(key, Box::new(slice));
        Ok(previous)
    }

    /// Removes an EndpointSlice; returns it if it was present.
    pub fn delete_endpoint_slice(&mut self, namespace: &str, name: &str) -> Option<EndpointSlice> {
        self.remove_slice(&ObjectKey::new(namespace, name))
    }

    fn remove_slice(&mut self, key: &ObjectKey) -> Option<EndpointSlice> {
        let previous = *self.endpoint_slices.remove(key)?;
        if let Some(service) = slice_service(key, &previous) {
            if let Some(names) = self.slices_by_service.get_mut(&service) {
                names.remove(&key.name);
                if names.is_empty() {
                    self.slices_by_service.remove(&service);
                }
            }
            self.changes.services.insert(service);
        }
        Some(previous)
    }

    pub fn endpoint_slice(&self, namespace: &str, name: &str) -> Option<&EndpointSlice> {
        self.endpoint_slices
            .get(&ObjectKey::new(namespace, name))
            .map(|s| &**s)
    }

    /// All EndpointSlices, ordered by namespace and name.
    pub fn endpoint_slices(&self) -> impl Iterator<Item = (&ObjectKey, &EndpointSlice)> {
        self.endpoint_slices.iter().map(|(k, s)| (k, &**s))
    }

    pub fn endpoint_slice_count(&self) -> usize {
        self.endpoint_slices.len()
    }

    /// Replaces every EndpointSlice (a watcher's re-list).
    pub fn replace_endpoint_slices(
        &mut self,
        slices: impl IntoIterator<Item = EndpointSlice>,
    ) -> Result<(), ClusterStateError> {
        let mut fresh = ClusterState::default();
        for slice in slices {
            fresh.upsert_endpoint_slice(slice)?;
        }
        for key in changed_keys(&self.endpoint_slices, &fresh.endpoint_slices, |a, b| a == b) {
            let old = self.endpoint_slices.get(&key);
            let new = fresh.endpoint_slices.get(&key);
            if let Some(new) = new
                && slice_service(&key, new).is_some()
            {
                self.changes.triggers.extend(trigger_time(new));
            }
            for slice in old.into_iter().chain(new) {
                if let Some(service) = slice_service(&key, slice) {
                    self.changes.services.insert(service);
                }
            }
        }
        self.endpoint_slices = fresh.endpoint_slices;
        self.slices_by_service = fresh.slices_by_service;
        Ok(())
    }

    /// The EndpointSlices of Service `namespace/name` (those in its namespace labelled
    /// `kubernetes.io/service-name: name`), ordered by slice name.
    pub fn endpoint_slices_for<'a>(
        &'a self,
        namespace: &str,
        name: &str,
    ) -> impl Iterator<Item = &'a EndpointSlice> + 'a {
        let namespace = namespace.to_owned();
        self.slices_by_service
            .get(&ObjectKey::new(namespace.clone(), name))
            .into_iter()
            .flatten()
            .filter_map(move |slice| {
                self.endpoint_slices
                    .get(&ObjectKey::new(namespace.clone(), slice.clone()))
                    .map(|s| &**s)
            })
    }

    // ---- Nodes ----

    /// Inserts or replaces a Node; returns the one it replaced.
    pub fn upsert_node(&mut self, node: Node) -> Result<Option<Node>, ClusterStateError> {
        let name = node
            .metadata
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or(ClusterStateError::MissingName { kind: "Node" })?;
        match self.nodes.get(&name) {
            Some(old) if node_addresses(old) == node_addresses(&node) => {}
            _ => {
                self.changes.nodes.insert(name.clone());
            }
        }
        Ok(self.nodes.insert(name, node))
    }

    /// Removes a Node; returns it if it was present.
    pub fn delete_node(&mut self, name: &str) -> Option<Node> {
        let previous = self.nodes.remove(name)?;
        self.changes.nodes.insert(name.to_owned());
        Some(previous)
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name)
    }

    /// All Nodes, ordered by name.
    pub fn nodes(&self) -> impl Iterator<Item = (&String, &Node)> {
        self.nodes.iter()
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Replaces every Node (a watcher's re-list).
    pub fn replace_nodes(
        &mut self,
        nodes: impl IntoIterator<Item = Node>,
    ) -> Result<(), ClusterStateError> {
        let mut fresh = ClusterState::default();
        for node in nodes {
            fresh.upsert_node(node)?;
        }
        let changed = changed_keys(&self.nodes, &fresh.nodes, |a, b| {
            node_addresses(a) == node_addresses(b)
        });
        self.changes.nodes.extend(changed);
        self.nodes = fresh.nodes;
        Ok(())
    }
}

/// The keys present in only one of two maps, or in both with values that `same` calls different.
fn changed_keys<K: Ord + Clone, V>(
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
    same: impl Fn(&V, &V) -> bool,
) -> Vec<K> {
    let mut changed: Vec<K> = old
        .iter()
        .filter(|(k, v)| new.get(*k).is_none_or(|n| !same(v, n)))
        .map(|(k, _)| k.clone())
        .collect();
    changed.extend(new.keys().filter(|k| !old.contains_key(*k)).cloned());
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(namespace: Option<&str>, name: &str, service: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            namespace: namespace.map(str::to_owned),
            name: Some(name.to_owned()),
            labels: service.map(|s| [(LABEL_SERVICE_NAME.to_owned(), s.to_owned())].into()),
            ..Default::default()
        }
    }

    fn slice(namespace: &str, name: &str, service: Option<&str>) -> EndpointSlice {
        EndpointSlice {
            address_type: "IPv4".into(),
            metadata: meta(Some(namespace), name, service),
            ..Default::default()
        }
    }

    fn names<'a>(it: impl Iterator<Item = &'a EndpointSlice>) -> Vec<String> {
        it.map(|s| s.metadata.name.clone().unwrap()).collect()
    }

    #[test]
    fn slices_follow_the_service_name_label() {
        let mut state = ClusterState::new();
        state
            .upsert_endpoint_slice(slice("default", "web-b", Some("web")))
            .unwrap();
        state
            .upsert_endpoint_slice(slice("default", "web-a", Some("web")))
            .unwrap();
        state
            .upsert_endpoint_slice(slice("other", "web-c", Some("web")))
            .unwrap();
        state
            .upsert_endpoint_slice(slice("default", "api-a", Some("api")))
            .unwrap();
        state
            .upsert_endpoint_slice(slice("default", "orphan", None))
            .unwrap();
        assert_eq!(
            names(state.endpoint_slices_for("default", "web")),
            ["web-a", "web-b"]
        );
        assert_eq!(names(state.endpoint_slices_for("other", "web")), ["web-c"]);
        assert!(names(state.endpoint_slices_for("default", "nope")).is_empty());

        // Relabelling moves the slice; deleting removes it from the index.
        state
            .upsert_endpoint_slice(slice("default", "web-b", Some("api")))
            .unwrap();
        assert_eq!(
            names(state.endpoint_slices_for("default", "web")),
            ["web-a"]
        );
        assert_eq!(
            names(state.endpoint_slices_for("default", "api")),
            ["api-a", "web-b"]
        );
        assert!(state.delete_endpoint_slice("default", "web-a").is_some());
        assert!(names(state.endpoint_slices_for("default", "web")).is_empty());
        assert!(state.delete_endpoint_slice("default", "web-a").is_none());
        assert_eq!(state.endpoint_slice_count(), 4);
    }

    #[test]
    fn upsert_delete_and_default_namespace() {
        let mut state = ClusterState::new();
        let svc = Service {
            metadata: meta(None, "web", None),
            ..Default::default()
        };
        assert_eq!(state.upsert_service(svc.clone()), Ok(None));
        assert_eq!(state.upsert_service(svc.clone()), Ok(Some(svc.clone())));
        assert!(state.service("default", "web").is_some());
        assert_eq!(
            state.services().next().unwrap().0.to_string(),
            "default/web"
        );
        assert_eq!(state.delete_service("default", "web"), Some(svc));
        assert!(state.is_empty());

        let unnamed = Service::default();
        assert_eq!(
            state.upsert_service(unnamed),
            Err(ClusterStateError::MissingName { kind: "Service" })
        );

        let node = Node {
            metadata: meta(None, "node-a", None),
            ..Default::default()
        };
        state.upsert_node(node).unwrap();
        assert!(state.node("node-a").is_some());
        state.replace_nodes([]).unwrap();
        assert_eq!(state.node_count(), 0);
    }

    #[test]
    fn slice_changes_carry_their_trigger_time() {
        let mut state = ClusterState::new();
        let mut web = slice("default", "web-a", Some("web"));
        web.metadata.annotations = Some(
            [(
                ANNOTATION_TRIGGER_TIME.to_owned(),
                "2026-01-02T03:04:05.5Z".to_owned(),
            )]
            .into(),
        );
        state.upsert_endpoint_slice(web.clone()).unwrap();
        let changes = state.take_changes();
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_767_323_045_500);
        assert_eq!(changes.triggers, [at]);
        // The same slice again is no change, and carries no trigger.
        state.upsert_endpoint_slice(web.clone()).unwrap();
        assert!(state.take_changes().triggers.is_empty());
        // A relist that changes it does; one without the annotation does not.
        web.endpoints = Some(vec![Default::default()]);
        state
            .replace_endpoint_slices([web, slice("default", "web-b", Some("web"))])
            .unwrap();
        assert_eq!(state.take_changes().triggers, [at]);
        let mut bad = slice("default", "web-c", Some("web"));
        bad.metadata.annotations =
            Some([(ANNOTATION_TRIGGER_TIME.to_owned(), "yesterday".to_owned())].into());
        state.upsert_endpoint_slice(bad).unwrap();
        let changes = state.take_changes();
        assert!(changes.triggers.is_empty() && !changes.is_empty());
    }

    #[test]
    fn replace_rebuilds_the_index() {
        let mut state = ClusterState::new();
        state
            .upsert_endpoint_slice(slice("default", "web-a", Some("web")))
            .unwrap();
        state
            .replace_endpoint_slices([slice("default", "api-a", Some("api"))])
            .unwrap();
        assert!(names(state.endpoint_slices_for("default", "web")).is_empty());
        assert_eq!(
            names(state.endpoint_slices_for("default", "api")),
            ["api-a"]
        );
    }
}
