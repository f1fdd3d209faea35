//! One worker: a thread pinned to one CPU, its own `mio` poll and `SO_REUSEPORT` listener, its
//! own connections ([`Slab`]), outbox, `Date` cache, timer wheel, stripe of the store and
//! journal thread.
//!
//! A loop turn reads as its phases (`Worker::turn`): wait → clock → events (accept, drive)
//! → timers → commit (hand the turn's records to the journal thread) → release (answers whose
//! records are written leave, one `write` per part; connections that stopped with full
//! output go on) → access log → accept retry → shutdown. Driving a connection appends its
//! answers to the outbox, filed with the journal batch its usages went into (`settle`); only
//! `release` sends them, once the journal thread reports that batch written (it wakes the
//! loop through the waker). Accepting is in `accept.rs`, the SIGTERM drain in `drain.rs`.
#![forbid(unsafe_code)]

mod accept;
mod drain;
#[cfg(test)]
mod tests;

use std::io::{self, Write};
use std::net::TcpListener as StdListener;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant, SystemTime};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use super::cold::{self, ColdReads, ColdSource};
use super::conn::{Conn, Ctx, Limits, Next, Timeouts};
use super::outbox::{Held, Outbox};
use super::slab::{Slab, token};
use super::timer::{Entry, Wheel};
use crate::access_log::WorkerLog;
use crate::app::App;
use crate::http::date::DateCache;
use crate::metrics::{self, Metrics, WorkerMetrics};
use crate::store::committer::{self, Committer, STALL_MS, Trouble};
use crate::time::rfc3339;

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
/// A batch of records this large that the journal has not taken: new usages wait (`503`).
const MAX_BATCH: usize = 64 << 20;

/// Everything a worker thread starts with.
pub struct Setup {
    pub index: usize,
    pub access: Option<WorkerLog>,
    pub metrics: Arc<Metrics>,
    pub listener: StdListener,
    pub core: Option<core_affinity::CoreId>,
    pub app: App,
    /// This worker's journal thread, to start once the worker's waker exists (`None`:
    /// `--in-memory`).
    pub journal: Option<(committer::Setup, Arc<committer::Status>)>,
    /// Where this worker's reader thread reads usages no longer in RAM.
    pub cold: Box<dyn ColdSource>,
    pub limits: Limits,
    pub max_conns: usize,
    pub drain_grace: Duration,
    pub shutdown_timeout: Duration,
    /// Where the worker reports that it is accepting (with its waker) or why it cannot.
    pub ready: Sender<io::Result<Arc<Waker>>>,
}

/// The worker thread: pin it, open its poll, listener and journal thread (reporting the
/// outcome on `setup.ready`), run loop turns until shut down, then hand the journal its last
/// records.
pub fn run(setup: Setup) {
    if let Some(core) = setup.core {
        core_affinity::set_for_current(core);
    }
    let mut app = setup.app;
    let (mut poll, waker, listener, committer) =
        match open_loop(setup.listener, setup.journal, &mut app) {
            Ok(s) => s,
            Err(e) => {
                let _ = setup.ready.send(Err(e));
                return;
            }
        };
    let cold = match ColdReads::start(setup.cold, Arc::clone(&waker), setup.index) {
        Ok(c) => c,
        Err(e) => {
            let _ = setup.ready.send(Err(e));
            return;
        }
    };
    // The lease end counts from the first answer on, whether or not this worker turns.
    let lease_end = committer.as_ref().map_or(app.writer.last_id(), |c| {
        c.status().lease.load(Ordering::Relaxed)
    });
    let m = setup.metrics.worker(setup.index);
    m.set(metrics::ID_LEASE_END, lease_end);
    let _ = setup.ready.send(Ok(waker));
    let mut w = Worker::new(
        setup.index,
        setup.access,
        setup.metrics,
        listener,
        committer,
        cold,
        setup.limits,
        setup.max_conns,
        setup.drain_grace,
        setup.shutdown_timeout,
    );
    let mut events = Events::with_capacity(1024);
    while w.turn(&mut poll, &mut events, &mut app) {}
    w.finish(&mut app);
}

