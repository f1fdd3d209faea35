//! One worker: a thread pinned to one CPU, its own `mio` poll and `SO_REUSEPORT` listener, its
//! own connections, output buffer, `Date` cache, timer wheel and stripe of the store. A loop
//! turn reads as its phases: wait → clock → events (accept, drive) → timers → accept retry →
//! shutdown.

use std::io;
use std::net::TcpListener as StdListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant, SystemTime};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use super::conn::{Conn, Ctx, DEFAULT_BUF, Limits, Next};
use super::timer::{Entry, Wheel};
use crate::access_log::WorkerLog;
use crate::app::App;
use crate::http::date::DateCache;
use crate::metrics::{self, Metrics};
use crate::time::rfc3339;

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
/// Read buffers kept for reuse when connections close.
const SPARE_BUFFERS: usize = 256;
/// First and longest pause in accepting after running out of descriptors or memory.
const BACKOFF_MIN_MS: u64 = 10;
const BACKOFF_MAX_MS: u64 = 1000;
/// While draining, how often the loop looks at the clock.
const DRAIN_TICK: Duration = Duration::from_millis(50);

/// Everything a worker thread starts with.
pub struct Setup {
    pub index: usize,
    pub access: Option<WorkerLog>,
    pub metrics: Arc<Metrics>,
    pub listener: StdListener,
    pub core: Option<core_affinity::CoreId>,
    pub app: App,
    pub limits: Limits,
    pub max_conns: usize,
    pub shutdown: Arc<AtomicBool>,
    pub shutdown_timeout: Duration,
    /// Where the worker reports that it is accepting (with its waker) or why it cannot.
    pub ready: Sender<io::Result<Arc<Waker>>>,
}

/// A connection slot; `generation` goes into the token, so an event for a connection closed
/// earlier in the same batch (whose slot was reused) is recognised and dropped.
struct Slot {
    generation: u32,
    conn: Option<(TcpStream, Conn)>,
}

/// Token layout: generation in the high 32 bits, slot index in the low 32.
fn token(index: usize, generation: u32) -> Token {
    Token((generation as usize) << 32 | index)
}

pub fn run(setup: Setup) {
    let Setup {
        index,
        access,
        metrics,
        listener,
        core,
        mut app,
        limits,
        max_conns,
        shutdown,
        shutdown_timeout,
        ready,
    } = setup;
    if let Some(core) = core {
        core_affinity::set_for_current(core);
    }
    let started = (|| {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let mut listener = TcpListener::from_std(listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        Ok((poll, waker, listener))
    })();
    let (mut poll, waker, listener) = match started {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(waker));
    let mut w = Worker {
        index,
        access,
        log_time: ([0; rfc3339::MAX_LEN], 0),
        metrics,
        listener: Some(listener),
        slots: Vec::new(),
        free: Vec::new(),
        spare: Vec::new(),
        open: 0,
        max_conns,
        out: Vec::with_capacity(128 * 1024),
        date: DateCache::default(),
        limits,
        epoch: Instant::now(),
        now_ms: 0,
        wheel: Wheel::default(),
        expired: Vec::new(),
        turn: Vec::new(),
        again: Vec::new(),
        accept_full: false,
        backoff_until: None,
        backoff_ms: BACKOFF_MIN_MS,
        draining: None,
    };
    let mut events = Events::with_capacity(1024);
    loop {
        let mut sync_due = app
            .writer
            .journal_mut()
            .and_then(|j| j.sync_due_in(Instant::now()));
        if w.access.as_ref().is_some_and(|l| l.pending()) {
            // Access-log lines are handed over at least every 100 ms.
            sync_due = Some(sync_due.map_or(Duration::from_millis(100), |d| {
                d.min(Duration::from_millis(100))
            }));
        }
        if let Err(e) = poll.poll(&mut events, w.poll_timeout(sync_due)) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            panic!("worker {index}: epoll_wait failed: {e}");
        }
        w.now_ms = w.epoch.elapsed().as_millis() as u64;
        let wall = SystemTime::now();
        w.date.update(wall);
        if w.access.is_some() {
            let ms = wall
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            let ts = crate::time::Timestamp { ms, offset_min: 0 };
            w.log_time.1 = rfc3339::write(ts, &mut w.log_time.0);
        }
        for ev in events.iter() {
            match ev.token() {
                LISTENER => w.accept(&poll),
                WAKER => {}
                t => {
                    let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
                    w.drive(t, readable, ev.is_read_closed(), &mut app);
                }
            }
        }
        w.expire(&mut app);
        w.flush_turn(&mut app);
        if let Some(log) = w.access.as_mut() {
            log.turn(w.now_ms);
            w.metrics
                .worker(w.index)
                .set(metrics::ACCESS_LOG_DROPPED, log.dropped);
        }
        w.retry_accept(&poll);
        if shutdown.load(Ordering::Acquire) && w.draining.is_none() {
            w.start_drain(&poll, Instant::now() + shutdown_timeout);
        }
        if let Some(deadline) = w.draining
            && (w.open == 0 || Instant::now() >= deadline)
        {
            if let Some(log) = w.access.as_mut() {
                log.turn(u64::MAX);
            }
            if let Some(j) = app.writer.journal_mut()
                && let Err(e) = j.flush(Instant::now()).and_then(|_| j.sync_now())
            {
                eprintln!("worker {index}: final journal sync failed: {e}");
            }
            return;
        }
    }
}

