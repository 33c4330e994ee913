//! Manifest files: the cluster state read from YAML/JSON files instead of the Kubernetes API.
//!
//! A manifest is exactly what `kubectl get -o yaml` (or `-o json`) prints: single objects,
//! `kind: List` documents with `items:`, typed lists such as `ServiceList` (whose items may omit
//! `apiVersion`/`kind`), and any number of documents separated by `---`. The objects xlb reads are
//! `v1 Service`, `discovery.k8s.io/v1 EndpointSlice` and `v1 Node`; every other kind is skipped
//! with a warning. See `docs/manifests.md`.
//!
//! [`load`] takes a file or a directory. A directory contributes every regular file directly in
//! it (not recursively) whose name ends in `.yaml`, `.yml` or `.json` and does not start with a
//! dot, in byte order of the file names. JSON is read with the same YAML parser (JSON is YAML).
//!
//! # Contract with the caller
//!
//! Loading is all or nothing: any unreadable file, YAML syntax error, alias bomb, bracket nesting
//! past [`MAX_BRACKET_DEPTH`] or malformed object fails the whole load with a [`ManifestError`]
//! that names the file, the line and (where known) the column. The caller (the run loop) must then
//! keep serving the **last good** state and report the error; it must not apply a partial or empty
//! state. For the same reason a directory with no manifest file in it is an error, not an empty
//! cluster: a config volume that is briefly empty must not withdraw every Service. (An empty file,
//! or `kind: List` with `items: []`, is the way to say "no objects".)
//!
//! An object that parses but that the API server would refuse ([`validate`]: port 70000, an
//! ingress IP `999.1.2.3`, ...) does not fail the load: it is left out of the state, whole, and
//! listed in [`LoadedManifests::rejected`] with its position and reasons. The caller then puts
//! back the version it programmed last ([`LoadedManifests::keep_last_good`]), as the API server
//! keeps the stored object when an update is refused; the other objects, also those of the same
//! file, apply.
//!
//! [`ManifestSet`] keeps the manifests up to date across changes, re-reading only the files that
//! changed (the watching source in `source/poll.rs` tells it which).

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::fs;
use std::io;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use yaml_serde::Value;

use crate::source::cluster::{ClusterState, ObjectKey};
use crate::source::validate::{self, FieldError};

/// File name extensions [`load`] picks up in a directory.
pub const MANIFEST_EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

/// The result of a successful load.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadedManifests {
    pub state: ClusterState,
    /// The files read, in the order they were read.
    pub files: Vec<PathBuf>,
    /// Objects skipped or overridden, one line each (`file: document N: ...`).
    pub warnings: Vec<String>,
    /// Objects the API server would refuse; not in `state`.
    pub rejected: Vec<Rejected>,
}

impl LoadedManifests {
    /// Puts back into `state`, for every rejected object that no valid definition in this load
    /// replaces, the version `previous` (what was programmed before) holds: an invalid edit
    /// leaves the object as it was. Returns one line per rejected object, saying what applies.
    pub fn keep_last_good(&mut self, previous: &ClusterState) -> Vec<String> {
        let mut lines = Vec::with_capacity(self.rejected.len());
        for r in &self.rejected {
            let outcome = if r.object.lookup(&self.state).is_some() {
                "another definition of it applies"
            } else if let Some(old) = r.object.lookup(previous) {
                old.upsert_into(&mut self.state);
                "the last good version stays programmed"
            } else {
                "it is not programmed"
            };
            lines.push(format!("{r}; {outcome}"));
        }
        lines
    }
}

/// An object xlb reads, as parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    Node(Box<Node>),
}

impl Object {
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Service(_) => "Service",
            Object::EndpointSlice(_) => "EndpointSlice",
            Object::Node(_) => "Node",
        }
    }

    /// Namespace and name; Nodes have the namespace `""`. `None` without a name.
    pub fn key(&self) -> Option<ObjectKey> {
        match self {
            Object::Service(o) => ObjectKey::of(&o.metadata),
            Object::EndpointSlice(o) => ObjectKey::of(&o.metadata),
            Object::Node(o) => o
                .metadata
                .name
                .clone()
                .filter(|n| !n.is_empty())
                .map(|n| ObjectKey::new("", n)),
        }
    }

    /// `namespace/name`, or the name of a Node.
    pub fn display_name(&self) -> String {
        match (self, self.key()) {
            (_, None) => "(unnamed)".into(),
            (Object::Node(_), Some(key)) => key.name,
            (_, Some(key)) => key.to_string(),
        }
    }

    /// The API server's complaints about this object (none: valid).
    pub fn validate(&self) -> Vec<FieldError> {
        match self {
            Object::Service(o) => validate::service(o),
            Object::EndpointSlice(o) => validate::endpoint_slice(o),
            Object::Node(o) => validate::node(o),
        }
    }

    /// The object of the same kind and key in `state`.
    pub fn lookup(&self, state: &ClusterState) -> Option<Object> {
        let key = self.key()?;
        match self {
            Object::Service(_) => state
                .service(&key.namespace, &key.name)
                .map(|o| Object::Service(Box::new(o.clone()))),
            Object::EndpointSlice(_) => state
                .endpoint_slice(&key.namespace, &key.name)
                .map(|o| Object::EndpointSlice(Box::new(o.clone()))),
            Object::Node(_) => state
                .node(&key.name)
                .map(|o| Object::Node(Box::new(o.clone()))),
        }
    }

    /// Inserts or replaces the object in `state` (nothing happens without a name), without
    /// the fields compile does not read, as the Kubernetes source stores them.
    pub fn upsert_into(self, state: &mut ClusterState) {
        use crate::source::kube::{trim_endpoint_slice, trim_node, trim_service};
        let _ = match self {
            Object::Service(o) => state.upsert_service(trim_service(*o)).map(drop),
            Object::EndpointSlice(o) => state
                .upsert_endpoint_slice(trim_endpoint_slice(*o))
                .map(drop),
            Object::Node(o) => state.upsert_node(trim_node(*o)).map(drop),
        };
    }
}

