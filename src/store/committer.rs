//! The journal thread: one per worker, so a slow or stuck disk never stops a worker's loop.
//!
//! The worker encodes a loop turn's records into a batch ([`super::StripeWriter`]) and hands it
//! over with [`Committer::submit`] (a buffer swap under a lock taken once per turn, never per
//! request); answers that wait for it stay in the worker's outbox. This thread writes the batch
//! (one `write`), syncs as `--sync` says, records "batch N is written" in an atomic and wakes
//! the worker, which then releases the answers. While one batch is written the next one
//! gathers (group commit pipelines by itself). Two buffers ping-pong between the threads, so
//! nothing is allocated in steady state.
//!
//! Ids are leased ahead: before a batch holds an id past the durable lease, a lease record for
//! [`LEASE_SLOTS`] more slots is written and synced with it; see `journal.rs`.
//!
//! Failures: a batch that cannot be written (`ENOSPC`, `EIO`, a failed sync) is cut back out of
//! the file and retried with backoff until it goes through, its answers still waiting; meanwhile
//! the worker refuses new usages (`503`) and `/health` says why. The current segment deleted or
//! replaced under us is noticed before each batch and its records are rewritten into a new
//! segment. One log line per change of state.
//!
//! Sealing: a segment seals when it is full, or at the first batch after the stripe's writer
//! asked for it ([`StripeLink::want_seal`]) if it holds a usage, and at a clean stop. Sealed =
//! synced, in the segment table ([`Segments`], its index entries in RAM), `sealed_end` moved
//! past it (the writer may now recycle those slots: a reader finds them on disk); then the
//! next segment is opened and the index written (`index::write`). An index that cannot be
//! written is only logged: its entries stay in RAM and the write is tried again at the next
//! seal or at the stop (recovery rebuilds any index that is missing).

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::journal::{Header, SyncMode};
use super::link::StripeLink;
use super::segments::Segments;

mod segment;
use segment::Segment;

/// Slots of a stripe leased at a time: one extra sync per this many usages per stripe, and at
/// most this many ids per stripe skipped after a crash.
pub const LEASE_SLOTS: u64 = 1 << 20;
/// `--sync interval`: the longest a written record waits for its `fdatasync`.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// A write or sync in flight longer than this (ms) counts as stalled: new usages get `503`.
pub const STALL_MS: u64 = 1000;
/// How often the journal looks whether its segment was deleted or replaced (two `stat`s).
const LINK_CHECK: Duration = Duration::from_millis(50);
/// How often an idle journal thread looks whether its worker wants the segment sealed (the
/// worker's cache cannot recycle until it is).
const SEAL_LOOK: Duration = Duration::from_millis(100);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Why a journal cannot write now, as `/health` and `/metrics` say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Trouble {
    None = 0,
    DiskFull = 1,
    Io = 2,
    SegmentGone = 3,
    Other = 4,
}

impl Trouble {
    fn of(e: &io::Error) -> Trouble {
        match e.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT) => Trouble::DiskFull,
            Some(libc::EIO) => Trouble::Io,
            _ if e.kind() == io::ErrorKind::NotFound => Trouble::SegmentGone,
            _ => Trouble::Other,
        }
    }

    fn from_u8(v: u8) -> Trouble {
        match v {
            0 => Trouble::None,
            1 => Trouble::DiskFull,
            2 => Trouble::Io,
            3 => Trouble::SegmentGone,
            _ => Trouble::Other,
        }
    }

    /// The reason `/health` gives.
    pub fn reason(self) -> &'static str {
        match self {
            Trouble::None => "ok",
            Trouble::DiskFull => "journal cannot write: disk full",
            Trouble::Io => "journal cannot write: I/O error",
            Trouble::SegmentGone => "journal cannot write: segment or directory missing",
            Trouble::Other => "journal cannot write",
        }
    }
}

/// Milliseconds since the process's first look at this clock (`0` is never a busy mark).
pub fn clock_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// What a journal thread shows the rest of the process (`/health`, `/metrics`). Written only by
/// its journal thread (plain stores), read by anyone.
#[derive(Debug, Default)]
pub struct Status {
    trouble: AtomicU8,
    /// [`clock_ms`] when the batch being written was taken; 0 while idle.
    busy_since_ms: AtomicU64,
    pub errors: AtomicU64,
    pub bytes_written: AtomicU64,
    pub syncs: AtomicU64,
    pub sync_ns: AtomicU64,
    /// The stripe's durable id lease (or its last id or its epoch's base, when higher): no
    /// id of it past this was handed out, by this run or any before it.
    pub lease: AtomicU64,
}

impl Status {
    pub fn trouble(&self) -> Trouble {
        Trouble::from_u8(self.trouble.load(Ordering::Relaxed))
    }

    /// How long the batch in flight has been in the works, if one is.
    pub fn busy_for_ms(&self, now_ms: u64) -> u64 {
        match self.busy_since_ms.load(Ordering::Relaxed) {
            0 => 0,
            t => now_ms.saturating_sub(t),
        }
    }
}

