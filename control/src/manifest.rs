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
//! Loading is all or nothing: any unreadable file, YAML syntax error or malformed object fails
//! the whole load with a [`ManifestError`] that names the file, the line and (where known) the
//! column. The caller (the run loop) must then keep serving the **last good** state and report
//! the error; it must not apply a partial or empty state. For the same reason a directory with no
//! manifest file in it is an error, not an empty cluster: a config volume that is briefly empty
//! must not withdraw every Service. (An empty file, or `kind: List` with `items: []`, is the way
//! to say "no objects".)
//!
//! To notice changes cheaply, poll [`fingerprint`] and reload when it differs from the one taken
//! *before* the last load (taking it before loading means a change racing with the load is seen
//! on the next poll, never lost). [`load_cached`] reloads re-parsing only the files whose
//! [`FileStamp`] changed: parsing is what a reload of 10,000 Services spends its seconds on.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs;
use std::io;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_yaml::Value;

use crate::cluster::{ClusterState, ObjectKey};

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
}

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

/// Paths, sizes, modification times and inodes of the manifest files: equal fingerprints mean
/// (for all practical purposes) equal input. Costs one `readdir` and one `stat` per file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fingerprint(pub Vec<FileStamp>);

/// The current [`Fingerprint`] of `path` (a file or a directory, as for [`load`]).
pub fn fingerprint(path: &Path) -> io::Result<Fingerprint> {
    let mut stamps = Vec::new();
    for file in manifest_files(path)? {
        stamps.push(stamp(file)?);
    }
    Ok(Fingerprint(stamps))
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

/// Files parsed by earlier [`load_cached`] calls, by stamp.
#[derive(Debug, Default)]
pub struct ManifestCache {
    files: HashMap<FileStamp, Arc<ParsedFile>>,
    /// Files the last successful load had to parse.
    parsed: usize,
}

impl ManifestCache {
    pub fn new() -> ManifestCache {
        ManifestCache::default()
    }

    /// Files held (those of the last successful load).
    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// How many files the last successful load parsed (the others came from the cache).
    pub fn last_parsed(&self) -> usize {
        self.parsed
    }
}

/// [`load`], re-parsing only the files whose stamp (path, size, modification time, inode)
/// differs from the last successful call with `cache`; the others contribute the objects parsed
/// then. The result (state, warnings, errors) is the one [`load`] gives for the same files. A
/// file changed between its stat and its read is parsed under the older stamp, so the next
/// [`fingerprint`] differs and it is parsed again: a cached parse is never newer than its stamp
/// says, at worst older, which only costs a re-parse.
pub fn load_cached(
    path: &Path,
    cache: &mut ManifestCache,
) -> Result<LoadedManifests, ManifestError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ManifestError::Io { path, source }
    };
    let files = manifest_files(path).map_err(io_err(path))?;
    if files.is_empty() {
        return Err(ManifestError::NoFiles {
            path: path.to_path_buf(),
        });
    }
    let mut parsed = Vec::with_capacity(files.len());
    let mut read = 0;
    for file in &files {
        let stamp = stamp(file.clone()).map_err(io_err(file))?;
        let entry = match cache.files.get(&stamp) {
            Some(p) => Arc::clone(p),
            None => {
                let text = fs::read_to_string(file).map_err(io_err(file))?;
                read += 1;
                Arc::new(parse_file(file, &text)?)
            }
        };
        parsed.push((stamp, entry));
    }
    let mut loader = Loader::default();
    for (_, file) in &parsed {
        loader.merge(file);
    }
    // Only a complete load replaces the cache: a failed one keeps what the last good one read.
    cache.files = parsed.into_iter().collect();
    cache.parsed = read;
    Ok(loader.finish(files))
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

#[derive(Debug, Clone)]
enum Object {
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    Node(Box<Node>),
}

/// What one file holds, parsed: its objects in order with where each was defined, and the
/// warnings about documents skipped.
#[derive(Debug)]
struct ParsedFile {
    objects: Vec<(Object, String)>,
    warnings: Vec<String>,
}

