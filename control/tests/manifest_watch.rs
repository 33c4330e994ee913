//! The manifest source watches its files with inotify: a changed, added, removed or
//! renamed-over file reaches the maps (through the real compile and reconcile steps, into the
//! loaded datapath's maps: needs root); a malformed file is an error and the last good state
//! stays programmed; a directory removed and created again is watched again.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use xlb::compile::Compiler;
use xlb::compile::plan::NodeIdentity;
use xlb::datapath::loader::{self, LoadOptions, Loaded};
use xlb::datapath::reconcile::Reconciler;
use xlb::source::{ConfigSource, ManifestSource, Poll};

/// A scratch directory removed on drop (also when the test fails).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("xlb-watch-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A LoadBalancer Service `name` at VIP 198.19.0.`vip`, port `port`, with one endpoint.
fn service(name: &str, vip: u8, port: u16) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  type: LoadBalancer
  ports: [{{name: http, port: {port}, targetPort: 8080}}]
status:
  loadBalancer:
    ingress: [{{ip: 198.19.0.{vip}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-1
  namespace: default
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints: [{{addresses: [198.18.1.{vip}], nodeName: node-a}}]
"
    )
}

const NODE: &str = "apiVersion: v1
kind: Node
metadata: {name: node-a}
status: {addresses: [{type: InternalIP, address: 198.18.0.2}]}
";

/// Writes a file the way editors and `kubectl`-style tools do: a hidden temporary file
/// renamed over the old one.
fn rename_over(path: &Path, text: &str) {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_str().unwrap()
    ));
    fs::write(&tmp, text).unwrap();
    fs::rename(&tmp, path).unwrap();
}

/// The manifest source, the compiler and a reconciler on the real maps: `xlb run`'s path.
struct Node {
    source: ManifestSource,
    compiler: Compiler,
    rec: Reconciler,
    _loaded: aya::Ebpf,
}

impl Node {
    fn new(path: &Path) -> Node {
        let Loaded { ebpf, maps, .. } = loader::load(&LoadOptions {
            pin_dir: None,
            conntrack_size: 1024,
        })
        .expect("loading the datapath (needs root)");
        Node {
            source: ManifestSource::new(path.to_path_buf()),
            compiler: Compiler::new(),
            rec: Reconciler::adopt(maps).unwrap(),
            _loaded: ebpf,
        }
    }

    /// Polls until the source reports something: programs a change, returns an error's text.
    fn next(&mut self) -> Result<(), String> {
        let node = NodeIdentity {
            node_name: "node-a".into(),
            table_size: 31,
            extra_local_addrs: vec![],
        };
        for _ in 0..40 {
            match self.source.poll(Duration::from_millis(250)) {
                Poll::Unchanged => continue,
                Poll::Failed(e) => return Err(e),
                Poll::Changed { changes, .. } => {
                    self.compiler.update(self.source.state(), &node, &changes);
                    self.rec
                        .apply_changed(self.compiler.plan(), self.compiler.last_touched())
                        .unwrap();
                    return Ok(());
                }
            }
        }
        panic!("the source reported nothing in 10 s");
    }

    /// Programmed Service ports and their frontend ports, as the maps' snapshot has them.
    fn programmed(&self) -> BTreeSet<(String, u16)> {
        self.rec
            .snapshot()
            .services
            .iter()
            .flat_map(|s| s.frontends.iter().map(|f| (s.name.clone(), f.port)))
            .collect()
    }
}

fn set(items: &[(&str, u16)]) -> BTreeSet<(String, u16)> {
    items.iter().map(|(n, p)| (n.to_string(), *p)).collect()
}

