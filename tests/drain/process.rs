//! A usaged process the drain tests stop, restart and read the log of.

use super::*;

// ---------------------------------------------------------------------------------------------
// A usaged process we can stop, restart on the same port, and whose stderr we keep.

pub struct Usaged {
    pub child: Child,
    pub port: u16,
    pub dir: PathBuf,
    pub args: Vec<String>,
    pub log: Arc<Mutex<String>>,
}

impl Usaged {
    /// `usaged --port PORT --bind 127.0.0.1 --no-pin --data-dir DIR ARGS`; returns at its
    /// `listening on` line (bounded: 30 s).
    pub fn start(dir: &Path, port: u16, args: &[&str]) -> Usaged {
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
    pub fn restart(&self) -> Usaged {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        Usaged::start(&self.dir, self.port, &args)
    }

    pub fn sigterm(&self) {
        signal(self.child.id(), "TERM");
    }

    /// The exit status, at most `limit` after now (killed and panicking after it).
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
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
    pub fn stop(&mut self, limit: Duration) {
        self.sigterm();
        let st = self.wait_exit(limit);
        assert!(
            st.success(),
            "usaged exited with {st}:\n{}",
            self.log.lock().unwrap()
        );
    }

    pub fn log(&self) -> String {
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

pub fn signal(pid: u32, sig: &str) {
    // `kill(1)` keeps the tests free of signal `unsafe`.
    let st = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(st.success(), "kill -{sig} {pid}: {st}");
}

/// A journal directory removed at the end of the test.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        TempDir(temp_data_dir())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