/// The loop's poll and waker, the listener registered with it, and the journal thread (which
/// wakes the loop through the waker when it wrote a batch).
fn open_loop(
    listener: StdListener,
    journal: Option<(committer::Setup, Arc<committer::Status>)>,
    app: &mut App,
) -> io::Result<(Poll, Arc<Waker>, TcpListener, Option<Committer>)> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let mut listener = TcpListener::from_std(listener);
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let committer = match journal {
        None => None,
        Some((js, status)) => {
            let w = Arc::clone(&waker);
            let wake = Box::new(move || {
                let _ = w.wake();
            });
            app.writer.enable_journal();
            Some(Committer::start(js, status, wake)?)
        }
    };
    Ok((poll, waker, listener, committer))
}

struct Worker {
    index: usize,
    /// `--access-log`: this worker's buffer, and the time (RFC 3339, UTC) of this loop turn.
    access: Option<WorkerLog>,
    log_time: ([u8; rfc3339::MAX_LEN], usize),
    metrics: Arc<Metrics>,
    listener: Option<TcpListener>,
    conns: Slab<(TcpStream, Conn)>,
    /// Read buffers kept for reuse when connections close.
    spare: Vec<Box<[u8]>>,
    max_conns: usize,
    /// Every answer, until the journal has written what it depends on.
    outbox: Outbox,
    /// Parts of the outbox released this turn (kept for its capacity).
    ready: Vec<Held>,
    /// The outbox's length when this turn began (its answers before were held earlier).
    turn_start: usize,
    /// This worker's journal thread (`None`: `--in-memory`).
    committer: Option<Committer>,
    /// This worker's reader thread, and the reads it finished (kept for its capacity).
    cold: ColdReads,
    cold_done: Vec<cold::Done>,
    date: DateCache,
    limits: Limits,
    /// The coarse clock: milliseconds since `epoch`, read once per loop turn.
    epoch: Instant,
    now_ms: u64,
    wheel: Wheel,
    expired: Vec<Entry>,
    /// Connections to drive again once their answers are out (their output was full).
    again: Vec<usize>,
    /// At `max_conns`: new connections wait in the backlog until one closes.
    accept_full: bool,
    /// Out of descriptors or memory: no accepting until then (ms), then twice as long next time.
    backoff_until: Option<u64>,
    backoff_ms: u64,
    drain_grace: Duration,
    shutdown_timeout: Duration,
    /// After SIGTERM: serve normally until then (`--drain-grace`).
    grace_until: Option<Instant>,
    /// When draining: the deadline for the last connections.
    draining: Option<Instant>,
    /// When draining: when the listener, taking no new handshakes, closes.
    listen_until: Option<Instant>,
}

impl Worker {
    // One argument per thing the loop starts with that `open_loop` did not consume.
    #[allow(clippy::too_many_arguments)]
    fn new(
        index: usize,
        access: Option<WorkerLog>,
        metrics: Arc<Metrics>,
        listener: TcpListener,
        committer: Option<Committer>,
        cold: ColdReads,
        limits: Limits,
        max_conns: usize,
        drain_grace: Duration,
        shutdown_timeout: Duration,
    ) -> Self {
        Worker {
            index,
            access,
            log_time: ([0; rfc3339::MAX_LEN], 0),
            metrics,
            listener: Some(listener),
            conns: Slab::default(),
            spare: Vec::new(),
            max_conns,
            outbox: Outbox::with_capacity(128 * 1024),
            ready: Vec::new(),
            turn_start: 0,
            committer,
            cold,
            cold_done: Vec::new(),
            date: DateCache::default(),
            limits,
            epoch: Instant::now(),
            now_ms: 0,
            wheel: Wheel::default(),
            expired: Vec::new(),
            again: Vec::new(),
            accept_full: false,
            backoff_until: None,
            backoff_ms: accept::BACKOFF_MIN_MS,
            drain_grace,
            shutdown_timeout,
            grace_until: None,
            draining: None,
            listen_until: None,
        }
    }

    /// One loop turn, as its phases. Returns false when the worker is done.
    fn turn(&mut self, poll: &mut Poll, events: &mut Events, app: &mut App) -> bool {
        if !self.wait(poll, events) {
            return true; // interrupted: a turn with nothing to do
        }
        self.tick(app);
        self.turn_start = self.outbox.len();
        self.dispatch(poll, events, app);
        self.resume_cold(app);
        self.expire(app);
        self.commit(app);
        self.release(app);
        // A batch written during `release` freed the journal for what gathered meanwhile.
        self.commit(app);
        self.hand_over_log();
        self.retry_accept(poll);
        !self.shutdown(poll, app)
    }

