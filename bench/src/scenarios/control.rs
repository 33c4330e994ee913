//! `xlb-bench control`: the control plane of the real `xlb run`, measured from outside.
//!
//! For each number of Services N, a fresh single-node lab (client — node-a — pods, network
//! namespaces, 198.18.0.0/15 only) gets a manifest directory of N LoadBalancer Services (one
//! TCP port each, VIP [`traffic::vip`]`(s)`) × E endpoints, and `xlb run --manifests` is started
//! on node-a. Then:
//!
//! * **from scratch**: the time from starting the process until the datapath maps hold every
//!   Service: each Service's frontend key in `XLB_FRONTENDS` and a Maglev table at its service
//!   index in `XLB_MAGLEV`. Read directly from the pinned maps (O(1) lookups every
//!   millisecond), not through the `xlb` CLI; xlb's own `took_ms` of generation 1 (compile and
//!   reconcile) comes from its JSON log.
//! * **change latency**: one manifest change at a time, each file written atomically (a
//!   dotfile renamed into place, or one file removed), timed from just before the rename to the
//!   moment the change is visible in the maps: *add* (a new Service: its frontend key appears
//!   with a table), *remove* (that Service: its key disappears) and *scale* (one endpoint added
//!   to an existing Service: the Maglev table at its service index lists one more backend,
//!   whether it was swapped for a new inner map, a new size, or rewritten in place). xlb finds changes by polling a fingerprint of the files
//!   every `--poll-ms`, so that interval is part of every latency (changes are written at a
//!   random phase of it). Before the next change, xlb's log must show the change's generation
//!   programmed.
//! * **memory**: `memlock` (`/proc/self/fdinfo`) of the 14 pinned maps and of every Maglev
//!   table the Services point at, and `VmHWM`/`VmRSS` of the `xlb run` process.
//!
//! Endpoints are synthetic pod addresses in 198.18.32.0–198.18.255.255 that exist nowhere in the
//! lab (nothing is sent: this measures programming only), all with node-a as `nodeName`, so every
//! backend is local. Every (address, target port) is distinct: when N × E exceeds the pool,
//! Services further on use the next target port (each address then serves several ports).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::maps::{ArrayOfMaps, HashMap as BpfHashMap, Map, MapData, MapError, MapInfo};
use lb_common::maps::{
    ALL_MAPS, CtValue, FlowKey, FrontendKey, FrontendValue, IPPROTO_TCP, MAP_CONNTRACK,
    MAP_FRONTENDS, MAP_MAGLEV, MAX_BACKENDS, MAX_FRONTENDS, MAX_SERVICES,
};

use crate::baseline::{self, SvcPort};
use crate::lab::netns::xlb_pin_dir;
use crate::lab::unix_now;
use crate::lab::{
    EndpointDef, Lab, ManifestDir, ManifestSet, PortDef, ServiceDef, XlbOptions, XlbProcess,
    check_interrupted,
};
use crate::say;
use crate::scenarios::Machine;
use crate::traffic::{self, SERVICE_PORT, TARGET_PORT};

/// Synthetic pod addresses of the benchmark endpoints: 198.18.32.0 – 198.18.255.255 (the lab's
/// own hosts live in 198.18.0.0/20, the VIPs in 198.19.0.0/16).
const POD_POOL_BASE: Ipv4Addr = Ipv4Addr::new(198, 18, 32, 0);
const POD_POOL_SIZE: u32 = 224 * 256;
/// Endpoints the changes add (198.18.16.0 – 198.18.31.255), one fresh address each.
const EXTRA_BASE: Ipv4Addr = Ipv4Addr::new(198, 18, 16, 0);
const EXTRA_SIZE: u32 = 16 * 256;
/// Name of the Service the *add* and *remove* changes create and delete.
const ADDED: &str = "svc-added";
/// Where `xlb run` pins its maps under its pin directory (`control/src/pins.rs`).
const MAPS_SUBDIR: &str = "maps";

#[derive(Clone, Debug, serde::Serialize)]
pub struct ControlOptions {
    /// Numbers of Services, one lab each.
    pub services: Vec<u32>,
    /// Endpoints per Service.
    pub endpoints: u32,
    /// Changes of each kind per Service count.
    pub changes: u32,
    /// `xlb run --poll-ms`: how often xlb checks the manifests (part of every change latency).
    pub poll_ms: u64,
    pub xdp_mode: String,
    /// Synthetic flows written to the connection table of a second `xlb run` for the
    /// observability figures (0: not measured).
    pub conntrack_entries: u32,
    /// `/metrics` scrapes timed against that table.
    pub scrapes: u32,
    /// Load kube-proxy's rules for the same cluster with `iptables-restore` and `nft -f`.
    pub baselines: bool,
}

/// A manifest change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// A new Service (new VIP): its frontend key appears, with a Maglev table.
    Add,
    /// That Service deleted: its frontend key disappears.
    Remove,
    /// One endpoint added to an existing Service: its Maglev table is swapped.
    Scale,
}

impl ChangeKind {
    pub const ALL: [ChangeKind; 3] = [ChangeKind::Add, ChangeKind::Remove, ChangeKind::Scale];
    pub fn name(&self) -> &'static str {
        match self {
            ChangeKind::Add => "add",
            ChangeKind::Remove => "remove",
            ChangeKind::Scale => "scale",
        }
    }
}

/// The fields of one `programmed` line of xlb's JSON log.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Generation {
    pub generation: u64,
    pub took_ms: f64,
    pub since_change_ms: f64,
    pub service_ports: u64,
    pub services_compiled: u64,
    pub frontends_written: u64,
    pub frontends_removed: u64,
    pub tables_swapped: u64,
    /// Tables rewritten in place (same size): a scale change is one of these or a swap.
    pub tables_patched: u64,
    pub backends_written: u64,
    /// The line's timestamp, seconds since midnight UTC.
    pub at_second_of_day: Option<f64>,
}

/// One change and how long it took to reach the maps.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Change {
    pub kind: ChangeKind,
    pub round: u32,
    pub service: String,
    /// From just before the file was renamed into place (or removed) to the change seen in
    /// the maps.
    pub latency_ms: f64,
    /// From the same moment to xlb's `programmed` log line (its timestamp) for the change,
    /// and that minus xlb's `took_ms`: the poll wait, the fingerprint and reading the manifests
    /// before the generation started.
    pub to_logged_ms: Option<f64>,
    pub before_generation_ms: Option<f64>,
    /// xlb's log line for the generation that programmed it.
    pub xlb: Option<Generation>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct KindSummary {
    pub kind: ChangeKind,
    pub count: usize,
    pub p50_ms: f64,
    /// Nearest rank: the maximum for fewer than 100 samples.
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Median of xlb's own `took_ms` (compile + reconcile) for these changes.
    pub xlb_took_p50_ms: f64,
    /// Median of [`Change::before_generation_ms`].
    pub before_generation_p50_ms: f64,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Memory {
    /// `memlock` of each pinned map, bytes.
    pub pinned_maps: Vec<(String, u64)>,
    pub pinned_bytes: u64,
    /// Distinct Maglev tables the frontends point at, and their `memlock` together.
    pub maglev_tables: u64,
    pub maglev_bytes: u64,
    pub total_bytes: u64,
    /// `VmRSS` and `VmHWM` of `xlb run` right after programming from scratch, KiB.
    pub rss_programmed_kib: u64,
    pub hwm_programmed_kib: u64,
    /// The same at the end of the run (after every change).
    pub rss_end_kib: u64,
    pub hwm_end_kib: u64,
}

/// One lab: N Services programmed from scratch, then the changes.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ControlRun {
    pub services: u32,
    pub endpoints: u32,
    /// Distinct backends (pod address, target port) in the manifests.
    pub backends: u32,
    pub manifest_files: u32,
    /// Writing the manifest directory (before xlb starts; not part of any figure).
    pub manifest_write_s: f64,
    /// From starting `xlb run` to its maps pinned (loaded; attaching follows).
    pub maps_pinned_s: f64,
    /// From starting `xlb run` to every Service's frontend and Maglev table in the maps.
    pub from_scratch_s: f64,
    /// From starting `xlb run` to its log lines (their timestamps): `attached` (programs
    /// loaded, maps pinned, XDP attached), `reading the cluster` (the run loop starts) and
    /// generation 1 `programmed`. Reading the manifests is what lies between the second and the
    /// start of generation 1 (`programmed_log_s - took_ms - loop_start_s`).
    pub attached_s: Option<f64>,
    pub loop_start_s: Option<f64>,
    pub programmed_log_s: Option<f64>,
    /// xlb's log line of generation 1.
    pub xlb_first: Option<Generation>,
    /// Services whose frontend and table were found (must equal `services`).
    pub frontends_seen: u32,
    pub table_size: u32,
    pub memory: Memory,
    pub changes: Vec<Change>,
    pub summary: Vec<KindSummary>,
    pub problems: Vec<String>,
    pub note: String,
    /// Why xlb was not run at this size (this build's capacities), if it was not.
    pub xlb_skipped: Option<String>,
    pub observe: Option<Observe>,
    pub baselines: Option<Baselines>,
}

