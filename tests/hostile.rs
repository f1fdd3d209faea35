//! Hostile and careless clients: slowloris, idle floods, descriptor exhaustion, clients that
//! never read, clients that vanish, and a drain under load. Each test is bounded in time and
//! count and runs alone (they share two CPUs and the open-file limit).

mod util;

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use util::{README_BODY, Server, get, post};

/// One hostile test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn raw(s: &Server) -> TcpStream {
    let c = TcpStream::connect(("127.0.0.1", s.port)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.set_nodelay(true).unwrap();
    c
}

/// Everything the server sends until it closes (EOF or reset).
fn read_until_closed(c: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return got,
            Err(e) => panic!(
                "reading until close: {e} after {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
}

/// Close with a reset (SO_LINGER 0) instead of a FIN.
fn reset(c: TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the option value points at a live `linger` and the length says exactly that;
    // the fd is open (owned by `c`).
    let rc = unsafe {
        libc::setsockopt(
            c.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const l).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    drop(c);
}

/// `scripts/stress.sh` runs these tests larger: `USAGED_STRESS_SCALE` multiplies the counts.
fn scale() -> usize {
    std::env::var("USAGED_STRESS_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// A line `scripts/stress.sh` collects into its table.
fn report(test: &str, tried: &str, held: &str) {
    println!("STRESS|{test}|{tried}|{held}");
}

/// How many connections the test process may open (1000 descriptors of headroom are left for
/// everything else).
fn fd_budget() -> usize {
    let (soft, _) = usaged::server::rlimit::open_files().unwrap();
    soft as usize - 1000
}

fn raise_nofile() {
    usaged::server::rlimit::raise_open_files().expect("raise the open-file limit");
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() * 99).div_ceil(100) - 1]
}

#[test]
fn slowloris_does_not_slow_others_and_is_cut_off_at_the_head_timeout() {
    let _g = serial();
    raise_nofile();
    let slow_n = (2000 * scale()).min(fd_budget() / 2);
    let s = Server::start(&["--header-timeout", "2"]);
    let mut slow: Vec<TcpStream> = (0..slow_n).map(|_| raw(&s)).collect();
    let started = Instant::now();
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        // One header byte per connection per second.
        let trickle = scope.spawn(|| {
            let head = b"POST /api/usages HTTP/1.1\r\nHost: t\r\n";
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) && i < head.len() {
                for c in slow.iter_mut() {
                    let _ = c.write(&head[i..i + 1]);
                }
                i += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        let mut c = s.connect();
        let mut lat = Vec::with_capacity(5000);
        for _ in 0..5000 {
            let t = Instant::now();
            let r = c.request(post(README_BODY));
            lat.push(t.elapsed());
            assert_eq!(r.status, 201);
        }
        let p99 = p99(lat);
        println!("normal client beside {slow_n} slowloris connections: p99 {p99:?}");
        report(
            "slowloris",
            &format!("{slow_n} conns, 1 header byte/s; 5000 normal requests"),
            &format!("normal p99 {p99:?} (limit 50 ms)"),
        );
        assert!(p99 <= Duration::from_millis(50), "p99 {p99:?}");
        stop.store(true, Ordering::Relaxed);
        trickle.join().unwrap();
    });
    // Every slow connection gets a 408 and is closed, about when its head timeout ran out.
    for c in slow.iter_mut() {
        let got = read_until_closed(c);
        assert!(
            got.starts_with(b"HTTP/1.1 408 "),
            "{:?}",
            String::from_utf8_lossy(&got)
        );
    }
    let took = started.elapsed();
    println!("{slow_n} slowloris connections closed after {took:?}");
    report(
        "slowloris cut-off",
        &format!("{slow_n} conns, --header-timeout 2"),
        &format!("all got 408 and were closed after {took:?}"),
    );
    assert!(took < Duration::from_secs(8), "closed only after {took:?}");
}

#[test]
fn idle_flood_of_ten_thousand_connections() {
    let _g = serial();
    raise_nofile();
    let idle_n = (10_000 * scale()).min(50_000).min(fd_budget());
    let s = Server::start(&[]);
    let base = s.rss_kib();
    let mut idle = Vec::with_capacity(idle_n);
    let mut normal = s.connect();
    for i in 0..idle_n {
        let mut c = raw(&s);
        c.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        idle.push(c);
        if i % 1000 == 0 {
            assert_eq!(
                normal.request(post(README_BODY)).status,
                201,
                "normal traffic during the flood"
            );
        }
    }
    for c in idle.iter_mut() {
        let mut buf = [0; 512];
        let n = c.read(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200 "));
    }
    for _ in 0..1000 {
        assert_eq!(normal.request(post(README_BODY)).status, 201);
    }
    let per_conn = (s.rss_kib() - base) * 1024 / idle_n as u64;
    report(
        "idle flood",
        &format!("{idle_n} idle keep-alive conns + normal traffic"),
        &format!("no errors; {per_conn} B RSS per idle conn (goal 16384)"),
    );
    println!("RSS per idle keep-alive connection: {per_conn} bytes (goal: at most 16384)");
    assert!(
        per_conn <= 16 * 1024,
        "{per_conn} bytes per idle connection"
    );
}

#[test]
fn descriptor_exhaustion_waits_without_spinning_then_serves() {
    let _g = serial();
    // --max-conns above what 256 descriptors allow, so accept really fails with EMFILE.
    let s = Server::start_limited(Some(256), &["--threads", "1", "--max-conns", "1000"]);
    let n = 400 * scale();
    let mut clients: Vec<TcpStream> = (0..n).map(|_| raw(&s)).collect();
    for c in clients.iter_mut() {
        c.write_all(get_health()).unwrap();
    }
    // Some are served; the rest wait in the backlog. The worker must not spin meanwhile.
    let cpu0 = s.cpu_time();
    std::thread::sleep(Duration::from_secs(2));
    let spent = s.cpu_time() - cpu0;
    println!("server CPU while out of descriptors: {spent:?} in 2 s");
    assert!(
        spent < Duration::from_millis(500),
        "spinning: {spent:?} of CPU in 2 s"
    );
    let mut served = 0;
    for c in clients.iter_mut() {
        c.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut buf = [0; 256];
        if matches!(c.read(&mut buf), Ok(n) if n > 0) {
            served += 1;
        }
    }
    assert!(
        served > 0 && served < n,
        "served {served} of {n} with 256 descriptors"
    );
    drop(clients);
    // Once they go, new clients are served.
    let mut c = s.connect();
    assert_eq!(c.request(post(README_BODY)).status, 201);
    report(
        "fd exhaustion",
        &format!("{n} clients, ulimit -n 256"),
        &format!("{served} served at once, CPU {spent:?} in 2 s, new clients served after"),
    );
}

#[test]
fn past_max_conns_clients_wait_in_the_backlog() {
    let _g = serial();
    let s = Server::start(&["--threads", "1", "--max-conns", "50"]);
    let mut clients: Vec<TcpStream> = (0..80).map(|_| raw(&s)).collect();
    for c in clients.iter_mut() {
        c.write_all(get_health()).unwrap();
    }
    // The first 50 are answered; closing them lets the rest in, and every one is answered.
    let mut answered = 0;
    for (i, mut c) in clients.drain(..).enumerate() {
        let mut buf = [0; 256];
        let n = c
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("client {i}: {e}"));
        assert!(buf[..n].starts_with(b"HTTP/1.1 200 "), "client {i}");
        answered += 1;
    }
    assert_eq!(answered, 80);
}

fn get_health() -> &'static [u8] {
    b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n"
}

#[test]
fn a_client_that_never_reads_is_bounded_and_cut_off() {
    let _g = serial();
    let s = Server::start(&["--write-timeout", "1"]);
    let base = s.rss_kib();
    let mut hog = raw(&s);
    hog.set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // 10,000 requests and their answers fit in loopback socket buffers here (the kernel grows
    // them to megabytes), so the client would not even look slow: send ten times as many (times
    // the stress scale).
    let batch = post(README_BODY).repeat(100_000 * scale());
    let started = Instant::now();
    std::thread::scope(|scope| {
        let writer = scope.spawn(move || {
            // Blocks once both socket buffers are full; fails once the server cuts it off.
            let r = hog.write_all(batch.as_bytes());
            (r.map_err(|e| e.kind()), started.elapsed())
        });
        // Others are unaffected meanwhile.
        let mut c = s.connect();
        for _ in 0..2000 {
            assert_eq!(c.request(post(README_BODY)).status, 201);
        }
        let grown = s.rss_kib().saturating_sub(base);
        println!("RSS growth with a non-reading client: {grown} KiB");
        assert!(grown < 16 * 1024, "unbounded output: grew {grown} KiB");
        let (result, after) = writer.join().unwrap();
        println!("non-reading client: write ended with {result:?} after {after:?}");
        assert!(
            result.is_err(),
            "the server took {} requests from a client that reads nothing",
            100_000 * scale()
        );
        assert!(
            after < Duration::from_secs(8),
            "cut off only after {after:?}"
        );
        report(
            "non-reading client",
            &format!("{} pipelined requests, never read", 100_000 * scale()),
            &format!("RSS +{grown} KiB, cut off after {after:?}, others served"),
        );
    });
}

#[test]
fn abrupt_clients_leak_nothing() {
    let _g = serial();
    let s = Server::start(&[]);
    let mut probe = s.connect();
    assert_eq!(
        probe
            .request("GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            .status,
        200
    );
    let baseline = s.fds();
    let rounds = 50 * scale();
    for round in 0..rounds {
        // Half-close after sending: the answer still comes, then the close.
        let mut c = raw(&s);
        c.write_all(post(README_BODY).as_bytes()).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let got = read_until_closed(&mut c);
        assert!(
            got.starts_with(b"HTTP/1.1 201 "),
            "round {round}: {:?}",
            String::from_utf8_lossy(&got)
        );
        // Reset in the middle of a body.
        let mut c = raw(&s);
        let req = post(README_BODY);
        c.write_all(&req.as_bytes()[..req.len() - 20]).unwrap();
        reset(c);
        // Reset in the middle of a large pipelined answer.
        let mut c = raw(&s);
        c.write_all(get(1).repeat(2000).as_bytes()).unwrap();
        let mut buf = [0; 1000];
        let _ = c.read(&mut buf);
        reset(c);
        // Reset right after connecting.
        reset(raw(&s));
    }
    assert_eq!(
        probe.request(post(README_BODY)).status,
        201,
        "still serving"
    );
    s.wait_until(
        Duration::from_secs(10),
        "descriptors return to the baseline",
        |s| s.fds() <= baseline,
    );
    report(
        "abrupt clients",
        &format!("{rounds} rounds of half-close, RST mid-body, RST mid-answer, RST at once"),
        "no panic; descriptors back to baseline",
    );
}

#[test]
fn a_stalled_body_gets_408() {
    let _g = serial();
    let s = Server::start(&["--body-timeout", "1", "--idle-timeout", "1"]);
    let mut c = raw(&s);
    let req = post(README_BODY);
    c.write_all(&req.as_bytes()[..req.len() - 10]).unwrap();
    let t = Instant::now();
    let got = read_until_closed(&mut c);
    assert!(
        got.starts_with(b"HTTP/1.1 408 "),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(t.elapsed() < Duration::from_secs(4));
    // An idle keep-alive connection is closed quietly after the idle timeout.
    let mut idle = raw(&s);
    idle.write_all(get_health()).unwrap();
    let got = read_until_closed(&mut idle);
    assert_eq!(
        got.windows(4).filter(|w| w == b"HTTP").count(),
        1,
        "only its one answer"
    );
}

#[test]
fn sigterm_under_load_answers_what_arrived_and_exits_zero() {
    let _g = serial();
    let mut s = Server::start(&["--shutdown-timeout", "5"]);
    let port = s.port;
    let stop = AtomicBool::new(false);
    let results = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..64 * scale())
            .map(|_| {
                let stop = &stop;
                scope.spawn(move || {
                    let mut ids = Vec::new();
                    let (mut unavailable, mut other) = (0, 0);
                    let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) else {
                        return (ids, unavailable, other);
                    };
                    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let mut reader = std::io::BufReader::new(c.try_clone().unwrap());
                    while !stop.load(Ordering::Relaxed) {
                        if c.write_all(post(README_BODY).as_bytes()).is_err() {
                            break;
                        }
                        match util::read_response(&mut reader) {
                            Some(r) if r.status == 201 => {
                                ids.push(r.json()["id"].as_u64().unwrap())
                            }
                            Some(r) if r.status == 503 => {
                                assert_eq!(r.header("connection"), Some("close"));
                                unavailable += 1;
                                break;
                            }
                            Some(_) => other += 1,
                            None => break,
                        }
                    }
                    (ids, unavailable, other)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        let t = Instant::now();
        let status = s.stop();
        let took = t.elapsed();
        stop.store(true, Ordering::Relaxed);
        assert!(status.success(), "{status:?}");
        assert!(took < Duration::from_secs(6), "exit took {took:?}");
        workers
            .into_iter()
            .map(|w| w.join().unwrap())
            .collect::<Vec<_>>()
    });
    let ids: Vec<u64> = results.iter().flat_map(|r| r.0.iter().copied()).collect();
    let distinct: HashSet<u64> = ids.iter().copied().collect();
    let other: usize = results.iter().map(|r| r.2).sum();
    println!(
        "drain: {} usages acknowledged, {} clients told 503",
        ids.len(),
        results.iter().map(|r| r.1).sum::<usize>()
    );
    assert!(!ids.is_empty());
    assert_eq!(distinct.len(), ids.len(), "ids stay unique");
    assert_eq!(other, 0, "only 201 and 503 answers");
    report(
        "drain under load",
        &format!("SIGTERM during {} keep-alive posting conns", 64 * scale()),
        &format!(
            "exit 0; {} ids acknowledged, all distinct; only 201/503",
            ids.len()
        ),
    );
}
