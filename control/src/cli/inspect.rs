//! `xlb services`, `xlb stats`, `xlb maglev show`: read the pinned maps of this namespace's
//! datapath (and the names and the connection census `xlb run` published) and print them.
//! None of them reads the connection table. The conntrack commands live in
//! [`crate::cli::conntrack`], the live view in [`crate::cli::top`].
use std::{collections::HashMap, net::Ipv4Addr};

use anyhow::{Context as _, bail};
use lb_common::maps::NO_BACKEND;
use xlb_api::{
    BackendStatus, CensusStatus, ConntrackUsage, FrontendStatus, IfaceAttachment, InterfaceStatus,
    MaglevBackendView, MaglevOutput, MaglevView, ServiceStatus, ServicesOutput, StatsOutput,
    SynGuardStatus,
};

use crate::{
    cli::args::{MaglevShowArgs, OutputArgs, StatsArgs},
    cli::attached::{self, open},
    cli::output::{self, Table},
    datapath::conntrack,
    datapath::maglev_map,
    datapath::maps::Maps,
    datapath::reconcile::{ServiceSnapshot, Snapshot},
    datapath::tc_attach,
    observe::census::{self, Census, Published},
    observe::counters::{self, ReasonClass, Sample},
    observe::ifaces,
};

/// The Service ports `pattern` names: the exact `ns/name:port/PROTO`, or every port of
/// `ns/name`, or of `name` in any namespace. Fails, listing what exists, when none match.
pub fn match_services<'a>(
    snap: &'a Snapshot,
    pattern: &str,
) -> anyhow::Result<Vec<&'a ServiceSnapshot>> {
    let exact: Vec<&ServiceSnapshot> = snap
        .services
        .iter()
        .map(|s| &**s)
        .filter(|s| s.name == pattern)
        .collect();
    if !exact.is_empty() {
        return Ok(exact);
    }
    let found: Vec<&ServiceSnapshot> = snap
        .services
        .iter()
        .map(|s| &**s)
        .filter(|s| {
            let prefixed = s
                .name
                .strip_prefix(pattern)
                .is_some_and(|rest| rest.starts_with(':') || rest.starts_with('/'));
            // `name` alone: the part after the namespace.
            let bare = !pattern.contains('/')
                && s.name.split_once('/').is_some_and(|(_, rest)| {
                    rest.strip_prefix(pattern)
                        .is_some_and(|r| r.starts_with(':') || r.starts_with('/'))
                });
            prefixed || bare
        })
        .collect();
    if found.is_empty() {
        let mut names: Vec<&str> = snap.services.iter().map(|s| s.name.as_str()).collect();
        let more = names.len().saturating_sub(8);
        names.truncate(8);
        bail!(
            "no Service port matches {pattern:?} (programmed: {}{})",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            },
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        );
    }
    Ok(found)
}

fn frontend_text(addr: Option<Ipv4Addr>, port: u16) -> String {
    match addr {
        Some(a) => format!("{a}:{port}"),
        None => format!("*:{port}"),
    }
}

/// `xlb services`.
pub fn services(args: &OutputArgs) -> anyhow::Result<()> {
    let dp = open(&args.pin)?;
    let snap = attached::read_snapshot(&dp.pin_dir)?;
    let sample = counters::read(&dp.maps, &snap)?;
    let published = census::read(&dp.pin_dir)?;
    let capacity = conntrack::capacity(&dp.maps)?;
    let doc = services_output(&snap, &sample, &published, capacity);
    output::emit(args.output, &doc, print_services)
}

