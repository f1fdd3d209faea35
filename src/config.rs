//! Flags and environment into a [`Command`], through `clap`: `--help` and `--version` are
//! written from the flag declarations below, and a bad flag or value is a one-line error
//! naming it. `$PORT` is the default port. Sizes and durations are read by [`units`].
#![forbid(unsafe_code)]

pub mod units;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::{PossibleValuesParser, RangedU64ValueParser, TypedValueParser};
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Args, Parser, Subcommand};

use crate::cluster;
pub use crate::ship::Url;
pub use crate::store::export::ExportFormat;
pub use crate::store::journal::SyncMode;

/// How the server runs. [`Config::default`] is what no flags and no `$PORT` give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub bind: IpAddr,
    pub port: u16,
    /// `None`: one per CPU the process may run on.
    pub threads: Option<usize>,
    pub pin: bool,
    pub max_body: usize,
    /// Largest `application/x-ndjson` bulk body (`--max-bulk-body`).
    pub max_bulk_body: usize,
    pub max_header: usize,
    /// `None`: derived from the open-file limit at start.
    pub max_conns: Option<usize>,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
    pub shutdown_timeout: Duration,
    /// After SIGTERM, how long `/health` says 503 while everything else is served normally.
    pub drain_grace: Duration,
    /// Journal segments roll over past this size.
    pub segment_bytes: u64,
    /// RAM for recent usages, all workers together (`--cache`).
    pub cache_bytes: u64,
    /// Remove sealed segments older than this (`--retain`; `None`: keep them).
    pub retain: Option<Duration>,
    /// Remove the oldest sealed segments while the journal is larger (`--retain-bytes`).
    pub retain_bytes: Option<u64>,
    pub data_dir: PathBuf,
    pub in_memory: bool,
    pub sync: SyncMode,
    pub repair: bool,
    /// Seconds between status lines on stderr (`None`: none).
    pub stats: Option<Duration>,
    /// `--access-log PATH` (`-`: stdout).
    pub access_log: Option<PathBuf>,
    /// `--nodes`: servers in the cluster (1: alone).
    pub nodes: u32,
    /// `--node`: this server's number in the cluster, below `nodes`.
    pub node: u32,
    /// `--cluster-base`: start a new cluster epoch at this base.
    pub cluster_base: Option<u64>,
    /// `--ship-to`: ship usages into this PostgreSQL database (`$USAGED_SHIP_TO` is read by
    /// `main`, so it stays out of `ps`).
    pub ship_to: Option<Url>,
    /// `--ship-hold`: a shipper runs beside; retention keeps what its `SHIPPED` has not passed.
    pub ship_hold: bool,
    /// How long an `Idempotency-Key` is remembered (`--idempotency-window`).
    pub idempotency_window: Duration,
    /// Memory for `Idempotency-Key`s (`--idempotency-memory`).
    pub idempotency_memory: usize,
}

impl Default for Config {
    fn default() -> Self {
        let flags = Cli::try_parse_from(["usaged"]).expect("the defaults parse");
        flags.serve.into_config(DEFAULT_PORT)
    }
}

/// The port without `--port` and without `$PORT`.
const DEFAULT_PORT: u16 = 3000;

#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Serve(Box<Config>),
    Export {
        data_dir: PathBuf,
        format: ExportFormat,
    },
    /// `usaged haproxy-config`: print this HAProxy configuration (checked by
    /// [`cluster::check`]).
    HaproxyConfig(Box<cluster::Haproxy>),
    /// `usaged ship`: ship the journal in `data_dir` into PostgreSQL until SIGINT/SIGTERM.
    Ship {
        data_dir: PathBuf,
        /// `--to` (`None`: `$USAGED_SHIP_TO`).
        to: Option<Url>,
        /// `--node` (`None`: the data directory's `CLUSTER` file's, else 0).
        node: Option<u32>,
    },
    /// `usaged ship --print-schema`: print the tables' DDL.
    PrintSchema,
    /// `--help` or `--version`: print this text to stdout and exit 0.
    Help(String),
}

