//! One connection: its read buffer, the request in progress, and output a full socket could
//! not take. [`Conn::on_ready`] is the whole state machine: flush what was held back, then
//! read → frame → answer until the socket is drained, then one `write` for the batch.
//!
//! Syscalls per readiness: one `read` (a short read means the socket is drained, so no extra
//! `read` to see `EAGAIN`; only a read that filled the buffer is followed by another) and one
//! `write`. Generic over the socket so the state machine runs in tests without a network.

use std::io::{self, Read, Write};
use std::time::Instant;

use crate::access_log::{Line, WorkerLog};
use crate::metrics::{self, WorkerMetrics};

use crate::app::{self, Answer, App, Route, router};
use crate::http::chunked::{ChunkError, Chunked, Progress};
use crate::http::date::DateCache;
use crate::http::request::{Framing, Head, Parsed, parse_head};
use crate::http::response;
use crate::http::status::Reject;

/// Read buffer of a new connection; also what an idle one shrinks back to.
pub const DEFAULT_BUF: usize = 8 * 1024;
/// Answers queued for one connection before they are written out and processing resumes.
const OUT_HIGH: usize = 64 * 1024;
/// Answers queued for all connections of one loop turn before they go out.
const TURN_OUT_MAX: usize = 4 << 20;
/// Bytes a closing connection reads and discards before it gives up on a clean close.
const LINGER_MAX: usize = 1 << 20;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_header: usize,
    pub max_body: usize,
    pub timeouts: Timeouts,
}

/// How long each state may last, in milliseconds of the worker's coarse clock.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From the first byte of a request to the end of its head (`408`).
    pub header_ms: u64,
    /// From the end of the head to the end of the body (`408`).
    pub body_ms: u64,
    /// A keep-alive connection with no request in progress (closed quietly).
    pub idle_ms: u64,
    /// A client that takes none of its output for this long is cut off.
    pub write_ms: u64,
    /// Reading and discarding before a close.
    pub linger_ms: u64,
}

/// What a connection's deadline stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    // In the order of `metrics::TIMEOUTS`.
    Idle,
    Header,
    Body,
    Write,
    Linger,
}

impl Limits {
    /// Largest read buffer: a whole request of the largest size, plus a partial chunk line.
    fn max_buf(&self) -> usize {
        self.max_header + self.max_body + 4096
    }
}

/// The worker's state a connection uses while it runs: shared per loop turn, never per
/// connection.
pub struct Ctx<'a> {
    pub app: &'a mut App,
    /// The worker's output buffer for this loop turn; this connection's answers are appended
    /// from `out_start` on.
    pub out: &'a mut Vec<u8>,
    pub out_start: usize,
    pub date: &'a DateCache,
    pub limits: Limits,
    /// Shutting down: every answer closes its connection.
    pub draining: bool,
    /// The worker's coarse clock (milliseconds), read once per loop turn.
    pub now_ms: u64,
    /// Where this loop turn's answers begin in `out` (earlier bytes are answers still held
    /// for the journal): the turn's output cap counts from here.
    pub turn_start: usize,
    /// This worker's counters.
    pub metrics: &'a WorkerMetrics,
    /// This worker's access log, when `--access-log` is on, and the time its lines carry.
    pub access: Option<&'a mut WorkerLog>,
    pub log_time: &'a [u8],
}

/// What the worker does with the connection after [`Conn::on_ready`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Keep,
    Close,
    /// Shut down our sending side, then read and discard until the client closes, so unread
    /// request bytes do not turn into a reset that destroys the answer in flight.
    Linger,
}

/// A request whose head is parsed and whose body is still arriving.
#[derive(Debug, Clone, Copy)]
struct Pending {
    head: Head,
    route: Result<Route, Reject>,
    chunked: Chunked,
    continue_sent: bool,
    /// When the head was complete (the body timeout runs from here).
    since_ms: u64,
}

/// Why [`Conn::process`] stopped.
#[derive(PartialEq, Eq)]
enum Stop {
    /// Nothing more to do with what is buffered.
    Idle,
    /// Enough output is queued: write it before answering more.
    OutputFull,
}

