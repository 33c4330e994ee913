//! Inspection commands with no datapath, and invalid arguments, fail with one line and a
//! non-zero exit, without needing a lab (the lab version is `tests/e2e_cli.rs`).
use std::process::{Command, Output};

fn xlb(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xlb"))
        .args(args)
        .output()
        .expect("running xlb")
}

fn one_error_line(args: &[&str], want: &str) {
    let out = xlb(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!out.status.success(), "`xlb {}` succeeded", args.join(" "));
    assert!(
        out.stdout.is_empty(),
        "`xlb {}` printed to stdout",
        args.join(" ")
    );
    assert_eq!(lines.len(), 1, "`xlb {}`: {stderr:?}", args.join(" "));
    assert!(
        lines[0].starts_with("xlb: ") && lines[0].contains(want),
        "`xlb {}`: {stderr:?}, wanted {want:?}",
        args.join(" ")
    );
}

fn is_bpffs(path: &str) -> bool {
    Command::new("stat")
        .args(["-f", "-c", "%T", path])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "bpf_fs")
}

const COMMANDS: [&[&str]; 8] = [
    &["services"],
    &["conntrack", "list", "-o", "json"],
    &["conntrack", "watch", "--duration", "1"],
    &["conntrack", "flush", "--yes"],
    &["stats"],
    &["stats", "--interval", "0.1"],
    &["maglev", "show", "web"],
    &["top"],
];

#[test]
fn no_datapath_at_the_pin_dir() {
    // An empty directory name under bpffs: nothing is pinned there.
    let dir = format!("/sys/fs/bpf/xlb-cli-test-{}-none", std::process::id());
    let want = if is_bpffs("/sys/fs/bpf") {
        "no xlb datapath in this network namespace"
    } else {
        "not on a BPF filesystem"
    };
    for args in COMMANDS {
        let mut a = args.to_vec();
        a.extend(["--pin-dir", &dir]);
        one_error_line(&a, want);
    }
}

#[test]
fn pin_dir_off_bpffs() {
    for args in COMMANDS {
        let mut a = args.to_vec();
        a.extend(["--pin-dir", "/tmp/xlb-cli-test-not-bpffs"]);
        one_error_line(&a, "not on a BPF filesystem");
    }
}

#[test]
fn bad_arguments_are_rejected_by_the_parser() {
    for args in [
        &["stats", "--interval", "0"][..],
        &["stats", "--interval", "soon"],
        &["top", "--interval", "99999"],
        &["conntrack", "list", "--protocol", "sctp"],
        &["services", "-o", "xml"],
        &["--log-format", "xml", "stats"],
        &[
            "run",
            "--iface",
            "lo",
            "--node-name",
            "n",
            "--manifests",
            "/",
            "--metrics-addr",
            "x",
        ],
    ] {
        let out = xlb(args);
        assert_eq!(out.status.code(), Some(2), "`xlb {}`", args.join(" "));
    }
}
