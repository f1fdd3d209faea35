//! Helpers that make each integration test read like the spec: start the real binary on
//! `--port 0`, speak raw bytes, read answers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const README_BODY: &str = r#"{"patientId":"100","timestamp":"Tue Nov 01 2016 09:11:51 GMT-0500 (CDT)","medication":"Albuterol"}"#;

/// A running `usaged`, stopped with SIGTERM when dropped.
pub struct Server {
    pub child: Child,
    pub port: u16,
    /// The journal directory; removed on drop unless the test keeps it.
    pub data_dir: PathBuf,
    pub keep_data: bool,
}

/// What `usaged export --data-dir DIR` prints, checked to exit 0 (the journal of a stopped
/// server; `usaged export` changes nothing in it).
pub fn export_text(dir: &Path) -> String {
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
    String::from_utf8(out.stdout).expect("export prints UTF-8")
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

/// A fresh directory for a server's journal.
pub fn temp_data_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "usaged-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    d
}

impl Server {
    /// `--port 0 --threads 4 --no-pin` plus `extra`; returns once `listening on` was printed.
    pub fn start(extra: &[&str]) -> Server {
        Server::start_limited(None, extra)
    }

    /// As [`Server::start`], with the open-file limit (soft and hard) set to `nofile` first.
    pub fn start_limited(nofile: Option<u32>, extra: &[&str]) -> Server {
        Server::start_with(nofile, &temp_data_dir(), extra)
    }

    /// As [`Server::start`], with its journal in `data_dir` (kept after the server stops).
    pub fn start_in(data_dir: &Path, extra: &[&str]) -> Server {
        let mut s = Server::start_with(None, data_dir, extra);
        s.keep_data = true;
        s
    }

    fn start_with(nofile: Option<u32>, data_dir: &Path, extra: &[&str]) -> Server {
        let mut cmd = match nofile {
            None => Command::new(env!("CARGO_BIN_EXE_usaged")),
            Some(n) => {
                let mut c = Command::new("sh");
                c.args([
                    "-c",
                    &format!("ulimit -n {n} && exec \"$0\" \"$@\""),
                    env!("CARGO_BIN_EXE_usaged"),
                ]);
                c
            }
        };
        let mut child = cmd
            .args([
                "--port",
                "0",
                "--threads",
                "4",
                "--no-pin",
                "--bind",
                "127.0.0.1",
                "--data-dir",
            ])
            .arg(data_dir)
            .args(extra)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start usaged");
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        // Configuration lines come first; the server is ready at `listening on`.
        while !line.starts_with("listening on") {
            line.clear();
            assert_ne!(
                stderr.read_line(&mut line).expect("read startup line"),
                0,
                "usaged exited before listening"
            );
        }
        assert!(
            line.starts_with("listening on 127.0.0.1:"),
            "startup line: {line:?}"
        );
        assert!(
            line.trim_end().ends_with(" workers)"),
            "startup line: {line:?}"
        );
        let port = line["listening on 127.0.0.1:".len()..]
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        Server {
            child,
            port,
            data_dir: data_dir.to_path_buf(),
            keep_data: false,
        }
    }

    pub fn connect(&self) -> Client {
        let s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        Client {
            reader: BufReader::new(s.try_clone().unwrap()),
            stream: s,
        }
    }

    /// SIGTERM, then the exit status (killed after 15 s).
    pub fn stop(&mut self) -> ExitStatus {
        // `kill(1)` keeps the tests free of `unsafe`.
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                self.child.kill().unwrap();
                panic!("server did not exit within 15 s of SIGTERM");
            }
            // Polling for exit (bounded above), not waiting for readiness.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Server {
    /// Open file descriptors of the server process.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Resident memory of the server process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .unwrap()
            .trim()
            .trim_end_matches(" kB")
            .parse()
            .unwrap()
    }

    /// CPU time (user + system, all threads) the server has used so far.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after_name.split(' ').collect();
        // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
    }

    /// Wait (bounded) until `cond` holds, polling; panics with `what` after `limit`.
    pub fn wait_until(&self, limit: Duration, what: &str, mut cond: impl FnMut(&Server) -> bool) {
        let deadline = Instant::now() + limit;
        while !cond(self) {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if !self.keep_data {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).unwrap()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.text()))
    }

    /// The `error` of a JSON error body.
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .expect("error body")
            .to_string()
    }
}

pub struct Client {
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    pub fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.stream.write_all(bytes.as_ref()).expect("send");
    }

    /// Read one answer (a `HEAD` answer has no body, whatever its Content-Length says).
    pub fn read(&mut self, head_request: bool) -> Response {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("status line");
        assert!(
            line.starts_with("HTTP/1.1 ") && line.ends_with("\r\n"),
            "status line {line:?}"
        );
        let status = line[9..12].parse().unwrap();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            self.reader.read_line(&mut h).expect("header line");
            if h == "\r\n" {
                break;
            }
            let (n, v) = h
                .trim_end()
                .split_once(": ")
                .unwrap_or_else(|| panic!("header {h:?}"));
            headers.push((n.to_string(), v.to_string()));
        }
        let mut r = Response {
            status,
            headers,
            body: Vec::new(),
        };
        if status >= 200 && !head_request {
            let len: usize = r
                .header("content-length")
                .expect("Content-Length")
                .parse()
                .unwrap();
            r.body = vec![0; len];
            self.reader.read_exact(&mut r.body).expect("body");
        }
        r
    }

    pub fn request(&mut self, bytes: impl AsRef<[u8]>) -> Response {
        let head = bytes.as_ref().starts_with(b"HEAD ");
        self.send(bytes);
        self.read(head)
    }

    /// The server closed the connection: EOF (or a reset) and nothing else.
    pub fn assert_closed(&mut self) {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => assert!(
                rest.is_empty(),
                "unexpected bytes before close: {:?}",
                String::from_utf8_lossy(&rest)
            ),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
    }
}

/// One answer from a buffered reader, or `None` when the connection ended first.
pub fn read_response(r: &mut BufReader<TcpStream>) -> Option<Response> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let status = line.get(9..12)?.parse().ok()?;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        if h == "\r\n" {
            break;
        }
        let (n, v) = h.trim_end().split_once(": ")?;
        headers.push((n.to_string(), v.to_string()));
    }
    let mut resp = Response {
        status,
        headers,
        body: Vec::new(),
    };
    let len: usize = resp.header("content-length")?.parse().ok()?;
    resp.body = vec![0; len];
    r.read_exact(&mut resp.body).ok()?;
    Some(resp)
}

pub fn post(body: &str) -> String {
    format!(
        "POST /api/usages HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

pub fn get(id: u64) -> String {
    format!("GET /api/usages/{id} HTTP/1.1\r\nHost: t\r\n\r\n")
}
