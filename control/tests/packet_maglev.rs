//! The kernel's Maglev pick (BPF_PROG_TEST_RUN) against the user-space model, for tables of
//! every size the ladder gives and both slot widths: the pod a SYN is DNATed to is the one
//! `ServicePlan::maglev_table` names for its flow hash.
mod common;

use std::net::Ipv4Addr;

use common::*;
use lb_common::maglev::table_size_for;
use lb_common::maps::{MAGLEV_MAX_TABLE_SIZE, Reason, maglev_narrow};
use xlb::compile::plan::{
    BackendPlan, BackendState, DatapathPlan, FrontendKind, FrontendPlan, Protocol, ServicePlan,
    ServicePortKey,
};
use xlb::datapath::maglev_map;

/// A Service `name` at `vip`:80/TCP with `n` ready pods on this node, its size by the ladder
/// under `cap`.
fn service(name: &str, vip: Ipv4Addr, n: u32, cap: u32) -> (ServicePortKey, ServicePlan) {
    let backends: Vec<BackendPlan> = (0..n)
        .map(|i| BackendPlan {
            // 198.18.64.0 and up: distinct, sorted as generated.
            addr: Ipv4Addr::from(0xC612_4000 + i),
            port: 8080,
            node_name: Some("node-a".into()),
            node_addr: Some(Ipv4Addr::from(NODE)),
            local: true,
            weight: 1,
            state: BackendState::Ready,
        })
        .collect();
    let mut svc = ServicePlan {
        frontends: vec![FrontendPlan {
            addr: Some(vip),
            port: 80,
            kind: FrontendKind::LoadBalancer,
            source_ranges_apply: false,
        }],
        backends,
        table_size: 0,
        source_ranges: vec![],
        local_only: false,
        affinity_timeout: None,
    };
    svc.table_size = table_size_for(&svc.maglev_backends(), cap);
    let key = ServicePortKey {
        namespace: "default".into(),
        name: name.into(),
        port_name: "http".into(),
        protocol: Protocol::Tcp,
    };
    (key, svc)
}

/// Programs `services` (next to the fixture's own) and checks, for `flows` SYNs to each, that
/// the kernel picks the model's pod.
fn kernel_follows_the_model(services: &[(u32, u32)], flows: u16) -> Fixture {
    let mut f = Fixture::new(&manifest(&PODS, &[]));
    let mut plan: DatapathPlan = f.plan.clone();
    let vips: Vec<Ipv4Addr> = (0..services.len())
        .map(|i| Ipv4Addr::new(198, 19, 1, 1 + i as u8))
        .collect();
    for (i, &(n, cap)) in services.iter().enumerate() {
        let (k, s) = service(&format!("svc{i}"), vips[i], n, cap);
        plan.services.insert(k, s);
    }
    f.rec.apply(&plan).expect("apply");
    f.plan = plan;
    for (i, &(n, _)) in services.iter().enumerate() {
        let name = format!("default/svc{i}:http/TCP");
        let svc = f
            .plan
            .services
            .iter()
            .find(|(k, _)| k.to_string() == name)
            .unwrap()
            .1
            .clone();
        // The live table is the size and width the plan and the layout say.
        let sid = f
            .rec
            .snapshot()
            .services
            .iter()
            .find(|s| s.name == name)
            .unwrap()
            .service_id;
        let inner = f.rec.maps.maglev.get(&sid, 0).unwrap();
        let live = maglev_map::read_decoded(&inner).unwrap();
        assert_eq!(live.m, svc.table_size, "{name}");
        // User space wrote the plan's table: every slot's id is the id of the backend the
        // model names there.
        let snap = f
            .rec
            .snapshot()
            .services
            .iter()
            .find(|s| s.name == name)
            .unwrap()
            .clone();
        let ids: Vec<u32> = snap.backends.iter().map(|b| b.backend_id).collect();
        assert_eq!(live.ids, ids, "{name}");
        let table = svc.maglev_table().unwrap();
        assert_eq!(
            live.slot_ids(),
            table.map_slots(|b| { ids[table.backends().iter().position(|x| x == b).unwrap()] }),
            "{name}"
        );
        let mut pods = std::collections::BTreeSet::new();
        for sport in 20_000..20_000 + flows {
            let frame = tcp(CLIENT, sport, vips[i], 80, true);
            let (act, out) = f.xdp(&frame);
            assert_eq!(act, XDP_PASS, "{name} sport {sport}");
            let want = f.predict(&name, CLIENT, sport, vips[i].octets(), 80, 6);
            let h = lb_common::hash::flow_hash(
                u32::from(Ipv4Addr::from(CLIENT)),
                u32::from(vips[i]),
                sport,
                80,
                6,
            );
            let got_id = snap
                .backends
                .iter()
                .find(|b| (b.addr, b.port) == dst(&out))
                .map(|b| b.backend_id);
            assert_eq!(
                dst(&out),
                want,
                "{name} (M={}) sport {sport}: slot {}, table id {:?}, kernel's id {got_id:?}, header {:?}",
                live.m,
                h % live.m,
                live.id_at(h % live.m),
                maglev_map::read(&inner).unwrap()[..8].to_vec()
            );
            pods.insert(want.0);
        }
        assert!(
            pods.len() as u32 >= n.min(flows as u32 / 4),
            "{name}: {} pods",
            pods.len()
        );
    }
    f
}

