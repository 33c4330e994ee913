//! The command line, defined once (clap derive).
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use lb_common::maps::{DEFAULT_CONNTRACK_SIZE, MAGLEV_DEFAULT_TABLE_SIZE};

#[derive(Parser, Debug)]
#[command(
    name = "xlb",
    version,
    about = "XDP load balancer for Kubernetes NodePort and LoadBalancer Services"
)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Attach the datapath to interfaces and keep it programmed from the Kubernetes API or
    /// manifests.
    Run(RunArgs),
    /// Frontends and their backends, with counters.
    Services(OutputArgs),
    /// The connection table.
    Conntrack {
        #[command(subcommand)]
        command: ConntrackCommand,
    },
    /// Global counters by reason, with rates over `--interval`.
    Stats(StatsArgs),
    /// Maglev tables: size, slots per backend, imbalance.
    Maglev {
        #[command(subcommand)]
        command: MaglevCommand,
    },
    /// A live view of frontends, backends and drops, refreshed in place (q quits).
    Top(TopArgs),
    /// Print a shell completion script (e.g. `xlb completions bash > /etc/bash_completion.d/xlb`).
    Completions(CompletionsArgs),
    /// Print the man page (roff), or write one page per command into a directory.
    Man(ManArgs),
    /// Detach from an interface; with no interface left, remove the pinned maps.
    Down(DownArgs),
    /// Print the pin directory of this network namespace's datapath.
    PinDir(PinArgs),
}

#[derive(Subcommand, Debug)]
pub enum ConntrackCommand {
    /// List tracked flows.
    List(ConntrackListArgs),
    /// Stream new and ended flows until interrupted (or `--duration`).
    Watch(ConntrackWatchArgs),
    /// Remove flows (and their reverse-NAT entries); asks for confirmation unless `--yes`.
    Flush(ConntrackFlushArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum XdpModeArg {
    /// Native if the driver supports it, generic otherwise (the kernel decides).
    Auto,
    Native,
    Generic,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Interface to attach to (repeatable).
    #[arg(long = "iface", required = true)]
    pub ifaces: Vec<String>,
    /// This node's Kubernetes Node name (endpoints with this nodeName are local).
    #[arg(long)]
    pub node_name: String,
    /// Read the cluster from a manifest file or directory (multi-document YAML as
    /// `kubectl get -o yaml` prints it) instead of the Kubernetes API.
    #[arg(long, conflicts_with = "kubeconfig")]
    pub manifests: Option<PathBuf>,
    /// Watch the Kubernetes API with this kubeconfig file. Without it and without
    /// --manifests, the in-cluster service account is used.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "auto")]
    pub xdp_mode: XdpModeArg,
    /// Maglev table size M (prime, at most 131071).
    #[arg(long, default_value_t = MAGLEV_DEFAULT_TABLE_SIZE)]
    pub maglev_table_size: u32,
    /// UDP port of the Geneve tunnel between nodes (the same on every node).
    #[arg(long, default_value_t = lb_common::maps::GENEVE_PORT)]
    pub tunnel_port: u16,
    /// Conntrack capacity (flows); also the reverse-NAT capacity.
    #[arg(long, default_value_t = DEFAULT_CONNTRACK_SIZE)]
    pub conntrack_size: u32,
    #[command(flatten)]
    pub pin: PinArgs,
    /// How often to check the manifests for changes, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub poll_ms: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics, and /healthz and /readyz.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_addr: Option<SocketAddr>,
    /// Serve /readyz and /healthz (200 once the first full sync is programmed, 503 before) and
    /// /livez on this address (e.g. 0.0.0.0:10356 for the DaemonSet's probes).
    #[arg(long, value_name = "ADDR:PORT")]
    pub health_addr: Option<SocketAddr>,
}

#[derive(Args, Debug, Clone)]
pub struct PinArgs {
    /// Pin directory (default: /sys/fs/bpf/xlb/ns-<netns cookie>/<layout version>).
    #[arg(long, global = true)]
    pub pin_dir: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq, Default)]
pub enum OutputFormat {
    #[default]
    Human,
    Json,
    Yaml,
}

#[derive(Args, Debug, Clone)]
pub struct OutputArgs {
    #[arg(short = 'o', long = "output", value_enum, default_value = "human")]
    pub output: OutputFormat,
    #[command(flatten)]
    pub pin: PinArgs,
}

#[derive(Args, Debug, Clone)]
pub struct DownArgs {
    #[arg(long = "iface", required = true)]
    pub ifaces: Vec<String>,
    #[command(flatten)]
    pub pin: PinArgs,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line, fields at the top level.
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq, Default)]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

