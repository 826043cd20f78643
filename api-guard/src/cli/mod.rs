//! Command-line flags. Every flag of `run` (and `--pin-dir` everywhere) also
//! reads from an environment variable, `API_GUARD_` and its name in capitals
//! (`--max-clients` from `API_GUARD_MAX_CLIENTS`); a flag given on the command
//! line wins. Repeatable flags take a comma-separated list there
//! (`API_GUARD_PORT=80,443`). Operator commands read no other variable, so a
//! daemon's environment (`API_GUARD_RATE`) never changes what `limit` does.

use api_guard_common::keys::{KeyPolicy, user::RouteLimit};
use std::{ffi::OsString, path::PathBuf, time::Duration};

use clap::{ArgAction, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

mod fleet;
mod values;

pub use fleet::*;
pub use values::*;

use crate::{
    detect::auth::AuthCheck,
    failure::Failure,
    kernel::layout::DEFAULT_PIN_DIR,
    policy::{Network, NetworkLimit, Policy},
};

#[derive(Debug, Parser)]
#[command(
    name = "api-guard",
    version,
    about = "eBPF host API traffic monitor and rate enforcer",
    after_help = "Examples:
  api-guard run --iface eth0 --port 443 --rate 50 --burst 100 --block-for 5m
  api-guard top
  api-guard block 198.51.100.0/24 --for 1h

Every flag of `run`, and --pin-dir, also reads from API_GUARD_<FLAG> (e.g.
API_GUARD_RATE=50; repeatable flags comma-separated: API_GUARD_PORT=80,443); a
flag given on the command line wins. Exit codes: 0 ok, 1 runtime error, 2 bad usage, 3 missing
privilege, 4 environment (kernel, interface, pins), 5 no daemon running."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the kernel programs, attach them and watch API traffic until stopped.
    #[command(after_help = "Examples:
  # Watch and count only
  api-guard run --iface eth0 --port 80 --port 8080
  # 50 requests/s per client (bursts of 100); over it, blocked for 5 minutes
  api-guard run --iface eth0 --port 443 --rate 50 --burst 100 --block-for 5m
  # Log every request without credentials, block clients with 10 a minute
  api-guard run --iface eth0 --port 8080 --access-log /var/log/api-guard/access.log \\
      --require-auth block --block-for 10m
  # Judge and count, drop nothing
  api-guard run --iface eth0 --port 443 --rate 50 --dry-run")]
    Run(Box<RunArgs>),
    /// Show a running daemon's policy, counters, clients and blocks.
    #[command(after_help = "Examples:
  api-guard status
  api-guard status --json | jq '.blocked_clients'
  api-guard status --pin-dir /sys/fs/bpf/api-guard-staging")]
    Status {
        #[command(flatten)]
        pins: PinArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// A live view of a running daemon: the busiest clients by request rate,
    /// verdicts per second, blocks. Ctrl-C quits.
    #[command(after_help = "Examples:
  api-guard top
  api-guard top --once --json | jq '.clients[0]'")]
    Top {
        #[command(flatten)]
        pins: PinArgs,
        /// How many clients.
        #[arg(short = 'n', long = "clients", value_name = "N", default_value_t = 10)]
        n: usize,
        /// How often to refresh (rates are over this period).
        #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_interval)]
        interval: Duration,
        /// Print one snapshot (over one --interval) and exit.
        #[arg(long)]
        once: bool,
        /// JSON: one object per snapshot, one per line.
        #[arg(long)]
        json: bool,
    },
    /// Block a network on a running daemon (every packet to the API ports dropped).
    #[command(after_help = "Examples:
  api-guard block 198.51.100.7
  api-guard block 198.51.100.0/24 --for 1h
  api-guard block 2001:db8:bad::/48")]
    Block {
        #[command(flatten)]
        pins: PinArgs,
        /// The network or address to block.
        cidr: Network,
        /// How long (e.g. 10m) [default: until unblocked].
        #[arg(long = "for", value_name = "DURATION", value_parser = parse_nonzero_duration)]
        duration: Option<Duration>,
    },
    /// Lift a block on a running daemon: the network's, and its clients' own.
    #[command(after_help = "Examples:
  api-guard unblock 198.51.100.7
  # The network's block and every --block-for block of a client inside it
  api-guard unblock 198.51.100.0/24")]
    Unblock {
        #[command(flatten)]
        pins: PinArgs,
        cidr: Network,
    },
    /// Remove a stopped daemon's pinned state (buckets, blocks, limits,
    /// counters), so the next daemon starts afresh.
    #[command(after_help = "Examples:
  systemctl stop api-guard && api-guard detach")]
    Detach {
        #[command(flatten)]
        pins: PinArgs,
    },
    /// What this host saw, as the OWASP API Security Top 10 (2023): which
    /// risks the detectors observed, from which clients, and what was done,
    /// read from the daemon's --findings-log.
    #[command(after_help = "Examples:
  api-guard report --findings-log /var/log/api-guard/findings.log --since 1h
  api-guard report --findings-log findings.log --since 24h --json | jq '.risks[0]'")]
    Report {
        /// The daemon whose kernel counters (rate and connection limits:
        /// API4) join the findings, when its pins can be read.
        #[command(flatten)]
        pins: PinArgs,
        /// The findings log the daemon writes (`run --findings-log`).
        #[arg(long, value_name = "PATH")]
        findings_log: PathBuf,
        /// How far back (e.g. 15m, 1h, 7d).
        #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_nonzero_duration)]
        since: Duration,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (e.g. `api-guard completions bash >
    /// /etc/bash_completion.d/api-guard`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print a man page (roff): `api-guard man > api-guard.1`, and one per
    /// command, `api-guard man run > api-guard-run.1`.
    Man {
        /// The command whose page to print [default: the overview].
        command: Option<String>,
    },
    /// Set (or --remove) a network's request limit, the key limit or route
    /// limits on a running daemon.
    #[command(after_help = "Examples:
  api-guard limit 198.51.100.0/24 --rate 20 --burst 40
  api-guard limit --remove 198.51.100.0/24
  api-guard limit --key-rate 100:200
  api-guard limit --route 'POST /v1/login=5:10'
  api-guard limit --remove-route 'POST /v1/login'")]
    Limit {
        #[command(flatten)]
        pins: PinArgs,
        /// The network to limit.
        #[arg(required_unless_present_any = ["remove", "key_rate", "route", "remove_route"],
              conflicts_with_all = ["remove", "key_rate", "route", "remove_route"])]
        cidr: Option<Network>,
        /// Requests per second per client of the network.
        #[arg(long, value_name = "N", required_unless_present_any = ["remove", "key_rate", "route", "remove_route"],
              value_parser = clap::value_parser!(u32).range(1..=MAX_RATE))]
        rate: Option<u32>,
        /// Requests per second per API key (the daemon's --key-header), with
        /// bursts of BURST [default: the rate].
        #[arg(long, value_name = "N[:BURST]", value_parser = api_guard_common::keys::user::parse_rate,
              conflicts_with_all = ["remove", "route", "remove_route"])]
        key_rate: Option<(u32, u32)>,
        /// Add or change a route limit: 'METHOD /path/prefix=RATE[:BURST]'.
        #[arg(long, value_name = "'METHOD /PREFIX=N[:BURST]'",
              conflicts_with_all = ["remove", "remove_route"])]
        route: Option<RouteLimit>,
        /// Remove the route limit 'METHOD /path/prefix'.
        #[arg(long, value_name = "'METHOD /PREFIX'", conflicts_with = "remove")]
        remove_route: Option<String>,
        /// Requests at once before --rate applies [default: the rate].
        #[arg(long, value_name = "N", requires = "rate", value_parser = clap::value_parser!(u32).range(1..=MAX_RATE))]
        burst: Option<u32>,
        /// Remove the limit on this network instead.
        #[arg(long, value_name = "CIDR", conflicts_with_all = ["rate", "burst"])]
        remove: Option<Network>,
    },
}

