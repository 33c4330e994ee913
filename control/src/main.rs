//! `xlb`: attach the datapath and program it from manifests (`run`), inspect it (`services`,
//! `conntrack`, `stats`), remove it (`down`).
use std::process::ExitCode;

use clap::Parser as _;
use xlb::cli::{Cli, Command, ConntrackCommand};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => xlb::run::run(args),
        Command::Services(args) => xlb::inspect::services(&args),
        Command::Conntrack {
            command: ConntrackCommand::List(args),
        } => xlb::inspect::conntrack_list(&args),
        Command::Stats(args) => xlb::inspect::stats(&args),
        Command::Down(args) => xlb::run::down(&args),
        Command::PinDir(args) => xlb::pins::resolve(args.pin_dir.as_deref()).map(|p| {
            println!("{}", p.display());
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes.
            eprintln!("xlb: {e:#}");
            ExitCode::FAILURE
        }
    }
}