/// Everything a journal thread starts from (recovery knows it).
pub struct Setup {
    pub dir: PathBuf,
    pub header: Header,
    /// The new segment this run writes (one past the stripe's last).
    pub seq: u32,
    pub sync: SyncMode,
    pub segment_bytes: u64,
    /// Seal a segment holding usages this long after it was opened (`--retain`), so its
    /// usages can expire on time.
    pub seal_after: Option<Duration>,
    /// The durable lease and the last id of the stripe so far.
    pub lease: u64,
    pub last_id: u64,
    /// Printed in log lines (`worker N`).
    pub worker: usize,
    /// The stripe slot of the first usage record the new segment will hold (the stripe's
    /// next slot).
    pub first_slot: u64,
    /// What the stripe's writer and this thread share about sealing.
    pub link: Arc<StripeLink>,
    /// The segment table each sealed segment goes into.
    pub segments: Arc<Segments>,
}

struct Batch {
    seq: u64,
    bytes: Vec<u8>,
    last_id: u64,
}

#[derive(Default)]
struct Handoff {
    batch: Option<Batch>,
    /// The buffer of the last batch written, cleared, for the worker's next turn.
    spare: Option<Vec<u8>>,
    stop: bool,
}

struct Shared {
    handoff: Mutex<Handoff>,
    cv: Condvar,
    /// The highest batch number written (and synced as the mode says).
    done: AtomicU64,
    status: Arc<Status>,
    wake: Box<dyn Fn() + Send + Sync>,
    /// The worker is about to wait for events (or waits): wake it when a batch is written.
    /// Otherwise it sees `done` at its next turn, and no wake-up is spent.
    sleeping: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Handoff> {
        self.handoff.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The worker's end of its journal thread.
pub struct Committer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// Says when the thread is done (so a stop can wait with a deadline).
    finished: std::sync::mpsc::Receiver<()>,
    /// Batches handed over so far; the next batch is `submitted + 1`.
    submitted: u64,
    /// When the batch in flight was handed over ([`clock_ms`]).
    submitted_ms: u64,
}

impl Committer {
    /// Create this run's segment (so a data directory that cannot be written fails the start)
    /// and start the thread. `wake` is called (from the journal thread) after each batch.
    pub fn start(
        setup: Setup,
        status: Arc<Status>,
        wake: Box<dyn Fn() + Send + Sync>,
    ) -> io::Result<Committer> {
        let segment = Segment::create(setup)?;
        segment.publish(&status);
        let shared = Arc::new(Shared {
            handoff: Mutex::new(Handoff {
                spare: Some(Vec::with_capacity(256 * 1024)),
                ..Handoff::default()
            }),
            cv: Condvar::new(),
            done: AtomicU64::new(0),
            status,
            wake,
            sleeping: AtomicBool::new(false),
        });
        let s = Arc::clone(&shared);
        let (finished, done) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("usaged-journal-{}", segment.worker))
            .spawn(move || {
                // Best effort: without it batches are smaller, nothing is wrong.
                let _ = crate::server::rlimit::batch_scheduling();
                run(&s, segment);
                let _ = finished.send(());
            })?;
        Ok(Committer {
            shared,
            thread: Some(thread),
            finished: done,
            submitted: 0,
            submitted_ms: 0,
        })
    }

    /// The highest batch number written.
    pub fn durable(&self) -> u64 {
        self.shared.done.load(Ordering::Acquire)
    }

    /// The number of the batch that records stored now go into.
    pub fn filling(&self) -> u64 {
        self.submitted + 1
    }

    /// No batch in flight.
    pub fn idle(&self) -> bool {
        self.durable() == self.submitted
    }

    /// How long the batch in flight has waited, in ms (0 when idle).
    pub fn in_flight_ms(&self, now_ms: u64) -> u64 {
        if self.idle() {
            0
        } else {
            now_ms.saturating_sub(self.submitted_ms)
        }
    }

    pub fn status(&self) -> &Status {
        &self.shared.status
    }

    /// The worker is going to wait for events: returns false when a batch was written since
    /// `durable` (then it should not sleep). Paired with the journal thread's store of `done`
    /// then load of `sleeping` (both `SeqCst`), one of the two always sees the other.
    pub fn before_sleep(&self, durable: u64) -> bool {
        if self.idle() && durable == self.submitted {
            return true; // nothing in flight: nothing will need waking for
        }
        self.shared.sleeping.store(true, Ordering::SeqCst);
        self.shared.done.load(Ordering::SeqCst) == durable
    }

    pub fn after_sleep(&self) {
        self.shared.sleeping.store(false, Ordering::Relaxed);
    }

    /// Hand `batch` (ending with id `last_id`) to the thread if it is idle; `batch` becomes an
    /// empty buffer to fill next. Returns whether it was handed over.
    pub fn submit(&mut self, batch: &mut Vec<u8>, last_id: u64) -> bool {
        if batch.is_empty() || !self.idle() {
            return false;
        }
        let mut h = self.shared.lock();
        let spare = h.spare.take().unwrap_or_default();
        let bytes = std::mem::replace(batch, spare);
        self.submitted += 1;
        self.submitted_ms = clock_ms();
        h.batch = Some(Batch {
            seq: self.submitted,
            bytes,
            last_id,
        });
        drop(h);
        self.shared.cv.notify_one();
        true
    }

