//! A fixed-rate load generator that corrects for coordinated omission: requests are scheduled
//! at `start + k / rate`, whatever the server does, and each latency is measured from its
//! scheduled time (a request that had to wait for a free connection waited on the server's
//! account). One request in flight per connection; one thread; spins when the next send is
//! under a millisecond away, so send times are exact.
//!
//! usage: loadgen --port N --rate R [--conns C] [--duration SECS] [--get PATH]
//! prints:  rate=… requests=… errors=… p50_us=… p99_us=… p999_us=… max_us=…

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
    unsent: usize,
    rbuf: Vec<u8>,
}

struct Args {
    port: u16,
    rate: f64,
    conns: usize,
    duration: f64,
    get: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        port: 0,
        rate: 0.0,
        conns: 64,
        duration: 10.0,
        get: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_else(|| usage(&flag));
        match flag.as_str() {
            "--port" => a.port = v.parse().unwrap_or_else(|_| usage(&flag)),
            "--rate" => a.rate = v.parse().unwrap_or_else(|_| usage(&flag)),
            "--conns" => a.conns = v.parse().unwrap_or_else(|_| usage(&flag)),
            "--duration" => a.duration = v.parse().unwrap_or_else(|_| usage(&flag)),
            "--get" => a.get = Some(v),
            _ => usage(&flag),
        }
    }
    if a.port == 0 || a.rate <= 0.0 || a.conns == 0 {
        usage("--port and --rate");
    }
    a
}

fn usage(flag: &str) -> ! {
    eprintln!(
        "loadgen: bad or missing {flag}\nusage: loadgen --port N --rate R [--conns C] [--duration SECS] [--get PATH]"
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
    let request = match &a.get {
        Some(path) => format!("GET {path} HTTP/1.1\r\nHost: load\r\n\r\n"),
        None => format!(
            "POST /api/usages HTTP/1.1\r\nHost: load\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{BODY}",
            BODY.len()
        ),
    }
    .into_bytes();
    let addr: SocketAddr = ([127, 0, 0, 1], a.port).into();
    let mut poll = Poll::new()?;
    let mut conns = Vec::with_capacity(a.conns);
    for i in 0..a.conns {
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

    let interval = Duration::from_secs_f64(1.0 / a.rate);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(a.duration);
    let total = (a.rate * a.duration) as u64;
    let mut scheduled = 0u64;
    let mut queue: VecDeque<Instant> = VecDeque::new();
    let mut idle: Vec<usize> = (0..a.conns).collect();
    let mut latencies: Vec<u32> = Vec::with_capacity(total as usize);
    let (mut errors, mut done) = (0u64, 0u64);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let now = Instant::now();
        while scheduled < total && start + interval * scheduled as u32 <= now {
            queue.push_back(start + interval * scheduled as u32);
            scheduled += 1;
        }
        while let (Some(_), Some(&i)) = (queue.front(), idle.last()) {
            let c = &mut conns[i];
            let at = queue.pop_front().expect("checked");
            idle.pop();
            c.in_flight = Some(at);
            c.unsent = request.len();
            send(c, &request, &mut errors);
        }
        if done + errors >= total || (now > end + Duration::from_secs(5)) {
            break;
        }
        let next = start + interval * scheduled.min(total.saturating_sub(1)) as u32;
        let timeout = next.saturating_duration_since(Instant::now());
        let timeout = if timeout < Duration::from_millis(1) && scheduled < total {
            Duration::ZERO
        } else {
            timeout.min(Duration::from_millis(100))
        };
        poll.poll(&mut events, Some(timeout))?;
        for ev in events.iter() {
            let i = ev.token().0;
            let c = &mut conns[i];
            if ev.is_writable() && c.unsent > 0 {
                send(c, &request, &mut errors);
            }
            if !(ev.is_readable() || ev.is_read_closed()) {
                continue;
            }
            loop {
                match c.stream.read(&mut buf) {
                    Ok(0) => {
                        eprintln!("loadgen: server closed a connection");
                        errors += 1;
                        c.in_flight = None;
                        break;
                    }
                    Ok(n) => c.rbuf.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
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
        errors + total.saturating_sub(done + errors),
        pct(0.50),
        pct(0.99),
        pct(0.999),
        latencies.last().copied().unwrap_or(0)
    );
    Ok(())
}

fn send(c: &mut Conn, request: &[u8], errors: &mut u64) {
    while c.unsent > 0 {
        match c.stream.write(&request[request.len() - c.unsent..]) {
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
