//! SIGTERM under load loses nothing: directly, and through real proxies (HAProxy, nginx).
//!
//! Every request that reached the server gets a whole answer (its `201`, or `503` with
//! `Connection: close` once the drain began); a connection the server ends is ended with a FIN,
//! never a reset while a request is unread; a proxy in front answers no `502`/`504` and its
//! clients see no error; every `201` reads back after a restart and `usaged export` lists
//! exactly the acknowledged set.
//!
//! HAProxy and nginx come from `.ci/run` (apt-get). A missing one fails its test, unless
//! `USAGED_SKIP_PROXIES=1` is set. Tests run one at a time (they share two CPUs).

mod util;

use std::collections::{BTreeMap, HashSet};
use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use util::{Response, get, post, read_response, temp_data_dir};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// One usage whose `patientId` names the request (`pid` is unique in a test).
fn usage(pid: &str) -> String {
    format!(
        r#"{{"patientId":"{pid}","timestamp":"2016-11-01T09:11:51-05:00","medication":"Albuterol"}}"#
    )
}

// ---------------------------------------------------------------------------------------------
// A usaged process we can stop, restart on the same port, and whose stderr we keep.

struct Usaged {
    child: Child,
    port: u16,
    dir: PathBuf,
    args: Vec<String>,
    log: Arc<Mutex<String>>,
}

