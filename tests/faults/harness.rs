//! The harness of the fault-injection suite (`tests/faults.rs`, `tests/faults_disk.rs`): start
//! `usaged` (under strace, or with an address-space limit, when a test asks), keep its stderr,
//! speak pipelined HTTP on connections whose answers a reader thread collects, and make data
//! directories (plain, copied, or on a small tmpfs). What a test checks is in `ledger.rs`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use crate::util::{Response, read_response, temp_data_dir};

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
// The server

/// How the binary is started.
pub enum Wrap {
    Plain,
    /// Under strace with these options (`-f -o /dev/null` are added).
    Strace(Vec<String>),
    /// With `ulimit -v AS_LIMIT_KIB`.
    Limited,
    /// With these environment variables set.
    Env(Vec<(String, String)>),
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
        Wrap::Env(vars) => {
            let mut c = Command::new(BIN);
            c.envs(vars.iter().map(|(k, v)| (k, v)));
            c
        }
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
        Wrap::Plain | Wrap::Limited | Wrap::Env(_) => child.id(),
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
        Usaged::up(Wrap::Plain, &serve_args(dir, threads, extra))
    }

    /// A server that must come up, started as `wrap` says.
    pub fn up(wrap: Wrap, args: &[String]) -> Usaged {
        match launch(wrap, args) {
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

pub use crate::util::segments;

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

/// strace options: SIGKILL at the `when`-th call of each of `set` on `paths`.
pub fn kill_at(set: &str, when: u32, paths: &[String]) -> Vec<String> {
    let mut o = vec![
        "-e".to_string(),
        format!("trace={set}"),
        "-e".to_string(),
        format!("inject={set}:signal=SIGKILL:when={when}"),
    ];
    for p in paths {
        o.push("-P".into());
        o.push(p.clone());
    }
    o
}
