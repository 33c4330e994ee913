//! Manifest loading: kubectl-style lists, multi-document files, directories, skipped kinds,
//! errors that point at the right file, line and column, objects the API server would refuse
//! (rejected whole, the last good version kept), and alias bombs.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use xlb::source::cluster::ClusterState;
use xlb::source::manifest::{self, ManifestError};
use xlb::source::{ConfigSource, ManifestSource, Poll};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn names<'a>(
    it: impl Iterator<Item = (&'a xlb::source::cluster::ObjectKey, impl Sized)>,
) -> Vec<String> {
    it.map(|(k, _)| k.to_string()).collect()
}

/// A scratch directory removed on drop (also when the test fails).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("xlb-manifest-{tag}-{}", std::process::id()));
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

#[test]
fn directory_of_kubectl_output() {
    let dir = fixture("nginx");
    let loaded = manifest::load(&dir).unwrap();
    // Sorted by name; notes.txt (extension) and .editor-backup.yaml (dotfile) are not read.
    let files: Vec<_> = loaded
        .files
        .iter()
        .map(|f| f.file_name().unwrap().to_str().unwrap())
        .collect();
    assert_eq!(
        files,
        [
            "10-service.yaml",
            "20-endpointslices.yaml",
            "30-nodes.json",
            "40-deployment.yml"
        ]
    );
    assert_eq!(names(loaded.state.services()), ["default/nginx"]);
    assert_eq!(
        names(loaded.state.endpoint_slices()),
        ["default/nginx-8xq2v"]
    );
    let nodes: Vec<_> = loaded.state.nodes().map(|(n, _)| n.as_str()).collect();
    assert_eq!(nodes, ["node-a", "node-c"]);
    let slices: Vec<_> = loaded
        .state
        .endpoint_slices_for("default", "nginx")
        .collect();
    assert_eq!(slices.len(), 1);
    assert_eq!(slices[0].endpoints.as_ref().unwrap().len(), 3);

    // The Deployment is skipped with a warning naming file and document, not an error.
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    let w = &loaded.warnings[0];
    assert!(
        w.contains("40-deployment.yml: document 1: skipped apps/v1 Deployment default/nginx"),
        "{w}"
    );

    // The Service came through with every field kubectl printed.
    let svc = loaded.state.service("default", "nginx").unwrap();
    let spec = svc.spec.as_ref().unwrap();
    assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
    assert_eq!(spec.ports.as_ref().unwrap()[0].node_port, Some(30080));
    let ingress = &svc
        .status
        .as_ref()
        .unwrap()
        .load_balancer
        .as_ref()
        .unwrap()
        .ingress
        .as_ref()
        .unwrap()[0];
    assert_eq!(ingress.ip.as_deref(), Some("198.19.255.1"));
}

#[test]
fn single_file_of_a_directory() {
    let loaded = manifest::load(&fixture("nginx/10-service.yaml")).unwrap();
    assert_eq!(names(loaded.state.services()), ["default/nginx"]);
    assert_eq!(loaded.state.endpoint_slice_count(), 0);
    assert!(loaded.warnings.is_empty());
}

#[test]
fn json_list_file() {
    let loaded = manifest::load(&fixture("nginx/30-nodes.json")).unwrap();
    assert_eq!(loaded.state.node_count(), 2);
    let node = loaded.state.node("node-c").unwrap();
    assert_eq!(
        node.status.as_ref().unwrap().addresses.as_ref().unwrap()[0].address,
        "198.18.0.13"
    );
}

#[test]
fn multi_document_file() {
    let loaded = manifest::load(&fixture("multi-doc.yaml")).unwrap();
    assert_eq!(names(loaded.state.services()), ["lab/dns", "lab/web"]);
    assert_eq!(
        names(loaded.state.endpoint_slices()),
        ["lab/dns-1", "lab/web-1"]
    );
    assert_eq!(loaded.state.node_count(), 1);
    // Leading comments + `---` do not make an extra document; the trailing `---` is harmless.
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    assert!(loaded.warnings[0].contains("document 3: skipped v1 ConfigMap lab/lab-settings"));
}

