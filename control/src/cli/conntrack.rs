//! `xlb conntrack list|watch|flush`: the connection table as operators see it, with filters.
//! The table is read with [`conntrack::scan`], the datapath layer's bounded walk.
use std::{
    collections::{HashMap, HashSet},
    io::{BufRead as _, IsTerminal as _},
    net::Ipv4Addr,
    time::Instant,
};

use anyhow::{Context as _, bail};
use aya::maps::MapError;
use lb_common::maps::{Backend, CtValue, FlowKey, IPPROTO_TCP, IPPROTO_UDP, RevNatValue};
use xlb_api::{FlowRow, FlushReport, WatchEvent};

use crate::{
    cli::args::{
        ConntrackFlushArgs, ConntrackListArgs, ConntrackWatchArgs, FlowFilterArgs, FlowSort,
        OutputFormat, ProtocolArg,
    },
    cli::output,
    cli::{
        attached::{self, Attached},
        inspect,
    },
    datapath::conntrack::{self, revnat_key},
    datapath::maps::Maps,
    datapath::reconcile::Snapshot,
    sys::clock::{monotonic_ns, unix_now},
};

fn addr(be: u32) -> Ipv4Addr {
    Ipv4Addr::from(be.to_ne_bytes())
}

pub fn proto_name(p: u8) -> String {
    match p {
        IPPROTO_TCP => "TCP".into(),
        IPPROTO_UDP => "UDP".into(),
        other => other.to_string(),
    }
}

/// An address with an optional port (`1.2.3.4`, `1.2.3.4:80`, `:80`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AddrPort {
    addr: Option<Ipv4Addr>,
    port: Option<u16>,
}

impl AddrPort {
    fn parse(flag: &str, s: &str, allow_port_only: bool) -> anyhow::Result<Self> {
        let bad = || {
            anyhow::anyhow!(
                "--{flag} {s:?}: expected ADDR or ADDR:PORT{}",
                if allow_port_only { " or :PORT" } else { "" }
            )
        };
        let (a, p) = match s.rsplit_once(':') {
            Some((a, p)) => (a, Some(p.parse::<u16>().map_err(|_| bad())?)),
            None => (s, None),
        };
        let addr = if a.is_empty() && allow_port_only && p.is_some() {
            None
        } else {
            Some(a.parse::<Ipv4Addr>().map_err(|_| bad())?)
        };
        Ok(AddrPort { addr, port: p })
    }

    fn matches(&self, a: Ipv4Addr, p: u16) -> bool {
        self.addr.is_none_or(|x| x == a) && self.port.is_none_or(|x| x == p)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientMatch {
    Addr(AddrPort),
    Cidr(u32, u8),
}

impl ClientMatch {
    fn parse(s: &str) -> anyhow::Result<Self> {
        if let Some((a, len)) = s.split_once('/') {
            let a: Ipv4Addr = a
                .parse()
                .map_err(|_| anyhow::anyhow!("--client {s:?}: bad CIDR address"))?;
            let len: u8 =
                len.parse().ok().filter(|l| *l <= 32).ok_or_else(|| {
                    anyhow::anyhow!("--client {s:?}: prefix length must be 0..=32")
                })?;
            Ok(ClientMatch::Cidr(u32::from(a) & mask(len), len))
        } else {
            Ok(ClientMatch::Addr(AddrPort::parse("client", s, false)?))
        }
    }

    fn matches(&self, a: Ipv4Addr, p: u16) -> bool {
        match self {
            ClientMatch::Addr(ap) => ap.matches(a, p),
            ClientMatch::Cidr(net, len) => u32::from(a) & mask(*len) == *net,
        }
    }
}

fn mask(len: u8) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - len) }
}

/// The filters of a conntrack command, parsed; all given ones must match.
#[derive(Debug, Clone, Default)]
pub struct FlowFilter {
    frontend: Option<AddrPort>,
    backend: Option<AddrPort>,
    client: Option<ClientMatch>,
    proto: Option<u8>,
    /// Frontend ids of the Services `--service` named.
    frontend_ids: Option<HashSet<u32>>,
    text: Vec<String>,
}

