//! What the `--quick` smoke tests of the scenarios share: run one scenario of the release
//! `xlb-bench`, check it passed, read the JSON it wrote, and check that none of its lab
//! namespaces outlived it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A finished scenario run.
pub struct QuickRun {
    pub json: serde_json::Value,
    pub elapsed: Duration,
}

/// Runs `xlb-bench <scenario> --quick <extra...> --out <tmp>`, asserts that it exits 0 and
/// prints `<scenario> --quick: OK`, and returns `<tmp>/<json_name>.json`.
pub fn run_quick(scenario: &str, extra: &[&str], json_name: &str) -> QuickRun {
    let out = std::env::temp_dir().join(format!("xlb-bench-{json_name}-{}", std::process::id()));
    let start = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_xlb-bench"))
        .args([scenario, "--quick"])
        .args(extra)
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running xlb-bench");
    // Lab namespaces are named after the process that builds them.
    let pid = child.id();
    let run = child.wait_with_output().expect("waiting for xlb-bench");
    let elapsed = start.elapsed();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "xlb-bench {scenario} --quick failed ({}):\n{stdout}\n{stderr}",
        run.status
    );
    assert!(
        stdout.contains(&format!("{scenario} --quick: OK")),
        "{stdout}"
    );
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("xlblab-{pid}-")))
        .collect();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    let path = out.join(format!("{json_name}.json"));
    let json = serde_json::from_slice(
        &std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .expect("the scenario's JSON");
    std::fs::remove_dir_all(&out).ok();
    QuickRun { json, elapsed }
}
