//! A fixed-rate load generator that corrects for coordinated omission: requests are scheduled
//! at `start + k / rate`, whatever the server does, and each latency is measured from its
//! scheduled time (a request that had to wait for a free connection waited on the server's
//! account). One request in flight per connection; one thread; spins when the next send is
//! under a millisecond away, so send times are exact.
//!
//! `--get-random LO..HI` sends `GET /api/usages/{id}` with each id drawn uniformly from the
//! inclusive range (a fresh draw per request). `--count N` sets how many requests are sent
//! (default: rate × duration); with `--count` and no `--rate` the run is a closed loop: each
//! connection sends its next request as soon as the answer to the last one is in, and latency is
//! measured from that send. Either way the run ends once every request is answered, or 5 s after
//! `--duration` (requests still unanswered then count as errors).
//!
//! usage: loadgen --port N (--rate R | --count N) [--conns C] [--duration SECS]
//!                [--get PATH | --get-random LO..HI]
//! prints:  rate=… requests=… errors=… p50_us=… p99_us=… p999_us=… max_us=…
//! (errors: answers outside 2xx, and requests that failed or went unanswered)

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

const BODY: &str = r#"{"patientId":"100","timestamp":"Tue Nov 01 2016 09:11:51 GMT-0500 (CDT)","medication":"Albuterol"}"#;

struct Conn {
    stream: TcpStream,
    connected: bool,
    /// Scheduled time of the request in flight.
    in_flight: Option<Instant>,
    /// The request in flight, and how much of its end is not yet written.
    req: Vec<u8>,
    unsent: usize,
    rbuf: Vec<u8>,
}

struct Args {
    port: u16,
    /// Requests per second; 0: closed loop (with `count`).
    rate: f64,
    conns: usize,
    duration: f64,
    count: Option<u64>,
    get: Option<String>,
    get_random: Option<(u64, u64)>,
}

fn args() -> Args {
    let mut a = Args {
        port: 0,
        rate: 0.0,
        conns: 64,
        duration: 10.0,
        count: None,
        get: None,
        get_random: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_else(|| usage(&flag));
        match flag.as_str() {
            "--port" => a.port = v.parse().unwrap_or_else(|_| usage(&flag)),
            "--rate" => a.rate = v.parse().unwrap_or_else(|_| usage(&flag)),
            "--conns" => a.conns = v.parse().unwrap_or_else(|_| usage(&flag)),
            "--duration" => a.duration = v.parse().unwrap_or_else(|_| usage(&flag)),
            "--count" => a.count = Some(v.parse().unwrap_or_else(|_| usage(&flag))),
            "--get" => a.get = Some(v),
            "--get-random" => a.get_random = Some(id_range(&v).unwrap_or_else(|| usage(&flag))),
            _ => usage(&flag),
        }
    }
    let paced = a.rate > 0.0 && a.rate.is_finite();
    if a.port == 0 || a.conns == 0 || !(paced || a.count.is_some_and(|n| n > 0)) {
        usage("--port, and --rate or --count");
    }
    if a.get.is_some() && a.get_random.is_some() {
        usage("--get with --get-random");
    }
    a
}

/// `LO..HI` with `1 <= LO <= HI`.
fn id_range(v: &str) -> Option<(u64, u64)> {
    let (lo, hi) = v.split_once("..")?;
    let (lo, hi): (u64, u64) = (lo.parse().ok()?, hi.parse().ok()?);
    (1 <= lo && lo <= hi).then_some((lo, hi))
}

/// splitmix64: a small, fast generator; good enough to spread ids uniformly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi` (multiply-shift; the bias is below 2^-40 for any id range).
    fn in_range(&mut self, (lo, hi): (u64, u64)) -> u64 {
        let span = u128::from(hi - lo) + 1;
        lo + ((u128::from(self.next()) * span) >> 64) as u64
    }
}

/// What each request is: one fixed request, or a GET of a random id.
enum Requests {
    Fixed(Vec<u8>),
    Random { ids: (u64, u64), rng: Rng },
}

impl Requests {
    fn new(a: &Args) -> Requests {
        if let Some(ids) = a.get_random {
            let seed = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64);
            return Requests::Random {
                ids,
                rng: Rng(seed),
            };
        }
        let fixed = match &a.get {
            Some(path) => format!("GET {path} HTTP/1.1\r\nHost: load\r\n\r\n"),
            None => format!(
                "POST /api/usages HTTP/1.1\r\nHost: load\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{BODY}",
                BODY.len()
            ),
        };
        Requests::Fixed(fixed.into_bytes())
    }

    /// The next request, into `out` (cleared first).
    fn fill(&mut self, out: &mut Vec<u8>) {
        out.clear();
        match self {
            Requests::Fixed(r) => out.extend_from_slice(r),
            Requests::Random { ids, rng } => {
                let id = rng.in_range(*ids);
                let _ = write!(out, "GET /api/usages/{id} HTTP/1.1\r\nHost: load\r\n\r\n");
            }
        }
    }
}

fn usage(flag: &str) -> ! {
    eprintln!(
        "loadgen: bad or missing {flag}\nusage: loadgen --port N (--rate R | --count N) [--conns C] \
         [--duration SECS] [--get PATH | --get-random LO..HI]"
    );
    std::process::exit(2);
}

/// One complete response at the start of `buf`: `(status, length)`.
fn parse_response(buf: &[u8]) -> Option<(u16, usize)> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let status = head.get(9..12)?.parse().ok()?;
    let len = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    (buf.len() >= head_end + len).then_some((status, head_end + len))
}