#[test]
fn typed_lists_imply_their_item_kind() {
    // What the raw API returns for a list call: items without apiVersion/kind.
    let text = "\
apiVersion: v1
kind: ServiceList
metadata:
  resourceVersion: \"100\"
items:
- metadata:
    name: a
    namespace: default
  spec:
    ports:
    - port: 80
- metadata:
    name: b
  spec: {}
";
    let loaded = manifest::load_str(Path::new("list.yaml"), text).unwrap();
    assert_eq!(names(loaded.state.services()), ["default/a", "default/b"]);
    assert!(loaded.warnings.is_empty());

    let text =
        "apiVersion: apps/v1\nkind: DeploymentList\nitems:\n- metadata: {name: x, namespace: y}\n";
    let loaded = manifest::load_str(Path::new("deploys.yaml"), text).unwrap();
    assert!(loaded.state.is_empty());
    assert_eq!(loaded.warnings.len(), 1);
    assert!(
        loaded.warnings[0].contains("document 1, items[0]: skipped apps/v1 Deployment y/x"),
        "{:?}",
        loaded.warnings
    );
}

#[test]
fn only_unknown_kinds_and_empty_input_are_not_errors() {
    let text = "apiVersion: v1\nkind: Endpoints\nmetadata: {name: nginx}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p}\n";
    let loaded = manifest::load_str(Path::new("x.yaml"), text).unwrap();
    assert!(loaded.state.is_empty());
    assert_eq!(loaded.warnings.len(), 2);
    assert!(loaded.warnings[0].contains("x.yaml: document 1: skipped v1 Endpoints nginx"));

    // Kinds are matched with their API group: a v1beta1 EndpointSlice is not read.
    let text = "apiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\nmetadata: {name: s}\naddressType: IPv4\n";
    let loaded = manifest::load_str(Path::new("x.yaml"), text).unwrap();
    assert!(loaded.state.is_empty());
    assert_eq!(loaded.warnings.len(), 1);

    for text in [
        "",
        "# only a comment\n",
        "---\n",
        "apiVersion: v1\nkind: List\nitems: []\n",
    ] {
        let loaded = manifest::load_str(Path::new("empty.yaml"), text).unwrap();
        assert!(loaded.state.is_empty(), "{text:?}");
        assert!(loaded.warnings.is_empty(), "{text:?}");
    }
}

#[test]
fn missing_namespace_means_default_and_later_definitions_win() {
    let text = "\
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {type: NodePort, ports: [{port: 80, nodePort: 30001}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {type: NodePort, ports: [{port: 80, nodePort: 30002}]}
";
    let loaded = manifest::load_str(Path::new("dup.yaml"), text).unwrap();
    assert_eq!(names(loaded.state.services()), ["default/web"]);
    let svc = loaded.state.service("default", "web").unwrap();
    assert_eq!(
        svc.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].node_port,
        Some(30002)
    );
    assert_eq!(loaded.warnings.len(), 1);
    assert!(
        loaded.warnings[0].contains("dup.yaml: document 2: Service default/web is defined again")
            && loaded.warnings[0].contains("dup.yaml: document 1"),
        "{:?}",
        loaded.warnings
    );
}

/// Loads a malformed fixture and returns (document, line, column, message, display).
fn invalid(name: &str) -> (usize, usize, usize, String, String) {
    let path = fixture(&format!("malformed/{name}"));
    match manifest::load(&path) {
        Err(e @ ManifestError::Invalid { .. }) => {
            let display = e.to_string();
            assert!(
                display.starts_with(&format!("{}:", path.display())),
                "{display}"
            );
            assert_eq!(e.path(), path);
            let ManifestError::Invalid {
                document,
                line,
                column,
                message,
                ..
            } = e
            else {
                unreachable!()
            };
            (
                document,
                line.expect("line"),
                column.expect("column"),
                message,
                display,
            )
        }
        other => panic!("{name}: expected an Invalid error, got {other:?}"),
    }
}

#[test]
fn yaml_syntax_error_has_its_line() {
    let (document, line, column, message, display) = invalid("bad-syntax.yaml");
    assert_eq!((document, line, column), (1, 9, 4));
    assert!(message.contains("did not find expected key"), "{message}");
    assert!(display.ends_with("bad-syntax.yaml:9:4: did not find expected key, while parsing a block mapping at line 7 column 3"), "{display}");
}

#[test]
fn wrong_field_type_points_at_the_field() {
    // Second document; `port: http` is on line 15, the value in column 11.
    let (document, line, column, message, display) = invalid("bad-port-type.yaml");
    assert_eq!((document, line, column), (2, 15, 11));
    assert_eq!(
        message,
        "spec.ports[0].port: invalid type: string \"http\", expected i32"
    );
    assert!(display.ends_with(
        "bad-port-type.yaml:15:11: spec.ports[0].port: invalid type: string \"http\", expected i32"
    ));
}