/// The programmed Service ports with their counters, and their open connections as the
/// census `published` counted them.
pub fn services_output(
    snap: &Snapshot,
    sample: &Sample,
    published: &Published,
    capacity: u32,
) -> ServicesOutput {
    let (flows, status) = census_status(published);
    let conns_fe = |id: u32| flows.map_or(0, |c| c.frontend(id));
    let conns_be = |id: u32| flows.map_or(0, |c| c.backend(id));
    let services = snap
        .services
        .iter()
        .map(|s| {
            let frontends: Vec<FrontendStatus> = s
                .frontends
                .iter()
                .map(|f| {
                    let c = sample
                        .frontends
                        .get(&f.frontend_id)
                        .copied()
                        .unwrap_or_default();
                    FrontendStatus {
                        addr: f.addr,
                        port: f.port,
                        kind: f.kind.clone(),
                        frontend_id: f.frontend_id,
                        packets: c.packets,
                        bytes: c.bytes,
                        new_flows: c.new_flows,
                        connections: conns_fe(f.frontend_id),
                    }
                })
                .collect();
            let backends = s
                .backends
                .iter()
                .map(|b| {
                    let c = sample
                        .backends
                        .get(&b.backend_id)
                        .copied()
                        .unwrap_or_default();
                    BackendStatus {
                        addr: b.addr,
                        port: b.port,
                        node: b.node.clone(),
                        local: b.local,
                        weight: b.weight,
                        state: b.state.clone(),
                        backend_id: b.backend_id,
                        slots: b.slots,
                        packets: c.packets,
                        bytes: c.bytes,
                        new_flows: c.new_flows,
                        connections: conns_be(b.backend_id),
                    }
                })
                .collect();
            ServiceStatus {
                name: s.name.clone(),
                protocol: s.protocol.clone(),
                service_id: s.service_id,
                table_size: s.table_size,
                connections: frontends.iter().map(|f| f.connections).sum(),
                frontends,
                backends,
            }
        })
        .collect();
    ServicesOutput {
        services,
        conntrack: ConntrackUsage {
            entries: flows.map_or(0, |c| c.entries),
            capacity,
            active: flows.map_or(0, |c| c.active),
        },
        census: Some(status),
    }
}

fn census_status(published: &Published) -> (Option<&Census>, CensusStatus) {
    match published {
        Published::Current(c) => (
            Some(c),
            CensusStatus {
                state: "current".into(),
                taken_unix: Some(c.taken_unix),
                age_s: Some(c.age_s()),
                walk_s: Some(c.walk_s),
            },
        ),
        Published::NotYet => (
            None,
            CensusStatus {
                state: "pending".into(),
                ..Default::default()
            },
        ),
        Published::NoDaemon => (
            None,
            CensusStatus {
                state: "no-daemon".into(),
                ..Default::default()
            },
        ),
    }
}

/// The line under the table that says where CONNS comes from.
fn census_text(doc: &ServicesOutput) -> String {
    let Some(c) = &doc.census else {
        return String::new();
    };
    match c.state.as_str() {
        "current" => format!(
            "conntrack: {} of {} entries; connections counted {} ago (the census of xlb run, a {} walk)\n",
            doc.conntrack.entries,
            doc.conntrack.capacity,
            output::duration(c.age_s.unwrap_or(0.0)),
            output::duration(c.walk_s.unwrap_or(0.0)),
        ),
        "pending" => format!(
            "conntrack: capacity {}; connections not counted yet (xlb run's first census is still walking)\n",
            doc.conntrack.capacity
        ),
        _ => format!(
            "conntrack: capacity {}; connections NOT COUNTED: no `xlb run` is running for this datapath (it keeps the count; `xlb conntrack list` walks the table)\n",
            doc.conntrack.capacity
        ),
    }
}

fn print_services(doc: &ServicesOutput) -> String {
    if doc.services.is_empty() {
        return "no services programmed\n".into();
    }
    // Without a census, CONNS is unknown, not 0.
    let counted = doc.census.as_ref().is_none_or(|c| c.state == "current");
    let conns = |n: u64| if counted { n.to_string() } else { "-".into() };
    let mut t = Table::new(&[
        "SERVICE / FRONTEND / BACKEND",
        "KIND / STATE",
        "NODE",
        ">WEIGHT",
        ">SLOTS",
        ">CONNS",
        ">PACKETS",
        ">BYTES",
    ]);
    for s in &doc.services {
        let packets: u64 = s.frontends.iter().map(|f| f.packets).sum();
        let bytes: u64 = s.frontends.iter().map(|f| f.bytes).sum();
        t.row(vec![
            s.name.clone(),
            format!("Maglev M={}", s.table_size),
            String::new(),
            String::new(),
            String::new(),
            conns(s.connections),
            packets.to_string(),
            output::bytes(bytes),
        ]);
        for f in &s.frontends {
            t.row(vec![
                format!("  {}", frontend_text(f.addr, f.port)),
                f.kind.clone(),
                String::new(),
                String::new(),
                String::new(),
                conns(f.connections),
                f.packets.to_string(),
                output::bytes(f.bytes),
            ]);
        }
        for b in &s.backends {
            t.row(vec![
                format!("  -> {}:{}", b.addr, b.port),
                b.state.clone(),
                b.node.clone().unwrap_or_else(|| "-".into()),
                b.weight.to_string(),
                b.slots.to_string(),
                conns(b.connections),
                b.packets.to_string(),
                output::bytes(b.bytes),
            ]);
        }
    }
    let mut s = t.render();
    s.push_str(&census_text(doc));
    s
}

