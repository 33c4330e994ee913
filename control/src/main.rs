//! `xlb`: attach the datapath and program it from manifests (`run`), inspect it (`services`,
//! `conntrack`, `stats`, `maglev`, `top`), remove it (`down`).
use std::process::ExitCode;

use clap::Parser as _;
use xlb::cli::{Cli, Command, ConntrackCommand, MaglevCommand};

fn main() -> ExitCode {
    let cli = Cli::parse();
    xlb::logging::init(&cli.log);
    let result = match cli.command {
        Command::Run(args) => xlb::run::run(args),
        Command::Services(args) => xlb::inspect::services(&args),
        Command::Conntrack { command } => match command {
            ConntrackCommand::List(args) => xlb::flows::list(&args),
            ConntrackCommand::Watch(args) => xlb::flows::watch(&args),
            ConntrackCommand::Flush(args) => xlb::flows::flush(&args),
        },
        Command::Stats(args) => xlb::inspect::stats(&args),
        Command::Maglev {
            command: MaglevCommand::Show(args),
        } => xlb::inspect::maglev_show(&args),
        Command::Top(args) => xlb::top::run(&args),
        Command::Completions(args) => xlb::cli_docs::completions(&args),
        Command::Man(args) => xlb::cli_docs::man(&args),
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
