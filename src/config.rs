//! Flags and environment into a [`Config`]. A bad flag or value is an error naming it.
#![forbid(unsafe_code)]

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::store::journal::SyncMode;
pub const USAGE: &str = "\
usage: usaged [--bind ADDR] [--port N] [--threads N] [--no-pin] [--max-body BYTES] [--max-header BYTES]
              [--max-conns N] [--header-timeout S] [--body-timeout S] [--idle-timeout S]
              [--write-timeout S] [--shutdown-timeout S] [--drain-grace S]
              [--data-dir DIR] [--in-memory] [--sync always|interval|never] [--segment-size BYTES]
              [--repair] [--stats S] [--access-log PATH]
       usaged export [--data-dir DIR] [--format ndjson|csv]

  --bind ADDR          address to listen on                      [default: 0.0.0.0]
  --port N             TCP port, 0 picks a free one              [default: $PORT, else 3000]
  --threads N          worker threads, one event loop each       [default: CPUs in the affinity mask]
  --no-pin             do not pin worker i to the i-th allowed CPU
  --max-body BYTES     largest request body accepted (else 413)  [default: 65536]
  --max-header BYTES   largest request line + headers (else 431) [default: 8192]
  --max-conns N        open connections per worker; past it new ones wait in the backlog
                       [default: the open-file limit, less a reserve, shared by the workers]
  --header-timeout S   seconds from a request's first byte to the end of its head (else 408)
                       [default: 10]
  --body-timeout S     seconds from the end of the head to the end of the body (else 408)
                       [default: 30]
  --idle-timeout S     seconds a keep-alive connection may wait for its next request [default: 60]
  --write-timeout S    seconds a client may take none of its answers before it is cut off
                       [default: 30]
  --shutdown-timeout S seconds to finish open requests on SIGINT/SIGTERM, after the grace
                       [default: 10]
  --drain-grace S      after SIGINT/SIGTERM, seconds during which /health says 503 and
                       everything else is served as usual, so a load balancer moves away
                       [default: 0]
  (seconds may have a fraction: 0.5)
  --data-dir DIR       where the journal lives (created if missing) [default: ./usaged-data]
  --in-memory          keep no journal: usages are lost on exit (for benchmarks)
  --sync MODE          always: fdatasync before each turn's 201s; interval: at most a second of
                       usages lost on power failure; never: left to the kernel [default: interval]
  --segment-size BYTES journal segments roll over past this size [default: 67108864]
  --stats S            print a status line to stderr every S seconds (requests/s, p50/p99,
                       connections, errors, usages stored) [default: off]
  --access-log PATH    one JSON line per request (time, client, method, path, status, bytes,
                       microseconds, id if created) to PATH, or - for stdout; written in
                       batches by a helper thread, lines dropped (and counted) if it falls behind
                       [default: off]
  --repair             start even if a journal record in the middle is bad: keep what comes
                       before it, move the rest aside
  export               print every stored usage in id order to stdout, as ndjson (default)
                       or csv, reading the journal in --data-dir without a server;
                       exits 1 if it skipped corrupt records
  -h, --help           print this help