impl FlowFilter {
    pub fn parse(args: &FlowFilterArgs, snap: &Snapshot) -> anyhow::Result<Self> {
        let mut f = FlowFilter::default();
        if let Some(s) = &args.frontend {
            f.frontend = Some(AddrPort::parse("frontend", s, true)?);
            f.text.push(format!("frontend {s}"));
        }
        if let Some(s) = &args.backend {
            f.backend = Some(AddrPort::parse("backend", s, false)?);
            f.text.push(format!("backend {s}"));
        }
        if let Some(s) = &args.client {
            f.client = Some(ClientMatch::parse(s)?);
            f.text.push(format!("client {s}"));
        }
        if let Some(p) = args.protocol {
            f.proto = Some(match p {
                ProtocolArg::Tcp => IPPROTO_TCP,
                ProtocolArg::Udp => IPPROTO_UDP,
            });
            f.text
                .push(format!("protocol {}", proto_name(f.proto.unwrap_or(0))));
        }
        if let Some(s) = &args.service {
            let services = inspect::match_services(snap, s)?;
            f.frontend_ids = Some(
                services
                    .iter()
                    .flat_map(|s| s.frontends.iter().map(|f| f.frontend_id))
                    .collect(),
            );
            f.text.push(format!("service {s}"));
        }
        Ok(f)
    }

    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// `frontend 1.2.3.4:80, protocol TCP`, or `none`.
    pub fn describe(&self) -> String {
        if self.text.is_empty() {
            "none".into()
        } else {
            self.text.join(", ")
        }
    }

    pub fn matches(&self, k: &FlowKey, v: &CtValue, backend: Option<&Backend>) -> bool {
        if self.proto.is_some_and(|p| p != k.proto) {
            return false;
        }
        if let Some(f) = &self.frontend
            && !f.matches(addr(k.dst_addr), u16::from_be(k.dst_port))
        {
            return false;
        }
        if let Some(c) = &self.client
            && !c.matches(addr(k.src_addr), u16::from_be(k.src_port))
        {
            return false;
        }
        if let Some(b) = &self.backend {
            match backend {
                Some(be) if b.matches(addr(be.addr), u16::from_be(be.port)) => {}
                _ => return false,
            }
        }
        if let Some(ids) = &self.frontend_ids
            && !ids.contains(&v.frontend_id)
        {
            return false;
        }
        true
    }
}

/// Looks up backends (cached per id) and the names `xlb run` published.
pub struct Resolver<'a> {
    maps: &'a Maps,
    backends: HashMap<u32, Option<Backend>>,
    service_of_frontend: HashMap<u32, String>,
    node_of_backend: HashMap<u32, String>,
}

impl<'a> Resolver<'a> {
    pub fn new(maps: &'a Maps, snap: &Snapshot) -> Self {
        let mut service_of_frontend = HashMap::new();
        let mut node_of_backend = HashMap::new();
        for s in &snap.services {
            for f in &s.frontends {
                service_of_frontend.insert(f.frontend_id, s.name.clone());
            }
            for b in &s.backends {
                if let Some(n) = &b.node {
                    node_of_backend.insert(b.backend_id, n.clone());
                }
            }
        }
        Resolver {
            maps,
            backends: HashMap::new(),
            service_of_frontend,
            node_of_backend,
        }
    }

    /// The backend record of `id`, if that id is in use.
    pub fn backend(&mut self, id: u32) -> Option<Backend> {
        let maps = self.maps;
        *self.backends.entry(id).or_insert_with(|| {
            maps.backends
                .get(&id, 0)
                .ok()
                .filter(|b: &Backend| b.flags != 0)
        })
    }