/// `xlb stats`: every global counter; with `--interval`, read twice and add rates.
pub fn stats(args: &StatsArgs) -> anyhow::Result<()> {
    let dp = open(&args.out.pin)?;
    let first = counters::read(&dp.maps, &Snapshot::default())?;
    let (last, rates) = match args.interval {
        Some(iv) => {
            std::thread::sleep(iv);
            let last = counters::read(&dp.maps, &Snapshot::default())?;
            let rates = last.global_rates(&first);
            (last, Some(rates))
        }
        None => (first.clone(), None),
    };
    let doc = StatsOutput {
        counters: last
            .global
            .iter()
            .map(|(n, v)| (n.to_string(), *v))
            .collect(),
        rates: rates
            .as_ref()
            .map(|r| r.iter().map(|(n, v)| (n.to_string(), *v)).collect()),
        interval_s: rates.as_ref().map(|_| last.secs_since(&first)),
        attachments: tc_attach::attached_ifaces(&dp.pin_dir)
            .into_iter()
            .map(|(iface, tc)| IfaceAttachment {
                iface,
                tc_attach: tc.name().to_string(),
            })
            .collect(),
        interfaces: ifaces::read(&dp.maps)
            .into_iter()
            .map(|i| InterfaceStatus {
                name: i.name.clone(),
                ifindex: i.ifindex,
                xdp_mode: i.xdp_mode().into(),
                path: i.path().into(),
                reason: i.why().name().into(),
                reason_text: i.why().text().into(),
                xdp_errors: i.xdp_errors.into_iter().collect(),
            })
            .collect(),
        syn_guard: Some(syn_guard(&dp.maps, &last)?),
    };
    output::emit(args.out.output, &doc, |doc| {
        let mut t = Table::new(&["COUNTER", ">TOTAL", ">RATE/s"]);
        for class in [
            ReasonClass::Passed,
            ReasonClass::Dropped,
            ReasonClass::Event,
        ] {
            t.row(vec![class.title().to_string()]);
            for (i, (name, v)) in last.global.iter().enumerate() {
                if ReasonClass::of(name) != class {
                    continue;
                }
                let rate = rates.as_ref().map(|r| r[i].1);
                t.row(vec![format!("  {name}"), v.to_string(), output::rate(rate)]);
            }
        }
        let mut s = t.render();
        if rates.is_none() {
            s.push_str("(rates: run with --interval SECONDS)\n");
        }
        for a in &doc.attachments {
            s.push_str(&format!(
                "attached: {} (egress: {})\n",
                a.iface, a.tc_attach
            ));
        }
        s.push_str(&interfaces_text(&doc.interfaces));
        if let Some(g) = &doc.syn_guard {
            s.push_str(&syn_guard_text(g));
        }
        s
    })
}

/// The SYN-flood guard's setting, state and trips.
pub fn syn_guard(maps: &Maps, sample: &counters::Sample) -> anyhow::Result<SynGuardStatus> {
    let g = maps.syn_guard(crate::sys::clock::monotonic_ns())?;
    Ok(SynGuardStatus {
        rate: maps.syn_guard_rate()?,
        engaged_cpus: g.engaged_cpus,
        trips: g.trips,
        skipped: sample.global_value(lb_common::maps::Reason::SynGuarded.name()),
    })
}

fn syn_guard_text(g: &SynGuardStatus) -> String {
    if g.rate == 0 {
        return format!("syn guard: off ({} SYNs skipped before)\n", g.skipped);
    }
    format!(
        "syn guard: {} new flows/s per CPU; {}; {} trips, {} SYNs forwarded without a conntrack \
         write\n",
        g.rate,
        if g.engaged_cpus > 0 {
            format!("ENGAGED on {} CPU(s)", g.engaged_cpus)
        } else {
            "idle".to_string()
        },
        g.trips,
        g.skipped
    )
}

/// The interfaces' paths, with the reason, and their drivers' XDP errors.
fn interfaces_text(interfaces: &[InterfaceStatus]) -> String {
    if interfaces.is_empty() {
        return String::new();
    }
    let mut t = Table::new(&["INTERFACE", "XDP", "EGRESS PATH", "WHY"]);
    for i in interfaces {
        let name = i
            .name
            .clone()
            .unwrap_or_else(|| format!("#{} (gone)", i.ifindex));
        t.row(vec![
            name,
            i.xdp_mode.clone(),
            i.path.clone(),
            i.reason_text.clone(),
        ]);
        for (stat, v) in &i.xdp_errors {
            t.row(vec![format!("  {stat}"), String::new(), v.to_string()]);
        }
    }
    format!("\n{}", t.render())
}