impl Usaged {
    /// `usaged --port PORT --bind 127.0.0.1 --no-pin --data-dir DIR ARGS`; returns at its
    /// `listening on` line (bounded: 30 s).
    fn start(dir: &Path, port: u16, args: &[&str]) -> Usaged {
        let mut child = Command::new(env!("CARGO_BIN_EXE_usaged"))
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--no-pin",
            ])
            .arg("--data-dir")
            .arg(dir)
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start usaged");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let mut stderr = BufReader::new(child.stderr.take().expect("piped stderr"));
        let keep = Arc::clone(&log);
        // Reads stderr to its end, so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut line = String::new();
            while stderr.read_line(&mut line).unwrap_or(0) > 0 {
                if let Some(rest) = line.strip_prefix("listening on 127.0.0.1:") {
                    let _ = tx.send(rest.split(' ').next().and_then(|p| p.parse::<u16>().ok()));
                }
                keep.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        let port = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Some(p)) => p,
            Ok(None) => panic!("bad listening line:\n{}", log.lock().unwrap()),
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().unwrap();
                panic!(
                    "usaged {args:?} did not start ({status}):\n{}",
                    log.lock().unwrap()
                )
            }
        };
        Usaged {
            child,
            port,
            dir: dir.to_path_buf(),
            args: args.iter().map(|s| s.to_string()).collect(),
            log,
        }
    }

    /// The same flags and journal on the same port (a rolling restart).
    fn restart(&self) -> Usaged {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        Usaged::start(&self.dir, self.port, &args)
    }

    fn sigterm(&self) {
        signal(self.child.id(), "TERM");
    }

    /// The exit status, at most `limit` after now (killed and panicking after it).
    fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "usaged did not exit within {limit:?}:\n{}",
                    self.log.lock().unwrap()
                );
            }
            // Polling for an exit (bounded above), not waiting for readiness.
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then exit 0 within `limit`.
    fn stop(&mut self, limit: Duration) {
        self.sigterm();
        let st = self.wait_exit(limit);
        assert!(
            st.success(),
            "usaged exited with {st}:\n{}",
            self.log.lock().unwrap()
        );
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Usaged {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn signal(pid: u32, sig: &str) {
    // `kill(1)` keeps the tests free of signal `unsafe`.
    let st = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(st.success(), "kill -{sig} {pid}: {st}");
}

/// A journal directory removed at the end of the test.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        TempDir(temp_data_dir())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// Clients that tell a FIN from a reset, and a request lost from one never sent.

/// What the socket holds before we send: nothing yet (open), a FIN, stray bytes, or an error.
enum Peek {
    Open,
    Fin,
    Data,
    Failed(io::Error),
}

/// One non-blocking `MSG_PEEK`: the last look before a request is written.
fn peek(s: &TcpStream) -> Peek {
    let mut b = [0u8; 1];
    // SAFETY: `b` is a live 1-byte buffer and the length says 1; the fd is open (owned by `s`).
    let n = unsafe {
        libc::recv(
            s.as_raw_fd(),
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        0 => Peek::Fin,
        1 => Peek::Data,
        _ => {
            let e = io::Error::last_os_error();
            if e.kind() == ErrorKind::WouldBlock {
                Peek::Open
            } else {
                Peek::Failed(e)
            }
        }
    }
}

/// One answer: a whole response, a clean EOF before its first byte, or an error (a reset, a
/// timeout, or an answer cut short).
enum Answer {
    Got(Response),
    Eof,
    Failed(io::Error),
}

fn read_answer(r: &mut BufReader<TcpStream>) -> Answer {
    let mut line = String::new();
    match r.read_line(&mut line) {
        Ok(0) => return Answer::Eof,
        Ok(_) => {}
        Err(e) => return Answer::Failed(e),
    }
    let cut =
        |what: &str| Answer::Failed(io::Error::new(ErrorKind::UnexpectedEof, what.to_string()));
    let Some(status) = line.get(9..12).and_then(|s| s.parse().ok()) else {
        return cut(&format!("bad status line {line:?}"));
    };
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        match r.read_line(&mut h) {
            Ok(0) => return cut("EOF inside the head"),
            Ok(_) => {}
            Err(e) => return Answer::Failed(e),
        }
        if h == "\r\n" {
            break;
        }
        let Some((n, v)) = h.trim_end().split_once(':') else {
            return cut(&format!("bad header {h:?}"));
        };
        headers.push((n.to_string(), v.trim().to_string()));
    }
    let mut resp = Response {
        status,
        headers,
        body: Vec::new(),
    };
    let Some(len) = resp
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    else {
        return cut("no Content-Length");
    };
    resp.body = vec![0; len];
    match r.read_exact(&mut resp.body) {
        Ok(()) => Answer::Got(resp),
        Err(e) => Answer::Failed(e),
    }
}

fn closes(r: &Response) -> bool {
    r.header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("close"))
}

/// What one client saw. `acked`: `(backend, id, patientId)` of each `201`.
#[derive(Default)]
struct Tally {
    acked: Vec<(usize, u64, String)>,
    /// `503` with `Connection: close` (the server was draining): `patientId`s.
    unavailable: Vec<String>,
    /// A FIN seen before a request was written: nothing was sent, nothing lost.
    fin_before_send: usize,
    /// Pipelined after an answer that said `Connection: close`: not processed, by HTTP's rule.
    after_close: Vec<String>,
    /// Written, then a clean EOF with no answer: `patientId`s.
    unanswered: Vec<String>,
    /// A reset or another I/O error: what and when.
    errors: Vec<String>,
    /// Any other answer: status and body.
    unexpected: Vec<String>,
    /// Connection refused: the listener is closed.
    refused: usize,
}

impl Tally {
    fn merge(mut self, o: Tally) -> Tally {
        self.acked.extend(o.acked);
        self.unavailable.extend(o.unavailable);
        self.fin_before_send += o.fin_before_send;
        self.after_close.extend(o.after_close);
        self.unanswered.extend(o.unanswered);
        self.errors.extend(o.errors);
        self.unexpected.extend(o.unexpected);
        self.refused += o.refused;
        self
    }

    fn summary(&self) -> String {
        format!(
            "{} acknowledged, {} told 503 (draining), {} connections seen closed (FIN) before a \
             send, {} not processed after a Connection: close answer, {} sent and unanswered \
             (EOF or error) {:?}, {} errors (resets) {:?}, {} unexpected answers {:?}, {} \
             refused connects",
            self.acked.len(),
            self.unavailable.len(),
            self.fin_before_send,
            self.after_close.len(),
            self.unanswered.len(),
            first(&self.unanswered),
            self.errors.len(),
            first(&self.errors),
            self.unexpected.len(),
            first(&self.unexpected),
            self.refused
        )
    }
}

/// Where on its connection a request was: a fresh connection's first request tells a server
/// that closed a connection before reading anything from one that closed a used one.
fn nth(answered: usize) -> String {
    match answered {
        0 => "(first request on a fresh connection)".into(),
        n => format!("(after {n} answers on its connection)"),
    }
}

fn first(v: &[String]) -> &[String] {
    &v[..v.len().min(5)]
}

/// Which backend answered, from a proxy's response header.
type BackendOf<'a> = &'a (dyn Fn(&Response) -> Option<usize> + Sync);

/// How a load client behaves.
struct Load<'a> {
    port: u16,
    /// Requests written at once (1: plain keep-alive).
    depth: usize,
    /// Ends the client after its current round trip.
    stop: &'a AtomicBool,
    /// `201`s per backend, as they come.
    acked: &'a [AtomicUsize],
    /// Which backend answered (by a proxy's header); `None`: no proxy, backend 0.
    backend_of: Option<BackendOf<'a>>,
    /// Reconnect after a close (direct: until refused); through a proxy every close is an error.
    direct: bool,
}

