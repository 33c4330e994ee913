//! `xlb run` takes every flag from the environment too (`XLB_<FLAG>`), and the DaemonSet's
//! ConfigMap (deploy/config.yaml, loaded with `envFrom`) names each of those variables.
use std::collections::BTreeMap;
use std::process::{Command, Output};

use clap::{ArgAction, CommandFactory, Parser};
use xlb::cli::args::Cli;

/// The long flag and environment variable of every argument `xlb run` accepts (its own and the
/// global ones), but help and version.
fn run_args() -> Vec<(String, Option<String>)> {
    let mut cli = Cli::command();
    // Propagates the global flags into the subcommands.
    cli.build();
    let run = cli
        .get_subcommands()
        .find(|c| c.get_name() == "run")
        .expect("a run command");
    run.get_arguments()
        .filter(|a| !matches!(a.get_action(), ArgAction::Help | ArgAction::Version))
        .map(|a| {
            let long = a
                .get_long()
                .unwrap_or_else(|| panic!("`xlb run` argument {} has no long flag", a.get_id()));
            let env = a.get_env().map(|e| e.to_string_lossy().into_owned());
            (long.to_string(), env)
        })
        .collect()
}

/// `--maglev-table-size` → `XLB_MAGLEV_TABLE_SIZE`.
fn env_name(long: &str) -> String {
    format!("XLB_{}", long.to_uppercase().replace('-', "_"))
}

#[test]
fn every_run_flag_has_an_environment_variable() {
    let args = run_args();
    assert!(args.len() >= 10, "too few arguments found: {args:?}");
    for (long, env) in &args {
        assert_eq!(
            env.as_deref(),
            Some(env_name(long).as_str()),
            "--{long} should be settable as {}",
            env_name(long)
        );
    }
    let help = xlb_with(&["run", "--help"], &[]);
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    for (long, _) in &args {
        assert!(
            help.contains(&format!("[env: {}=", env_name(long))),
            "`xlb run --help` does not show {}: {help}",
            env_name(long)
        );
    }
}

fn xlb_with(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xlb"));
    for (k, _) in std::env::vars() {
        if k.starts_with("XLB_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args)
        .envs(env.iter().copied())
        .output()
        .expect("running xlb")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `xlb run` refuses a bad Maglev size before it touches anything, naming the value it was
/// given: which tells where the value came from.
#[test]
fn a_value_from_the_environment_is_used_and_a_flag_wins() {
    let base = [("XLB_IFACE", "lo"), ("XLB_NODE_NAME", "node-a")];

    // Nothing given: the required flags are missing.
    let out = xlb_with(&["run"], &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--iface"), "{}", stderr(&out));

    let out = xlb_with(
        &["run"],
        &[base[0], base[1], ("XLB_MAGLEV_TABLE_SIZE", "4")],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--maglev-table-size 4:"),
        "{}",
        stderr(&out)
    );

    let out = xlb_with(
        &["run", "--maglev-table-size", "6"],
        &[base[0], base[1], ("XLB_MAGLEV_TABLE_SIZE", "4")],
    );
    assert!(
        stderr(&out).contains("--maglev-table-size 6:"),
        "{}",
        stderr(&out)
    );

    // A list in one variable, comma-separated: the second interface is looked up.
    let out = xlb_with(&["run"], &[("XLB_IFACE", "lo,xlb-no-such0"), base[1]]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("xlb-no-such0"), "{}", stderr(&out));

    // A value clap cannot parse is refused with the variable's flag named.
    let out = xlb_with(&["run"], &[base[0], base[1], ("XLB_XDP_MODE", "turbo")]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("turbo") && stderr(&out).contains("--xdp-mode"),
        "{}",
        stderr(&out)
    );

    // The global flags too.
    let out = xlb_with(&["run"], &[base[0], base[1], ("XLB_LOG_LEVEL", "loud")]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("loud") && stderr(&out).contains("--log-level"),
        "{}",
        stderr(&out)
    );
}

/// The `data` keys of deploy/config.yaml, with their values; a key shown commented out
/// (`# XLB_X: ""`, to be set only when needed) has the value `None`.
fn config_map() -> BTreeMap<String, Option<String>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/config.yaml");
    let text = std::fs::read_to_string(path).expect("deploy/config.yaml");
    let mut keys = BTreeMap::new();
    let mut in_data = false;
    for line in text.lines() {
        if !line.starts_with(' ') && !line.starts_with('#') {
            in_data = line.trim_end() == "data:";
            continue;
        }
        if !in_data {
            continue;
        }
        let (commented, entry) = match line.trim_start().strip_prefix('#') {
            Some(rest) => (true, rest.trim_start()),
            None => (false, line.trim_start()),
        };
        let Some((key, value)) = entry.split_once(": ") else {
            continue;
        };
        if !key.starts_with("XLB_") || key.contains(' ') {
            continue;
        }
        let value = value.trim().trim_matches('"').to_string();
        keys.insert(key.to_string(), (!commented).then_some(value));
    }
    keys
}

#[test]
fn the_config_map_names_every_variable_with_a_value_xlb_accepts() {
    let args = run_args();
    let config = config_map();
    let names: Vec<String> = args.iter().map(|(l, _)| env_name(l)).collect();
    let mut listed: Vec<String> = config.keys().cloned().collect();
    let mut want = names.clone();
    listed.sort();
    want.sort();
    assert_eq!(listed, want, "deploy/config.yaml vs `xlb run`'s flags");
    // Each value set there, given as its flag, parses.
    for (long, _) in &args {
        let Some(Some(value)) = config.get(&env_name(long)) else {
            continue;
        };
        let mut argv = vec![
            "xlb".to_string(),
            "run".into(),
            "--iface=eth0".into(),
            "--node-name=n".into(),
        ];
        argv.push(format!("--{long}={value}"));
        if let Err(e) = Cli::try_parse_from(&argv) {
            panic!("deploy/config.yaml: {} = {value:?}: {e}", env_name(long));
        }
    }
}

/// Every `XLB_` variable the manifests in deploy/ set is one `xlb` reads.
#[test]
fn the_manifests_set_only_variables_xlb_reads() {
    let names: Vec<String> = run_args().iter().map(|(l, _)| env_name(l)).collect();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            // `XLB_` alone is the prefix in prose (`XLB_<FLAG>`).
            if word.starts_with("XLB_") && word != "XLB_" {
                assert!(
                    names.iter().any(|n| n == word),
                    "{} sets {word}, which xlb does not read",
                    path.display()
                );
            }
        }
    }
}
