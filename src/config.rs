//! Flags and environment into a [`Config`]. A bad flag or value is an error naming it.

use std::net::IpAddr;
use std::time::Duration;

pub const USAGE: &str = "\
usage: usaged [--bind ADDR] [--port N] [--threads N] [--no-pin] [--max-body BYTES] [--max-header BYTES]

  --bind ADDR          address to listen on                      [default: 0.0.0.0]
  --port N             TCP port, 0 picks a free one              [default: $PORT, else 3000]
  --threads N          worker threads, one event loop each       [default: CPUs in the affinity mask]
  --no-pin             do not pin worker i to the i-th allowed CPU
  --max-body BYTES     largest request body accepted (else 413)  [default: 65536]
  --max-header BYTES   largest request line + headers (else 431) [default: 8192]
  --shutdown-timeout S seconds to finish open requests on SIGINT/SIGTERM [default: 10]
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
    pub shutdown_timeout: Duration,
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
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Serve(Config),
    Help,
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
    let mut args = args.into_iter();
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
            "--shutdown-timeout" => {
                c.shutdown_timeout =
                    Duration::from_secs(number(&flag, &value("seconds")?, 0, 3600)?);
            }
            _ => return Err(format!("unknown flag {arg:?} (see --help)")),
        }
    }
    Ok(Command::Serve(c))
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
        assert_eq!(parse(args(""), None), Ok(Command::Serve(Config::default())));
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
        ] {
            let e = parse(args(input), None).unwrap_err();
            assert!(e.contains(needle), "{input}: {e}");
        }
        assert!(parse(args(""), Some("http")).unwrap_err().contains("PORT"));
    }
}