/// POST on keep-alive connections until stopped (or, direct, until the listener is closed).
/// Before each write the socket is peeked, so a FIN that came first is told apart from a
/// request lost after it was sent.
fn load_client(tag: &str, l: &Load) -> Tally {
    let mut t = Tally::default();
    let mut seq = 0u64;
    'conns: while !l.stop.load(Ordering::Relaxed) {
        let stream = match TcpStream::connect(("127.0.0.1", l.port)) {
            Ok(s) => s,
            Err(e) if e.kind() == ErrorKind::ConnectionRefused && l.direct => {
                t.refused += 1;
                break;
            }
            Err(e) => {
                t.errors.push(format!("connect: {e}"));
                break;
            }
        };
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut writer = stream.try_clone().unwrap();
        let mut reader = BufReader::new(stream);
        // Requests answered on this connection so far (0: its first write is in flight).
        let mut answered = 0usize;
        while !l.stop.load(Ordering::Relaxed) {
            if !reader.buffer().is_empty() {
                t.errors.push("bytes nobody asked for".into());
                continue 'conns;
            }
            match peek(reader.get_ref()) {
                Peek::Open => {}
                Peek::Fin if l.direct => {
                    t.fin_before_send += 1;
                    continue 'conns;
                }
                Peek::Fin => {
                    t.errors
                        .push("the proxy closed a keep-alive connection".into());
                    continue 'conns;
                }
                Peek::Data => {
                    t.errors.push("bytes nobody asked for".into());
                    continue 'conns;
                }
                Peek::Failed(e) => {
                    t.errors.push(format!("before a send: {e}"));
                    continue 'conns;
                }
            }
            let pids: Vec<String> = (0..l.depth)
                .map(|_| {
                    seq += 1;
                    format!("{tag}-{seq}")
                })
                .collect();
            let bytes: String = pids.iter().map(|p| post(&usage(p))).collect();
            if let Err(e) = writer.write_all(bytes.as_bytes()) {
                t.errors.push(format!("write: {e}"));
                continue 'conns;
            }
            let mut ended = false;
            for pid in pids {
                if ended {
                    t.after_close.push(pid);
                    continue;
                }
                match read_answer(&mut reader) {
                    Answer::Got(r) if r.status == 201 => {
                        let backend = match l.backend_of {
                            None => Some(0),
                            Some(f) => f(&r),
                        };
                        let (Some(b), Some(id)) = (backend, r.json()["id"].as_u64()) else {
                            t.unexpected
                                .push(format!("201 from where? {:?}", r.headers));
                            continue;
                        };
                        l.acked[b].fetch_add(1, Ordering::Relaxed);
                        t.acked.push((b, id, pid));
                        ended = closes(&r);
                    }
                    // usaged's drain answer; a proxy drops the hop-by-hop `Connection: close`.
                    Answer::Got(r)
                        if r.status == 503
                            && (closes(&r) || !l.direct)
                            && r.header("content-type") == Some("application/json") =>
                    {
                        t.unavailable.push(pid);
                        // Directly the server closes; a proxy keeps our connection (and
                        // serves the requests pipelined after this one).
                        ended = closes(&r);
                    }
                    Answer::Got(r) => {
                        t.unexpected
                            .push(format!("{} {:?} {}", r.status, r.headers, r.text()));
                        ended = closes(&r);
                    }
                    Answer::Eof => {
                        t.unanswered.push(format!("{pid} {}", nth(answered)));
                        ended = true;
                    }
                    Answer::Failed(e) => {
                        t.errors.push(format!(
                            "{:?} reading an answer {}: {e}",
                            e.kind(),
                            nth(answered)
                        ));
                        t.unanswered.push(format!("{pid} {}", nth(answered)));
                        ended = true;
                    }
                }
                answered += 1;
            }
            if ended {
                continue 'conns;
            }
        }
        break;
    }
    t
}

/// Run `clients` load clients (`(tag, depth)`) while `during` runs; join and merge them.
fn with_load(
    clients: &[(&str, usize)],
    load: &Load,
    during: impl FnOnce() -> String,
) -> (Tally, String) {
    std::thread::scope(|scope| {
        let handles: Vec<_> = clients
            .iter()
            .map(|&(tag, depth)| {
                scope.spawn(move || {
                    load_client(
                        tag,
                        &Load {
                            depth,
                            backend_of: load.backend_of,
                            ..*load
                        },
                    )
                })
            })
            .collect();
        let note = during();
        load.stop.store(true, Ordering::Relaxed);
        let t = handles
            .into_iter()
            .map(|h| h.join().expect("load client panicked"))
            .fold(Tally::default(), Tally::merge);
        (t, note)
    })
}

/// Wait (bounded) until `cond` holds; a load counter, not readiness, is what it polls.
fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------------------------
// After the fact: every 201 reads back, export lists exactly the acknowledged set.

/// Every `(id, patientId)` reads back with that patient (pipelined GETs on one connection).
fn read_back(port: u16, acked: &[(u64, String)]) {
    let c = TcpStream::connect(("127.0.0.1", port)).expect("connect to read back");
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = c.try_clone().unwrap();
    let mut r = BufReader::new(c);
    for chunk in acked.chunks(100) {
        let reqs: String = chunk.iter().map(|(id, _)| get(*id)).collect();
        w.write_all(reqs.as_bytes()).unwrap();
        for (id, pid) in chunk {
            let a = read_response(&mut r).unwrap_or_else(|| panic!("no answer to GET {id}"));
            assert_eq!(a.status, 200, "GET {id}: {}", a.text());
            let j = a.json();
            assert_eq!(j["patientId"], pid.as_str(), "GET {id}: {j}");
            assert_eq!(j["medication"], "Albuterol", "GET {id}: {j}");
        }
    }
}