pub struct Conn {
    /// INVARIANT: `start <= end <= buf.len()`; `buf[start..end]` is received, unanswered input.
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    pending: Option<Pending>,
    /// Output the socket did not take yet. Empty in steady state (keeps its capacity).
    unsent: Vec<u8>,
    /// An answer that closes the connection is queued: no more requests are read.
    closing: bool,
    /// Stopped with complete requests left because its output was full.
    more: bool,
    /// When the read that brought the first byte of the request at `start` happened.
    req_started: Option<Instant>,
    last_read: Option<Instant>,
    /// Requests answered in this readiness: the first one's start, and how many more (which
    /// started at `last_read`).
    batch_first: Option<Instant>,
    batch_rest: u64,
    /// The client's address (for the access log).
    peer: Option<std::net::SocketAddr>,
    /// The client closed its sending side.
    eof: bool,
    /// The last read left the socket drained.
    drained: bool,
    /// The event said the peer closed its side (EPOLLRDHUP): read on to the EOF, since no
    /// further edge will announce it.
    hup: bool,
    lingering: Option<usize>,
    /// When the first byte of the request at `start` arrived, once one has.
    head_since_ms: Option<u64>,
    /// When the connection last made progress (answered a request, wrote output).
    active_ms: u64,
    /// The current deadline and what it is for: see [`Conn::deadline`].
    deadline_ms: u64,
    timeout: Timeout,
    /// The deadline of this connection's live entry in the worker's timer wheel, if filed
    /// (see `timer.rs`).
    pub filed_ms: Option<u64>,
    /// Shutting down: input at `start >= admitted` arrived after the drain began (`503`).
    admitted: Option<usize>,
    /// The journal batch this connection's latest answers in the worker's outbox wait for
    /// (kept by the worker: a later answer never waits for less).
    pub wait: u64,
    /// This connection's parts in the worker's outbox not yet sent, and their bytes (kept by
    /// the worker). While any is held, the connection does not close, does not time out idle,
    /// and with 64 KiB or more held reads nothing more.
    pub held_parts: u32,
    pub held_bytes: usize,
}

impl Conn {
    pub fn new(buf: Box<[u8]>) -> Self {
        Conn {
            buf,
            start: 0,
            end: 0,
            pending: None,
            unsent: Vec::new(),
            closing: false,
            more: false,
            req_started: None,
            last_read: None,
            batch_first: None,
            batch_rest: 0,
            peer: None,
            eof: false,
            drained: true,
            hup: false,
            lingering: None,
            head_since_ms: None,
            active_ms: 0,
            deadline_ms: 0,
            timeout: Timeout::Idle,
            filed_ms: None,
            admitted: None,
            wait: 0,
            held_parts: 0,
            held_bytes: 0,
        }
    }

    /// A new connection from `peer`, accepted at `now_ms`.
    pub fn accepted(buf: Box<[u8]>, peer: std::net::SocketAddr, now_ms: u64, t: &Timeouts) -> Self {
        let mut c = Conn::new(buf);
        c.peer = Some(peer);
        c.active_ms = now_ms;
        c.set_deadline(now_ms, t);
        c
    }

    /// The current deadline (milliseconds on the worker clock) and what expires then.
    pub fn deadline(&self) -> (u64, Timeout) {
        (self.deadline_ms, self.timeout)
    }

    /// The readiness event said the peer closed its sending side.
    pub fn note_read_closed(&mut self) {
        self.hup = true;
    }

    /// Shutting down: what is buffered now was read before the drain and is answered; any
    /// request after it gets `503` and the connection closes.
    pub fn begin_drain(&mut self) {
        self.admitted = Some(self.end);
    }

    /// Shutting down an idle connection: send a FIN (the worker shuts our side) and read and
    /// discard until the client closes, so nothing it sent turns into a reset.
    pub fn close_gracefully(&mut self, now_ms: u64, linger_ms: u64) -> Next {
        self.lingering = Some(0);
        self.deadline_ms = now_ms + linger_ms;
        self.timeout = Timeout::Linger;
        Next::Linger
    }

    /// Input moved down by `k` bytes: keep the drain mark on the same byte.
    fn shifted(&mut self, k: usize) {
        if let Some(a) = &mut self.admitted {
            *a = a.saturating_sub(k);
        }
    }

