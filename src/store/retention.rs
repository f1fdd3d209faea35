//! Retention: whole sealed segments removed, oldest first, once older than `--retain` or while
//! the journal is larger than `--retain-bytes`; their ids answer `410`.
//!
//! What is expired is decided by a persisted low-water mark per stripe, the `RETAINED` file:
//! slots below a stripe's mark were removed. Order of one removal, crash-safe at every step:
//! 1. pick the due segments (always a stripe's oldest, so what goes is a prefix of slots);
//! 2. write `RETAINED` with the raised marks (temporary file, `fdatasync`, rename, directory
//!    sync);
//! 3. raise each stripe's `expired_below` (readers answer `410` from here on);
//! 4. take the segments out of the segment table; 5. unlink each `.idx`, then its `.seg`;
//! 6. sync the directory.
//!
//! A crash before 2 changed nothing (and no `410` was given); after it, the next start deletes
//! the files below the marks (recovery). So an id never goes from `410` back to `200`, and
//! `RETAINED` also keeps the largest id any removed segment held, below which no new epoch
//! may start.
//!
//! # `RETAINED` format (version 1)
//!
//! Little-endian: magic `USAGEDR1`, version `u32` (1), entry count `u32`, id floor `u64`; then
//! per entry epoch base `u64`, stripes `u32`, stripe `u32`, mark `u64` (first slot kept); then
//! CRC32C `u32` of everything before it.
//!
//! # The hold
//!
//! A [`Hold`] (the database sink, `crate::ship`) can keep segments it has not shipped: a held
//! segment stops its stripe's removals, and `--retain-bytes` is then exceeded rather than
//! anything unshipped being lost.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::journal::{self, Header};
use super::link::StripeLink;
use super::segments::{Sealed, Segments};

/// The file name of the marks.
pub const FILE: &str = "RETAINED";
const MAGIC: &[u8; 8] = b"USAGEDR1";
const VERSION: u32 = 1;
const HEAD_LEN: usize = 24;
const ENTRY_LEN: usize = 24;
/// More entries than any directory can have (stripes of every epoch): a count past it is
/// corruption, never an allocation.
const MAX_ENTRIES: usize = 1 << 20;
/// The file's table, as [`journal::SideTable`] reads it.
const TABLE: journal::SideTable = journal::SideTable {
    name: FILE,
    magic: MAGIC,
    count_at: 12,
    head_len: HEAD_LEN,
    entry_len: ENTRY_LEN,
    max_entries: MAX_ENTRIES,
};

/// Whether a sealed segment (segment `seq` of stripe `key`, holding `slots`) may be removed;
/// the database sink says no until it has shipped it.
pub trait Hold: Send + Sync {
    fn may_remove(&self, key: &Header, seq: u32, slots: Range<u64>) -> bool;
}

/// Nothing held.
pub struct NoHold;

impl Hold for NoHold {
    fn may_remove(&self, _: &Header, _: u32, _: Range<u64>) -> bool {
        true
    }
}

/// The low-water marks: per stripe the first slot kept, and the largest id ever removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Marks {
    pub below: BTreeMap<Header, u64>,
    pub id_floor: u64,
}

impl Marks {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEAD_LEN + self.below.len() * ENTRY_LEN + 4);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&(self.below.len() as u32).to_le_bytes());
        b.extend_from_slice(&self.id_floor.to_le_bytes());
        for (k, below) in &self.below {
            b.extend_from_slice(&k.base.to_le_bytes());
            b.extend_from_slice(&k.stripes.to_le_bytes());
            b.extend_from_slice(&k.stripe.to_le_bytes());
            b.extend_from_slice(&below.to_le_bytes());
        }
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    /// The marks in `b`, every number bounded before use.
    pub fn decode(b: &[u8]) -> Result<Marks, String> {
        let entries = TABLE.entries(b)?;
        let mut marks = Marks {
            below: BTreeMap::new(),
            id_floor: journal::u64_le(b, 16),
        };
        for (at, key) in entries {
            marks.below.insert(key, journal::u64_le(b, at + 16));
        }
        Ok(marks)
    }

    /// The marks in `dir` (none if there is no file). A bad file is an error: the caller
    /// decides (recovery rebuilds the marks from the directory, with a warning).
    pub fn load(dir: &Path) -> Result<Marks, String> {
        match fs::read(dir.join(FILE)) {
            Ok(b) => Marks::decode(&b),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Marks::default()),
            Err(e) => Err(format!("cannot read {FILE}: {e}")),
        }
    }

    /// Write the marks into `dir` durably: temporary file, synced, renamed, directory synced.
    pub fn store(&self, dir: &Path) -> io::Result<()> {
        journal::store_file(dir, FILE, &self.encode())
    }
}

/// When segments go.
pub struct Policy {
    pub max_age: Option<Duration>,
    pub max_bytes: Option<u64>,
    pub hold: Arc<dyn Hold>,
}

/// What retention did, for `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    pub removed_segments: AtomicU64,
    pub removed_bytes: AtomicU64,
    /// Bytes retention would remove but a hold keeps.
    pub held_bytes: AtomicU64,
    pub errors: AtomicU64,
}

/// Retention over one data directory.
pub struct Retention {
    pub policy: Policy,
    segments: Arc<Segments>,
    /// Every stripe's link, by key (where `expired_below` is raised).
    links: BTreeMap<Header, Arc<StripeLink>>,
    marks: Marks,
    pub stats: Arc<Stats>,
}

