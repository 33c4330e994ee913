//! `xlb-bench control --quick`, the CI smoke test of the control-plane benchmark: the real
//! `xlb run` in a lab node programs 1 and then 100 Services × 3 endpoints from scratch, then 5
//! changes of each kind (add a Service, remove it, add an endpoint to one) must each reach the
//! pinned maps; then `/metrics` and `xlb services` are timed against 20,000 synthetic flows and
//! kube-proxy's rules are loaded for the same Services. It checks that everything arrives and
//! is measured, not speed.
//! Needs root and the release `xlb` binary (scripts/test.sh builds it).

mod common;

use std::time::Duration;

#[test]
fn control_quick_sees_every_service_and_change() {
    let run = common::run_quick("control", &[], "control-quick");
    assert!(
        run.elapsed < Duration::from_secs(60),
        "took {:?}",
        run.elapsed
    );
    let json = run.json;
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
        ] {
            for c in changes.iter().filter(|c| c["kind"] == kind) {
                assert_eq!(c["xlb"][field], 1, "{kind} change: {c}");
            }
        }
        // A scale change rewrites one table: in place when its size stays, else by a swap.
        for c in changes.iter().filter(|c| c["kind"] == "scale") {
            let tables = c["xlb"]["tables_swapped"].as_u64().unwrap()
                + c["xlb"]["tables_patched"].as_u64().unwrap();
            assert_eq!(tables, 1, "scale change: {c}");
        }
    }
    for r in runs {
        // /metrics and `xlb services` against 20,000 synthetic flows, and the census of them.
        let o = &r["observe"];
        assert_eq!(o["flows"], 20_000, "{r}");
        assert_eq!(o["scrapes"], 20, "{r}");
        assert!(o["scrape_p99_ms"].as_f64().unwrap() > 0.0, "{r}");
        assert!(o["scrape_bytes"].as_u64().unwrap() > 1000, "{r}");
        assert!(o["services_p50_ms"].as_f64().unwrap() > 0.0, "{r}");
        assert!(o["full_walk_s"].as_f64().unwrap() > 0.0, "{r}");
        assert!(o["census_entries"].as_u64().unwrap() >= 20_000, "{r}");
        assert!(o["census_cpu_s"].as_f64().unwrap() > 0.0, "{r}");
        assert_eq!(o["census_per_s"], 50_000, "the default pace: {r}");
        // kube-proxy's rules for the same Services: a rule per Service and three per endpoint.
        let b = &r["baselines"];
        let n = r["services"].as_u64().unwrap();
        assert!(b["iptables_rules"].as_u64().unwrap() >= n * 7, "{r}");
        assert!(b["iptables_restore_s"].as_f64().unwrap() > 0.0, "{r}");
        assert!(b["nft_s"].as_f64().unwrap() > 0.0, "{r}");
    }
    // (run_quick checked that no lab namespace is left; the scenario itself checks that each
    // run's pin directory is gone after `xlb down`.)
}