    /// Work out the deadline for the state the connection is in now: a plain store per
    /// readiness; the timer wheel checks it lazily. A lingering close keeps the deadline it
    /// was given when it began.
    fn set_deadline(&mut self, now: u64, t: &Timeouts) {
        let (at, kind) = if self.lingering.is_some() {
            (self.deadline_ms.min(now + t.linger_ms), Timeout::Linger)
        } else if !self.unsent.is_empty() {
            (self.active_ms + t.write_ms, Timeout::Write)
        } else if let Some(p) = &self.pending {
            (p.since_ms + t.body_ms, Timeout::Body)
        } else if self.start < self.end {
            (
                *self.head_since_ms.get_or_insert(now) + t.header_ms,
                Timeout::Header,
            )
        } else {
            (self.active_ms + t.idle_ms, Timeout::Idle)
        };
        self.deadline_ms = at;
        self.timeout = kind;
    }

    /// The deadline passed. A request in progress gets `408` (if the connection can still
    /// take an answer), then the connection closes.
    #[cold]
    pub fn on_timeout(&mut self, ctx: &mut Ctx<'_>) -> Next {
        if self.timeout == Timeout::Idle && self.held_parts > 0 {
            // Not idle: its answers wait for the journal. Look again an idle period later.
            self.active_ms = ctx.now_ms;
            self.set_deadline(ctx.now_ms, &ctx.limits.timeouts);
            return Next::Keep;
        }
        match self.timeout {
            Timeout::Header | Timeout::Body if self.unsent.is_empty() => {
                // The 408 goes out through `complete`, which then closes (lingering over what
                // the client may still be sending).
                let head = self.pending.take().map(|p| p.head);
                refuse(
                    Reject::RequestTimeout,
                    head.as_ref(),
                    metrics::ROUTE_OTHER,
                    ctx,
                );
                self.closing = true;
                self.drained = false;
                Next::Keep
            }
            Timeout::Idle | Timeout::Header | Timeout::Body | Timeout::Write | Timeout::Linger => {
                Next::Close
            }
        }
    }

    /// Give back the read buffer for reuse by the next connection.
    pub fn into_buf(self) -> Box<[u8]> {
        self.buf
    }

    /// Accepted less than a second ago and nothing read yet: its first request may be on the
    /// way (a proxy opens connections before it has requests for them).
    pub fn fresh(&self, now_ms: u64) -> bool {
        self.last_read.is_none() && now_ms < self.active_ms + 1000
    }

    /// No progress (an answer, a write) for `ms`: a client still using the connection would
    /// most likely have sent its next request by now.
    pub fn quiet_for(&self, now_ms: u64, ms: u64) -> bool {
        now_ms >= self.active_ms + ms
    }

    /// No request in progress and nothing to send: safe to close when shutting down.
    pub fn is_idle(&self) -> bool {
        self.start == self.end
            && self.unsent.is_empty()
            && self.lingering.is_none()
            && self.held_parts == 0
    }

    /// Drive the connection after a readiness event (`readable`: the event said so).
    pub fn on_ready<S: Read + Write>(
        &mut self,
        sock: &mut S,
        ctx: &mut Ctx<'_>,
        readable: bool,
    ) -> Next {
        let next = self.drive(sock, ctx, readable);
        if next != Next::Close {
            self.set_deadline(ctx.now_ms, &ctx.limits.timeouts);
        }
        next
    }