";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub bind: IpAddr,
    pub port: u16,
    /// `None`: one per CPU the process may run on.
    pub threads: Option<usize>,
    pub pin: bool,
    pub max_body: usize,
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
    pub data_dir: PathBuf,
    pub in_memory: bool,
    pub sync: SyncMode,
    pub repair: bool,
    /// Seconds between status lines on stderr (`None`: none).
    pub stats: Option<Duration>,
    /// `--access-log PATH` (`-`: stdout).
    pub access_log: Option<PathBuf>,
}
impl Default for Config {
    fn default() -> Self {
        Config {
            bind: IpAddr::from([0, 0, 0, 0]),
            port: 3000,
            threads: None,
            pin: true,
            max_body: 64 * 1024,
            max_header: 8 * 1024,
            max_conns: None,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(10),
            drain_grace: Duration::ZERO,
            segment_bytes: crate::store::journal::SEGMENT_BYTES,
            data_dir: PathBuf::from("usaged-data"),
            in_memory: false,
            sync: SyncMode::Interval,
            repair: false,
            stats: None,
            access_log: None,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Serve(Box<Config>),
    Export {
        data_dir: PathBuf,
        format: ExportFormat,
    },
    Help,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Ndjson,
    Csv,
}
/// Parse `args` (without the program name); `env_port` is `$PORT`.
pub fn parse(
    args: impl IntoIterator<Item = String>,
    env_port: Option<&str>,
) -> Result<Command, String> {
    let mut c = Config::default();
    if let Some(p) = env_port {
        c.port = p
            .parse()
            .map_err(|_| format!("invalid PORT environment variable: {p:?}"))?;
    }
    let mut args = args.into_iter().peekable();
    if args.peek().is_some_and(|a| a == "export") {
        args.next();
        return parse_export(args);
    }
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |what: &str| -> Result<String, String> {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value ({what})"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--no-pin" => c.pin = false,
            "--bind" => {
                let v = value("an IP address")?;
                c.bind = v
                    .parse()
                    .map_err(|_| format!("invalid --bind {v:?}: not an IP address"))?;
            }
            "--port" => c.port = number(&flag, &value("a port")?, 0, 65535)? as u16,
            "--threads" => c.threads = Some(number(&flag, &value("a count")?, 1, 1024)? as usize),
            "--max-body" => c.max_body = number(&flag, &value("bytes")?, 0, 1 << 30)? as usize,
            "--max-header" => {
                c.max_header = number(&flag, &value("bytes")?, 256, 1 << 20)? as usize
            }
            "--max-conns" => {
                c.max_conns = Some(number(&flag, &value("a count")?, 1, 10_000_000)? as usize)
            }
            "--header-timeout" => c.header_timeout = seconds(&flag, &value("seconds")?)?,
            "--body-timeout" => c.body_timeout = seconds(&flag, &value("seconds")?)?,
            "--idle-timeout" => c.idle_timeout = seconds(&flag, &value("seconds")?)?,
            "--write-timeout" => c.write_timeout = seconds(&flag, &value("seconds")?)?,
            "--shutdown-timeout" => c.shutdown_timeout = seconds(&flag, &value("seconds")?)?,
            "--drain-grace" => c.drain_grace = seconds(&flag, &value("seconds")?)?,
            "--segment-size" => c.segment_bytes = number(&flag, &value("bytes")?, 4096, 1 << 40)?,
            "--data-dir" => c.data_dir = PathBuf::from(value("a directory")?),
            "--in-memory" => c.in_memory = true,
            "--repair" => c.repair = true,
            "--stats" => c.stats = Some(seconds(&flag, &value("seconds")?)?),
            "--access-log" => c.access_log = Some(PathBuf::from(value("a file, or - for stdout")?)),
            "--sync" => {
                c.sync = match value("always, interval or never")?.as_str() {
                    "always" => SyncMode::Always,
                    "interval" => SyncMode::Interval,
                    "never" => SyncMode::Never,
                    v => {
                        return Err(format!(
                            "invalid --sync {v:?}: expected always, interval or never"
                        ));
                    }
                }
            }
            _ => return Err(format!("unknown flag {arg:?} (see --help)")),
        }
    }
    Ok(Command::Serve(Box::new(c)))
}

fn parse_export(args: impl Iterator<Item = String>) -> Result<Command, String> {
    let (mut data_dir, mut format) = (PathBuf::from("usaged-data"), ExportFormat::Ndjson);
    let mut args = args;
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--data-dir" => data_dir = PathBuf::from(value()?),
            "--format" => {
                format = match value()?.as_str() {
                    "ndjson" => ExportFormat::Ndjson,
                    "csv" => ExportFormat::Csv,
                    v => return Err(format!("invalid --format {v:?}: expected ndjson or csv")),
                }
            }
            _ => return Err(format!("unknown export flag {arg:?} (see --help)")),
        }
    }
    Ok(Command::Export { data_dir, format })
}

/// A duration in seconds, fractions allowed, from 0.1 s to one day.
fn seconds(flag: &str, v: &str) -> Result<Duration, String> {
    match v.parse::<f64>() {
        Ok(s) if (0.1..=86_400.0).contains(&s) => Ok(Duration::from_secs_f64(s)),
        _ => Err(format!(
            "invalid {flag} {v:?}: expected seconds from 0.1 to 86400"
        )),
    }
}

fn number(flag: &str, v: &str, min: u64, max: u64) -> Result<u64, String> {
    match v.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "invalid {flag} {v:?}: expected an integer from {min} to {max}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn defaults_env_and_flags() {
        assert_eq!(parse(args(""), None), Ok(Command::Serve(Box::default())));
        let Ok(Command::Serve(c)) = parse(args(""), Some("8080")) else {
            panic!()
        };
        assert_eq!(c.port, 8080);
        let Ok(Command::Serve(c)) = parse(
            args("--port 0 --threads 4 --no-pin --bind 127.0.0.1 --max-body=10 --max-header 1024"),
            Some("8080"),
        ) else {
            panic!()
        };
        assert_eq!(
            (c.port, c.threads, c.pin, c.max_body, c.max_header),
            (0, Some(4), false, 10, 1024)
        );
        assert_eq!(c.bind, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(parse(args("--help"), None), Ok(Command::Help));
        let Ok(Command::Serve(c)) = parse(
            args("--header-timeout 0.5 --max-conns 7 --shutdown-timeout=2"),
            None,
        ) else {
            panic!()
        };
        assert_eq!(
            (c.header_timeout, c.max_conns, c.shutdown_timeout),
            (Duration::from_millis(500), Some(7), Duration::from_secs(2))
        );
    }

    #[test]
    fn errors_name_the_flag() {
        for (input, needle) in [
            ("--port 70000", "--port"),
            ("--port", "--port"),
            ("--threads 0", "--threads"),
            ("--bind nowhere", "--bind"),
            ("--max-body -1", "--max-body"),
            ("--frobnicate", "--frobnicate"),
            ("--header-timeout 0", "--header-timeout"),
            ("--idle-timeout soon", "--idle-timeout"),
            ("--max-conns 0", "--max-conns"),
        ] {
            let e = parse(args(input), None).unwrap_err();
            assert!(e.contains(needle), "{input}: {e}");
        }
        assert!(parse(args(""), Some("http")).unwrap_err().contains("PORT"));
    }
}
