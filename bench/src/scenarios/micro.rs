//! `xlb-bench micro`: BPF_PROG_TEST_RUN ns/packet per datapath path against the floor. The
//! measurement loads xlb's programs in-process, which only `control/benches/micro.rs` may do
//! (nothing outside `control` uses its internals), so this runs that benchmark
//! (`cargo bench -p xlb --bench micro`, JSON into `--out`) and prints and keeps its results.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::say;
use crate::scenarios::Machine;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct MicroRow {
    pub path: String,
    pub ns_per_packet: f64,
    pub floor_ns: f64,
    #[serde(default)]
    pub wrapped: bool,
    #[serde(default)]
    pub wrapper_ns: f64,
    #[serde(default)]
    pub counter: Option<String>,
    #[serde(default)]
    pub runs: Vec<f64>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct MicroReport {
    pub scenario: String,
    pub machine: Machine,
    pub rows: Vec<MicroRow>,
}

/// The workspace this `xlb-bench` was built from.
fn workspace() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Runs the micro benchmark (release) with its JSON going to `out`, and reads it back.
pub fn run(out: &Path) -> Result<MicroReport> {
    std::fs::create_dir_all(out)?;
    let out = out
        .canonicalize()
        .with_context(|| format!("resolving {}", out.display()))?;
    let status = Command::new("cargo")
        .args(["bench", "-p", "xlb", "--bench", "micro"])
        .current_dir(workspace())
        .env("XLB_BENCH_OUT", &out)
        .status()
        .context("running `cargo bench -p xlb --bench micro` (needs cargo on PATH)")?;
    if !status.success() {
        bail!("`cargo bench -p xlb --bench micro` failed ({status})");
    }
    let text = std::fs::read_to_string(out.join("micro.json"))?;
    let rows: Vec<MicroRow> = serde_json::from_str(&text).context("parsing micro.json")?;
    Ok(MicroReport {
        scenario: "micro".into(),
        machine: Machine::this(),
        rows,
    })
}

pub fn print(rep: &MicroReport) {
    say!("micro: BPF_PROG_TEST_RUN ns/packet (median of interleaved runs)");
    say!(
        "{:<44} {:>8} {:>11} {:>8}",
        "path",
        "ns/pkt",
        "over floor",
        "x floor"
    );
    for r in &rep.rows {
        say!(
            "{:<44} {:>8.0} {:>11.0} {:>8.2}",
            r.path,
            r.ns_per_packet,
            r.ns_per_packet - r.floor_ns,
            r.ns_per_packet / r.floor_ns.max(1.0)
        );
    }
}
