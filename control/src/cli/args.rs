//! The command line, defined once (clap derive).
//!
//! Every flag of `xlb run`, and the global ones, can also come from the environment as
//! `XLB_<FLAG>` (`--maglev-table-size` → `XLB_MAGLEV_TABLE_SIZE`); a flag on the command line
//! wins. The DaemonSet sets them from its ConfigMap (deploy/config.yaml).
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use lb_common::maps::{
    DEFAULT_CONNTRACK_SIZE, DEFAULT_SYN_GUARD_RATE, MAGLEV_DEFAULT_TABLE_SIZE, MAX_BACKENDS,
    MAX_FRONTENDS, MAX_SERVICES,
};

use crate::observe::logging::{LogFormat, LogLevel};

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
    /// Detach from an interface; with no interface left, remove the pinned maps. `--all`:
    /// remove everything xlb left in this network namespace.
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
pub enum MetricsDetailArg {
    /// Per frontend, per backend, and the Maglev slots of each Service port's backends.
    Backends,
    /// Per frontend (Service port address) only.
    Frontends,
    /// Totals only.
    None,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum XdpModeArg {
    /// Native if the driver supports it, generic otherwise (the kernel decides).
    Auto,
    Native,
    Generic,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum TcAttachArg {
    /// TCX where the kernel has it (Linux 6.6+), the clsact qdisc with a cls_bpf filter otherwise.
    Auto,
    /// A TCX link (Linux 6.6+).
    Tcx,
    /// A cls_bpf filter on the clsact qdisc, added over netlink (any kernel xlb runs on).
    Legacy,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum PodDeliveryArg {
    /// `peer` while netfilter tracks no connections in the node's namespace, `kernel` while it
    /// does: kube-proxy's rules drop the replies of flows whose first packets passed netfilter
    /// by (conntrack calls them INVALID). Checked again with every link change and every 5 s.
    Auto,
    /// `bpf_redirect_peer` from the TC ingress program: the skb enters the pod's namespace
    /// directly (no routing, no netfilter, no backlog queue). Works for any veth pod.
    Peer,
    /// `bpf_redirect` out of the pod's host-side veth (the veth's backlog queue delivers it).
    Redirect,
    /// `bpf_redirect_neigh` out of the pod's host-side veth (kernel neighbour output).
    Neigh,
    /// Redirect the XDP frame into the host-side veth. Delivers only to pods whose interface
    /// runs an XDP program (or has GRO on): a benchmark candidate, not for ordinary pods.
    Xdp,
    /// No fast path: the kernel routes every packet to the pod.
    Kernel,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Interface to attach to (repeatable; comma-separated in the environment).
    #[arg(
        long = "iface",
        required = true,
        env = "XLB_IFACE",
        value_delimiter = ','
    )]
    pub ifaces: Vec<String>,
    /// This node's Kubernetes Node name (endpoints with this nodeName are local).
    #[arg(long, env = "XLB_NODE_NAME")]
    pub node_name: String,
    /// Read the cluster from a manifest file or directory (multi-document YAML as
    /// `kubectl get -o yaml` prints it) instead of the Kubernetes API.
    #[arg(long, conflicts_with = "kubeconfig", env = "XLB_MANIFESTS")]
    pub manifests: Option<PathBuf>,
    /// Watch the Kubernetes API with this kubeconfig file. Without it and without
    /// --manifests, the in-cluster service account is used.
    #[arg(long, env = "XLB_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "auto", env = "XLB_XDP_MODE")]
    pub xdp_mode: XdpModeArg,
    /// How the egress program (reply rewrite) is attached.
    #[arg(long, value_enum, default_value = "auto", env = "XLB_TC_ATTACH")]
    pub tc_attach: TcAttachArg,
    /// How packets for a pod on this node (after the local DNAT or the decapsulation) enter the
    /// pod: past the kernel's IP stack into any veth whose peer is in another namespace, or
    /// through the kernel (`kernel`).
    #[arg(long, value_enum, default_value = "auto", env = "XLB_POD_DELIVERY")]
    pub pod_delivery: PodDeliveryArg,
    /// Cap of every Service's Maglev table size M (prime, at most 131071; the same on every
    /// node). Each Service's own M is the smallest step of a prime ladder at or above 100x its
    /// backends' weight, up to this cap (docs/maglev.md, "Table size").
    #[arg(long, default_value_t = MAGLEV_DEFAULT_TABLE_SIZE, env = "XLB_MAGLEV_TABLE_SIZE")]
    pub maglev_table_size: u32,
    /// UDP port of the Geneve tunnel between nodes (the same on every node).
    #[arg(long, default_value_t = lb_common::maps::GENEVE_PORT, env = "XLB_TUNNEL_PORT")]
    pub tunnel_port: u16,
    /// Conntrack capacity (flows); also the reverse-NAT capacity.
    #[arg(long, default_value_t = DEFAULT_CONNTRACK_SIZE, env = "XLB_CONNTRACK_SIZE")]
    pub conntrack_size: u32,
    /// Service ports the datapath holds (one Maglev table each). Set when the maps are created:
    /// a running datapath keeps its size until `xlb down`.
    #[arg(long, default_value_t = MAX_SERVICES, env = "XLB_MAX_SERVICES")]
    pub max_services: u32,
    /// Frontends (address, port, protocol) the datapath holds, across all Service ports.
    #[arg(long, default_value_t = MAX_FRONTENDS, env = "XLB_MAX_FRONTENDS")]
    pub max_frontends: u32,
    /// Backends (pod address, port, protocol) the datapath holds, draining ones included.
    #[arg(long, default_value_t = MAX_BACKENDS, env = "XLB_MAX_BACKENDS")]
    pub max_backends: u32,
    /// Pace of the connection census (the background walk of the connection table that
    /// /metrics, `xlb services` and `xlb top` read their connection counts from), in entries
    /// per second: its CPU share is bounded by this, whatever the table's size.
    #[arg(long, default_value_t = crate::observe::census::DEFAULT_RATE,
          value_parser = clap::value_parser!(u32).range(1000..), env = "XLB_CENSUS_RATE")]
    pub census_rate: u32,
    /// Least time between the starts of two connection censuses, in seconds.
    #[arg(long, default_value = "2", value_parser = parse_seconds, env = "XLB_CENSUS_INTERVAL")]
    pub census_interval: Duration,
    /// SYN-flood guard: new flows per second per CPU above which a SYN is forwarded by Maglev
    /// without a conntrack write (the flow is recorded at its first packet after the
    /// handshake). 0 turns the guard off.
    #[arg(long, default_value_t = DEFAULT_SYN_GUARD_RATE, env = "XLB_SYN_GUARD_RATE")]
    pub syn_guard_rate: u32,
    #[command(flatten)]
    pub pin: PinArgs,
    /// The run loop's tick, in milliseconds: how long it waits for the source before it looks
    /// at the interfaces and retries; with --manifests where inotify is unavailable, how often
    /// the manifests are rescanned (they are watched with inotify otherwise).
    #[arg(long, default_value_t = 1000, env = "XLB_POLL_MS")]
    pub poll_ms: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics, and the probes /readyz, /livez, /healthz.
    #[arg(long, value_name = "ADDR:PORT", env = "XLB_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Which per-object series /metrics exports: `backends` (per frontend, per backend and per
    /// Service port and backend), `frontends` (per frontend only) or `none` (totals only).
    #[arg(
        long,
        value_enum,
        default_value = "backends",
        env = "XLB_METRICS_DETAIL"
    )]
    pub metrics_detail: MetricsDetailArg,
    /// At most this many per-object series in /metrics: beyond it the next lower
    /// --metrics-detail whose series fit is exported, with a warning in the log and
    /// xlb_metrics_detail_capped 1.
    #[arg(long, default_value_t = crate::observe::series::DEFAULT_MAX_SERIES,
          env = "XLB_METRICS_MAX_SERIES")]
    pub metrics_max_series: usize,
    /// Serve /readyz (200 once the first full sync is programmed, 503 before), and /livez and
    /// /healthz (200 while the run loop ticks) on this address (e.g. 0.0.0.0:10356 for the
    /// DaemonSet's probes).
    #[arg(long, value_name = "ADDR:PORT", env = "XLB_HEALTH_ADDR")]
    pub health_addr: Option<SocketAddr>,
}