/// Slots, shares and imbalance of one table. `weights` by backend id; `slots` as read.
fn maglev_view(
    s: &ServiceSnapshot,
    slots: &[u32],
    mut backend_of: impl FnMut(u32) -> Option<(Ipv4Addr, u16)>,
    with_table: bool,
) -> MaglevView {
    let mut count: HashMap<u32, u32> = HashMap::new();
    let mut empty = 0;
    for &id in slots {
        if id == NO_BACKEND {
            empty += 1;
        } else {
            *count.entry(id).or_default() += 1;
        }
    }
    let m = slots.len().max(1) as f64;
    let total_weight: u32 = s.backends.iter().map(|b| b.weight).sum();
    let mut backends: Vec<MaglevBackendView> = s
        .backends
        .iter()
        .map(|b| MaglevBackendView {
            addr: Some(b.addr),
            port: Some(b.port),
            node: b.node.clone(),
            state: b.state.clone(),
            weight: b.weight,
            backend_id: b.backend_id,
            slots: count.get(&b.backend_id).copied().unwrap_or(0),
            share: count.get(&b.backend_id).copied().unwrap_or(0) as f64 / m,
            ideal_share: if total_weight == 0 {
                0.0
            } else {
                b.weight as f64 / total_weight as f64
            },
        })
        .collect();
    // Slots pointing at ids the published names do not know (a table newer than the names).
    let mut unknown: Vec<u32> = count
        .keys()
        .filter(|id| !s.backends.iter().any(|b| b.backend_id == **id))
        .copied()
        .collect();
    unknown.sort();
    for id in unknown {
        let ap = backend_of(id);
        backends.push(MaglevBackendView {
            addr: ap.map(|a| a.0),
            port: ap.map(|a| a.1),
            node: None,
            state: "unknown".into(),
            weight: 0,
            backend_id: id,
            slots: count[&id],
            share: count[&id] as f64 / m,
            ideal_share: 0.0,
        });
    }
    let ratios: Vec<f64> = backends
        .iter()
        .filter(|b| b.ideal_share > 0.0)
        .map(|b| b.share / b.ideal_share)
        .collect();
    let max_over_ideal = ratios.iter().copied().fold(0.0, f64::max);
    let min_over_ideal = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let table = with_table.then(|| {
        let names: HashMap<u32, String> = backends
            .iter()
            .filter_map(|b| Some((b.backend_id, format!("{}:{}", b.addr?, b.port?))))
            .collect();
        slots
            .iter()
            .map(|id| names.get(id).cloned())
            .collect::<Vec<_>>()
    });
    MaglevView {
        name: s.name.clone(),
        protocol: s.protocol.clone(),
        service_id: s.service_id,
        table_size: s.table_size,
        empty_slots: empty,
        max_over_ideal,
        min_over_ideal: if min_over_ideal.is_finite() {
            min_over_ideal
        } else {
            0.0
        },
        backends,
        table,
    }
}

