//! The harness of the fault-injection suite (`tests/faults.rs`, `tests/faults_disk.rs`): start
//! `usaged` (under strace, or with an address-space limit, when a test asks), keep its stderr,
//! speak pipelined HTTP on connections whose answers a reader thread collects, and keep a
//! ledger of every usage sent and every id handed out, so that after each fault a test can
//! check the promise of a `201`: every acknowledged id reads back exactly, `usaged export`
//! lists exactly the acknowledged usages (plus, at most, usages whose answer was lost), and no
//! id is ever handed out twice.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use crate::util::{Response, get, post, read_response, temp_data_dir};

pub const BIN: &str = env!("CARGO_BIN_EXE_usaged");
/// Address-space limit (KiB) for runs that read corrupt files: a header that makes recovery
/// allocate gigabytes then fails here instead of taking the machine's memory.
pub const AS_LIMIT_KIB: u64 = 2 << 20;

/// Tests that measure latency take this exclusively; every other test shares it, so a
/// timing bound is never measured beside another test's load.
static TIMING: RwLock<()> = RwLock::new(());

pub fn shared() -> RwLockReadGuard<'static, ()> {
    TIMING.read().unwrap_or_else(|e| e.into_inner())
}

pub fn exclusive() -> RwLockWriteGuard<'static, ()> {
    TIMING.write().unwrap_or_else(|e| e.into_inner())
}