    fn drive<S: Read + Write>(
        &mut self,
        sock: &mut S,
        ctx: &mut Ctx<'_>,
        mut readable: bool,
    ) -> Next {
        if let Some(discarded) = self.lingering {
            return self.linger(sock, discarded);
        }
        if !self.unsent.is_empty() {
            match write_once(sock, &self.unsent) {
                Ok(0) => {}
                Ok(n) => {
                    ctx.metrics.add(metrics::BYTES_OUT, n as u64);
                    self.unsent.drain(..n);
                    self.active_ms = ctx.now_ms;
                }
                Err(_) => return Next::Close,
            }
            if !self.unsent.is_empty() {
                return Next::Keep;
            }
            if self.closing || self.eof {
                if self.held_parts > 0 {
                    // Its last answers still wait for the journal: closing comes after them.
                    return Next::Keep;
                }
                return self.finish_close();
            }
            // Reads were paused while output was held back: data may be waiting unannounced.
            readable = true;
        }
        loop {
            if self.process(ctx) == Stop::OutputFull {
                // Answer the rest after this output is out (the worker drives us again).
                self.more = true;
                break;
            }
            if self.closing || self.eof || !readable {
                break;
            }
            if !self.make_room(ctx.limits) {
                refuse(
                    Reject::BadRequest("request too large"),
                    None,
                    metrics::ROUTE_OTHER,
                    ctx,
                );
                self.closing = true;
                break;
            }
            let space = self.buf.len() - self.end;
            match sock.read(&mut self.buf[self.end..]) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    let t = Instant::now();
                    if self.start == self.end {
                        self.req_started = Some(t);
                    }
                    self.last_read = Some(t);
                    ctx.metrics.add(metrics::BYTES_IN, n as u64);
                    self.end += n;
                    readable = n == space || self.hup;
                    self.drained = !readable;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.drained = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Next::Close,
            }
        }
        if self.batch_first.is_some() || self.batch_rest > 0 {
            let now = Instant::now();
            let ns = |t: Option<Instant>| t.map_or(0, |t| now.duration_since(t).as_nanos() as u64);
            ctx.metrics.latency(ns(self.batch_first), 1);
            ctx.metrics.latency(ns(self.last_read), self.batch_rest);
            self.batch_first = None;
            self.batch_rest = 0;
        }
        // The answers wait in the worker's output buffer until the journal has this turn's
        // usages; then the worker hands them to `complete`.
        Next::Keep
    }

    /// Send this connection's answers from the turn (`out`: its part of the worker's output
    /// buffer, written after the journal), and close if that was the last thing to do.
    pub fn complete<S: Write>(
        &mut self,
        sock: &mut S,
        out: &[u8],
        ctx_now_ms: u64,
        t: &Timeouts,
        m: &WorkerMetrics,
    ) -> Next {
        if self.lingering.is_some() {
            // Already closing: it only reads and discards now.
            return Next::Keep;
        }
        if !self.unsent.is_empty() {
            // Earlier answers are still queued: these go behind them, in order.
            self.unsent.extend_from_slice(out);
        } else if !out.is_empty() {
            match write_once(sock, out) {
                Ok(n) => {
                    m.add(metrics::BYTES_OUT, n as u64);
                    if n > 0 {
                        self.active_ms = ctx_now_ms;
                    }
                    if n < out.len() {
                        self.unsent.extend_from_slice(&out[n..]);
                        self.more = false;
                    }
                }
                Err(_) => return Next::Close,
            }
        }
        let next = if !self.unsent.is_empty() || self.held_parts > 0 {
            Next::Keep
        } else if self.closing || self.eof {
            self.more = false;
            self.finish_close()
        } else {
            if self.start == self.end && self.buf.len() > DEFAULT_BUF {
                self.shrink();
            }
            Next::Keep
        };
        if next != Next::Close {
            self.set_deadline(ctx_now_ms, t);
        }
        next
    }

    /// Whether the connection stopped with complete requests left (its output was full) and
    /// wants to be driven again once its answers are out.
    pub fn take_more(&mut self) -> bool {
        std::mem::take(&mut self.more)
    }

    /// One readiness driven to the end without a journal, as the worker does it for a single
    /// connection: `on_ready`, `complete`, and again while it has more. For tests and tools.
    pub fn run_once<S: Read + Write>(
        &mut self,
        sock: &mut S,
        ctx: &mut Ctx<'_>,
        readable: bool,
    ) -> Next {
        let mut readable = readable;
        loop {
            ctx.out.clear();
            ctx.out_start = 0;
            let next = self.on_ready(sock, ctx, readable);
            if next != Next::Keep {
                return next;
            }
            let next = self.complete(sock, ctx.out, ctx.now_ms, &ctx.limits.timeouts, ctx.metrics);
            ctx.out.clear();
            if next != Next::Keep || !self.take_more() {
                return next;
            }
            // It stopped reading with its socket not drained: read on.
            readable = true;
        }
    }
    /// Answer every complete request in the buffer, in order.
    fn process(&mut self, ctx: &mut Ctx<'_>) -> Stop {
        loop {
            if self.closing {
                return Stop::Idle;
            }
            if self.start == self.end {
                self.shifted(self.start);
                self.start = 0;
                self.end = 0;
                return Stop::Idle;
            }
            if ctx.out.len() - ctx.out_start >= OUT_HIGH
                || ctx.out.len().saturating_sub(ctx.turn_start) >= TURN_OUT_MAX
                || self.held_bytes >= OUT_HIGH
            {
                return Stop::OutputFull;
            }
            if self.pending.is_none() && self.admitted.is_some_and(|a| self.start >= a) {
                let r = Reject::Unavailable("server is shutting down");
                refuse(r, None, metrics::ROUTE_OTHER, ctx);
                self.closing = true;
                return Stop::Idle;
            }
            let mut p = match self.pending {
                Some(p) => p,
                None => match parse_head(
                    &self.buf[self.start..self.end],
                    ctx.limits.max_header,
                    ctx.limits.max_body,
                ) {
                    Parsed::Partial => return Stop::Idle,
                    Parsed::Reject(r) => {
                        refuse(r, None, metrics::ROUTE_OTHER, ctx);
                        self.closing = true;
                        return Stop::Idle;
                    }
                    Parsed::Head(head) => {
                        let path = &self.buf[self.start + head.path.0..self.start + head.path.1];
                        let route = router::route(&head, path);
                        Pending {
                            head,
                            route,
                            chunked: Chunked::default(),
                            continue_sent: false,
                            since_ms: ctx.now_ms,
                        }
                    }
                },
            };
            let body_start = self.start + p.head.len;
            let (body_len, consumed) = match p.head.framing {
                Framing::None => (0, 0),
                Framing::Length(n) if self.end - body_start >= n => (n, n),
                Framing::Length(n) => {
                    self.reserve(p.head.len + n);
                    return self.await_body(p, ctx);
                }
                Framing::Chunked => match p
                    .chunked
                    .advance(&mut self.buf[body_start..self.end], ctx.limits.max_body)
                {
                    Ok(Progress::Done { decoded, consumed }) => (decoded, consumed),
                    Ok(Progress::NeedMore) => {
                        let freed = p.chunked.compact(&mut self.buf[body_start..self.end]);
                        self.end -= freed;
                        self.shifted(freed);
                        return self.await_body(p, ctx);
                    }
                    Err(e) => {
                        let r = match e {
                            ChunkError::Malformed => Reject::BadRequest("malformed chunked body"),
                            ChunkError::TooLarge => Reject::PayloadTooLarge,
                        };
                        refuse(r, Some(&p.head), Route::label(&p.route), ctx);
                        self.closing = true;
                        return Stop::Idle;
                    }
                },
            };
            self.pending = None;
            let body = &mut self.buf[body_start..body_start + body_len];
            let mut a = Answer {
                out: ctx.out,
                date: ctx.date,
                force_close: ctx.draining,
            };
            let out_before = a.out.len();
            let (close, status) = ctx.app.respond(p.route, &p.head, body, &mut a);
            ctx.metrics.request(Route::label(&p.route), status);
            if ctx.access.is_some() {
                self.log(ctx, &p.head, status, out_before);
            }
            if close {
                self.closing = true;
            }
            // Server time: from the read that brought the request's first byte to now (taken
            // once per readiness, in `drive`).
            match self.batch_first {
                None if self.batch_rest == 0 => self.batch_first = self.req_started,
                _ => self.batch_rest += 1,
            }
            self.start = body_start + consumed;
            self.req_started = if self.start < self.end {
                self.last_read
            } else {
                None
            };
            self.head_since_ms = None;
            self.active_ms = ctx.now_ms;
        }
    }

    /// The access-log line of the request at `start` (only with `--access-log`).
    #[cold]
    fn log(&self, ctx: &mut Ctx<'_>, head: &Head, status: u16, out_before: usize) {
        let req = &self.buf[self.start..];
        let method = &req[..req.iter().position(|&b| b == b' ').unwrap_or(0)];
        let mut client = [0u8; 48];
        let client_len = {
            let mut w = &mut client[..];
            let _ = match self.peer {
                Some(a) => write!(w, "{a}"),
                None => write!(w, "-"),
            };
            48 - w.len()
        };
        let micros = self
            .req_started
            .map_or(0, |t| t.elapsed().as_micros() as u64);
        let line = Line {
            time: ctx.log_time,
            client: &client[..client_len],
            method,
            path: &req[head.path.0..head.path.1],
            status,
            bytes: ctx.out.len() - out_before,
            micros,
            id: (status == 201).then_some(ctx.app.last_created),
        };
        if let Some(log) = ctx.access.as_deref_mut() {
            log.log(&line);
        }
    }

    /// The head is in, the body is not: remember where we are, and answer `Expect:
    /// 100-continue` (with `100`, or with the final error at once, closing since the body
    /// will not be read).
    fn await_body(&mut self, mut p: Pending, ctx: &mut Ctx<'_>) -> Stop {
        if p.head.expect_continue && !p.continue_sent {
            p.continue_sent = true;
            match p.route {
                Ok(_) => ctx.out.extend_from_slice(response::CONTINUE),
                Err(r) => {
                    let mut head = p.head;
                    head.keep_alive = false;
                    refuse(r, Some(&head), Route::label(&p.route), ctx);
                    self.closing = true;
                }
            }
        }
        self.pending = Some(p);
        Stop::Idle
    }

    /// Make space after `end` for a read: reset, compact, or grow up to the limit.
    fn make_room(&mut self, limits: Limits) -> bool {
        if self.end < self.buf.len() {
            return true;
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.shifted(self.start);
            self.end -= self.start;
            self.start = 0;
            return true;
        }
        self.grow(limits)
    }

    /// Room for a request of `len` bytes from `start`, in one step (its length is known).
    fn reserve(&mut self, len: usize) {
        if self.start + len <= self.buf.len() {
            return;
        }
        if len <= self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
        } else {
            self.resize(len.next_multiple_of(DEFAULT_BUF));
        }
        self.shifted(self.start);
        self.end -= self.start;
        self.start = 0;
    }

    /// A buffer of `size` bytes holding `buf[start..end]` at its start.
    #[cold]
    fn resize(&mut self, size: usize) {
        let mut bigger = vec![0; size].into_boxed_slice();
        bigger[..self.end - self.start].copy_from_slice(&self.buf[self.start..self.end]);
        self.buf = bigger;
    }

    #[cold]
    fn grow(&mut self, limits: Limits) -> bool {
        let max = limits.max_buf();
        if self.buf.len() >= max {
            return false;
        }
        self.resize((self.buf.len() * 2).min(max));
        self.shifted(self.start);
        self.end -= self.start;
        self.start = 0;
        true
    }

    #[cold]
    fn shrink(&mut self) {
        self.buf = vec![0; DEFAULT_BUF].into_boxed_slice();
        self.start = 0;
        self.end = 0;
    }

    fn finish_close(&mut self) -> Next {
        if self.eof || (self.start == self.end && self.drained && self.pending.is_none()) {
            Next::Close
        } else {
            self.lingering = Some(0);
            self.deadline_ms = u64::MAX;
            Next::Linger
        }
    }

    /// Read and discard until the client closes (or sends too much), then close.
    fn linger<S: Read>(&mut self, sock: &mut S, mut discarded: usize) -> Next {
        loop {
            match sock.read(&mut self.buf) {
                Ok(0) => return Next::Close,
                Ok(n) => {
                    discarded += n;
                    if discarded > LINGER_MAX {
                        return Next::Close;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Next::Close,
            }
        }
        self.lingering = Some(discarded);
        Next::Keep
    }
}

/// Answer with the error `r`, and count it.
#[cold]
fn refuse(r: Reject, head: Option<&Head>, route: usize, ctx: &mut Ctx<'_>) {
    ctx.metrics.request(route, r.status());
    app::reject(r, head, &mut answer(ctx));
}

fn answer<'c>(ctx: &'c mut Ctx<'_>) -> Answer<'c> {
    Answer {
        out: ctx.out,
        date: ctx.date,
        force_close: ctx.draining,
    }
}

/// One `write`; a full socket is 0 bytes written, not an error.
fn write_once<S: Write>(sock: &mut S, data: &[u8]) -> io::Result<usize> {
    loop {
        match sock.write(data) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests;
