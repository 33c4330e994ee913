//! `xlb-bench profile`: the TRex profile is valid Python and the pktgen script valid shell.

use std::process::Command;

fn profile(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_xlb-bench"))
        .arg("profile")
        .args(args)
        .output()
        .expect("running xlb-bench profile");
    assert!(
        out.status.success(),
        "xlb-bench profile {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn write_tmp(name: &str, text: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("xlb-profile-{}-{name}", std::process::id()));
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn trex_profiles_are_python() {
    for mix in ["established", "syn", "udp"] {
        let text = profile(&["--trex", "--vip", "198.19.255.1", "--mix", mix]);
        assert!(text.contains("def register():"), "{text}");
        let p = write_tmp(&format!("{mix}.py"), &text);
        let check = Command::new("python3")
            .args([
                "-c",
                "import ast, sys; ast.parse(open(sys.argv[1]).read(), sys.argv[1])",
            ])
            .arg(&p)
            .output()
            .expect("python3");
        assert!(
            check.status.success(),
            "{mix}: {}\n{text}",
            String::from_utf8_lossy(&check.stderr)
        );
        std::fs::remove_file(p).unwrap();
    }
}

#[test]
fn pktgen_script_is_shell() {
    let text = profile(&[
        "--pktgen",
        "--vip",
        "198.19.255.1",
        "--mix",
        "udp",
        "--iface",
        "eth1",
    ]);
    assert!(text.starts_with("#!/bin/sh\n"));
    let p = write_tmp("pktgen.sh", &text);
    for sh in ["sh", "bash"] {
        let check = Command::new(sh).arg("-n").arg(&p).output().expect(sh);
        assert!(
            check.status.success(),
            "{sh} -n: {}\n{text}",
            String::from_utf8_lossy(&check.stderr)
        );
    }
    std::fs::remove_file(p).unwrap();
    // TCP mixes need TRex: pktgen refuses rather than sending UDP instead.
    let out = Command::new(env!("CARGO_BIN_EXE_xlb-bench"))
        .args([
            "profile",
            "--pktgen",
            "--vip",
            "198.19.255.1",
            "--mix",
            "syn",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
}