/// Whether `tool` runs. A missing tool fails the test (CI installs it), unless the
/// environment says `USAGED_SKIP_<TOOL>=1`.
pub fn have(tool: &str, probe: &[&str]) -> bool {
    let ok = Command::new(probe[0])
        .args(&probe[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let var = format!("USAGED_SKIP_{}", tool.to_uppercase());
    if ok {
        return true;
    }
    if std::env::var(&var).as_deref() == Ok("1") {
        println!("SKIPPED: {tool} is not usable here and {var}=1");
        return false;
    }
    panic!(
        "{tool} is not usable here (`{}` failed): .ci/run installs it; set {var}=1 to skip",
        probe.join(" ")
    );
}

pub fn have_strace() -> bool {
    have("strace", &["strace", "-V"])
}

// ---------------------------------------------------------------------------------------------
// Usages and what the server answers for them

/// The `i`-th usage this test posts: its patient and medication name it.
pub fn body(i: u64) -> String {
    format!(
        r#"{{"patientId":"p-{i}","timestamp":"{}","medication":"m{i}"}}"#,
        stamp(i)
    )
}

fn stamp(i: u64) -> String {
    format!(
        "2016-11-01T{:02}:{:02}:{:02}-05:00",
        (i / 3600) % 24,
        (i / 60) % 60,
        i % 60
    )
}

/// `GET /api/usages/{id}` (and each line of `usaged export`) for usage `i` stored as `id`.
pub fn stored(id: u64, i: u64) -> String {
    format!(
        r#"{{"id":{id},"patientId":"p-{i}","timestamp":"{}","medication":"m{i}"}}"#,
        stamp(i)
    )
}

/// Which usage a stored line is (its `patientId` is `p-{i}`).
fn usage_of(line: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    v["patientId"].as_str()?.strip_prefix("p-")?.parse().ok()
}

pub const HEALTH: &str = "GET /health HTTP/1.1\r\nHost: t\r\n\r\n";
pub const METRICS: &str = "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n";

/// A `503` as the spec says: `Retry-After`, a JSON `error`.
pub fn assert_retry_later(r: &Response, what: &str) {
    assert_eq!(r.status, 503, "{what}: {} {}", r.status, r.text());
    let after = r.header("retry-after");
    assert!(
        after.is_some_and(|a| a.trim().parse::<u32>().is_ok()),
        "{what}: a 503 without a Retry-After of whole seconds ({after:?}); headers {:?}",
        r.headers
    );
    let v: serde_json::Value = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("{what}: 503 body is not JSON ({e}): {:?}", r.text()));
    assert!(
        v["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{what}: 503 body {}",
        r.text()
    );
}

/// `/health` says the node cannot store usages, for a reason that contains `why`.
pub fn assert_unhealthy(r: &Response, why: &str) {
    assert_eq!(r.status, 503, "/health: {} {}", r.status, r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("/health body is not JSON ({e}): {:?}", r.text()));
    assert_eq!(v["status"], "unavailable", "/health: {}", r.text());
    assert!(
        v["reason"].as_str().is_some_and(|x| x.contains(why)),
        "/health reason should mention {why:?}: {}",
        r.text()
    );
}

/// The value of an unlabelled metric.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

// ---------------------------------------------------------------------------------------------
// The server

/// How the binary is started.
pub enum Wrap {
    Plain,
    /// Under strace with these options (`-f -o /dev/null` are added).
    Strace(Vec<String>),
    /// With `ulimit -v AS_LIMIT_KIB`.
    Limited,
}

/// A running `usaged`: killed with SIGKILL when dropped (a test stops it itself).
pub struct Usaged {
    /// `usaged`, or the strace that runs it.
    child: Child,
    /// `usaged`'s own process id.
    pub pid: u32,
    pub port: u16,
    /// Everything it printed on stderr so far (strace's lines included).
    log: Arc<Mutex<Vec<String>>>,
    /// Lines of `log` printed before it listened.
    startup_lines: usize,
}

/// What a start came to.
pub enum Start {
    Up(Usaged),
    /// It exited before it listened.
    Exited {
        status: ExitStatus,
        stderr: String,
    },
}

/// `--port 0 --bind 127.0.0.1 --threads N --no-pin --data-dir DIR` plus `extra`.
pub fn serve_args(dir: &Path, threads: u32, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "--port",
        "0",
        "--bind",
        "127.0.0.1",
        "--threads",
        &threads.to_string(),
        "--no-pin",
        "--data-dir",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push(dir.display().to_string());
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// Start `usaged ARGS` and wait (at most 30 s) for its `listening on` line, or its exit.
pub fn launch(wrap: Wrap, args: &[String]) -> Start {
    let mut cmd = match &wrap {
        Wrap::Plain => Command::new(BIN),
        Wrap::Strace(opts) => {
            let mut c = Command::new("strace");
            c.args(["-f", "-o", "/dev/null"])
                .args(opts)
                .arg("--")
                .arg(BIN);
            c
        }
        Wrap::Limited => {
            let mut c = Command::new("sh");
            c.args([
                "-c",
                &format!("ulimit -v {AS_LIMIT_KIB} && exec \"$0\" \"$@\""),
                BIN,
            ]);
            c
        }
    };
    let mut child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start usaged");
    let log = Arc::new(Mutex::new(Vec::new()));
    let lines = keep_lines(child.stderr.take().expect("stderr"), &log);
    let deadline = Instant::now() + Duration::from_secs(30);
    let port = loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                if let Some(rest) = line.strip_prefix("listening on 127.0.0.1:") {
                    break rest
                        .split(' ')
                        .next()
                        .and_then(|p| p.parse::<u16>().ok())
                        .unwrap_or_else(|| panic!("startup line {line:?}"));
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = wait_for(&mut child, Duration::from_secs(10))
                    .expect("usaged closed stderr but did not exit within 10 s");
                return Start::Exited {
                    status,
                    stderr: log.lock().unwrap().join("\n"),
                };
            }
            Err(RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                panic!(
                    "usaged neither listened nor exited within 30 s: {}",
                    log.lock().unwrap().join("\n")
                );
            }
        }
    };
    let pid = match wrap {
        Wrap::Strace(_) => {
            let id = child.id();
            std::fs::read_to_string(format!("/proc/{id}/task/{id}/children"))
                .ok()
                .and_then(|c| c.split_whitespace().next()?.parse().ok())
                .expect("the usaged that strace started")
        }
        Wrap::Plain | Wrap::Limited => child.id(),
    };
    let startup_lines = log.lock().unwrap().len();
    Start::Up(Usaged {
        child,
        pid,
        port,
        log,
        startup_lines,
    })
}

/// Append each line of `r` to `log` and pass it on (to whoever still listens).
fn keep_lines(r: impl Read + Send + 'static, log: &Arc<Mutex<Vec<String>>>) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let log = Arc::clone(log);
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            log.lock().unwrap().push(line.clone());
            let _ = tx.send(line);
        }
    });
    rx
}