/// Where a daemon pins its maps (and where operator commands find them).
#[derive(Debug, Args)]
pub struct PinArgs {
    /// Directory on a BPF filesystem for the daemon's pinned maps.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Network interface to attach to (TC ingress); repeat for several.
    #[arg(long = "iface", value_name = "IFACE", required = true)]
    pub ifaces: Vec<String>,

    /// TCP port the API listens on; repeat for several.
    #[arg(
        long = "port",
        value_name = "PORT",
        required = true,
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    pub ports: Vec<u16>,

    /// Clients tracked at once; beyond it the least recently seen is evicted.
    #[arg(
        long,
        value_name = "N",
        default_value_t = api_guard_common::maps::DEFAULT_MAX_CLIENTS,
        value_parser = clap::value_parser!(u32).range(1..=(1 << 24))
    )]
    pub max_clients: u32,

    /// How often to log a summary of the counters (e.g. 30s, 5m); 0 turns it off.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub report_every: Duration,

    /// Daemon log level (error, warn, info, debug, trace).
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub log_level: tracing::Level,

    /// Daemon log format: text for people, json (one object per line) for log
    /// shippers.
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Requests per second per client (a token bucket; none by default).
    #[arg(long, value_name = "N", help_heading = "Limits", value_parser = clap::value_parser!(u32).range(1..=MAX_RATE))]
    pub rate: Option<u32>,

    /// Requests a client may send at once before --rate applies [default: the rate].
    #[arg(long, value_name = "N", help_heading = "Limits", value_parser = clap::value_parser!(u32).range(1..))]
    pub burst: Option<u32>,

    /// New connections (SYNs) per second per client; also covers TLS ports.
    #[arg(long, value_name = "N", help_heading = "Limits", value_parser = clap::value_parser!(u32).range(1..=MAX_RATE))]
    pub conn_rate: Option<u32>,

    /// Connections a client may open at once before --conn-rate applies [default: the rate].
    #[arg(long, value_name = "N", help_heading = "Limits", value_parser = clap::value_parser!(u32).range(1..))]
    pub conn_burst: Option<u32>,

    /// Block a client that goes over a limit for this long (e.g. 30s, 5m): every
    /// packet from it to the API ports is dropped, SYNs included.
    #[arg(long, value_name = "DURATION", help_heading = "Limits", value_parser = parse_nonzero_duration)]
    pub block_for: Option<Duration>,

    /// Concurrent established connections per client; over it new SYNs are dropped.
    #[arg(long, value_name = "N", help_heading = "Limits", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_conns: Option<u32>,

    /// Per-network request limit, most specific prefix first (repeatable).
    #[arg(
        long = "limit",
        value_name = "CIDR=RATE[:BURST]",
        help_heading = "Limits"
    )]
    pub limits: Vec<NetworkLimit>,

    /// Network never limited or dropped; checked before --deny (repeatable).
    #[arg(long, value_name = "CIDR", help_heading = "Networks")]
    pub allow: Vec<Network>,

    /// Network always dropped (repeatable).
    #[arg(long, value_name = "CIDR", help_heading = "Networks")]
    pub deny: Vec<Network>,

    /// IPv6 clients share a bucket per prefix of this length, so rotating
    /// addresses inside one /64 does not dodge a limit.
    #[arg(long, value_name = "BITS", default_value_t = 64, help_heading = "Networks", value_parser = clap::value_parser!(u8).range(1..=128))]
    pub ipv6_prefix: u8,

    /// What happens to a request over the limit: dropped (the client retransmits
    /// it), or turned into a TCP reset toward the server, which frees the
    /// connection at once.
    #[arg(long, value_name = "ACTION", value_enum, default_value_t = OnLimit::Drop, help_heading = "Limits")]
    pub on_limit: OnLimit,

    /// Compute and count every decision ("would_drop"), drop nothing.
    #[arg(long, help_heading = "Limits")]
    pub dry_run: bool,

    /// What the kernel does without a daemon. open: once the daemon has been
    /// silent for --heartbeat-timeout (hung or killed) nothing is dropped
    /// (counted "failed_open"), and SIGTERM detaches the programs. closed: the
    /// programs stay attached and keep enforcing from the pinned state, across
    /// stops and crashes, until `api-guard detach`.
    #[arg(long, value_name = "MODE", value_enum, default_value_t = FailMode::Open, help_heading = "Failure")]
    pub fail_mode: FailMode,

    /// How long the daemon may be silent before --fail-mode open lets
    /// everything through (at least 2s; the daemon beats four times a second
    /// while its event loop turns).
    #[arg(long, value_name = "DURATION", default_value = "15s", help_heading = "Failure", value_parser = parse_heartbeat_timeout)]
    pub heartbeat_timeout: Duration,

    /// Fraction of request starts sampled for the access log and metrics (0 to 1).
    #[arg(long, value_name = "RATIO", default_value_t = 1.0, help_heading = "Sampling", value_parser = parse_ratio)]
    pub sample: f64,

    /// Payload bytes captured per sampled request (1 to 8192).
    #[arg(long, value_name = "N", default_value_t = 2048, help_heading = "Sampling",
          value_parser = clap::value_parser!(u32).range(1..=api_guard_common::sample::MAX_CAPTURE as i64))]
    pub capture_bytes: u32,

    /// Size of the kernel's sample ring buffer in bytes (a power of two, at least
    /// 4096); a full buffer loses samples, and counts them.
    #[arg(long, value_name = "BYTES", default_value_t = api_guard_common::sample::DEFAULT_RING_BYTES,
          help_heading = "Sampling", value_parser = parse_ring_bytes)]
    pub sample_buffer: u32,

    /// Samples the kernel takes a second at most, over every CPU (`N` or
    /// `N/s`, 1 to 10000000): past it samples are counted, not taken, so the
    /// access log and the daemon's CPU stay bounded at any load. Requests and
    /// responses are counted in the kernel whatever the sampling.
    #[arg(long, value_name = "N/s", default_value = "1000/s", help_heading = "Sampling",
          value_parser = parse_sample_budget)]
    pub sample_budget: u32,

    /// How the sample ring wakes the daemon: each record wakes it, or
    /// (batched) only once 64 KiB wait, the daemon reading every 10 ms
    /// besides: fewer wakeups and context switches under load, at the price
    /// of up to 10 ms before a sample is logged.
    #[arg(long, value_name = "MODE", value_enum, default_value_t = SampleWakeup::Batched, help_heading = "Sampling")]
    pub sample_wakeup: SampleWakeup,

    /// Write the API access log (JSON lines) here; "-" for stdout. SIGHUP reopens it.
    #[arg(long, value_name = "PATH", help_heading = "Sampling")]
    pub access_log: Option<PathBuf>,

    /// A route template for metrics and the access log (repeatable), as
    /// `[METHOD ]/path/{param}`: `{name}` matches one segment. Paths no
    /// pattern matches get an inferred template.
    #[arg(long = "route", value_name = "PATTERN", help_heading = "Routes",
          value_parser = parse_route)]
    pub routes: Vec<String>,

    /// A file of route patterns, one a line (`#` comments and blank lines
    /// ignored), after those of --route.
    #[arg(long, value_name = "PATH", help_heading = "Routes")]
    pub routes_file: Option<PathBuf>,

    /// Route templates at most (1 to 10000); paths past it share the route
    /// `other`, counted. Bounds every per-route metric's series.
    #[arg(long, value_name = "N", default_value_t = crate::pipeline::routes::DEFAULT_MAX_ROUTES as u32,
          help_heading = "Routes", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_routes: u32,

    /// How long a sampled request waits for its response before its access
    /// log line is written without it (marked "timeout").
    #[arg(long, value_name = "DURATION", default_value = "30s", help_heading = "Routes",
          value_parser = parse_response_timeout)]
    pub response_timeout: Duration,

    /// Header that carries a credential (repeatable) [default: Authorization].
    #[arg(
        long = "auth-header",
        value_name = "NAME",
        help_heading = "Authentication",
        value_parser = parse_header_name
    )]
    pub auth_headers: Vec<String>,

    /// Requests without a credential: not checked, logged, or logged and blocked
    /// (a client over --auth-failures in a minute is blocked for --block-for).
    #[arg(long, value_name = "MODE", value_enum, default_value_t = RequireAuth::Off, help_heading = "Authentication")]
    pub require_auth: RequireAuth,

    /// Unauthenticated requests a client may send in a minute before
    /// --require-auth block blocks it.
    #[arg(long, value_name = "N", default_value_t = 10, help_heading = "Authentication",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub auth_failures: u32,

    /// What a detector's findings do (repeatable): NAME is bola (object-ID
    /// enumeration), stuffing (failed logins, many credentials) or probing
    /// (many missing paths); off, log (the default: findings logged and
    /// counted) or block (also blocked for --block-for).
    #[arg(long = "detect", value_name = "NAME=off|log|block", help_heading = "Detection",
          value_parser = parse_detect_setting)]
    pub detect: Vec<DetectSetting>,

    /// A detector's threshold (repeatable), for every route or one route
    /// template: bola (distinct IDs of a route, default 40), stuffing
    /// (401/403s on a route, 20), credentials (distinct credentials from a
    /// client, 10), probing (distinct 404 paths, 20), all in --detect-window.
    #[arg(long = "detect-threshold", value_name = "KEY[@ROUTE]=N", help_heading = "Detection",
          value_parser = parse_detect_threshold)]
    pub detect_thresholds: Vec<crate::detect::Threshold>,

    /// The detectors' sliding window: long, so that a client pacing itself
    /// under the rate limit still adds up (1m to 24h).
    #[arg(long, value_name = "DURATION", default_value = "10m", help_heading = "Detection",
          value_parser = parse_detect_window)]
    pub detect_window: Duration,

    /// Write the detectors' findings (JSON lines) here, for `api-guard
    /// report`; SIGHUP reopens it.
    #[arg(long, value_name = "PATH", help_heading = "Detection")]
    pub findings_log: Option<PathBuf>,

    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:9477",
        help_heading = "Metrics"
    )]
    pub metrics_addr: std::net::SocketAddr,

    /// Clients in the top-clients gauge.
    #[arg(long, value_name = "K", default_value_t = 10, help_heading = "Metrics",
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub top_clients: u32,

    /// Requests inside TLS that a process on this host terminates: auto finds
    /// the processes listening on the watched ports and follows their libssl
    /// (uprobes), off leaves TLS ports with connection-level protection.
    #[arg(long, value_name = "MODE", value_enum, default_value_t = TlsMode::Auto, help_heading = "TLS")]
    pub tls: TlsMode,

    /// The XDP pre-filter, which drops denied networks', blocked networks' and
    /// blocked clients' packets before the kernel builds an skb for them:
    /// auto attaches it in native mode where the interface's driver has XDP
    /// and goes without it elsewhere (generic XDP would save nothing over
    /// TC); native fails the start where it cannot; off never attaches it.
    #[arg(long, value_name = "MODE", value_enum, default_value_t = XdpChoice::Auto, help_heading = "Limits")]
    pub xdp: XdpChoice,

    #[command(flatten)]
    pub pins: PinArgs,

    #[command(flatten)]
    pub fleet: FleetArgs,

    /// cgroup v2 directory for the connection tracker (--max-conns; unused without
    /// it, so one environment file serves both) [default: the
    /// cgroup v2 root, found in /proc/self/mounts].
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,

    /// Load balancer or proxy whose PROXY protocol header (v1 or v2, at the
    /// start of each connection) names the client: that client, not the peer,
    /// is charged and limited (repeatable). Headers from other peers are
    /// ignored (their bytes are just bytes).
    #[arg(long, value_name = "CIDR", help_heading = "Identity")]
    pub trusted_proxy: Vec<Network>,

    /// A --trusted-proxy connection without a valid PROXY header: required:
    /// reset (counted "proxy_refused"); optional: its peer is the client.
    #[arg(long, value_name = "MODE", value_enum, default_value_t = ProxyProtocol::Optional, help_heading = "Identity")]
    pub proxy_protocol: ProxyProtocol,

    /// The client of a --trusted-proxy connection without a PROXY header is
    /// taken N hops from the right of its forwarded list (--forwarded-header;
    /// 1: the address the nearest proxy appended; at most 4). Headers from
    /// other peers are ignored. A list too short, or whose chosen element is
    /// no address, names no one: the proxy itself is charged.
    #[arg(long, value_name = "N", requires = "trusted_proxy",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(api_guard_common::forwarded::MAX_HOPS)),
          help_heading = "Identity")]
    pub trusted_hops: Option<u32>,

    /// The forwarded list --trusted-hops reads: x-forwarded-for, or
    /// forwarded (RFC 7239's for= parameters). Only that header is read: the
    /// other is the client's to forge.
    #[arg(long, value_name = "NAME", value_enum, default_value_t = ForwardedHeader::XForwardedFor,
          requires = "trusted_hops", help_heading = "Identity")]
    pub forwarded_header: ForwardedHeader,

    /// Where to keep the forwarded blocklist: the forwarded clients over their
    /// limit on pooled proxy connections (whose requests are reported, not
    /// dropped), as an nginx geo file (`ADDR 1;` lines, `default 0;`),
    /// rewritten atomically (a rename) when it changes.
    #[arg(
        long,
        value_name = "PATH",
        requires = "trusted_hops",
        help_heading = "Identity"
    )]
    pub forwarded_blocklist: Option<PathBuf>,

    /// The header that carries the API key (Authorization, X-API-Key, ...;
    /// matched in any case). The kernel hashes its value with a keyed hash
    /// whose secret is new at each start: no map or log holds a key.
    #[arg(long, value_name = "NAME", value_parser = api_guard_common::keys::user::parse_key_header, help_heading = "Keys and routes")]
    pub key_header: Option<String>,

    /// Requests per second per API key, with bursts of BURST [default: the
    /// rate]: one key's bucket whatever address it comes from. Over it:
    /// dropped or reset as --on-limit says (counted "key_limited").
    #[arg(long, value_name = "N[:BURST]", requires = "key_header",
          value_parser = api_guard_common::keys::user::parse_rate, help_heading = "Keys and routes")]
    pub key_rate: Option<(u32, u32)>,

    /// A route's limit per client (per key with --key-header):
    /// 'METHOD /path/prefix=RATE[:BURST]' (METHOD * for any; repeatable; at
    /// most 16). The query string is not part of the path; the most specific
    /// prefix wins (counted "route_limited").
    #[arg(
        long,
        value_name = "'METHOD /PREFIX=N[:BURST]'",
        help_heading = "Keys and routes"
    )]
    pub route_limit: Vec<RouteLimit>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProxyProtocol {
    Required,
    Optional,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ForwardedHeader {
    XForwardedFor,
    Forwarded,
}

/// The environment variable a long flag reads from: `--max-clients` →
/// `API_GUARD_MAX_CLIENTS`.
pub fn env_name(long: &str) -> String {
    format!("API_GUARD_{}", long.replace('-', "_").to_ascii_uppercase())
}

/// The command line as clap sees it: the flags of `run`, and `--pin-dir`
/// everywhere, also read from their environment variables (lists
/// comma-separated there).
pub fn command() -> clap::Command {
    fn with_env(arg: clap::Arg, all: bool) -> clap::Arg {
        let Some(long) = arg
            .get_long()
            .filter(|l| !matches!(*l, "help" | "version"))
            .map(str::to_owned)
        else {
            return arg;
        };
        if !all && long != "pin-dir" {
            return arg;
        }
        let arg = arg.env(env_name(&long));
        match arg.get_action() {
            ArgAction::Append => arg.value_delimiter(','),
            // API_GUARD_DRY_RUN=1 (or yes, on, true) as well as true.
            ArgAction::SetTrue => arg.value_parser(clap::builder::BoolishValueParser::new()),
            _ => arg,
        }
    }
    let mut cmd = Cli::command();
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    for name in names {
        let all = name == "run";
        cmd = cmd.mut_subcommand(name, |sub| sub.mut_args(|a| with_env(a, all)));
    }
    cmd
}

/// Parses the process's arguments (and environment). Help and version print
/// as clap has them (and exit); bad usage is a [`Failure::Usage`] of one line.
pub fn parse() -> Result<Cli, Failure> {
    try_parse_from(std::env::args_os()).map_err(|e| match usage_error_line(&e) {
        Some(line) => Failure::Usage(line),
        None => e.exit(),
    })
}

/// A clap usage error squeezed to one line: its message and any tip, without
/// the usage block (`--help` has that). `None` for help, version, and a bare
/// `api-guard` (which shows the help).
pub fn usage_error_line(e: &clap::Error) -> Option<String> {
    use clap::error::ErrorKind;
    if !e.use_stderr() || e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        return None;
    }
    let rendered = e.render().to_string();
    let mut parts = Vec::new();
    for (i, paragraph) in rendered.split("\n\n").enumerate() {
        let text = paragraph.split_whitespace().collect::<Vec<_>>().join(" ");
        if i == 0 {
            parts.push(text.strip_prefix("error: ").unwrap_or(&text).to_owned());
        } else if text.starts_with("tip:") {
            parts.push(text);
        }
    }
    Some(format!("{} (see --help)", parts.join("; ")))
}

