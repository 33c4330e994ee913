//! End-to-end, single node, Kubernetes source: the real `xlb run --kubeconfig` on `node-a`,
//! reading a fake API server (real list/watch protocol, `control/tests/kube_fake`) that listens
//! on 127.0.0.1 inside node-a's namespace, and real TCP, UDP and HTTP from the client namespace.
//! The cluster is driven through the API: endpoints turn terminating and go, the API server goes
//! away and forgets its history (410 Gone), the Service switches to
//! `externalTrafficPolicy: Local` and gets a healthCheckNodePort, and is deleted.
//!
//! Needs root and an `xlb` binary (`$XLB_BIN`, `target/release/xlb` or `target/debug/xlb`).

#[path = "../control/tests/kube_fake/mod.rs"]
mod kube_fake;

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube_fake::{FakeApiServer, Outage};
use serde::Deserialize as _;
use xlb_bench::lab::*;
use xlb_e2e::{IO_TIMEOUT, PROGRAM_TIMEOUT};

/// Where `xlb run` serves /readyz inside node-a's namespace.
const HEALTH_ADDR: &str = "127.0.0.1:10356";
const HEALTH_CHECK_NODE_PORT: u16 = 32100;

/// `xlb run --kubeconfig` in a lab node. Dropping it stops the process and runs
/// `xlb down`, so nothing outlives the test.
struct KubeXlb<'lab> {
    host: &'lab Host,
    child: Option<Child>,
    log: PathBuf,
}

impl<'lab> KubeXlb<'lab> {
    fn start(lab: &'lab Lab, node: &str, kubeconfig: &Path) -> Result<KubeXlb<'lab>> {
        let host = lab.host(node);
        let log = lab.workdir().join(format!("xlb-kube-{node}.log"));
        let out = File::create(&log)?;
        let mut cmd = host.netns().command(xlb_binary()?);
        cmd.args(["run", "--iface", UPLINK, "--node-name", node])
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--health-addr", HEALTH_ADDR, "--maglev-table-size", "251"]);
        if let Ok(mode) = std::env::var("XLB_XDP_MODE") {
            cmd.args(["--xdp-mode", &mode]);
        }
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        // SAFETY: prctl is async-signal-safe; the kernel stops xlb if the test dies.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd.spawn().context("starting xlb run --kubeconfig")?;
        Ok(KubeXlb {
            host,
            child: Some(child),
            log,
        })
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(4000);
        String::from_utf8_lossy(&text[start..]).into_owned()
    }

    fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            bail!("xlb run exited: {status}");
        }
        Ok(())
    }

    /// GET on `xlb run`'s health address, from inside its namespace.
    fn probe(&self, path: &str) -> Result<u16> {
        let addr: SocketAddr = HEALTH_ADDR.parse()?;
        let path = path.to_string();
        let (status, _) = self
            .host
            .netns()
            .run(move || http_get(addr, &path, Duration::from_secs(2)))?;
        Ok(status)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + PROGRAM_TIMEOUT;
        loop {
            self.check_running()?;
            if matches!(self.probe("/readyz"), Ok(200)) {
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "xlb never became ready");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for KubeXlb<'_> {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = xlb_cli(self.host, &["down", "--iface", UPLINK]);
    }
}

fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: xlb\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("bad HTTP answer {out:?}"))?;
    Ok((status, out))
}

/// Puts the objects of a lab manifest (as `kubectl get -o yaml` prints them) into the API.
fn publish(api: &FakeApiServer, yaml: &str) -> Result<()> {
    for doc in yaml_serde::Deserializer::from_str(yaml) {
        let value = yaml_serde::Value::deserialize(doc)?;
        match value.get("kind").and_then(|k| k.as_str()) {
            Some("Service") => api.apply(&yaml_serde::from_value::<Service>(value)?),
            Some("EndpointSlice") => api.apply(&yaml_serde::from_value::<EndpointSlice>(value)?),
            Some("Node") => api.apply(&yaml_serde::from_value::<Node>(value)?),
            other => bail!("unexpected object {other:?}"),
        };
    }
    Ok(())
}

/// Pods that new connections from the client to `dst` reach (20 connections).
fn reached(client: &Host, dst: SocketAddrV4) -> Result<Vec<String>> {
    let report = tcp_many(client, dst, 20, IO_TIMEOUT);
    ensure!(
        report.failures.is_empty(),
        "connections to {dst} failed: {:?}",
        report.failures
    );
    Ok(report.per_pod().into_keys().collect())
}

