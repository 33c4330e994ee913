//! `xlb-bench latency --quick`, the CI smoke test of the latency benchmark: real TCP
//! request/response (`rr`) and connect/request/reset (`crr`) transactions through xlb, iptables,
//! nftables and the bare XDP forwarder at 1 and 100 Services, in lab namespaces. It checks that
//! every transaction completes through every path, reaches the pods unmasqueraded, spreads
//! over every pod, and that the percentiles are consistent; not speed.
//! Needs root and the release `xlb` binary (scripts/test.sh builds it).

mod common;

#[test]
fn latency_quick_completes_every_transaction() {
    let run = common::run_quick("latency", &[], "latency-quick");
    assert!(
        run.elapsed < std::time::Duration::from_secs(120),
        "took {:?}",
        run.elapsed
    );
    let json = run.json;
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 16, "4 paths x 2 Service counts x 2 kinds");
    for r in runs {
        let l = &r["latency"];
        assert_eq!(l["count"], 300, "{r}");
        assert_eq!(r["errors"], 0, "{r}");
        assert!(r["problems"].as_array().unwrap().is_empty(), "{r}");
        let p = |k: &str| l[k].as_f64().unwrap();
        assert!(p("p50_us") > 0.0, "{r}");
        assert!(
            p("p50_us") <= p("p99_us")
                && p("p99_us") <= p("p999_us")
                && p("p999_us") <= p("max_us"),
            "{r}"
        );
        let per_pod = r["per_pod"].as_object().unwrap();
        if r["kind"] == "crr" {
            // Every transaction is a connection, greeted by one of the three pods.
            assert_eq!(per_pod.len(), 3, "{r}");
            let total: u64 = per_pod.values().map(|v| v.as_u64().unwrap()).sum();
            assert_eq!(total, 300, "{r}");
        }
    }
    let summary = json["summary"].as_array().unwrap();
    assert_eq!(summary.len(), 16, "{summary:?}");
}