/// `usaged export` of a stopped server's journal: `id → patientId`, checked to exit 0.
fn export(dir: &Path) -> BTreeMap<u64, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_usaged"))
        .args(["export", "--data-dir"])
        .arg(dir)
        .output()
        .expect("run usaged export");
    assert!(
        out.status.success(),
        "export: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let j: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                j["id"].as_u64().unwrap(),
                j["patientId"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// No id twice, and the export of `dir` is exactly `acked`.
fn check_journal(dir: &Path, acked: &[(u64, String)], what: &str) {
    let ids: HashSet<u64> = acked.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids.len(), acked.len(), "{what}: an id was given twice");
    let want: BTreeMap<u64, String> = acked.iter().cloned().collect();
    let got = export(dir);
    let extra: Vec<_> = got
        .iter()
        .filter(|(id, _)| !want.contains_key(id))
        .collect();
    let missing: Vec<_> = want
        .iter()
        .filter(|(id, _)| !got.contains_key(id))
        .collect();
    assert!(
        extra.is_empty() && missing.is_empty() && got == want,
        "{what}: export differs from the acknowledged set: {} acknowledged, {} exported, \
         not acknowledged but stored (first 5) {:?}, acknowledged but missing (first 5) {:?}",
        want.len(),
        got.len(),
        &extra[..extra.len().min(5)],
        &missing[..missing.len().min(5)],
    );
}

// ---------------------------------------------------------------------------------------------
// Directly.

/// Keep-alive and pipelining clients post until SIGTERM closes the listener, three times over
/// one journal; nothing that was sent is reset or lost, no id is given twice, and the store
/// holds exactly what was acknowledged.
#[test]
fn sigterm_under_keep_alive_load_answers_every_request_and_resets_none() {
    let _g = serial();
    const ROUNDS: usize = 3;
    let dir = TempDir::new();
    let flags = ["--threads", "2", "--shutdown-timeout", "5"];
    let mut total = Tally::default();
    for round in 0..ROUNDS {
        let mut s = Usaged::start(&dir.0, 0, &flags);
        let stop = AtomicBool::new(false);
        let acked = [AtomicUsize::new(0)];
        let load = Load {
            port: s.port,
            depth: 1,
            stop: &stop,
            acked: &acked,
            backend_of: None,
            direct: true,
        };
        // Eight plain keep-alive clients, four that pipeline 8 or 4 requests per write.
        let tags: Vec<String> = (0..12).map(|i| format!("r{round}-k{i}")).collect();
        let clients: Vec<(&str, usize)> = tags
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), [1, 1, 1, 1, 1, 1, 1, 1, 8, 8, 4, 4][i]))
            .collect();
        let (t, took) = with_load(&clients, &load, || {
            wait_for(
                Duration::from_secs(30),
                "1500 usages are acknowledged",
                || acked[0].load(Ordering::Relaxed) >= 1500,
            );
            let t0 = Instant::now();
            s.sigterm();
            let st = s.wait_exit(Duration::from_secs(10));
            assert!(st.success(), "exit {st}:\n{}", s.log());
            format!("{:?}", t0.elapsed())
        });
        println!(
            "direct drain {round} (exit {took} after SIGTERM): {}",
            t.summary()
        );
        total = total.merge(t);
    }
    let t = total;
    let resets: Vec<_> = t
        .errors
        .iter()
        .filter(|e| e.to_lowercase().contains("reset"))
        .collect();
    assert!(
        resets.is_empty(),
        "connections were reset: {resets:?}\n{}",
        t.summary()
    );
    assert!(
        t.errors.is_empty() && t.unexpected.is_empty(),
        "{}",
        t.summary()
    );
    // A request written in the microseconds between our peek and the server's FIN reaching us
    // cannot be told apart from one the server dropped unread; one such race per SIGTERM is
    // tolerated (it must not have been stored: see the export below). A server that closes
    // connections with requests unread loses several per SIGTERM (issue 9, case 10).
    assert!(
        t.unanswered.len() <= ROUNDS,
        "requests sent and never answered: {:?}\n{}",
        first(&t.unanswered),
        t.summary()
    );
    let acked: Vec<(u64, String)> = t.acked.into_iter().map(|(_, id, p)| (id, p)).collect();
    let mut again = Usaged::start(&dir.0, 0, &flags);
    read_back(again.port, &acked);
    again.stop(Duration::from_secs(10));
    check_journal(&dir.0, &acked, "direct drain");
}

