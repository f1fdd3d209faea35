//! The ledger of the fault-injection suite: the usages a test posts, what the server must
//! answer for them, and every id it handed out over every run, so that after each fault a
//! test can check the promise of a `201`: every acknowledged id reads back exactly, `usaged
//! export` lists exactly the acknowledged usages (plus, at most, usages whose answer was lost),
//! and no id is ever handed out twice.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use std::os::unix::process::ExitStatusExt;

use crate::harness::{Conn, Got, Start, Usaged, Wrap, export, launch, serve_args};
use crate::util::{Response, get, post};

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
        let mut c = s.conn();
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

    /// One crash: `usaged --threads 1 FLAGS` on `dir` under strace with `strace` (a SIGKILL
    /// injected), a client posting pipelined batches of 25 until the server dies (or 16
    /// batches are answered, then `kill -9`). Whether the injection killed it. The caller
    /// verifies.
    pub fn crash_run(&mut self, dir: &Path, strace: Vec<String>, flags: &[&str]) -> bool {
        self.crash_run_paced(dir, strace, flags, Duration::ZERO)
    }

    /// As [`Ledger::crash_run`], `pause` between batches (for faults that come with time,
    /// like retention's).
    pub fn crash_run_paced(
        &mut self,
        dir: &Path,
        strace: Vec<String>,
        flags: &[&str],
        pause: Duration,
    ) -> bool {
        let args = serve_args(dir, 1, flags);
        match launch(Wrap::Strace(strace), &args) {
            Start::Exited { status, stderr } => {
                assert_eq!(
                    status.signal(),
                    Some(9),
                    "usaged exited by itself:\n{stderr}"
                );
                println!("  killed before it listened");
                true
            }
            Start::Up(mut s) => {
                let mut c = s.conn();
                let mut closed = false;
                for _ in 0..16 {
                    let sent = self.post(&mut c, 25, Duration::from_secs(10));
                    if sent.closed || !sent.pending.is_empty() {
                        closed = sent.closed;
                        break;
                    }
                    std::thread::sleep(pause);
                }
                s.kill9();
                println!(
                    "  {} acknowledged, {} unanswered{}",
                    self.acked.len(),
                    self.unanswered.len(),
                    if closed { "" } else { " (then kill -9)" }
                );
                closed
            }
        }
    }

    /// After a fault: a plain restart serves every acknowledged usage exactly, new POSTs get
    /// ids never handed out before, SIGTERM exits 0, and `export` lists exactly what is stored.
    pub fn verify(&mut self, dir: &Path, threads: u32) {
        self.verify_with(dir, threads, &[]);
    }

    /// [`Ledger::verify`], the restart with `flags` (a node of a cluster).
    pub fn verify_with(&mut self, dir: &Path, threads: u32, flags: &[&str]) {
        let mut s = Usaged::start(dir, threads, flags);
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