    pub fn row(&mut self, k: &FlowKey, v: &CtValue, now_ns: u64) -> FlowRow {
        let b = self.backend(v.backend_id);
        FlowRow {
            client: addr(k.src_addr),
            client_port: u16::from_be(k.src_port),
            frontend: addr(k.dst_addr),
            frontend_port: u16::from_be(k.dst_port),
            protocol: proto_name(k.proto),
            backend: b.map(|b| addr(b.addr)),
            backend_port: b.map(|b| u16::from_be(b.port)),
            backend_id: v.backend_id,
            age_s: now_ns.saturating_sub(v.created_ns) as f64 / 1e9,
            idle_s: now_ns.saturating_sub(v.last_seen_ns) as f64 / 1e9,
            frontend_id: v.frontend_id,
            service: self.service_of_frontend.get(&v.frontend_id).cloned(),
            backend_node: self.node_of_backend.get(&v.backend_id).cloned(),
        }
    }
}

/// The flows matching `filter`, as rows, with their keys.
fn matching(
    dp: &Attached,
    snap: &Snapshot,
    filter: &FlowFilter,
) -> anyhow::Result<Vec<(FlowKey, CtValue, FlowRow)>> {
    let flows = conntrack::scan(&dp.maps)?;
    let now = monotonic_ns();
    let mut r = Resolver::new(&dp.maps, snap);
    let mut out = Vec::new();
    for (k, v) in flows {
        let b = r.backend(v.backend_id);
        if filter.matches(&k, &v, b.as_ref()) {
            let row = r.row(&k, &v, now);
            out.push((k, v, row));
        }
    }
    Ok(out)
}

fn sort_rows(rows: &mut [FlowRow], sort: FlowSort) {
    let client = |f: &FlowRow| (f.client, f.client_port);
    let frontend = |f: &FlowRow| (f.frontend, f.frontend_port, f.protocol.clone());
    let backend = |f: &FlowRow| (f.backend, f.backend_port);
    match sort {
        FlowSort::Frontend => rows.sort_by_key(|a| (frontend(a), client(a))),
        FlowSort::Client => rows.sort_by_key(|a| (client(a), frontend(a))),
        FlowSort::Backend => rows.sort_by_key(|a| (backend(a), client(a))),
        FlowSort::Age => rows.sort_by(|a, b| b.age_s.total_cmp(&a.age_s)),
        FlowSort::Idle => rows.sort_by(|a, b| b.idle_s.total_cmp(&a.idle_s)),
    }
}

fn backend_text(f: &FlowRow) -> String {
    match (f.backend, f.backend_port) {
        (Some(a), Some(p)) => format!("{a}:{p}"),
        _ => format!("(released, id {})", f.backend_id),
    }
}

/// `xlb conntrack list`: walks the table once, printing each matching flow as it is found
/// (with `--sort`, once the walk ends); `--limit N` ends the walk after N flows.
pub fn list(args: &ConntrackListArgs) -> anyhow::Result<()> {
    let dp = attached::open(&args.out.pin)?;
    let snap = attached::read_snapshot(&dp.pin_dir)?;
    let filter = FlowFilter::parse(&args.filter, &snap)?;
    let limit = args.limit.unwrap_or(usize::MAX);
    let mut out = FlowWriter::new(args.out.output, std::io::stdout().lock());
    let (shown, _) = list_flows(&dp.maps, &snap, &filter, args.sort, limit, &mut out)?;
    out.finish(shown)
}

