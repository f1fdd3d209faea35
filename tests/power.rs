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

#[path = "power/support.rs"]
mod support;

use support::*;

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