#[derive(Args, Debug, Clone)]
pub struct LogArgs {
    /// Log format (logs go to stderr).
    #[arg(long, value_enum, default_value = "text", global = true)]
    pub log_format: LogFormat,
    /// The most verbose level logged.
    #[arg(long, value_enum, default_value = "info", global = true)]
    pub log_level: LogLevel,
}

/// Seconds, fractions allowed (`0.5`), between 0.05 and 3600.
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(0.05..=3600.0).contains(&v) {
        return Err(format!("{s} s is outside 0.05..=3600"));
    }
    Ok(Duration::from_secs_f64(v))
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum ProtocolArg {
    Tcp,
    Udp,
}

/// Which flows a conntrack command applies to; all given filters must match.
#[derive(Args, Debug, Clone, Default)]
pub struct FlowFilterArgs {
    /// Flows to this frontend: ADDR, ADDR:PORT or :PORT (NodePort flows carry the node address
    /// the client used).
    #[arg(long, value_name = "ADDR[:PORT]")]
    pub frontend: Option<String>,
    /// Flows to this backend: ADDR or ADDR:PORT.
    #[arg(long, value_name = "ADDR[:PORT]")]
    pub backend: Option<String>,
    /// Flows from this client: ADDR, ADDR:PORT or CIDR.
    #[arg(long, value_name = "ADDR[:PORT]|CIDR")]
    pub client: Option<String>,
    /// Flows of this protocol.
    #[arg(long, short = 'p', value_enum)]
    pub protocol: Option<ProtocolArg>,
    /// Flows of this Service port, as `xlb services` names it (`ns/name` matches all its ports).
    #[arg(long)]
    pub service: Option<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq, Default)]
pub enum FlowSort {
    /// By frontend, then client.
    #[default]
    Frontend,
    /// By client address and port.
    Client,
    /// By backend, then client.
    Backend,
    /// Oldest first.
    Age,
    /// Most idle first.
    Idle,
}

#[derive(Args, Debug, Clone)]
pub struct ConntrackListArgs {
    #[command(flatten)]
    pub filter: FlowFilterArgs,
    #[arg(long, value_enum, default_value = "frontend")]
    pub sort: FlowSort,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Args, Debug, Clone)]
pub struct ConntrackWatchArgs {
    #[command(flatten)]
    pub filter: FlowFilterArgs,
    /// How often to read the connection table, in seconds.
    #[arg(long, default_value = "1", value_parser = parse_seconds)]
    pub interval: Duration,
    /// Stop after this many seconds (default: run until interrupted).
    #[arg(long, value_parser = parse_seconds)]
    pub duration: Option<Duration>,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Args, Debug, Clone)]
pub struct ConntrackFlushArgs {
    #[command(flatten)]
    pub filter: FlowFilterArgs,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Args, Debug, Clone)]
pub struct StatsArgs {
    /// Read the counters twice, this many seconds apart, and print rates per second too.
    #[arg(long, short = 'i', value_parser = parse_seconds)]
    pub interval: Option<Duration>,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Subcommand, Debug)]
pub enum MaglevCommand {
    /// Table size, slots per backend and imbalance of a Service port's table.
    Show(MaglevShowArgs),
}

#[derive(Args, Debug, Clone)]
pub struct MaglevShowArgs {
    /// The Service port (`ns/name:port/PROTO` as `xlb services` prints it; `ns/name` or `name`
    /// shows every port of the Service).
    pub service: String,
    /// Also print every slot's backend.
    #[arg(long)]
    pub slots: bool,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Args, Debug, Clone)]
pub struct TopArgs {
    /// Refresh interval in seconds.
    #[arg(long, short = 'i', default_value = "1", value_parser = parse_seconds)]
    pub interval: Duration,
    /// How many backends to show (the busiest).
    #[arg(long, default_value_t = 10)]
    pub backends: usize,
    #[command(flatten)]
    pub pin: PinArgs,
}

#[derive(Args, Debug, Clone)]
pub struct CompletionsArgs {
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Args, Debug, Clone)]
pub struct ManArgs {
    /// Write `xlb.1` and one `xlb-COMMAND.1` per command here instead of printing `xlb.1`.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}
