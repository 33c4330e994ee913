//! Map capacities are set at load time (`--max-services`, `--max-frontends`,
//! `--max-backends`), a configuration over a capacity is refused with an error naming the flag
//! while the last good state stays in the maps, and a restart keeps the pinned maps' sizes.
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::maps::IterableMap as _;
use lb_common::maps::{Backend, FrontendKey, FrontendValue};
use xlb::compile::Compiler;
use xlb::compile::plan::NodeIdentity;
use xlb::datapath::capacity::Capacity;
use xlb::datapath::loader::{self, LoadOptions};
use xlb::datapath::reconcile::Reconciler;
use xlb::source::{ConfigSource, ManifestSource, Poll};

/// A scratch directory removed on drop (also when the test fails).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("xlb-capacity-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, (i / 250) as u8, (i % 250) as u8 + 1)
}

/// Service `s{i}`: a LoadBalancer VIP:80 → `endpoints` pods of its own on node-a.
fn service_yaml(i: usize, endpoints: usize) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: default}}\n\
         spec:\n  type: LoadBalancer\n  ports: [{{name: http, port: 80, targetPort: 8080, protocol: TCP}}]\n\
         status: {{loadBalancer: {{ingress: [{{ip: {}}}]}}}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: s{i}-a, namespace: default, labels: {{kubernetes.io/service-name: s{i}}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n",
        vip(i)
    );
    for e in 0..endpoints {
        let k = i * 64 + e;
        y.push_str(&format!(
            "- {{addresses: [\"198.18.{}.{}\"], nodeName: node-a}}\n",
            k / 256 % 256,
            k % 256
        ));
    }
    y
}

fn write_service(dir: &Path, i: usize, endpoints: usize) {
    std::fs::write(dir.join(format!("s{i}.yaml")), service_yaml(i, endpoints)).unwrap();
}

fn node() -> NodeIdentity {
    NodeIdentity {
        node_name: "node-a".into(),
        table_size: 251,
        extra_local_addrs: vec![],
    }
}

/// Polls the source until it reports a change and compiles it as `xlb run` does.
fn next_plan(source: &mut ManifestSource, compiler: &mut Compiler) {
    for _ in 0..100 {
        match source.poll(Duration::from_millis(10)) {
            Poll::Changed { changes, .. } => {
                compiler.update(source.state(), &node(), &changes);
                return;
            }
            Poll::Unchanged => {}
            Poll::Failed(e) => panic!("manifests: {e}"),
        }
    }
    panic!("the manifest source saw no change");
}

/// Everything user space wrote that a packet reads: frontends, backends, and the table each
/// Service id points at (by inner map id).
#[derive(Debug, PartialEq)]
struct Programmed {
    frontends: BTreeMap<(u32, u16), FrontendValue>,
    backends: BTreeMap<u32, (u32, u16)>,
    tables: BTreeMap<u32, u32>,
}

fn programmed(rec: &Reconciler) -> Programmed {
    let mut frontends = BTreeMap::new();
    for kv in rec.maps.frontends.iter() {
        let (k, v): (FrontendKey, FrontendValue) = kv.unwrap();
        frontends.insert((k.addr, k.port), v);
    }
    let mut backends = BTreeMap::new();
    for id in 0..rec.maps.backends.len() {
        let b: Backend = rec.maps.backends.get(&id, 0).unwrap();
        if b.flags != 0 {
            backends.insert(id, (b.addr, b.port));
        }
    }
    let mut tables = BTreeMap::new();
    for v in frontends.values() {
        let inner = rec.maps.maglev.get(&v.service_id, 0).expect("a table");
        tables.insert(v.service_id, inner.map().info().unwrap().id());
    }
    Programmed {
        frontends,
        backends,
        tables,
    }
}

fn frontend_of(i: usize) -> (u32, u16) {
    (u32::from_ne_bytes(vip(i).octets()), 80u16.to_be())
}