/// Parses `argv` (and the environment).
pub fn try_parse_from<I, T>(argv: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut matches = command().try_get_matches_from(argv)?;
    Cli::from_arg_matches_mut(&mut matches)
}

/// The highest rate: one event per nanosecond, the buckets' resolution.
const MAX_RATE: i64 = 1_000_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RequireAuth {
    Off,
    Log,
    Block,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TlsMode {
    Auto,
    Off,
}

/// `--sample-wakeup`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SampleWakeup {
    Each,
    Batched,
}

/// `--xdp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum XdpChoice {
    Auto,
    Native,
    Off,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FailMode {
    Open,
    Closed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnLimit {
    Drop,
    Reset,
}

impl RunArgs {
    /// The policy flags, validated together.
    pub fn policy(&self) -> Result<Policy, String> {
        let mut policy = Policy {
            rate: self.rate,
            burst: self.burst,
            conn_rate: self.conn_rate,
            conn_burst: self.conn_burst,
            block_for: self.block_for,
            max_conns: self.max_conns,
            allow: self.allow.clone(),
            deny: self.deny.clone(),
            limits: self.limits.clone(),
            ipv6_prefix: self.ipv6_prefix,
            dry_run: self.dry_run,
            on_limit_reset: self.on_limit == OnLimit::Reset,
            sample: self.sample,
            capture_bytes: self.capture_bytes,
            auth_blocks: self.require_auth == RequireAuth::Block,
            detect_blocks: crate::detect::DetectorName::ALL
                .into_iter()
                .filter(|d| self.detect_action(*d) == crate::detect::Action::Block)
                .map(|d| d.name())
                .collect(),
            fail_open_after: (self.fail_mode == FailMode::Open).then_some(self.heartbeat_timeout),
            trusted_proxies: self.trusted_proxy.clone(),
            proxy_required: self.proxy_protocol == ProxyProtocol::Required,
            trusted_hops: self.trusted_hops,
            forwarded_rfc7239: self.forwarded_header == ForwardedHeader::Forwarded,
            sample_wakeup_batched: self.sample_wakeup == SampleWakeup::Batched,
            keys: KeyPolicy::build(self.key_header.as_deref(), self.key_rate, &self.route_limit)?,
        };
        // --fleet-rate: the kernel starts at the fallback's limit, which the
        // fleet task raises once Redis answers.
        if let Some((rate, burst)) = self.fleet()?.and_then(|f| f.fallback) {
            (policy.rate, policy.burst) = (Some(rate), Some(burst));
        }
        policy.validate()?;
        Ok(policy)
    }
}

/// One `--detect NAME=ACTION`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DetectSetting {
    pub detector: crate::detect::DetectorName,
    pub action: crate::detect::Action,
}