/// An object the API server would refuse, where it is and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub object: Object,
    pub path: PathBuf,
    /// 1-based index of the YAML document in the file.
    pub document: usize,
    /// 1-based line and column where the object starts; known for the first
    /// [`POSITIONED_REJECTIONS`] rejections of a file.
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// Every reason, `; `-separated, as the API server words them (`spec.ports[0].port:
    /// Invalid value: 70000: ...`), after the item's path in a list (`items[2]: `).
    pub message: String,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let position = Position {
            path: &self.path,
            line: self.line,
            column: self.column,
        };
        if self.line.is_none() {
            write!(f, "{position}: document {}", self.document)?;
        } else {
            write!(f, "{position}")?;
        }
        write!(
            f,
            ": {} {} is invalid: {}",
            self.object.kind(),
            self.object.display_name(),
            self.message
        )
    }
}

/// How many rejected objects per file get their line and column. Each costs one more parse of
/// its document, so a file of thousands of bad objects does not cost thousands of parses.
pub const POSITIONED_REJECTIONS: usize = 16;

/// How many YAML nodes more than its length in bytes a file may expand to through aliases. A
/// file without aliases has fewer nodes than bytes, so only alias expansion can reach this: it
/// bounds the memory a "billion laughs" document can take to a multiple of its size.
pub const ALIAS_EXPANSION_ALLOWANCE: usize = 250_000;

/// Why a load failed. Its `Display` starts with `file:line:column:` where the position is known.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The path, a directory entry or a file could not be read (including non-UTF-8 content).
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A directory holds no `*.yaml`, `*.yml` or `*.json` file.
    #[error("{}: no *.yaml, *.yml or *.json files in this directory", path.display())]
    NoFiles { path: PathBuf },
    /// A document is not valid YAML, not a Kubernetes object, or an object xlb reads has fields
    /// of the wrong type or lacks `metadata.name`.
    #[error("{}: {message}", Position { path, line: *line, column: *column })]
    Invalid {
        path: PathBuf,
        /// 1-based index of the YAML document in the file.
        document: usize,
        /// 1-based line of the offending node, when the parser reported one.
        line: Option<usize>,
        /// 1-based column of the offending node, when the parser reported one.
        column: Option<usize>,
        message: String,
    },
}

impl ManifestError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            ManifestError::Io { path, .. }
            | ManifestError::NoFiles { path }
            | ManifestError::Invalid { path, .. } => path,
        }
    }

    /// The 1-based line of the error, if known.
    pub fn line(&self) -> Option<usize> {
        match self {
            ManifestError::Invalid { line, .. } => *line,
            _ => None,
        }
    }

    /// The 1-based column of the error, if known.
    pub fn column(&self) -> Option<usize> {
        match self {
            ManifestError::Invalid { column, .. } => *column,
            _ => None,
        }
    }
}

/// `path`, `path:line` or `path:line:column`.
struct Position<'a> {
    path: &'a Path,
    line: Option<usize>,
    column: Option<usize>,
}

impl fmt::Display for Position<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        Ok(())
    }
}

/// The manifest files `path` stands for: `path` itself if it is a file (whatever its name), or
/// the matching files of a directory, sorted by name.
pub fn manifest_files(path: &Path) -> io::Result<Vec<PathBuf>> {
    if !fs::metadata(path)?.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in fs::read_dir(path)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') {
            continue;
        }
        let Some((_, ext)) = name.rsplit_once('.') else {
            continue;
        };
        if !MANIFEST_EXTENSIONS
            .iter()
            .any(|e| ext.eq_ignore_ascii_case(e))
        {
            continue;
        }
        // Follows symlinks (ConfigMap volumes are symlinks into a timestamped directory).
        match fs::metadata(entry.path()) {
            Ok(meta) if meta.is_file() => files.push(entry.path()),
            Ok(_) => {}
            // Removed (or a dangling symlink) between listing and stat: not part of the set.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

/// One file's identity for change detection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileStamp {
    pub path: PathBuf,
    pub len: u64,
    pub modified: Option<SystemTime>,
    /// Device and inode: catch a replacement (rename over, symlink swap) with equal size and time.
    pub dev: u64,
    pub ino: u64,
}

fn stamp(file: PathBuf) -> io::Result<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(&file)?;
    Ok(FileStamp {
        len: meta.len(),
        modified: meta.modified().ok(),
        dev: meta.dev(),
        ino: meta.ino(),
        path: file,
    })
}

