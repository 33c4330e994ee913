//! The connection census and its readers, on the real programs with private maps: the census
//! counts the active flows real packets made; `/metrics` and `xlb services` show the census,
//! never a walk of their own, however large the table; `xlb conntrack list --limit N` prints at
//! most N flows and stops walking there.
mod common;

use std::{collections::BTreeMap, net::Ipv4Addr, time::Duration};

use common::*;
use lb_common::maps::{CtValue, FlowKey, IPPROTO_TCP, IPPROTO_UDP, flow_idle_ns};
use xlb::{
    cli::args::{FlowFilterArgs, OutputFormat},
    cli::conntrack::{FlowFilter, FlowWriter, list_flows},
    cli::inspect::services_output,
    datapath::conntrack,
    datapath::loader::LoadOptions,
    datapath::reconcile::Snapshot,
    observe::census::{self, Census, Published},
    observe::counters,
    observe::health::Readiness,
    observe::metrics::{self, RunStatus},
    observe::series::{Detail, MetricsOptions, SeriesCache},
    sys::clock::monotonic_ns,
};
use xlb_api::{FlowRow, ServicesOutput};

const WEB_HTTP: &str = "default/web:http/TCP";
const WEB_DNS: &str = "default/web:dns/UDP";

fn raw(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

/// The frontend id of `service`'s LoadBalancer frontend, and its backend ids by pod address.
fn ids(snap: &Snapshot, service: &str) -> (u32, BTreeMap<Ipv4Addr, u32>) {
    let s = snap
        .services
        .iter()
        .find(|s| s.name == service)
        .unwrap_or_else(|| panic!("no {service}"));
    let fe = s
        .frontends
        .iter()
        .find(|f| f.addr == Some(Ipv4Addr::from(VIP)))
        .expect("the VIP frontend")
        .frontend_id;
    (
        fe,
        s.backends.iter().map(|b| (b.addr, b.backend_id)).collect(),
    )
}

#[test]
fn census_counts_the_active_flows_of_real_packets() {
    let mut f = Fixture::new(&manifest(&PODS, &[]));
    let mut per_pod: BTreeMap<Ipv4Addr, u64> = BTreeMap::new();
    for sport in 40000..40030u16 {
        let (act, out) = f.xdp(&tcp(CLIENT, sport, VIP, 80, true));
        assert_eq!(act, XDP_PASS);
        *per_pod.entry(dst(&out).0).or_default() += 1;
    }
    let mut udp_pods: BTreeMap<Ipv4Addr, u64> = BTreeMap::new();
    for sport in 41000..41010u16 {
        let (act, out) = f.xdp(&udp(CLIENT, sport, VIP, 53));
        assert_eq!(act, XDP_PASS);
        *udp_pods.entry(dst(&out).0).or_default() += 1;
    }
    // A second packet of a flow is the same flow.
    f.xdp(&tcp(CLIENT, 40000, VIP, 80, false));
    let snap = f.rec.snapshot().clone();
    let (http_fe, http_be) = ids(&snap, WEB_HTTP);
    let (dns_fe, dns_be) = ids(&snap, WEB_DNS);
    // A UDP flow idle past its timeout (the sweep has not come yet): in the table, not active.
    let now = monotonic_ns();
    let stale = FlowKey {
        src_addr: raw(Ipv4Addr::from(CLIENT)),
        dst_addr: raw(Ipv4Addr::from(VIP)),
        src_port: 42000u16.to_be(),
        dst_port: 53u16.to_be(),
        proto: IPPROTO_UDP,
        _pad: [0; 3],
    };
    let old = now.saturating_sub(2 * flow_idle_ns(IPPROTO_UDP));
    let mut v = CtValue::new(dns_be[&Ipv4Addr::from(PODS[0])], dns_fe, old);
    v.last_seen_ns = old;
    f.rec.maps.conntrack.insert(stale, v, 0).unwrap();

    // The counters, read in batches, are those read one id at a time.
    let sample = counters::read(&f.rec.maps, &snap).unwrap();
    assert_eq!(sample.frontends[&http_fe].new_flows, 30);
    assert_eq!(sample.frontends[&dns_fe].new_flows, 10);
    for (id, c) in &sample.frontends {
        assert_eq!(
            *c,
            f.rec.maps.frontend_counter(*id).unwrap(),
            "frontend {id}"
        );
    }
    for (id, c) in &sample.backends {
        assert_eq!(*c, f.rec.maps.backend_counter(*id).unwrap(), "backend {id}");
    }
    let per_backend: u64 = http_be
        .values()
        .map(|id| sample.backends[id].new_flows)
        .sum();
    assert_eq!(per_backend, 30);

    for per_s in [None, Some(1000)] {
        let c = census::take(&f.rec.maps, per_s).unwrap();
        assert_eq!(c.entries, 41, "{c:?}");
        assert_eq!(c.active, 40, "{c:?}");
        assert_eq!(c.read, 41);
        assert_eq!(c.capacity, 4096);
        assert_eq!(c.frontend(http_fe), 30);
        assert_eq!(c.frontend(dns_fe), 10, "the idle flow is not counted");
        for (pod, n) in &per_pod {
            assert_eq!(c.backend(http_be[pod]), *n, "{pod}");
        }
        for (pod, n) in &udp_pods {
            assert_eq!(c.backend(dns_be[pod]), *n, "{pod}");
        }
        assert!(c.taken_unix >= c.started_unix && c.walk_s >= 0.0 && c.cpu_s >= 0.0);
    }

    // The idle sweep after a walk: a flow read as expired but refreshed since stays, and
    // counts as a reference to its backend; one still expired goes, and only it.
    let stale_pod = dns_be[&Ipv4Addr::from(PODS[0])];
    let mut c = census::take(&f.rec.maps, None).unwrap();
    assert_eq!(c.stale, vec![(stale, stale_pod)]);
    let refreshed = CtValue::new(stale_pod, dns_fe, monotonic_ns());
    f.rec.maps.conntrack.insert(stale, refreshed, 0).unwrap();
    census::sweep(&mut f.rec.maps, &mut c).unwrap();
    assert_eq!(c.expired, 0);
    assert!(c.referenced.contains(&stale_pod));
    f.rec.maps.conntrack.insert(stale, v, 0).unwrap();
    let mut c = census::take(&f.rec.maps, None).unwrap();
    census::sweep(&mut f.rec.maps, &mut c).unwrap();
    assert_eq!(c.expired, 1);
    assert_eq!(c.entries, 40, "the fill after the sweep");
    assert!(c.stale.is_empty());
    assert!(
        f.rec.maps.conntrack.get(&stale, 0).is_err(),
        "expired flow kept"
    );
    let after = census::take(&f.rec.maps, None).unwrap();
    assert_eq!((after.entries, after.active), (40, 40));
    assert!(after.stale.is_empty());
}

/// A datapath whose connection table holds `n` synthetic active flows to the VIP's first pod.
fn big_table(n: u32) -> (Fixture, u32) {
    let mut f = Fixture::load(
        &LoadOptions {
            pin_dir: None,
            conntrack_size: n + n / 4,
        },
        &manifest(&PODS, &[]),
        "node-a",
    );
    let (fe, be) = ids(f.rec.snapshot(), WEB_HTTP);
    let backend = be[&Ipv4Addr::from(PODS[0])];
    let now = monotonic_ns();
    for i in 0..n {
        let key = FlowKey {
            src_addr: raw(Ipv4Addr::new(
                198,
                18,
                128 + (i >> 16) as u8,
                (i >> 8) as u8,
            )),
            dst_addr: raw(Ipv4Addr::from(VIP)),
            src_port: (i as u16).to_be(),
            dst_port: 80u16.to_be(),
            proto: IPPROTO_TCP,
            _pad: [0; 3],
        };
        f.rec
            .maps
            .conntrack
            .insert(key, CtValue::new(backend, fe, now), 0)
            .unwrap();
    }
    (f, fe)
}

/// With 100,000 flows in the table, `/metrics` and `xlb services` show what the census
/// published (7 connections), not what a walk would find: they never read the table.
#[test]
fn metrics_and_services_read_the_census_not_the_table() {
    let (f, fe) = big_table(100_000);
    let snap = f.rec.snapshot().clone();
    let census = Census {
        entries: 7,
        active: 7,
        capacity: conntrack::capacity(&f.rec.maps).unwrap(),
        taken_unix: 1.0,
        per_frontend: [(fe, 7)].into(),
        ..Default::default()
    };
    let status = RunStatus::new(Readiness::new());
    status.programmed(1, Duration::from_millis(1), &serde_json::json!({}), &snap);
    // Before any census: no connection figures (not zeros from a walk).
    let text = metrics::render(&f.rec.maps, &status.view(), false).unwrap();
    assert!(!text.contains("\nxlb_conntrack_entries "), "{text}");
    assert!(text.contains("\nxlb_conntrack_capacity 125000\n"), "{text}");
    status.census_taken(census.clone());
    let text = metrics::render(&f.rec.maps, &status.view(), false).unwrap();
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("xlb_frontend_connections{") && l.contains("frontend=\"198.19.255.1:80\"")
        })
        .expect("the VIP's connection gauge");
    assert!(line.ends_with(" 7") && line.contains(WEB_HTTP), "{line}");
    assert!(text.contains("\nxlb_conntrack_entries 7\n"), "{text}");
    assert!(
        text.contains("\nxlb_conntrack_census_walks_total 1\n"),
        "{text}"
    );
    assert!(text.contains("\nxlb_metrics_detail{level=\"backends\"} 1\n"));
    assert!(text.contains("\nxlb_metrics_detail_capped 0\n"));

    // Fewer per-object series: as asked, or as the cap forces (and then says).
    let view = status.view();
    let mut cache = SeriesCache::default();
    let mut scrape = |detail, max_series| {
        let opts = MetricsOptions { detail, max_series };
        metrics::render_with(&f.rec.maps, &view, false, &opts, &mut cache).unwrap()
    };
    let fes = scrape(Detail::Frontends, usize::MAX);
    assert!(fes.contains(line), "{fes}");
    assert!(!fes.contains("\nxlb_backend_packets_total{") && !fes.contains("\nxlb_backend_slots{"));
    assert!(fes.contains("\nxlb_metrics_detail_capped 0\n"));
    let capped = scrape(Detail::Backends, 0);
    assert!(
        !capped.contains("\nxlb_frontend_packets_total{"),
        "{capped}"
    );
    assert!(capped.contains("\nxlb_metrics_detail{level=\"none\"} 1\n"));
    assert!(capped.contains("\nxlb_metrics_detail_capped 1\n"));
    assert!(
        capped.contains("\nxlb_conntrack_entries 7\n"),
        "totals stay"
    );
    assert_eq!(
        scrape(Detail::Backends, usize::MAX),
        text,
        "the cached text is the same"
    );

    let sample = counters::read(&f.rec.maps, &snap).unwrap();
    let doc: ServicesOutput = services_output(
        &snap,
        &sample,
        &Published::Current(census),
        conntrack::capacity(&f.rec.maps).unwrap(),
    );
    let svc = doc.service(WEB_HTTP).unwrap();
    assert_eq!(svc.connections, 7);
    assert_eq!(doc.conntrack.entries, 7);
    assert_eq!(doc.census.as_ref().unwrap().state, "current");
    // No xlb run: nobody counted, and the output says so.
    let doc = services_output(&snap, &sample, &Published::NoDaemon, 125_000);
    assert_eq!(doc.service(WEB_HTTP).unwrap().connections, 0);
    assert_eq!(doc.census.as_ref().unwrap().state, "no-daemon");

    // The census of that table sees every flow.
    let c = census::take(&f.rec.maps, None).unwrap();
    assert_eq!(
        (c.entries, c.active, c.frontend(fe)),
        (100_000, 100_000, 100_000)
    );
}