/// With `--drain-grace`, `/health` says `503 draining` at once while POSTs (on old and new
/// connections) still get `201` until the grace ends; then the idle connection gets a FIN.
#[test]
fn health_says_draining_at_once_while_posts_are_served_during_the_grace() {
    let _g = serial();
    let dir = TempDir::new();
    let grace = Duration::from_secs(2);
    let flags = [
        "--threads",
        "2",
        "--drain-grace",
        "2",
        "--shutdown-timeout",
        "5",
    ];
    let mut s = Usaged::start(&dir.0, 0, &flags);
    let connect = || {
        let c = TcpStream::connect(("127.0.0.1", s.port)).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        BufReader::new(c)
    };
    let ask = |c: &mut BufReader<TcpStream>, req: &str| {
        c.get_mut().write_all(req.as_bytes()).unwrap();
        match read_answer(c) {
            Answer::Got(r) => r,
            Answer::Eof => panic!("no answer to {req:?}"),
            Answer::Failed(e) => panic!("{req:?}: {e}"),
        }
    };
    let health = "GET /health HTTP/1.1\r\nHost: t\r\n\r\n";
    let mut old = connect();
    let r = ask(&mut old, &post(&usage("before")));
    assert_eq!(r.status, 201);
    let mut acked = vec![(r.json()["id"].as_u64().unwrap(), "before".to_string())];
    assert_eq!(ask(&mut old, health).status, 200);

    let t0 = Instant::now();
    s.sigterm();
    // The signal is handled asynchronously: poll (bounded) until /health turns.
    let turned = loop {
        let r = ask(&mut connect(), health);
        if r.status == 503 {
            break r;
        }
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(
            t0.elapsed() < Duration::from_millis(500),
            "/health still 200 {:?} after SIGTERM",
            t0.elapsed()
        );
    };
    let j = turned.json();
    assert_eq!(j["status"], "unavailable", "{j}");
    assert_eq!(j["reason"], "draining", "{j}");
    println!("/health turned 503 {:?} after SIGTERM", t0.elapsed());

    // During the grace: a POST on the old connection, one on a new connection, a read.
    let r = ask(&mut old, &post(&usage("grace-old")));
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(
        !closes(&r),
        "served normally during the grace: {:?}",
        r.headers
    );
    acked.push((r.json()["id"].as_u64().unwrap(), "grace-old".into()));
    let mut new = connect();
    let r = ask(&mut new, &post(&usage("grace-new")));
    assert_eq!(r.status, 201, "{}", r.text());
    acked.push((r.json()["id"].as_u64().unwrap(), "grace-new".into()));
    let r = ask(&mut new, &get(acked[0].0));
    assert_eq!(r.status, 200);
    let within = t0.elapsed();
    assert!(
        within < grace,
        "the machine was too slow: the grace ended before the checks ({within:?})"
    );
    drop(new);

    // When the grace ends the idle connection is closed with a FIN (EOF), not a reset.
    let mut rest = Vec::new();
    match old.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest)),
        Err(e) => panic!("idle keep-alive connection after the grace: {e}"),
    }
    let fin_after = t0.elapsed();
    drop(old);
    let st = s.wait_exit(Duration::from_secs(10));
    let exited = t0.elapsed();
    assert!(st.success(), "exit {st}:\n{}", s.log());
    assert!(
        fin_after >= grace && exited >= grace,
        "the grace is 2 s: FIN after {fin_after:?}, exit after {exited:?}"
    );
    println!("idle connection closed {fin_after:?}, exit {exited:?} after SIGTERM");

    let mut again = s.restart();
    read_back(again.port, &acked);
    again.stop(Duration::from_secs(10));
    check_journal(&dir.0, &acked, "drain grace");
}