struct Worker {
    index: usize,
    /// `--access-log`: this worker's buffer, and the time (RFC 3339, UTC) of this loop turn.
    access: Option<WorkerLog>,
    log_time: ([u8; rfc3339::MAX_LEN], usize),
    metrics: Arc<Metrics>,
    listener: Option<TcpListener>,
    slots: Vec<Slot>,
    free: Vec<usize>,
    spare: Vec<Box<[u8]>>,
    open: usize,
    max_conns: usize,
    out: Vec<u8>,
    date: DateCache,
    limits: Limits,
    /// The coarse clock: milliseconds since `epoch`, read once per loop turn.
    epoch: Instant,
    now_ms: u64,
    wheel: Wheel,
    expired: Vec<Entry>,
    /// Connections driven this turn whose answers wait in `out` for the journal:
    /// `(slot, generation, start, end)` of their part of `out`.
    turn: Vec<(usize, u32, usize, usize)>,
    /// Connections to drive again once their answers are out (their output was full).
    again: Vec<usize>,
    /// At `max_conns`: new connections wait in the backlog until one closes.
    accept_full: bool,
    /// Out of descriptors or memory: no accepting until then (ms), then twice as long next time.
    backoff_until: Option<u64>,
    backoff_ms: u64,
    /// When shutting down: the deadline for the last connections.
    draining: Option<Instant>,
}

impl Worker {
    /// Sleep until an event, the next timer bucket, the end of an accept backoff, or (while
    /// draining) the next look at the clock.
    fn poll_timeout(&self, sync_due: Option<Duration>) -> Option<Duration> {
        let timers = self.wheel.next_due_in(self.now_ms);
        let timers = match (timers, sync_due) {
            (Some(t), Some(s)) => Some(t.min(s.as_millis() as u64 + 1)),
            (t, s) => t.or(s.map(|s| s.as_millis() as u64 + 1)),
        };
        let backoff = self.backoff_until.map(|t| t.saturating_sub(self.now_ms));
        let ms = match (timers, backoff) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let t = ms.map(Duration::from_millis);
        match (t, self.draining) {
            (Some(t), Some(_)) => Some(t.min(DRAIN_TICK)),
            (None, Some(_)) => Some(DRAIN_TICK),
            (t, None) => t,
        }
    }