#[test]
fn wrong_field_type_inside_a_list_item() {
    let (document, line, column, message, _) = invalid("bad-in-list.yaml");
    assert_eq!((document, line, column), (1, 24, 14));
    assert!(
        message.starts_with("items[1].endpoints[0].conditions.ready: invalid type"),
        "{message}"
    );
}

#[test]
fn missing_kind_points_at_the_document() {
    // The first document is fine; the second starts on line 9.
    let (document, line, column, message, _) = invalid("missing-kind.yaml");
    assert_eq!((document, line, column), (2, 9, 1));
    assert_eq!(message, "missing kind");
}

#[test]
fn missing_api_version_in_json() {
    let (document, line, column, message, _) = invalid("missing-api-version.json");
    assert_eq!((document, line, column), (1, 1, 1));
    assert_eq!(message, "missing apiVersion");
}

#[test]
fn missing_name_points_at_the_list_item() {
    let (document, line, column, message, _) = invalid("missing-name.yaml");
    assert_eq!((document, line, column), (1, 8, 3));
    assert_eq!(message, "items[1]: EndpointSlice has no metadata.name");
}

#[test]
fn a_bad_file_fails_the_whole_directory_load() {
    let tmp = TempDir::new("badfile");
    fs::copy(fixture("nginx/10-service.yaml"), tmp.0.join("a.yaml")).unwrap();
    fs::copy(
        fixture("malformed/bad-port-type.yaml"),
        tmp.0.join("b.yaml"),
    )
    .unwrap();
    let err = manifest::load(&tmp.0).unwrap_err();
    assert_eq!(err.path(), tmp.0.join("b.yaml"));
    assert_eq!((err.line(), err.column()), (Some(15), Some(11)));
    assert!(
        err.to_string()
            .starts_with(&format!("{}:15:11: ", tmp.0.join("b.yaml").display()))
    );
}

#[test]
fn other_malformed_documents() {
    let cases: &[(&str, (usize, usize, usize), &str)] = &[
        (
            "- just\n- a list\n",
            (1, 1, 1),
            "expected a Kubernetes object",
        ),
        (
            "apiVersion: v1\nkind: 7\nmetadata: {name: x}\n",
            (1, 1, 1),
            "kind must be a string",
        ),
        (
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: [a, b]\n",
            (1, 4, 9),
            "metadata.name: invalid type: sequence",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n---\napiVersion: v1\nkind: Service\nspec: {}\n",
            (2, 5, 1),
            "Service has no metadata.name",
        ),
        (
            "apiVersion: v1\nkind: List\nitems:\n- kind: Service\n  metadata: {name: s}\n",
            (1, 4, 3),
            "missing apiVersion",
        ),
        (
            "apiVersion: v1\nkind: List\nitems: 5\n",
            (1, 1, 1),
            "items must be a list",
        ),
        // Duplicate keys are reported at the start of their mapping.
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nkind: Service\n",
            (1, 1, 1),
            "duplicate entry",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec:\n  ports:\n  - {port: 80, targetPort: {x: 1}}\n",
            (1, 6, 28),
            "spec.ports[0].targetPort",
        ),
    ];
    for (text, (document, line, column), needle) in cases {
        let err = manifest::load_str(Path::new("t.yaml"), text).unwrap_err();
        let ManifestError::Invalid {
            document: d,
            line: l,
            column: c,
            message,
            ..
        } = &err
        else {
            panic!("{err:?}")
        };
        assert_eq!(
            (*d, l.unwrap(), c.unwrap()),
            (*document, *line, *column),
            "{text:?}: {err}"
        );
        assert!(message.contains(needle), "{text:?}: {message}");
    }
}

#[test]
fn missing_paths_and_empty_directories_are_errors() {
    let err = manifest::load(&fixture("does-not-exist")).unwrap_err();
    assert!(matches!(err, ManifestError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("does-not-exist"));

    let tmp = TempDir::new("empty");
    fs::write(tmp.0.join("README.md"), "not a manifest").unwrap();
    let err = manifest::load(&tmp.0).unwrap_err();
    assert!(matches!(err, ManifestError::NoFiles { .. }), "{err:?}");
    assert!(err.to_string().contains("no *.yaml, *.yml or *.json files"));
}

/// A Service and its EndpointSlice with `n` endpoints, as one file's text.
fn service_text(name: &str, n: u8) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
         spec:\n  type: LoadBalancer\n  ports: [{{name: http, port: 80, targetPort: 8080, protocol: TCP}}]\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {name}-a, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n"
    );
    for i in 0..n {
        y.push_str(&format!("- {{addresses: [\"198.18.1.{}\"]}}\n", 10 + i));
    }
    y
}