#[test]
fn changed_added_removed_and_renamed_over_files_reach_the_maps() {
    let tmp = TempDir::new("dir");
    let dir = &tmp.0;
    fs::write(dir.join("00-node.yaml"), NODE).unwrap();
    fs::write(dir.join("a.yaml"), service("a", 1, 80)).unwrap();
    fs::write(dir.join("b.yaml"), service("b", 2, 80)).unwrap();
    let mut node = Node::new(dir);
    node.next().unwrap();
    assert!(node.source.watching(), "inotify is available here");
    let a = "default/a:http/TCP";
    let b = "default/b:http/TCP";
    assert_eq!(node.programmed(), set(&[(a, 80), (b, 80)]));

    // Edited in place.
    fs::write(dir.join("a.yaml"), service("a", 1, 81)).unwrap();
    node.next().unwrap();
    assert_eq!(node.programmed(), set(&[(a, 81), (b, 80)]));

    // Renamed over (an editor's save); the hidden temporary file is not read.
    rename_over(&dir.join("b.yaml"), &service("b", 2, 82));
    node.next().unwrap();
    assert_eq!(node.programmed(), set(&[(a, 81), (b, 82)]));

    // A new file, and a file that is no manifest (ignored).
    fs::write(dir.join("notes.txt"), "not a manifest").unwrap();
    fs::write(dir.join("c.yml"), service("c", 3, 80)).unwrap();
    node.next().unwrap();
    let c = "default/c:http/TCP";
    assert_eq!(node.programmed(), set(&[(a, 81), (b, 82), (c, 80)]));

    // A file removed.
    fs::remove_file(dir.join("b.yaml")).unwrap();
    node.next().unwrap();
    assert_eq!(node.programmed(), set(&[(a, 81), (c, 80)]));

    // A malformed file: an error naming it, and the last good state stays in the maps; a later
    // change of another file still fails while it is malformed.
    rename_over(&dir.join("a.yaml"), "kind: Service\nspec: [\n");
    let err = node.next().unwrap_err();
    assert!(err.contains("a.yaml:"), "{err}");
    assert_eq!(node.programmed(), set(&[(a, 81), (c, 80)]));
    assert_eq!(
        node.source.state().service_count(),
        2,
        "the state is the last good one"
    );
    fs::write(dir.join("c.yml"), service("c", 3, 83)).unwrap();
    assert!(node.next().is_err());
    assert_eq!(node.programmed(), set(&[(a, 81), (c, 80)]));

    // Fixed: both edits apply.
    rename_over(&dir.join("a.yaml"), &service("a", 1, 84));
    node.next().unwrap();
    assert_eq!(node.programmed(), set(&[(a, 84), (c, 83)]));

    // A Service defined in two files: the later file (by name) wins, and removing it brings
    // back the earlier definition.
    fs::write(dir.join("z.yaml"), service("a", 1, 85)).unwrap();
    node.next().unwrap();
    assert_eq!(node.programmed(), set(&[(a, 85), (c, 83)]));
    fs::remove_file(dir.join("z.yaml")).unwrap();
    node.next().unwrap();
    assert_eq!(node.programmed(), set(&[(a, 84), (c, 83)]));
}

#[test]
fn a_removed_directory_keeps_the_state_and_is_watched_again_when_back() {
    let tmp = TempDir::new("gone");
    let dir = tmp.0.join("manifests");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("00-node.yaml"), NODE).unwrap();
    fs::write(dir.join("a.yaml"), service("a", 1, 80)).unwrap();
    let mut node = Node::new(&dir);
    node.next().unwrap();
    let a = "default/a:http/TCP";
    assert_eq!(node.programmed(), set(&[(a, 80)]));

    fs::remove_dir_all(&dir).unwrap();
    // Removing the files one by one may first leave an empty directory (an error too: an empty
    // set never withdraws every Service); at the end the directory is gone.
    let err = node.next().unwrap_err();
    assert!(err.contains("manifests"), "{err}");
    assert_eq!(node.programmed(), set(&[(a, 80)]));

    // Back, with a change: watched again and programmed.
    let staging = tmp.0.join("staging");
    fs::create_dir_all(&staging).unwrap();
    fs::write(staging.join("00-node.yaml"), NODE).unwrap();
    fs::write(staging.join("a.yaml"), service("a", 1, 81)).unwrap();
    fs::rename(&staging, &dir).unwrap();
    loop {
        match node.next() {
            Ok(()) => break,
            // Errors of the removal not yet reported.
            Err(e) => assert!(e.contains("manifests"), "{e}"),
        }
    }
    assert_eq!(node.programmed(), set(&[(a, 81)]));
    assert!(node.source.watching());
    fs::write(dir.join("a.yaml"), service("a", 1, 82)).unwrap();
    node.next().unwrap();
    assert_eq!(node.programmed(), set(&[(a, 82)]));
}

#[test]
fn a_single_file_is_followed_through_renames_over_it() {
    let tmp = TempDir::new("file");
    let file = tmp.0.join("cluster.yaml");
    fs::write(&file, format!("{NODE}---\n{}", service("a", 1, 80))).unwrap();
    // Other files next to it are none of its business.
    fs::write(tmp.0.join("other.yaml"), service("b", 2, 80)).unwrap();
    let mut node = Node::new(&file);
    node.next().unwrap();
    let a = "default/a:http/TCP";
    assert_eq!(node.programmed(), set(&[(a, 80)]));
    rename_over(&file, &format!("{NODE}---\n{}", service("a", 1, 81)));
    node.next().unwrap();
    assert_eq!(node.programmed(), set(&[(a, 81)]));
    rename_over(&file, &format!("{NODE}---\n{}", service("a", 1, 82)));
    node.next().unwrap();
    assert_eq!(node.programmed(), set(&[(a, 82)]));
}
