//! `xlb services`, `xlb stats`, `xlb maglev show`: read the pinned maps of this namespace's
//! datapath (and the names `xlb run` published) and print them. The conntrack commands live in
//! [`crate::flows`], the live view in [`crate::top`].
use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use lb_common::maps::NO_BACKEND;
use serde::Serialize;
use serde_json::{Value, json};

use crate::{
    cli::{MaglevShowArgs, OutputArgs, PinArgs, StatsArgs},
    counters::{self, ReasonClass},
    datapath::Maps,
    output::{self, Table},
    pins,
    reconcile::{ServiceSnapshot, Snapshot},
    table_map,
};

/// An opened datapath: its maps and where they are pinned.
pub struct Datapath {
    pub maps: Maps,
    pub pin_dir: PathBuf,
}

/// Opens this namespace's datapath or says, in one line, why there is none.
pub fn open(pin: &PinArgs) -> anyhow::Result<Datapath> {
    let pin_dir = pins::resolve(pin.pin_dir.as_deref())?;
    pins::require_bpffs(&pin_dir)?;
    if !pins::maps_dir(&pin_dir).exists() {
        bail!(
            "no xlb datapath in this network namespace (nothing pinned at {}); start one with `xlb run`",
            pin_dir.display()
        );
    }
    let maps = Maps::from_pins(&pin_dir).with_context(|| {
        format!(
            "the datapath pinned at {} cannot be opened (left by another xlb version? remove it with `xlb down`)",
            pin_dir.display()
        )
    })?;
    Ok(Datapath { maps, pin_dir })
}

/// The names `xlb run` published for the datapath at `pin_dir` (empty if it published none).
pub fn read_snapshot(pin_dir: &Path) -> anyhow::Result<Snapshot> {
    let path = pins::state_file(pin_dir);
    match std::fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
        }
        // Pins without names (the node rebooted `xlb run` away): nothing to name yet.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Snapshot::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

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
    let snap = read_snapshot(&dp.pin_dir)?;
    let sample = counters::read(&dp.maps, &snap, true)?;
    let flows = sample.flows.clone().unwrap_or_default();
    let conns_fe = |id: u32| flows.per_frontend.get(&id).copied().unwrap_or(0);
    let conns_be = |id: u32| flows.per_backend.get(&id).copied().unwrap_or(0);
    let mut out = Vec::new();
    for s in &snap.services {
        let mut frontends = Vec::new();
        let mut service_conns = 0;
        for f in &s.frontends {
            let c = sample
                .frontends
                .get(&f.frontend_id)
                .copied()
                .unwrap_or_default();
            service_conns += conns_fe(f.frontend_id);
            frontends.push(json!({
                "addr": f.addr, "port": f.port, "kind": f.kind, "frontend_id": f.frontend_id,
                "packets": c.packets, "bytes": c.bytes, "new_flows": c.new_flows,
                "connections": conns_fe(f.frontend_id),
            }));
        }
        let mut backends = Vec::new();
        for b in &s.backends {
            let c = sample
                .backends
                .get(&b.backend_id)
                .copied()
                .unwrap_or_default();
            backends.push(json!({
                "addr": b.addr, "port": b.port, "node": b.node, "local": b.local,
                "weight": b.weight, "state": b.state, "backend_id": b.backend_id,
                "slots": b.slots, "packets": c.packets, "bytes": c.bytes,
                "new_flows": c.new_flows, "connections": conns_be(b.backend_id),
            }));
        }
        out.push(json!({
            "name": s.name, "protocol": s.protocol, "service_id": s.service_id,
            "table_size": s.table_size, "connections": service_conns,
            "frontends": frontends, "backends": backends,
        }));
    }
    let doc = json!({
        "services": out,
        "conntrack": { "entries": flows.total, "capacity": flows.capacity },
    });
    output::emit(args.output, &doc, print_services)
}