/// `NAME=off|log|block`; `auth` is --require-auth's.
pub fn parse_detect_setting(s: &str) -> Result<DetectSetting, String> {
    use crate::detect::{Action, DetectorName};
    let (name, action) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not NAME=off|log|block"))?;
    let detector: DetectorName = name.trim().parse()?;
    if detector == DetectorName::Auth {
        return Err("requests without credentials are --require-auth's".into());
    }
    let action = match action.trim() {
        "off" => Action::Off,
        "log" => Action::Log,
        "block" => Action::Block,
        other => return Err(format!("unknown action {other:?} (off, log, block)")),
    };
    Ok(DetectSetting { detector, action })
}

pub fn parse_detect_threshold(s: &str) -> Result<crate::detect::Threshold, String> {
    s.parse()
}

/// The detectors' window: 1m to 24h.
pub fn parse_detect_window(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d < Duration::from_secs(60) => Err("must be at least 1m".into()),
        d if d > Duration::from_secs(86_400) => Err("must be at most 24h".into()),
        d => Ok(d),
    }
}

impl RunArgs {
    /// What `--detect` (the last one naming it) says for `detector`; `auth`
    /// follows --require-auth.
    pub fn detect_action(&self, detector: crate::detect::DetectorName) -> crate::detect::Action {
        use crate::detect::{Action, DetectorName};
        if detector == DetectorName::Auth {
            return match self.require_auth {
                RequireAuth::Block => Action::Block,
                _ => Action::Off,
            };
        }
        self.detect
            .iter()
            .rev()
            .find(|d| d.detector == detector)
            .map_or(Action::Log, |d| d.action)
    }
}

