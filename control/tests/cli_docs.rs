//! Shell completions, man pages and help, generated from the clap definition: they exist for
//! every shell and command, and name the commands and flags the parser accepts.
use std::process::{Command, Output};

fn xlb(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xlb"))
        .args(args)
        .output()
        .expect("running xlb")
}

fn stdout(args: &[&str]) -> String {
    let out = xlb(args);
    assert!(
        out.status.success(),
        "`xlb {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

#[test]
fn completions_for_every_shell_know_the_commands() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = stdout(&["completions", shell]);
        for word in [
            "conntrack",
            "maglev",
            "top",
            // Fish spells long options without their dashes (`-l metrics-addr`).
            "metrics-addr",
            "log-format",
        ] {
            assert!(script.contains(word), "{shell} completions lack {word}");
        }
    }
    let bash = stdout(&["completions", "bash"]);
    assert!(bash.contains("complete -F _xlb"), "{bash}");
    // The flush filters are completed too.
    assert!(bash.contains("--backend") && bash.contains("--yes"));
    assert!(!xlb(&["completions", "tcsh"]).status.success());
}

#[test]
fn man_page_on_stdout_and_one_per_command_in_a_directory() {
    let page = stdout(&["man"]);
    assert!(
        page.starts_with(".ie") || page.contains(".TH xlb 1"),
        "{page}"
    );
    assert!(page.contains(".TH xlb 1"), "no title: {page}");
    for word in ["conntrack", "maglev", "completions", "\\-\\-log\\-level"] {
        assert!(page.contains(word), "the man page lacks {word}");
    }
    let dir = std::env::temp_dir().join(format!("xlb-man-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let msg = stdout(&["man", "--out-dir", dir.to_str().unwrap()]);
    let mut pages: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    pages.sort();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        msg.contains(&format!("wrote {} man pages", pages.len())),
        "{msg} vs {pages:?}"
    );
    for want in [
        "xlb.1",
        "xlb-run.1",
        "xlb-services.1",
        "xlb-conntrack-list.1",
        "xlb-conntrack-watch.1",
        "xlb-conntrack-flush.1",
        "xlb-stats.1",
        "xlb-maglev-show.1",
        "xlb-top.1",
    ] {
        assert!(pages.iter().any(|p| p == want), "no {want} in {pages:?}");
    }
}

#[test]
fn help_describes_filters_and_output_formats() {
    let help = stdout(&["conntrack", "flush", "--help"]);
    for flag in [
        "--frontend",
        "--backend",
        "--client",
        "--protocol",
        "--service",
        "--yes",
    ] {
        assert!(help.contains(flag), "flush --help lacks {flag}: {help}");
    }
    let help = stdout(&["services", "--help"]);
    assert!(
        help.contains("human") && help.contains("json") && help.contains("yaml"),
        "{help}"
    );
    let help = stdout(&["run", "--help"]);
    assert!(
        help.contains("--metrics-addr") && help.contains("--log-level"),
        "{help}"
    );
}