/// Sizes 127 to 16381 and the cap, 16-bit slots.
#[test]
fn kernel_pick_matches_the_model_at_every_size() {
    let cases = [
        (1, 16_381),
        (2, 16_381),
        (4, 16_381),
        (8, 16_381),
        (15, 16_381),
        (30, 16_381),
        (60, 16_381),
        (120, 16_381),
        (1_000, MAGLEV_MAX_TABLE_SIZE),
        (120, 251),
        (3, 7),
    ];
    let sizes: Vec<u32> = cases
        .iter()
        .map(|&(n, cap)| service("x", Ipv4Addr::LOCALHOST, n, cap).1.table_size)
        .collect();
    assert_eq!(
        sizes,
        [
            127, 251, 509, 1_021, 2_039, 4_093, 8_191, 16_381, 131_071, 251, 7
        ]
    );
    let f = kernel_follows_the_model(&cases, 96);
    assert_eq!(f.counter(Reason::DropNoTable), 0);
    assert_eq!(f.counter(Reason::DropNoBackend), 0);
}

/// A Service with more backends than a 16-bit slot can name gets 32-bit slots, and the kernel
/// still picks the model's pod.
#[test]
fn kernel_pick_matches_the_model_with_wide_slots() {
    let n = 65_600;
    assert!(!maglev_narrow(n));
    let f = kernel_follows_the_model(&[(n, MAGLEV_MAX_TABLE_SIZE), (3, 16_381)], 256);
    assert_eq!(f.counter(Reason::DropNoTable), 0);
}

/// The Service port `name` of `plan`.
fn port_mut<'p>(plan: &'p mut DatapathPlan, name: &str) -> &'p mut ServicePlan {
    plan.services
        .iter_mut()
        .find(|(k, _)| k.to_string() == name)
        .map(|(_, s)| s)
        .unwrap()
}

/// The words of `name`'s inner map and that map's kernel id.
fn live_table(f: &Fixture, name: &str) -> (Vec<u32>, u32) {
    let sid = f
        .rec
        .snapshot()
        .services
        .iter()
        .find(|s| s.name == name)
        .unwrap()
        .service_id;
    let inner = f.rec.maps.maglev.get(&sid, 0).unwrap();
    let id = aya::maps::IterableMap::map(&inner).info().unwrap().id();
    (maglev_map::read(&inner).unwrap(), id)
}