/// Retries `check` (new connections each time) until it passes or PROGRAM_TIMEOUT ends.
fn eventually(what: &str, mut check: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + PROGRAM_TIMEOUT;
    let mut last = None;
    while Instant::now() < deadline {
        match check() {
            Ok(true) => return Ok(()),
            Ok(false) => last = None,
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    match last {
        Some(e) => Err(e.context(format!("never: {what}"))),
        None => bail!("never: {what}"),
    }
}

#[test]
fn kubernetes_api_drives_real_traffic() {
    let lab = Lab::single_node().expect("building the lab");
    let servers = PodServers::start(&lab, POD_PORT).expect("starting the pod servers");
    let node = lab.host("node-a");
    let listener = node
        .netns()
        .run(|| Ok(std::net::TcpListener::bind("127.0.0.1:0")?))
        .expect("binding the fake API server in node-a");
    let api = FakeApiServer::start_on(listener);
    let kubeconfig = lab.workdir().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    let web = ServiceDef::web(lab.spec());
    for n in ManifestSet::nodes_of(lab.spec()) {
        publish(&api, &n.to_yaml()).expect("nodes");
    }
    publish(&api, &web.to_yaml()).expect("web");

    let mut xlb = KubeXlb::start(&lab, "node-a", &kubeconfig).expect("starting xlb");
    if let Err(e) = scenario(&lab, &servers, &api, &web, &mut xlb) {
        panic!("{e:#}\n--- xlb log ---\n{}", xlb.log_tail());
    }
}

fn scenario(
    lab: &Lab,
    servers: &PodServers<'_>,
    api: &FakeApiServer,
    web: &ServiceDef,
    xlb: &mut KubeXlb<'_>,
) -> Result<()> {
    let client = lab.client();
    let node_addr = lab.host("node-a").addr();
    let vip = SocketAddrV4::new(lab.spec().vips[0], WEB_PORT);
    let node_port = SocketAddrV4::new(node_addr, WEB_NODE_PORT);

    // Not ready before the first sync is programmed, ready after.
    xlb.wait_ready()?;
    ensure!(xlb.probe("/livez")? == 200);

    // 1. Every pod is reached through the VIP and the NodePort, and sees the real client.
    for dst in [vip, node_port] {
        let report = tcp_many(client, dst, 40, IO_TIMEOUT);
        ensure!(report.failures.is_empty(), "{dst}: {:?}", report.failures);
        ensure!(report.per_pod().len() == 3, "{dst}: {:?}", report.per_pod());
        for c in &report.conns {
            ensure!(*c.seen.ip() == client.addr(), "{} saw {}", c.pod, c.seen);
        }
    }
    let reply = udp_request(client, node_port, None, IO_TIMEOUT)?;
    ensure!(reply.from == node_port, "UDP reply from {}", reply.from);

    // 2. pod-2 starts terminating: its open connection keeps working, new ones avoid it.
    let mut open = None;
    for _ in 0..200 {
        let c = connect_tcp(client, vip, Some(client.alloc_port()), IO_TIMEOUT)?;
        if c.pod == "pod-2" {
            open = Some(c);
            break;
        }
    }
    let mut open = open.context("no connection landed on pod-2")?;
    let mut draining = web.clone();
    for e in &mut draining.endpoints {
        if e.pod == "pod-2" {
            e.ready = false;
            e.terminating = true;
        }
    }
    publish(api, &draining.to_yaml())?;
    eventually("new connections avoid the terminating pod-2", || {
        Ok(!reached(client, vip)?.contains(&"pod-2".to_string()))
    })?;
    ensure!(open.exchange("still there")? == "still there");

    // 3. The API server goes away, changes, forgets its history and comes back (410 Gone,
    //    relist). Meanwhile the datapath keeps serving the last state.
    api.set_outage(Outage::Refuse);
    let gone = draining.clone().without_pod("pod-3");
    publish(api, &gone.to_yaml())?;
    api.compact();
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let pods = reached(client, vip)?;
        ensure!(
            pods == ["pod-1", "pod-3"],
            "during the outage new connections reached {pods:?}"
        );
    }
    ensure!(xlb.probe("/readyz")? == 200, "not ready during the outage");
    api.set_outage(Outage::None);
    eventually("pod-3 gone after the relist", || {
        Ok(reached(client, vip)? == ["pod-1"])
    })?;
    ensure!(open.exchange("after the relist")? == "after the relist");
    drop(open);

    // 4. externalTrafficPolicy: Local with a healthCheckNodePort: the client (as a cloud load
    //    balancer would) asks node-a, which has one ready local endpoint.
    let local_yaml = gone.to_yaml().replace(
        "externalTrafficPolicy: Cluster",
        &format!("externalTrafficPolicy: Local\n  healthCheckNodePort: {HEALTH_CHECK_NODE_PORT}"),
    );
    publish(api, &local_yaml)?;
    let hc = SocketAddr::from((node_addr, HEALTH_CHECK_NODE_PORT));
    eventually(
        "the health check answers 200 with one local endpoint",
        || {
            let (status, body) = client.netns().run(move || http_get(hc, "/", IO_TIMEOUT))?;
            Ok(status == 200 && body.contains("\"localEndpoints\": 1"))
        },
    )?;
    ensure!(reached(client, vip)? == ["pod-1"]);
    // No ready local endpoint left: 503, and the VIP's packets are dropped at node-a.
    let mut none = gone.clone();
    for e in &mut none.endpoints {
        e.ready = false;
        e.terminating = true;
    }
    publish(
        api,
        &none.to_yaml().replace(
            "externalTrafficPolicy: Cluster",
            &format!(
                "externalTrafficPolicy: Local\n  healthCheckNodePort: {HEALTH_CHECK_NODE_PORT}"
            ),
        ),
    )?;
    eventually("the health check answers 503", || {
        let (status, body) = client.netns().run(move || http_get(hc, "/", IO_TIMEOUT))?;
        Ok(status == 503 && body.contains("\"localEndpoints\": 0"))
    })?;

    // 5. The Service is deleted: the VIP is no longer served, the health check port closes.
    api.delete::<Service>("default", "web");
    eventually("the VIP stops answering", || {
        Ok(connect_tcp(client, vip, None, Duration::from_millis(500)).is_err())
    })?;
    eventually("the health check port closes", || {
        client
            .netns()
            .run(move || Ok(TcpStream::connect_timeout(&hc, Duration::from_millis(500)).is_err()))
    })?;
    xlb.check_running()?;
    ensure!(
        servers.pod("pod-2").stats.tcp_connections() >= 1,
        "pod-2 served nothing"
    );
    Ok(())
}