#[test]
fn set_update_parses_only_changed_files_and_equals_a_full_load() {
    let tmp = TempDir::new("set");
    let dir = &tmp.0;
    for (name, n) in [("a", 1), ("b", 2), ("c", 3)] {
        fs::write(dir.join(format!("{name}.yaml")), service_text(name, n)).unwrap();
    }
    let mut set = manifest::ManifestSet::new();
    let mut state = ClusterState::new();
    let check = |set: &mut manifest::ManifestSet, state: &mut ClusterState, parsed: usize| {
        let update = set.update(dir, None, state).unwrap();
        let full = manifest::load(dir).unwrap();
        assert!(
            *state == full.state,
            "the set's state differs from a full load"
        );
        assert_eq!(update.parsed, parsed, "files parsed");
        assert_eq!(set.len(), full.files.len());
        update
    };
    check(&mut set, &mut state, 3);
    // Nothing changed: nothing parsed.
    check(&mut set, &mut state, 0);
    // One file changes (size), one is replaced by a rename with the same size (new inode).
    fs::write(dir.join("b.yaml"), service_text("b", 4)).unwrap();
    fs::write(
        dir.join(".tmp"),
        service_text("c", 3).replace("198.18.1.10", "198.18.1.90"),
    )
    .unwrap();
    fs::rename(dir.join(".tmp"), dir.join("c.yaml")).unwrap();
    check(&mut set, &mut state, 2);
    // A new file, then a removed one.
    fs::write(dir.join("d.yaml"), service_text("d", 1)).unwrap();
    check(&mut set, &mut state, 1);
    fs::remove_file(dir.join("a.yaml")).unwrap();
    check(&mut set, &mut state, 0);
    // A broken file fails the update and leaves the set as the last good update left it.
    fs::write(dir.join("b.yaml"), "kind: [unclosed\n").unwrap();
    let before = state.clone();
    let err = set.update(dir, None, &mut state).unwrap_err();
    assert!(err.to_string().contains("b.yaml"), "{err}");
    assert!(state == before);
    assert_eq!(set.len(), 3);
    fs::write(dir.join("b.yaml"), service_text("b", 2)).unwrap();
    check(&mut set, &mut state, 1);
    // A later file redefining an object wins and is warned about.
    fs::write(dir.join("e.yaml"), service_text("d", 2)).unwrap();
    let update = check(&mut set, &mut state, 1);
    assert!(
        update.warnings.iter().any(|w| w.contains("defined again")),
        "{:?}",
        update.warnings
    );
    // The winning file gone: the definition of the unchanged earlier file applies again,
    // read again from that file (the set keeps no objects): one file parsed, none changed.
    fs::remove_file(dir.join("e.yaml")).unwrap();
    check(&mut set, &mut state, 1);
    assert_eq!(
        state
            .endpoint_slice("default", "d-a")
            .unwrap()
            .endpoints
            .as_ref()
            .map(Vec::len),
        Some(1)
    );
}

// ---- objects the API server would refuse ----