/// `/metrics` and `xlb services` of an `xlb run` whose connection table holds
/// [`ControlOptions::conntrack_entries`] synthetic flows (over every Service).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Observe {
    /// `--conntrack-size` of that run (a quarter above the flows: an LRU map evicts early when
    /// nearly full), and the flows written.
    pub conntrack_size: u32,
    pub flows: u32,
    pub fill_s: f64,
    /// One unpaced walk of the whole table by the benchmark (a lookup and a next-key syscall per
    /// entry): what every scrape and every `xlb services` paid before the census.
    pub full_walk_s: f64,
    pub scrapes: usize,
    pub scrape_p50_ms: f64,
    pub scrape_p99_ms: f64,
    pub scrape_max_ms: f64,
    pub scrape_bytes: usize,
    /// `xlb services -o json`, the whole process.
    pub services_runs: usize,
    pub services_p50_ms: f64,
    pub services_max_ms: f64,
    /// The first census that started after the fill: distinct entries seen, wall time, CPU
    /// time, pace (entries/s), and CPU per million entries and as a share of one core while
    /// walking.
    pub census_entries: u64,
    pub census_walk_s: f64,
    pub census_cpu_s: f64,
    pub census_per_s: u64,
    pub census_cpu_s_per_million: f64,
    pub census_cpu_share: f64,
}

/// kube-proxy's rules for the same cluster, loaded into the node's namespace.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Baselines {
    pub iptables: String,
    /// `-A` rules in the `iptables-restore` input, and how long it ran.
    pub iptables_rules: usize,
    pub iptables_restore_s: Option<f64>,
    pub nft: String,
    /// Lines of the `nft -f` input, and how long it ran.
    pub nft_lines: usize,
    pub nft_s: Option<f64>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ControlReport {
    pub scenario: &'static str,
    pub machine: Machine,
    pub options: ControlOptions,
    pub runs: Vec<ControlRun>,
}

impl ControlReport {
    pub fn problems(&self) -> Vec<String> {
        self.runs
            .iter()
            .flat_map(|r| {
                r.problems
                    .iter()
                    .map(move |p| format!("{} Services: {p}", r.services))
            })
            .collect()
    }
}

/// The frontend key of a benchmark Service: its VIP and port, TCP.
fn key_of((vip, port): Front) -> FrontendKey {
    FrontendKey {
        addr: u32::from_ne_bytes(vip.octets()),
        port: port.to_be(),
        proto: IPPROTO_TCP,
        _pad: 0,
    }
}

/// A frontend: VIP and port.
type Front = (Ipv4Addr, u16);

/// The frontend of benchmark Service `s`: VIP [`traffic::vip`]`(s)`, port 80; past the
/// 63,750 VIPs of the lab's range, the VIPs again with the next ports (81, 82, ...).
fn front_of(s: u32) -> Front {
    let vips = traffic::MAX_SERVICES;
    (traffic::vip(s % vips), SERVICE_PORT + (s / vips) as u16)
}

/// The frontend of a benchmark Service's definition.
fn front(svc: &ServiceDef) -> Front {
    (svc.lb_ingress[0], svc.ports[0].port)
}

/// Services per target port: each takes E consecutive pool addresses.
fn per_port(endpoints: u32) -> u32 {
    (POD_POOL_SIZE / endpoints.max(1)).max(1)
}

fn service(
    name: String,
    (vip, port): Front,
    target_port: u16,
    endpoints: Vec<EndpointDef>,
) -> ServiceDef {
    ServiceDef {
        namespace: "default".into(),
        name,
        service_type: "LoadBalancer".into(),
        cluster_ip: None,
        lb_ingress: vec![vip],
        external_ips: vec![],
        ports: vec![PortDef {
            name: "tcp".into(),
            protocol: "TCP".into(),
            port,
            target_port,
            node_port: None,
        }],
        endpoints,
    }
}

fn endpoint(node: &str, addr: Ipv4Addr, pod: String) -> EndpointDef {
    EndpointDef {
        addr,
        node: node.into(),
        pod,
        ready: true,
        terminating: false,
    }
}

/// Benchmark Service `s` of E endpoints on `node` (see the module docs for the addresses).
fn bench_service(node: &str, s: u32, e: u32) -> ServiceDef {
    let per = per_port(e);
    let port = TARGET_PORT + (s / per) as u16;
    let first = (s % per) * e;
    let eps = (0..e)
        .map(|i| {
            let addr = Ipv4Addr::from(u32::from(POD_POOL_BASE) + first + i);
            endpoint(node, addr, format!("pod-{s}-{i}"))
        })
        .collect();
    service(format!("svc-{s}"), front_of(s), port, eps)
}

fn file_name(svc: &ServiceDef) -> String {
    format!("svc-{}-{}.yaml", svc.namespace, svc.name)
}

/// Nearest-rank percentile of a sample.
fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * s.len() as f64).ceil().max(1.0) as usize;
    s[rank.min(s.len()) - 1]
}

/// A small deterministic PRNG (xorshift64) for the phase of each change.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// `memlock:` of a map fd, from `/proc/self/fdinfo` (the kernel's estimate of the map's memory).
fn memlock(fd: BorrowedFd<'_>) -> Result<u64> {
    let path = format!("/proc/self/fdinfo/{}", fd.as_raw_fd());
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow!("no memlock in {path}"))
}