impl Retention {
    /// Retention from `marks` (as recovery found them) over `segments`.
    pub fn new(
        policy: Policy,
        segments: Arc<Segments>,
        links: BTreeMap<Header, Arc<StripeLink>>,
        marks: Marks,
    ) -> Retention {
        Retention {
            policy,
            segments,
            links,
            marks,
            stats: Arc::default(),
        }
    }

    fn dir(&self) -> PathBuf {
        self.segments.dir().to_path_buf()
    }

    /// Remove every segment due at `now_ms` (Unix ms) whose disk usage is `disk_bytes` (all
    /// segments and indexes, open ones included). Returns how many went.
    pub fn run(&mut self, now_ms: u64, disk_bytes: u64) -> io::Result<usize> {
        let due = self.due(now_ms, disk_bytes);
        if due.is_empty() {
            return Ok(0);
        }
        let mut marks = self.marks.clone();
        for s in &due {
            let end = s.meta.first_slot + s.meta.records;
            let m = marks.below.entry(s.meta.key).or_insert(0);
            *m = (*m).max(end);
            marks.id_floor = marks.id_floor.max(s.meta.last_id).max(s.meta.lease);
        }
        if let Err(e) = marks.store(&self.dir()) {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
        self.marks = marks;
        for (key, below) in &self.marks.below {
            if let Some(l) = self.links.get(key) {
                l.expired_below.fetch_max(*below, Ordering::Release);
            }
        }
        for s in &due {
            let gone = self.segments.remove_first(&s.meta.key);
            debug_assert_eq!(gone.map(|g| g.meta.seq), Some(s.meta.seq));
            // Best effort: a file left behind lies below the mark, and the next start deletes
            // it.
            let _ = fs::remove_file(self.segments.index_path(&s.meta));
            let _ = fs::remove_file(self.segments.segment_path(&s.meta));
            self.stats.removed_segments.fetch_add(1, Ordering::Relaxed);
            self.stats
                .removed_bytes
                .fetch_add(s.disk_bytes(), Ordering::Relaxed);
        }
        journal::sync_dir(&self.dir())?;
        Ok(due.len())
    }

    /// The segments due, oldest seal first; each is its stripe's oldest once those before it
    /// in the list are gone.
    fn due(&self, now_ms: u64, disk_bytes: u64) -> Vec<Sealed> {
        let mut heads: BTreeMap<Header, std::collections::VecDeque<Sealed>> = self
            .segments
            .keys()
            .into_iter()
            .map(|k| (k, self.segments.list(&k).into()))
            .collect();
        let mut due = Vec::new();
        let mut bytes = disk_bytes;
        let mut held = 0;
        loop {
            let oldest = heads
                .iter()
                .filter_map(|(k, l)| l.front().map(|s| (s.meta.sealed_ms, *k)))
                .min();
            let Some((sealed_ms, key)) = oldest else {
                break;
            };
            let too_old = self
                .policy
                .max_age
                .is_some_and(|age| now_ms.saturating_sub(sealed_ms) > age.as_millis() as u64);
            let too_big = self.policy.max_bytes.is_some_and(|max| bytes > max);
            if !too_old && !too_big {
                break;
            }
            let s = heads
                .get_mut(&key)
                .and_then(|l| l.pop_front())
                .expect("a head");
            let slots = s.meta.first_slot..s.meta.first_slot + s.meta.records;
            if !self.policy.hold.may_remove(&key, s.meta.seq, slots) {
                // This stripe's later segments wait behind it.
                held += s.disk_bytes();
                heads.remove(&key);
                continue;
            }
            bytes = bytes.saturating_sub(s.disk_bytes());
            due.push(s);
        }
        self.stats.held_bytes.store(held, Ordering::Relaxed);
        due
    }
}

/// How often the retention thread looks.
pub const EVERY: Duration = Duration::from_secs(1);

/// The retention thread: [`Retention::run`] every [`EVERY`] until stopped.
pub struct Retainer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
    pub stats: Arc<Stats>,
}

impl Retainer {
    pub fn start(mut r: Retention) -> io::Result<Retainer> {
        let stop: Arc<(Mutex<bool>, Condvar)> = Arc::default();
        let stats = Arc::clone(&r.stats);
        let s = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("usaged-retention".into())
            .spawn(move || {
                let mut failing = false;
                let (lock, cv) = &*s;
                let mut stopped = lock.lock().unwrap_or_else(|p| p.into_inner());
                while !*stopped {
                    let disk = if r.policy.max_bytes.is_some() {
                        disk_bytes(r.segments.dir())
                    } else {
                        0
                    };
                    match r.run(unix_ms(), disk) {
                        Ok(_) if failing => {
                            failing = false;
                            eprintln!("usaged: retention: removing old segments works again");
                        }
                        Err(e) if !failing => {
                            failing = true;
                            eprintln!("usaged: retention: cannot remove old segments: {e}");
                        }
                        _ => {}
                    }
                    stopped = cv
                        .wait_timeout(stopped, EVERY)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            })?;
        Ok(Retainer {
            stop,
            thread: Some(thread),
            stats,
        })
    }

    pub fn stop(&mut self) {
        let (lock, cv) = &*self.stop;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Retainer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The wall clock in Unix milliseconds (what `sealed_ms` is measured in).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Bytes of every segment and index file in `dir` (open segments included).
pub fn disk_bytes(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.ends_with(".seg") || name.ends_with(".idx")
        })
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

#[cfg(test)]
mod tests;
