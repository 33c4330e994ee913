//! `xlb-bench forward --quick`, the CI smoke test of the forwarding benchmark: xlb, iptables,
//! nftables and the bare XDP forwarder at 1 and 100 Services, 20,000 paced packets each, in lab
//! namespaces, on the single-node lab and (`--lab dsr`) on the multi-node lab, where the traffic
//! enters at edge-a and crosses the fabric again to the pods on node-c and node-d. It checks
//! counts, not speed: every packet sent arrives, rewritten to a pod's address and target port
//! (or, for the forwarder, untouched), every pod gets some, and the path's own counters (xlb's,
//! the forwarders') account for the deliveries. Needs root and the release `xlb` binary
//! (scripts/test.sh builds it).
//!
//! The two tests take turns (a lock): each is bounded in time, and sharing the CPUs with the
//! other would measure the machine, not the smoke test.

mod common;

use std::sync::Mutex;
use std::time::Duration;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs `xlb-bench forward --quick EXTRA`, checks it passed within `limit` and that its JSON
/// (`<json_name>.json`) holds 8 correct runs (4 paths x 2 Service counts); returns the JSON.
fn quick(extra: &[&str], json_name: &str, limit: Duration) -> serde_json::Value {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let run = common::run_quick("forward", extra, json_name);
    assert!(
        run.elapsed < limit,
        "took {:?} (limit {limit:?})",
        run.elapsed
    );
    let runs = run.json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 8, "4 paths x 2 Service counts");
    for r in runs {
        assert_eq!(r["sent"], 20_000, "{r}");
        assert_eq!(r["delivered"]["packets"], 20_000, "{r}");
        assert!(r["problems"].as_array().unwrap().is_empty(), "{r}");
    }
    run.json
}

#[test]
fn forward_quick_counts_every_packet() {
    let json = quick(&[], "forward-quick", Duration::from_secs(180));
    assert_eq!(json["options"]["lab"], "single");
}

#[test]
fn forward_quick_dsr_counts_every_packet_through_the_edge() {
    let json = quick(
        &["--lab", "dsr"],
        "forward-quick-dsr",
        Duration::from_secs(120),
    );
    assert_eq!(json["options"]["lab"], "dsr");
    for r in json["runs"].as_array().unwrap() {
        let pods: Vec<&str> = r["per_pod"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[0].as_str().unwrap())
            .collect();
        assert_eq!(pods, ["c1", "c2", "d1"], "{r}");
        if r["path"] == "xlb" {
            // Every packet was encapsulated by edge-a's programs themselves (XDP_TX, or the TC
            // redirect a veth uplink takes), with no redirect elsewhere and no kernel detour.
            let note = r["note"].as_str().unwrap();
            assert!(
                note.contains(", redirect 0, ") && note.ends_with(", via the kernel 0"),
                "{r}"
            );
        }
    }
}