/// `VmRSS` and `VmHWM` of `pid`, KiB.
fn rss_kib(pid: u32) -> Result<(u64, u64)> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| anyhow!("no {name} in {path}"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// The pinned maps this scenario reads, opened from xlb's pin directory.
struct Probe {
    frontends: BpfHashMap<MapData, FrontendKey, FrontendValue>,
    maglev: ArrayOfMaps<MapData>,
}

impl Probe {
    fn open(maps_dir: &Path) -> Result<Probe> {
        let fe = MapData::from_pin(maps_dir.join(MAP_FRONTENDS))
            .with_context(|| format!("opening {MAP_FRONTENDS}"))?;
        let frontends = BpfHashMap::try_from(Map::from_map_data(fe)?)
            .with_context(|| format!("{MAP_FRONTENDS} has an unexpected type or layout"))?;
        let maglev = MapData::from_pin(maps_dir.join(MAP_MAGLEV))
            .with_context(|| format!("opening {MAP_MAGLEV}"))?;
        let maglev = ArrayOfMaps::try_from(Map::from_map_data(maglev)?)
            .with_context(|| format!("{MAP_MAGLEV} is not an array of maps"))?;
        Ok(Probe { frontends, maglev })
    }

    fn frontend(&self, fe: Front) -> Result<Option<FrontendValue>> {
        match self.frontends.get(&key_of(fe), 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("looking up the frontend {}:{}", fe.0, fe.1)),
        }
    }

    /// The inner map id of the Maglev table at `service_id`, `None` for an empty slot.
    fn table(&self, service_id: u32) -> Result<Option<u32>> {
        let table = match self.maglev.get(&service_id, 0) {
            Ok(table) => table,
            Err(MapError::KeyNotFound) => return Ok(None),
            Err(e) => {
                return Err(e).with_context(|| format!("looking up {MAP_MAGLEV}[{service_id}]"));
            }
        };
        Ok(Some(table.info()?.id()))
    }

    /// The Maglev table at `service_id` as (inner map id, backends it lists), `None` for an
    /// empty slot: a table rewritten in place keeps its id.
    fn table_state(&self, service_id: u32) -> Result<Option<(u32, u32)>> {
        let table = match self.maglev.get(&service_id, 0) {
            Ok(table) => table,
            Err(MapError::KeyNotFound) => return Ok(None),
            Err(e) => {
                return Err(e).with_context(|| format!("looking up {MAP_MAGLEV}[{service_id}]"));
            }
        };
        let id = table.info()?.id();
        let table: aya::maps::Array<MapData, [u32; 2]> =
            aya::maps::Array::try_from(Map::from_map_data(table)?)
                .context("a Maglev table is not an array")?;
        let header = table
            .get(&0, 0)
            .context("reading a Maglev table's header")?;
        Ok(Some((id, header[1])))
    }

    /// The Service at `vip` is programmed: frontend present and its table in place. Returns
    /// (frontend value, table id).
    fn programmed(&self, fe: Front) -> Result<Option<(FrontendValue, u32)>> {
        let Some(v) = self.frontend(fe)? else {
            return Ok(None);
        };
        Ok(self.table(v.service_id)?.map(|id| (v, id)))
    }
}

/// Every line of xlb's JSON log that parses.
fn log_events(log: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .collect()
}

/// Seconds since midnight (UTC) of a log line's `timestamp` (`2026-11-26T09:56:09.424653Z`).
fn log_second_of_day(v: &serde_json::Value) -> Option<f64> {
    let t = v["timestamp"].as_str()?;
    let time = t.split_once('T')?.1.trim_end_matches('Z');
    let mut it = time.split(':');
    let (h, m, s) = (it.next()?, it.next()?, it.next()?);
    Some(h.parse::<f64>().ok()? * 3600.0 + m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
}

/// Seconds from `start` (wall clock) to the first log line with `message` (same day or the
/// next: the difference is taken modulo a day).
fn since_start(events: &[serde_json::Value], start: SystemTime, message: &str) -> Option<f64> {
    let start = second_of_day(start);
    let at = events
        .iter()
        .find(|v| v["message"] == message)
        .and_then(log_second_of_day)?;
    Some((at - start).rem_euclid(86_400.0))
}

/// Seconds since midnight UTC of a wall-clock time.
fn second_of_day(t: SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() % 86_400.0)
        .unwrap_or(0.0)
}

/// Parses every `programmed` line of xlb's JSON log.
fn generations(log: &Path) -> Vec<Generation> {
    log_events(log)
        .into_iter()
        .filter(|v| v["message"] == "programmed")
        .map(|v| {
            let u = |k: &str| v[k].as_u64().unwrap_or(0);
            let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
            Generation {
                generation: u("generation"),
                took_ms: f("took_ms"),
                since_change_ms: f("since_change_ms"),
                service_ports: u("service_ports"),
                services_compiled: u("services_compiled"),
                frontends_written: u("frontends_written"),
                frontends_removed: u("frontends_removed"),
                tables_swapped: u("tables_swapped"),
                tables_patched: u("tables_patched"),
                backends_written: u("backends_written"),
                at_second_of_day: log_second_of_day(&v),
            }
        })
        .collect()
}

/// Fails if the process exited or SIGINT/SIGTERM arrived.
fn check_alive(xlb: &mut XlbProcess<'_>) -> Result<()> {
    check_interrupted()?;
    if let Some(st) = xlb.try_exit() {
        bail!("xlb run exited ({st}); its log:\n{}", xlb.log_tail(4000));
    }
    Ok(())
}

