//! Where `xlb run` gets the cluster from: manifest files or the Kubernetes API. Both fill one
//! [`ClusterState`] and report what changed; the run loop compiles and programs it the same way
//! whichever source it came from (there is no second code path for semantics).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use tokio::runtime::Handle;

use crate::source::cluster::{Changes, ClusterState};
use crate::source::kube::{self, KubeOptions, KubeSource};
use crate::source::manifest;

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

/// How long the manifests must be quiet before a burst of file events is read (an editor's
/// save, a `kubectl`-style write-then-rename, a ConfigMap swap are several events each).
const SETTLE: Duration = Duration::from_millis(5);

/// The longest a burst of events may delay reading the manifests.
const SETTLE_MAX: Duration = Duration::from_millis(100);

/// The longest a file written in place (opened, written, not yet closed) may delay reading it:
/// read half-written, it could withdraw the Services it defines until the rest arrives.
const WRITE_MAX: Duration = Duration::from_secs(1);

/// Manifest files, watched with inotify (the `notify` crate): a change re-reads only the files
/// its events name and updates only the objects they define ([`manifest::ManifestSet`]).
///
/// * The watch is on the directory (for a single file: on its parent, so that a file renamed
///   over it, as editors and `kubectl`-style tools save, is seen).
/// * Events on hidden files (editor swap files, a writer's temporary file) are ignored; the
///   rename that puts the file in place is the change. Events on `..`-prefixed names (a
///   ConfigMap volume's `..data` swap), on the directory itself, or a queue overflow cause a
///   rescan: every file's stamp is compared and the changed files are read.
/// * A malformed changed file fails the reload (logged by the run loop); nothing is applied,
///   the last good state stays programmed, and the file is read again with the next event.
/// * The directory removed (or the watch lost): the reload fails the same way; the watch is
///   set up again, and everything rescanned, once the path exists again.
/// * No inotify (the kernel's instance limit reached, say): the manifests are rescanned every
///   `--poll-ms`, as before the watch existed.
pub struct ManifestSource {
    path: PathBuf,
    state: ClusterState,
    set: manifest::ManifestSet,
    watch: Option<Watch>,
    /// Paths to read again: those of events not yet applied (also after a failed reload).
    dirty: BTreeSet<PathBuf>,
    /// Everything must be rescanned (first load, overflow, a new watch).
    rescan: bool,
    /// When the oldest unapplied event arrived.
    since: Option<Instant>,
    /// The last reload failed: say so once, not on every event.
    failing: bool,
}

/// An inotify watch and the events it sends.
struct Watch {
    _watcher: notify::RecommendedWatcher,
    events: mpsc::Receiver<notify::Result<notify::Event>>,
    root_is_dir: bool,
}

impl Watch {
    fn start(path: &Path) -> anyhow::Result<Watch> {
        use notify::Watcher as _;
        let root_is_dir = std::fs::metadata(path)
            .with_context(|| format!("{}", path.display()))?
            .is_dir();
        let dir = if root_is_dir {
            path.to_path_buf()
        } else {
            match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            }
        };
        let (tx, events) = mpsc::channel();
        let mut watcher = notify::recommended_watcher(tx).context("starting inotify")?;
        watcher
            .watch(&dir, notify::RecursiveMode::NonRecursive)
            .with_context(|| format!("watching {}", dir.display()))?;
        Ok(Watch {
            _watcher: watcher,
            events,
            root_is_dir,
        })
    }
}

/// What one event means for the manifests at `root`.
enum Seen {
    Nothing,
    Files(Vec<PathBuf>),
    Rescan,
    /// The watch is gone (the directory removed or moved): rescan once it is back.
    Lost,
}

fn classify(root: &Path, root_is_dir: bool, event: notify::Result<notify::Event>) -> Seen {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode};
    let event = match event {
        Ok(e) => e,
        Err(_) => return Seen::Lost,
    };
    if event.need_rescan() {
        return Seen::Rescan;
    }
    match event.kind {
        // Opening and reading (our own reads included) change nothing.
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
        EventKind::Access(_) => return Seen::Nothing,
        _ => {}
    }
    let dir = if root_is_dir {
        Some(root)
    } else {
        root.parent()
    };
    let mut files = Vec::new();
    for path in event.paths {
        if path == root || Some(path.as_path()) == dir {
            // The watched directory (or the file itself) removed, moved or replaced.
            return if matches!(event.kind, EventKind::Remove(_) | EventKind::Modify(_)) {
                Seen::Lost
            } else {
                Seen::Rescan
            };
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("..") {
            return Seen::Rescan;
        }
        if manifest::is_manifest_of(root, root_is_dir, &path) {
            files.push(path);
        }
    }
    if files.is_empty() {
        Seen::Nothing
    } else {
        Seen::Files(files)
    }
}

/// Follows which files are open for writing: modified or created until closed, renamed or
/// removed.
fn track_writes(writing: &mut BTreeSet<PathBuf>, event: &notify::Event) {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind};
    match event.kind {
        EventKind::Create(CreateKind::File) | EventKind::Modify(ModifyKind::Data(_)) => {
            writing.extend(event.paths.iter().cloned());
        }
        EventKind::Access(AccessKind::Close(AccessMode::Write))
        | EventKind::Remove(_)
        | EventKind::Modify(ModifyKind::Name(_)) => {
            for p in &event.paths {
                writing.remove(p);
            }
        }
        _ => {}
    }
}