    /// Sleep in `epoll_wait` (see [`Worker::poll_timeout`]), telling the journal thread that
    /// we sleep; false if a signal interrupted it.
    fn wait(&mut self, poll: &mut Poll, events: &mut Events) -> bool {
        let mut timeout = self.poll_timeout();
        if let Some(c) = &self.committer
            && !c.before_sleep(self.outbox.durable())
        {
            timeout = Some(Duration::ZERO); // a batch was just written: release its answers
        }
        let polled = poll.poll(events, timeout);
        if let Some(c) = &self.committer {
            c.after_sleep();
        }
        match polled {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => false,
            Err(e) => panic!("worker {}: epoll_wait failed: {e}", self.index),
        }
    }

    /// Sleep until an event, the next timer bucket, the end of an accept backoff, or (while
    /// shutting down) the next look at the clock. The journal thread wakes us through the
    /// waker; access-log lines are handed over at least every 100 ms.
    fn poll_timeout(&self) -> Option<Duration> {
        let timers = self.wheel.next_due_in(self.now_ms);
        let backoff = self.backoff_until.map(|t| t.saturating_sub(self.now_ms));
        let log = self
            .access
            .as_ref()
            .is_some_and(|l| l.pending())
            .then_some(100);
        let ms = [timers, backoff, log].into_iter().flatten().min();
        let t = ms.map(Duration::from_millis);
        if self.draining.is_some() || self.grace_until.is_some() {
            return Some(t.map_or(drain::TICK, |t| t.min(drain::TICK)));
        }
        t
    }

    /// The turn's clocks: the coarse ms clock, the `Date` header, the access log's time; and
    /// whether this stripe takes usages now.
    fn tick(&mut self, app: &mut App) {
        self.now_ms = self.epoch.elapsed().as_millis() as u64;
        let wall = SystemTime::now();
        self.date.update(wall);
        if self.access.is_some() {
            let ms = wall
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            let ts = crate::time::Timestamp { ms, offset_min: 0 };
            self.log_time.1 = rfc3339::write(ts, &mut self.log_time.0);
        }
        self.admit_usages(app);
    }

    /// The events of this turn: accept on the listener, drive each ready connection (the
    /// waker needs nothing: `release` sees what the journal wrote).
    fn dispatch(&mut self, poll: &Poll, events: &Events, app: &mut App) {
        for ev in events.iter() {
            match ev.token() {
                LISTENER => self.accept(poll),
                WAKER => {}
                t => {
                    let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
                    self.drive(t, readable, ev.is_read_closed(), app);
                }
            }
        }
    }

    /// Connections whose cold read came back answer it and go on (their answers go through
    /// the outbox like any other).
    fn resume_cold(&mut self, app: &mut App) {
        self.cold.collect(&mut self.cold_done);
        let mut done = std::mem::take(&mut self.cold_done);
        for d in done.drain(..) {
            let m = self.metrics.worker(self.index);
            m.cold_read(&d.result, d.nanos);
            let Some((_, conn)) = self.conns.get_mut(d.conn, d.generation) else {
                continue;
            };
            if conn.cold_done(d.ticket, d.result) {
                self.drive(token(d.conn, d.generation), true, false, app);
            }
        }
        self.cold_done = done;
    }

    /// The access log's lines of this turn go to its writer thread.
    fn hand_over_log(&mut self) {
        if let Some(log) = self.access.as_mut() {
            log.turn(self.now_ms);
            self.metrics
                .worker(self.index)
                .set(metrics::ACCESS_LOG_DROPPED, log.dropped);
        }
    }

    /// New usages are refused (`503`) while the journal cannot write, a write has been in
    /// flight past [`STALL_MS`], or the unwritten batch is too large.
    fn admit_usages(&mut self, app: &mut App) {
        let Some(c) = &self.committer else {
            return;
        };
        app.filling = c.filling();
        let now = committer::clock_ms();
        let trouble = c.status().trouble() != Trouble::None
            || c.in_flight_ms(now) > STALL_MS
            || c.status().busy_for_ms(now) > STALL_MS;
        let big = app
            .writer
            .batch_mut()
            .is_some_and(|(b, _)| b.len() >= MAX_BATCH);
        app.writer.set_accepting(!trouble && !big);
        self.metrics
            .worker(self.index)
            .set(metrics::JOURNAL_UNAVAILABLE, u64::from(trouble));
    }