const WEB_AND_API: &str = "\
apiVersion: v1
kind: Service
metadata: {name: api, namespace: default}
spec:
  type: NodePort
  ports: [{name: http, port: 80, nodePort: 30080}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  type: LoadBalancer
  ports: [{name: http, port: 80, nodePort: 30081}]
status:
  loadBalancer:
    ingress: [{ip: 198.19.255.1}]
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Node
  metadata: {name: node-a}
  status: {addresses: [{type: InternalIP, address: 198.18.0.11}]}
- apiVersion: v1
  kind: Node
  metadata: {name: node-b}
  status: {addresses: [{type: InternalIP, address: 198.18.0.12}]}
";

#[test]
fn an_invalid_object_is_rejected_whole_with_its_position() {
    let text = WEB_AND_API
        .replace("port: 80, nodePort: 30081", "port: 70000, nodePort: 30081")
        .replace("address: 198.18.0.12", "address: 198.18.0.300");
    let loaded = manifest::load_str(Path::new("all.yaml"), &text).unwrap();
    // The valid objects are there; the invalid ones are not, not even in part.
    assert_eq!(names(loaded.state.services()), ["default/api"]);
    let nodes: Vec<_> = loaded.state.nodes().map(|(n, _)| n.as_str()).collect();
    assert_eq!(nodes, ["node-a"]);
    let shown: Vec<String> = loaded.rejected.iter().map(|r| r.to_string()).collect();
    assert_eq!(
        shown,
        [
            "all.yaml:8:1: Service default/web is invalid: spec.ports[0].port: Invalid value: \
             70000: must be between 1 and 65535, inclusive",
            "all.yaml:25:3: Node node-b is invalid: items[1]: status.addresses[0].address: \
             Invalid value: \"198.18.0.300\": must be a valid IP address, (e.g. 10.9.8.7 or \
             2001:db8::ffff)",
        ]
    );
    assert_eq!(loaded.rejected[1].document, 3);
    // Every reason of an object is given.
    let text = WEB_AND_API.replace(
        "ingress: [{ip: 198.19.255.1}]",
        "ingress: [{ip: 999.1.2.3}, {ip: 198.19.255.2, ipMode: Tunnel}]",
    );
    let loaded = manifest::load_str(Path::new("all.yaml"), &text).unwrap();
    assert_eq!(loaded.rejected.len(), 1);
    let r = &loaded.rejected[0];
    assert_eq!((r.line, r.column), (Some(8), Some(1)));
    assert_eq!(
        r.message,
        "status.loadBalancer.ingress[0].ip: Invalid value: \"999.1.2.3\": must be a valid IP \
         address, (e.g. 10.9.8.7 or 2001:db8::ffff); status.loadBalancer.ingress[1].ipMode: \
         Unsupported value: \"Tunnel\": supported values: \"Proxy\", \"VIP\""
    );
}

#[test]
fn only_the_first_rejections_of_a_file_are_located() {
    let mut text = String::from("apiVersion: v1\nkind: List\nitems:\n");
    let n = manifest::POSITIONED_REJECTIONS + 4;
    for i in 0..n {
        text.push_str(&format!(
            "- {{apiVersion: v1, kind: Service, metadata: {{name: s{i}}}, spec: {{ports: [{{port: 0}}]}}}}\n"
        ));
    }
    let loaded = manifest::load_str(Path::new("many.yaml"), &text).unwrap();
    assert!(loaded.state.is_empty());
    assert_eq!(loaded.rejected.len(), n);
    for (i, r) in loaded.rejected.iter().enumerate() {
        if i < manifest::POSITIONED_REJECTIONS {
            assert_eq!(r.line, Some(4 + i), "{r}");
            assert!(
                r.message
                    .starts_with(&format!("items[{i}]: spec.ports[0].port")),
                "{r}"
            );
        } else {
            assert_eq!(r.line, None, "{r}");
            assert!(
                r.to_string()
                    .starts_with("many.yaml: document 1: Service default/s"),
                "{r}"
            );
        }
    }
}

/// Replaces a file by a rename (a new inode), as editors and ConfigMap updates do.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text).unwrap();
    fs::rename(&tmp, path).unwrap();
}

fn service_port(source: &impl ConfigSource, name: &str) -> i32 {
    source
        .state()
        .service("default", name)
        .expect("service")
        .spec
        .as_ref()
        .unwrap()
        .ports
        .as_ref()
        .unwrap()[0]
        .port
}

fn changed(poll: Poll) -> Vec<String> {
    match poll {
        Poll::Changed { warnings, .. } => warnings,
        other => panic!("expected a change, got {other:?}"),
    }
}

/// The next poll that is not `Unchanged`: the source learns of file changes from inotify
/// events, which arrive on their own thread.
fn next(source: &mut ManifestSource) -> Poll {
    for _ in 0..20 {
        match source.poll(Duration::from_millis(500)) {
            Poll::Unchanged => continue,
            other => return other,
        }
    }
    panic!("no change seen in 10 s");
}

