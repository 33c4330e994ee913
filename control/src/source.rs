//! Where `xlb run` gets the cluster from: manifest files or the Kubernetes API. Both fill one
//! [`ClusterState`] and report what changed; the run loop compiles and programs it the same way
//! whichever source it came from (there is no second code path for semantics).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;

use crate::cluster::{Changes, ClusterState};
use crate::kube_source::{self, KubeOptions, KubeSource};
use crate::manifest;

/// What [`ConfigSource::poll`] found.
#[derive(Debug)]
pub enum Poll {
    /// Nothing new.
    Unchanged,
    /// The state changed: compile and program it.
    Changed {
        changes: Changes,
        /// When the oldest of these changes reached xlb (the Kubernetes source), for latency.
        since: Option<Instant>,
        /// Notes about the input (objects skipped, ...), to log.
        warnings: Vec<String>,
    },
    /// The source could not be read (the error); the state is still the last good one.
    Failed(String),
}

/// A configuration source.
pub trait ConfigSource {
    /// Waits at most `timeout` for the configuration to change.
    fn poll(&mut self, timeout: Duration) -> Poll;

    /// The cluster as last read.
    fn state(&self) -> &ClusterState;

    /// Whether the run loop should retry programming a state that failed to apply without
    /// waiting for the next change. The Kubernetes source does; the manifest source waits for
    /// the files to change (as it always has).
    fn retries_failures(&self) -> bool;

    /// One line for logs: what the source is.
    fn describe(&self) -> String;
}

/// Manifest files, polled by fingerprint (see [`manifest`]); a change re-parses only the files
/// that changed.
pub struct ManifestSource {
    path: PathBuf,
    state: ClusterState,
    last: Option<manifest::Fingerprint>,
    cache: manifest::ManifestCache,
}

impl ManifestSource {
    pub fn new(path: PathBuf) -> ManifestSource {
        ManifestSource {
            path,
            state: ClusterState::new(),
            last: None,
            cache: manifest::ManifestCache::new(),
        }
    }
}

impl ConfigSource for ManifestSource {
    fn poll(&mut self, timeout: Duration) -> Poll {
        let fp = manifest::fingerprint(&self.path);
        let changed = match (&fp, &self.last) {
            (Ok(fp), Some(last)) => fp != last,
            (Ok(_), None) => true,
            (Err(e), _) => {
                if self.last.take().is_some() {
                    return Poll::Failed(format!(
                        "cannot read the manifests {}: {e}",
                        self.path.display()
                    ));
                }
                false
            }
        };
        if !changed {
            std::thread::sleep(timeout);
            return Poll::Unchanged;
        }
        // Taken before loading: a change racing with the load is seen on the next poll.
        self.last = fp.ok();
        match manifest::load_cached(&self.path, &mut self.cache) {
            Ok(loaded) => {
                if let Err(e) = self.state.replace_all(loaded.state) {
                    return Poll::Failed(e.to_string());
                }
                Poll::Changed {
                    changes: self.state.take_changes(),
                    since: None,
                    warnings: loaded.warnings,
                }
            }
            Err(e) => Poll::Failed(format!("{e:#}")),
        }
    }

    fn state(&self) -> &ClusterState {
        &self.state
    }

    fn retries_failures(&self) -> bool {
        false
    }

    fn describe(&self) -> String {
        format!("manifests {}", self.path.display())
    }
}

/// The Kubernetes API, through the watchers of [`kube_source`].
pub struct KubeConfigSource {
    watchers: KubeSource,
    state: ClusterState,
    programmed_once: bool,
    describe: String,
}

impl KubeConfigSource {
    /// Connects (builds the client; the watchers connect and retry on their own) and starts
    /// watching on `runtime`.
    pub fn start(runtime: &Handle, opts: &KubeOptions) -> anyhow::Result<KubeConfigSource> {
        let client = runtime.block_on(kube_source::client(opts))?;
        let describe = match &opts.kubeconfig {
            Some(path) => format!("the Kubernetes API (--kubeconfig {})", path.display()),
            None => "the Kubernetes API (in-cluster service account)".into(),
        };
        Ok(KubeConfigSource {
            watchers: KubeSource::start(runtime, client, opts),
            state: ClusterState::new(),
            programmed_once: false,
            describe,
        })
    }

    /// The watchers (status, stop).
    pub fn watchers(&self) -> &KubeSource {
        &self.watchers
    }
}

impl ConfigSource for KubeConfigSource {
    fn poll(&mut self, timeout: Duration) -> Poll {
        let Some(batch) = self.watchers.wait(timeout) else {
            return Poll::Unchanged;
        };
        let mut warnings = Vec::new();
        for update in batch.updates {
            if let Err(e) = kube_source::apply_update(&mut self.state, update) {
                warnings.push(format!("Kubernetes API: {e}; object ignored"));
            }
        }
        let changes = self.state.take_changes();
        // The first complete sync is programmed even if it is empty: it replaces whatever a
        // previous run left in the pinned maps.
        if changes.is_empty() && self.programmed_once {
            return Poll::Unchanged;
        }
        self.programmed_once = true;
        Poll::Changed {
            changes,
            since: Some(batch.oldest),
            warnings,
        }
    }

    fn state(&self) -> &ClusterState {
        &self.state
    }

    fn retries_failures(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}