    /// Hand the records stored so far to the journal thread, if it is free (else they go with
    /// the next batch: group commit).
    fn commit(&mut self, app: &mut App) {
        let m = self.metrics.worker(self.index);
        let Some(c) = &mut self.committer else {
            m.set(metrics::ID_LEASE_END, app.writer.last_id());
            return;
        };
        if let Some((batch, last_id)) = app.writer.batch_mut() {
            c.submit(batch, last_id);
        }
        app.filling = c.filling();
        let status = c.status();
        for (cell, v) in [
            (metrics::JOURNAL_BYTES, &status.bytes_written),
            (metrics::JOURNAL_FSYNCS, &status.syncs),
            (metrics::JOURNAL_FSYNC_NS, &status.sync_ns),
            (metrics::JOURNAL_ERRORS, &status.errors),
            (metrics::ID_LEASE_END, &status.lease),
        ] {
            m.set(cell, v.load(Ordering::Relaxed));
        }
    }

    /// Send every answer the journal allows, one write per part; connections that stopped
    /// with their output full go on (their new answers go through the outbox again).
    fn release(&mut self, app: &mut App) {
        loop {
            if let Some(c) = &self.committer {
                let durable = c.durable();
                self.outbox.set_durable(durable);
                // Before the answers go: a retry of one finds its key's result written.
                app.node.keys.set_durable(self.index, durable);
            }
            let mut ready = std::mem::take(&mut self.ready);
            self.outbox.take_ready(&mut ready);
            for h in ready.drain(..) {
                let m = self.metrics.worker(self.index);
                let t = &self.limits.timeouts;
                let Some(next) = deliver(&mut self.conns, &self.outbox, &h, self.now_ms, t, m)
                else {
                    continue;
                };
                if next == Next::Keep
                    && let Some((_, conn)) = self.conns.at_mut(h.slot)
                    && conn.take_more()
                {
                    self.again.push(h.slot);
                }
                self.after(h.slot, next);
            }
            self.ready = ready;
            self.outbox.reclaim();
            // The output cap counts afresh for what the connections driven again produce.
            self.turn_start = self.outbox.len();
            if self.again.is_empty() {
                return;
            }
            self.drive_again(app);
        }
    }

    /// Drive the connections that stopped with their output full, now that it is out.
    fn drive_again(&mut self, app: &mut App) {
        let mut again = std::mem::take(&mut self.again);
        for index in again.drain(..) {
            let generation = self.conns.generation(index);
            // It stopped reading with its socket not drained: read on (no edge will come).
            self.drive(token(index, generation), true, false, app);
        }
        self.again = again;
        self.commit(app);
    }

    /// The worker's last act: the records not yet handed over go to the journal thread, which
    /// writes them, releases the lease and syncs.
    fn finish(&mut self, app: &mut App) {
        if let Some(log) = self.access.as_mut() {
            log.turn(u64::MAX);
        }
        if let Some(c) = self.committer.take() {
            let last = app
                .writer
                .batch_mut()
                .map(|(b, id)| (std::mem::take(b), id));
            let deadline = self
                .draining
                .unwrap_or_else(|| Instant::now() + self.shutdown_timeout)
                .max(Instant::now() + Duration::from_millis(500));
            if !c.stop(last, deadline) {
                eprintln!(
                    "usaged: worker {}: the journal thread is stuck in a write or sync; exiting without it (what it holds was never acknowledged)",
                    self.index
                );
            }
        }
        // After the journal: every request was answered, so no read is waited for.
        let deadline = Instant::now() + Duration::from_millis(500);
        if !self.cold.stop(deadline) {
            eprintln!(
                "usaged: worker {}: the reader thread is stuck in a read; exiting without it",
                self.index
            );
        }
    }