/// Loads a manifest file or directory into a [`ClusterState`]. See the module docs for the
/// format and the all-or-nothing contract.
pub fn load(path: &Path) -> Result<LoadedManifests, ManifestError> {
    let files = manifest_files(path).map_err(|source| ManifestError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if files.is_empty() {
        return Err(ManifestError::NoFiles {
            path: path.to_path_buf(),
        });
    }
    let mut loader = Loader::default();
    for file in &files {
        let text = fs::read_to_string(file).map_err(|source| ManifestError::Io {
            path: file.clone(),
            source,
        })?;
        loader.add(file, &text)?;
    }
    Ok(loader.finish(files))
}

/// Parses manifest text as if it were the file `path` (which is only used in messages).
pub fn load_str(path: &Path, text: &str) -> Result<LoadedManifests, ManifestError> {
    let mut loader = Loader::default();
    loader.add(path, text)?;
    Ok(loader.finish(vec![path.to_path_buf()]))
}

/// The manifests as last loaded, file by file, so that a change re-reads only the files it
/// touched and updates only the objects they define: what the watching manifest source keeps.
///
/// The result is the one [`load`] gives for the same files (objects of later files, in name
/// order, replace earlier definitions; within a file, later documents replace earlier ones),
/// with one difference the all-or-nothing contract allows: an object the API server would
/// refuse keeps whatever version the state held before, whatever file that came from.
///
/// Only which objects each file defines is kept, not the objects: the state holds the ones that
/// apply, and a second copy of every object was most of `xlb run`'s memory at 10,000 Services.
/// When a change leaves an object to a definition in a file that did not change (the winning
/// definition removed, another file still has one), that file is read again.
#[derive(Debug, Default)]
pub struct ManifestSet {
    /// Every file of the set, ordered by path (the files of one directory: by name).
    files: BTreeMap<PathBuf, StampedFile>,
    /// Which files define each object.
    defs: HashMap<ObjectId, Definers>,
}

/// The files that define one object, sorted. Almost always one: a vector, where a set would
/// allocate a node for eleven per object.
#[derive(Debug, Default)]
struct Definers(Vec<PathBuf>);

impl Definers {
    fn insert(&mut self, path: PathBuf) {
        if let Err(i) = self.0.binary_search(&path) {
            self.0.insert(i, path);
        }
    }

    fn remove(&mut self, path: &PathBuf) {
        if let Ok(i) = self.0.binary_search(path) {
            self.0.remove(i);
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn iter(&self) -> std::slice::Iter<'_, PathBuf> {
        self.0.iter()
    }
}

/// An object's kind and key.
type ObjectId = (&'static str, ObjectKey);

/// A file of a [`ManifestSet`]: its stamp when read, and the objects it defined then.
type StampedFile = (FileStamp, Vec<ObjectId>);

/// What [`ManifestSet::update`] did.
#[derive(Debug, Default)]
pub struct SetUpdate {
    /// Files read and parsed.
    pub parsed: usize,
    /// Files that left the set.
    pub removed: usize,
    /// Notes about the changed files (skipped documents, redefinitions, rejected objects).
    pub warnings: Vec<String>,
}

/// Below this many files to read, one thread parses them all.
const PARALLEL_PARSE_FROM: usize = 64;

/// Reads and parses `files`, on every core when there are many. The error is the first one
/// in the order of `files`, as reading them one by one would give.
fn read_and_parse(files: Vec<(PathBuf, FileStamp)>) -> Result<Vec<ReadFile>, ManifestError> {
    let one = |(path, stamp): (PathBuf, FileStamp)| -> Result<ReadFile, ManifestError> {
        let text = fs::read_to_string(&path).map_err(|source| ManifestError::Io {
            path: path.clone(),
            source,
        })?;
        let file = parse_file(&path, &text)?;
        Ok((path, stamp, file))
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if files.len() < PARALLEL_PARSE_FROM || threads < 2 {
        return files.into_iter().map(one).collect();
    }
    let per = files.len().div_ceil(threads);
    let mut chunks = Vec::new();
    let mut rest = files;
    while rest.len() > per {
        let tail = rest.split_off(per);
        chunks.push(std::mem::replace(&mut rest, tail));
    }
    chunks.push(rest);
    let parsed: Vec<Vec<Result<ReadFile, ManifestError>>> = std::thread::scope(|scope| {
        let workers: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                scope.spawn(move || {
                    let mut out = Vec::with_capacity(chunk.len());
                    for f in chunk {
                        let r = one(f);
                        let failed = r.is_err();
                        out.push(r);
                        if failed {
                            break;
                        }
                    }
                    out
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    parsed.into_iter().flatten().collect()
}

/// A file read for an update: its path, its stamp before the read, what it holds.
type ReadFile = (PathBuf, FileStamp, ParsedFile);

fn ids_of(file: &ParsedFile) -> Vec<ObjectId> {
    file.objects
        .iter()
        .filter_map(|(o, _)| Some((o.kind(), o.key()?)))
        .collect()
}

impl ManifestSet {
    pub fn new() -> ManifestSet {
        ManifestSet::default()
    }

    /// Files in the set.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Brings `state` up to date with the manifests at `root` (a file or a directory, as for
    /// [`load`]). `candidates`: the only paths that may have changed (what a file watch saw);
    /// `None` lists `root` again and compares every file's stamp (the first load, a rescan).
    /// Paths that are not manifest files of `root` are ignored.
    ///
    /// All or nothing: on an error (a file unreadable or malformed, the directory gone or left
    /// without manifests) neither the set nor `state` changes, so the last good state stays;
    /// call again with the same candidates (and any new ones) once the files change.
    pub fn update(
        &mut self,
        root: &Path,
        candidates: Option<&BTreeSet<PathBuf>>,
        state: &mut ClusterState,
    ) -> Result<SetUpdate, ManifestError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ManifestError::Io { path, source }
        };
        // Each candidate: its stamp now, or None if it is no manifest file of the set any more.
        let mut seen: Vec<(PathBuf, Option<FileStamp>)> = Vec::new();
        match candidates {
            None => {
                let files = manifest_files(root).map_err(io_err(root))?;
                let listed: BTreeSet<&PathBuf> = files.iter().collect();
                for old in self.files.keys().filter(|f| !listed.contains(f)) {
                    seen.push((old.clone(), None));
                }
                for file in files {
                    let stamp = stamp(file.clone()).map_err(io_err(&file))?;
                    seen.push((file, Some(stamp)));
                }
            }
            Some(paths) => {
                let meta = fs::metadata(root).map_err(io_err(root))?;
                for path in paths {
                    if !is_manifest_of(root, meta.is_dir(), path) {
                        continue;
                    }
                    let now = match fs::metadata(path) {
                        Ok(m) if m.is_file() => Some(stamp(path.clone()).map_err(io_err(path))?),
                        Ok(_) => None,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                        Err(e) => return Err(io_err(path)(e)),
                    };
                    seen.push((path.clone(), now));
                }
            }
        }
        // Parse what changed, before touching anything.
        let mut to_read = Vec::new();
        let mut gone: BTreeSet<PathBuf> = BTreeSet::new();
        for (path, now) in seen {
            let before = self.files.get(&path).map(|(s, _)| s);
            match now {
                Some(stamp) if before == Some(&stamp) => {}
                Some(stamp) => to_read.push((path, stamp)),
                None if before.is_some() => {
                    gone.insert(path);
                }
                None => {}
            }
        }
        let mut fresh: BTreeMap<PathBuf, (FileStamp, ParsedFile)> = read_and_parse(to_read)?
            .into_iter()
            .map(|(path, stamp, file)| (path, (stamp, file)))
            .collect();
        let added = fresh
            .keys()
            .filter(|p| !self.files.contains_key(*p))
            .count();
        if self.files.len() + added == gone.len() {
            return Err(ManifestError::NoFiles {
                path: root.to_path_buf(),
            });
        }
        // Unchanged files whose definitions now win: read again for their objects. One that
        // changed meanwhile joins the changed files (and may bring more winners).
        let mut again: HashMap<PathBuf, ParsedFile> = HashMap::new();
        loop {
            let needed = self.winners_elsewhere(&fresh, &gone, &again);
            if needed.is_empty() {
                break;
            }
            let mut reread = Vec::new();
            for path in needed {
                let stamp = stamp(path.clone()).map_err(io_err(&path))?;
                reread.push((path, stamp));
            }
            for (path, stamp, file) in read_and_parse(reread)? {
                let same = self
                    .files
                    .get(&path)
                    .is_some_and(|(s, ids)| *s == stamp && *ids == ids_of(&file));
                if same {
                    again.insert(path, file);
                } else {
                    fresh.insert(path, (stamp, file));
                }
            }
        }

        // Apply: move each changed file's definitions, then settle every object they name.
        let mut update = SetUpdate {
            parsed: fresh.len() + again.len(),
            removed: gone.len(),
            warnings: Vec::new(),
        };
        let mut affected: BTreeMap<ObjectId, Option<Object>> = BTreeMap::new();
        let mut rejected_keys: BTreeSet<ObjectId> = BTreeSet::new();
        let mut rejected: Vec<Rejected> = Vec::new();
        let changed: Vec<PathBuf> = gone.iter().chain(fresh.keys()).cloned().collect();
        for path in &changed {
            if let Some((_, old)) = self.files.remove(path) {
                for id in old {
                    if let Some(files) = self.defs.get_mut(&id) {
                        files.remove(path);
                        if files.is_empty() {
                            self.defs.remove(&id);
                        }
                    }
                    affected.entry(id).or_insert(None);
                }
            }
            let Some((stamp, file)) = fresh.get(path) else {
                continue;
            };
            update.warnings.extend(file.warnings.iter().cloned());
            for r in &file.rejected {
                if let Some(key) = r.object.key() {
                    rejected_keys.insert((r.object.kind(), key));
                }
                rejected.push(r.clone());
            }
            let ids = ids_of(file);
            for id in &ids {
                self.defs
                    .entry(id.clone())
                    .or_default()
                    .insert(path.clone());
                affected.entry(id.clone()).or_insert(None);
            }
            self.files.insert(path.clone(), (stamp.clone(), ids));
        }
        // Each read file's last definition of each object, moved (not copied) into the state.
        let mut latest: HashMap<PathBuf, HashMap<ObjectId, Object>> = fresh
            .into_iter()
            .map(|(path, (_, file))| (path, file))
            .chain(again)
            .map(|(path, file)| {
                let mut defined = HashMap::new();
                for (object, _) in file.objects {
                    if let Some(key) = object.key() {
                        defined.insert((object.kind(), key), object);
                    }
                }
                (path, defined)
            })
            .collect();
        for (id, winner) in affected.iter_mut() {
            let Some(files) = self.defs.get(id) else {
                continue;
            };
            let last = files.iter().next_back().expect("a definition");
            if files.len() > 1 {
                let others: Vec<String> = files
                    .iter()
                    .filter(|f| *f != last)
                    .map(|f| f.display().to_string())
                    .collect();
                update.warnings.push(format!(
                    "{}: {} {} is defined again; this definition replaces the one(s) in {}",
                    last.display(),
                    id.0,
                    if id.0 == "Node" {
                        id.1.name.clone()
                    } else {
                        id.1.to_string()
                    },
                    others.join(", ")
                ));
            }
            *winner = latest.get_mut(last).and_then(|defined| defined.remove(id));
        }
        drop(latest);
        for ((kind, key), winner) in affected {
            match winner {
                Some(object) => object.upsert_into(state),
                // An invalid edit keeps the last good version, as the API server would.
                None if rejected_keys.contains(&(kind, key.clone())) => {}
                None => match kind {
                    "Service" => drop(state.delete_service(&key.namespace, &key.name)),
                    "EndpointSlice" => drop(state.delete_endpoint_slice(&key.namespace, &key.name)),
                    _ => drop(state.delete_node(&key.name)),
                },
            }
        }
        for r in rejected {
            let outcome = match r.object.key() {
                Some(key) if self.defs.contains_key(&(r.object.kind(), key.clone())) => {
                    "another definition of it applies"
                }
                _ if r.object.lookup(state).is_some() => "the last good version stays programmed",
                _ => "it is not programmed",
            };
            update.warnings.push(format!("{r}; {outcome}"));
        }
        Ok(update)
    }

    /// Files outside `fresh` (and not `gone`, not in `again`) that hold the winning definition
    /// of an object a changed file defines or defined: the objects of those are needed.
    fn winners_elsewhere(
        &self,
        fresh: &BTreeMap<PathBuf, (FileStamp, ParsedFile)>,
        gone: &BTreeSet<PathBuf>,
        again: &HashMap<PathBuf, ParsedFile>,
    ) -> BTreeSet<PathBuf> {
        let changed = |p: &PathBuf| gone.contains(p) || fresh.contains_key(p);
        let mut ids: BTreeSet<&ObjectId> = BTreeSet::new();
        let new_ids: Vec<(&PathBuf, Vec<ObjectId>)> =
            fresh.iter().map(|(p, (_, f))| (p, ids_of(f))).collect();
        for path in gone.iter().chain(fresh.keys()) {
            if let Some((_, old)) = self.files.get(path) {
                ids.extend(old.iter());
            }
        }
        for (_, new) in &new_ids {
            ids.extend(new.iter());
        }
        let mut needed = BTreeSet::new();
        for id in ids {
            let unchanged = self
                .defs
                .get(id)
                .and_then(|files| files.iter().rfind(|p| !changed(p)));
            let Some(unchanged) = unchanged else { continue };
            let beaten = new_ids
                .iter()
                .any(|(p, new)| *p > unchanged && new.contains(id));
            if !beaten && !again.contains_key(unchanged) {
                needed.insert(unchanged.clone());
            }
        }
        needed
    }
}

/// Whether `path` is one of the manifest files of `root` (a directory: a manifest-named,
/// non-hidden file directly in it; a file: that file).
pub fn is_manifest_of(root: &Path, root_is_dir: bool, path: &Path) -> bool {
    if !root_is_dir {
        return path == root;
    }
    if path.parent() != Some(root) {
        return false;
    }
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    if name.starts_with('.') {
        return false;
    }
    name.rsplit_once('.').is_some_and(|(_, ext)| {
        MANIFEST_EXTENSIONS
            .iter()
            .any(|e| ext.eq_ignore_ascii_case(e))
    })
}

// ---- implementation ----

const API_CORE: &str = "v1";
const API_DISCOVERY: &str = "discovery.k8s.io/v1";

/// What pass 1 found a document (or list item) to be; pass 2 deserialises it accordingly.
#[derive(Debug)]
enum Shape {
    /// An empty document or a null list item.
    Empty,
    /// A kind xlb does not read.
    Skip,
    Service,
    EndpointSlice,
    Node,
    List(Vec<Shape>),
    /// Not a Kubernetes object; the message says why.
    Invalid(String),
}

/// What one file holds, parsed: its objects in order with where each was defined, and the
/// warnings about documents skipped.
#[derive(Debug)]
struct ParsedFile {
    objects: Vec<(Object, String)>,
    warnings: Vec<String>,
    rejected: Vec<Rejected>,
}

#[derive(Default)]
struct Loader {
    state: ClusterState,
    warnings: Vec<String>,
    rejected: Vec<Rejected>,
    /// Where each object was defined, to report redefinitions.
    origins: BTreeMap<(&'static str, ObjectKey), String>,
}

impl Loader {
    fn add(&mut self, path: &Path, text: &str) -> Result<(), ManifestError> {
        let parsed = parse_file(path, text)?;
        self.merge(&parsed);
        Ok(())
    }

    /// Adds a parsed file's objects, in order, after everything added before.
    fn merge(&mut self, file: &ParsedFile) {
        self.warnings.extend(file.warnings.iter().cloned());
        self.rejected.extend(file.rejected.iter().cloned());
        for (object, origin) in &file.objects {
            self.insert(object.clone(), origin);
        }
    }

    fn insert(&mut self, object: Object, origin: &str) {
        // Names were checked while deserialising, so the upsert cannot fail.
        let kind = object.kind();
        let Some(key) = object.key() else { return };
        if let Some(previous) = self.origins.insert((kind, key.clone()), origin.to_owned()) {
            let shown = if kind == "Node" {
                key.name.clone()
            } else {
                key.to_string()
            };
            self.warnings.push(format!(
                "{origin}: {kind} {shown} is defined again; this definition replaces the one in {previous}"
            ));
        }
        object.upsert_into(&mut self.state);
    }

    fn finish(self, files: Vec<PathBuf>) -> LoadedManifests {
        LoadedManifests {
            state: self.state,
            files,
            warnings: self.warnings,
            rejected: self.rejected,
        }
    }
}

/// Parses one file: syntax, then each object xlb reads, with positions in errors; objects the
/// API server would refuse go to `rejected`.
fn parse_file(path: &Path, text: &str) -> Result<ParsedFile, ManifestError> {
    if let Some((document, line, column)) = too_deep(text) {
        return Err(ManifestError::Invalid {
            path: path.to_path_buf(),
            document,
            line: Some(line),
            column: Some(column),
            message: format!(
                "brackets nest more than {MAX_BRACKET_DEPTH} deep (YAML objects nest at most \
                 {RECURSION_LIMIT} levels); refusing the file before parsing it"
            ),
        });
    }
    let text = &*json_breaks_escaped(text);
    let mut warnings = Vec::new();
    let mut objects = Vec::new();
    let mut rejected = Vec::new();
    let invalid = |document: usize, err: yaml_serde::Error| {
        let (line, column, mut message) = located(&err);
        if message == REPETITION_LIMIT {
            // The parser's own bound on alias expansion, met before pass 0's budget.
            message.push_str(": aliases are expanded too often; refusing it as an alias bomb");
        }
        ManifestError::Invalid {
            path: path.to_path_buf(),
            document,
            line,
            column,
            message,
        }
    };

    // Pass 0: refuse an alias bomb before anything expands it into memory.
    if text.contains('*') {
        let budget = Cell::new(text.len() + ALIAS_EXPANSION_ALLOWANCE);
        for (i, document) in yaml_serde::Deserializer::from_str(text).enumerate() {
            CountNodes(&budget)
                .deserialize(document)
                .map_err(|e| invalid(i + 1, e))?;
        }
    }

    // Pass 1: syntax, and what each document is (kind, list items). Errors here are YAML
    // syntax errors, which carry their position.
    let mut shapes = Vec::new();
    let mut values = Vec::new();
    for (i, document) in yaml_serde::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(document).map_err(|e| invalid(i + 1, e))?;
        let origin = format!("{}: document {}", path.display(), i + 1);
        shapes.push(shape_of(&value, &origin, None, &mut warnings));
        values.push(value);
    }

    // Pass 2, for a file without mistakes: the objects from the values of pass 1, without
    // parsing the text again (that would double the cost of reading the manifests). Only
    // what succeeds here is kept; anything else (a type error, a missing name, an object the
    // API server would refuse) takes the path below, which gives the same result with
    // positions.
    if let Some(objects) = objects_of_values(path, &values, &shapes) {
        return Ok(ParsedFile {
            objects,
            warnings,
            rejected,
        });
    }
    drop(values);

    // Pass 2: deserialise the objects xlb reads straight from the parser, so that a type
    // error (or a missing name) is reported at its line and column; validate each.
    for (i, (document, shape)) in yaml_serde::Deserializer::from_str(text)
        .zip(&shapes)
        .enumerate()
    {
        let mut found = Found::default();
        ShapeSeed {
            shape,
            found: &mut found,
        }
        .deserialize(document)
        .map_err(|e| invalid(i + 1, e))?;
        let origin = format!("{}: document {}", path.display(), i + 1);
        objects.extend(found.objects.into_iter().map(|o| (o, origin.clone())));
        for (ordinal, object, message) in found.rejected {
            let (line, column, message) = if rejected.len() < POSITIONED_REJECTIONS {
                locate(text, i, shape, ordinal, &message)
            } else {
                (None, None, message)
            };
            rejected.push(Rejected {
                object,
                path: path.to_path_buf(),
                document: i + 1,
                line,
                column,
                message,
            });
        }
    }
    Ok(ParsedFile {
        objects,
        warnings,
        rejected,
    })
}

/// Pass 2 from pass 1's values: every object of the file, or `None` if any document fails to
/// deserialise or holds an object that fails validation (the caller then parses the text again
/// to say where).
fn objects_of_values(
    path: &Path,
    values: &[Value],
    shapes: &[Shape],
) -> Option<Vec<(Object, String)>> {
    let mut objects = Vec::new();
    for (i, (value, shape)) in values.iter().zip(shapes).enumerate() {
        let mut found = Found::default();
        ShapeSeed {
            shape,
            found: &mut found,
        }
        .deserialize(value)
        .ok()?;
        if !found.rejected.is_empty() {
            return None;
        }
        let origin = format!("{}: document {}", path.display(), i + 1);
        objects.extend(found.objects.into_iter().map(|o| (o, origin.clone())));
    }
    Some(objects)
}

/// How deep the YAML parser lets a document nest (its recursion limit).
const RECURSION_LIMIT: usize = 128;

/// How far `[` and `{` may outnumber `]` and `}` at any point of a file, counting every
/// bracket, also those in strings and comments. The parser's time grows with the square of
/// the flow nesting depth before its recursion limit refuses the document: 100,000 `{a: ` (400
/// KB) took 157 s per parse. Nothing nested deeper than [`RECURSION_LIMIT`] loads anyway, and
/// a real manifest holds no thousand unclosed brackets.
pub const MAX_BRACKET_DEPTH: usize = 1024;

/// Where (document, line, column; 1-based) the brackets of `text` first nest deeper than
/// [`MAX_BRACKET_DEPTH`], if they do.
fn too_deep(text: &str) -> Option<(usize, usize, usize)> {
    let mut depth = 0usize;
    let at = text.bytes().position(|b| {
        match b {
            b'[' | b'{' => depth += 1,
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        depth > MAX_BRACKET_DEPTH
    })?;
    let before = &text[..at];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let column = before[line_start..].chars().count() + 1;
    // Documents start at `---` lines; one at the very start opens the first document.
    let markers = before
        .lines()
        .skip(1)
        .filter(|l| l.starts_with("---"))
        .count();
    Some((markers + 1, line, column))
}

/// The YAML parser's message when aliases make it replay more than 100 events per event.
const REPETITION_LIMIT: &str = "repetition limit exceeded";

/// The text with U+0085, U+2028 and U+2029 escaped (`\u2028`) in every document that is
/// JSON; other documents as they are. The YAML parser reads YAML 1.1, where these characters
/// break lines, also inside double-quoted strings, which it folds into a space: a JSON string
/// holding one would load changed. In valid JSON they can only stand inside strings, where the
/// escape means the same character, so the escaped document is the same JSON, and YAML reads
/// it as JSON does. (An error later on the same line then names a column 5 further per
/// escaped character.)
fn json_breaks_escaped(text: &str) -> std::borrow::Cow<'_, str> {
    const BREAKS: [char; 3] = ['\u{85}', '\u{2028}', '\u{2029}'];
    if !text.contains(BREAKS) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 16);
    // Documents: from a line starting with a marker (`---`, `...`) to the next one.
    let mut start = 0;
    let mut ends: Vec<usize> = text
        .match_indices('\n')
        .map(|(i, _)| i + 1)
        .filter(|&i| text[i..].starts_with("---") || text[i..].starts_with("..."))
        .collect();
    ends.push(text.len());
    for end in ends {
        let document = &text[start..end];
        let body = document
            .strip_prefix("---")
            .or_else(|| document.strip_prefix("..."))
            .unwrap_or(document);
        if document.contains(BREAKS) && serde_json::from_str::<IgnoredAny>(body).is_ok() {
            out.push_str(&document[..document.len() - body.len()]);
            for c in body.chars() {
                if BREAKS.contains(&c) {
                    out.push_str(&format!("\\u{:04x}", u32::from(c)));
                } else {
                    out.push(c);
                }
            }
        } else {
            out.push_str(document);
        }
        start = end;
    }
    out.into()
}

/// Line, column and message (without the position the parser wrote into it) of a parser error.
fn located(err: &yaml_serde::Error) -> (Option<usize>, Option<usize>, String) {
    match err.location() {
        Some(l) => (
            Some(l.line()),
            Some(l.column()),
            strip_location(&err.to_string(), l.line(), l.column()),
        ),
        None => (None, None, err.to_string()),
    }
}

/// Where the `ordinal`th object of document `index` starts, and `message` prefixed with its
/// path in the document: the parser only reports positions with errors, so this parses the
/// document again and fails on purpose at that object.
fn locate(
    text: &str,
    index: usize,
    shape: &Shape,
    ordinal: usize,
    message: &str,
) -> (Option<usize>, Option<usize>, String) {
    let unlocated = || (None, None, message.to_owned());
    let Some(document) = yaml_serde::Deserializer::from_str(text).nth(index) else {
        return unlocated();
    };
    let mut found = Found {
        probe: Some((ordinal, message.to_owned())),
        ..Found::default()
    };
    match (ShapeSeed {
        shape,
        found: &mut found,
    })
    .deserialize(document)
    {
        Err(e) => located(&e),
        Ok(()) => unlocated(),
    }
}

/// The YAML parser puts " at line L column C" into its messages; the position goes in front instead.
/// Only the suffix naming the reported position is removed (libyaml may name a second position,
/// the start of the enclosing construct, which stays).
fn strip_location(message: &str, line: usize, column: usize) -> String {
    message.replacen(&format!(" at line {line} column {column}"), "", 1)
}

fn str_field<'a>(map: &'a yaml_serde::Mapping, key: &str) -> Result<Option<&'a str>, String> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("{key} must be a string")),
    }
}

/// Pass 1: classify a document or list item. `implied` is `(apiVersion, kind)` for the items of a
/// typed list (`ServiceList`), whose items may leave them out.
fn shape_of(
    value: &Value,
    origin: &str,
    implied: Option<(&str, &str)>,
    warnings: &mut Vec<String>,
) -> Shape {
    let map = match value {
        Value::Null => return Shape::Empty,
        Value::Mapping(map) => map,
        Value::Tagged(tagged) => return shape_of(&tagged.value, origin, implied, warnings),
        _ => {
            return Shape::Invalid(
                "expected a Kubernetes object (a mapping with apiVersion and kind)".into(),
            );
        }
    };
    let (api_version, kind) = match (str_field(map, "apiVersion"), str_field(map, "kind")) {
        (Err(e), _) | (_, Err(e)) => return Shape::Invalid(e),
        (Ok(None), Ok(None)) if implied.is_some() => implied.unwrap(),
        (_, Ok(None)) => return Shape::Invalid("missing kind".into()),
        (Ok(None), _) => return Shape::Invalid("missing apiVersion".into()),
        (Ok(Some(a)), Ok(Some(k))) => (a, k),
    };
    match (api_version, kind) {
        (API_CORE, "Service") => Shape::Service,
        (API_DISCOVERY, "EndpointSlice") => Shape::EndpointSlice,
        (API_CORE, "Node") => Shape::Node,
        _ if kind == "List" || (kind.ends_with("List") && map.contains_key("items")) => {
            let item_kind = kind
                .strip_suffix("List")
                .filter(|k| !k.is_empty())
                .map(|k| (api_version, k));
            match map.get("items") {
                None | Some(Value::Null) => Shape::List(Vec::new()),
                Some(Value::Sequence(items)) => Shape::List(
                    items
                        .iter()
                        .enumerate()
                        .map(|(j, item)| {
                            shape_of(item, &format!("{origin}, items[{j}]"), item_kind, warnings)
                        })
                        .collect(),
                ),
                Some(_) => Shape::Invalid("items must be a list".into()),
            }
        }
        _ => {
            let meta = map.get("metadata").and_then(Value::as_mapping);
            let get = |k: &str| meta.and_then(|m| m.get(k)).and_then(Value::as_str);
            let name = match (get("namespace"), get("name")) {
                (Some(ns), Some(name)) => format!(" {ns}/{name}"),
                (None, Some(name)) => format!(" {name}"),
                _ => String::new(),
            };
            warnings.push(format!(
                "{origin}: skipped {api_version} {kind}{name} (xlb reads only v1 Service, \
                 discovery.k8s.io/v1 EndpointSlice and v1 Node)"
            ));
            Shape::Skip
        }
    }
}

/// What pass 2 collects from one document.
#[derive(Default)]
struct Found {
    objects: Vec<Object>,
    /// Objects that failed validation: their ordinal in the document, the object, why.
    rejected: Vec<(usize, Object, String)>,
    /// The ordinal of the next object met (objects counted in document order).
    next: usize,
    /// A position probe ([`locate`]): fail at this object with this message, skip the others.
    probe: Option<(usize, String)>,
}

/// The object types xlb reads.
trait Checked: for<'de> Deserialize<'de> + k8s_openapi::Metadata<Ty = ObjectMeta> {
    fn wrap(self) -> Object;
}

impl Checked for Service {
    fn wrap(self) -> Object {
        Object::Service(Box::new(self))
    }
}

impl Checked for EndpointSlice {
    fn wrap(self) -> Object {
        Object::EndpointSlice(Box::new(self))
    }
}

impl Checked for Node {
    fn wrap(self) -> Object {
        Object::Node(Box::new(self))
    }
}

impl Found {
    fn object<'de, T: Checked, D: Deserializer<'de>>(&mut self, d: D) -> Result<(), D::Error> {
        let ordinal = self.next;
        self.next += 1;
        if let Some((at, message)) = &self.probe {
            if *at == ordinal {
                return d.deserialize_map(Reject(message));
            }
            IgnoredAny::deserialize(d)?;
            return Ok(());
        }
        let object = d.deserialize_map(Named::<T>(PhantomData))?.wrap();
        let errors = object.validate();
        if errors.is_empty() {
            self.objects.push(object);
        } else {
            self.rejected
                .push((ordinal, object, validate::describe(&errors)));
        }
        Ok(())
    }
}

/// Pass 2: deserialises one document or list item according to its [`Shape`].
struct ShapeSeed<'a> {
    shape: &'a Shape,
    found: &'a mut Found,
}

impl<'de> DeserializeSeed<'de> for ShapeSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        match self.shape {
            Shape::Empty | Shape::Skip => {
                IgnoredAny::deserialize(deserializer)?;
            }
            Shape::Service => self.found.object::<Service, D>(deserializer)?,
            Shape::EndpointSlice => self.found.object::<EndpointSlice, D>(deserializer)?,
            Shape::Node => self.found.object::<Node, D>(deserializer)?,
            Shape::List(items) => deserializer.deserialize_map(ListVisitor {
                items,
                found: self.found,
            })?,
            Shape::Invalid(message) => deserializer.deserialize_any(Reject(message))?,
        }
        Ok(())
    }
}