/// Parse `args` (without the program name); `env_port` is `$PORT`. `Err` is one line naming
/// the flag (or `PORT`) that is wrong.
pub fn parse(
    args: impl IntoIterator<Item = String>,
    env_port: Option<&str>,
) -> Result<Command, String> {
    let args = std::iter::once("usaged".to_string()).chain(args);
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            return Ok(Command::Help(e.render().to_string()));
        }
        Err(e) => return Err(one_line(&e)),
    };
    match cli.command {
        Some(Export { data_dir, format }) => Ok(Command::Export { data_dir, format }),
        Some(Ship { print_schema, .. }) if print_schema => Ok(Command::PrintSchema),
        Some(Ship {
            data_dir, to, node, ..
        }) => Ok(Command::Ship {
            data_dir,
            to: to.map(Url),
            node: node.map(|n| n as u32),
        }),
        Some(HaproxyConfig {
            nodes,
            epochs,
            bind,
            port,
            tcp_port,
            stats_socket,
            nbthread,
        }) => {
            let h = cluster::Haproxy {
                nodes,
                epochs,
                bind,
                port,
                tcp_port,
                stats_socket,
                nbthread,
            };
            cluster::check(&h).map_err(|e| format!("haproxy-config: {e}"))?;
            Ok(Command::HaproxyConfig(Box::new(h)))
        }
        None => {
            // A `$PORT` that is not a port is an error even beside `--port`: the environment
            // is wrong, and the next start without the flag would fail.
            let env_port = match env_port {
                None => DEFAULT_PORT,
                Some(p) => p
                    .parse()
                    .map_err(|_| format!("invalid PORT environment variable: {p:?}"))?,
            };
            let config = cli.serve.into_config(env_port);
            if config.node >= config.nodes {
                return Err(format!(
                    "invalid value '{}' for '--node <K>': must be below --nodes ({}) (see --help)",
                    config.node, config.nodes
                ));
            }
            Ok(Command::Serve(Box::new(config)))
        }
    }
}

/// `clap`'s error as one line: its first line (which names the flag and the value), then the
/// values the flag takes, or the flag meant instead of an unknown one.
fn one_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let first = text.lines().next().unwrap_or("bad arguments");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    match (
        e.get(ContextKind::ValidValue),
        e.get(ContextKind::SuggestedArg),
    ) {
        (Some(ContextValue::Strings(v)), _) => {
            format!("{first}: expected {} (see --help)", v.join(", "))
        }
        (_, Some(ContextValue::String(s))) => format!("{first}; did you mean {s}? (see --help)"),
        _ => format!("{first} (see --help)"),
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "usaged",
    version,
    about = "A per-core event-loop HTTP server for the usages API.",
    override_usage = "usaged [OPTIONS]\n       usaged export [--data-dir <DIR>] [--format <FORMAT>]\n       \
                      usaged haproxy-config --node <HOST:PORT>... [--epoch <BASE:NODES>...] \
                      [--port <N>] [--tcp-port <N>] [--stats-socket <PATH>] [--nbthread <N>]\n       \
                      usaged ship [--data-dir <DIR>] [--to <URL>] [--node <K>] | --print-schema",
    after_help = "SIZE: bytes (65536), or a whole number with B, KiB, MiB, GiB or TiB (64KiB, \
                  1GiB).\nDURATION: seconds (10, 0.5), or a number with ms, s, m, h or d \
                  (500ms, 90s, 2m, 1.5h, 1d); from 0.1 seconds to 1 day, except --retain.",
    args_conflicts_with_subcommands = true,
    args_override_self = true,
    disable_help_subcommand = true,
    max_term_width = 100
)]
struct Cli {
    #[command(flatten)]
    serve: Serve,
    #[command(subcommand)]
    command: Option<Sub>,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// Print every stored usage in id order to stdout, reading the journal in --data-dir
    /// without a server; exits 1 if it skipped corrupt records
    Export {
        /// Where the journal lives
        #[arg(long, value_name = "DIR", default_value = "usaged-data")]
        data_dir: PathBuf,
        /// What each usage is printed as
        #[arg(long, value_name = "FORMAT", default_value = "ndjson", value_parser = format())]
        format: ExportFormat,
    },
    /// Print an HAProxy configuration for a cluster of usaged nodes: POSTs balanced over all,
    /// GET/HEAD /api/usages/{id} sent to the node that owns the id, /health checks
    HaproxyConfig {
        /// A node's HOST:PORT; repeat it for each node, node 0 first
        #[arg(long = "node", value_name = "HOST:PORT")]
        nodes: Vec<String>,
        /// A cluster epoch: ids above BASE belong to node (id - BASE - 1) mod NODES; repeat
        /// it, oldest first [default: 0:<number of nodes>]
        #[arg(long = "epoch", value_name = "BASE:NODES", value_parser = epoch)]
        epochs: Vec<cluster::Epoch>,
        /// Address the frontends listen on
        #[arg(long, value_name = "ADDR", default_value = "0.0.0.0")]
        bind: String,
        /// Port of the `mode http` frontend (every request)
        #[arg(long, value_name = "N", default_value_t = 8080)]
        port: u16,
        /// Port of a `mode tcp` frontend for ingestion (whole connections balanced) [default:
        /// none]
        #[arg(long, value_name = "N")]
        tcp_port: Option<u16>,
        /// Path of HAProxy's stats socket (`show stat`, reloads) [default: none]
        #[arg(long, value_name = "PATH")]
        stats_socket: Option<String>,
        /// HAProxy threads (`nbthread`) [default: none written: one per CPU HAProxy may run on]
        #[arg(long, value_name = "N", value_parser = count(1, 64))]
        nbthread: Option<usize>,
    },
    /// Ship the usages of the journal in --data-dir into PostgreSQL, exactly once, until
    /// SIGINT/SIGTERM (a server beside it should run with --ship-hold)
    Ship {
        /// Where the journal lives
        #[arg(long, value_name = "DIR", default_value = "usaged-data")]
        data_dir: PathBuf,
        /// The database: postgres://USER[:PASSWORD]@HOST[:PORT]/DB or key=value pairs
        /// [default: $USAGED_SHIP_TO]
        #[arg(long, value_name = "URL")]
        to: Option<String>,
        /// The node whose journal this is [default: the data dir's CLUSTER file's, else 0]
        #[arg(long, value_name = "K", allow_negative_numbers = true, value_parser = count(0, 63))]
        node: Option<usize>,
        /// Print the tables' DDL and exit
        #[arg(long, conflicts_with_all = ["to", "node"])]
        print_schema: bool,
    },
}
use Sub::{Export, HaproxyConfig, Ship};

