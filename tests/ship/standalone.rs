//! The standalone shipper, `usaged ship --data-dir DIR --to URL`, as a child process whose
//! stderr is kept.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::{BIN, signal};

pub struct Shipper {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Shipper {
    /// `usaged ship --data-dir DIR [--to URL]` with `env` set.
    pub fn start(dir: &Path, url: Option<&str>, env: &[(&str, &str)]) -> Shipper {
        let mut cmd = Command::new(BIN);
        cmd.args(["ship", "--data-dir"]).arg(dir);
        if let Some(url) = url {
            cmd.args(["--to", url]);
        }
        let mut child = cmd
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start usaged ship");
        let log = Arc::new(Mutex::new(Vec::new()));
        let keep = Arc::clone(&log);
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                keep.lock().unwrap().push(line);
            }
        });
        Shipper { child, log }
    }

    /// Everything it printed on stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// SIGKILL, and wait for it to go.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        self.child.wait().expect("wait for usaged ship");
    }

    /// SIGTERM, then its exit status (at most 15 s).
    pub fn stop(&mut self) -> ExitStatus {
        signal(self.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "usaged ship did not exit within 15 s of SIGTERM:\n{}",
                self.log()
            );
            // Polling for an exit, bounded above.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Shipper {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