/// `xlb maglev show SERVICE`: reads the live table of each matching Service port.
pub fn maglev_show(args: &MaglevShowArgs) -> anyhow::Result<()> {
    let dp = open(&args.out.pin)?;
    let snap = attached::read_snapshot(&dp.pin_dir)?;
    let mut views = Vec::new();
    for s in match_services(&snap, &args.service)? {
        let inner = dp.maps.maglev.get(&s.service_id, 0).with_context(|| {
            format!(
                "reading the Maglev table of {} (service id {})",
                s.name, s.service_id
            )
        })?;
        // The live table's backend id per slot (its own M, which the names may predate).
        let slots = maglev_map::read_decoded(&inner)?.slot_ids();
        let maps = &dp.maps;
        views.push(maglev_view(
            s,
            &slots,
            |id| {
                maps.backends
                    .get(&id, 0)
                    .ok()
                    .filter(|b| b.flags != 0)
                    .map(|b| (Ipv4Addr::from(b.addr.to_ne_bytes()), u16::from_be(b.port)))
            },
            args.slots,
        ));
    }
    let doc = MaglevOutput { services: views };
    output::emit(args.out.output, &doc, |_| {
        let mut s = String::new();
        for v in &doc.services {
            s.push_str(&format!(
                "{}  table size M={}  {} backends  empty slots {}\n",
                v.name,
                v.table_size,
                v.backends.len(),
                v.empty_slots
            ));
            let mut t = Table::new(&[
                "BACKEND",
                "NODE",
                "STATE",
                ">WEIGHT",
                ">SLOTS",
                ">SHARE",
                ">IDEAL",
                ">DEVIATION",
            ]);
            for b in &v.backends {
                let dev = if b.ideal_share > 0.0 {
                    format!("{:+.2}%", (b.share / b.ideal_share - 1.0) * 100.0)
                } else {
                    "-".into()
                };
                t.row(vec![
                    match (b.addr, b.port) {
                        (Some(a), Some(p)) => format!("{a}:{p}"),
                        _ => format!("(id {})", b.backend_id),
                    },
                    b.node.clone().unwrap_or_else(|| "-".into()),
                    b.state.clone(),
                    b.weight.to_string(),
                    b.slots.to_string(),
                    format!("{:.2}%", b.share * 100.0),
                    format!("{:.2}%", b.ideal_share * 100.0),
                    dev,
                ]);
            }
            s.push_str(&t.render());
            s.push_str(&format!(
                "imbalance: most loaded backend {:.4}x its ideal share, least loaded {:.4}x\n",
                v.max_over_ideal, v.min_over_ideal
            ));
            if let Some(table) = &v.table {
                for (i, b) in table.iter().enumerate() {
                    s.push_str(&format!("{i:>6} {}\n", b.as_deref().unwrap_or("-")));
                }
            }
            s.push('\n');
        }
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::reconcile::{BackendSnapshot, FrontendSnapshot};

    fn svc(name: &str) -> ServiceSnapshot {
        ServiceSnapshot {
            name: name.into(),
            protocol: "TCP".into(),
            service_id: 0,
            table_size: 7,
            frontends: vec![FrontendSnapshot {
                addr: None,
                port: 30080,
                kind: "NodePort".into(),
                frontend_id: 0,
            }],
            backends: vec![
                BackendSnapshot {
                    addr: Ipv4Addr::new(198, 18, 1, 11),
                    port: 8080,
                    node: Some("node-a".into()),
                    local: true,
                    weight: 1,
                    state: "ready".into(),
                    backend_id: 4,
                    slots: 4,
                },
                BackendSnapshot {
                    addr: Ipv4Addr::new(198, 18, 1, 12),
                    port: 8080,
                    node: Some("node-a".into()),
                    local: true,
                    weight: 1,
                    state: "ready".into(),
                    backend_id: 5,
                    slots: 3,
                },
            ],
        }
    }

    #[test]
    fn service_patterns() {
        let snap = Snapshot {
            services: vec![
                svc("default/web:http/TCP").into(),
                svc("default/web:udp/UDP").into(),
                svc("other/web/TCP").into(),
                svc("default/webby/TCP").into(),
            ],
        };
        let names = |p: &str| -> Vec<String> {
            match_services(&snap, p)
                .unwrap()
                .iter()
                .map(|s| s.name.clone())
                .collect()
        };
        assert_eq!(names("default/web:http/TCP"), ["default/web:http/TCP"]);
        assert_eq!(
            names("default/web"),
            ["default/web:http/TCP", "default/web:udp/UDP"]
        );
        assert_eq!(
            names("web"),
            [
                "default/web:http/TCP",
                "default/web:udp/UDP",
                "other/web/TCP"
            ]
        );
        let e = match_services(&snap, "nope").unwrap_err().to_string();
        assert!(
            e.contains("no Service port matches") && e.contains("default/webby/TCP"),
            "{e}"
        );
    }

    #[test]
    fn maglev_imbalance() {
        let s = svc("default/web/TCP");
        let slots = [4, 5, 4, 5, 4, 9, NO_BACKEND];
        let v = maglev_view(&s, &slots, |_| Some((Ipv4Addr::new(1, 2, 3, 4), 9)), true);
        assert_eq!(v.empty_slots, 1);
        assert_eq!(v.backends.len(), 3);
        assert_eq!(v.backends[0].slots, 3);
        assert_eq!(v.backends[1].slots, 2);
        // The stray id 9 is shown from XLB_BACKENDS, with no ideal share.
        assert_eq!(v.backends[2].state, "unknown");
        assert_eq!(v.backends[2].addr, Some(Ipv4Addr::new(1, 2, 3, 4)));
        let ideal = 0.5;
        assert!((v.max_over_ideal - (3.0 / 7.0) / ideal).abs() < 1e-9);
        assert!((v.min_over_ideal - (2.0 / 7.0) / ideal).abs() < 1e-9);
        let table = v.table.unwrap();
        assert_eq!(table[0].as_deref(), Some("198.18.1.11:8080"));
        assert_eq!(table[5].as_deref(), Some("1.2.3.4:9"));
        assert_eq!(table[6], None);
    }
}
