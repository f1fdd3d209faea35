//! The shipper: usages from a data directory's journal into PostgreSQL, exactly once.
//!
//! One thread (never a worker) tails every stripe's segments with a [`cursor::Cursor`] from the
//! position PostgreSQL holds for it, and ships what it finds in batches of up to [`MAX_ROWS`]:
//! one transaction copies the rows into `usages` (`COPY … FROM STDIN (FORMAT binary)`; when
//! an id is there already, SQLSTATE 23505, the transaction is rolled back and done again
//! through a staging table with `INSERT … ON CONFLICT (id) DO NOTHING`) and upserts every moved
//! stripe's position in `usaged_shipped` ([`schema`], [`pg`]). A crash before the commit
//! leaves the positions where the rows were not; one after it leaves both, so the shipper,
//! reading its positions back at every (re)connection, never ships a record twice nor skips
//! one. Only whole, checksummed records are read; a torn tail waits ([`cursor`]). After each
//! commit, and each time they are read back, the positions go to the `SHIPPED` file
//! ([`shipped`]) that retention's hold reads.
//!
//! When caught up it looks at the files every [`POLL`]; on any error it drops the connection,
//! logs once per change of state and retries with backoff from 100 ms to 5 s, while a second
//! set of cursors (the *frontier*) keeps counting what is on disk for `/metrics`' lag.
//!
//! It runs in the server (`--ship-to`, started after recovery, stopped after the journal
//! threads) or alone (`usaged ship`), reading only the files either way.
#![forbid(unsafe_code)]

pub mod cursor;
pub mod pg;
pub mod schema;
pub mod shipped;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cursor::{Cursor, Listing, Pos, Stop};
use pg::{Conn, Target};
use shipped::{Positions, Shared, Shipped};

use crate::store::journal::Header;

/// Most rows in one batch (one transaction).
pub const MAX_ROWS: usize = 50_000;
/// How often the files are looked at when everything there was shipped.
pub const POLL: Duration = Duration::from_millis(50);
/// Backoff after an error: from the first to the last, doubling.
pub const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));
/// Most records the frontier counts between two batches.
const FRONTIER_BUDGET: usize = 1 << 20;
/// Records first seen within this long of each other share one arrival time (lag seconds).
const ARRIVAL_GRAIN: Duration = Duration::from_millis(100);

/// A connection string: never shown (`Debug` prints `***`).
#[derive(Clone, PartialEq, Eq)]
pub struct Url(pub String);

impl std::fmt::Debug for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Url(***)")
    }
}

/// The shipper's counters and gauges, for `/metrics` (written by its thread only).
#[derive(Debug, Default)]
pub struct Stats {
    pub rows: AtomicU64,
    pub batches: AtomicU64,
    pub errors: AtomicU64,
    pub batch_ns: AtomicU64,
    pub lag_usages: AtomicU64,
    /// When the oldest unshipped usage was first seen, in Unix ms (0: none), so the lag in
    /// seconds grows while the thread waits on PostgreSQL ([`Stats::lag_ms`]).
    pub oldest_unix_ms: AtomicU64,
    pub connected: AtomicU64,
}

