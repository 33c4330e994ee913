//! End-to-end: interfaces that go away and come back while `xlb run` runs, and `xlb down --all`,
//! the command that removes everything xlb left on a node (also the one the Kubernetes
//! uninstall runs, `deploy/uninstall.yaml`).
//!
//! Needs root and an `xlb` binary (`$XLB_BIN`, `target/release/xlb` or `target/debug/xlb`).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use xlb_bench::lab::*;
use xlb_e2e::*;

const HEALTH_PORT: u16 = 10356;
const METRICS_PORT: u16 = 9464;

/// A GET from inside `host`'s namespace to 127.0.0.1:`port`; returns (status, body).
fn http_get(host: &Host, port: u16, path: &str) -> Result<(u16, String)> {
    let mut stream = host.netns().run(move || {
        Ok(TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(2),
        )?)
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
    let mut resp = String::new();
    stream.read_to_string(&mut resp)?;
    let (head, body) = resp.split_once("\r\n\r\n").context("no header end")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("bad status line in {head:?}"))?;
    Ok((code, body.to_string()))
}

/// Polls `/readyz` (every 100 ms, up to `timeout`) until it answers `want`; returns the body.
fn wait_readyz(host: &Host, want: u16, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let got = http_get(host, HEALTH_PORT, "/readyz");
        if let Ok((code, body)) = &got
            && *code == want
        {
            return Ok(body.clone());
        }
        if Instant::now() >= deadline {
            bail!("/readyz did not answer {want} within {timeout:?}; last: {got:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The value of the sample `series` (name and labels exactly as exposed) in `/metrics`.
fn metric(host: &Host, series: &str) -> Result<f64> {
    let (code, body) = http_get(host, METRICS_PORT, "/metrics")?;
    ensure!(code == 200, "/metrics answered {code}: {body}");
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .with_context(|| format!("no {series} in /metrics:\n{body}"))
}

fn ifindex(host: &Host, iface: &str) -> Result<u32> {
    let out = host.netns().ip(&["-j", "link", "show", iface])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    v[0]["ifindex"]
        .as_u64()
        .map(|i| i as u32)
        .with_context(|| format!("no ifindex in {out}"))
}

/// Every TCP connection to the VIP and to the NodePort completes and reaches the pod Maglev
/// predicts, with the client's address.
fn all_connections_work(t: &mut Local<'_, '_>, n: usize) -> Result<()> {
    let predictor = t.wait_programmed("http", &t.web.ready_addrs())?.maglev()?;
    for dst in [
        SocketAddrV4::new(t.vip(), WEB_PORT),
        SocketAddrV4::new(t.node_addr(), WEB_NODE_PORT),
    ] {
        let report = tcp_many(t.lab.client(), dst, n, IO_TIMEOUT);
        ensure!(
            report.failures.is_empty(),
            "connections to {dst} failed: {:?}",
            report.failures
        );
        for c in &report.conns {
            ensure!(c.seen == SocketAddrV4::new(t.client_addr(), c.src_port));
            let want = predictor.backend(t.client_addr(), c.src_port, *dst.ip(), dst.port());
            ensure!(
                want.and_then(|a| t.lab.pod_name(a)) == Some(c.pod.as_str()),
                "port {} to {dst} landed on {}, Maglev predicts {want:?}",
                c.src_port,
                c.pod
            );
        }
    }
    Ok(())
}

/// The uplink is deleted while `xlb run` runs and created again with the same name and
/// addresses (a new ifindex), as after a driver reset or a re-created veth: xlb reports it gone
/// (`/readyz` 503), attaches XDP and TC egress to the new interface (`/readyz` 200 again, the
/// re-attach counted), and connections to the VIP and the NodePort work as before.
#[test]
fn uplink_deleted_and_created_again_is_attached_again() {
    with_local_lab_options(
        |o| {
            o.extra_args.extend([
                format!("--health-addr=127.0.0.1:{HEALTH_PORT}"),
                format!("--metrics-addr=127.0.0.1:{METRICS_PORT}"),
            ])
        },
        |t| {
            let node = t.lab.host("node-a");
            wait_readyz(node, 200, PROGRAM_TIMEOUT)?;
            all_connections_work(t, 10)?;
            let attached = format!("xlb_iface_attached{{iface=\"{UPLINK}\"}}");
            let reattached = format!("xlb_iface_reattach_total{{iface=\"{UPLINK}\"}}");
            ensure!(metric(node, &attached)? == 1.0);
            ensure!(metric(node, &reattached)? == 0.0);
            let before = ifindex(node, UPLINK)?;

            t.lab.delete_uplink("node-a")?;
            let body = wait_readyz(node, 503, Duration::from_secs(10))?;
            ensure!(
                body.contains(UPLINK),
                "/readyz does not name {UPLINK}: {body}"
            );
            ensure!(metric(node, &attached)? == 0.0);

            t.lab.recreate_uplink("node-a")?;
            let after = ifindex(node, UPLINK)?;
            ensure!(
                after != before,
                "the new {UPLINK} has the old ifindex {before}"
            );
            wait_readyz(node, 200, Duration::from_secs(10))?;
            ensure!(
                xdp_attached(node, UPLINK)?,
                "no XDP program on the new {UPLINK}"
            );
            ensure!(metric(node, &attached)? == 1.0);
            ensure!(metric(node, &reattached)? == 1.0);
            // Replies leave through the TC egress program (their source becomes the VIP): the
            // connections prove it is attached to the new interface too.
            all_connections_work(t, 20)?;
            let log = t.xlb.log_tail(20_000);
            for line in [
                "interface gone",
                "interface back",
                "re-attached with new ifindex",
            ] {
                ensure!(log.contains(line), "the log has no {line:?}:\n{log}");
            }
            ensure!(
                log.contains(&format!("ifindex={after}")),
                "the log does not name the new ifindex {after}:\n{log}"
            );
            Ok(())
        },
    );
}

/// The ids of the links pinned under `ns_dir` (every layout version), by pin path.
fn pinned_link_ids(ns_dir: &Path) -> Result<Vec<(PathBuf, u64)>> {
    let mut out = Vec::new();
    for pin in tree(ns_dir) {
        if pin.parent().and_then(|p| p.file_name()) != Some(std::ffi::OsStr::new("links")) {
            continue;
        }
        let path = pin.to_string_lossy().into_owned();
        let mut cmd = std::process::Command::new("bpftool");
        cmd.args(["-j", "link", "show", "pinned", &path]);
        let json = xlb_bench::lab::netns::run_checked(&mut cmd)?;
        let v: serde_json::Value = serde_json::from_str(&json)?;
        let id = v["id"]
            .as_u64()
            .with_context(|| format!("no link id in {json}"))?;
        out.push((pin, id));
    }
    Ok(out)
}

/// Whether the kernel still has link `id` (a freed link is detached from its interface).
fn link_exists(id: u64) -> Result<bool> {
    let out = std::process::Command::new("bpftool")
        .args(["link", "show", "id", &id.to_string()])
        .output()?;
    Ok(out.status.success())
}

/// Every XDP and TC attachment in `host`'s namespace, as `bpftool net` lists them.
fn bpf_attachments(host: &Host) -> Result<String> {
    let out = host.netns().exec("bpftool", &["-j", "net", "show"])?;
    let v: serde_json::Value = serde_json::from_str(&out)
        .with_context(|| format!("parsing `bpftool -j net show`: {out}"))?;
    let mut found = Vec::new();
    for entry in v.as_array().into_iter().flatten() {
        for kind in ["xdp", "tc", "tcx"] {
            for a in entry[kind].as_array().into_iter().flatten() {
                found.push(format!("{kind}: {a}"));
            }
        }
    }
    Ok(found.join("\n"))
}

/// Paths under `dir`, recursively (empty when it does not exist).
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(tree(&p));
        }
        out.push(p);
    }
    out
}

