//! `xlb-bench control --quick`, the CI smoke test of the control-plane benchmark: the real
//! `xlb run` in a lab node programs 1 and then 100 Services × 3 endpoints from scratch, then 5
//! changes of each kind (add a Service, remove it, add an endpoint to one) must each reach the
//! pinned maps. It checks that every Service and every change arrives, not speed.
//! Needs root and the release `xlb` binary (scripts/test.sh builds it).

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn control_quick_sees_every_service_and_change() {
    let out = std::env::temp_dir().join(format!("xlb-bench-control-quick-{}", std::process::id()));
    let start = Instant::now();
    let run = Command::new(env!("CARGO_BIN_EXE_xlb-bench"))
        .args(["control", "--quick", "--out"])
        .arg(&out)
        .output()
        .expect("running xlb-bench");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "xlb-bench control --quick failed ({}):\n{stdout}\n{stderr}",
        run.status
    );
    assert!(stdout.contains("control --quick: OK"), "{stdout}");
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "took {:?}",
        start.elapsed()
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("control-quick.json")).unwrap()).unwrap();
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "1 and 100 Services");
    for (r, n) in runs.iter().zip([1u64, 100]) {
        assert_eq!(r["services"], n, "{r}");
        assert_eq!(r["frontends_seen"], n, "every Service counted: {r}");
        assert_eq!(r["backends"], n * 3, "{r}");
        assert!(r["problems"].as_array().unwrap().is_empty(), "{r}");
        assert!(r["from_scratch_s"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["xlb_first"]["took_ms"].as_f64().unwrap() > 0.0, "{r}");
        assert_eq!(r["xlb_first"]["frontends_written"], n, "{r}");
        // Every Maglev table is counted, on top of the pinned maps.
        assert_eq!(r["memory"]["maglev_tables"], n, "{r}");
        assert!(r["memory"]["maglev_bytes"].as_u64().unwrap() > 0, "{r}");
        assert!(r["memory"]["hwm_end_kib"].as_u64().unwrap() > 0, "{r}");
        let changes = r["changes"].as_array().unwrap();
        assert_eq!(changes.len(), 15, "5 changes of each of 3 kinds: {r}");
        for c in changes {
            assert!(c["latency_ms"].as_f64().unwrap() > 0.0, "{c}");
            assert!(c["xlb"]["took_ms"].as_f64().unwrap() > 0.0, "{c}");
        }
        for (kind, field) in [
            ("add", "frontends_written"),
            ("remove", "frontends_removed"),
            ("scale", "tables_swapped"),
        ] {
            for c in changes.iter().filter(|c| c["kind"] == kind) {
                assert_eq!(c["xlb"][field], 1, "{kind} change: {c}");
            }
        }
    }
    // Nothing of the labs is left behind (the scenario itself checks that each run's pin
    // directory is gone after `xlb down`).
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