#[test]
fn conntrack_list_limit_prints_at_most_n_and_stops_walking() {
    let (f, _) = big_table(20_000);
    let snap = f.rec.snapshot().clone();
    let all = FlowFilter::parse(&FlowFilterArgs::default(), &snap).unwrap();
    let run = |format: OutputFormat, limit: usize| -> (String, u64) {
        let mut w = FlowWriter::new(format, Vec::new());
        let (shown, read) = list_flows(&f.rec.maps, &snap, &all, None, limit, &mut w).unwrap();
        w.finish(shown).unwrap();
        (String::from_utf8(w.into_inner()).unwrap(), read)
    };
    let (json, read) = run(OutputFormat::Json, 10);
    let rows: Vec<FlowRow> = serde_json::from_str(&json).unwrap();
    assert_eq!(rows.len(), 10);
    // Streamed: the walk ended at the tenth flow, not after reading the whole table.
    assert_eq!(read, 10);
    assert!(rows.iter().all(|r| r.service.as_deref() == Some(WEB_HTTP)));
    let (yaml, _) = run(OutputFormat::Yaml, 3);
    let rows: Vec<FlowRow> = yaml_serde::from_str(&yaml).unwrap();
    assert_eq!(rows.len(), 3);
    let (human, _) = run(OutputFormat::Human, 5);
    let lines: Vec<&str> = human.lines().collect();
    assert_eq!(lines.len(), 7, "header, 5 flows, total: {human}");
    assert!(
        lines[0].starts_with("PROTO") && lines[6] == "5 flows",
        "{human}"
    );
    // Without a limit, every flow once.
    let (json, read) = run(OutputFormat::Json, usize::MAX);
    let rows: Vec<FlowRow> = serde_json::from_str(&json).unwrap();
    assert_eq!(rows.len(), 20_000);
    assert!(read >= 20_000);
    // Nothing matches: an empty document.
    let none = FlowFilter::parse(
        &FlowFilterArgs {
            client: Some("198.18.200.0/24".into()),
            ..Default::default()
        },
        &snap,
    )
    .unwrap();
    let mut w = FlowWriter::new(OutputFormat::Json, Vec::new());
    let (shown, _) = list_flows(&f.rec.maps, &snap, &none, None, 10, &mut w).unwrap();
    w.finish(shown).unwrap();
    let rows: Vec<FlowRow> = serde_json::from_slice(&w.into_inner()).unwrap();
    assert!(rows.is_empty());
}
