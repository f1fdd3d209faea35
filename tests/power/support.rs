//! The power-loss tests' parts: a FUSE disk that loses power (`examples/powerfs.rs`), a
//! usaged process on it, and clients that record every acknowledgement.

use super::*;

/// Whether the FUSE tests can run here; panics with what is missing, unless skipped.
pub fn fuse_ready() -> bool {
    if std::env::var("USAGED_SKIP_FUSE").as_deref() == Ok("1") {
        eprintln!("SKIPPED: USAGED_SKIP_FUSE=1 (power-loss tests need FUSE)");
        return false;
    }
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: the power-loss tests need FUSE (or set USAGED_SKIP_FUSE=1)"
    );
    let fusermount = Command::new("fusermount3").arg("-V").output();
    assert!(
        fusermount.is_ok_and(|o| o.status.success()),
        "fusermount3 not found: `apt-get install fuse3` (or set USAGED_SKIP_FUSE=1)"
    );
    assert!(
        powerfs_bin().exists(),
        "{} is missing: `cargo build --example powerfs` (plain `cargo test` builds it)",
        powerfs_bin().display()
    );
    true
}

/// `target/<profile>/examples/powerfs`, beside this test's `deps/` folder.
pub fn powerfs_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .join("examples/powerfs")
}

/// A disk that can lose power: powerfs mounted on `mnt`, its durable state in `backing`.
pub struct Disk {
    pub root: PathBuf,
    pub backing: PathBuf,
    pub mnt: PathBuf,
    pub fs: Option<(Child, mpsc::Receiver<String>)>,
}

/// Lines of a child's stderr, sent as they come; the channel closes at EOF.
pub fn stderr_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let stderr = BufReader::new(child.stderr.take().expect("piped stderr"));
    std::thread::spawn(move || {
        for line in stderr.lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Wait (bounded) for a line starting with `prefix`; `Err` with every line read if the stream
/// ended or timed out first.
pub fn wait_for_line(rx: &mpsc::Receiver<String>, prefix: &str) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.starts_with(prefix) => return Ok(line),
            Ok(line) => seen.push(line),
            Err(e) => {
                return Err(format!(
                    "{e:?} before {prefix:?}; stderr:\n    {}",
                    seen.join("\n    ")
                ));
            }
        }
    }
}

