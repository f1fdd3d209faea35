//! Power loss (issue 9, case 11): usaged runs on powerfs (`examples/powerfs.rs`, a FUSE file
//! system that throws away everything not yet fsynced when told to lose power) under load from
//! several clients; then `kill -9`, power loss, "reboot" (powerfs mounted again on what was
//! durable) and usaged started again on what is left. After each loss:
//!
//! - the data directory starts again (never a file that bricks it);
//! - every acknowledged usage that `--sync` promises reads back with its exact body: under
//!   `always` all of them, under `interval` all those acknowledged more than 1.5 s before the
//!   loss (the README's "about the last second", with room for a loaded machine), under `never`
//!   none; a usage that read back once after a loss is durable and must survive later losses;
//! - no id is ever handed out twice, lost ones included: the new POSTs after each restart, and
//!   all the load of later rounds, get ids never acknowledged before;
//! - at the end (after a clean stop), `usaged export` lists every usage that reads back, with
//!   the same body, and none of the lost ones (it may list usages that were written but whose
//!   `201` never arrived: a `kill -9` can come between the write and the answer).
//!
//! Needs `/dev/fuse`, `fusermount3` (Debian's `fuse3`) and root (or `user_allow_other`-free FUSE
//! mounts), and `target/<profile>/examples/powerfs`, which `cargo test` builds (a bare
//! `cargo test --test power` does not: `cargo build --example powerfs` first). Without them the
//! tests fail, unless `USAGED_SKIP_FUSE=1` is set. `USAGED_KEEP_POWER_DIR=1` keeps the disk of
//! a failed test (its path is printed) for a post-mortem.

mod util;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use util::{get, post, read_response};

/// How old an acknowledgement must be at the power loss for `--sync interval` to keep it.
const INTERVAL_PROMISE: Duration = Duration::from_millis(1500);

/// Whether the FUSE tests can run here; panics with what is missing, unless skipped.
fn fuse_ready() -> bool {
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
fn powerfs_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .join("examples/powerfs")
}

/// A disk that can lose power: powerfs mounted on `mnt`, its durable state in `backing`.
struct Disk {
    root: PathBuf,
    backing: PathBuf,
    mnt: PathBuf,
    fs: Option<(Child, mpsc::Receiver<String>)>,
}

