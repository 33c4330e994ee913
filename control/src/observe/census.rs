//! The connection census: open connections per frontend and per backend, counted by one paced
//! background walk of the connection table inside `xlb run`, so that `/metrics`, `xlb services`
//! and `xlb top` cost the same at any table size (they read the last census, never the table).
//!
//! Why a walk and not counters kept by the datapath: the table is an LRU hash, and the kernel
//! evicts from it without telling anyone, so a gauge the datapath increments on insert could
//! never be decremented for evicted flows and would drift upwards for ever on a full table.
//! A walk sees exactly what the table holds. Its cost is bounded by pacing, not by the table:
//! it reads at most `--census-rate` entries a second (sleeping between chunks), and starts again
//! at most every `--census-interval`. Its CPU time is measured on its own thread and published
//! (`xlb_conntrack_census_cpu_seconds_total`); docs/benchmarks.md has the figures.
//!
//! The daemon keeps the last census for `/metrics` and writes it, compact, next to its state
//! file ([`crate::datapath::pins::census_file`]) for the CLI: a file, like the names it already
//! publishes, rather than an HTTP endpoint (`--metrics-addr` is optional, and the CLI would
//! have to find it) or a pinned map (a layout change for data only user space reads).
use std::{
    collections::{BTreeMap, HashSet},
    hash::BuildHasher as _,
    path::{Path, PathBuf},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use lb_common::maps::FlowKey;

use crate::{
    datapath::{conntrack, maps::Maps, pins},
    sys::clock::{monotonic_ns, thread_cpu_s, unix_now},
};

/// Default pace: entries read per second (about a tenth of a core on the benchmark machine).
pub const DEFAULT_RATE: u32 = 50_000;
/// Default least time from the start of one census to the start of the next.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);

/// How the census walks.
#[derive(Debug, Clone, Copy)]
pub struct CensusOptions {
    /// At most this many entries a second.
    pub per_s: u32,
    /// A census starts at most this often.
    pub interval: Duration,
}

impl Default for CensusOptions {
    fn default() -> Self {
        CensusOptions {
            per_s: DEFAULT_RATE,
            interval: DEFAULT_INTERVAL,
        }
    }
}

/// One walk of the connection table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Census {
    /// Unix times the walk started and ended.
    pub started_unix: f64,
    pub taken_unix: f64,
    /// Wall time of the walk (mostly the pacing's sleep).
    pub walk_s: f64,
    /// CPU time (user and system) the walk used.
    pub cpu_s: f64,
    /// The pace it walked at (entries a second).
    pub per_s: u32,
    /// Entries read, a churning table's repeats included.
    pub read: u64,
    /// Distinct entries, less those [`sweep`] removed (the table's fill after the census).
    pub entries: u64,
    /// Of those, the active ones (`CtValue::is_active`), which the per-frontend and
    /// per-backend counts count.
    pub active: u64,
    pub capacity: u32,
    pub per_frontend: BTreeMap<u32, u64>,
    pub per_backend: BTreeMap<u32, u64>,
    /// Monotonic time the walk started (ns): a backend that left the plan before it and that
    /// no flow of the walk points at is unused ([`Census::referenced`]).
    #[serde(default)]
    pub started_ns: u64,
    /// Flows idle past their timeout when read, that [`sweep`] removed after the walk.
    #[serde(default)]
    pub expired: u64,
    /// Backend ids the flows that are not expired point at (the run loop releases drained
    /// backends against it).
    #[serde(skip)]
    pub referenced: HashSet<u32>,
    /// Flows expired when read (key, backend id), left for [`sweep`].
    #[serde(skip)]
    pub stale: Vec<(FlowKey, u32)>,
}

impl Census {
    pub fn frontend(&self, id: u32) -> u64 {
        self.per_frontend.get(&id).copied().unwrap_or(0)
    }

    pub fn backend(&self, id: u32) -> u64 {
        self.per_backend.get(&id).copied().unwrap_or(0)
    }

    /// Seconds since the walk ended.
    pub fn age_s(&self) -> f64 {
        (unix_now() - self.taken_unix).max(0.0)
    }
}

/// Walks the table once at `per_s` entries a second (`None`: unpaced) and counts it. Repeats
/// of a churning walk are counted once (a hash of each key is kept for the walk: 8 bytes an
/// entry, freed when it ends).
pub fn take(maps: &Maps, per_s: Option<u32>) -> anyhow::Result<Census> {
    take_at(maps, per_s, monotonic_ns)
}