    fn ctx<'a>(&'a mut self, app: &'a mut App) -> (Ctx<'a>, &'a mut Slab<(TcpStream, Conn)>) {
        let out_start = self.outbox.len();
        let turn_start = self.turn_start;
        let ctx = Ctx {
            app,
            out: self.outbox.buf(),
            out_start,
            date: &self.date,
            limits: self.limits,
            draining: self.draining.is_some(),
            now_ms: self.now_ms,
            turn_start,
            metrics: self.metrics.worker(self.index),
            access: self.access.as_mut(),
            log_time: &self.log_time.0[..self.log_time.1],
        };
        (ctx, &mut self.conns)
    }

    /// Drive the connection `t` stands for (if it is still open) after a readiness event.
    fn drive(&mut self, t: Token, readable: bool, read_closed: bool, app: &mut App) {
        let start = self.outbox.len();
        let stored = app.writer.appended();
        let (mut ctx, conns) = self.ctx(app);
        let Some((index, (stream, conn))) = conns.by_token(t) else {
            return;
        };
        if read_closed {
            conn.note_read_closed();
        }
        let next = conn.on_ready(stream, &mut ctx, readable);
        if let Some((what, ticket)) = conn.take_ask() {
            let generation = self.conns.generation(index);
            self.cold.ask(cold::Ask {
                conn: index,
                generation,
                ticket,
                what,
            });
        }
        let stored = app.writer.appended() != stored;
        self.settle(index, start, next, stored);
    }

    /// After a connection ran: its answers go into the outbox, waiting for the batch its
    /// usages went into (if it stored any) and for its earlier answers; a connection that
    /// closes at once takes its answers with it.
    fn settle(&mut self, index: usize, start: usize, next: Next, stored: bool) {
        match next {
            Next::Keep => {
                let filling = self.committer.as_ref().map_or(0, Committer::filling);
                let generation = self.conns.generation(index);
                let (_, conn) = self.conns.at_mut(index).expect("live connection");
                let wait = conn.wait.max(if stored { filling } else { 0 });
                conn.wait = wait;
                conn.held_parts += 1;
                conn.held_bytes += self.outbox.len() - start;
                self.outbox.hold(index, generation, wait, start);
            }
            Next::Close | Next::Linger => {
                self.outbox.discard(start);
                self.after(index, next);
            }
        }
    }

    /// Act on what a connection asked for, and file its deadline if it moved earlier.
    fn after(&mut self, index: usize, next: Next) {
        match next {
            Next::Keep => self.arm(index),
            Next::Linger => {
                let (stream, _) = self.conns.at_mut(index).expect("live connection");
                if stream.shutdown(std::net::Shutdown::Write).is_err() {
                    self.close(index);
                } else {
                    self.arm(index);
                }
            }
            Next::Close => self.close(index),
        }
    }

    fn arm(&mut self, index: usize) {
        let generation = self.conns.generation(index);
        let Some((_, conn)) = self.conns.at_mut(index) else {
            return;
        };
        let (deadline, _) = conn.deadline();
        if conn.filed_ms.is_none_or(|f| f > deadline) {
            conn.filed_ms = Some(deadline);
            let entry = Entry {
                slot: index as u32,
                generation,
                filed_ms: deadline,
            };
            self.wheel.insert(entry);
        }
    }

    /// Connections whose deadline passed: `408` where a request is in progress, then close.
    fn expire(&mut self, app: &mut App) {
        let conns = &mut self.conns;
        self.wheel.advance(
            self.now_ms,
            |e| {
                let (_, conn) = conns.get_mut(e.slot as usize, e.generation)?;
                if conn.filed_ms != Some(e.filed_ms) {
                    return None;
                }
                let (deadline, _) = conn.deadline();
                conn.filed_ms = Some(deadline);
                Some(deadline)
            },
            &mut self.expired,
        );
        let mut expired = std::mem::take(&mut self.expired);
        for e in expired.drain(..) {
            let index = e.slot as usize;
            let start = self.outbox.len();
            let (mut ctx, conns) = self.ctx(app);
            let Some((_, conn)) = conns.at_mut(index) else {
                continue;
            };
            conn.filed_ms = None;
            let kind = conn.deadline().1 as usize;
            ctx.metrics.add(metrics::TIMEOUT + kind, 1);
            let next = conn.on_timeout(&mut ctx);
            self.settle(index, start, next, false);
        }
        self.expired = expired;
    }

    fn close(&mut self, index: usize) {
        if let Some((stream, conn)) = self.conns.remove(index) {
            drop(stream);
            self.spare_buffer(conn.into_buf());
            self.metrics
                .worker(self.index)
                .add(metrics::CONNS_CLOSED, 1);
        }
    }
}

/// Hand one released part of the outbox to its connection: `None` if that connection is gone
/// (its slot was vacated, and maybe reused: the generation tells), else what it does next.
fn deliver<S: Write>(
    conns: &mut Slab<(S, Conn)>,
    outbox: &Outbox,
    h: &Held,
    now_ms: u64,
    timeouts: &Timeouts,
    m: &WorkerMetrics,
) -> Option<Next> {
    let (stream, conn) = conns.get_mut(h.slot, h.generation)?;
    let bytes = outbox.bytes(h);
    conn.held_parts -= 1;
    conn.held_bytes -= bytes.len();
    Some(conn.complete(stream, bytes, now_ms, timeouts, m))
}
