//! One worker: a thread pinned to one CPU, its own `mio` poll and `SO_REUSEPORT` listener, its
//! own connections, outbox, `Date` cache, timer wheel, stripe of the store and journal thread.
//! A loop turn reads as its phases (`Worker::turn`): wait → clock → events (accept, drive) →
//! timers → commit (hand the turn's records to the journal thread) → release (answers whose
//! records are written leave; connections that stopped with full output go on) → accept retry
//! → shutdown.

use std::io;
use std::net::TcpListener as StdListener;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant, SystemTime};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use super::conn::{Conn, Ctx, DEFAULT_BUF, Limits, Next};
use super::outbox::{Held, Outbox};
use super::timer::{Entry, Wheel};
use crate::access_log::WorkerLog;
use crate::app::App;
use crate::http::date::DateCache;
use crate::metrics::{self, Metrics};
use crate::store::committer::{self, Committer, STALL_MS, Trouble};
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
/// While draining, an idle connection is closed once it has been quiet this long (ms).
const DRAIN_QUIET_MS: u64 = 100;
/// While draining, the listener stays open this long after it stops taking new handshakes,
/// for those already under way to complete (a round trip) and be accepted: closing it
/// earlier would reset a client that believes it is connected.
const LISTEN_HOLD: Duration = Duration::from_millis(100);
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
    pub limits: Limits,
    pub max_conns: usize,
    pub drain_grace: Duration,
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
        journal,
        limits,
        max_conns,
        drain_grace,
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
    })();
    let (mut poll, waker, listener, committer) = match started {
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
        outbox: Outbox::with_capacity(128 * 1024),
        ready: Vec::new(),
        turn_start: 0,
        committer,
        date: DateCache::default(),
        limits,
        epoch: Instant::now(),
        now_ms: 0,
        wheel: Wheel::default(),
        expired: Vec::new(),
        again: Vec::new(),
        accept_full: false,
        backoff_until: None,
        backoff_ms: BACKOFF_MIN_MS,
        drain_grace,
        shutdown_timeout,
        grace_until: None,
        draining: None,
        listen_until: None,
    };
    let mut events = Events::with_capacity(1024);
    while w.turn(&mut poll, &mut events, &mut app) {}
    w.finish(&mut app);
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
    /// Every answer, until the journal has written what it depends on.
    outbox: Outbox,
    /// Parts of the outbox released this turn (kept for its capacity).
    ready: Vec<Held>,
    /// The outbox's length when this turn began (its answers before were held earlier).
    turn_start: usize,
    /// This worker's journal thread (`None`: `--in-memory`).
    committer: Option<Committer>,
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
    /// One loop turn, as its phases. Returns false when the worker is done.
    fn turn(&mut self, poll: &mut Poll, events: &mut Events, app: &mut App) -> bool {
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
        if let Err(e) = polled {
            if e.kind() == io::ErrorKind::Interrupted {
                return true;
            }
            panic!("worker {}: epoll_wait failed: {e}", self.index);
        }
        self.tick(app);
        self.turn_start = self.outbox.len();
        for ev in events.iter() {
            match ev.token() {
                LISTENER => self.accept(poll),
                WAKER => {} // the journal wrote a batch: `release` below sees it
                t => {
                    let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
                    self.drive(t, readable, ev.is_read_closed(), app);
                }
            }
        }
        self.expire(app);
        self.commit(app);
        self.release(app);
        // A batch written during `release` freed the journal for what gathered meanwhile.
        self.commit(app);
        if let Some(log) = self.access.as_mut() {
            log.turn(self.now_ms);
            self.metrics
                .worker(self.index)
                .set(metrics::ACCESS_LOG_DROPPED, log.dropped);
        }
        self.retry_accept(poll);
        !self.shutdown(poll, app)
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
            return Some(t.map_or(DRAIN_TICK, |t| t.min(DRAIN_TICK)));
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

    /// New usages are refused (`503`) while the journal cannot write, a write has been in
    /// flight past [`STALL_MS`], or the unwritten batch is too large.
    fn admit_usages(&mut self, app: &mut App) {
        let Some(c) = &self.committer else {
            return;
        };
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
        let Some(c) = &mut self.committer else {
            return;
        };
        if let Some((batch, last_id)) = app.writer.batch_mut() {
            c.submit(batch, last_id);
        }
        let (status, m) = (c.status(), self.metrics.worker(self.index));
        for (cell, v) in [
            (metrics::JOURNAL_BYTES, &status.bytes_written),
            (metrics::JOURNAL_FSYNCS, &status.syncs),
            (metrics::JOURNAL_FSYNC_NS, &status.sync_ns),
            (metrics::JOURNAL_ERRORS, &status.errors),
        ] {
            m.set(cell, v.load(Ordering::Relaxed));
        }
    }

    /// Send every answer the journal allows, one write per part; connections that stopped
    /// with their output full go on (their new answers go through the outbox again).
    fn release(&mut self, app: &mut App) {
        loop {
            if let Some(c) = &self.committer {
                self.outbox.set_durable(c.durable());
            }
            let mut ready = std::mem::take(&mut self.ready);
            self.outbox.take_ready(&mut ready);
            for h in ready.drain(..) {
                let slot = &mut self.slots[h.slot];
                let Some((stream, conn)) = slot
                    .conn
                    .as_mut()
                    .filter(|_| slot.generation == h.generation)
                else {
                    continue;
                };
                let bytes = self.outbox.bytes(&h);
                conn.held_parts -= 1;
                conn.held_bytes -= bytes.len();
                let next = conn.complete(
                    stream,
                    bytes,
                    self.now_ms,
                    &self.limits.timeouts,
                    self.metrics.worker(self.index),
                );
                if next == Next::Keep && conn.take_more() {
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
            let mut again = std::mem::take(&mut self.again);
            for index in again.drain(..) {
                let generation = self.slots[index].generation;
                // It stopped reading with its socket not drained: read on (no edge will come).
                self.drive(token(index, generation), true, false, app);
            }
            self.again = again;
            self.commit(app);
        }
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
                    if self.draining.is_some()
                        && let Some((_, c)) = self.slots[index].conn.as_mut()
                    {
                        c.begin_drain();
                    }
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
        (ctx, &mut self.slots)
    }

    fn drive(&mut self, t: Token, readable: bool, read_closed: bool, app: &mut App) {
        let index = t.0 & 0xffff_ffff;
        match self.slots.get(index) {
            Some(slot) if token(index, slot.generation) == t && slot.conn.is_some() => {}
            _ => return,
        }
        let start = self.outbox.len();
        let stored = app.writer.appended();
        let (mut ctx, slots) = self.ctx(app);
        let (stream, conn) = slots[index].conn.as_mut().expect("checked above");
        if read_closed {
            conn.note_read_closed();
        }
        let next = conn.on_ready(stream, &mut ctx, readable);
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
                let slot = &mut self.slots[index];
                let (_, conn) = slot.conn.as_mut().expect("live connection");
                let wait = conn.wait.max(if stored { filling } else { 0 });
                conn.wait = wait;
                conn.held_parts += 1;
                conn.held_bytes += self.outbox.len() - start;
                self.outbox.hold(index, slot.generation, wait, start);
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
            let start = self.outbox.len();
            let (mut ctx, slots) = self.ctx(app);
            let Some((_, conn)) = slots[index].conn.as_mut() else {
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

    /// After SIGINT/SIGTERM: serve normally through `--drain-grace` (`/health` already says
    /// 503), then drain; true once the last connection is gone or the deadline passed.
    fn shutdown(&mut self, poll: &Poll, app: &mut App) -> bool {
        if !app.node.draining.load(Ordering::Acquire) {
            return false;
        }
        let now = Instant::now();
        let grace_until = *self.grace_until.get_or_insert(now + self.drain_grace);
        if self.draining.is_none() && now >= grace_until {
            self.start_drain(poll, app, now + self.shutdown_timeout);
        }
        let Some(deadline) = self.draining else {
            return false;
        };
        if self.listen_until.is_some_and(|t| now >= t) {
            self.close_listener(poll);
        }
        self.close_idle(app);
        self.commit(app);
        self.release(app);
        (self.listener.is_none() && self.open == 0 && self.outbox.is_empty()) || now >= deadline
    }

    /// Take the last completed handshakes, then close the listener.
    fn close_listener(&mut self, poll: &Poll) {
        self.accept(poll);
        if let Some(mut l) = self.listener.take() {
            let _ = poll.registry().deregister(&mut l);
        }
        self.listen_until = None;
    }

    /// Stop accepting; read what each connection already sent (answered normally, closing
    /// after); from now on its new requests get `503` and a close.
    fn start_drain(&mut self, poll: &Poll, app: &mut App, deadline: Instant) {
        self.draining = Some(deadline);
        // Closing a listener resets the connections waiting in its backlog: first let no new
        // handshake start (clients retry their SYN, and find the port closed), keep taking
        // those already under way for `LISTEN_HOLD`, and serve them like the rest.
        if let Some(l) = &self.listener
            && let Err(e) = super::listener::refuse_new(l)
        {
            eprintln!(
                "usaged: worker {}: cannot stop new handshakes: {e}",
                self.index
            );
        }
        self.listen_until = Some(Instant::now() + LISTEN_HOLD);
        self.accept(poll);
        for i in 0..self.slots.len() {
            let generation = self.slots[i].generation;
            if self.slots[i].conn.is_some() {
                self.drive(token(i, generation), true, false, app);
            }
            if let Some((_, c)) = self.slots[i].conn.as_mut() {
                c.begin_drain();
            }
        }
        self.commit(app);
        self.release(app);
    }

    /// While draining: a connection with nothing in progress and nothing waiting is looked at
    /// (`peek`): a request that came in is read and answered (`503` and a close); otherwise,
    /// once quiet for `DRAIN_QUIET_MS`, it is closed with a FIN and read until the client
    /// closes: never a reset over unread bytes. A connection that has sent nothing yet gets a
    /// second for its first request.
    fn close_idle(&mut self, app: &mut App) {
        let (now, linger) = (self.now_ms, self.limits.timeouts.linger_ms);
        for i in 0..self.slots.len() {
            let Some((stream, c)) = self.slots[i].conn.as_mut() else {
                continue;
            };
            if !c.is_idle() {
                continue;
            }
            let next = match stream.peek(&mut [0; 1]) {
                Ok(0) => Next::Close,
                Ok(_) => {
                    let generation = self.slots[i].generation;
                    self.drive(token(i, generation), true, false, app);
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // A busy client's next request gets `503` and a close, which no race
                    // can lose; a FIN goes only to connections quiet for a while.
                    if c.fresh(now) || !c.quiet_for(now, DRAIN_QUIET_MS) {
                        continue;
                    }
                    c.close_gracefully(now, linger)
                }
                Err(_) => Next::Close,
            };
            self.after(i, next);
        }
    }
}