fn wait_for(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return Some(st);
        }
        if Instant::now() >= deadline {
            return None;
        }
        // Polling for an exit, bounded above.
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `kill -SIG PID` (keeps the tests free of `unsafe`).
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

impl Usaged {
    /// A plain server that must come up.
    pub fn start(dir: &Path, threads: u32, extra: &[&str]) -> Usaged {
        match launch(Wrap::Plain, &serve_args(dir, threads, extra)) {
            Start::Up(s) => s,
            Start::Exited { status, stderr } => {
                panic!("usaged did not start ({status}):\n{stderr}")
            }
        }
    }

    pub fn conn(&self) -> Conn {
        Conn::open(self.port)
    }

    /// Everything printed on stderr, one line each.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// The lines printed after `listening on`.
    pub fn later_lines(&self) -> Vec<String> {
        self.log.lock().unwrap()[self.startup_lines..].to_vec()
    }

    /// Lines about the journal printed after `listening on`.
    pub fn journal_lines(&self) -> Vec<String> {
        self.later_lines()
            .into_iter()
            .filter(|l| l.contains("journal"))
            .collect()
    }

    /// Wait (at most `limit`) for a line after startup that satisfies `f`.
    pub fn wait_for_line(&self, limit: Duration, f: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(l) = self.later_lines().into_iter().find(|l| f(l)) {
                return Some(l);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// SIGKILL (if it still runs), and wait for it (and its strace) to go.
    pub fn kill9(&mut self) {
        signal(self.pid, "KILL");
        assert!(
            wait_for(&mut self.child, Duration::from_secs(10)).is_some(),
            "usaged did not go within 10 s of SIGKILL"
        );
    }

    /// SIGTERM, then its exit status (at most 15 s).
    pub fn stop(&mut self) -> ExitStatus {
        signal(self.pid, "TERM");
        match wait_for(&mut self.child, Duration::from_secs(15)) {
            Some(st) => st,
            None => panic!(
                "usaged did not exit within 15 s of SIGTERM:\n{}",
                self.log()
            ),
        }
    }

    /// SIGTERM and expect exit status 0.
    pub fn stop_ok(&mut self) {
        let st = self.stop();
        assert!(st.success(), "exit after SIGTERM: {st}\n{}", self.log());
    }

    /// Attach strace to the running server with these options; returns once strace says it
    /// attached. The injection stops when the returned guard is dropped (strace detaches).
    pub fn attach_strace(&self, opts: &[String]) -> Tracer {
        let mut child = Command::new("strace")
            .args(["-f", "-o", "/dev/null", "-p", &self.pid.to_string()])
            .args(opts)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start strace");
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = keep_lines(child.stderr.take().expect("stderr"), &log);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(l) if l.contains("attached") => return Tracer { child },
                Ok(_) => {}
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "strace did not attach within 10 s: {}",
                        log.lock().unwrap().join("\n")
                    );
                }
            }
        }
    }
}