/// A request written onto an idle keep-alive connection just after the server's FIN (the race
/// every HTTP/1.1 client can lose) is read and dropped, not answered by a reset, and not stored.
#[test]
fn a_request_racing_the_fin_of_an_idle_connection_gets_no_reset() {
    let _g = serial();
    let dir = TempDir::new();
    let mut s = Usaged::start(&dir.0, 0, &["--threads", "1", "--shutdown-timeout", "5"]);
    let c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = c.try_clone().unwrap();
    let mut r = BufReader::new(c);
    w.write_all(post(&usage("kept")).as_bytes()).unwrap();
    let Answer::Got(a) = read_answer(&mut r) else {
        panic!("no answer")
    };
    assert_eq!(a.status, 201);
    let acked = vec![(a.json()["id"].as_u64().unwrap(), "kept".to_string())];

    s.sigterm();
    match read_answer(&mut r) {
        Answer::Eof => {}
        Answer::Got(a) => panic!("an answer nobody asked for: {a:?}"),
        Answer::Failed(e) => panic!("the idle connection was not closed with a FIN: {e}"),
    }
    // The client had not seen the FIN yet: its next POST goes out.
    w.write_all(post(&usage("late")).as_bytes())
        .expect("write after the FIN");
    // A reset comes back asynchronously: watch the socket's error for a while (bounded), then
    // read and write once more; a server that reads until we close shows none of them.
    let deadline = Instant::now() + Duration::from_millis(200);
    while Instant::now() < deadline {
        if let Some(e) = w.take_error().unwrap() {
            panic!("the late request was answered by a reset: {e}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut rest = Vec::new();
    let read = r.read_to_end(&mut rest);
    assert!(
        matches!(read, Ok(0)),
        "the late request was answered by {read:?} (a reset loses what the client sent)"
    );
    let again = w.write_all(post(&usage("later")).as_bytes());
    assert!(again.is_ok(), "the server stopped reading: {again:?}");
    drop((r, w));
    let st = s.wait_exit(Duration::from_secs(10));
    assert!(st.success(), "exit {st}:\n{}", s.log());
    check_journal(&dir.0, &acked, "late request");
}

/// Clients that open a fresh connection for each POST (as nginx does to its upstreams
/// without `keepalive`) while SIGTERM closes the listener, thirty times over one journal: a
/// connect may be refused or time out, but a connection that was made gets its answer (`201`,
/// or `503` once draining), never a reset: a listener closed with a handshake still under way
/// resets a client that already sent its request. The race is narrow (a SYN before the
/// listener stops taking handshakes, its ACK after): with the listener closed at once, 40
/// rounds saw 2 resets here, so 30 rounds catch that regression more often than not.
/// One client's `201`s (id, patientId), failures, and connects refused or timed out.
type ClientTally = (Vec<(u64, String)>, Vec<String>, usize);

#[test]
fn fresh_connections_racing_the_listener_close_are_answered_never_reset() {
    let _g = serial();
    const ROUNDS: usize = 30;
    const CLIENTS: usize = 8;
    let dir = TempDir::new();
    let mut s = Usaged::start(&dir.0, 0, &["--threads", "1", "--shutdown-timeout", "5"]);
    let mut acked = Vec::new();
    let mut failures = Vec::new();
    let mut refused = 0;
    for round in 0..ROUNDS {
        let stop = AtomicBool::new(false);
        let answered = AtomicUsize::new(0);
        let out: Vec<ClientTally> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..CLIENTS)
                .map(|c| {
                    let (stop, answered, port) = (&stop, &answered, s.port);
                    sc.spawn(move || {
                        let (mut ok, mut bad, mut refused) = (Vec::new(), Vec::new(), 0);
                        for n in 0.. {
                            if stop.load(Ordering::Relaxed) {
                                break;
                            }
                            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                            let Ok(c2) =
                                TcpStream::connect_timeout(&addr, Duration::from_millis(250))
                            else {
                                refused += 1;
                                // The server is gone; the test stops the clients soon.
                                std::thread::sleep(Duration::from_millis(5));
                                continue;
                            };
                            c2.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                            let pid = format!("r{round}c{c}n{n}");
                            let mut w = c2.try_clone().unwrap();
                            if let Err(e) = w.write_all(post(&usage(&pid)).as_bytes()) {
                                bad.push(format!("{pid}: write: {e}"));
                                continue;
                            }
                            match read_answer(&mut BufReader::new(c2)) {
                                Answer::Got(a) if a.status == 201 => {
                                    ok.push((a.json()["id"].as_u64().unwrap(), pid));
                                }
                                Answer::Got(a) if a.status == 503 && closes(&a) => {}
                                Answer::Got(a) => bad.push(format!("{pid}: {a:?}")),
                                Answer::Eof => bad.push(format!("{pid}: EOF, no answer")),
                                Answer::Failed(e) => bad.push(format!("{pid}: {e}")),
                            }
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        (ok, bad, refused)
                    })
                })
                .collect();
            wait_for(Duration::from_secs(30), "clients are served", || {
                answered.load(Ordering::Relaxed) >= 200
            });
            s.sigterm();
            let st = s.wait_exit(Duration::from_secs(15));
            assert!(st.success(), "round {round}: exit {st}:\n{}", s.log());
            stop.store(true, Ordering::Relaxed);
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (ok, bad, r) in out {
            acked.extend(ok);
            failures.extend(bad);
            refused += r;
        }
        if round + 1 < ROUNDS {
            s = s.restart();
        }
    }
    println!(
        "{} acknowledged, {refused} connects refused or timed out, {} failures",
        acked.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "connections made and then not answered (first 5): {:?}",
        &failures[..failures.len().min(5)]
    );
    check_journal(&dir.0, &acked, "fresh connections");
}

// ---------------------------------------------------------------------------------------------
// Through proxies.

/// `name` from `PATH`, `/usr/sbin` or `/usr/local/sbin`; `None` (the test returns) only when
/// `USAGED_SKIP_PROXIES=1`, else the test fails naming what to install.
fn proxy_binary(name: &str, package: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        if std::env::var("USAGED_SKIP_PROXIES").as_deref() == Ok("1") {
            println!("SKIPPED: {name} is not installed and USAGED_SKIP_PROXIES=1");
            return None;
        }
        panic!(
            "{name} is not installed: `apt-get install {package}` (.ci/run does), or set \
             USAGED_SKIP_PROXIES=1 to skip the proxy tests explicitly"
        );
    }
    found
}

/// A free loopback port: bound to port 0, then released for the proxy to take.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A proxy process and its directory (config, logs); stopped and removed on drop.
struct Proxy {
    child: Child,
    dir: PathBuf,
    port: u16,
    log: PathBuf,
}

impl Proxy {
    /// Start `bin args` (the config already in `dir`), wait (bounded) until `port` accepts.
    fn start(bin: &Path, args: &[&str], dir: PathBuf, port: u16, log: PathBuf) -> Proxy {
        let out = std::fs::File::create(dir.join("stdout")).unwrap();
        let child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let mut p = Proxy {
            child,
            dir,
            port,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(st) = p.child.try_wait().unwrap() {
                panic!("{} exited with {st}:\n{}", bin.display(), p.logs());
            }
            assert!(
                Instant::now() < deadline,
                "{} did not listen:\n{}",
                bin.display(),
                p.logs()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        p
    }

    fn logs(&self) -> String {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        format!("{}{}", read(&self.dir.join("stdout")), read(&self.log))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // nginx's master takes its workers down on SIGTERM; SIGKILL would orphan them.
        let children =
            std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.child.id()))
                .unwrap_or_default();
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in children.split_whitespace() {
            let _ = Command::new("kill")
                .args(["-KILL", pid])
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Haproxy,
    Nginx,
}

/// The proxy's config for backends on `ports`, listening on `port`, with its files in `dir`;
/// the path of its error log.
fn write_config(kind: Kind, dir: &Path, port: u16, ports: [u16; 2]) -> PathBuf {
    let [a, b] = ports;
    let d = dir.display();
    let (file, text) = match kind {
        // POSTs are retried only when they surely never reached a server:
        // - `retry-on conn-failure` (HAProxy's default, spelled out): a retry happens only when
        //   the connection could not be made, so no byte of the request was sent. Not
        //   `empty-response`, `response-timeout` or `junk-response`: those fire after the POST
        //   was sent, when the server may have stored it, and a retry would store it twice.
        // - `option redispatch 1`: that retry goes to the other server.
        // - health checks `GET /health` every 100 ms, `fall 1`: a draining node (503) is taken
        //   out of rotation within about 0.1 s, well inside its `--drain-grace 2`, so no request
        //   is sent to it once it starts closing idle connections; `rise 1` takes a restarted
        //   node back at its first 200.
        // - `http-reuse safe` (the default): an idle server connection carries only requests
        //   that are not the first of their client connection; no new request reaches a node
        //   that is DOWN, so the server's FIN never meets one.
        Kind::Haproxy => (
            "haproxy.cfg",
            format!(
                "global
    maxconn 4096
    log stderr format short local0 notice
defaults
    mode http
    log global
    option httplog
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout check 1s
    retries 3
    retry-on conn-failure
    option redispatch 1
    http-reuse safe
frontend fe
    bind 127.0.0.1:{port}
    default_backend usaged
backend usaged
    balance roundrobin
    option httpchk
    http-check send meth GET uri /health ver HTTP/1.1 hdr Host usaged
    http-check expect status 200
    default-server inter 100ms fastinter 100ms downinter 100ms fall 1 rise 1
    http-response set-header X-Usaged-Server %[srv_name]
    server a 127.0.0.1:{a} check
    server b 127.0.0.1:{b} check
"
            ),
        ),
        // nginx (open source) has no active health checks, so it cannot see a drain coming:
        // - no `keepalive` to the upstream: each request gets a fresh connection, so nginx never
        //   writes a POST onto an idle connection the server is closing at that instant (a
        //   POST sent and then cut is not retried, and must not be);
        // - `proxy_next_upstream error timeout` (the default, spelled out) without
        //   `non_idempotent`: a POST goes to the other server only when the connection failed
        //   before it was sent (refused once the listener is closed), never after;
        // - `max_fails=1 fail_timeout=1s` (nginx's shortest): a refused node is skipped for a
        //   second, then tried again, which takes a restarted node back.
        Kind::Nginx => (
            "nginx.conf",
            format!(
                "worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    upstream usaged {{
        server 127.0.0.1:{a} max_fails=1 fail_timeout=1s;
        server 127.0.0.1:{b} max_fails=1 fail_timeout=1s;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://usaged;
            proxy_next_upstream error timeout;
            proxy_next_upstream_tries 2;
            proxy_connect_timeout 1s;
            proxy_read_timeout 30s;
            add_header X-Usaged-Backend $upstream_addr always;
        }}
    }}
}}
"
            ),
        ),
    };
    std::fs::write(dir.join(file), text).unwrap();
    match kind {
        Kind::Haproxy => dir.join("stdout"),
        Kind::Nginx => dir.join("error.log"),
    }
}