/// Waits (up to `timeout`) for xlb's log to show generation `g` programmed; returns the latest
/// generation's line (a later one if xlb programmed more than one since).
fn wait_generation(xlb: &mut XlbProcess<'_>, g: u64, timeout: Duration) -> Result<Generation> {
    let deadline = Instant::now() + timeout;
    loop {
        check_alive(xlb)?;
        if let Some(last) = generations(xlb.log_path()).pop()
            && last.generation >= g
        {
            return Ok(last);
        }
        if Instant::now() >= deadline {
            bail!(
                "xlb's log did not show generation {g} programmed within {timeout:?}; its log:\n{}",
                xlb.log_tail(4000)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Polls `seen` every millisecond until it returns true (up to `timeout`); returns when it did.
fn poll_until(
    xlb: &mut XlbProcess<'_>,
    timeout: Duration,
    what: &str,
    mut seen: impl FnMut() -> Result<bool>,
) -> Result<Instant> {
    let deadline = Instant::now() + timeout;
    let mut n = 0u64;
    loop {
        if seen()? {
            return Ok(Instant::now());
        }
        n += 1;
        // The process check costs a wait4 and the signal check an atomic load: every 64 polls.
        if n.is_multiple_of(64) {
            check_alive(xlb)?;
        }
        if Instant::now() >= deadline {
            bail!(
                "timed out after {timeout:?} waiting for {what}; xlb log:\n{}",
                xlb.log_tail(4000)
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn check_options(opts: &ControlOptions) -> Result<()> {
    if opts.services.is_empty() {
        bail!("nothing to measure");
    }
    if opts.endpoints == 0 || opts.endpoints > POD_POOL_SIZE {
        bail!("--endpoints must be 1..={POD_POOL_SIZE}");
    }
    if opts.poll_ms == 0 || opts.poll_ms > 10_000 {
        bail!("--poll-ms must be 1..=10000");
    }
    let extra = opts.changes as u64 * (opts.endpoints as u64 + 1);
    if extra > EXTRA_SIZE as u64 {
        bail!("too many changes: at most {EXTRA_SIZE} added endpoints");
    }
    for &n in &opts.services {
        // VIPs repeat with the next port past the range's 63,750 (see `front_of`).
        if n == 0 || n > MAX_BENCH_SERVICES {
            bail!("{n} Services: use 1..={MAX_BENCH_SERVICES}");
        }
        let ports = n.div_ceil(per_port(opts.endpoints));
        if TARGET_PORT as u32 + ports > u16::MAX as u32 {
            bail!("too many endpoints for the synthetic address pool");
        }
    }
    Ok(())
}

/// The most Services a run takes (VIP × port pairs kept well within the lab's ranges).
const MAX_BENCH_SERVICES: u32 = 1_000_000;

/// The largest value `xlb run`'s `--max-*` flags take (`control/src/datapath/capacity.rs`).
const XLB_MAX_CAPACITY: u64 = 1 << 24;

/// Service ports, frontends and backends a run of `n` Services needs: the Services, one more for
/// the add/remove changes, and the endpoints the changes add.
fn needed(n: u32, opts: &ControlOptions) -> (u64, u64, u64) {
    let services = n as u64 + 1;
    let backends =
        n as u64 * opts.endpoints as u64 + opts.changes as u64 * (opts.endpoints as u64 + 1);
    (services, services, backends)
}

/// Why `xlb run` cannot hold `n` Services × `e` endpoints (and the changes), if it cannot: the
/// largest capacities its flags take. The baselines are measured anyway.
fn over_capacity(n: u32, opts: &ControlOptions) -> Option<String> {
    let (services, _, backends) = needed(n, opts);
    if services > XLB_MAX_CAPACITY || backends > XLB_MAX_CAPACITY {
        return Some(format!(
            "{n} Services × {} endpoints need {services} Service ports and {backends} backends; \
             xlb's --max-services and --max-backends take at most {XLB_MAX_CAPACITY}",
            opts.endpoints
        ));
    }
    None
}

/// `--max-services`, `--max-frontends` and `--max-backends` for `n` Services: the defaults, or
/// what the run needs where that is more.
fn capacity_args(n: u32, opts: &ControlOptions) -> Vec<String> {
    let (services, frontends, backends) = needed(n, opts);
    vec![
        "--max-services".into(),
        services.max(MAX_SERVICES as u64).to_string(),
        "--max-frontends".into(),
        frontends.max(MAX_FRONTENDS as u64).to_string(),
        "--max-backends".into(),
        backends.max(MAX_BACKENDS as u64).to_string(),
    ]
}

/// Everything for one N. Errors leave `run.problems` to the caller; the lab and the process are
/// torn down by their destructors whatever happens.
fn measure(n: u32, opts: &ControlOptions, run: &mut ControlRun) -> Result<()> {
    check_interrupted()?;
    let e = opts.endpoints;
    let lab = Lab::new(crate::lab::LabSpec::single_node().for_benchmarks())?;
    let node_name = lab.spec().nodes[0].name.clone();
    let node = lab.host(&node_name);
    let mut svcs: Vec<ServiceDef> = (0..n).map(|s| bench_service(&node_name, s, e)).collect();
    let set = ManifestSet {
        services: svcs.clone(),
        nodes: ManifestSet::nodes_of(lab.spec()),
    };
    let t = Instant::now();
    let manifests: ManifestDir = lab.write_manifests(&set)?;
    run.manifest_write_s = t.elapsed().as_secs_f64();
    run.manifest_files = n + 1;
    run.backends = n * e;
    if let Some(why) = over_capacity(n, opts) {
        eprint!("xlb skipped ({why}); ");
        run.xlb_skipped = Some(why);
        if opts.baselines {
            run.baselines = Some(baselines(&lab, node, &svcs, run));
        }
        drop(manifests);
        let left = lab.close();
        if !left.is_empty() {
            run.problems
                .push(format!("namespaces left behind: {left:?}"));
        }
        return Ok(());
    }

    let pin_dir: PathBuf =
        xlb_pin_dir(node.netns()).context("`xlb pin-dir` in the node's namespace failed")?;
    if pin_dir.exists() {
        bail!(
            "{} exists before xlb started (a stale datapath?)",
            pin_dir.display()
        );
    }
    let maps_dir = pin_dir.join(MAPS_SUBDIR);
    let mut xo = XlbOptions::new(&node_name, manifests.path());
    xo.extra_args = vec![
        "--poll-ms".into(),
        opts.poll_ms.to_string(),
        "--log-format".into(),
        "json".into(),
        "--xdp-mode".into(),
        opts.xdp_mode.clone(),
    ];
    xo.extra_args.extend(capacity_args(n, opts));
    let from_scratch_timeout = Duration::from_secs(60) + Duration::from_millis(10) * n;

    // ---- from scratch ----
    let (t0, wall0) = (Instant::now(), SystemTime::now());
    let mut xlb = XlbProcess::start(&lab, &xo)?;
    let pid = xlb.pid().context("xlb run has no pid")?;
    let pins = [maps_dir.join(MAP_FRONTENDS), maps_dir.join(MAP_MAGLEV)];
    let pinned = poll_until(
        &mut xlb,
        from_scratch_timeout,
        &format!("the maps pinned in {}", maps_dir.display()),
        || Ok(pins.iter().all(|p| p.exists())),
    )?;
    run.maps_pinned_s = (pinned - t0).as_secs_f64();
    // The pin may exist a moment before it can be opened; retry briefly.
    let probe = {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match Probe::open(&maps_dir) {
                Ok(p) => break p,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(e),
            }
        }
    };
    // Services are checked in order; one found stays found (nothing removes it), so each poll
    // resumes at the first one missing: O(N) lookups over the whole wait.
    let mut next = 0usize;
    let mut table_size = 0;
    let done = poll_until(
        &mut xlb,
        from_scratch_timeout.saturating_sub(t0.elapsed()),
        &format!("all {n} Services in {MAP_FRONTENDS} with their tables"),
        || {
            while next < svcs.len() {
                match probe.programmed(front(&svcs[next]))? {
                    Some((v, _)) => {
                        table_size = v.table_size;
                        next += 1;
                    }
                    None => return Ok(false),
                }
            }
            Ok(true)
        },
    )
    .with_context(|| {
        format!(
            "{next} of {n} Services were programmed; {} was the first missing",
            svcs.get(next).map(|s| s.name.as_str()).unwrap_or("-")
        )
    })?;
    run.from_scratch_s = (done - t0).as_secs_f64();
    run.table_size = table_size;
    let first = wait_generation(&mut xlb, 1, Duration::from_secs(30))?;
    if first.generation != 1 {
        run.problems.push(format!(
            "xlb programmed {} generations before the first change (expected 1)",
            first.generation
        ));
    }
    run.xlb_first = Some(first);
    let events = log_events(xlb.log_path());
    run.attached_s = since_start(&events, wall0, "attached");
    run.loop_start_s = since_start(&events, wall0, "reading the cluster");
    run.programmed_log_s = since_start(&events, wall0, "programmed");

    // Every Service, checked again now that generation 1 is complete, and the memory.
    let mut service_ids = BTreeSet::new();
    let mut table_ids = BTreeSet::new();
    for s in &svcs {
        if let Some((v, id)) = probe.programmed(front(s))? {
            service_ids.insert(v.service_id);
            table_ids.insert(id);
        }
    }
    run.frontends_seen = service_ids.len() as u32;
    if run.frontends_seen != n {
        run.problems.push(format!(
            "{} of {n} Services have a frontend and a table after generation 1",
            run.frontends_seen
        ));
    }
    let mut mem = map_memory(&maps_dir, &table_ids)?;
    (mem.rss_programmed_kib, mem.hwm_programmed_kib) = rss_kib(pid)?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() != "xlb" {
        run.problems.push(format!(
            "pid {pid} is {:?}, not xlb: the RSS figures are not xlb's",
            comm.trim()
        ));
    }
    run.memory = mem;
    eprint!(
        "programmed in {:.2} s (xlb: {:.0} ms), {:.0} MiB of maps, {:.0} MiB RSS; changes",
        run.from_scratch_s,
        run.xlb_first
            .as_ref()
            .map(|g| g.took_ms)
            .unwrap_or(f64::NAN),
        run.memory.total_bytes as f64 / MIB,
        run.memory.hwm_programmed_kib as f64 / 1024.0
    );

    // ---- changes ----
    let target = Target {
        xlb: &mut xlb,
        probe: &probe,
        manifests: &manifests,
        node: &node_name,
    };
    run_changes(target, &mut svcs, opts, run)?;
    (run.memory.rss_end_kib, run.memory.hwm_end_kib) = rss_kib(pid)?;
    run.summary = summarize(&run.changes);
    for k in ChangeKind::ALL {
        let want = opts.changes as usize;
        let got = run.changes.iter().filter(|c| c.kind == k).count();
        if got != want {
            run.problems
                .push(format!("{got} {} changes seen of {want}", k.name()));
        }
    }
    if let Some(c) = run.changes.iter().find(|c| c.latency_ms <= 0.0) {
        run.problems.push(format!(
            "a {} change has latency {} ms",
            c.kind.name(),
            c.latency_ms
        ));
    }

    // ---- teardown, checked ----
    drop(probe);
    match xlb.stop() {
        Ok(st) if st.success() => {}
        Ok(st) => run
            .problems
            .push(format!("xlb run exited with {st} on SIGTERM")),
        Err(e) => run.problems.push(format!("{e:#}")),
    }
    if let Err(e) = xlb.down() {
        run.problems.push(format!("xlb down: {e:#}"));
    }
    drop(xlb);
    if pin_dir.exists() {
        run.problems
            .push(format!("{} left behind after xlb down", pin_dir.display()));
    }
    // The Services are the same; the changes left them as they are in the manifests.
    if opts.conntrack_entries > 0 {
        eprint!(" observe");
        match observe(&lab, &node_name, &manifests, &pin_dir, &svcs, opts) {
            Ok(o) => run.observe = Some(o),
            Err(e) => run.problems.push(format!("observability: {e:#}")),
        }
    }
    if opts.baselines {
        eprint!(" baselines");
        run.baselines = Some(baselines(&lab, node, &svcs, run));
    }
    run.note = format!(
        "xlb run --poll-ms {} (xdp mode {})",
        opts.poll_ms, opts.xdp_mode
    );
    drop(manifests);
    let left = lab.close();
    if !left.is_empty() {
        run.problems
            .push(format!("namespaces left behind: {left:?}"));
    }
    Ok(())
}

/// CLOCK_MONOTONIC in ns, the clock the datapath stamps flows with.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Where `xlb run` publishes its connection census for the datapath at `pin_dir`
/// (`control/src/datapath/pins.rs`: next to its state file).
fn census_file(pin_dir: &Path) -> PathBuf {
    let flat: String = pin_dir
        .to_string_lossy()
        .trim_start_matches('/')
        .chars()
        .map(|c| if c == '/' { '_' } else { c })
        .collect();
    PathBuf::from("/run/xlb").join(flat).join("census.json")
}

/// The port `xlb run --metrics-addr` listens on in the node's namespace.
const METRICS_PORT: u16 = 10356;

/// One `GET /metrics` on the node's loopback: (milliseconds from the request to the last byte,
/// bytes).
fn scrape_once(node: &crate::lab::Host) -> Result<(f64, usize)> {
    use std::io::{Read as _, Write as _};
    let mut stream = node.netns().run(|| {
        Ok(std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], METRICS_PORT)),
            Duration::from_secs(2),
        )?)
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let t = Instant::now();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: text/plain\r\n\r\n")?;
    let mut body = Vec::new();
    stream.read_to_end(&mut body)?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    if !body.starts_with(b"HTTP/1.1 200") {
        bail!(
            "/metrics answered {:?}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        );
    }
    Ok((ms, body.len()))
}

/// A second `xlb run` of the same Services with a connection table of `opts.conntrack_entries`
/// synthetic flows (clients in 198.18.128.0/17, each to one of the Services, all active): the
/// cost of one full walk, `/metrics` scrapes and `xlb services` against it, and the census.
fn observe(
    lab: &Lab,
    node_name: &str,
    manifests: &ManifestDir,
    pin_dir: &Path,
    svcs: &[ServiceDef],
    opts: &ControlOptions,
) -> Result<Observe> {
    let flows = opts.conntrack_entries;
    let mut o = Observe {
        flows,
        conntrack_size: (flows + flows / 4).max(1024),
        ..Default::default()
    };
    let mut xo = XlbOptions::new(node_name, manifests.path());
    xo.extra_args = vec![
        "--log-format".into(),
        "json".into(),
        "--xdp-mode".into(),
        opts.xdp_mode.clone(),
        "--conntrack-size".into(),
        o.conntrack_size.to_string(),
        "--metrics-addr".into(),
        format!("127.0.0.1:{METRICS_PORT}"),
    ];
    xo.extra_args.extend(capacity_args(svcs.len() as u32, opts));
    let timeout = Duration::from_secs(60) + Duration::from_millis(10) * svcs.len() as u32;
    let mut xlb = XlbProcess::start(lab, &xo)?;
    wait_generation(&mut xlb, 1, timeout)?;
    let maps_dir = pin_dir.join(MAPS_SUBDIR);
    let probe = Probe::open(&maps_dir)?;
    let mut ids = Vec::with_capacity(svcs.len());
    for s in svcs {
        let (v, _) = probe
            .programmed(front(s))?
            .with_context(|| format!("{} is not programmed", s.name))?;
        ids.push((front(s), v.frontend_id));
    }
    drop(probe);
    let ct = MapData::from_pin(maps_dir.join(MAP_CONNTRACK))
        .with_context(|| format!("opening {MAP_CONNTRACK}"))?;
    let mut ct: BpfHashMap<MapData, FlowKey, CtValue> =
        BpfHashMap::try_from(Map::from_map_data(ct)?)
            .with_context(|| format!("{MAP_CONNTRACK} has an unexpected type or layout"))?;
    let (t, now) = (Instant::now(), monotonic_ns());
    let base = u32::from(Ipv4Addr::new(198, 18, 128, 0));
    for i in 0..flows {
        let ((vip, port), frontend_id) = ids[i as usize % ids.len()];
        let key = FlowKey {
            src_addr: u32::from_ne_bytes(Ipv4Addr::from(base + i / 50_000).octets()),
            dst_addr: u32::from_ne_bytes(vip.octets()),
            src_port: (10_000 + (i % 50_000) as u16).to_be(),
            dst_port: port.to_be(),
            proto: IPPROTO_TCP,
            _pad: [0; 3],
        };
        ct.insert(key, CtValue::new(i % 1024, frontend_id, now), 0)
            .with_context(|| format!("writing synthetic flow {i}"))?;
    }
    o.fill_s = t.elapsed().as_secs_f64();
    let filled = unix_now();
    let t = Instant::now();
    let walked = ct
        .iter()
        .take(o.conntrack_size as usize * 2)
        .filter(|kv| kv.is_ok())
        .count();
    o.full_walk_s = t.elapsed().as_secs_f64();
    if walked < flows as usize {
        bail!("the walk found {walked} of {flows} synthetic flows (evicted?)");
    }
    check_interrupted()?;

    // Scrapes while the census walks the table, then `xlb services`.
    let mut ms = Vec::new();
    for _ in 0..opts.scrapes {
        check_interrupted()?;
        let (m, bytes) = scrape_once(xlb.host())?;
        ms.push(m);
        o.scrape_bytes = bytes;
    }
    o.scrapes = ms.len();
    o.scrape_p50_ms = percentile(&ms, 50.0);
    o.scrape_p99_ms = percentile(&ms, 99.0);
    o.scrape_max_ms = percentile(&ms, 100.0);
    let mut ms = Vec::new();
    for _ in 0..3 {
        check_interrupted()?;
        let t = Instant::now();
        xlb.cli(&["services", "-o", "json"])?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    o.services_runs = ms.len();
    o.services_p50_ms = percentile(&ms, 50.0);
    o.services_max_ms = percentile(&ms, 100.0);

    // The first census that started after the fill: the whole table, paced.
    let path = census_file(pin_dir);
    // At the slowest pace `--census-rate` allows (1000/s), with room for the walk under way.
    let walk_bound = Duration::from_secs_f64(3.0 * o.conntrack_size as f64 / 1000.0);
    let deadline =
        Instant::now() + Duration::from_secs(60) + walk_bound.min(Duration::from_secs(1800));
    let c: serde_json::Value = loop {
        check_alive(&mut xlb)?;
        check_interrupted()?;
        // Read every 200 ms: the file holds a count per frontend.
        if let Ok(text) = std::fs::read(&path) {
            let c: serde_json::Value = serde_json::from_slice(&text).unwrap_or_default();
            if c["started_unix"].as_f64().unwrap_or(0.0) >= filled {
                break c;
            }
        }
        if Instant::now() >= deadline {
            bail!("no connection census of the filled table by the deadline");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    o.census_entries = c["entries"].as_u64().unwrap_or(0);
    o.census_walk_s = c["walk_s"].as_f64().unwrap_or(0.0);
    o.census_cpu_s = c["cpu_s"].as_f64().unwrap_or(0.0);
    o.census_per_s = c["per_s"].as_u64().unwrap_or(0);
    if o.census_entries > 0 {
        o.census_cpu_s_per_million = o.census_cpu_s / o.census_entries as f64 * 1e6;
    }
    if o.census_walk_s > 0.0 {
        o.census_cpu_share = o.census_cpu_s / o.census_walk_s;
    }
    if o.census_entries < flows as u64 {
        bail!(
            "the census counted {} of {flows} synthetic flows",
            o.census_entries
        );
    }
    match xlb.stop() {
        Ok(st) if st.success() => {}
        Ok(st) => bail!("xlb run exited with {st} on SIGTERM"),
        Err(e) => return Err(e),
    }
    xlb.down()?;
    Ok(o)
}

/// kube-proxy's rules for `svcs`, loaded with `iptables-restore` and `nft -f` in `node`'s
/// namespace (xlb is gone from it by then). Failures are the run's problems.
fn baselines(
    lab: &Lab,
    node: &crate::lab::Host,
    svcs: &[ServiceDef],
    run: &mut ControlRun,
) -> Baselines {
    let ports: Vec<SvcPort> = svcs
        .iter()
        .map(|s| SvcPort {
            namespace: s.namespace.clone(),
            name: s.name.clone(),
            port_name: s.ports[0].name.clone(),
            proto: "tcp",
            vip: s.lb_ingress[0],
            port: s.ports[0].port,
            endpoints: s
                .endpoints
                .iter()
                .map(|e| (e.addr, s.ports[0].target_port))
                .collect(),
        })
        .collect();
    let mut b = Baselines {
        iptables: baseline::iptables_version(),
        nft: baseline::nft_version(),
        iptables_rules: baseline::iptables_rules(&ports)
            .lines()
            .filter(|l| l.starts_with("-A "))
            .count(),
        nft_lines: baseline::nft_rules(&ports).lines().count(),
        ..Default::default()
    };
    match baseline::apply_iptables(node, &ports, lab.workdir()) {
        Ok(d) => b.iptables_restore_s = Some(d.as_secs_f64()),
        Err(e) => run.problems.push(format!("iptables-restore: {e:#}")),
    }
    match baseline::apply_nft(node, &ports, lab.workdir()) {
        Ok(d) => b.nft_s = Some(d.as_secs_f64()),
        Err(e) => run.problems.push(format!("nft -f: {e:#}")),
    }
    b
}

/// `memlock` of every pinned map and of the Maglev tables `table_ids`.
fn map_memory(maps_dir: &Path, table_ids: &BTreeSet<u32>) -> Result<Memory> {
    let mut mem = Memory::default();
    for name in ALL_MAPS {
        let m = MapData::from_pin(maps_dir.join(name))
            .with_context(|| format!("opening the pinned map {name}"))?;
        let b = memlock(m.fd().as_fd())?;
        mem.pinned_bytes += b;
        mem.pinned_maps.push((name.to_string(), b));
    }
    for &id in table_ids {
        let info = MapInfo::from_id(id).with_context(|| format!("Maglev table map id {id}"))?;
        let fd = info.fd().with_context(|| format!("opening map id {id}"))?;
        mem.maglev_bytes += memlock(fd.as_fd())?;
    }
    mem.maglev_tables = table_ids.len() as u64;
    mem.total_bytes = mem.pinned_bytes + mem.maglev_bytes;
    Ok(mem)
}

/// What the changes act on.
struct Target<'a, 'lab> {
    xlb: &'a mut XlbProcess<'lab>,
    probe: &'a Probe,
    manifests: &'a ManifestDir,
    node: &'a str,
}

/// Writes `text` to `<dir>/<name>` atomically (a dotfile renamed into place, which xlb's
/// manifest reader skips) and returns the time just before the rename: the change cannot be
/// seen earlier, and a preemption of this process right after the rename cannot hide time.
fn write_atomically(dir: &Path, name: &str, text: &str) -> Result<(Instant, SystemTime)> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let dst = dir.join(name);
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    let at = (Instant::now(), SystemTime::now());
    std::fs::rename(&tmp, &dst).with_context(|| format!("renaming into {}", dst.display()))?;
    Ok(at)
}

/// `opts.changes` rounds of add, scale, remove, one change at a time, each timed until the
/// maps show it (see the module docs).
fn run_changes(
    t: Target<'_, '_>,
    svcs: &mut [ServiceDef],
    opts: &ControlOptions,
    run: &mut ControlRun,
) -> Result<()> {
    let Target {
        xlb,
        probe,
        manifests,
        node,
    } = t;
    let (n, e) = (svcs.len() as u32, opts.endpoints);
    let change_timeout = Duration::from_secs(30) + Duration::from_millis(2) * n;
    let mut generation = 1u64;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ n as u64);
    let mut extra = 0u32;
    let mut fresh = |port_owner: &str| {
        let a = Ipv4Addr::from(u32::from(EXTRA_BASE) + extra);
        extra += 1;
        endpoint(node, a, format!("pod-{port_owner}-x{extra}"))
    };
    let added = front_of(n);
    let added_vip = added.0;
    let added_port = added.1;
    for round in 0..opts.changes {
        for kind in [ChangeKind::Add, ChangeKind::Scale, ChangeKind::Remove] {
            check_alive(xlb)?;
            // A random phase of xlb's poll interval.
            std::thread::sleep(Duration::from_micros(
                rng.next() % (opts.poll_ms * 1000).max(1),
            ));
            let service: String;
            let written: (Instant, SystemTime);
            let what: String;
            let mut seen: Box<dyn FnMut() -> Result<bool> + '_> = match kind {
                ChangeKind::Add => {
                    let eps = (0..e).map(|_| fresh(ADDED)).collect();
                    let svc = service_def_added(added, eps);
                    let (name, text) = (file_name(&svc), svc.to_yaml());
                    written = write_atomically(manifests.path(), &name, &text)?;
                    service = svc.name.clone();
                    what = format!("the new Service's frontend {added_vip}:{added_port}");
                    Box::new(move || Ok(probe.programmed(added)?.is_some()))
                }
                ChangeKind::Remove => {
                    let svc = service_def_added(added, vec![]);
                    let path = manifests.path().join(file_name(&svc));
                    written = (Instant::now(), SystemTime::now());
                    std::fs::remove_file(&path)
                        .with_context(|| format!("removing {}", path.display()))?;
                    service = svc.name;
                    what = format!("the frontend {added_vip}:{added_port} to disappear");
                    Box::new(move || Ok(probe.frontend(added)?.is_none()))
                }
                ChangeKind::Scale => {
                    let s = ((round as u64 * 7919 + n as u64 / 2) % n as u64) as usize;
                    let v = probe
                        .frontend(front(&svcs[s]))?
                        .with_context(|| format!("{} is not programmed", svcs[s].name))?;
                    let (old, listed) = probe
                        .table_state(v.service_id)?
                        .with_context(|| format!("{} has no table", svcs[s].name))?;
                    let ep = fresh(&svcs[s].name);
                    svcs[s].endpoints.push(ep);
                    written = write_atomically(
                        manifests.path(),
                        &file_name(&svcs[s]),
                        &svcs[s].to_yaml(),
                    )?;
                    service = svcs[s].name.clone();
                    what = format!(
                        "a Maglev table listing {} backends for {service} ({MAP_MAGLEV}[{}] was \
                         map id {old} listing {listed})",
                        listed + 1,
                        v.service_id
                    );
                    Box::new(move || {
                        Ok(probe
                            .table_state(v.service_id)?
                            .is_some_and(|(_, n)| n == listed + 1))
                    })
                }
            };
            let at = poll_until(xlb, change_timeout, &what, &mut *seen)
                .with_context(|| format!("{} change of round {}", kind.name(), round + 1))?;
            drop(seen);
            let latency_ms = (at - written.0).as_secs_f64() * 1e3;
            generation += 1;
            let g = wait_generation(xlb, generation, change_timeout)?;
            if g.generation != generation {
                run.problems.push(format!(
                    "the {} change of round {} ended at generation {} (expected {generation})",
                    kind.name(),
                    round + 1,
                    g.generation
                ));
                generation = g.generation;
            }
            let to_logged_ms = g
                .at_second_of_day
                .map(|at| (at - second_of_day(written.1)).rem_euclid(86_400.0) * 1e3);
            run.changes.push(Change {
                kind,
                round,
                service,
                latency_ms,
                to_logged_ms,
                before_generation_ms: to_logged_ms.map(|l| l - g.took_ms),
                xlb: Some(g),
            });
        }
        eprint!(".");
    }
    Ok(())
}

fn service_def_added(fe: Front, eps: Vec<EndpointDef>) -> ServiceDef {
    service(ADDED.into(), fe, TARGET_PORT, eps)
}

const MIB: f64 = 1024.0 * 1024.0;

fn summarize(changes: &[Change]) -> Vec<KindSummary> {
    ChangeKind::ALL
        .iter()
        .filter_map(|&kind| {
            let v: Vec<f64> = changes
                .iter()
                .filter(|c| c.kind == kind)
                .map(|c| c.latency_ms)
                .collect();
            if v.is_empty() {
                return None;
            }
            let took: Vec<f64> = changes
                .iter()
                .filter(|c| c.kind == kind)
                .filter_map(|c| c.xlb.as_ref().map(|g| g.took_ms))
                .collect();
            let before: Vec<f64> = changes
                .iter()
                .filter(|c| c.kind == kind)
                .filter_map(|c| c.before_generation_ms)
                .collect();
            Some(KindSummary {
                kind,
                count: v.len(),
                p50_ms: percentile(&v, 50.0),
                p99_ms: percentile(&v, 99.0),
                max_ms: percentile(&v, 100.0),
                xlb_took_p50_ms: percentile(&took, 50.0),
                before_generation_p50_ms: percentile(&before, 50.0),
            })
        })
        .collect()
}

pub fn run(opts: &ControlOptions) -> Result<ControlReport> {
    check_options(opts)?;
    let mut runs = Vec::new();
    let total = opts.services.len();
    for (k, &n) in opts.services.iter().enumerate() {
        eprint!(
            "[{}/{total}] xlb run with {n} Services × {} endpoints: ",
            k + 1,
            opts.endpoints
        );
        check_interrupted()?;
        let mut run = ControlRun {
            services: n,
            endpoints: opts.endpoints,
            backends: 0,
            manifest_files: 0,
            manifest_write_s: 0.0,
            maps_pinned_s: 0.0,
            from_scratch_s: 0.0,
            attached_s: None,
            loop_start_s: None,
            programmed_log_s: None,
            xlb_first: None,
            frontends_seen: 0,
            table_size: 0,
            memory: Memory::default(),
            changes: vec![],
            summary: vec![],
            problems: vec![],
            note: String::new(),
            xlb_skipped: None,
            observe: None,
            baselines: None,
        };
        // A failed measurement is recorded (and fails the scenario) without losing the others.
        if let Err(e) = measure(n, opts, &mut run) {
            run.problems.push(format!("{e:#}"));
            run.summary = summarize(&run.changes);
        }
        eprintln!(
            " {}",
            if run.problems.is_empty() {
                "ok"
            } else {
                "PROBLEMS"
            }
        );
        runs.push(run);
    }
    Ok(ControlReport {
        scenario: "control",
        machine: Machine::this(),
        options: opts.clone(),
        runs,
    })
}

pub fn print(rep: &ControlReport) {
    let o = &rep.options;
    say!(
        "control: xlb run programming N Services × {} endpoints from scratch, and manifest-change-to-map latency ({} changes of each kind, --poll-ms {}, {} CPUs)",
        o.endpoints,
        o.changes,
        o.poll_ms,
        rep.machine.cpus
    );
    say!(
        "{:>8} {:>9} {:>9} {:>9} {:>15} {:>15} {:>15} {:>9} {:>9}  {}",
        "Services",
        "scratch s",
        "xlb ms",
        "pinned s",
        "add p50/p99",
        "remove p50/p99",
        "scale p50/p99",
        "maps MiB",
        "RSS MiB",
        "checks"
    );
    for r in &rep.runs {
        let k = |kind: ChangeKind| {
            r.summary
                .iter()
                .find(|s| s.kind == kind)
                .map(|s| format!("{:.0}/{:.0} ms", s.p50_ms, s.p99_ms))
                .unwrap_or_else(|| "-".into())
        };
        say!(
            "{:>8} {:>9.2} {:>9.0} {:>9.2} {:>15} {:>15} {:>15} {:>9.1} {:>9.1}  {}",
            r.services,
            r.from_scratch_s,
            r.xlb_first.as_ref().map(|g| g.took_ms).unwrap_or(f64::NAN),
            r.maps_pinned_s,
            k(ChangeKind::Add),
            k(ChangeKind::Remove),
            k(ChangeKind::Scale),
            r.memory.total_bytes as f64 / MIB,
            r.memory.hwm_end_kib.max(r.memory.hwm_programmed_kib) as f64 / 1024.0,
            if r.problems.is_empty() {
                "ok".to_string()
            } else {
                r.problems.join("; ")
            }
        );
    }
    say!(
        "scratch: start of `xlb run` to every Service's frontend and Maglev table in the maps; xlb ms: its own compile + reconcile of generation 1; pinned: start to maps pinned."
    );
    say!(
        "from scratch, step by step (seconds from the start of `xlb run`; from xlb's log timestamps):"
    );
    say!(
        "{:>8} {:>9} {:>9} {:>11} {:>14} {:>17} {:>12} {:>12}",
        "Services",
        "pinned",
        "attached",
        "loop start",
        "manifests read",
        "compile+reconcile",
        "maps full",
        "log: gen 1"
    );
    let opt = |v: Option<f64>| v.map(|v| format!("{v:.3}")).unwrap_or_else(|| "-".into());
    for r in &rep.runs {
        let took = r.xlb_first.as_ref().map(|g| g.took_ms / 1e3);
        let read = match (r.programmed_log_s, took, r.loop_start_s) {
            (Some(p), Some(t), Some(l)) => Some(p - t - l),
            _ => None,
        };
        say!(
            "{:>8} {:>9.3} {:>9} {:>11} {:>14} {:>17} {:>12.3} {:>12}",
            r.services,
            r.maps_pinned_s,
            opt(r.attached_s),
            opt(r.loop_start_s),
            opt(read),
            opt(took),
            r.from_scratch_s,
            opt(r.programmed_log_s)
        );
    }
    say!(
        "changes (ms): to the maps p50/p99/max; xlb's took_ms p50 (compile + reconcile); before the generation p50 (poll wait, fingerprint, reading every manifest)"
    );
    say!(
        "{:>8} {:<7} {:>6} {:>22} {:>12} {:>18}",
        "Services",
        "kind",
        "count",
        "p50 / p99 / max",
        "xlb took",
        "before generation"
    );
    for r in &rep.runs {
        for k in &r.summary {
            say!(
                "{:>8} {:<7} {:>6} {:>22} {:>12.1} {:>18.1}",
                r.services,
                k.kind.name(),
                k.count,
                format!("{:.1} / {:.1} / {:.1}", k.p50_ms, k.p99_ms, k.max_ms),
                k.xlb_took_p50_ms,
                k.before_generation_p50_ms
            );
        }
    }
    say!(
        "changes: from just before the file is renamed into place → visible in the maps, including up to --poll-ms of xlb's polling; maps: memlock of the pinned maps + every Maglev table; RSS: peak (VmHWM) of xlb run."
    );
    for r in &rep.runs {
        if let Some(why) = &r.xlb_skipped {
            say!("{:>8} Services: xlb not run: {why}", r.services);
        }
    }
    if rep.runs.iter().any(|r| r.observe.is_some()) {
        say!(
            "observability with {} synthetic flows in the connection table (a second xlb run, --conntrack-size 1.25x): ms",
            o.conntrack_entries
        );
        say!(
            "{:>8} {:>10} {:>22} {:>12} {:>16} {:>10} {:>10} {:>12} {:>10}",
            "Services",
            "full walk",
            "scrape p50/p99/max",
            "scrape KiB",
            "services p50/max",
            "census s",
            "census CPU",
            "CPU s/M",
            "CPU share"
        );
        for r in &rep.runs {
            let Some(x) = &r.observe else { continue };
            say!(
                "{:>8} {:>10.0} {:>22} {:>12.0} {:>16} {:>10.1} {:>10.2} {:>12.2} {:>9.1}%",
                r.services,
                x.full_walk_s * 1e3,
                format!(
                    "{:.1} / {:.1} / {:.1}",
                    x.scrape_p50_ms, x.scrape_p99_ms, x.scrape_max_ms
                ),
                x.scrape_bytes as f64 / 1024.0,
                format!("{:.0} / {:.0}", x.services_p50_ms, x.services_max_ms),
                x.census_walk_s,
                x.census_cpu_s,
                x.census_cpu_s_per_million,
                x.census_cpu_share * 100.0
            );
        }
        say!(
            "full walk: one unpaced walk of the table (what each scrape and `xlb services` cost before the census); census: the paced background walk of xlb run (--census-rate), its CPU time, per million entries, and as a share of one core while it walks."
        );
    }
    if rep.runs.iter().any(|r| r.baselines.is_some()) {
        say!("kube-proxy's rules for the same Services, loaded into the node's namespace: s");
        say!(
            "{:>8} {:>10} {:>14} {:>10} {:>10} {:>12}",
            "Services",
            "xlb sync",
            "iptables rules",
            "restore",
            "nft lines",
            "nft -f"
        );
        let opt = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
        for r in &rep.runs {
            let Some(b) = &r.baselines else { continue };
            say!(
                "{:>8} {:>10} {:>14} {:>10} {:>10} {:>12}",
                r.services,
                if r.xlb_skipped.is_some() {
                    "-".to_string()
                } else {
                    format!("{:.2}", r.from_scratch_s)
                },
                b.iptables_rules,
                opt(b.iptables_restore_s),
                b.nft_lines,
                opt(b.nft_s)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_distinct_and_in_the_lab_range() {
        let e = 10;
        let mut seen = BTreeSet::new();
        let range = crate::lab::topology::LAB_RANGE;
        for s in 0..10_000 {
            let svc = bench_service("node-a", s, e);
            assert_eq!(svc.endpoints.len(), e as usize);
            assert!(range.contains(svc.lb_ingress[0]));
            for ep in &svc.endpoints {
                assert!(range.contains(ep.addr), "{}", ep.addr);
                assert!(u32::from(ep.addr) >= u32::from(POD_POOL_BASE));
                assert!(seen.insert((ep.addr, svc.ports[0].target_port)));
            }
        }
        assert_eq!(seen.len(), 100_000);
        assert!(range.contains(Ipv4Addr::from(u32::from(EXTRA_BASE) + EXTRA_SIZE - 1)));
        assert!(u32::from(EXTRA_BASE) + EXTRA_SIZE <= u32::from(POD_POOL_BASE));
    }

    #[test]
    fn log_timestamps() {
        let v =
            serde_json::json!({"timestamp": "2026-11-26T09:56:09.424653Z", "message": "attached"});
        let sod = log_second_of_day(&v).unwrap();
        assert!((sod - (9.0 * 3600.0 + 56.0 * 60.0 + 9.424653)).abs() < 1e-6);
        // 2026-11-26T09:56:09Z is 1795686969 s after the epoch.
        let start = std::time::UNIX_EPOCH + Duration::from_secs_f64(1_795_686_969.0);
        let d = since_start(&[v], start, "attached").unwrap();
        assert!((d - 0.424653).abs() < 1e-4, "{d}");
    }

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 5.0);
        assert_eq!(percentile(&v, 99.0), 10.0);
        assert_eq!(percentile(&v, 100.0), 10.0);
        assert_eq!(percentile(&[3.0], 50.0), 3.0);
    }

    #[test]
    fn generation_lines_are_parsed() {
        let dir = std::env::temp_dir().join(format!("xlb-control-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("xlb.log");
        std::fs::write(
            &log,
            concat!(
                "{\"timestamp\":\"t\",\"level\":\"INFO\",\"message\":\"reading the cluster\"}\n",
                "not json\n",
                "{\"message\":\"programmed\",\"generation\":1,\"took_ms\":12.5,\"since_change_ms\":13.0,\"tables_swapped\":3}\n",
                "{\"message\":\"programmed\",\"generation\":2,\"took_ms\":1.5,\"since_change_ms\":2.0,\"frontends_removed\":1}\n",
            ),
        )
        .unwrap();
        let g = generations(&log);
        assert_eq!(g.len(), 2);
        assert_eq!(
            (g[0].generation, g[0].took_ms, g[0].tables_swapped),
            (1, 12.5, 3)
        );
        assert_eq!((g[1].generation, g[1].frontends_removed), (2, 1));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