impl Drop for Usaged {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal(self.pid, "KILL");
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// An attached strace; detaches (SIGTERM) when dropped.
pub struct Tracer {
    child: Child,
}

impl Drop for Tracer {
    fn drop(&mut self) {
        signal(self.child.id(), "TERM");
        if wait_for(&mut self.child, Duration::from_secs(10)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Run `usaged ARGS` (under `ulimit -v`) to its end (at most `limit`): status, stdout, stderr.
pub fn run_to_end(args: &[String], limit: Duration) -> (ExitStatus, String, String) {
    let mut child = Command::new("sh")
        .args([
            "-c",
            &format!("ulimit -v {AS_LIMIT_KIB} && exec \"$0\" \"$@\""),
            BIN,
        ])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start usaged");
    let read_all = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = read_all(Box::new(child.stdout.take().expect("stdout")));
    let err = read_all(Box::new(child.stderr.take().expect("stderr")));
    let Some(status) = wait_for(&mut child, limit) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "`usaged {}` still ran after {limit:?}: {}",
            args.join(" "),
            err.join().unwrap()
        );
    };
    (status, out.join().unwrap(), err.join().unwrap())
}

/// Start a server that must refuse to: its exit status and stderr (fails if it listens).
pub fn start_refused(dir: &Path, threads: u32, extra: &[&str]) -> (ExitStatus, String) {
    match launch(Wrap::Limited, &serve_args(dir, threads, extra)) {
        Start::Exited { status, stderr } => (status, stderr),
        Start::Up(mut s) => {
            s.kill9();
            panic!("usaged started where it must refuse to:\n{}", s.log())
        }
    }
}

/// `usaged export --data-dir DIR`: status, stdout, stderr.
pub fn export(dir: &Path) -> (ExitStatus, String, String) {
    run_to_end(
        &[
            "export".into(),
            "--data-dir".into(),
            dir.display().to_string(),
        ],
        Duration::from_secs(30),
    )
}

// ---------------------------------------------------------------------------------------------
// Connections

/// A client connection whose answers a reader thread collects, so a test can wait for the next
/// one with a bound and keep the connection when it did not come.
pub struct Conn {
    pub w: TcpStream,
    rx: Receiver<Response>,
}

/// What came next on a connection.
#[derive(Debug)]
pub enum Got {
    Answer(Response),
    /// Nothing within the bound; the connection is still open.
    Nothing,
    /// The connection ended (EOF, reset, or something that is not HTTP).
    Closed,
}

impl Conn {
    pub fn open(port: u16) -> Conn {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_nodelay(true).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            while let Some(resp) = read_response(&mut r) {
                if tx.send(resp).is_err() {
                    break;
                }
            }
        });
        Conn { w: s, rx }
    }

    /// Write `bytes`; false if the connection would not take them.
    pub fn send(&mut self, bytes: impl AsRef<[u8]>) -> bool {
        self.w.write_all(bytes.as_ref()).is_ok()
    }

    pub fn next(&self, limit: Duration) -> Got {
        match self.rx.recv_timeout(limit) {
            Ok(r) => Got::Answer(r),
            Err(RecvTimeoutError::Timeout) => Got::Nothing,
            Err(RecvTimeoutError::Disconnected) => Got::Closed,
        }
    }

    /// Send one request and expect its answer within `limit`.
    pub fn ask(&mut self, req: &str, limit: Duration) -> Response {
        assert!(self.send(req), "could not send {req:?}");
        match self.next(limit) {
            Got::Answer(r) => r,
            other => panic!(
                "no answer within {limit:?} to {:?}: {other:?}",
                req.lines().next()
            ),
        }
    }

    /// As [`Conn::ask`], also returning how long the answer took.
    pub fn timed(&mut self, req: &str, limit: Duration) -> (Response, Duration) {
        let t = Instant::now();
        let r = self.ask(req, limit);
        (r, t.elapsed())
    }
}

// ---------------------------------------------------------------------------------------------
// The ledger

/// Every usage a test sent and what became of it, over every run of the server.
#[derive(Default, Clone)]
pub struct Ledger {
    /// id → usage, for every `201`: each must read back exactly.
    pub acked: BTreeMap<u64, u64>,
    /// id → usage acknowledged but whose file the test itself deleted: only never reissued.
    pub retired: BTreeMap<u64, u64>,
    /// id → usage found stored (by `export`) though its POST got no answer.
    pub unacked_stored: BTreeMap<u64, u64>,
    /// Usages whose POST got no answer (the connection closed or the server died): each may be
    /// stored (written, answer lost) or not.
    pub unanswered: BTreeSet<u64>,
    /// Usages whose POST got a `503`: never stored.
    pub refused: BTreeSet<u64>,
    next: u64,
}

/// POSTs on one connection, in order, not answered yet.
#[derive(Default)]
pub struct Sent {
    pub pending: VecDeque<u64>,
    pub created: Vec<u64>,
    pub refused: Vec<Response>,
    /// The connection ended with POSTs unanswered.
    pub closed: bool,
}

impl std::fmt::Debug for Sent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let refused: Vec<String> = self.refused.iter().map(|r| r.text()).collect();
        f.debug_struct("Sent")
            .field("created", &self.created)
            .field("refused", &refused)
            .field("pending", &self.pending.len())
            .field("closed", &self.closed)
            .finish()
    }
}

