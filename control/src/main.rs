//! `xlb`: attach the datapath and program it from manifests (`run`), inspect it (`services`,
//! `conntrack`, `stats`, `maglev`, `top`), remove it (`down`).
use std::process::ExitCode;

use clap::Parser as _;
use xlb::cli::args::{Cli, Command, ConntrackCommand, MaglevCommand};

fn main() -> ExitCode {
    let cli = Cli::parse();
    xlb::observe::logging::init(cli.log.log_format, cli.log.log_level);
    let result = match cli.command {
        Command::Run(args) => xlb::daemon::run::run(args),
        Command::Services(args) => xlb::cli::inspect::services(&args),
        Command::Conntrack { command } => match command {
            ConntrackCommand::List(args) => xlb::cli::conntrack::list(&args),
            ConntrackCommand::Watch(args) => xlb::cli::conntrack::watch(&args),
            ConntrackCommand::Flush(args) => xlb::cli::conntrack::flush(&args),
        },
        Command::Stats(args) => xlb::cli::inspect::stats(&args),
        Command::Maglev {
            command: MaglevCommand::Show(args),
        } => xlb::cli::inspect::maglev_show(&args),
        Command::Top(args) => xlb::cli::top::run(&args),
        Command::Completions(args) => xlb::cli::docs::completions(&args),
        Command::Man(args) => xlb::cli::docs::man(&args),
        Command::Down(args) => xlb::daemon::run::down(&args),
        Command::PinDir(args) => xlb::datapath::pins::resolve(args.pin_dir.as_deref()).map(|p| {
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