#[derive(Default)]
struct Loader {
    state: ClusterState,
    warnings: Vec<String>,
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
        for (object, origin) in &file.objects {
            self.insert(object.clone(), origin);
        }
    }

    fn insert(&mut self, object: Object, origin: &str) {
        // Names were checked while deserialising, so the upserts cannot fail.
        let (kind, key) = match &object {
            Object::Service(o) => ("Service", ObjectKey::of(&o.metadata)),
            Object::EndpointSlice(o) => ("EndpointSlice", ObjectKey::of(&o.metadata)),
            Object::Node(o) => (
                "Node",
                o.metadata.name.clone().map(|n| ObjectKey::new("", n)),
            ),
        };
        let Some(key) = key else { return };
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
        let _ = match object {
            Object::Service(o) => self.state.upsert_service(*o).map(drop),
            Object::EndpointSlice(o) => self.state.upsert_endpoint_slice(*o).map(drop),
            Object::Node(o) => self.state.upsert_node(*o).map(drop),
        };
    }

    fn finish(self, files: Vec<PathBuf>) -> LoadedManifests {
        LoadedManifests {
            state: self.state,
            files,
            warnings: self.warnings,
        }
    }
}

/// Parses one file: syntax, then each object xlb reads, with positions in errors.
fn parse_file(path: &Path, text: &str) -> Result<ParsedFile, ManifestError> {
    let mut warnings = Vec::new();
    let mut objects = Vec::new();
    let invalid = |document: usize, err: serde_yaml::Error| {
        let location = err.location();
        let message = match &location {
            Some(l) => strip_location(&err.to_string(), l.line(), l.column()),
            None => err.to_string(),
        };
        ManifestError::Invalid {
            path: path.to_path_buf(),
            document,
            line: location.as_ref().map(|l| l.line()),
            column: location.as_ref().map(|l| l.column()),
            message,
        }
    };

    // Pass 1: syntax, and what each document is (kind, list items). Errors here are YAML
    // syntax errors, which carry their position.
    let mut shapes = Vec::new();
    for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(document).map_err(|e| invalid(i + 1, e))?;
        let origin = format!("{}: document {}", path.display(), i + 1);
        shapes.push(shape_of(&value, &origin, None, &mut warnings));
    }

    // Pass 2: deserialise the objects xlb reads straight from the parser, so that a type
    // error (or a missing name) is reported at its line and column.
    for (i, (document, shape)) in serde_yaml::Deserializer::from_str(text)
        .zip(&shapes)
        .enumerate()
    {
        let mut found = Vec::new();
        ShapeSeed {
            shape,
            out: &mut found,
        }
        .deserialize(document)
        .map_err(|e| invalid(i + 1, e))?;
        let origin = format!("{}: document {}", path.display(), i + 1);
        objects.extend(found.into_iter().map(|o| (o, origin.clone())));
    }
    Ok(ParsedFile { objects, warnings })
}

/// serde_yaml puts " at line L column C" into its messages; the position goes in front instead.
/// Only the suffix naming the reported position is removed (libyaml may name a second position,
/// the start of the enclosing construct, which stays).
fn strip_location(message: &str, line: usize, column: usize) -> String {
    message.replacen(&format!(" at line {line} column {column}"), "", 1)
}

fn str_field<'a>(map: &'a serde_yaml::Mapping, key: &str) -> Result<Option<&'a str>, String> {
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

/// Pass 2: deserialises one document or list item according to its [`Shape`].
struct ShapeSeed<'a> {
    shape: &'a Shape,
    out: &'a mut Vec<Object>,
}

impl<'de> DeserializeSeed<'de> for ShapeSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        match self.shape {
            Shape::Empty | Shape::Skip => {
                IgnoredAny::deserialize(deserializer)?;
            }
            Shape::Service => {
                let o = deserializer.deserialize_map(Named::<Service>(PhantomData))?;
                self.out.push(Object::Service(Box::new(o)));
            }
            Shape::EndpointSlice => {
                let o = deserializer.deserialize_map(Named::<EndpointSlice>(PhantomData))?;
                self.out.push(Object::EndpointSlice(Box::new(o)));
            }
            Shape::Node => {
                let o = deserializer.deserialize_map(Named::<Node>(PhantomData))?;
                self.out.push(Object::Node(Box::new(o)));
            }
            Shape::List(items) => deserializer.deserialize_map(ListVisitor {
                items,
                out: self.out,
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
    out: &'a mut Vec<Object>,
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
                    out: &mut *self.out,
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
    out: &'a mut Vec<Object>,
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
                    out: &mut *self.out,
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