/// Lines of a child's stderr, sent as they come; the channel closes at EOF.
fn stderr_lines(child: &mut Child) -> mpsc::Receiver<String> {
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
fn wait_for_line(rx: &mpsc::Receiver<String>, prefix: &str) -> Result<String, String> {
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
    fn new() -> Disk {
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
    fn power_on(&mut self, model: &str) {
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
    fn lose_power(&mut self) -> String {
        let (mut child, rx) = self.fs.take().expect("powered on");
        kill(&child, "-USR1");
        let report = wait_for_line(&rx, "powerfs: power lost");
        let status = child.wait().unwrap();
        let report = report.unwrap_or_else(|e| panic!("powerfs: {e}"));
        assert!(status.success(), "powerfs exited with {status}");
        assert!(!report.contains("FAILED"), "{report}");
        report
    }

    fn data_dir(&self) -> PathBuf {
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

fn kill(child: &Child, signal: &str) {
    // `kill(1)` keeps the tests free of `unsafe`.
    let st = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill {signal}");
}

/// A running usaged; killed (SIGKILL) when dropped.
struct Usaged {
    child: Child,
    port: u16,
}

impl Usaged {
    /// `--threads 2 --no-pin --port 0 --data-dir DIR --sync SYNC` plus `extra`, up to its
    /// `listening on` line; `Err` with its stderr and exit status when it does not get there.
    fn start(dir: &Path, sync: &str, extra: &[&str]) -> Result<Usaged, String> {
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

    fn connect(&self) -> (TcpStream, BufReader<TcpStream>) {
        let s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        let r = BufReader::new(s.try_clone().unwrap());
        (s, r)
    }

    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM; the exit status must be 0 within 15 s.
    fn stop(mut self) {
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
struct Ack {
    /// The answer `GET /api/usages/{id}` must give, byte for byte.
    body: String,
    at: Instant,
    sync: &'static str,
    /// When it was acknowledged (`round` of the scenario, for messages).
    round: usize,
    /// Promised to survive every later power loss (set at each loss, as `--sync` says, and
    /// once it has read back after a loss).
    durable: bool,
    /// Read back after the last power loss.
    present: bool,
    /// Read back (or found lost) once: later losses are checked by the final export.
    checked: bool,
}

/// A usage that names its round, client and sequence number, and its expected `GET` body.
fn usage(round: usize, client: usize, k: u64) -> (String, impl Fn(u64) -> String) {
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
fn client(
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

/// A `--data-dir` on a disk that loses power, and every usage ever acknowledged in it.
struct Scenario {
    disk: Disk,
    extra: Vec<&'static str>,
    acks: HashMap<u64, Ack>,
    name: String,
    /// When the server was last killed.
    killed_at: Instant,
}

impl Scenario {
    fn new(name: &str, model: &str, extra: &[&'static str]) -> Scenario {
        let mut disk = Disk::new();
        disk.power_on(model);
        // The operator's `mkdir`, made durable (the directory's entry is in the mount's root).
        std::fs::create_dir(disk.data_dir()).unwrap();
        std::fs::File::open(&disk.mnt).unwrap().sync_all().unwrap();
        Scenario {
            disk,
            extra: extra.to_vec(),
            acks: HashMap::new(),
            name: name.to_string(),
            killed_at: Instant::now(),
        }
    }

    fn start(&self, sync: &str, after: &str) -> Usaged {
        Usaged::start(&self.disk.data_dir(), sync, &self.extra).unwrap_or_else(|e| {
            panic!(
                "{}: the data directory does not start {after}: {e}\nits files: {}",
                self.name,
                self.listing()
            )
        })
    }

    /// The data directory's files (the last 16 by name) and their sizes, for a failure message.
    fn listing(&self) -> String {
        let mut files: Vec<(String, u64)> = std::fs::read_dir(self.disk.data_dir())
            .map(|d| {
                d.flatten()
                    .map(|e| {
                        let len = e.metadata().map_or(0, |m| m.len());
                        (e.file_name().to_string_lossy().into_owned(), len)
                    })
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        let skip = files.len().saturating_sub(16);
        let shown: Vec<String> = files[skip..]
            .iter()
            .map(|(n, len)| format!("{n} ({len} B)"))
            .collect();
        format!("{} files; ... {}", files.len(), shown.join(", "))
    }

    /// Record `201`s; an id given before is the broken promise this file is about.
    fn acknowledged(
        &mut self,
        acks: Vec<(u64, String, Instant)>,
        sync: &'static str,
        round: usize,
    ) {
        for (id, body, at) in acks {
            if let Some(old) = self.acks.get(&id) {
                panic!(
                    "{}: id {id} handed out twice: acknowledged in round {} (--sync {}, {}) \
                     and again in round {round}",
                    self.name,
                    old.round,
                    old.sync,
                    if old.present {
                        "still stored"
                    } else {
                        "lost in a power loss"
                    }
                );
            }
            let ack = Ack {
                body,
                at,
                sync,
                round,
                durable: false,
                present: true,
                checked: false,
            };
            self.acks.insert(id, ack);
        }
    }

    /// Load from `clients` connections for `load`, then `kill -9` and a power loss; then
    /// powerfs mounted again with `model` and usaged started with `next_sync`.
    fn crash_under_load(
        &mut self,
        s: Usaged,
        sync: &'static str,
        round: usize,
        load: Duration,
        next: (&str, &'static str),
    ) -> Usaged {
        let stop = AtomicBool::new(false);
        let port = s.port;
        // One deep pipeliner (the `201`-before-write path of issue 9's case 1), one shallow,
        // one request at a time.
        let depths = [3000, 3000, 8, 1];
        let (acks, killed_at) = std::thread::scope(|scope| {
            let clients: Vec<_> = depths
                .iter()
                .enumerate()
                .map(|(c, &depth)| {
                    let stop = &stop;
                    scope.spawn(move || client(port, round, c, depth, stop))
                })
                .collect();
            // The moment of the crash (not waiting for readiness).
            std::thread::sleep(load);
            let killed_at = Instant::now();
            s.kill9();
            stop.store(true, Ordering::Relaxed);
            let acks: Vec<_> = clients
                .into_iter()
                .flat_map(|c| c.join().unwrap())
                .collect();
            (acks, killed_at)
        });
        let n = acks.len();
        self.acknowledged(acks, sync, round);
        // What this loss may take: decided by the mode each usage was acknowledged under.
        self.killed_at = killed_at;
        for a in self.acks.values_mut().filter(|a| a.present) {
            a.durable |= match a.sync {
                "always" => true,
                "interval" => a.at + INTERVAL_PROMISE <= killed_at,
                _ => false,
            };
        }
        let report = self.disk.lose_power();
        self.disk.power_on(next.0);
        let s = self.start(next.1, &format!("after the power loss of round {round}"));
        eprintln!(
            "{} round {round}: --sync {sync}, {n} acknowledged in {load:?}; {report}",
            self.name
        );
        s
    }

    /// GET every id acknowledged since the last check: a durable one must read back; whatever
    /// reads back has its exact body, and is durable from here on (the final export checks
    /// that it stays).
    fn check_reads(&mut self, s: &Usaged, round: usize) {
        let (mut w, mut r) = s.connect();
        let mut ids: Vec<u64> = (self.acks.iter())
            .filter(|(_, a)| !a.checked)
            .map(|(&id, _)| id)
            .collect();
        ids.sort_unstable();
        let mut lost = 0;
        let mut broken = Vec::new();
        for chunk in ids.chunks(500) {
            let reqs: String = chunk.iter().map(|&id| get(id)).collect();
            w.write_all(reqs.as_bytes()).unwrap();
            for id in chunk {
                let resp = read_response(&mut r).expect("GET answered");
                let a = self.acks.get_mut(id).unwrap();
                a.checked = true;
                match resp.status {
                    200 => {
                        assert_eq!(
                            String::from_utf8_lossy(&resp.body),
                            a.body,
                            "{}: id {id} reads back another usage",
                            self.name
                        );
                        a.durable = true;
                    }
                    404 => {
                        if a.durable {
                            let before = self.killed_at.saturating_duration_since(a.at);
                            broken.push(format!(
                                "id {id} (round {}, --sync {}, acknowledged {} ms before the \
                                 kill)",
                                a.round,
                                a.sync,
                                before.as_millis()
                            ));
                        }
                        lost += 1;
                        a.present = false;
                    }
                    st => panic!("{}: GET {id}: {st}", self.name),
                }
            }
        }
        eprintln!(
            "{} round {round}: {} acknowledged since the last loss, {lost} of them lost",
            self.name,
            ids.len()
        );
        assert!(
            broken.is_empty(),
            "{}: the power loss of round {round} took {} usages that --sync promised to keep: \
             {}{}",
            self.name,
            broken.len(),
            broken[..broken.len().min(5)].join(", "),
            if broken.len() > 5 { ", ..." } else { "" }
        );
    }

    /// New POSTs after a restart (several connections, so every worker takes some): none may
    /// get an id acknowledged before, even a lost one.
    fn post_after_restart(&mut self, s: &Usaged, sync: &'static str, round: usize) {
        for c in 0..4 {
            let (mut w, mut r) = s.connect();
            let batch: Vec<_> = (0..25).map(|k| usage(round, 100 + c, k)).collect();
            let reqs: String = batch.iter().map(|(b, _)| post(b)).collect();
            w.write_all(reqs.as_bytes()).unwrap();
            let mut acks = Vec::new();
            for (_, expect) in &batch {
                let resp = read_response(&mut r).expect("POST answered");
                assert_eq!(resp.status, 201, "{}: POST after restart", self.name);
                let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
                let id = v["id"].as_u64().unwrap();
                acks.push((id, expect(id), Instant::now()));
            }
            self.acknowledged(acks, sync, round);
        }
    }

    /// Clean stop, then `usaged export`: exactly the usages that read back, same bodies, plus
    /// possibly some that were written but never acknowledged.
    fn check_export(&self, s: Usaged) {
        s.stop();
        let out = Command::new(env!("CARGO_BIN_EXE_usaged"))
            .arg("export")
            .arg("--data-dir")
            .arg(self.disk.data_dir())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: export: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        let mut seen = HashSet::new();
        for line in String::from_utf8(out.stdout).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let id = v["id"].as_u64().unwrap();
            assert!(seen.insert(id), "{}: export lists id {id} twice", self.name);
            if let Some(a) = self.acks.get(&id) {
                assert!(a.present, "{}: export lists lost id {id}", self.name);
                assert_eq!(line, a.body, "{}: export of id {id}", self.name);
            }
        }
        for (id, a) in &self.acks {
            assert!(
                !a.present || seen.contains(id),
                "{}: id {id} read back after a power loss, and export misses it",
                self.name
            );
        }
    }
}

/// `rounds` power losses under load with `--sync sync` on a `model` disk.
fn power_losses(sync: &'static str, model: &str, loads: &[Duration]) {
    if !fuse_ready() {
        return;
    }
    let mut sc = Scenario::new(&format!("--sync {sync}"), model, &[]);
    let mut s = sc.start(sync, "at first");
    for (round, &load) in loads.iter().enumerate() {
        s = sc.crash_under_load(s, sync, round, load, (model, sync));
        sc.check_reads(&s, round);
        sc.post_after_restart(&s, sync, round + 1);
    }
    sc.check_export(s);
}

#[test]
fn power_loss_with_sync_always_loses_no_acknowledged_usage() {
    let loads = [600, 900, 300, 700, 1000, 400, 800, 200].map(Duration::from_millis);
    power_losses("always", "posix", &loads);
}

#[test]
fn power_loss_with_sync_interval_loses_only_the_last_second() {
    let loads = [2500, 1800, 2200].map(Duration::from_millis);
    power_losses("interval", "posix", &loads);
}

#[test]
fn power_loss_with_sync_never_still_starts_and_reuses_no_id() {
    let loads = [800, 1200].map(Duration::from_millis);
    power_losses("never", "ext4", &loads);
}

/// Segments of 4 KiB roll every few dozen records: losses at several moments (right after the
/// start, when every worker creates a segment, then at various points of the load): 11 losses,
/// each `--sync` mode and each powerfs model in turn. The directory must always start again.
#[test]
fn power_loss_around_segment_creation_never_bricks_the_data_directory() {
    if !fuse_ready() {
        return;
    }
    let syncs = ["always", "interval", "never"];
    let models = ["ext4", "posix", "eager"];
    let loads = [0, 40, 120, 250, 400, 600, 850, 1100, 200, 500, 300];
    let mut sc = Scenario::new("segments", models[0], &["--segment-size", "4096"]);
    let mut s = sc.start(syncs[0], "at first");
    for (round, &ms) in loads.iter().enumerate() {
        let sync = syncs[round % 3];
        let next = (models[(round + 1) % 3], syncs[(round + 1) % 3]);
        s = sc.crash_under_load(s, sync, round, Duration::from_millis(ms), next);
        sc.check_reads(&s, round);
        sc.post_after_restart(&s, next.1, round + 1);
    }
    sc.check_export(s);
}