impl Stats {
    /// How long the oldest unshipped usage has waited, in ms, now (0 when caught up).
    pub fn lag_ms(&self) -> u64 {
        match self.oldest_unix_ms.load(Ordering::Relaxed) {
            0 => 0,
            t => unix_ms().saturating_sub(t),
        }
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What a shipper needs.
pub struct Options {
    pub dir: PathBuf,
    pub target: Target,
    /// The node whose journal this is (`--node`): a column of each row, and the key of its
    /// positions.
    pub node: u32,
    /// A status line to stderr this often (`usaged ship`).
    pub status_every: Option<Duration>,
}

/// When to stop: `None` while running, else the deadline of the last batches.
type StopFlag = Arc<(Mutex<Option<Instant>>, Condvar)>;

/// The shipper thread.
pub struct Shipper {
    stop: StopFlag,
    thread: Option<JoinHandle<()>>,
    finished: Receiver<()>,
    pub stats: Arc<Stats>,
}

impl Shipper {
    /// Start the thread; `shared` receives the committed positions (retention's hold).
    pub fn start(opt: Options, shared: Shared) -> std::io::Result<Shipper> {
        let stop: StopFlag = Arc::default();
        let stats: Arc<Stats> = Arc::default();
        let (done, finished) = mpsc::channel();
        let mut run = Run::new(opt, Arc::clone(&stats), shared, Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name("usaged-ship".into())
            .spawn(move || {
                // Like a journal thread: its wake-ups never preempt the worker on its CPU.
                let _ = crate::server::rlimit::batch_scheduling();
                run.run();
                let _ = done.send(());
            })?;
        Ok(Shipper {
            stop,
            thread: Some(thread),
            finished,
            stats,
        })
    }

    /// Ship what is left until `deadline` (if PostgreSQL takes it), then stop. Returns
    /// whether the thread ended by then (else it is left behind).
    pub fn stop(&mut self, deadline: Instant) -> bool {
        let (lock, cv) = &*self.stop;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = Some(deadline);
        cv.notify_all();
        let Some(t) = self.thread.take() else {
            return true;
        };
        // A little past the deadline: the thread may be inside a call that cannot see it.
        let left = deadline.saturating_duration_since(Instant::now()) + Duration::from_millis(100);
        if self.finished.recv_timeout(left).is_ok() {
            let _ = t.join();
            return true;
        }
        false
    }
}

impl Drop for Shipper {
    fn drop(&mut self) {
        self.stop(Instant::now());
    }
}

/// The thread's state.
struct Run {
    dir: PathBuf,
    node: u32,
    target: Target,
    stats: Arc<Stats>,
    shared: Shared,
    stop: StopFlag,
    status_every: Option<Duration>,
    conn: Option<Conn>,
    /// What PostgreSQL holds (`None` before it was first read).
    committed: Option<Positions>,
    /// Where the next batch is read from.
    readers: BTreeMap<Header, Cursor>,
    /// How far the files have been counted, and per stripe the usages counted past the
    /// committed position (the lag).
    frontier: BTreeMap<Header, Cursor>,
    ahead: BTreeMap<Header, u64>,
    /// When the counted usages not shipped yet were first seen, oldest first.
    arrivals: VecDeque<(Instant, u64)>,
    listing: Listing,
    buf: Vec<u8>,
    copy: Vec<u8>,
    /// Stripe the next batch starts with, so every stripe gets its turn.
    rotate: usize,
    backoff: Duration,
    /// The error last logged (`None`: working).
    failing: Option<String>,
    last_status: (Instant, u64),
    /// Corrupt records reported (once each).
    stuck: BTreeSet<String>,
}

impl Run {
    fn new(opt: Options, stats: Arc<Stats>, shared: Shared, stop: StopFlag) -> Run {
        // Until PostgreSQL says, the lag is counted from what SHIPPED says.
        let guess = shipped::load(&opt.dir).unwrap_or_default();
        let frontier = guess
            .iter()
            .map(|(k, s)| (*k, Cursor::new(*k, s.pos)))
            .collect();
        Run {
            dir: opt.dir,
            node: opt.node,
            target: opt.target,
            stats,
            shared,
            stop,
            status_every: opt.status_every,
            conn: None,
            committed: None,
            readers: BTreeMap::new(),
            frontier,
            ahead: BTreeMap::new(),
            arrivals: VecDeque::new(),
            listing: Listing::default(),
            buf: Vec::new(),
            copy: Vec::new(),
            rotate: 0,
            backoff: BACKOFF.0,
            failing: None,
            last_status: (Instant::now(), 0),
            stuck: BTreeSet::new(),
        }
    }

    fn run(&mut self) {
        loop {
            let stopping = self.deadline();
            if stopping.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            let pass = self.pass();
            self.gauges();
            self.status_line();
            match pass {
                Ok(true) => {}
                Ok(false) if stopping.is_some() => break,
                Ok(false) => self.wait(POLL),
                Err(e) => {
                    self.conn = None;
                    self.stats.connected.store(0, Ordering::Relaxed);
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    self.fail(e);
                    if stopping.is_some() {
                        break;
                    }
                    self.wait(self.backoff);
                    self.backoff = (self.backoff * 2).min(BACKOFF.1);
                }
            }
        }
        self.stats.connected.store(0, Ordering::Relaxed);
    }

    /// One turn: look at the files, count, connect if need be, ship a batch. `Ok(true)` if
    /// there may be more to ship at once.
    fn pass(&mut self) -> Result<bool, String> {
        self.listing = Listing::read(&self.dir)
            .map_err(|e| format!("cannot list {}: {e}", self.dir.display()))?;
        self.count()
            .map_err(|e| format!("cannot read the journal: {e}"))?;
        // Before anything that may wait on PostgreSQL: /metrics shows what is behind.
        self.gauges();
        if self.conn.is_none() {
            self.connect()?;
        }
        let more = self.batch()?;
        if self.failing.take().is_some() {
            eprintln!("usaged: ship: shipping to {} again", self.target.label);
        }
        self.backoff = BACKOFF.0;
        Ok(more)
    }

    /// Connect, and read this node's positions: the readers start there.
    fn connect(&mut self) -> Result<(), String> {
        let mut conn = Conn::open(&self.target, self.node)?;
        let loaded = conn.load(&self.target, self.node)?;
        if self.failing.is_none() {
            eprintln!(
                "usaged: ship: connected to {} as node {} ({} stripes shipped before)",
                self.target.label,
                self.node,
                loaded.len()
            );
        }
        self.committed_now(loaded);
        // PostgreSQL's word, not an older SHIPPED (a database restored, or a new one), is what
        // retention's hold must see from now on.
        self.store_shipped();
        self.readers.clear();
        self.conn = Some(conn);
        self.stats.connected.store(1, Ordering::Relaxed);
        Ok(())
    }

    /// Read, ship and commit one batch; `Ok(true)` if it was full.
    fn batch(&mut self) -> Result<bool, String> {
        let started = Instant::now();
        let (moved, rows) = self
            .fill()
            .map_err(|e| format!("cannot read the journal: {e}"))?;
        if moved.is_empty() {
            return Ok(false);
        }
        let conn = self.conn.as_mut().expect("connected");
        let shipped = conn.ship(&self.target, self.node, &self.copy, &moved);
        if let Err(e) = shipped {
            self.readers.clear(); // read again from what PostgreSQL holds
            return Err(e);
        }
        let mut all = self.committed.clone().unwrap_or_default();
        all.extend(moved);
        self.committed_now(all);
        let s = &self.stats;
        s.rows.fetch_add(rows as u64, Ordering::Relaxed);
        s.batches.fetch_add(1, Ordering::Relaxed);
        s.batch_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.store_shipped();
        Ok(rows == MAX_ROWS)
    }

    /// Write the committed positions into `SHIPPED` (for a hold beside: `--ship-hold`).
    fn store_shipped(&self) {
        if let Some(p) = &self.committed
            && let Err(e) = shipped::store(&self.dir, self.node, p)
        {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            eprintln!("usaged: ship: cannot write {}: {e}", shipped::FILE);
        }
    }

    /// Read up to [`MAX_ROWS`] usages into the COPY stream, the stripes in turn. Returns the
    /// stripes whose position moved (with their new state) and the rows.
    fn fill(&mut self) -> std::io::Result<(Positions, usize)> {
        let committed = self.committed.clone().unwrap_or_default();
        for key in self.listing.segs.keys() {
            let at = start(&committed, &self.listing, key);
            self.readers
                .entry(*key)
                .or_insert_with(|| Cursor::new(*key, at));
        }
        self.copy.clear();
        schema::begin(&mut self.copy);
        let mut moved = Positions::new();
        let mut rows = 0;
        let keys: Vec<Header> = self.readers.keys().copied().collect();
        let n = keys.len().max(1);
        for i in 0..keys.len() {
            let key = keys[(self.rotate + i) % n];
            let c = self.readers.get_mut(&key).expect("a reader per key");
            let before = c.pos;
            let (copy, node) = (&mut self.copy, self.node);
            let mut last_id = committed.get(&key).map_or(0, |s| s.last_id);
            let (got, stop) = c.read(
                &self.dir,
                &self.listing,
                &mut self.buf,
                MAX_ROWS - rows,
                |id, u| {
                    schema::row(copy, id, u, node);
                    last_id = id;
                },
            )?;
            if let Stop::Corrupt(why) = stop
                && self.stuck.insert(why.clone())
            {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                corrupt_warning(&why);
            }
            if got > 0 || c.pos != before {
                let shipped = committed.get(&key).map_or(0, |s| s.shipped) + got as u64;
                let (pos, last_id) = (c.pos, last_id);
                moved.insert(
                    key,
                    Shipped {
                        pos,
                        shipped,
                        last_id,
                    },
                );
            }
            rows += got;
            if rows >= MAX_ROWS {
                break;
            }
        }
        self.rotate = self.rotate.wrapping_add(1);
        if rows == 0 {
            self.copy.clear();
        } else {
            schema::end(&mut self.copy);
        }
        Ok((moved, rows))
    }

    /// PostgreSQL now holds `p`: share it, and take what it shipped off the lag.
    fn committed_now(&mut self, p: Positions) {
        let first = self.committed.is_none();
        let old = self.committed.take().unwrap_or_default();
        let mut shipped = 0;
        for (key, s) in &p {
            let delta = s
                .shipped
                .saturating_sub(old.get(key).map_or(0, |o| o.shipped));
            shipped += delta;
            let ahead = self.ahead.entry(*key).or_default();
            *ahead = ahead.saturating_sub(delta);
            let f = self
                .frontier
                .entry(*key)
                .or_insert_with(|| Cursor::new(*key, s.pos));
            if f.pos < s.pos {
                f.seek(s.pos);
                *ahead = 0;
            }
        }
        if first {
            // What was counted from SHIPPED's guess is counted again from PostgreSQL's word.
            for (key, f) in &mut self.frontier {
                f.seek(start(&p, &self.listing, key));
            }
            self.ahead.clear();
            self.arrivals.clear();
        }
        self.take_arrivals(shipped);
        *self.shared.lock().unwrap_or_else(|e| e.into_inner()) = Some(p.clone());
        self.committed = Some(p);
    }

    /// Count new whole records on disk (at most [`FRONTIER_BUDGET`]) for the lag.
    fn count(&mut self) -> std::io::Result<()> {
        let committed = self.committed.clone().unwrap_or_default();
        for key in self.listing.segs.keys() {
            let at = start(&committed, &self.listing, key);
            self.frontier
                .entry(*key)
                .or_insert_with(|| Cursor::new(*key, at));
        }
        let mut budget = FRONTIER_BUDGET;
        let mut seen = 0;
        for (key, c) in &mut self.frontier {
            let (n, _) = c.read(&self.dir, &self.listing, &mut self.buf, budget, |_, _| {})?;
            *self.ahead.entry(*key).or_default() += n as u64;
            budget -= n;
            seen += n as u64;
        }
        if seen > 0 {
            let now = Instant::now();
            match self.arrivals.back_mut() {
                Some((t, n)) if now.duration_since(*t) < ARRIVAL_GRAIN => *n += seen,
                _ => self.arrivals.push_back((now, seen)),
            }
        }
        Ok(())
    }

    /// `n` usages were shipped: the oldest arrivals go.
    fn take_arrivals(&mut self, mut n: u64) {
        while n > 0 {
            let Some(front) = self.arrivals.front_mut() else {
                break;
            };
            let take = front.1.min(n);
            front.1 -= take;
            n -= take;
            if front.1 == 0 {
                self.arrivals.pop_front();
            }
        }
        if self.ahead.values().all(|&a| a == 0) {
            self.arrivals.clear();
        }
    }

    fn gauges(&self) {
        let lag: u64 = self.ahead.values().sum();
        let oldest = match self.arrivals.front() {
            Some((t, _)) if lag > 0 => unix_ms()
                .saturating_sub(t.elapsed().as_millis() as u64)
                .max(1),
            _ => 0,
        };
        self.stats.lag_usages.store(lag, Ordering::Relaxed);
        self.stats.oldest_unix_ms.store(oldest, Ordering::Relaxed);
    }

    /// Log `e` if it is not the error logged last.
    fn fail(&mut self, e: String) {
        if self.failing.as_deref() != Some(e.as_str()) {
            eprintln!(
                "usaged: ship: {}: {e}; retrying (backoff up to {} s)",
                self.target.label,
                BACKOFF.1.as_secs()
            );
            self.failing = Some(e);
        }
    }

    /// `usaged ship`'s status line, every `status_every`.
    fn status_line(&mut self) {
        let Some(every) = self.status_every else {
            return;
        };
        let (at, rows_then) = self.last_status;
        if at.elapsed() < every {
            return;
        }
        let s = &self.stats;
        let rows = s.rows.load(Ordering::Relaxed);
        eprintln!(
            "usaged ship: {rows} usages shipped ({:.0}/s), lag {} usages / {:.1} s, {}",
            (rows - rows_then) as f64 / at.elapsed().as_secs_f64(),
            s.lag_usages.load(Ordering::Relaxed),
            s.lag_ms() as f64 / 1e3,
            if s.connected.load(Ordering::Relaxed) == 1 {
                "connected"
            } else {
                "not connected"
            }
        );
        self.last_status = (Instant::now(), rows);
    }

    fn deadline(&self) -> Option<Instant> {
        *self.stop.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sleep `d`, or less if asked to stop.
    fn wait(&self, d: Duration) {
        let (lock, cv) = &*self.stop;
        let g = lock.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            let _ = cv.wait_timeout(g, d);
        }
    }
}

/// Where a stripe's reading starts: its committed position, else its first segment.
fn start(committed: &Positions, listing: &Listing, key: &Header) -> Pos {
    committed.get(key).map_or_else(
        || Pos {
            seq: listing.first_from(key, 0).unwrap_or(0),
            offset: 0,
        },
        |s| s.pos,
    )
}

#[cold]
fn corrupt_warning(why: &str) {
    eprintln!("usaged: ship: cannot ship past {why}: a corrupt record (left where it is)");
}

/// The node a data directory belongs to: its `CLUSTER` file's, else 0.
pub fn node_of(dir: &Path) -> Result<u32, String> {
    Ok(crate::store::identity::Identity::load(dir)?.map_or(0, |i| i.node))
}

#[cfg(test)]
mod tests;
