//! Structured logs (`tracing`) on stderr: `--log-format text|json`, `--log-level`.
//!
//! Events carry their context as fields (`generation`, `iface`, `error`, ...), so the JSON
//! format is one object per line with those fields at the top level. A failing command still
//! ends with the single `xlb: <error>` line that `main` prints, which is not a log event.
use std::io::IsTerminal as _;

use tracing_subscriber::filter::LevelFilter;

use crate::cli::{LogArgs, LogFormat, LogLevel};

impl From<LogLevel> for LevelFilter {
    fn from(l: LogLevel) -> Self {
        match l {
            LogLevel::Error => LevelFilter::ERROR,
            LogLevel::Warn => LevelFilter::WARN,
            LogLevel::Info => LevelFilter::INFO,
            LogLevel::Debug => LevelFilter::DEBUG,
            LogLevel::Trace => LevelFilter::TRACE,
        }
    }
}

/// Installs the global subscriber (once; later calls are no-ops).
pub fn init(args: &LogArgs) {
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(LevelFilter::from(args.log_level));
    let _ = match args.log_format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false)
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
}