/// Two backends behind `kind`; keep-alive (and pipelining) clients post through it while the
/// backends are restarted one after the other (SIGTERM, exit, start again on the same port).
/// No client sees an error or a 502/504, and every 201 reads back from the backend that gave it.
fn drain_behind(kind: Kind) {
    let (name, package) = match kind {
        Kind::Haproxy => ("haproxy", "haproxy"),
        Kind::Nginx => ("nginx", "nginx-light"),
    };
    let Some(bin) = proxy_binary(name, package) else {
        return;
    };
    let dirs = [TempDir::new(), TempDir::new()];
    // HAProxy's health checks need the grace to see the node go down before it closes
    // connections; nginx has none, so a grace would only delay what it sees.
    let flags: &[&str] = match kind {
        Kind::Haproxy => &[
            "--threads",
            "1",
            "--drain-grace",
            "2",
            "--shutdown-timeout",
            "5",
        ],
        Kind::Nginx => &["--threads", "1", "--shutdown-timeout", "5"],
    };
    let a = Usaged::start(&dirs[0].0, 0, flags);
    let b = Usaged::start(&dirs[1].0, 0, flags);
    let ports = [a.port, b.port];
    let pdir = temp_data_dir();
    std::fs::create_dir_all(&pdir).unwrap();
    let port = free_port();
    let log = write_config(kind, &pdir, port, ports);
    let args: Vec<String> = match kind {
        Kind::Haproxy => vec![
            "-f".into(),
            pdir.join("haproxy.cfg").display().to_string(),
            "-db".into(),
        ],
        Kind::Nginx => vec![
            "-p".into(),
            pdir.display().to_string(),
            "-c".into(),
            pdir.join("nginx.conf").display().to_string(),
            "-g".into(),
            "daemon off;".into(),
        ],
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let proxy = Proxy::start(&bin, &args, pdir, port, log);

    let backend_of = move |r: &Response| -> Option<usize> {
        match kind {
            Kind::Haproxy => match r.header("x-usaged-server")? {
                "a" => Some(0),
                "b" => Some(1),
                _ => None,
            },
            // `$upstream_addr` lists every server tried; the last one answered.
            Kind::Nginx => {
                let last = r.header("x-usaged-backend")?.rsplit(", ").next()?;
                let p: u16 = last.rsplit(':').next()?.parse().ok()?;
                ports.iter().position(|&q| q == p)
            }
        }
    };
    let stop = AtomicBool::new(false);
    let acked = [AtomicUsize::new(0), AtomicUsize::new(0)];
    let load = Load {
        port: proxy.port,
        depth: 1,
        stop: &stop,
        acked: &acked,
        backend_of: Some(&backend_of),
        direct: false,
    };
    let tags: Vec<String> = (0..16).map(|i| format!("c{i}")).collect();
    let clients: Vec<(&str, usize)> = tags
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), if i < 12 { 1 } else { 4 }))
        .collect();
    let n = |i: usize| acked[i].load(Ordering::Relaxed);
    let mut backends = [a, b];
    let (t, note) = with_load(&clients, &load, || {
        wait_for(Duration::from_secs(30), "both backends serve", || {
            n(0) >= 300 && n(1) >= 300
        });
        // A rolling restart: each backend in turn gets SIGTERM, exits, starts again on its
        // port, and is back in rotation before the next one goes.
        let mut note = String::new();
        for (v, name) in ["A", "B"].into_iter().enumerate() {
            let t0 = Instant::now();
            let before = n(v);
            backends[v].sigterm();
            let st = backends[v].wait_exit(Duration::from_secs(15));
            assert!(
                st.success(),
                "backend {name} exited {st}:\n{}",
                backends[v].log()
            );
            let exited = t0.elapsed();
            let during = n(v) - before;
            backends[v] = backends[v].restart();
            let back = n(v);
            wait_for(
                Duration::from_secs(15),
                "the proxy sends to the restarted backend",
                || n(v) >= back + 100,
            );
            note += &format!(
                "{name} exited {exited:?} after SIGTERM ({during} of its 201s after SIGTERM), \
                 back in rotation {:?} after its restart; ",
                t0.elapsed() - exited
            );
        }
        note
    });
    println!("{kind:?}: {note}{}", t.summary());
    let logs = proxy.logs();
    assert!(
        t.errors.is_empty() && t.unexpected.is_empty() && t.unanswered.is_empty(),
        "{kind:?}: clients saw failures: {}{}\nproxy log:\n{logs}",
        t.summary(),
        if logs.contains("Cannot assign requested address") {
            "\n(the proxy ran out of local ports: too many TIME_WAIT sockets on this machine?)"
        } else {
            ""
        },
    );
    // HAProxy's health checks take the node out during its grace, so it never answers 503;
    // nginx cannot know: a request on a connection the node accepted just before its drain
    // began gets usaged's own 503 (nothing stored, `Retry-After`), which nginx must pass on.
    assert!(
        kind == Kind::Nginx || t.unavailable.is_empty(),
        "{kind:?}: the draining node answered 503: {}",
        t.summary()
    );
    drop(proxy);
    for (i, (s, d)) in backends.iter_mut().zip(&dirs).enumerate() {
        let mine: Vec<(u64, String)> = t
            .acked
            .iter()
            .filter(|(b, _, _)| *b == i)
            .map(|(_, id, p)| (*id, p.clone()))
            .collect();
        read_back(s.port, &mine);
        s.stop(Duration::from_secs(15));
        check_journal(&d.0, &mine, &format!("{kind:?} backend {i}"));
    }
}

#[test]
fn sigterm_behind_haproxy_costs_no_request() {
    let _g = serial();
    drain_behind(Kind::Haproxy);
}

#[test]
fn sigterm_behind_nginx_costs_no_request() {
    let _g = serial();
    drain_behind(Kind::Nginx);
}