impl Disk {
    pub fn new() -> Disk {
        static N: AtomicUsize = AtomicUsize::new(0);
        let root = std::env::temp_dir().join(format!(
            "usaged-power-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&root);
        let (backing, mnt) = (root.join("backing"), root.join("mnt"));
        std::fs::create_dir_all(&backing).unwrap();
        std::fs::create_dir_all(&mnt).unwrap();
        Disk {
            root,
            backing,
            mnt,
            fs: None,
        }
    }

    /// Mount powerfs with `model` (see examples/powerfs.rs): what BACKING holds is durable.
    pub fn power_on(&mut self, model: &str) {
        assert!(self.fs.is_none());
        let mut child = Command::new(powerfs_bin())
            .args(["--model", model])
            .arg(&self.backing)
            .arg(&self.mnt)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start powerfs");
        let rx = stderr_lines(&mut child);
        if let Err(e) = wait_for_line(&rx, "powerfs: mounted") {
            let _ = child.kill();
            panic!("powerfs did not mount: {e}");
        }
        self.fs = Some((child, rx));
    }

    /// Lose power: the mount's files go back to what was fsynced. Every process using the mount
    /// must be dead. Returns powerfs's report.
    pub fn lose_power(&mut self) -> String {
        let (mut child, rx) = self.fs.take().expect("powered on");
        kill(&child, "-USR1");
        let report = wait_for_line(&rx, "powerfs: power lost");
        let status = child.wait().unwrap();
        let report = report.unwrap_or_else(|e| panic!("powerfs: {e}"));
        assert!(status.success(), "powerfs exited with {status}");
        assert!(!report.contains("FAILED"), "{report}");
        report
    }

    pub fn data_dir(&self) -> PathBuf {
        self.mnt.join("data")
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        if let Some((mut child, _)) = self.fs.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("fusermount3")
            .args(["-u", "-z", "-q", "--"])
            .arg(&self.mnt)
            .stderr(Stdio::null())
            .status();
        if std::thread::panicking() && std::env::var_os("USAGED_KEEP_POWER_DIR").is_some() {
            // For a post-mortem: `backing/data` is the data directory as the power loss left it.
            eprintln!("kept {}", self.backing.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

pub fn kill(child: &Child, signal: &str) {
    // `kill(1)` keeps the tests free of `unsafe`.
    let st = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill {signal}");
}

/// A running usaged; killed (SIGKILL) when dropped.
pub struct Usaged {
    pub child: Child,
    pub port: u16,
}

impl Usaged {
    /// `--threads 2 --no-pin --port 0 --data-dir DIR --sync SYNC` plus `extra`, up to its
    /// `listening on` line; `Err` with its stderr and exit status when it does not get there.
    pub fn start(dir: &Path, sync: &str, extra: &[&str]) -> Result<Usaged, String> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_usaged"))
            .args([
                "--port",
                "0",
                "--bind",
                "127.0.0.1",
                "--threads",
                "2",
                "--no-pin",
            ])
            .arg("--data-dir")
            .arg(dir)
            .args(["--sync", sync])
            .args(extra)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start usaged");
        let rx = stderr_lines(&mut child);
        let line = match wait_for_line(&rx, "listening on") {
            Ok(line) => line,
            Err(e) => {
                let _ = child.kill();
                let status = child.wait().unwrap();
                return Err(format!("usaged ({status}): {e}"));
            }
        };
        let port = line
            .strip_prefix("listening on 127.0.0.1:")
            .and_then(|rest| rest.split(' ').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("startup line {line:?}"));
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || rx.into_iter().for_each(drop));
        Ok(Usaged { child, port })
    }

    pub fn connect(&self) -> (TcpStream, BufReader<TcpStream>) {
        let s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        let r = BufReader::new(s.try_clone().unwrap());
        (s, r)
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM; the exit status must be 0 within 15 s.
    pub fn stop(mut self) {
        kill(&self.child, "-TERM");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(st.success(), "usaged exited with {st} after SIGTERM");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "usaged still running 15 s after SIGTERM"
            );
            // Polling for exit (bounded above), not waiting for readiness.
            std::thread::sleep(Duration::from_millis(10));
        }
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

/// One acknowledged usage.
pub struct Ack {
    /// The answer `GET /api/usages/{id}` must give, byte for byte.
    pub body: String,
    pub at: Instant,
    pub sync: &'static str,
    /// When it was acknowledged (`round` of the scenario, for messages).
    pub round: usize,
    /// Promised to survive every later power loss (set at each loss, as `--sync` says, and
    /// once it has read back after a loss).
    pub durable: bool,
    /// Read back after the last power loss.
    pub present: bool,
    /// Read back (or found lost) once: later losses are checked by the final export.
    pub checked: bool,
}

/// A usage that names its round, client and sequence number, and its expected `GET` body.
pub fn usage(round: usize, client: usize, k: u64) -> (String, impl Fn(u64) -> String) {
    let patient = format!("r{round}c{client}k{k}");
    let ts = format!("2016-11-01T09:{:02}:{:02}-05:00", k / 60 % 60, k % 60);
    let med = format!("M{}", k % 89);
    let body = format!(r#"{{"patientId":"{patient}","timestamp":"{ts}","medication":"{med}"}}"#);
    let expect = move |id: u64| {
        format!(r#"{{"id":{id},"patientId":"{patient}","timestamp":"{ts}","medication":"{med}"}}"#)
    };
    (body, expect)
}

/// Post on one connection in batches of `depth` pipelined requests until `stop` or the
/// connection ends; `(id, expected body, when)` of every `201`.
pub fn client(
    port: u16,
    round: usize,
    c: usize,
    depth: u64,
    stop: &AtomicBool,
) -> Vec<(u64, String, Instant)> {
    let mut acks = Vec::new();
    let Ok(s) = TcpStream::connect(("127.0.0.1", port)) else {
        return acks;
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_nodelay(true).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut k = 0;
    while !stop.load(Ordering::Relaxed) {
        let batch: Vec<_> = (k..k + depth).map(|k| usage(round, c, k)).collect();
        k += depth;
        let bytes: String = batch.iter().map(|(b, _)| post(b)).collect();
        if w.write_all(bytes.as_bytes()).is_err() {
            break;
        }
        if depth >= 1000 {
            // A slow reader: the server's output fills while it goes on reading requests (the
            // "201 before the journal write" path of issue 9's case 1).
            std::thread::sleep(Duration::from_millis(10));
        }
        for (_, expect) in &batch {
            let Some(resp) = read_response(&mut r) else {
                return acks;
            };
            if resp.status == 201 {
                let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
                let id = v["id"].as_u64().expect("201 body {\"id\":N}");
                acks.push((id, expect(id), Instant::now()));
            }
        }
    }
    acks
}