/// The server's flags, in the order `--help` lists them.
#[derive(Args, Debug)]
struct Serve {
    /// Address to listen on
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0")]
    bind: IpAddr,
    /// TCP port, 0 picks a free one [default: $PORT, else 3000]
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    port: Option<u16>,
    /// Worker threads, one event loop each [default: CPUs in the affinity mask]
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = count(1, 1024))]
    threads: Option<usize>,
    /// Do not pin worker i to the i-th allowed CPU
    #[arg(long)]
    no_pin: bool,
    /// Largest request body accepted (else 413), up to 1GiB
    #[arg(long, value_name = "SIZE", default_value = "65536", allow_negative_numbers = true,
          value_parser = size::<usize>(0, 1 << 30))]
    max_body: usize,
    /// Largest NDJSON bulk body (else 413), streamed line by line, up to 1GiB
    #[arg(long, value_name = "SIZE", default_value = "16MiB", allow_negative_numbers = true,
          value_parser = size::<usize>(0, 1 << 30))]
    max_bulk_body: usize,
    /// How long an Idempotency-Key is remembered after its first request (a retry within it
    /// gets the first answer again)
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = seconds)]
    idempotency_window: Duration,
    /// Memory for Idempotency-Keys, all workers together (about 66 bytes a key, 1M keys in
    /// 64MiB); when full, the keys seen longest ago are forgotten early; 64KiB to 64GiB
    #[arg(long, value_name = "SIZE", default_value = "64MiB", allow_negative_numbers = true,
          value_parser = size::<usize>(1 << 16, 1 << 36))]
    idempotency_memory: usize,
    /// Largest request line and headers (else 431), 256 to 1MiB
    #[arg(long, value_name = "SIZE", default_value = "8192", allow_negative_numbers = true,
          value_parser = size::<usize>(256, 1 << 20))]
    max_header: usize,
    /// Open connections per worker; past it new ones wait in the backlog [default: the
    /// open-file limit, less a reserve, shared by the workers]
    #[arg(long, value_name = "N", allow_negative_numbers = true,
          value_parser = count(1, 10_000_000))]
    max_conns: Option<usize>,
    /// Time from a request's first byte to the end of its head (else 408)
    #[arg(long, value_name = "DURATION", default_value = "10", value_parser = seconds)]
    header_timeout: Duration,
    /// Time from the end of the head to the end of the body (else 408)
    #[arg(long, value_name = "DURATION", default_value = "30", value_parser = seconds)]
    body_timeout: Duration,
    /// Time a keep-alive connection may wait for its next request
    #[arg(long, value_name = "DURATION", default_value = "60", value_parser = seconds)]
    idle_timeout: Duration,
    /// Time a client may take none of its answers before it is cut off
    #[arg(long, value_name = "DURATION", default_value = "30", value_parser = seconds)]
    write_timeout: Duration,
    /// Time to finish open requests on SIGINT/SIGTERM, after the grace
    #[arg(long, value_name = "DURATION", default_value = "10", value_parser = seconds)]
    shutdown_timeout: Duration,
    /// After SIGINT/SIGTERM, time during which /health says 503 and everything else is
    /// served as usual, so a load balancer moves away [default: 0]
    #[arg(long, value_name = "DURATION", value_parser = seconds)]
    drain_grace: Option<Duration>,
    /// Where the journal lives (created if missing)
    #[arg(long, value_name = "DIR", default_value = "usaged-data")]
    data_dir: PathBuf,
    /// Keep no journal: usages are lost on exit (for benchmarks)
    #[arg(long)]
    in_memory: bool,
    /// always: fdatasync before each turn's 201s; interval: at most a second of usages lost
    /// on power failure; never: left to the kernel
    #[arg(long, value_name = "MODE", default_value = "interval", value_parser = sync())]
    sync: SyncMode,
    /// Journal segments roll over past this size, 4KiB to 1TiB
    #[arg(long, value_name = "SIZE", allow_negative_numbers = true,
          default_value_t = crate::store::journal::SEGMENT_BYTES,
          value_parser = size::<u64>(4096, 1 << 40))]
    segment_size: u64,
    /// RAM for recent usages, all workers together; older ones are read from the journal
    /// (at least 4MiB per worker)
    #[arg(long, value_name = "SIZE", allow_negative_numbers = true,
          default_value_t = crate::store::arena::DEFAULT_CACHE,
          value_parser = size::<u64>(1 << 20, 1 << 50))]
    cache: u64,
    /// Remove journal segments (whole files, oldest first) once older than DURATION, from 1s
    /// to 36500d; their ids answer 410 [default: keep]
    #[arg(long, value_name = "DURATION", value_parser = retention)]
    retain: Option<Duration>,
    /// Remove the oldest journal segments while the journal is larger than SIZE, at least
    /// 1MiB [default: no limit]
    #[arg(long, value_name = "SIZE", allow_negative_numbers = true,
          value_parser = size::<u64>(1 << 20, u64::MAX))]
    retain_bytes: Option<u64>,
    /// Start even if a journal record in the middle is bad: keep what comes before it, move
    /// the rest aside
    #[arg(long)]
    repair: bool,
    /// Print a status line to stderr every DURATION (requests/s, p50/p99, connections,
    /// errors, usages stored) [default: off]
    #[arg(long, value_name = "DURATION", value_parser = seconds)]
    stats: Option<Duration>,
    /// One JSON line per request (time, client, method, path, status, bytes, microseconds, id
    /// if created) to PATH, or - for stdout; written in batches by a helper thread, lines
    /// dropped (and counted) if it falls behind [default: off]
    #[arg(long, value_name = "PATH")]
    access_log: Option<PathBuf>,
    /// This server's number in the cluster, from 0 to N-1: it hands out the ids whose
    /// (id - base - 1) mod N is K
    #[arg(long, value_name = "K", default_value = "0", allow_negative_numbers = true,
          value_parser = count(0, 63))]
    node: usize,
    /// Servers in the cluster, 1 to 64; every node of a cluster epoch must be given the same
    #[arg(long, value_name = "N", default_value = "1", allow_negative_numbers = true,
          value_parser = count(1, 64))]
    nodes: usize,
    /// The cluster epoch whose ids are past B: 0 for a new cluster, past every id the cluster
    /// handed out to grow it (below 2^52); needed at a node's first start when --nodes > 1,
    /// then kept in the data dir's CLUSTER file [default: the epoch CLUSTER names]
    #[arg(long, value_name = "B", allow_negative_numbers = true,
          value_parser = RangedU64ValueParser::<u64>::new().range(0..1 << 52))]
    cluster_base: Option<u64>,
    /// Ship usages into this PostgreSQL database, exactly once, from a thread of this
    /// server; retention keeps what is not shipped [default: $USAGED_SHIP_TO, else off]
    #[arg(long, value_name = "URL")]
    ship_to: Option<String>,
    /// A `usaged ship` runs beside this server: retention keeps what its SHIPPED file in
    /// --data-dir has not passed
    #[arg(long)]
    ship_hold: bool,
}

