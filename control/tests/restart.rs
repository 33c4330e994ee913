//! Restarting `xlb run`: the maps are pinned, a new process adopts them, rewrites nothing that
//! did not change, and established flows keep their backend.
mod common;

use std::{net::Ipv4Addr, path::PathBuf};

use common::*;
use lb_common::maps::Reason;
use xlb::{
    datapath::loader::{self, LoadOptions, Loaded},
    datapath::reconcile::{DRAIN_GRACE_NS, Reconciler},
    observe::census,
};

/// A private pin directory on bpffs, removed on drop (also when the test fails).
struct PinDir(PathBuf);

impl PinDir {
    fn new(tag: &str) -> Self {
        let p = PathBuf::from(format!("/sys/fs/bpf/xlb-test-{}-{tag}", std::process::id()));
        let _ = loader::remove_pins(&p);
        PinDir(p)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = loader::remove_pins(&self.0);
    }
}

fn load_pinned(dir: &PinDir) -> Loaded {
    loader::load(&LoadOptions {
        pin_dir: Some(dir.0.clone()),
        conntrack_size: 4096,
    })
    .expect("load")
}

#[test]
fn restart_adopts_maps_and_keeps_flows() {
    let dir = PinDir::new("adopt");
    let yaml = manifest(&PODS, &[]);
    let plan = plan_for(&yaml);

    // First process: program and open a flow.
    let Loaded { ebpf, maps, .. } = load_pinned(&dir);
    let mut rec = Reconciler::adopt(maps).unwrap();
    let first = rec.apply(&plan).unwrap();
    assert!(first.tables_swapped > 0 && first.frontends_written > 0);
    let mut f = Fixture {
        ebpf,
        rec,
        plan: plan.clone(),
    };
    let (_, out) = f.xdp(&tcp(CLIENT, 40100, VIP, 80, true));
    let pod = dst(&out);
    drop(f);

    // Second process: same pins. Adopting and applying the same plan writes nothing.
    let Loaded { ebpf, maps, .. } = load_pinned(&dir);
    let mut rec = Reconciler::adopt(maps).unwrap();
    let again = rec.apply(&plan).unwrap();
    assert!(
        again.is_empty(),
        "unchanged plan rewrote something: {again:?}"
    );
    let mut f = Fixture {
        ebpf,
        rec,
        plan: plan.clone(),
    };
    assert_eq!(f.counter(Reason::CtNew), 1, "counters survive the restart");

    // The flow opened before the restart keeps its pod even after its pod leaves the Service.
    let remaining: Vec<[u8; 4]> = PODS
        .iter()
        .copied()
        .filter(|p| Ipv4Addr::from(*p) != pod.0)
        .collect();
    f.reprogram(&manifest(&remaining, &[]));
    let (_, out) = f.xdp(&tcp(CLIENT, 40100, VIP, 80, false));
    assert_eq!(dst(&out), pod);
    assert_eq!(f.counter(Reason::CtHit), 1);
}

#[test]
fn drained_backend_is_released_once_its_flows_are_gone() {
    let mut f = Fixture::new(&manifest(&PODS, &[]));
    let sport = (41000..42000u16)
        .find(|&p| {
            f.predict("default/web:http/TCP", CLIENT, p, VIP, 80, 6).0 == Ipv4Addr::from(PODS[1])
        })
        .unwrap();
    f.xdp(&tcp(CLIENT, sport, VIP, 80, true));
    let before = f.rec.snapshot().clone();
    let id = before
        .services
        .iter()
        .find(|s| s.name == "default/web:http/TCP")
        .unwrap()
        .backends[1]
        .backend_id;

    f.reprogram(&manifest(&[PODS[0], PODS[2]], &[]));
    assert_ne!(
        f.rec.maps.backends.get(&id, 0).unwrap().flags,
        0,
        "kept while a flow uses it"
    );

    // The flow ends (conntrack entry removed, as the idle sweep would); the next pass releases it,
    // with the pod's UDP backend, which no flow used: an apply releases nothing itself (that
    // would walk the connection table on every change), the sweep does.
    let keys: Vec<_> = f.rec.maps.conntrack.keys().map(|k| k.unwrap()).collect();
    for k in keys {
        f.rec.maps.conntrack.remove(&k).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_nanos(DRAIN_GRACE_NS + 50_000_000));
    let c = census::take(&f.rec.maps, None).unwrap();
    let (released, draining) = f
        .rec
        .release_unreferenced(&c.referenced, c.started_ns)
        .unwrap();
    assert_eq!((released, draining), (2, 0));
    assert_eq!(f.rec.maps.backends.get(&id, 0).unwrap().flags, 0);
}