impl RequireAuth {
    /// As the detectors take it.
    pub fn check(self) -> AuthCheck {
        match self {
            RequireAuth::Off => AuthCheck::Off,
            RequireAuth::Log => AuthCheck::Log,
            RequireAuth::Block => AuthCheck::Block,
        }
    }
}

impl RunArgs {
    /// The credential header names, lower-cased (httparse keeps their case).
    pub fn auth_header_names(&self) -> Vec<String> {
        if self.auth_headers.is_empty() {
            vec!["authorization".into()]
        } else {
            self.auth_headers
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<RunArgs, clap::Error> {
        let mut argv = vec!["api-guard", "run"];
        argv.extend_from_slice(args);
        try_parse_from(argv).map(|cli| match cli.command {
            Command::Run(r) => *r,
            other => panic!("not run: {other:?}"),
        })
    }

    #[test]
    fn repeated_ifaces_and_ports() {
        let r = run(&[
            "--iface", "a", "--iface", "b", "--port", "80", "--port", "8080",
        ])
        .unwrap();
        assert_eq!(r.ifaces, ["a", "b"]);
        assert_eq!(r.ports, [80, 8080]);
        assert_eq!(r.report_every, Duration::from_secs(60));
    }

    #[test]
    fn ports_out_of_range_are_rejected() {
        for bad in ["0", "65536", "-1", "http"] {
            assert!(run(&["--iface", "a", "--port", bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn env_names_and_where_they_apply() {
        assert_eq!(env_name("max-clients"), "API_GUARD_MAX_CLIENTS");
        let cmd = command();
        let env_of = |sub: &str, long: &str| {
            cmd.find_subcommand(sub)
                .and_then(|s| s.get_arguments().find(|a| a.get_long() == Some(long)))
                .and_then(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
        };
        assert_eq!(env_of("run", "rate").as_deref(), Some("API_GUARD_RATE"));
        assert_eq!(env_of("run", "port").as_deref(), Some("API_GUARD_PORT"));
        assert_eq!(
            env_of("run", "fail-mode").as_deref(),
            Some("API_GUARD_FAIL_MODE")
        );
        assert_eq!(
            env_of("top", "pin-dir").as_deref(),
            Some("API_GUARD_PIN_DIR")
        );
        // An operator's `limit --rate` never picks up a daemon's API_GUARD_RATE.
        assert_eq!(env_of("limit", "rate"), None);
        cmd.debug_assert();
    }

    #[test]
    fn iface_and_port_are_required() {
        assert!(run(&["--port", "80"]).is_err());
        assert!(run(&["--iface", "a"]).is_err());
    }

    #[test]
    fn detect_flags() {
        use crate::detect::{Action, DetectorName};
        let r = run(&[
            "--iface",
            "a",
            "--port",
            "80",
            "--detect",
            "bola=block",
            "--detect",
            "probing=off",
            "--detect-threshold",
            "bola@/v1/orders/{id}=100",
            "--block-for",
            "5m",
        ])
        .unwrap();
        assert_eq!(r.detect_action(DetectorName::Bola), Action::Block);
        assert_eq!(r.detect_action(DetectorName::Probing), Action::Off);
        // Not named: log.
        assert_eq!(r.detect_action(DetectorName::Stuffing), Action::Log);
        assert_eq!(r.detect_action(DetectorName::Auth), Action::Off);
        assert_eq!(r.detect_thresholds[0].value, 100);
        assert_eq!(r.detect_window, Duration::from_secs(600));
        assert!(r.policy().is_ok());
        // Blocking needs a duration, and --block-for alone needs a reason.
        let no_for = run(&["--iface", "a", "--port", "80", "--detect", "bola=block"]).unwrap();
        assert!(no_for.policy().unwrap_err().contains("--block-for"));
        for bad in [
            vec!["--detect", "bola"],
            vec!["--detect", "bola=maybe"],
            vec!["--detect", "auth=block"],
            vec!["--detect", "nosuch=log"],
            vec!["--detect-threshold", "bola=1"],
            vec!["--detect-window", "10s"],
        ] {
            let mut args = vec!["--iface", "a", "--port", "80"];
            args.extend(bad.iter().copied());
            assert!(run(&args).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn policy_flags() {
        let r = run(&[
            "--iface",
            "a",
            "--port",
            "80",
            "--rate",
            "10",
            "--burst",
            "20",
            "--block-for",
            "5s",
            "--allow",
            "198.18.1.0/24",
            "--deny",
            "2001:db8:9::/48",
            "--limit",
            "198.18.2.0/24=5:6",
            "--ipv6-prefix",
            "56",
            "--dry-run",
        ])
        .unwrap();
        let p = r.policy().unwrap();
        assert_eq!(
            (p.rate, p.burst, p.ipv6_prefix, p.dry_run),
            (Some(10), Some(20), 56, true)
        );
        assert_eq!(p.block_for, Some(Duration::from_secs(5)));
        assert_eq!(p.limits[0].rate, 5);
        assert_eq!(p.allow.len() + p.deny.len(), 2);
    }

    #[test]
    fn bad_policy_flags_are_rejected() {
        for bad in [
            &["--rate", "0"][..],
            &["--burst", "0"],
            &["--ipv6-prefix", "0"],
            &["--ipv6-prefix", "129"],
            &["--block-for", "10"],
            &["--block-for", "0s"],
            &["--deny", "198.18.0.0/40"],
            &["--limit", "198.18.0.0/24"],
            &["--max-conns", "-1"],
            &["--max-clients", "0"],
            &["--conn-rate", "0"],
            &["--capture-bytes", "0"],
            &["--sample", "1.5"],
            &["--sample-buffer", "5000"],
            &["--auth-header", ""],
            &["--auth-header", "Authorization:"],
            &["--auth-header", "X Api Key"],
        ] {
            let mut args = vec!["--iface", "a", "--port", "80"];
            args.extend_from_slice(bad);
            assert!(run(&args).is_err(), "{bad:?}");
        }
        let r = run(&["--iface", "a", "--port", "80", "--burst", "5"]).unwrap();
        assert!(r.policy().is_err());
    }

    #[test]
    fn usage_errors_are_one_line_with_their_tip() {
        let e = run(&["--port", "80"]).unwrap_err();
        let line = usage_error_line(&e).unwrap();
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains("--iface"), "{line}");
        assert!(!line.contains("Usage"), "{line}");

        let e = try_parse_from(["api-guard", "block", "--bogus"]).unwrap_err();
        let line = usage_error_line(&e).unwrap();
        assert!(
            line.contains("'--bogus'") && line.contains("; tip: "),
            "{line}"
        );

        let help = try_parse_from(["api-guard", "run", "--help"]).unwrap_err();
        assert_eq!(usage_error_line(&help), None, "help prints as it is");
    }

    #[test]
    fn auth_headers_are_header_names() {
        let r = run(&["--iface", "a", "--port", "80", "--auth-header", "X-Api-Key"]).unwrap();
        assert_eq!(r.auth_header_names(), ["x-api-key"]);
    }
}