fn print_services(doc: &Value) -> String {
    let services = doc["services"].as_array().cloned().unwrap_or_default();
    if services.is_empty() {
        return "no services programmed\n".into();
    }
    let n = |v: &Value| v.as_u64().unwrap_or(0);
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
    for s in &services {
        let (mut pk, mut by) = (0, 0);
        for f in s["frontends"].as_array().into_iter().flatten() {
            pk += n(&f["packets"]);
            by += n(&f["bytes"]);
        }
        t.row(vec![
            s["name"].as_str().unwrap_or("").to_string(),
            format!("Maglev M={}", s["table_size"]),
            String::new(),
            String::new(),
            String::new(),
            n(&s["connections"]).to_string(),
            pk.to_string(),
            output::bytes(by),
        ]);
        for f in s["frontends"].as_array().into_iter().flatten() {
            let addr = f["addr"].as_str().and_then(|a| a.parse().ok());
            t.row(vec![
                format!("  {}", frontend_text(addr, n(&f["port"]) as u16)),
                f["kind"].as_str().unwrap_or("").to_string(),
                String::new(),
                String::new(),
                String::new(),
                n(&f["connections"]).to_string(),
                n(&f["packets"]).to_string(),
                output::bytes(n(&f["bytes"])),
            ]);
        }
        for b in s["backends"].as_array().into_iter().flatten() {
            t.row(vec![
                format!("  -> {}:{}", b["addr"].as_str().unwrap_or(""), b["port"]),
                b["state"].as_str().unwrap_or("").to_string(),
                b["node"].as_str().unwrap_or("-").to_string(),
                n(&b["weight"]).to_string(),
                n(&b["slots"]).to_string(),
                n(&b["connections"]).to_string(),
                n(&b["packets"]).to_string(),
                output::bytes(n(&b["bytes"])),
            ]);
        }
    }
    let mut s = t.render();
    s.push_str(&format!(
        "conntrack: {} of {} entries\n",
        n(&doc["conntrack"]["entries"]),
        n(&doc["conntrack"]["capacity"])
    ));
    s
}

/// `xlb stats`: every global counter; with `--interval`, read twice and add rates.
pub fn stats(args: &StatsArgs) -> anyhow::Result<()> {
    let dp = open(&args.out.pin)?;
    let first = counters::read(&dp.maps, &Snapshot::default(), false)?;
    let (last, rates) = match args.interval {
        Some(iv) => {
            std::thread::sleep(iv);
            let last = counters::read(&dp.maps, &Snapshot::default(), false)?;
            let rates = last.global_rates(&first);
            (last, Some(rates))
        }
        None => (first.clone(), None),
    };
    let counters: BTreeMap<&str, u64> = last.global.iter().copied().collect();
    let mut doc = json!({ "counters": counters });
    if let Some(rates) = &rates {
        let r: BTreeMap<&str, f64> = rates.iter().copied().collect();
        doc["rates"] = json!(r);
        doc["interval_s"] = json!(last.secs_since(&first));
    }
    output::emit(args.out.output, &doc, |_| {
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
        s
    })
}

#[derive(Debug, Serialize)]
struct MaglevBackendView {
    addr: Option<Ipv4Addr>,
    port: Option<u16>,
    node: Option<String>,
    state: String,
    weight: u32,
    backend_id: u32,
    slots: u32,
    /// Fraction of the table's slots.
    share: f64,
    /// Fraction its weight asks for.
    ideal_share: f64,
}

#[derive(Debug, Serialize)]
struct MaglevView {
    name: String,
    protocol: String,
    service_id: u32,
    table_size: u32,
    empty_slots: u32,
    /// The most loaded backend's slots over its ideal (1.0 = perfect).
    max_over_ideal: f64,
    /// The least loaded backend's slots over its ideal.
    min_over_ideal: f64,
    backends: Vec<MaglevBackendView>,
    /// With `--slots`: each slot's backend as `addr:port` (`null`: no backend).
    #[serde(skip_serializing_if = "Option::is_none")]
    table: Option<Vec<Option<String>>>,
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
    let snap = read_snapshot(&dp.pin_dir)?;
    let mut views = Vec::new();
    for s in match_services(&snap, &args.service)? {
        let inner = dp.maps.maglev.get(&s.service_id, 0).with_context(|| {
            format!(
                "reading the Maglev table of {} (service id {})",
                s.name, s.service_id
            )
        })?;
        let slots = table_map::read(&inner, s.table_size)?;
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
    let doc = json!({ "services": views });
    output::emit(args.out.output, &doc, |_| {
        let mut s = String::new();
        for v in &views {
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
    use crate::reconcile::{BackendSnapshot, FrontendSnapshot};

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
