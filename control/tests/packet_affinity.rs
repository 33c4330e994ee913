//! `sessionAffinity: ClientIP` in the datapath: a client's new flows follow its previous one
//! while the timeout runs and the backend still takes new flows.
mod common;

use std::net::Ipv4Addr;

use common::*;
use lb_common::maps::Reason;

const WEB_HTTP: &str = "default/web:http/TCP";

fn with_affinity(yaml: &str, timeout: u32) -> xlb::compile::plan::DatapathPlan {
    let mut plan = plan_for(yaml);
    for (k, svc) in plan.services.iter_mut() {
        if k.to_string() == WEB_HTTP {
            svc.affinity_timeout = Some(timeout);
        }
    }
    plan
}

fn apply(f: &mut Fixture, plan: xlb::compile::plan::DatapathPlan) {
    f.rec.apply(&plan).expect("apply");
    f.plan = plan;
}

/// Two client ports whose flows Maglev sends to different pods.
fn ports_on_different_pods(f: &Fixture) -> (u16, u16) {
    let first = f.predict(WEB_HTTP, CLIENT, 40000, VIP, 80, 6).0;
    let other = (40001..41000u16)
        .find(|&p| f.predict(WEB_HTTP, CLIENT, p, VIP, 80, 6).0 != first)
        .unwrap();
    (40000, other)
}

#[test]
fn new_flows_follow_the_clients_previous_backend() {
    let yaml = manifest(&PODS, &[]);
    let mut f = Fixture::new(&yaml);
    apply(&mut f, with_affinity(&yaml, 3600));
    let (a, b) = ports_on_different_pods(&f);
    let (_, out) = f.xdp(&tcp(CLIENT, a, VIP, 80, true));
    let pod = dst(&out).0;
    assert_eq!(pod, f.predict(WEB_HTTP, CLIENT, a, VIP, 80, 6).0);
    let (_, out) = f.xdp(&tcp(CLIENT, b, VIP, 80, true));
    assert_eq!(dst(&out).0, pod, "second flow follows the first");
    assert_eq!(f.counter(Reason::AffinityHit), 1);
    assert_checksums(&out);

    // Another client is not affected.
    let other = [198, 18, 0, 11];
    let (_, out) = f.xdp(&tcp(other, b, VIP, 80, true));
    assert_eq!(dst(&out).0, f.predict(WEB_HTTP, other, b, VIP, 80, 6).0);

    // Without affinity the same second flow goes where Maglev says.
    let mut g = Fixture::new(&yaml);
    g.xdp(&tcp(CLIENT, a, VIP, 80, true));
    let (_, out) = g.xdp(&tcp(CLIENT, b, VIP, 80, true));
    assert_ne!(dst(&out).0, pod);
    assert_eq!(g.counter(Reason::AffinityHit), 0);
}

#[test]
fn affinity_never_sends_new_flows_to_a_removed_backend() {
    let yaml = manifest(&PODS, &[]);
    let mut f = Fixture::new(&yaml);
    apply(&mut f, with_affinity(&yaml, 3600));
    let (_, out) = f.xdp(&tcp(CLIENT, 40000, VIP, 80, true));
    let pod = dst(&out).0;
    let remaining: Vec<[u8; 4]> = PODS
        .iter()
        .copied()
        .filter(|p| Ipv4Addr::from(*p) != pod)
        .collect();
    apply(&mut f, with_affinity(&manifest(&remaining, &[]), 3600));
    for p in 40001..40040u16 {
        let (_, out) = f.xdp(&tcp(CLIENT, p, VIP, 80, true));
        assert_ne!(dst(&out).0, pod, "port {p}");
    }
    // The client is now affine to one of the remaining pods.
    let (_, out) = f.xdp(&tcp(CLIENT, 41000, VIP, 80, true));
    let (_, again) = f.xdp(&tcp(CLIENT, 41001, VIP, 80, true));
    assert_eq!(dst(&out).0, dst(&again).0);
}

#[test]
fn affinity_expires_after_its_timeout() {
    let yaml = manifest(&PODS, &[]);
    let mut f = Fixture::new(&yaml);
    apply(&mut f, with_affinity(&yaml, 1));
    let (a, b) = ports_on_different_pods(&f);
    f.xdp(&tcp(CLIENT, a, VIP, 80, true));
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let (_, out) = f.xdp(&tcp(CLIENT, b, VIP, 80, true));
    assert_eq!(dst(&out).0, f.predict(WEB_HTTP, CLIENT, b, VIP, 80, 6).0);
    assert_eq!(f.counter(Reason::AffinityHit), 0);
}