/// A changed table whose size M and layout stay is rewritten in place (the same inner map),
/// and the result is byte for byte the table a swap programs: two datapaths follow the same
/// changes, one patching and one swapping every changed table. The changes: a pod replaced
/// by one that sorts elsewhere (every ordinal after it moves), a pod draining (weight 0), a pod
/// gone (the list shrinks), one added (it grows). Then a size change (a step of the ladder)
/// still swaps. After each step the kernel picks the model's pod.
#[test]
fn an_in_place_update_programs_the_table_a_swap_programs() {
    let name = "default/web:http/TCP";
    let vip = Ipv4Addr::new(198, 19, 2, 1);
    let mut patching = Fixture::new(&manifest(&PODS, &[]));
    let mut swapping = Fixture::new(&manifest(&PODS, &[]));
    swapping.rec.set_patch_tables(false);
    let mut plan = patching.plan.clone();
    let (k, s) = service("web", vip, 10, 16_381);
    assert_eq!(s.table_size, 1_021);
    plan.services.insert(k, s);

    let pod = |i: u32| Ipv4Addr::from(0xC612_4000 + i);
    type Step = (&'static str, fn(&mut ServicePlan, &dyn Fn(u32) -> Ipv4Addr));
    let steps: [Step; 6] = [
        ("first", |_, _| {}),
        ("a pod replaced", |s, pod| s.backends[3].addr = pod(200)),
        ("a pod draining", |s, _| s.backends[5].weight = 0),
        ("a pod gone", |s, _| {
            s.backends.remove(7);
        }),
        ("a pod added", |s, pod| {
            let mut b = s.backends[0].clone();
            b.addr = pod(100);
            s.backends.push(b);
        }),
        ("a step of the ladder", |s, pod| {
            for i in 300..305 {
                let mut b = s.backends[0].clone();
                b.addr = pod(i);
                s.backends.push(b);
            }
        }),
    ];
    let mut last_id = None;
    for (i, (what, change)) in steps.iter().enumerate() {
        let svc = port_mut(&mut plan, name);
        change(svc, &pod);
        // As the compiler lists them: canonical (address, port) order.
        svc.backends.sort_by_key(|b| (b.addr, b.port));
        svc.table_size = table_size_for(&svc.maglev_backends(), 16_381);
        let m = svc.table_size;
        let mut reports = vec![];
        for f in [&mut patching, &mut swapping] {
            reports.push(f.rec.apply(&plan).expect(what));
            f.plan = plan.clone();
        }
        let (patched, swapped) = (live_table(&patching, name), live_table(&swapping, name));
        assert_eq!(patched.0, swapped.0, "{what}: the two tables differ");
        assert_eq!(patched.0[0], m, "{what}");
        let resized = i == steps.len() - 1;
        if i == 0 || resized {
            assert_eq!(m, if resized { 2_039 } else { 1_021 }, "{what}");
            assert_eq!(
                (reports[0].tables_swapped, reports[0].tables_patched),
                (1, 0)
            );
            assert_ne!(Some(patched.1), last_id, "{what}: not a new inner map");
        } else {
            assert_eq!(m, 1_021, "{what}");
            assert_eq!(
                (reports[0].tables_swapped, reports[0].tables_patched),
                (0, 1),
                "{what}: {:?}",
                reports[0]
            );
            assert_eq!(Some(patched.1), last_id, "{what}: not the same inner map");
        }
        assert_eq!(
            (reports[1].tables_swapped, reports[1].tables_patched),
            (1, 0)
        );
        last_id = Some(patched.1);
        // New ports each step: a port used before would follow its conntrack entry.
        let first_port = 30_000 + 100 * i as u16;
        for sport in first_port..first_port + 64 {
            let (act, out) = patching.xdp(&tcp(CLIENT, sport, vip, 80, true));
            assert_eq!(act, XDP_PASS, "{what}: sport {sport}");
            let want = patching.predict(name, CLIENT, sport, vip.octets(), 80, 6);
            assert_eq!(dst(&out), want, "{what}: sport {sport}");
        }
    }
    assert_eq!(patching.counter(Reason::DropNoBackend), 0);
}