/// Deserialises a `T` from a mapping and insists on `metadata.name`. Runs inside the parser's
/// mapping, so errors raised here get the position of the object's first key.
struct Named<T>(PhantomData<T>);

impl<'de, T> Visitor<'de> for Named<T>
where
    T: Deserialize<'de> + k8s_openapi::Metadata<Ty = ObjectMeta> + k8s_openapi::Resource,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a {} object", T::KIND)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        let object = T::deserialize(de::value::MapAccessDeserializer::new(map))?;
        if object.metadata().name.as_deref().is_none_or(str::is_empty) {
            return Err(de::Error::custom(format_args!(
                "{} has no metadata.name",
                T::KIND
            )));
        }
        Ok(object)
    }
}

/// A `List`: reads `items` according to the item shapes, ignores every other field.
struct ListVisitor<'a> {
    items: &'a [Shape],
    found: &'a mut Found,
}

impl<'de> Visitor<'de> for ListVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a List object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Value>()? {
            if key.as_str() == Some("items") {
                map.next_value_seed(ItemsSeed {
                    items: self.items,
                    found: &mut *self.found,
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

struct ItemsSeed<'a> {
    items: &'a [Shape],
    found: &'a mut Found,
}

impl<'de> DeserializeSeed<'de> for ItemsSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ItemsSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of objects")
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        for shape in self.items {
            if seq
                .next_element_seed(ShapeSeed {
                    shape,
                    found: &mut *self.found,
                })?
                .is_none()
            {
                return Err(de::Error::custom("items changed between passes"));
            }
        }
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
}

/// Fails with the pass-1 message, at the position of the offending node.
struct Reject<'a>(&'a str);

impl<'de> Visitor<'de> for Reject<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }

    fn visit_map<A: MapAccess<'de>>(self, _map: A) -> Result<(), A::Error> {
        Err(de::Error::custom(self.0))
    }
}