impl Ledger {
    /// A new usage.
    pub fn usage(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    /// `id` was handed out for usage `i`: never before, to anything.
    pub fn ack(&mut self, id: u64, i: u64) {
        assert!(id > 0, "id 0");
        for (what, m) in [
            ("acknowledged", &self.acked),
            ("acknowledged (file since deleted)", &self.retired),
            ("stored", &self.unacked_stored),
        ] {
            if let Some(old) = m.get(&id) {
                panic!(
                    "id {id} handed out twice: for usage {i}, and before {what} for usage {old}"
                );
            }
        }
        self.acked.insert(id, i);
        self.unanswered.remove(&i);
    }

    /// The test deleted the files of every usage acknowledged so far: their ids need not read
    /// back any more, but must never be handed out again.
    pub fn retire_all(&mut self) {
        self.retired.append(&mut self.acked);
    }

    /// As [`Ledger::retire_all`], for one id.
    pub fn retire(&mut self, id: u64) {
        let i = self.acked.remove(&id).expect("an acknowledged id");
        self.retired.insert(id, i);
    }

    /// Post `n` usages pipelined on `c` (one write) and read their answers, each within
    /// `limit`; what did not come stays pending in the result.
    pub fn post(&mut self, c: &mut Conn, n: usize, limit: Duration) -> Sent {
        let mut s = Sent::default();
        let mut bytes = String::new();
        for _ in 0..n {
            let i = self.usage();
            bytes.push_str(&post(&body(i)));
            s.pending.push_back(i);
        }
        // A write that fails leaves answers to read (or a closed connection) all the same.
        let _ = c.send(bytes);
        self.settle(c, &mut s, limit);
        s
    }

    /// Post `n` usages on `c` at once from another thread (the server may stop reading before
    /// it has them all); the answers are left to [`Ledger::settle`].
    pub fn post_deep(&mut self, c: &Conn, n: usize) -> Sent {
        let mut s = Sent::default();
        let mut bytes = String::new();
        for _ in 0..n {
            let i = self.usage();
            bytes.push_str(&post(&body(i)));
            s.pending.push_back(i);
        }
        let mut w = c.w.try_clone().expect("clone the connection");
        std::thread::spawn(move || w.write_all(bytes.as_bytes()));
        s
    }

    /// Read the answers still pending in `s`, each within `limit`.
    pub fn settle(&mut self, c: &Conn, s: &mut Sent, limit: Duration) {
        while let Some(&i) = s.pending.front() {
            match c.next(limit) {
                Got::Answer(r) => {
                    s.pending.pop_front();
                    self.unanswered.remove(&i);
                    self.book(i, r, s);
                }
                Got::Nothing => break,
                Got::Closed => {
                    s.closed = true;
                    break;
                }
            }
        }
        self.unanswered.extend(s.pending.iter().copied());
    }

    fn book(&mut self, i: u64, r: Response, s: &mut Sent) {
        match r.status {
            201 => {
                let id = r.json()["id"].as_u64().expect("id in a 201");
                assert_eq!(
                    r.header("location"),
                    Some(format!("/api/usages/{id}").as_str())
                );
                self.ack(id, i);
                s.created.push(id);
            }
            503 => {
                self.refused.insert(i);
                s.refused.push(r);
            }
            st => panic!("POST of usage {i}: unexpected {st}: {}", r.text()),
        }
    }

    /// Every acknowledged (and every known stored) usage reads back exactly, pipelined.
    pub fn check_reads(&self, s: &Usaged) {
        let all: Vec<(u64, u64)> = self
            .acked
            .iter()
            .chain(&self.unacked_stored)
            .map(|(&id, &i)| (id, i))
            .collect();
        let c = s.conn();
        let mut c = c;
        for chunk in all.chunks(200) {
            let reqs: String = chunk.iter().map(|(id, _)| get(*id)).collect();
            assert!(c.send(reqs), "send GETs");
            for &(id, i) in chunk {
                match c.next(Duration::from_secs(10)) {
                    Got::Answer(r) => {
                        assert_eq!(
                            (r.status, r.text()),
                            (200, stored(id, i)),
                            "GET of acknowledged id {id} (usage {i})"
                        );
                    }
                    other => panic!("GET of id {id}: {other:?}"),
                }
            }
        }
    }

    /// `usaged export` (which must exit 0) lists every acknowledged usage exactly, in id order,
    /// and nothing else but usages whose POST got no answer (written, the answer lost: they
    /// are booked as stored) or whose file the test deleted.
    pub fn check_export(&mut self, dir: &Path) {
        let (status, out, err) = export(dir);
        assert!(status.success(), "usaged export: {status}\n{err}");
        let mut seen = BTreeSet::new();
        let mut last = 0;
        for line in out.lines() {
            let id = serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v["id"].as_u64())
                .unwrap_or_else(|| panic!("export line {line:?}"));
            assert!(id > last, "export not in id order: {id} after {last}");
            last = id;
            seen.insert(id);
            let known = [&self.acked, &self.unacked_stored, &self.retired]
                .into_iter()
                .find_map(|m| m.get(&id).copied());
            if let Some(i) = known {
                assert_eq!(line, stored(id, i), "export of id {id}");
                continue;
            }
            let i = usage_of(line).unwrap_or_else(|| panic!("export lists a stranger: {line}"));
            assert!(
                self.unanswered.contains(&i),
                "export lists id {id}, usage {i}, whose POST was {}",
                if self.refused.contains(&i) {
                    "answered 503"
                } else {
                    "never sent, or answered with another id"
                }
            );
            assert_eq!(line, stored(id, i), "export of id {id}");
            assert!(
                !self.unacked_stored.values().any(|&j| j == i),
                "usage {i} stored twice"
            );
            self.unacked_stored.insert(id, i);
            self.unanswered.remove(&i);
        }
        let missing: Vec<u64> = self
            .acked
            .keys()
            .chain(self.unacked_stored.keys())
            .filter(|id| !seen.contains(id))
            .copied()
            .collect();
        assert!(
            missing.is_empty(),
            "export misses {} acknowledged ids, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
    }

    /// After a fault: a plain restart serves every acknowledged usage exactly, new POSTs get
    /// ids never handed out before, SIGTERM exits 0, and `export` lists exactly what is stored.
    pub fn verify(&mut self, dir: &Path, threads: u32) {
        let mut s = Usaged::start(dir, threads, &[]);
        self.check_reads(&s);
        let mut c = s.conn();
        let sent = self.post(&mut c, 20, Duration::from_secs(10));
        assert_eq!(
            sent.created.len(),
            20,
            "POSTs after the restart: {sent:?}\n{}",
            s.log()
        );
        self.check_reads(&s);
        drop(c);
        s.stop_ok();
        self.check_export(dir);
    }
}

// ---------------------------------------------------------------------------------------------
// Files

/// A fresh, empty data directory (removed when dropped).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let d = temp_data_dir();
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `*.seg` files of `dir`, by name.
pub fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

/// A copy of the data directory `from` (its files; the lock file too).
pub fn copy_dir(from: &Path) -> TempDir {
    let to = TempDir::new();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, to.path().join(p.file_name().unwrap())).unwrap();
    }
    to
}

/// A tmpfs of `size` (e.g. `2m`) mounted on a fresh directory, unmounted when dropped
/// (also when the test panics). `None` when mounting is impossible and `USAGED_SKIP_TMPFS=1`.
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    pub fn mount(size: &str) -> Option<Tmpfs> {
        let path = temp_data_dir();
        std::fs::create_dir_all(&path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { path }),
            other => {
                let _ = std::fs::remove_dir(&path);
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                    Err(e) => e.to_string(),
                };
                if std::env::var("USAGED_SKIP_TMPFS").as_deref() == Ok("1") {
                    println!("SKIPPED: cannot mount a tmpfs ({why}) and USAGED_SKIP_TMPFS=1");
                    return None;
                }
                panic!(
                    "cannot mount a tmpfs ({why}): this test needs root; set USAGED_SKIP_TMPFS=1 to skip"
                );
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}
