//! `xlb services`, `xlb conntrack list`, `xlb stats`: read the pinned maps of this namespace's
//! datapath (and the names `xlb run` published) and print them.
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use lb_common::maps::Reason;
use serde_json::{Value, json};

use crate::{
    cli::{OutputArgs, OutputFormat},
    conntrack,
    datapath::Maps,
    pins,
    reconcile::Snapshot,
};

/// Opens this namespace's datapath or says clearly that there is none.
fn open(args: &OutputArgs) -> anyhow::Result<(Maps, PathBuf)> {
    let pin_dir = pins::resolve(args.pin.pin_dir.as_deref())?;
    pins::require_bpffs(&pin_dir)?;
    if !pins::maps_dir(&pin_dir).exists() {
        bail!(
            "no xlb datapath in this network namespace (nothing pinned at {}); start one with `xlb run`",
            pin_dir.display()
        );
    }
    Ok((Maps::from_pins(&pin_dir)?, pin_dir))
}

fn read_snapshot(pin_dir: &std::path::Path) -> anyhow::Result<Snapshot> {
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

pub fn services(args: &OutputArgs) -> anyhow::Result<()> {
    let (maps, pin_dir) = open(args)?;
    let snap = read_snapshot(&pin_dir)?;
    let mut out = Vec::new();
    for s in &snap.services {
        let mut frontends = Vec::new();
        for f in &s.frontends {
            let c = maps.frontend_counter(f.frontend_id)?;
            frontends.push(json!({
                "addr": f.addr, "port": f.port, "kind": f.kind, "frontend_id": f.frontend_id,
                "packets": c.packets, "bytes": c.bytes,
            }));
        }
        let mut backends = Vec::new();
        for b in &s.backends {
            let c = maps.backend_counter(b.backend_id)?;
            backends.push(json!({
                "addr": b.addr, "port": b.port, "node": b.node, "local": b.local,
                "weight": b.weight, "state": b.state, "backend_id": b.backend_id,
                "slots": b.slots, "packets": c.packets, "bytes": c.bytes,
            }));
        }
        out.push(json!({
            "name": s.name, "protocol": s.protocol, "service_id": s.service_id,
            "table_size": s.table_size, "frontends": frontends, "backends": backends,
        }));
    }
    let doc = json!({ "services": out });
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&doc)?),
        OutputFormat::Human => print_services(&doc),
    }
    Ok(())
}

fn print_services(doc: &Value) {
    let services = doc["services"].as_array().cloned().unwrap_or_default();
    if services.is_empty() {
        println!("no services programmed");
    }
    for s in services {
        println!(
            "{}  (table M={}, id {})",
            s["name"].as_str().unwrap_or(""),
            s["table_size"],
            s["service_id"]
        );
        for f in s["frontends"].as_array().into_iter().flatten() {
            let addr = f["addr"].as_str().unwrap_or("*");
            println!(
                "  {:<13} {}:{:<5}  {:>10} pkts {:>12} bytes",
                f["kind"].as_str().unwrap_or(""),
                addr,
                f["port"],
                f["packets"],
                f["bytes"]
            );
        }
        for b in s["backends"].as_array().into_iter().flatten() {
            println!(
                "    -> {}:{:<5} node {:<10} {:<11} w {:<3} slots {:<6} {:>10} pkts {:>12} bytes",
                b["addr"].as_str().unwrap_or(""),
                b["port"],
                b["node"].as_str().unwrap_or("-"),
                b["state"].as_str().unwrap_or(""),
                b["weight"],
                b["slots"],
                b["packets"],
                b["bytes"]
            );
        }
    }
}

pub fn conntrack_list(args: &OutputArgs) -> anyhow::Result<()> {
    let (maps, _) = open(args)?;
    let flows = conntrack::list(&maps)?;
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&flows)?),
        OutputFormat::Human => {
            println!(
                "{:<5} {:<21} {:<21} {:<21} {:>9} {:>9}",
                "PROTO", "CLIENT", "FRONTEND", "BACKEND", "AGE(s)", "IDLE(s)"
            );
            for f in &flows {
                let backend = match (f.backend, f.backend_port) {
                    (Some(a), Some(p)) => format!("{a}:{p}"),
                    _ => format!("(gone, id {})", f.backend_id),
                };
                println!(
                    "{:<5} {:<21} {:<21} {:<21} {:>9.1} {:>9.1}",
                    f.protocol,
                    format!("{}:{}", f.client, f.client_port),
                    format!("{}:{}", f.frontend, f.frontend_port),
                    backend,
                    f.age_s,
                    f.idle_s
                );
            }
            println!("{} flows", flows.len());
        }
    }
    Ok(())
}

pub fn stats(args: &OutputArgs) -> anyhow::Result<()> {
    let (maps, _) = open(args)?;
    let mut counters = serde_json::Map::new();
    for r in Reason::ALL {
        counters.insert(r.name().to_string(), json!(maps.global(r)?));
    }
    match args.output {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "counters": counters }))?
        ),
        OutputFormat::Human => {
            for (k, v) in &counters {
                println!("{k:<26} {v}");
            }
        }
    }
    Ok(())
}
