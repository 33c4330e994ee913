//! The command line, defined once (clap derive).
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use lb_common::maps::{DEFAULT_CONNTRACK_SIZE, MAGLEV_DEFAULT_TABLE_SIZE};

#[derive(Parser, Debug)]
#[command(
    name = "xlb",
    version,
    about = "XDP load balancer for Kubernetes NodePort and LoadBalancer Services"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Attach the datapath to interfaces and keep it programmed from manifests.
    Run(RunArgs),
    /// Frontends and their backends, with counters.
    Services(OutputArgs),
    /// The connection table.
    Conntrack {
        #[command(subcommand)]
        command: ConntrackCommand,
    },
    /// Global counters by reason.
    Stats(OutputArgs),
    /// Detach from an interface; with no interface left, remove the pinned maps.
    Down(DownArgs),
    /// Print the pin directory of this network namespace's datapath.
    PinDir(PinArgs),
}

#[derive(Subcommand, Debug)]
pub enum ConntrackCommand {
    /// List tracked flows.
    List(OutputArgs),
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
    /// Manifest file or directory (multi-document YAML as `kubectl get -o yaml` prints it).
    #[arg(long)]
    pub manifests: PathBuf,
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