#[test]
fn a_configuration_over_capacity_names_the_flag_and_keeps_the_last_good_state() {
    let dir = TempDir::new("over");
    let want = Capacity {
        services: 2,
        frontends: 4,
        backends: 8,
    };
    let loaded = loader::load_sized(
        &LoadOptions {
            pin_dir: None,
            conntrack_size: 1024,
        },
        &want,
    )
    .expect("loading the datapath (needs root)");
    assert_eq!(loaded.capacity, want, "the maps have the sizes asked for");
    let mut rec = Reconciler::adopt(loaded.maps).unwrap();
    assert_eq!(rec.capacity(), want);
    assert_eq!(rec.maps.backends.len(), 8);

    // The last good state: two Services of three pods each.
    write_service(&dir.0, 0, 3);
    write_service(&dir.0, 1, 3);
    let mut source = ManifestSource::new(dir.0.clone());
    let mut compiler = Compiler::new();
    next_plan(&mut source, &mut compiler);
    rec.apply_changed(compiler.plan(), compiler.last_touched())
        .expect("two Services fit");
    let good = programmed(&rec);
    assert_eq!(good.frontends.len(), 2);
    assert_eq!(good.backends.len(), 6);
    assert!(
        good.frontends.contains_key(&frontend_of(0))
            && good.frontends.contains_key(&frontend_of(1))
    );
    let snapshot = rec.snapshot().clone();

    // A third Service port does not fit --max-services 2.
    write_service(&dir.0, 2, 1);
    next_plan(&mut source, &mut compiler);
    let e = rec
        .check_capacity(compiler.plan(), compiler.last_touched())
        .unwrap_err();
    assert!(format!("{e:#}").contains("--max-services"), "{e:#}");
    let e = rec
        .apply_changed(compiler.plan(), compiler.last_touched())
        .unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("3 Service ports") && msg.contains("--max-services"),
        "{msg}"
    );
    assert_eq!(programmed(&rec), good, "the refused plan changed the maps");
    assert_eq!(rec.snapshot(), &snapshot);

    // Instead of the third Service, one more pod for s1: 9 backends do not fit
    // --max-backends 8. A full compile, as after a restart.
    std::fs::remove_file(dir.0.join("s2.yaml")).unwrap();
    write_service(&dir.0, 1, 6);
    next_plan(&mut source, &mut compiler);
    let full = xlb::compile::compile(source.state(), &node());
    let e = rec.apply(&full).unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("9 backends") && msg.contains("--max-backends"),
        "{msg}"
    );
    assert_eq!(programmed(&rec), good, "the refused plan changed the maps");

    // Back within the capacities: applied.
    write_service(&dir.0, 1, 5);
    next_plan(&mut source, &mut compiler);
    rec.apply_changed(compiler.plan(), compiler.last_touched())
        .expect("eight backends fit");
    let now = programmed(&rec);
    assert_eq!(now.backends.len(), 8);
    assert_eq!(now.frontends.len(), 2);
}

#[test]
fn frontends_over_capacity_name_their_flag() {
    let want = Capacity {
        services: 16,
        frontends: 2,
        backends: 64,
    };
    let loaded = loader::load_sized(
        &LoadOptions {
            pin_dir: None,
            conntrack_size: 1024,
        },
        &want,
    )
    .expect("loading the datapath (needs root)");
    let mut rec = Reconciler::adopt(loaded.maps).unwrap();
    let text: String = (0..3).map(|i| service_yaml(i, 1) + "---\n").collect();
    let loaded = xlb::source::manifest::load_str(Path::new("t.yaml"), &text).unwrap();
    let plan = xlb::compile::compile(&loaded.state, &node());
    let msg = format!("{:#}", rec.apply(&plan).unwrap_err());
    assert!(msg.contains("--max-frontends"), "{msg}");
    assert!(programmed(&rec).frontends.is_empty());
}

/// A private pin directory on bpffs, removed on drop.
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = loader::remove_pins(&self.0);
    }
}

#[test]
fn a_restart_with_other_sizes_keeps_the_pinned_ones_and_says_so() {
    let dir = PinDir(PathBuf::from(format!(
        "/sys/fs/bpf/xlb-test-{}-capacity",
        std::process::id()
    )));
    let _ = loader::remove_pins(&dir.0);
    let opts = LoadOptions {
        pin_dir: Some(dir.0.clone()),
        conntrack_size: 1024,
    };
    let first = Capacity {
        services: 100,
        frontends: 200,
        backends: 300,
    };
    let loaded = loader::load_sized(&opts, &first).expect("loading the datapath (needs root)");
    assert_eq!(loaded.capacity, first);
    drop(loaded);

    let second = Capacity {
        services: 1000,
        ..first
    };
    let loaded = loader::load_sized(&opts, &second).expect("reloading");
    assert_eq!(loaded.capacity, first, "pinned maps keep their size");
    let differences = second.differences(&loaded.capacity);
    assert_eq!(differences.len(), 1, "{differences:?}");
    assert!(
        differences[0].contains("--max-services is 1000") && differences[0].contains("100 entries"),
        "{}",
        differences[0]
    );
    let rec = Reconciler::adopt(loaded.maps).unwrap();
    assert_eq!(rec.capacity(), first, "the checks use the size in force");
}