/// Pass 0: walks a document as the parser replays it (aliases expanded, nothing kept) and
/// fails once it has met more nodes than the budget left.
struct CountNodes<'a>(&'a Cell<usize>);

impl CountNodes<'_> {
    fn spend<E: de::Error>(&self) -> Result<(), E> {
        match self.0.get().checked_sub(1) {
            Some(left) => {
                self.0.set(left);
                Ok(())
            }
            None => Err(E::custom(format_args!(
                "the file expands to too many YAML nodes through aliases (more than its size \
                 plus {ALIAS_EXPANSION_ALLOWANCE}); refusing it as an alias bomb"
            ))),
        }
    }
}

impl<'de> DeserializeSeed<'de> for CountNodes<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for CountNodes<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML node")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.spend()
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.spend()
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.spend()
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.spend()
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.spend()
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.spend()
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.spend()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.spend()?;
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.spend()?;
        while seq.next_element_seed(CountNodes(self.0))?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.spend()?;
        while map.next_key_seed(CountNodes(self.0))?.is_some() {
            map.next_value_seed(CountNodes(self.0))?;
        }
        Ok(())
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        // A tagged node (`!tag value`): the tag, then the value.
        use de::VariantAccess;
        self.spend()?;
        let ((), variant) = data.variant_seed(CountNodes(self.0))?;
        variant.newtype_variant_seed(CountNodes(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_location_only_strips_a_real_suffix() {
        assert_eq!(strip_location("bad at line 3 column 7", 3, 7), "bad");
        assert_eq!(
            strip_location(
                "no key at line 9 column 4, while parsing at line 7 column 5",
                9,
                4
            ),
            "no key, while parsing at line 7 column 5"
        );
        assert_eq!(
            strip_location("look at line of sight", 1, 1),
            "look at line of sight"
        );
    }

    #[test]
    fn error_display_has_file_line_column() {
        let e = ManifestError::Invalid {
            path: "deploy/x.yaml".into(),
            document: 2,
            line: Some(14),
            column: Some(3),
            message: "oops".into(),
        };
        assert_eq!(e.to_string(), "deploy/x.yaml:14:3: oops");
        let e = ManifestError::Invalid {
            path: "x.yaml".into(),
            document: 1,
            line: None,
            column: None,
            message: "oops".into(),
        };
        assert_eq!(e.to_string(), "x.yaml: oops");
    }
}
