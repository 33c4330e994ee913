//! `xlb-bench forward --quick`, the CI smoke test of the forwarding benchmark: xlb, iptables,
//! nftables and the bare XDP forwarder at 1 and 100 Services, 20,000 paced packets each, in lab
//! namespaces. It checks counts, not speed: every packet sent arrives, rewritten to a pod's
//! address and target port (or, for the forwarder, untouched), and every pod gets some.
//! Needs root and the release `xlb` binary (scripts/test.sh builds it).

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn forward_quick_counts_every_packet() {
    let out = std::env::temp_dir().join(format!("xlb-bench-quick-{}", std::process::id()));
    let start = Instant::now();
    let run = Command::new(env!("CARGO_BIN_EXE_xlb-bench"))
        .args(["forward", "--quick", "--out"])
        .arg(&out)
        .output()
        .expect("running xlb-bench");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "xlb-bench forward --quick failed ({}):\n{stdout}\n{stderr}",
        run.status
    );
    assert!(stdout.contains("forward --quick: OK"), "{stdout}");
    assert!(
        start.elapsed() < Duration::from_secs(180),
        "took {:?}",
        start.elapsed()
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("forward-quick.json")).unwrap()).unwrap();
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 8, "4 paths x 2 Service counts");
    for r in runs {
        assert_eq!(r["sent"], 20_000, "{r}");
        assert_eq!(r["delivered"]["packets"], 20_000, "{r}");
        assert!(r["problems"].as_array().unwrap().is_empty(), "{r}");
    }
    // Nothing of the labs is left behind.
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("xlblab-{}-", run_pid(&stderr))))
        .collect();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    std::fs::remove_dir_all(&out).ok();
}

/// The pid in the lab namespace names the run printed (`xlblab-<pid>-...`), or a pid no
/// namespace can carry.
fn run_pid(stderr: &str) -> String {
    stderr
        .split("xlblab-")
        .nth(1)
        .and_then(|r| r.split('-').next())
        .unwrap_or("none")
        .to_string()
}