impl ManifestSource {
    pub fn new(path: PathBuf) -> ManifestSource {
        ManifestSource {
            path,
            state: ClusterState::new(),
            set: manifest::ManifestSet::new(),
            watch: None,
            dirty: BTreeSet::new(),
            rescan: true,
            since: None,
            failing: false,
        }
    }

    /// Whether the manifests are watched with inotify (else rescanned every poll).
    pub fn watching(&self) -> bool {
        self.watch.is_some()
    }

    /// Sets the watch up if it is not; a new watch rescans (events before it were missed).
    /// Returns whether it started one.
    fn ensure_watch(&mut self) -> bool {
        if self.watch.is_some() || !self.path.exists() {
            return false;
        }
        match Watch::start(&self.path) {
            Ok(w) => {
                self.watch = Some(w);
                self.rescan = true;
                true
            }
            Err(e) => {
                if !self.failing {
                    tracing::warn!(
                        manifests = %self.path.display(),
                        error = format!("{e:#}"),
                        "cannot watch the manifests; rescanning them every --poll-ms instead"
                    );
                }
                false
            }
        }
    }

    /// Takes one event into `dirty`/`rescan`: whether it may change the manifests, `None` if
    /// the watch is gone.
    fn take(&mut self, event: notify::Result<notify::Event>, root_is_dir: bool) -> Option<bool> {
        match classify(&self.path, root_is_dir, event) {
            Seen::Nothing => return Some(false),
            Seen::Files(files) => self.dirty.extend(files),
            Seen::Rescan => self.rescan = true,
            Seen::Lost => {
                self.rescan = true;
                self.since.get_or_insert_with(Instant::now);
                return None;
            }
        }
        self.since.get_or_insert_with(Instant::now);
        Some(true)
    }

    /// Waits up to `timeout` for events, then until they settle. Returns whether any of them
    /// may change the manifests.
    fn wait(&mut self, timeout: Duration) -> bool {
        let Some(watch) = &self.watch else {
            // No watch: a rescan every poll.
            std::thread::sleep(timeout);
            self.rescan = true;
            return true;
        };
        let root_is_dir = watch.root_is_dir;
        let mut events = Vec::new();
        let mut lost = false;
        match watch.events.recv_timeout(timeout) {
            Ok(e) => events.push(e),
            Err(mpsc::RecvTimeoutError::Timeout) => return false,
            Err(mpsc::RecvTimeoutError::Disconnected) => lost = true,
        }
        // Files being written in place: modified or created, not yet closed.
        let mut writing: BTreeSet<PathBuf> = BTreeSet::new();
        let first = Instant::now();
        let mut last = first;
        while !lost {
            if let Some(Ok(e)) = events.last() {
                track_writes(&mut writing, e);
            }
            let now = Instant::now();
            let deadline = if writing.is_empty() {
                (last + SETTLE).min(first + SETTLE_MAX)
            } else {
                first + WRITE_MAX
            };
            if now >= deadline {
                break;
            }
            match watch.events.recv_timeout(deadline - now) {
                Ok(e) => {
                    events.push(e);
                    last = Instant::now();
                }
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => lost = true,
            }
        }
        let mut news = false;
        for e in events {
            match self.take(e, root_is_dir) {
                Some(relevant) => news |= relevant,
                None => lost = true,
            }
        }
        if lost {
            self.watch = None;
            self.rescan = true;
        }
        lost || news
    }
}

impl ConfigSource for ManifestSource {
    fn poll(&mut self, timeout: Duration) -> Poll {
        let started = self.ensure_watch();
        // After a failed reload, only news (an event, a new watch) is worth another attempt.
        let pending = !self.failing && (self.rescan || !self.dirty.is_empty());
        if !pending && !started {
            let news = self.wait(timeout);
            // A watch lost while waiting is set up again at once if the path is back.
            let started = self.ensure_watch();
            if !news && !started {
                return Poll::Unchanged;
            }
        }
        let candidates = (!self.rescan).then_some(&self.dirty);
        match self.set.update(&self.path, candidates, &mut self.state) {
            Ok(update) => {
                self.dirty.clear();
                self.rescan = false;
                self.failing = false;
                let changes = self.state.take_changes();
                let since = self.since.take();
                if changes.is_empty() && update.warnings.is_empty() && !self.state.is_empty() {
                    return Poll::Unchanged;
                }
                Poll::Changed {
                    changes,
                    since,
                    warnings: update.warnings,
                }
            }
            Err(e) => {
                // Read again with the next event (or, without a watch, the next rescan). In
                // polling mode the same failure is reported once.
                let again = self.failing && self.watch.is_none();
                self.failing = true;
                if again {
                    return Poll::Unchanged;
                }
                Poll::Failed(format!("{e:#}"))
            }
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
        let client = runtime.block_on(kube::client(opts))?;
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
            if let Err(e) = kube::apply_update(&mut self.state, update) {
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
