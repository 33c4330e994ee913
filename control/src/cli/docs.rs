//! Shell completions and man pages, generated from the clap definition in [`crate::cli`], so
//! they never drift from the parser.
use std::path::Path;

use anyhow::Context as _;
use clap::CommandFactory as _;

use crate::cli::args::{Cli, CompletionsArgs, ManArgs};

/// `xlb completions SHELL`: the completion script on stdout.
pub fn completions(args: &CompletionsArgs) -> anyhow::Result<()> {
    let mut cmd = Cli::command();
    let mut buf = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "xlb", &mut buf);
    crate::cli::output::print(&String::from_utf8(buf)?)
}

/// `xlb man`: `xlb.1` on stdout; with `--out-dir`, every page (`xlb.1`, `xlb-conntrack-list.1`,
/// ...) written there.
pub fn man(args: &ManArgs) -> anyhow::Result<()> {
    let cmd = Cli::command();
    match &args.out_dir {
        None => {
            let mut buf = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut buf)?;
            crate::cli::output::print(&String::from_utf8(buf)?)
        }
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let written = write_pages(cmd, dir)?;
            crate::cli::output::print(&format!("wrote {written} man pages to {}\n", dir.display()))
        }
    }
}

/// Writes the page of `cmd` and of each of its subcommands (recursively, named by their
/// display names: `xlb-conntrack-list.1`); returns the count.
fn write_pages(cmd: clap::Command, dir: &Path) -> anyhow::Result<usize> {
    fn count(cmd: &clap::Command) -> usize {
        1 + cmd
            .get_subcommands()
            .filter(|s| !s.is_hide_set() && s.get_name() != "help")
            .map(count)
            .sum::<usize>()
    }
    let n = count(&cmd);
    clap_mangen::generate_to(cmd, dir).with_context(|| format!("writing to {}", dir.display()))?;
    Ok(n)
}
