//! Inspection commands with no datapath, and invalid arguments, fail with one line and a
//! non-zero exit, without needing a lab (the lab version is `tests/e2e_cli.rs`); `xlb run` on
//! an interface that runs somebody else's XDP program refuses with the remedy (one scratch
//! namespace, root).
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

/// A scratch network namespace with a veth pair `v0`/`v1`, a scratch pin directory on bpffs,
/// and the foreign program's object file; all removed on drop (also when the test fails).
struct BusyLab {
    ns: String,
    pins: std::path::PathBuf,
    object: std::path::PathBuf,
}

impl BusyLab {
    fn new() -> BusyLab {
        let lab = BusyLab {
            ns: format!("xlbtest-busy-{}", std::process::id()),
            pins: format!("/sys/fs/bpf/xlb-cli-test-{}-busy", std::process::id()).into(),
            object: std::env::temp_dir()
                .join(format!("xlb-cli-test-{}-floor.o", std::process::id())),
        };
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().expect("running ip");
            assert!(out.status.success(), "ip {args:?}: {out:?}");
        };
        ip(&["netns", "add", &lab.ns]);
        ip(&[
            "-n", &lab.ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1",
        ]);
        ip(&["-n", &lab.ns, "link", "set", "v0", "up"]);
        // Somebody else's XDP program on v0: the benchmark's floor program, attached by `ip`.
        let floor = xlb_bench::bpf::FLOOR.bytes;
        assert!(
            !floor.is_empty(),
            "xlb-bench was built without its programs"
        );
        std::fs::write(&lab.object, floor).expect("writing the floor object");
        let object = lab.object.to_str().expect("a UTF-8 temporary path");
        ip(&[
            "-n",
            &lab.ns,
            "link",
            "set",
            "dev",
            "v0",
            "xdpgeneric",
            "obj",
            object,
            "sec",
            "xdp",
        ]);
        lab
    }

    /// `xlb run --iface v0` in the namespace with its pins under `<pins>/<layout>`.
    fn run(&self, layout: &str) -> Output {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ns))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_xlb"))
            .args(["run", "--iface", "v0", "--node-name", "n", "--manifests"])
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/nginx"))
            .arg("--pin-dir")
            .arg(self.pins.join(layout))
            .output()
            .expect("running xlb run")
    }
}

impl Drop for BusyLab {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = std::fs::remove_dir_all(&self.pins);
        let _ = std::fs::remove_file(&self.object);
    }
}

fn last_error_line(out: &Output) -> String {
    assert!(!out.status.success(), "xlb run succeeded: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    stderr
        .lines()
        .rfind(|l| l.starts_with("xlb: "))
        .unwrap_or_else(|| panic!("no `xlb:` line in {stderr:?}"))
        .to_string()
}

#[test]
fn an_interface_running_another_xdp_program_is_refused_with_the_remedy() {
    let lab = BusyLab::new();
    let line = last_error_line(&lab.run("v2"));
    assert!(
        line.contains("v0 already has an XDP program attached that is not xlb's")
            && line.contains("ip link set dev v0 xdp off"),
        "{line}"
    );
    // The program is still there: xlb replaced nothing.
    let link = Command::new("ip")
        .args(["-n", &lab.ns, "link", "show", "v0"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&link.stdout).contains("xdpgeneric"),
        "{link:?}"
    );

    // The same interface as seen by an xlb of another layout whose link is pinned next to
    // this one's pin directory.
    std::fs::create_dir_all(lab.pins.join("v1/links/xdp-v0")).unwrap();
    let line = last_error_line(&lab.run("v2"));
    assert!(
        line.contains("another map layout") && line.contains("xlb down --iface v0"),
        "{line}"
    );
}