impl Serve {
    /// The config these flags give; `env_port` is the port without `--port`.
    fn into_config(self, env_port: u16) -> Config {
        Config {
            bind: self.bind,
            port: self.port.unwrap_or(env_port),
            threads: self.threads,
            pin: !self.no_pin,
            max_body: self.max_body,
            max_bulk_body: self.max_bulk_body,
            max_header: self.max_header,
            max_conns: self.max_conns,
            header_timeout: self.header_timeout,
            body_timeout: self.body_timeout,
            idle_timeout: self.idle_timeout,
            write_timeout: self.write_timeout,
            shutdown_timeout: self.shutdown_timeout,
            drain_grace: self.drain_grace.unwrap_or(Duration::ZERO),
            segment_bytes: self.segment_size,
            cache_bytes: self.cache,
            retain: self.retain,
            retain_bytes: self.retain_bytes,
            data_dir: self.data_dir,
            in_memory: self.in_memory,
            sync: self.sync,
            repair: self.repair,
            stats: self.stats,
            access_log: self.access_log,
            nodes: self.nodes as u32,
            node: self.node as u32,
            cluster_base: self.cluster_base,
            ship_to: self.ship_to.map(Url),
            ship_hold: self.ship_hold,
            idempotency_window: self.idempotency_window,
            idempotency_memory: self.idempotency_memory,
        }
    }
}