/// The state directories `xlb run` keeps in /run/xlb for the pin directories under `ns_dir`.
fn state_dirs(ns_dir: &Path) -> Vec<PathBuf> {
    let flat = ns_dir
        .to_string_lossy()
        .trim_start_matches('/')
        .replace('/', "_");
    std::fs::read_dir("/run/xlb")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&flat))
        .map(|e| e.path())
        .collect()
}

/// Runs `xlb down --all` (or `command`, a manifest's command line with the binary replaced) in
/// `host`; fails unless it exits 0.
fn down_all(host: &Host, args: &[&str]) -> Result<String> {
    let out = xlb_cli(host, args)?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(
        out.status.success(),
        "`xlb {}` failed ({}): {stderr}",
        args.join(" "),
        out.status
    );
    Ok(stderr)
}

/// The node is left as if xlb had never run: no XDP or TC program on any interface, no pin in
/// the namespace's directory, no state in /run/xlb.
fn assert_clean(host: &Host, ns_dir: &Path, links: &[(PathBuf, u64)]) -> Result<()> {
    // bpftool 7.1 does not list TCX links under `net`: each link pinned before must be gone
    // from the kernel (freed links are detached; the kernel frees them soon after).
    let deadline = Instant::now() + Duration::from_secs(5);
    for (pin, id) in links {
        while link_exists(*id)? {
            ensure!(
                Instant::now() < deadline,
                "link {id} (pinned as {}) still exists",
                pin.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let left = bpf_attachments(host)?;
    ensure!(
        left.is_empty(),
        "attachments left in {}:\n{left}",
        host.name()
    );
    for iface in [UPLINK, "lxc0", "lxc1", "lxc2"] {
        ensure!(
            !xdp_attached(host, iface)?,
            "`ip link` shows XDP on {iface}"
        );
    }
    ensure!(!ns_dir.exists(), "pins left: {:?}", tree(ns_dir));
    let state = state_dirs(ns_dir);
    ensure!(state.is_empty(), "state left: {state:?}");
    Ok(())
}

/// Starts a second datapath on `iface` pinned in `pin_dir` (another layout version's
/// directory, as an older xlb would have left it, or a `--pin-dir` elsewhere), and waits until
/// it is attached; stops the process, leaving the datapath.
fn start_other_datapath<'lab>(
    t: &Local<'_, 'lab>,
    pin_dir: PathBuf,
    iface: &str,
) -> Result<XlbProcess<'lab>> {
    let mut opts = xlb_options(t.manifests);
    opts.ifaces = vec![iface.into()];
    opts.pin_dir = Some(pin_dir);
    let mut other = XlbProcess::start(t.lab, &opts)?;
    let key = t.web.port_key("http");
    other.wait_for_service(&key, &[], &t.web.ready_addrs(), PROGRAM_TIMEOUT)?;
    let node = t.lab.host("node-a");
    let deadline = Instant::now() + PROGRAM_TIMEOUT;
    while !xdp_attached(node, iface)? {
        ensure!(Instant::now() < deadline, "no XDP program on {iface}");
        std::thread::sleep(Duration::from_millis(100));
    }
    other.stop()?;
    Ok(other)
}

/// Removes a pin directory outside the namespace's (unpinning its links) when dropped.
struct PinDirGuard(PathBuf);

impl Drop for PinDirGuard {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// `xlb down --all` after `xlb run` on two interfaces, plus a datapath of another layout
/// version on a third, plus one pinned outside the namespace's directory (`--pin-dir`) on a
/// fourth: every link, pin and state file of the namespace goes, on every interface, for both
/// layouts, and the fourth interface's programs are detached; `bpftool` and `ip link` show no
/// program; and it succeeds again when there is nothing left.
#[test]
fn down_all_removes_every_attachment_and_pin() {
    let elsewhere = PathBuf::from(format!(
        "/sys/fs/bpf/xlb-e2e-down-all-{}",
        std::process::id()
    ));
    let _guard = PinDirGuard(elsewhere.clone());
    with_local_lab_options(
        |o| o.ifaces = vec![UPLINK.into(), "lxc0".into()],
        |t| {
            let node = t.lab.host("node-a");
            let own = default_pin_dir(node);
            let ns_dir = own
                .parent()
                .context("pin dir without parent")?
                .to_path_buf();
            let mut other = start_other_datapath(t, ns_dir.join("v0-older-layout"), "lxc1")?;
            let third = start_other_datapath(t, elsewhere.clone(), "lxc2")?;
            ensure!(!bpf_attachments(node)?.is_empty(), "bpftool sees nothing");
            let status = t.xlb.stop()?;
            ensure!(status.success(), "xlb run exited with {status}");
            ensure!(!state_dirs(&ns_dir).is_empty(), "no state in /run/xlb");
            // XDP, TC egress and TC ingress on each of the three interfaces.
            let links = pinned_link_ids(&ns_dir)?;
            ensure!(links.len() == 9, "pinned links: {links:?}");

            let log = down_all(node, &["down", "--all"])?;
            for link in [
                "xdp-eth0",
                "tc-egress-eth0",
                "xdp-lxc0",
                "xdp-lxc1",
                "xdp on lxc2",
                "tc egress on lxc2",
            ] {
                ensure!(log.contains(link), "the log does not name {link}:\n{log}");
            }
            assert_clean(node, &ns_dir, &links)?;
            // Without the datapath nothing answers on the VIP.
            let vip = SocketAddrV4::new(t.vip(), WEB_PORT);
            ensure!(connect_tcp(t.lab.client(), vip, None, Duration::from_millis(500)).is_err());

            let again = down_all(node, &["down", "--all"])?;
            ensure!(
                again.contains("nothing of xlb's left"),
                "the second run says: {again}"
            );
            assert_clean(node, &ns_dir, &links)?;
            // `--iface` and `--all` do not mix; neither is an error message of many lines.
            let out = xlb_cli(node, &["down", "--all", "--iface", UPLINK])?;
            ensure!(!out.status.success(), "--all with --iface was accepted");
            t.xlb.keep_datapath();
            other.keep_datapath();
            // `third`'s own `xlb down --pin-dir` (when dropped) removes its pins and state.
            drop(third);
            ensure!(!elsewhere.exists(), "{} is left", elsewhere.display());
            Ok(())
        },
    );
}

/// The Kubernetes uninstall (`deploy/uninstall.yaml`), as far as it runs without a cluster: the
/// manifest is a DaemonSet the API server accepts as such (it parses into the API's types), on
/// every node (every taint tolerated) and in the host's network namespace, whose init
/// container runs the image's `xlb` with `down --all` and the host's bpffs and `/run/xlb` at
/// the paths xlb uses, with the capabilities that needs; it is not part of the install
/// (`kubectl apply -k deploy/` must not uninstall). Then that command line, run on a lab node
/// where xlb ran, leaves no program attached and no pin behind.
#[test]
fn kubernetes_uninstall_manifest_cleans_a_lab_node() {
    use k8s_openapi::api::apps::v1::DaemonSet;
    let deploy = xlb_bench::lab::xlb::workspace_dir().join("deploy");
    let text = std::fs::read_to_string(deploy.join("uninstall.yaml")).expect("uninstall.yaml");
    let ds: DaemonSet = yaml_serde::from_str(&text).expect("uninstall.yaml is a DaemonSet");
    let kustomization =
        std::fs::read_to_string(deploy.join("kustomization.yaml")).expect("kustomization");
    assert!(
        !kustomization.contains("uninstall.yaml"),
        "the install (kustomization.yaml) includes the uninstall"
    );
    assert_eq!(ds.metadata.namespace.as_deref(), Some("kube-system"));
    let spec = ds.spec.template.spec.expect("pod spec");
    assert_eq!(
        spec.host_network,
        Some(true),
        "not in the host's network namespace"
    );
    assert!(
        spec.tolerations
            .iter()
            .flatten()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()),
        "does not tolerate every taint: some nodes would keep their datapath"
    );
    let init = spec.init_containers.expect("init containers");
    assert_eq!(init.len(), 1);
    let down = &init[0];
    let command = down.command.clone().expect("command");
    let args = down.args.clone().expect("args");
    assert_eq!(args, ["down", "--all"]);
    let dockerfile = std::fs::read_to_string(deploy.join("Dockerfile")).expect("Dockerfile");
    assert!(
        dockerfile.contains(&format!("ENTRYPOINT [\"{}\"]", command[0])),
        "the image has no xlb at {}",
        command[0]
    );
    assert_eq!(command.len(), 1, "{command:?}");
    let volumes = spec.volumes.expect("volumes");
    for path in ["/sys/fs/bpf", "/run/xlb"] {
        let mount = down
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == path)
            .unwrap_or_else(|| panic!("{path} is not mounted"));
        let volume = volumes
            .iter()
            .find(|v| v.name == mount.name)
            .expect("the mount's volume");
        let host = volume.host_path.as_ref().expect("a hostPath volume");
        assert_eq!(host.path, path, "{path} is not the host's");
        assert_ne!(mount.read_only, Some(true), "{path} is read-only");
    }
    let security = down.security_context.clone().expect("securityContext");
    assert_eq!(security.run_as_user, Some(0));
    let added = security
        .capabilities
        .and_then(|c| c.add)
        .unwrap_or_default();
    for cap in ["BPF", "NET_ADMIN"] {
        assert!(
            security.privileged == Some(true) || added.iter().any(|c| c == cap),
            "no {cap}"
        );
    }

    with_local_lab_options(
        |o| o.ifaces = vec![UPLINK.into(), "lxc0".into()],
        |t| {
            let node = t.lab.host("node-a");
            let ns_dir = default_pin_dir(node)
                .parent()
                .context("pin dir without parent")?
                .to_path_buf();
            t.xlb.stop()?;
            // XDP, TC egress and TC ingress on each of the two interfaces.
            let links = pinned_link_ids(&ns_dir)?;
            ensure!(links.len() == 6, "pinned links: {links:?}");
            // The init container's command line, with this build's binary for the image's.
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            down_all(node, &args)?;
            assert_clean(node, &ns_dir, &links)?;
            t.xlb.keep_datapath();
            Ok(())
        },
    );
}