    /// Finish: the thread writes what it was given and `last` (the records stored since the
    /// last hand-over, and their last id), giving up on a batch that keeps failing; then it
    /// releases the lease, syncs, and is joined. A thread stuck in a system call past
    /// `deadline` is left behind (the process exits without it): returns false then.
    pub fn stop(mut self, last: Option<(Vec<u8>, u64)>, deadline: Instant) -> bool {
        let mut h = self.shared.lock();
        if let Some((bytes, last_id)) = last.filter(|(b, _)| !b.is_empty()) {
            match &mut h.batch {
                Some(b) => {
                    b.bytes.extend_from_slice(&bytes);
                    b.last_id = last_id;
                }
                None => {
                    h.batch = Some(Batch {
                        seq: self.submitted + 1,
                        bytes,
                        last_id,
                    })
                }
            }
        }
        h.stop = true;
        drop(h);
        self.shared.cv.notify_one();
        let Some(t) = self.thread.take() else {
            return true;
        };
        let left = deadline.saturating_duration_since(Instant::now());
        match self.finished.recv_timeout(left) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => false,
            _ => {
                let _ = t.join();
                true
            }
        }
    }
}

fn run(shared: &Shared, mut seg: Segment) {
    let status = &shared.status;
    loop {
        let mut h = shared.lock();
        let batch = loop {
            if let Some(b) = h.batch.take() {
                break Some(b);
            }
            if h.stop {
                break None;
            }
            if seg.seal_wanted() {
                break None;
            }
            // Never sleeps past `SEAL_LOOK`: the worker may want a seal while no batch comes.
            let wait = match seg.due_in(Instant::now()) {
                Some(d) if d.is_zero() => break None,
                Some(d) => d.min(SEAL_LOOK),
                None => SEAL_LOOK,
            };
            h = shared
                .cv
                .wait_timeout(h, wait)
                .map_or_else(|p| p.into_inner().0, |r| r.0);
        };
        let stop = h.stop;
        drop(h);
        match batch {
            Some(mut b) => {
                let written = persist(shared, &mut seg, |s| s.write_batch(&b.bytes, b.last_id));
                if !written {
                    return; // stopping with a batch that cannot be written: its answers never go
                }
                b.bytes.clear();
                shared.lock().spare = Some(b.bytes);
                // Before the answers go: a scrape after an answer sees its id's lease.
                seg.publish(status);
                shared.done.store(b.seq, Ordering::SeqCst);
                if shared.sleeping.load(Ordering::SeqCst) {
                    (shared.wake)();
                }
            }
            None if stop => {
                persist(shared, &mut seg, Segment::finish);
                return;
            }
            None => {
                persist(shared, &mut seg, Segment::idle);
                seg.publish(status);
            }
        }
    }
}

/// Run `op` until it succeeds, with backoff; the first failure and the recovery are logged and
/// shown in the status. Gives up (false) only when told to stop.
fn persist(
    shared: &Shared,
    seg: &mut Segment,
    mut op: impl FnMut(&mut Segment) -> io::Result<()>,
) -> bool {
    let status = &shared.status;
    let mut backoff = BACKOFF_MIN;
    let mut failing_since: Option<Instant> = None;
    // Busy while any of it runs: a write, sync, roll or relink that hangs shows on `/health`.
    status.busy_since_ms.store(clock_ms(), Ordering::Relaxed);
    let _idle = Idle(&status.busy_since_ms);
    loop {
        match op(seg) {
            Ok(()) => {
                if let Some(t) = failing_since {
                    status.trouble.store(Trouble::None as u8, Ordering::Relaxed);
                    eprintln!(
                        "usaged: worker {}: journal recovered after {:.1} s",
                        seg.worker,
                        t.elapsed().as_secs_f64()
                    );
                    (shared.wake)();
                }
                return true;
            }
            Err(e) => {
                status.errors.fetch_add(1, Ordering::Relaxed);
                let trouble = Trouble::of(&e);
                if failing_since.is_none() || status.trouble() != trouble {
                    eprintln!(
                        "usaged: worker {}: journal failing: {e} (segment {}); usages get 503 until it recovers, retrying",
                        seg.worker,
                        seg.path.display()
                    );
                    status.trouble.store(trouble as u8, Ordering::Relaxed);
                    (shared.wake)();
                }
                failing_since.get_or_insert_with(Instant::now);
                let h = shared.lock();
                if h.stop {
                    eprintln!(
                        "usaged: worker {}: journal still failing at shutdown; unwritten usages were not acknowledged",
                        seg.worker
                    );
                    return false;
                }
                drop(shared.cv.wait_timeout(h, backoff));
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Marks the journal idle when dropped.
struct Idle<'a>(&'a AtomicU64);

impl Drop for Idle<'_> {
    fn drop(&mut self) {
        self.0.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;