/// Walks `maps`' connection table and writes the flows `filter` matches to `out`, at most
/// `limit`; unsorted, each as the walk finds it (an entry a churning walk meets twice is written
/// once: the keys written are remembered, 16 bytes each). Returns how many were written, and
/// how many entries the walk read.
pub fn list_flows<W: std::io::Write>(
    maps: &Maps,
    snap: &Snapshot,
    filter: &FlowFilter,
    sort: Option<FlowSort>,
    limit: usize,
    out: &mut FlowWriter<W>,
) -> anyhow::Result<(usize, u64)> {
    let now = monotonic_ns();
    let mut r = Resolver::new(maps, snap);
    let mut seen: HashSet<FlowKey> = HashSet::new();
    let mut kept: Vec<FlowRow> = Vec::new();
    let mut written = 0usize;
    let mut failed: Option<anyhow::Error> = None;
    let mut read = 0;
    if limit > 0 {
        read = conntrack::walk_paced(maps, None, |k, v| {
            let b = r.backend(v.backend_id);
            if !filter.matches(&k, &v, b.as_ref()) || !seen.insert(k) {
                return true;
            }
            let row = r.row(&k, &v, now);
            match sort {
                None => match out.row(&row) {
                    Ok(true) => {
                        written += 1;
                        written < limit
                    }
                    // The reader went away (`| head`): nothing more to walk for.
                    Ok(false) => false,
                    Err(e) => {
                        failed = Some(e);
                        false
                    }
                },
                Some(sort) => {
                    kept.push(row);
                    // Only the first `limit` in sort order can be printed: keep at most twice.
                    if kept.len() >= limit.saturating_mul(2).max(1024) {
                        sort_rows(&mut kept, sort);
                        kept.truncate(limit);
                    }
                    true
                }
            }
        })?;
    }
    if let Some(e) = failed {
        return Err(e);
    }
    if let Some(sort) = sort {
        sort_rows(&mut kept, sort);
        kept.truncate(limit);
        for row in &kept {
            if !out.row(row)? {
                break;
            }
            written += 1;
        }
    }
    Ok((written, read))
}

/// Flow rows written as they come: a table with fixed column widths (a long cell pushes its
/// line wider), a JSON array or a YAML sequence, the same documents `-o json|yaml` always gave.
pub struct FlowWriter<W: std::io::Write> {
    format: OutputFormat,
    out: std::io::BufWriter<W>,
    rows: usize,
    /// The reader closed the pipe.
    closed: bool,
}

/// The human table's columns and their widths (right-aligned when negative).
const FLOW_COLUMNS: [(&str, i32); 8] = [
    ("PROTO", 5),
    ("CLIENT", 21),
    ("FRONTEND", 21),
    ("BACKEND", 21),
    ("NODE", 10),
    ("SERVICE", 24),
    ("AGE", -7),
    ("IDLE", -7),
];

impl<W: std::io::Write> FlowWriter<W> {
    pub fn new(format: OutputFormat, out: W) -> Self {
        FlowWriter {
            format,
            out: std::io::BufWriter::new(out),
            rows: 0,
            closed: false,
        }
    }