#[derive(Args, Debug, Clone)]
pub struct PinArgs {
    /// Pin directory (default: /sys/fs/bpf/xlb/ns-<netns cookie>/<layout version>).
    #[arg(long, global = true, env = "XLB_PIN_DIR")]
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
    /// Interface to detach from (repeatable).
    #[arg(
        long = "iface",
        required_unless_present = "all",
        conflicts_with = "all"
    )]
    pub ifaces: Vec<String>,
    /// Remove every attachment and every pin xlb has in this network namespace: the links of
    /// every interface and the maps of every layout version (everything under
    /// /sys/fs/bpf/xlb/ns-<netns cookie>, or under --pin-dir alone), and the names in
    /// /run/xlb. Succeeds when there is nothing left (safe to run twice).
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub pin: PinArgs,
}

#[derive(Args, Debug, Clone)]
pub struct LogArgs {
    /// Log format (logs go to stderr).
    #[arg(
        long,
        value_enum,
        default_value = "text",
        global = true,
        env = "XLB_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    /// The most verbose level logged.
    #[arg(
        long,
        value_enum,
        default_value = "info",
        global = true,
        env = "XLB_LOG_LEVEL"
    )]
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
    /// Sort the flows (without it they stream in table order as the walk finds them; sorting
    /// holds the matching flows, or with --limit the first N, in memory until the walk ends).
    #[arg(long, value_enum)]
    pub sort: Option<FlowSort>,
    /// Print at most N flows (with --sort: the first N in that order); the walk stops once N
    /// are printed.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
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
