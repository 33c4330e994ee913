//! Where the cluster comes from: the Kubernetes API ([`kube`]) or manifest files
//! ([`manifest`]). Both fill one [`cluster::ClusterState`] and report what changed; the daemon
//! compiles and programs it the same way whichever source it came from.
pub mod cluster;
pub mod kube;
pub mod manifest;
mod poll;
pub mod validate;

pub use poll::{ConfigSource, KubeConfigSource, ManifestSource, Poll};
