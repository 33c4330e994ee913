//! The JSON shape of every output, written out by hand: a change to a type that changes what
//! `xlb ... -o json` prints fails here, so it is made on purpose (and only by adding fields).
use std::net::Ipv4Addr;

use serde_json::{Value, json};
use xlb_api::*;

fn flow() -> FlowRow {
    FlowRow {
        client: Ipv4Addr::new(198, 18, 0, 2),
        client_port: 40000,
        frontend: Ipv4Addr::new(198, 18, 100, 1),
        frontend_port: 80,
        protocol: "TCP".into(),
        backend: Some(Ipv4Addr::new(198, 18, 1, 10)),
        backend_port: Some(8080),
        backend_id: 3,
        age_s: 1.5,
        idle_s: 0.5,
        frontend_id: 7,
        service: Some("default/web:http/TCP".into()),
        backend_node: None,
    }
}

fn flow_json() -> Value {
    json!({
        "client": "198.18.0.2", "client_port": 40000,
        "frontend": "198.18.100.1", "frontend_port": 80, "protocol": "TCP",
        "backend": "198.18.1.10", "backend_port": 8080, "backend_id": 3,
        "age_s": 1.5, "idle_s": 0.5, "frontend_id": 7,
        "service": "default/web:http/TCP", "backend_node": null
    })
}

fn roundtrip<T>(value: &T, want: Value)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    assert_eq!(serde_json::to_value(value).unwrap(), want);
    let back: T = serde_json::from_value(want).unwrap();
    assert_eq!(&back, value);
}

#[test]
fn services() {
    let out = ServicesOutput {
        services: vec![ServiceStatus {
            name: "default/web:http/TCP".into(),
            protocol: "TCP".into(),
            service_id: 1,
            table_size: 16381,
            connections: 2,
            frontends: vec![FrontendStatus {
                addr: None,
                port: 30080,
                kind: "nodePort".into(),
                frontend_id: 4,
                packets: 10,
                bytes: 600,
                new_flows: 2,
                connections: 2,
            }],
            backends: vec![BackendStatus {
                addr: Ipv4Addr::new(198, 18, 1, 10),
                port: 8080,
                node: Some("node-c".into()),
                local: false,
                weight: 1,
                state: "ready".into(),
                backend_id: 3,
                slots: 16381,
                packets: 10,
                bytes: 600,
                new_flows: 2,
                connections: 2,
            }],
        }],
        conntrack: ConntrackUsage {
            entries: 2,
            capacity: 262144,
            active: 1,
        },
        census: Some(CensusStatus {
            state: "current".into(),
            taken_unix: Some(1000.5),
            age_s: Some(1.5),
            walk_s: Some(0.25),
        }),
    };
    roundtrip(
        &out,
        json!({
            "services": [{
                "name": "default/web:http/TCP", "protocol": "TCP", "service_id": 1,
                "table_size": 16381, "connections": 2,
                "frontends": [{
                    "addr": null, "port": 30080, "kind": "nodePort", "frontend_id": 4,
                    "packets": 10, "bytes": 600, "new_flows": 2, "connections": 2
                }],
                "backends": [{
                    "addr": "198.18.1.10", "port": 8080, "node": "node-c", "local": false,
                    "weight": 1, "state": "ready", "backend_id": 3, "slots": 16381,
                    "packets": 10, "bytes": 600, "new_flows": 2, "connections": 2
                }]
            }],
            "conntrack": { "entries": 2, "capacity": 262144, "active": 1 },
            "census": { "state": "current", "taken_unix": 1000.5, "age_s": 1.5, "walk_s": 0.25 }
        }),
    );
    assert!(out.services[0].backends[0].is_ready());
    assert!(out.service("default/web:http/TCP").is_some());
}

#[test]
fn stats() {
    let mut out = StatsOutput::default();
    out.counters.insert("forward_local".into(), 5);
    roundtrip(&out, json!({ "counters": { "forward_local": 5 } }));
    out.rates = Some([("forward_local".to_string(), 2.5)].into());
    out.interval_s = Some(2.0);
    roundtrip(
        &out,
        json!({
            "counters": { "forward_local": 5 },
            "rates": { "forward_local": 2.5 },
            "interval_s": 2.0
        }),
    );
    out.rates = None;
    out.interval_s = None;
    out.syn_guard = Some(SynGuardStatus {
        rate: 50000,
        engaged_cpus: 1,
        trips: 3,
        skipped: 70,
    });
    roundtrip(
        &out,
        json!({
            "counters": { "forward_local": 5 },
            "syn_guard": { "rate": 50000, "engaged_cpus": 1, "trips": 3, "skipped": 70 }
        }),
    );
}

#[test]
fn conntrack() {
    roundtrip(&vec![flow()], json!([flow_json()]));
    let mut new = flow_json();
    new["event"] = json!("new");
    new["time"] = json!(100.25);
    roundtrip(
        &WatchEvent::New {
            time: 100.25,
            flow: flow(),
        },
        new,
    );
    roundtrip(
        &WatchEvent::Start {
            time: 1.0,
            flows: 3,
            filter: "all flows".into(),
        },
        json!({ "event": "start", "time": 1.0, "flows": 3, "filter": "all flows" }),
    );
    roundtrip(
        &FlushReport {
            filter: "all flows".into(),
            matched: 1,
            flushed: 1,
            revnat_removed: 0,
            flows: vec![flow()],
        },
        json!({
            "filter": "all flows", "matched": 1, "flushed": 1, "revnat_removed": 0,
            "flows": [flow_json()]
        }),
    );
}

#[test]
fn maglev() {
    let out = MaglevOutput {
        services: vec![MaglevView {
            name: "default/web:http/TCP".into(),
            protocol: "TCP".into(),
            service_id: 1,
            table_size: 7,
            empty_slots: 0,
            max_over_ideal: 1.0,
            min_over_ideal: 1.0,
            backends: vec![MaglevBackendView {
                addr: Some(Ipv4Addr::new(198, 18, 1, 10)),
                port: Some(8080),
                node: None,
                state: "ready".into(),
                weight: 1,
                backend_id: 3,
                slots: 7,
                share: 1.0,
                ideal_share: 1.0,
            }],
            table: None,
        }],
    };
    roundtrip(
        &out,
        json!({
            "services": [{
                "name": "default/web:http/TCP", "protocol": "TCP", "service_id": 1,
                "table_size": 7, "empty_slots": 0, "max_over_ideal": 1.0, "min_over_ideal": 1.0,
                "backends": [{
                    "addr": "198.18.1.10", "port": 8080, "node": null, "state": "ready",
                    "weight": 1, "backend_id": 3, "slots": 7, "share": 1.0, "ideal_share": 1.0
                }]
            }]
        }),
    );
}