#[test]
fn a_bad_edit_keeps_the_last_good_version_and_the_rest_of_the_file_applies() {
    let tmp = TempDir::new("lastgood");
    let file = tmp.0.join("all.yaml");
    fs::write(&file, WEB_AND_API).unwrap();
    let mut source = ManifestSource::new(tmp.0.clone());
    let warnings = changed(next(&mut source));
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(service_port(&source, "web"), 80);

    // One edit of the file: web gets port 70000, api moves to 81, node-b changes address.
    replace_file(
        &file,
        &WEB_AND_API
            .replace("port: 80, nodePort: 30081", "port: 70000, nodePort: 30081")
            .replace("port: 80, nodePort: 30080", "port: 81, nodePort: 30080")
            .replace("198.18.0.12", "198.18.0.22"),
    );
    let warnings = changed(next(&mut source));
    let shown = format!(
        "{}:8:1: Service default/web is invalid: spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive; the last good version stays programmed",
        file.display()
    );
    assert_eq!(warnings, std::slice::from_ref(&shown));
    assert_eq!(service_port(&source, "web"), 80, "the last good web stays");
    let web = source.state().service("default", "web").unwrap();
    assert_eq!(
        web.status
            .as_ref()
            .unwrap()
            .load_balancer
            .as_ref()
            .unwrap()
            .ingress
            .as_ref()
            .unwrap()[0]
            .ip
            .as_deref(),
        Some("198.19.255.1")
    );
    assert_eq!(
        service_port(&source, "api"),
        81,
        "the other Service updates"
    );
    let node_b = source.state().node("node-b").unwrap();
    assert_eq!(
        node_b.status.as_ref().unwrap().addresses.as_ref().unwrap()[0].address,
        "198.18.0.22"
    );

    // Another file changes (to no objects): nothing to program, the rejection (of a file that
    // did not change) is not reported again, and web still stays.
    fs::write(tmp.0.join("b.yaml"), "").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(matches!(
        source.poll(Duration::from_millis(500)),
        Poll::Unchanged
    ));
    assert_eq!(service_port(&source, "web"), 80);

    // A new object that is invalid is not created at all.
    fs::write(
        tmp.0.join("b.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: new}\nspec: {type: NodePort, ports: [{port: 80, nodePort: 80}]}\n",
    )
    .unwrap();
    let warnings = changed(next(&mut source));
    assert!(
        warnings.iter().any(|w| w.contains(
            "b.yaml:1:1: Service default/new is invalid: spec.ports[0].nodePort: Invalid value: 80"
        ) && w.ends_with("; it is not programmed")),
        "{warnings:?}"
    );
    assert!(source.state().service("default", "new").is_none());

    // Fixing the edit applies it.
    replace_file(
        &file,
        &WEB_AND_API.replace("port: 80, nodePort: 30081", "port: 8080, nodePort: 30081"),
    );
    fs::remove_file(tmp.0.join("b.yaml")).unwrap();
    let warnings = changed(next(&mut source));
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(service_port(&source, "web"), 8080);
    assert_eq!(service_port(&source, "api"), 80);
}

#[test]
fn a_billion_laughs_document_is_an_error() {
    // Nine levels of ten aliases: 10^9 strings if expanded.
    let mut text = String::from(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: lol}\ndata:\n  a0: &a0 lol\n",
    );
    for level in 1..10 {
        let refs = vec![format!("*a{}", level - 1); 10].join(", ");
        text.push_str(&format!("  a{level}: &a{level} [{refs}]\n"));
    }
    let err = manifest::load_str(Path::new("lol.yaml"), &text).unwrap_err();
    assert!(matches!(err, ManifestError::Invalid { .. }), "{err:?}");
    // The parser's own limit on alias replays stops this one.
    assert!(
        err.to_string().starts_with("lol.yaml:")
            && err.to_string().contains("repetition limit exceeded"),
        "{err}"
    );

    // Few aliases, each to a big node: no alias-count limit sees it, the node budget does.
    let mut text = String::from(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: wide}\ndata:\n  big: &big [",
    );
    text.push_str(&vec!["x"; 3000].join(","));
    text.push_str("]\n  copies: [");
    text.push_str(&vec!["*big"; 3000].join(","));
    text.push_str("]\n");
    let err = manifest::load_str(Path::new("wide.yaml"), &text).unwrap_err();
    assert!(
        err.to_string().contains("refusing it as an alias bomb"),
        "{err}"
    );
    assert_eq!(err.path(), Path::new("wide.yaml"));
    assert!(err.line().is_some(), "{err}");

    // Ordinary use of anchors is fine.
    let text = "\
apiVersion: v1
kind: Service
metadata: {name: web, labels: &labels {app: web, tier: front}}
spec:
  type: NodePort
  selector: *labels
  ports: [{name: http, port: 80, nodePort: 30080}]
";
    let loaded = manifest::load_str(Path::new("anchors.yaml"), text).unwrap();
    assert_eq!(names(loaded.state.services()), ["default/web"]);
    let selector = loaded
        .state
        .service("default", "web")
        .unwrap()
        .spec
        .as_ref()
        .unwrap()
        .selector
        .clone();
    assert_eq!(
        selector.unwrap().get("tier").map(String::as_str),
        Some("front")
    );
}