/// The run loop releases drained backends against the connection census, never a walk of
/// its own: only a census whose walk began after the backend left the plan releases it, and
/// only once none of the flows it read points at it.
#[test]
fn the_census_releases_a_drained_backend_once_a_later_walk_finds_no_flow() {
    let mut f = Fixture::new(&manifest(&PODS, &[]));
    let sport = (41000..42000u16)
        .find(|&p| {
            f.predict("default/web:http/TCP", CLIENT, p, VIP, 80, 6).0 == Ipv4Addr::from(PODS[1])
        })
        .unwrap();
    // A census of the empty table, from before the backend left the plan.
    let early = census::take(&f.rec.maps, None).unwrap();
    assert!(early.referenced.is_empty());
    f.xdp(&tcp(CLIENT, sport, VIP, 80, true));
    let id = f
        .rec
        .snapshot()
        .services
        .iter()
        .find(|s| s.name == "default/web:http/TCP")
        .unwrap()
        .backends[1]
        .backend_id;
    f.reprogram(&manifest(&[PODS[0], PODS[2]], &[]));
    // The pod's TCP and UDP backends drain. The early census saw no flow to them, but flows
    // could have been made after its walk passed: it releases nothing.
    assert_eq!(
        f.rec
            .release_unreferenced(&early.referenced, early.started_ns)
            .unwrap(),
        (0, 2)
    );

    std::thread::sleep(std::time::Duration::from_nanos(DRAIN_GRACE_NS + 50_000_000));
    let c = census::take(&f.rec.maps, None).unwrap();
    assert!(c.referenced.contains(&id));
    // The UDP backend, which no flow uses, goes; the TCP one is kept for its flow.
    assert_eq!(
        f.rec
            .release_unreferenced(&c.referenced, c.started_ns)
            .unwrap(),
        (1, 1)
    );
    assert_ne!(f.rec.maps.backends.get(&id, 0).unwrap().flags, 0);
    let (_, out) = f.xdp(&tcp(CLIENT, sport, VIP, 80, false));
    assert_eq!(
        dst(&out).0,
        Ipv4Addr::from(PODS[1]),
        "the flow keeps its pod"
    );

    let keys: Vec<_> = f.rec.maps.conntrack.keys().map(|k| k.unwrap()).collect();
    for k in keys {
        f.rec.maps.conntrack.remove(&k).unwrap();
    }
    let c = census::take(&f.rec.maps, None).unwrap();
    assert_eq!(
        f.rec
            .release_unreferenced(&c.referenced, c.started_ns)
            .unwrap(),
        (1, 0)
    );
    assert_eq!(f.rec.maps.backends.get(&id, 0).unwrap().flags, 0);
    assert_eq!(
        f.rec
            .release_unreferenced(&c.referenced, c.started_ns)
            .unwrap(),
        (0, 0)
    );
}

#[test]
fn bad_input_keeps_the_programmed_state() {
    let mut f = Fixture::new(&manifest(&PODS, &[]));
    let plan_before = f.plan.clone();
    // A manifest that fails to parse never reaches the reconciler: the caller keeps the last
    // good plan. Check the error names the line.
    let err = xlb::source::manifest::load_str(
        std::path::Path::new("bad.yaml"),
        "kind: Service\napiVersion: v1\nmetadata: {name: x}\nspec:\n  ports: [{port: http}]\n",
    )
    .unwrap_err();
    assert!(err.to_string().starts_with("bad.yaml:5:"), "{err}");
    let (_, out) = f.xdp(&tcp(CLIENT, 40200, VIP, 80, true));
    assert_eq!(
        dst(&out),
        f.predict("default/web:http/TCP", CLIENT, 40200, VIP, 80, 6)
    );
    assert_eq!(f.plan, plan_before);
}
