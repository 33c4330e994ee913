//! End-to-end, single node, with the egress program attached the way kernels without TCX need
//! it (`xlb run --tc-attach legacy`: a cls_bpf filter on the uplink's clsact qdisc): replies are
//! rewritten through that filter, a restarted `xlb run` adopts it without adding a second one,
//! and `xlb down` removes it.
//!
//! Needs root, `tc` (iproute2) and an `xlb` binary (`$XLB_BIN`, `target/release/xlb` or
//! `target/debug/xlb`).

use std::net::SocketAddrV4;

use anyhow::{Result, ensure};
use xlb_bench::lab::*;
use xlb_e2e::*;

/// `--tc-attach legacy` for every `xlb run` of the test.
fn legacy(opts: &mut XlbOptions) {
    opts.extra_args
        .extend(["--tc-attach".to_string(), "legacy".to_string()]);
}

/// The egress filters of `iface` in `host` that run xlb's program, as `tc` lists them.
fn xlb_filters(host: &Host, iface: &str) -> Result<Vec<String>> {
    let out = host
        .netns()
        .exec("tc", &["filter", "show", "dev", iface, "egress"])?;
    Ok(out
        .lines()
        .filter(|l| l.contains("xlb_tc_egress"))
        .map(str::to_string)
        .collect())
}

/// Waits until `xlb` (started on a datapath left attached, which `xlb services` already shows
/// programmed) has attached or adopted and programmed it itself.
fn wait_ready(xlb: &mut XlbProcess<'_>) -> Result<()> {
    let deadline = std::time::Instant::now() + PROGRAM_TIMEOUT;
    while !xlb
        .log_tail(100_000)
        .contains("ready: the first full configuration")
    {
        if let Some(st) = xlb.try_exit() {
            anyhow::bail!("xlb run exited ({st}): {}", xlb.log_tail(2000));
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "xlb run not ready: {}",
            xlb.log_tail(2000)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(())
}

/// Connections to the VIP complete (every reply went through the egress rewrite) and the
/// datapath counted the rewrites.
fn vip_answers(t: &Local<'_, '_>, xlb: &XlbProcess<'_>, n: usize) -> Result<()> {
    let before = xlb.counter("reply_rewritten")?;
    let vip = SocketAddrV4::new(t.vip(), WEB_PORT);
    let report = tcp_many(t.lab.client(), vip, n, IO_TIMEOUT);
    ensure!(
        report.failures.is_empty(),
        "connections to {vip}: {:?}",
        report.failures
    );
    ensure!(report.conns.len() == n);
    ensure!(
        report.conns.iter().all(|c| *c.seen.ip() == t.client_addr()),
        "a pod saw another source than the client"
    );
    let rewritten = xlb.counter("reply_rewritten")? - before;
    ensure!(
        rewritten >= n as u64,
        "{n} connections but only {rewritten} replies rewritten"
    );
    Ok(())
}

#[test]
fn legacy_tc_attach_rewrites_replies_is_adopted_on_restart_and_removed_by_down() {
    with_local_lab_options(legacy, |t| {
        let node = t.lab.host("node-a");
        let filters = xlb_filters(node, UPLINK)?;
        ensure!(
            filters.len() == 1,
            "want one cls_bpf filter of xlb on {UPLINK} egress, tc shows {filters:?}"
        );
        let pins = default_pin_dir(node);
        ensure!(
            !pins
                .join("links")
                .join(format!("tc-egress-{UPLINK}"))
                .exists(),
            "a TCX link is pinned although --tc-attach legacy"
        );
        let stats = t.xlb.stats()?;
        ensure!(
            stats
                .attachments
                .iter()
                .any(|a| a.iface == UPLINK && a.tc_attach == "legacy"),
            "xlb stats shows {:?}",
            stats.attachments
        );
        vip_answers(t, t.xlb, 20)?;

        // A connection open across the restart keeps working: the filter is never missing.
        let vip = SocketAddrV4::new(t.vip(), WEB_PORT);
        let mut conn = connect_tcp(t.lab.client(), vip, None, IO_TIMEOUT)?;
        ensure!(conn.exchange("before restart")? == "before restart");
        let status = t.xlb.stop()?;
        ensure!(status.success(), "xlb run exited with {status} on SIGTERM");
        t.xlb.keep_datapath();
        let mut opts = xlb_options(t.manifests);
        legacy(&mut opts);
        let mut again = XlbProcess::start(t.lab, &opts)?;
        wait_ready(&mut again)?;
        let filters = xlb_filters(node, UPLINK)?;
        ensure!(
            filters.len() == 1,
            "after the restart tc shows {filters:?} on {UPLINK} egress"
        );
        ensure!(conn.exchange("after restart")? == "after restart");
        vip_answers(t, &again, 20)?;
        drop(conn);

        drop(again); // stops it and runs `xlb down`
        let filters = xlb_filters(node, UPLINK)?;
        ensure!(filters.is_empty(), "xlb down left {filters:?} on {UPLINK}");
        ensure!(!xdp_attached(node, UPLINK)?, "xlb down left XDP attached");
        ensure!(!pins.exists(), "xlb down left pins in {}", pins.display());
        Ok(())
    });
}

/// Switching `--tc-attach` between runs swaps the attachment: one egress program at any time,
/// and replies rewritten in each mode.
#[test]
fn switching_modes_between_runs_leaves_one_egress_program() {
    with_local_lab_options(legacy, |t| {
        let node = t.lab.host("node-a");
        let tcx_pin = default_pin_dir(node)
            .join("links")
            .join(format!("tc-egress-{UPLINK}"));
        t.xlb.stop()?;
        t.xlb.keep_datapath();
        for (mode, filters, pinned) in [("tcx", 0, true), ("legacy", 1, false)] {
            let mut opts = xlb_options(t.manifests);
            opts.extra_args
                .extend(["--tc-attach".to_string(), mode.to_string()]);
            let mut xlb = XlbProcess::start(t.lab, &opts)?;
            wait_ready(&mut xlb)?;
            let shown = xlb_filters(node, UPLINK)?;
            ensure!(
                shown.len() == filters,
                "--tc-attach {mode}: tc shows {shown:?} on {UPLINK} egress"
            );
            ensure!(
                tcx_pin.exists() == pinned,
                "--tc-attach {mode}: TCX link pinned: {}",
                tcx_pin.exists()
            );
            vip_answers(t, &xlb, 10)?;
            xlb.stop()?;
            if mode == "legacy" {
                drop(xlb); // runs `xlb down`
            } else {
                xlb.keep_datapath();
            }
        }
        ensure!(
            xlb_filters(node, UPLINK)?.is_empty(),
            "xlb down left a filter"
        );
        Ok(())
    });
}