    fn line(cells: &[String]) -> String {
        let mut line = String::new();
        for (i, ((_, w), c)) in FLOW_COLUMNS.iter().zip(cells).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let w = w.unsigned_abs() as usize;
            let pad = w.saturating_sub(c.chars().count());
            if FLOW_COLUMNS[i].1 < 0 {
                line.extend(std::iter::repeat_n(' ', pad));
                line.push_str(c);
            } else {
                line.push_str(c);
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        line.truncate(line.trim_end().len());
        line.push('\n');
        line
    }

    fn write(&mut self, text: &str) -> anyhow::Result<bool> {
        if self.closed {
            return Ok(false);
        }
        match std::io::Write::write_all(&mut self.out, text.as_bytes()) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Writes one flow; false once the reader is gone.
    pub fn row(&mut self, f: &FlowRow) -> anyhow::Result<bool> {
        let first = self.rows == 0;
        self.rows += 1;
        let text = match self.format {
            OutputFormat::Human => {
                let mut t = String::new();
                if first {
                    let header: Vec<String> =
                        FLOW_COLUMNS.iter().map(|(n, _)| n.to_string()).collect();
                    t.push_str(&Self::line(&header));
                }
                t.push_str(&Self::line(&[
                    f.protocol.clone(),
                    format!("{}:{}", f.client, f.client_port),
                    format!("{}:{}", f.frontend, f.frontend_port),
                    backend_text(f),
                    f.backend_node.clone().unwrap_or_else(|| "-".into()),
                    f.service.clone().unwrap_or_else(|| "-".into()),
                    output::duration(f.age_s),
                    output::duration(f.idle_s),
                ]));
                t
            }
            OutputFormat::Json => {
                let body = serde_json::to_string_pretty(f)?.replace('\n', "\n  ");
                format!("{}  {body}", if first { "[\n" } else { ",\n" })
            }
            // A one-element sequence per flow: together, the sequence of all.
            OutputFormat::Yaml => yaml_serde::to_string(&[f])?,
        };
        self.write(&text)
    }

    /// Closes the document (`shown` flows written).
    pub fn finish(&mut self, shown: usize) -> anyhow::Result<()> {
        let tail = match (self.format, self.rows) {
            (OutputFormat::Human, 0) => {
                let header: Vec<String> = FLOW_COLUMNS.iter().map(|(n, _)| n.to_string()).collect();
                format!("{}0 flows\n", Self::line(&header))
            }
            (OutputFormat::Human, _) => format!("{shown} flows\n"),
            (OutputFormat::Json, 0) => "[]\n".into(),
            (OutputFormat::Json, _) => "\n]\n".into(),
            (OutputFormat::Yaml, 0) => "[]\n".into(),
            (OutputFormat::Yaml, _) => String::new(),
        };
        self.write(&tail)?;
        match std::io::Write::flush(&mut self.out) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            other => Ok(other?),
        }
    }

    /// What was written so far, for tests.
    pub fn into_inner(self) -> W {
        self.out.into_inner().ok().expect("flushing a FlowWriter")
    }
}

/// `xlb conntrack watch`: reads the table every `--interval` and prints flows that appeared
/// (`new`) and flows that left it (`end`: expired, evicted or flushed). A key that reappears
/// with a new creation time is a new flow (the old one ended).
pub fn watch(args: &ConntrackWatchArgs) -> anyhow::Result<()> {
    let dp = attached::open(&args.out.pin)?;
    let mut snap = attached::read_snapshot(&dp.pin_dir)?;
    let filter = FlowFilter::parse(&args.filter, &snap)?;
    let started = Instant::now();
    let mut prev: HashMap<FlowKey, (u64, FlowRow)> = matching(&dp, &snap, &filter)?
        .into_iter()
        .map(|(k, v, r)| (k, (v.created_ns, r)))
        .collect();
    let start = WatchEvent::Start {
        time: unix_now(),
        flows: prev.len(),
        filter: filter.describe(),
    };
    match args.out.output {
        OutputFormat::Json => output::print(&format!("{}\n", serde_json::to_string(&start)?))?,
        OutputFormat::Yaml => output::print(&format!("---\n{}", yaml_serde::to_string(&start)?))?,
        OutputFormat::Human => output::print(&format!(
            "{} watching {} flows (filter: {}); NEW and END lines follow\n",
            output::clock(),
            prev.len(),
            filter.describe()
        ))?,
    }
    loop {
        let left = args.duration.map(|d| d.saturating_sub(started.elapsed()));
        if left.is_some_and(|l| l.is_zero()) {
            return Ok(());
        }
        std::thread::sleep(left.map_or(args.interval, |l| l.min(args.interval)));
        // Names may have changed (a reload); a missing state file keeps the old ones.
        if let Ok(s) = attached::read_snapshot(&dp.pin_dir) {
            snap = s;
        }
        let now: HashMap<FlowKey, (u64, FlowRow)> = matching(&dp, &snap, &filter)?
            .into_iter()
            .map(|(k, v, r)| (k, (v.created_ns, r)))
            .collect();
        let events = watch_events(&prev, &now, unix_now());
        let mut text = String::new();
        for e in &events {
            match args.out.output {
                OutputFormat::Json => {
                    text.push_str(&serde_json::to_string(e)?);
                    text.push('\n');
                }
                OutputFormat::Yaml => {
                    text.push_str("---\n");
                    text.push_str(&yaml_serde::to_string(e)?);
                }
                OutputFormat::Human => {
                    let (event, f) = match e {
                        WatchEvent::New { flow, .. } => ("NEW", flow),
                        WatchEvent::End { flow, .. } => ("END", flow),
                        WatchEvent::Start { .. } => continue,
                    };
                    let tail = if event == "END" {
                        format!(
                            "  age {} idle {}",
                            output::duration(f.age_s),
                            output::duration(f.idle_s)
                        )
                    } else {
                        String::new()
                    };
                    text.push_str(&format!(
                        "{} {:<3} {} {}:{} -> {}:{} -> {}{}{}\n",
                        output::clock(),
                        event,
                        f.protocol,
                        f.client,
                        f.client_port,
                        f.frontend,
                        f.frontend_port,
                        backend_text(f),
                        f.service
                            .as_ref()
                            .map(|s| format!("  {s}"))
                            .unwrap_or_default(),
                        tail
                    ));
                }
            }
        }
        if !text.is_empty() {
            output::print(&text)?;
        }
        prev = now;
    }
}

type Seen = HashMap<FlowKey, (u64, FlowRow)>;

/// The flows that left (`end`) and appeared (`new`) from `prev` to `now`, ends first, each group
/// in client order. A key seen again with another creation time ended and began again.
fn watch_events(prev: &Seen, now: &Seen, time: f64) -> Vec<WatchEvent> {
    let changed = |a: &Seen, b: &Seen| -> Vec<FlowRow> {
        let mut rows: Vec<FlowRow> = a
            .iter()
            .filter(|(k, (created, _))| b.get(k).is_none_or(|(c, _)| c != created))
            .map(|(_, (_, row))| row.clone())
            .collect();
        rows.sort_by_key(|r| (r.client, r.client_port));
        rows
    };
    let ends = changed(prev, now)
        .into_iter()
        .map(|flow| WatchEvent::End { time, flow });
    let news = changed(now, prev)
        .into_iter()
        .map(|flow| WatchEvent::New { time, flow });
    ends.chain(news).collect()
}

fn is_gone(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// Asks on the terminal whether to flush; without a terminal on stdin there is nobody to ask.
fn confirm(what: &str) -> anyhow::Result<()> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!("refusing to {what} without confirmation (stdin is not a terminal); pass --yes");
    }
    eprint!("{what}? [y/N] ");
    let mut line = String::new();
    if stdin.lock().read_line(&mut line)? == 0 {
        eprintln!();
        bail!("flush cancelled (end of input); nothing removed");
    }
    match line.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Ok(()),
        _ => bail!("flush cancelled; nothing removed"),
    }
}