    fn accept(&mut self, poll: &Poll) {
        while self.backoff_until.is_none() {
            let Some(listener) = &self.listener else {
                return;
            };
            if self.open >= self.max_conns {
                self.accept_full = true;
                return;
            }
            match listener.accept() {
                Ok((mut stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let index = self.free.pop().unwrap_or_else(|| {
                        self.slots.push(Slot {
                            generation: 0,
                            conn: None,
                        });
                        self.slots.len() - 1
                    });
                    let slot = &mut self.slots[index];
                    let t = token(index, slot.generation);
                    if poll
                        .registry()
                        .register(&mut stream, t, Interest::READABLE | Interest::WRITABLE)
                        .is_err()
                    {
                        self.free.push(index);
                        continue;
                    }
                    let buf = self
                        .spare
                        .pop()
                        .unwrap_or_else(|| vec![0; DEFAULT_BUF].into_boxed_slice());
                    slot.conn = Some((
                        stream,
                        Conn::accepted(buf, peer, self.now_ms, &self.limits.timeouts),
                    ));
                    self.open += 1;
                    self.metrics
                        .worker(self.index)
                        .add(metrics::CONNS_ACCEPTED, 1);
                    self.backoff_ms = BACKOFF_MIN_MS;
                    self.arm(index);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                // Out of descriptors or buffers (EMFILE, ENFILE, ENOBUFS, ENOMEM): leave the
                // rest in the backlog, and try again after a pause that grows while it lasts.
                Err(e) => return self.back_off(&e),
            }
        }
    }

    #[cold]
    fn back_off(&mut self, e: &io::Error) {
        eprintln!(
            "worker {}: accept failed: {e}; pausing accepts for {} ms",
            self.index, self.backoff_ms
        );
        let m = self.metrics.worker(self.index);
        m.add(metrics::ACCEPT_ERRORS, 1);
        m.add(metrics::ACCEPT_BACKOFFS, 1);
        self.backoff_until = Some(self.now_ms + self.backoff_ms);
        self.backoff_ms = (self.backoff_ms * 2).min(BACKOFF_MAX_MS);
    }

    /// The listener is edge-triggered: connections that waited in the backlog while we were
    /// full or backing off announce nothing, so look again when that ends.
    fn retry_accept(&mut self, poll: &Poll) {
        if self.backoff_until.is_some_and(|t| t <= self.now_ms) {
            self.backoff_until = None;
            self.accept(poll);
        } else if self.accept_full && self.open < self.max_conns {
            self.accept_full = false;
            self.accept(poll);
        }
    }

    fn ctx<'a>(&'a mut self, app: &'a mut App) -> (Ctx<'a>, &'a mut Vec<Slot>) {
        let out_start = self.out.len();
        let ctx = Ctx {
            app,
            out: &mut self.out,
            out_start,
            date: &self.date,
            limits: self.limits,
            draining: self.draining.is_some(),
            now_ms: self.now_ms,
            metrics: self.metrics.worker(self.index),
            access: self.access.as_mut(),
            log_time: &self.log_time.0[..self.log_time.1],
        };
        (ctx, &mut self.slots)
    }

    fn drive(&mut self, t: Token, readable: bool, read_closed: bool, app: &mut App) {
        let index = t.0 & 0xffff_ffff;
        match self.slots.get(index) {
            Some(slot) if token(index, slot.generation) == t && slot.conn.is_some() => {}
            _ => return,
        }
        let start = self.out.len();
        let (mut ctx, slots) = self.ctx(app);
        let (stream, conn) = slots[index].conn.as_mut().expect("checked above");
        if read_closed {
            conn.note_read_closed();
        }
        let next = conn.on_ready(stream, &mut ctx, readable);
        self.settle(index, start, next);
    }

    /// After a connection ran: answers to send go on the turn's list (sent once the journal has
    /// the turn's usages); a connection that closes at once takes its answers with it.
    fn settle(&mut self, index: usize, start: usize, next: Next) {
        match next {
            Next::Keep => {
                let generation = self.slots[index].generation;
                self.turn.push((index, generation, start, self.out.len()));
            }
            Next::Close | Next::Linger => {
                self.out.truncate(start);
                self.after(index, next);
            }
        }
    }

    /// End of a loop turn: the journal first, then every connection's answers, one write each;
    /// connections that stopped with their output full run again, until none has more.
    fn flush_turn(&mut self, app: &mut App) {
        if let Some(j) = app.writer.journal_mut() {
            let now = Instant::now();
            let due = j.sync_due_in(now).is_some_and(|d| d.is_zero());
            if (j.has_pending() || due) && !j.failed() {
                let flushed = j.flush(now);
                let m = self.metrics.worker(self.index);
                m.set(metrics::JOURNAL_BYTES, j.bytes_written);
                m.set(metrics::JOURNAL_FSYNCS, j.syncs);
                m.set(metrics::JOURNAL_FSYNC_NS, j.sync_ns);
                if let Err(e) = flushed {
                    return self.journal_failed(&e);
                }
            }
        }
        while !self.turn.is_empty() {
            let mut turn = std::mem::take(&mut self.turn);
            for (index, generation, a, b) in turn.drain(..) {
                let slot = &mut self.slots[index];
                let Some((stream, conn)) =
                    slot.conn.as_mut().filter(|_| slot.generation == generation)
                else {
                    continue;
                };
                let next = conn.complete(
                    stream,
                    &self.out[a..b],
                    self.now_ms,
                    &self.limits.timeouts,
                    self.metrics.worker(self.index),
                );
                if next == Next::Keep && conn.take_more() {
                    self.again.push(index);
                }
                self.after(index, next);
            }
            self.turn = turn;
            self.out.clear();
            if let Some(j) = app.writer.journal_mut().filter(|j| j.has_pending()) {
                // Connections driven again stored more usages: journal them before answering.
                if let Err(e) = j.flush(Instant::now()) {
                    return self.journal_failed(&e);
                }
            }
            let mut again = std::mem::take(&mut self.again);
            for index in again.drain(..) {
                let generation = self.slots[index].generation;
                // It stopped reading with its socket not drained: read on (no edge will come).
                self.drive(token(index, generation), true, false, app);
            }
            self.again = again;
        }
    }
    /// Act on what a connection asked for, and file its deadline if it moved earlier.
    fn after(&mut self, index: usize, next: Next) {
        match next {
            Next::Keep => self.arm(index),
            Next::Linger => {
                let (stream, _) = self.slots[index].conn.as_mut().expect("live connection");
                if stream.shutdown(std::net::Shutdown::Write).is_err() {
                    self.close(index);
                } else {
                    self.arm(index);
                }
            }
            Next::Close => self.close(index),
        }
    }

    /// The journal could not be written: the usages of this turn are not durable, so their
    /// `201`s must not go. Close those connections unanswered (clients retry); the stripe takes
    /// no more usages (`503`) from now on.
    #[cold]
    fn journal_failed(&mut self, e: &io::Error) {
        eprintln!(
            "worker {}: journal write failed: {e}; closing this turn's connections unanswered",
            self.index
        );
        for (index, generation, _, _) in std::mem::take(&mut self.turn) {
            if self.slots[index].generation == generation {
                self.close(index);
            }
        }
        self.out.clear();
    }

    fn arm(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        let Some((_, conn)) = slot.conn.as_mut() else {
            return;
        };
        let (deadline, _) = conn.deadline();
        if conn.filed_ms.is_none_or(|f| f > deadline) {
            conn.filed_ms = Some(deadline);
            let entry = Entry {
                slot: index as u32,
                generation: slot.generation,
                filed_ms: deadline,
            };
            self.wheel.insert(entry);
        }
    }

    /// Connections whose deadline passed: `408` where a request is in progress, then close.
    fn expire(&mut self, app: &mut App) {
        let slots = &mut self.slots;
        self.wheel.advance(
            self.now_ms,
            |e| {
                let slot = slots
                    .get_mut(e.slot as usize)
                    .filter(|s| s.generation == e.generation)?;
                let (_, conn) = slot.conn.as_mut()?;
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
            let start = self.out.len();
            let (mut ctx, slots) = self.ctx(app);
            let Some((_, conn)) = slots[index].conn.as_mut() else {
                continue;
            };
            conn.filed_ms = None;
            let kind = conn.deadline().1 as usize;
            ctx.metrics.add(metrics::TIMEOUT + kind, 1);
            let next = conn.on_timeout(&mut ctx);
            self.settle(index, start, next);
        }
        self.expired = expired;
    }

    fn close(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        if let Some((stream, conn)) = slot.conn.take() {
            drop(stream);
            let buf = conn.into_buf();
            if self.spare.len() < SPARE_BUFFERS && buf.len() == DEFAULT_BUF {
                self.spare.push(buf);
            }
            slot.generation = slot.generation.wrapping_add(1) & 0x7fff_ffff;
            self.free.push(index);
            self.open -= 1;
            self.metrics
                .worker(self.index)
                .add(metrics::CONNS_CLOSED, 1);
        }
    }

    /// Stop accepting and close idle connections; the rest answer what they had read (closing
    /// after it; later requests get `503`) until the deadline.
    fn start_drain(&mut self, poll: &Poll, deadline: Instant) {
        self.draining = Some(deadline);
        if let Some(mut l) = self.listener.take() {
            let _ = poll.registry().deregister(&mut l);
        }
        for i in 0..self.slots.len() {
            match self.slots[i].conn.as_mut() {
                Some((_, c)) if c.is_idle() => self.close(i),
                Some((_, c)) => c.begin_drain(),
                None => {}
            }
        }
    }
}