fn main() -> io::Result<()> {
    let a = args();
    let mut requests = Requests::new(&a);
    let mut poll = Poll::new()?;
    let mut conns = connect_all(&mut poll, a.port, a.conns)?;
    let mut events = Events::with_capacity(1024);

    // Closed loop (no rate): every request is due at once, sent when a connection is free.
    let paced = a.rate > 0.0;
    let interval = Duration::from_secs_f64(if paced { 1.0 / a.rate } else { 0.0 });
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(a.duration);
    let total = a.count.unwrap_or((a.rate * a.duration) as u64);
    let mut scheduled = 0u64;
    let mut queue: VecDeque<Instant> = VecDeque::new();
    let mut idle: Vec<usize> = (0..a.conns).collect();
    let mut latencies: Vec<u32> = Vec::with_capacity(total.min(1 << 24) as usize);
    let (mut errors, mut done) = (0u64, 0u64);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let now = Instant::now();
        while scheduled < total && (!paced || start + interval * scheduled as u32 <= now) {
            if !paced && queue.len() >= idle.len() {
                break;
            }
            queue.push_back(if paced {
                start + interval * scheduled as u32
            } else {
                now
            });
            scheduled += 1;
        }
        while let (Some(_), Some(&i)) = (queue.front(), idle.last()) {
            let c = &mut conns[i];
            let at = queue.pop_front().expect("checked");
            idle.pop();
            c.in_flight = Some(at);
            requests.fill(&mut c.req);
            c.unsent = c.req.len();
            send(c, &mut errors);
        }
        if done + errors >= total || (now > end + Duration::from_secs(5)) {
            break;
        }
        let timeout = if paced && scheduled < total {
            until_next(start + interval * scheduled as u32)
        } else {
            Duration::from_millis(100)
        };
        poll.poll(&mut events, Some(timeout))?;
        for ev in events.iter() {
            let i = ev.token().0;
            let c = &mut conns[i];
            if ev.is_writable() && c.unsent > 0 {
                send(c, &mut errors);
            }
            if !(ev.is_readable() || ev.is_read_closed()) {
                continue;
            }
            receive(c, &mut buf, &mut errors)?;
            while let Some((status, len)) = parse_response(&c.rbuf) {
                c.rbuf.drain(..len);
                if let Some(at) = c.in_flight.take() {
                    let us = at.elapsed().as_micros().min(u32::MAX as u128) as u32;
                    latencies.push(us);
                    if (200..300).contains(&status) {
                        done += 1;
                    } else {
                        errors += 1;
                    }
                    idle.push(i);
                }
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    report(
        &mut latencies,
        done,
        errors + total.saturating_sub(done + errors),
        secs,
    );
    Ok(())
}

/// How long to wait for events before the request scheduled at `next`: none when that is
/// under a millisecond away (spin, so it goes out on time), 100 ms at most.
fn until_next(next: Instant) -> Duration {
    let timeout = next.saturating_duration_since(Instant::now());
    if timeout < Duration::from_millis(1) {
        Duration::ZERO
    } else {
        timeout.min(Duration::from_millis(100))
    }
}

/// `n` connections to 127.0.0.1:`port`, registered with `poll` (token = index), all connected
/// (10 s at most).
fn connect_all(poll: &mut Poll, port: u16, n: usize) -> io::Result<Vec<Conn>> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let mut stream = TcpStream::connect(addr)?;
        poll.registry().register(
            &mut stream,
            Token(i),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        conns.push(Conn {
            stream,
            connected: false,
            in_flight: None,
            req: Vec::with_capacity(256),
            unsent: 0,
            rbuf: Vec::with_capacity(4096),
        });
    }
    let mut events = Events::with_capacity(1024);
    let connect_deadline = Instant::now() + Duration::from_secs(10);
    while conns.iter().any(|c| !c.connected) {
        if Instant::now() > connect_deadline {
            return Err(io::Error::other(
                "could not connect every connection within 10 s",
            ));
        }
        poll.poll(&mut events, Some(Duration::from_millis(100)))?;
        for ev in events.iter() {
            let c = &mut conns[ev.token().0];
            if ev.is_writable() && c.stream.peer_addr().is_ok() {
                c.connected = true;
                let _ = c.stream.set_nodelay(true);
            }
        }
    }
    Ok(conns)
}

/// Everything readable on `c` into its `rbuf`; a closed connection is an error for the request
/// in flight.
fn receive(c: &mut Conn, buf: &mut [u8], errors: &mut u64) -> io::Result<()> {
    loop {
        match c.stream.read(buf) {
            Ok(0) => {
                eprintln!("loadgen: server closed a connection");
                *errors += 1;
                c.in_flight = None;
                return Ok(());
            }
            Ok(n) => c.rbuf.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The result line.
fn report(latencies: &mut [u32], done: u64, errors: u64, secs: f64) {
    latencies.sort_unstable();
    let pct = |p: f64| -> u32 {
        if latencies.is_empty() {
            return 0;
        }
        latencies[((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1]
    };
    println!(
        "rate={:.0} requests={} errors={} p50_us={} p99_us={} p999_us={} max_us={}",
        done as f64 / secs,
        done,
        errors,
        pct(0.50),
        pct(0.99),
        pct(0.999),
        latencies.last().copied().unwrap_or(0)
    );
}

fn send(c: &mut Conn, errors: &mut u64) {
    while c.unsent > 0 {
        match c.stream.write(&c.req[c.req.len() - c.unsent..]) {
            Ok(n) => c.unsent -= n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                *errors += 1;
                c.unsent = 0;
                c.in_flight = None;
                return;
            }
        }
    }
}