/// `xlb conntrack flush`: removes the matching conntrack entries and their reverse-NAT entries.
/// A flushed flow that is still open re-picks its backend on its next packet (the same one while
/// the Service's table is unchanged).
pub fn flush(args: &ConntrackFlushArgs) -> anyhow::Result<()> {
    let mut dp = attached::open(&args.out.pin)?;
    let snap = attached::read_snapshot(&dp.pin_dir)?;
    let filter = FlowFilter::parse(&args.filter, &snap)?;
    let found = matching(&dp, &snap, &filter)?;
    let mut report = FlushReport {
        filter: filter.describe(),
        matched: found.len(),
        flushed: 0,
        revnat_removed: 0,
        flows: Vec::new(),
    };
    if !found.is_empty() && !args.yes {
        let what = if filter.is_empty() {
            format!("all {} flows", found.len())
        } else {
            format!("{} flows matching {}", found.len(), filter.describe())
        };
        confirm(&format!("flush {what}"))?;
    }
    let mut resolver_backends: HashMap<u32, Option<Backend>> = HashMap::new();
    // Reverse-NAT entries of flows whose backend id was released: found by their values.
    let mut unresolved: Vec<FlowKey> = Vec::new();
    for (k, v, row) in found {
        match dp.maps.conntrack.remove(&k) {
            Ok(()) => report.flushed += 1,
            Err(e) if is_gone(&e) => {}
            Err(e) => return Err(e).context("removing from XLB_CONNTRACK"),
        }
        let b = *resolver_backends.entry(v.backend_id).or_insert_with(|| {
            dp.maps
                .backends
                .get(&v.backend_id, 0)
                .ok()
                .filter(|b| b.flags != 0)
        });
        match b {
            Some(b) => {
                let rk = revnat_key(&k, &b);
                let ours = dp
                    .maps
                    .revnat
                    .get(&rk, 0)
                    .ok()
                    .is_some_and(|r: RevNatValue| {
                        r.frontend_addr == k.dst_addr && r.frontend_port == k.dst_port
                    });
                if ours {
                    match dp.maps.revnat.remove(&rk) {
                        Ok(()) => report.revnat_removed += 1,
                        Err(e) if is_gone(&e) => {}
                        Err(e) => return Err(e).context("removing from XLB_REVNAT"),
                    }
                }
            }
            None => unresolved.push(k),
        }
        report.flows.push(row);
    }
    if !unresolved.is_empty() {
        let want: HashSet<(u32, u16, u8, u32, u16)> = unresolved
            .iter()
            .map(|k| (k.src_addr, k.src_port, k.proto, k.dst_addr, k.dst_port))
            .collect();
        let mut doomed = Vec::new();
        conntrack::walk_revnat(&dp.maps, |rk, rv| {
            if want.contains(&(
                rk.dst_addr,
                rk.dst_port,
                rk.proto,
                rv.frontend_addr,
                rv.frontend_port,
            )) {
                doomed.push(rk);
            }
        })?;
        for rk in doomed {
            match dp.maps.revnat.remove(&rk) {
                Ok(()) => report.revnat_removed += 1,
                Err(e) if is_gone(&e) => {}
                Err(e) => return Err(e).context("removing from XLB_REVNAT"),
            }
        }
    }
    tracing::info!(
        filter = %report.filter,
        flushed = report.flushed,
        revnat_removed = report.revnat_removed,
        "conntrack flushed"
    );
    output::emit(args.out.output, &report, |r| {
        if r.matched == 0 {
            format!("no flows match (filter: {})\n", r.filter)
        } else {
            format!(
                "flushed {} flows and {} reverse-NAT entries (filter: {})\n",
                r.flushed, r.revnat_removed, r.filter
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn be(a: Ipv4Addr) -> u32 {
        u32::from_ne_bytes(a.octets())
    }

    fn key(client: [u8; 4], cport: u16, fe: [u8; 4], fport: u16, proto: u8) -> FlowKey {
        FlowKey {
            src_addr: be(Ipv4Addr::from(client)),
            dst_addr: be(Ipv4Addr::from(fe)),
            src_port: cport.to_be(),
            dst_port: fport.to_be(),
            proto,
            _pad: [0; 3],
        }
    }

    fn filter(f: FlowFilterArgs) -> FlowFilter {
        FlowFilter::parse(&f, &Snapshot::default()).unwrap()
    }

    #[test]
    fn addr_port_forms() {
        let ap = AddrPort::parse("frontend", "1.2.3.4:80", true).unwrap();
        assert_eq!(ap.addr, Some(Ipv4Addr::new(1, 2, 3, 4)));
        assert_eq!(ap.port, Some(80));
        let ap = AddrPort::parse("frontend", ":30080", true).unwrap();
        assert_eq!((ap.addr, ap.port), (None, Some(30080)));
        assert!(AddrPort::parse("backend", ":80", false).is_err());
        assert!(AddrPort::parse("backend", "1.2.3:80", false).is_err());
        let e = AddrPort::parse("backend", "x", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--backend"), "{e}");
    }

    #[test]
    fn filters_match_flows() {
        let k = key([198, 18, 0, 10], 10001, [198, 19, 255, 1], 80, IPPROTO_TCP);
        let v = CtValue {
            backend_id: 3,
            frontend_id: 7,
            ..Default::default()
        };
        let b = Backend {
            addr: be(Ipv4Addr::new(198, 18, 1, 11)),
            port: 8080u16.to_be(),
            flags: 1,
            proto: IPPROTO_TCP,
            node_addr: 0,
        };
        let yes = |f: FlowFilterArgs| filter(f).matches(&k, &v, Some(&b));
        assert!(yes(FlowFilterArgs::default()));
        assert!(yes(FlowFilterArgs {
            frontend: Some("198.19.255.1:80".into()),
            ..Default::default()
        }));
        assert!(yes(FlowFilterArgs {
            frontend: Some(":80".into()),
            ..Default::default()
        }));
        assert!(!yes(FlowFilterArgs {
            frontend: Some(":81".into()),
            ..Default::default()
        }));
        assert!(yes(FlowFilterArgs {
            backend: Some("198.18.1.11".into()),
            ..Default::default()
        }));
        assert!(!yes(FlowFilterArgs {
            backend: Some("198.18.1.12".into()),
            ..Default::default()
        }));
        assert!(yes(FlowFilterArgs {
            client: Some("198.18.0.0/24".into()),
            ..Default::default()
        }));
        assert!(!yes(FlowFilterArgs {
            client: Some("198.18.0.10:10002".into()),
            ..Default::default()
        }));
        assert!(!yes(FlowFilterArgs {
            protocol: Some(ProtocolArg::Udp),
            ..Default::default()
        }));
        // A released backend never matches a backend filter.
        assert!(
            !filter(FlowFilterArgs {
                backend: Some("198.18.1.11".into()),
                ..Default::default()
            })
            .matches(&k, &v, None)
        );
    }

    #[test]
    fn revnat_key_is_the_reply_tuple() {
        let k = key([198, 18, 0, 10], 10001, [198, 19, 255, 1], 80, IPPROTO_UDP);
        let b = Backend {
            addr: be(Ipv4Addr::new(198, 18, 1, 11)),
            port: 8080u16.to_be(),
            flags: 1,
            proto: IPPROTO_UDP,
            node_addr: 0,
        };
        let r = revnat_key(&k, &b);
        assert_eq!(addr(r.src_addr), Ipv4Addr::new(198, 18, 1, 11));
        assert_eq!(addr(r.dst_addr), Ipv4Addr::new(198, 18, 0, 10));
        assert_eq!(u16::from_be(r.src_port), 8080);
        assert_eq!(u16::from_be(r.dst_port), 10001);
    }

    #[test]
    fn cidr_masks() {
        assert_eq!(mask(0), 0);
        assert_eq!(mask(24), 0xffff_ff00);
        assert_eq!(mask(32), u32::MAX);
        assert!(ClientMatch::parse("1.2.3.4/33").is_err());
    }

    #[test]
    fn sorts() {
        let row = |port: u16, age: f64| FlowRow {
            client: Ipv4Addr::new(198, 18, 0, 10),
            client_port: port,
            frontend: Ipv4Addr::new(198, 19, 255, 1),
            frontend_port: 80,
            protocol: "TCP".into(),
            backend: None,
            backend_port: None,
            backend_id: 0,
            age_s: age,
            idle_s: 0.0,
            frontend_id: 0,
            service: None,
            backend_node: None,
        };
        let mut rows = vec![row(3, 1.0), row(1, 5.0), row(2, 3.0)];
        sort_rows(&mut rows, FlowSort::Client);
        assert_eq!(
            rows.iter().map(|r| r.client_port).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        sort_rows(&mut rows, FlowSort::Age);
        assert_eq!(
            rows.iter().map(|r| r.client_port).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        sort_rows(&mut rows, FlowSort::Frontend);
        assert_eq!(
            rows.iter().map(|r| r.client_port).collect::<Vec<_>>(),
            [1, 2, 3]
        );
    }
}