/// [`take`] with `now` as the monotonic clock that ages the flows.
fn take_at(maps: &Maps, per_s: Option<u32>, now: impl Fn() -> u64) -> anyhow::Result<Census> {
    let started_unix = unix_now();
    let (t0, cpu0) = (Instant::now(), thread_cpu_s());
    let mut c = Census {
        started_unix,
        started_ns: now(),
        per_s: per_s.unwrap_or(0),
        capacity: conntrack::capacity(maps)?,
        ..Default::default()
    };
    let hasher = std::hash::RandomState::new();
    let mut seen: HashSet<u64> = HashSet::new();
    c.read = conntrack::walk_paced(maps, per_s, |k, v| {
        if seen.insert(hasher.hash_one(k)) {
            c.entries += 1;
            let now = now();
            if v.is_expired(k.proto, now) {
                c.stale.push((k, v.backend_id));
            } else {
                c.referenced.insert(v.backend_id);
            }
            if v.is_active(k.proto, now) {
                c.active += 1;
                *c.per_frontend.entry(v.frontend_id).or_default() += 1;
                *c.per_backend.entry(v.backend_id).or_default() += 1;
            }
        }
        true
    })?;
    c.walk_s = t0.elapsed().as_secs_f64();
    c.cpu_s = thread_cpu_s() - cpu0;
    c.taken_unix = unix_now();
    Ok(c)
}

/// The idle sweep, after a walk: removes the flows `census` read as expired that still are
/// (one refreshed since is counted as a reference instead), each with its reverse NAT. The
/// walk is paced, so this costs the run loop nothing and the table no second walk.
pub fn sweep(maps: &mut Maps, census: &mut Census) -> anyhow::Result<()> {
    sweep_at(maps, census, monotonic_ns)
}

fn sweep_at(maps: &mut Maps, census: &mut Census, now: impl Fn() -> u64) -> anyhow::Result<()> {
    for (k, backend_id) in std::mem::take(&mut census.stale) {
        match maps.conntrack.get(&k, 0) {
            Ok(v) if v.is_expired(k.proto, now()) => {
                if conntrack::remove_flow(maps, &k, backend_id)? {
                    census.expired += 1;
                }
            }
            Ok(v) => {
                census.referenced.insert(v.backend_id);
            }
            Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(e).context("reading XLB_CONNTRACK"),
        }
    }
    census.entries = census.entries.saturating_sub(census.expired);
    Ok(())
}

/// One unpaced census and its sweep as of `now` (monotonic ns): the flows it expired. For
/// tests and tools that age the table without waiting.
pub fn expire_at(maps: &mut Maps, now: u64) -> anyhow::Result<u64> {
    let mut c = take_at(maps, None, || now)?;
    sweep_at(maps, &mut c, || now)?;
    Ok(c.expired)
}

/// Writes `census` for the CLI, atomically.
pub fn publish(pin_dir: &Path, census: &Census) -> anyhow::Result<()> {
    let path = pins::census_file(pin_dir);
    let dir = path.parent().context("census file has no parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(census)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
}

/// What the CLI knows of the connections.
#[derive(Debug, Clone)]
pub enum Published {
    /// The running `xlb run`'s last census.
    Current(Census),
    /// No `xlb run` holds the datapath: nobody counts (a census left behind is not shown).
    NoDaemon,
    /// `xlb run` is running but has not finished its first census yet.
    NotYet,
}

/// The census published for the datapath at `pin_dir`.
pub fn read(pin_dir: &Path) -> anyhow::Result<Published> {
    if !pins::in_use(pin_dir) {
        return Ok(Published::NoDaemon);
    }
    let path = pins::census_file(pin_dir);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Published::Current(
            serde_json::from_slice(&bytes)
                .with_context(|| format!("parsing {}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Published::NotYet),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Runs the census in a thread of its own for as long as the process lives: each one swept
/// ([`sweep`]), published for the CLI and handed to `taken` (the run status, for `/metrics`
/// and the run loop's release of drained backends).
pub fn spawn(
    pin_dir: PathBuf,
    opts: CensusOptions,
    taken: impl Fn(Census) + Send + 'static,
) -> anyhow::Result<JoinHandle<()>> {
    let mut maps =
        Maps::from_pins(&pin_dir).context("opening the maps for the connection census")?;
    std::thread::Builder::new()
        .name("xlb-census".into())
        .spawn(move || {
            loop {
                let started = Instant::now();
                match take(&maps, Some(opts.per_s)) {
                    Ok(mut c) => {
                        if let Err(e) = sweep(&mut maps, &mut c) {
                            tracing::warn!(error = format!("{e:#}"), "idle sweep");
                        }
                        if let Err(e) = publish(&pin_dir, &c) {
                            tracing::warn!(error = format!("{e:#}"), "connection census");
                        }
                        taken(c);
                    }
                    Err(e) => tracing::warn!(error = format!("{e:#}"), "connection census"),
                }
                // At least a moment between walks, however long one took.
                let rest = opts
                    .interval
                    .saturating_sub(started.elapsed())
                    .max(Duration::from_millis(100));
                std::thread::sleep(rest);
            }
        })
        .context("starting the connection census")
}