/// An integer from `min` to `max`.
fn count(min: u64, max: u64) -> impl TypedValueParser<Value = usize> {
    RangedU64ValueParser::<usize>::new().range(min..=max)
}

/// A size ([`units::parse_size`]) from `min` to `max` bytes.
fn size<T>(min: u64, max: u64) -> impl TypedValueParser<Value = T>
where
    T: TryFrom<u64> + Clone + Send + Sync + 'static,
{
    move |v: &str| -> Result<T, String> {
        let n = units::parse_size(v)?;
        if !(min..=max).contains(&n) {
            return Err(format!(
                "{n} bytes is not in {min}..={max} ({} to {})",
                units::format_size(min),
                units::format_size(max)
            ));
        }
        T::try_from(n).map_err(|_| format!("{n} bytes is more than this machine can address"))
    }
}

/// The shortest and the longest [`seconds`].
const SECONDS: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(86_400);

/// A duration ([`units::parse_duration`]) from 0.1 s to one day.
fn seconds(v: &str) -> Result<Duration, String> {
    let in_range = match v.parse::<f64>() {
        // Plain seconds are checked before they are rounded to nanoseconds, as they were
        // before suffixes: 0.09999999999 is out of range though it rounds to 100 ms.
        Ok(s) => (0.1..=86_400.0).contains(&s),
        Err(_) => SECONDS.contains(&units::parse_duration(v)?),
    };
    if !in_range {
        return Err(format!(
            "expected seconds from 0.1 to 86400 ({} to {})",
            units::format_duration(*SECONDS.start()),
            units::format_duration(*SECONDS.end())
        ));
    }
    units::parse_duration(v)
}

/// A retention age ([`units::parse_duration`]) from one second to 100 years.
fn retention(v: &str) -> Result<Duration, String> {
    let d = units::parse_duration(v)?;
    let range = Duration::from_secs(1)..=Duration::from_secs(36_500 * 86_400);
    if !range.contains(&d) {
        return Err(format!(
            "expected from {} to {}",
            units::format_duration(*range.start()),
            units::format_duration(*range.end())
        ));
    }
    Ok(d)
}

fn sync() -> impl TypedValueParser<Value = SyncMode> {
    PossibleValuesParser::new(["always", "interval", "never"]).map(|v| match v.as_str() {
        "always" => SyncMode::Always,
        "never" => SyncMode::Never,
        _ => SyncMode::Interval,
    })
}

/// `BASE:NODES`.
fn epoch(v: &str) -> Result<cluster::Epoch, String> {
    let parsed = v
        .split_once(':')
        .and_then(|(b, n)| Some((b.parse().ok()?, n.parse().ok()?)));
    match parsed {
        Some((base, nodes)) => Ok(cluster::Epoch { base, nodes }),
        None => Err(format!(
            "expected BASE:NODES (two whole numbers), got {v:?}"
        )),
    }
}

fn format() -> impl TypedValueParser<Value = ExportFormat> {
    PossibleValuesParser::new(["ndjson", "csv"]).map(|v| match v.as_str() {
        "csv" => ExportFormat::Csv,
        _ => ExportFormat::Ndjson,
    })
}

#[cfg(test)]
mod tests;
