//! One connection: its input (`input.rs`), the request in progress (answered in
//! `request.rs`), its latency clock (`clock.rs`), and output a full socket could not take
//! (`output.rs`, with the close). A connection's state is one `Phase`; its deadline is one
//! `match` on it (`set_deadline`, read through [`Conn::deadline`]).
//!
//! The flow, driven by the worker:
//! 1. [`Conn::on_ready`] (a readiness event): flush output held back by a full socket, then
//!    read → frame → answer until the socket is drained or the output is full. Answers are
//!    appended to the worker's outbox ([`Ctx::out`]); nothing is written here, since an
//!    answer may wait there for the journal batch that holds its records (`outbox.rs`).
//! 2. [`Conn::complete`] (the worker, once that batch is written): one `write` of this
//!    connection's released answers, then close if that was the last thing to do. Output the
//!    socket does not take waits in the connection (`unsent`) for the next writable event.
//! 3. [`Conn::take_more`]: a connection that stopped with complete requests left (its output
//!    was full) asks to be driven again once its answers are out.
//!
//! Syscalls per readiness: one `read` (a short read means the socket is drained, so no extra
//! `read` to see `EAGAIN`; only a read that filled the buffer is followed by another), one
//! `write` for output held back, and one `write` per part the worker releases. Generic over
//! the socket so the state machine runs in tests without a network (`testing.rs`).
#![forbid(unsafe_code)]

mod bulk;
mod clock;
mod input;
mod output;
mod request;
#[cfg(test)]
pub(crate) mod testing;

use std::io::{Read, Write};
use std::time::Instant;

use crate::metrics::{self, WorkerMetrics};

use crate::access_log::WorkerLog;
use crate::app::{self, Answer, App, Route};
use crate::http::chunked::Chunked;
use crate::http::date::DateCache;
use crate::http::request::Head;
use crate::http::status::Reject;

use clock::Clock;
use input::{Got, Input};

/// Read buffer of a new connection; also what an idle one shrinks back to.
pub const DEFAULT_BUF: usize = 8 * 1024;
/// Answers queued for one connection before they are written out and processing resumes.
const OUT_HIGH: usize = 64 * 1024;
/// Answers queued for all connections of one loop turn before they go out.
const TURN_OUT_MAX: usize = 4 << 20;
/// Bytes a closing connection reads and discards before it gives up on a clean close.
const LINGER_MAX: usize = 1 << 20;
/// A cold read (`cold.rs` in `server`) not back within this long is answered `503` with
/// `Retry-After` (a stuck disk), and the connection goes on.
pub const COLD_READ_MS: u64 = 10_000;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_header: usize,
    pub max_body: usize,
    /// Largest bulk (`application/x-ndjson`) body: streamed, never buffered whole.
    pub max_bulk: usize,
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
    /// A cold read did not come back (`503`).
    Cold,
}

impl Limits {
    /// Largest read buffer: a whole request of the largest size (or a bulk's head and one
    /// partial line), plus a partial chunk line.
    fn max_buf(&self) -> usize {
        self.max_header + self.max_body.max(app::bulk::MAX_LINE) + 4096
    }
}

/// The worker's state a connection uses while it runs: shared per loop turn, never per
/// connection.
pub struct Ctx<'a> {
    pub app: &'a mut App,
    /// The bytes of the worker's outbox (`outbox.rs`), where answers wait for their journal
    /// batch; this connection's answers are appended from `out_start` on.
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

/// Where a connection is in its life. `body`: a request whose head is parsed and whose body
/// has not all arrived.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Reading and answering requests.
    Open { body: Option<Pending> },
    /// An answer that closes the connection is queued: no more requests are read or answered
    /// (`body`: a request whose body was left unread, which makes the close linger).
    Closing { body: Option<Pending> },
    /// Our side is shut: reading and discarding (`discarded` bytes so far) until the client
    /// closes, so unread bytes do not turn into a reset that destroys the answer in flight.
    Lingering { discarded: usize },
}

/// A `GET` waiting for its usage to be read from disk. The request stays in the input until
/// it is answered; nothing behind it is read or answered meanwhile (answers stay in order).
#[derive(Debug, Clone, Copy)]
struct Parked {
    p: Pending,
    /// Input bytes the request takes (head and body).
    consumed: usize,
    ask: app::ColdAsk,
    ticket: u32,
    since_ms: u64,
    /// Handed to the worker ([`Conn::take_ask`]).
    asked: bool,
}

/// Why [`Conn::process`] stopped.
#[derive(PartialEq, Eq)]
enum Stop {
    /// Nothing more to do with what is buffered.
    Idle,
    /// A request waits for a cold read.
    Parked,
    /// Enough output is queued: write it before answering more.
    OutputFull,
    /// A bulk took its share of this drive (`bulk::BULK_DRIVE`): go on once its lines so far
    /// are journaled, after the worker's other connections.
    Yield,
}

pub struct Conn {
    input: Input,
    phase: Phase,
    /// Output the socket did not take yet. Empty in steady state (keeps its capacity).
    unsent: Vec<u8>,
    /// Stopped with complete requests left because its output was full (see
    /// [`Conn::take_more`]).
    more: bool,
    clock: Clock,
    /// The client's address (for the access log).
    peer: Option<std::net::SocketAddr>,
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
    /// The journal batch this connection's latest answers in the worker's outbox wait for
    /// (kept by the worker: a later answer never waits for less).
    pub wait: u64,
    /// This connection's parts in the worker's outbox not yet sent, and their bytes (kept by
    /// the worker). While any is held, the connection does not close, does not time out idle,
    /// and with 64 KiB or more held reads nothing more.
    pub held_parts: u32,
    pub held_bytes: usize,
    /// The request waiting for a cold read, its result once back, and the tickets issued.
    parked: Option<Parked>,
    cold_result: Option<crate::store::cold::ColdRead>,
    tickets: u32,
    /// The bulk whose body is arriving, and its answer lines so far (the buffer is kept for
    /// the connection's next bulk).
    bulk: Option<bulk::Bulk>,
    bulk_out: Vec<u8>,
    /// Body bytes offered to the bulk in this drive (see `bulk::BULK_DRIVE`).
    bulk_drive: usize,
}

impl Conn {
    pub fn new(buf: Box<[u8]>) -> Self {
        Conn {
            input: Input::new(buf),
            phase: Phase::Open { body: None },
            unsent: Vec::new(),
            more: false,
            clock: Clock::default(),
            peer: None,
            head_since_ms: None,
            active_ms: 0,
            deadline_ms: 0,
            timeout: Timeout::Idle,
            filed_ms: None,
            wait: 0,
            held_parts: 0,
            held_bytes: 0,
            parked: None,
            cold_result: None,
            tickets: 0,
            bulk: None,
            bulk_out: Vec::new(),
            bulk_drive: 0,
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
        self.input.hup = true;
    }

    /// Shutting down: what is buffered now was read before the drain and is answered; any
    /// request after it gets `503` and the connection closes.
    pub fn begin_drain(&mut self) {
        self.input.begin_drain();
    }

    /// Shutting down an idle connection: send a FIN (the worker shuts our side) and read and
    /// discard until the client closes, so nothing it sent turns into a reset.
    pub fn close_gracefully(&mut self, now_ms: u64, linger_ms: u64) -> Next {
        self.phase = Phase::Lingering { discarded: 0 };
        self.deadline_ms = now_ms + linger_ms;
        self.timeout = Timeout::Linger;
        Next::Linger
    }

    /// The request whose body is arriving, if any.
    fn body(&self) -> Option<Pending> {
        match self.phase {
            Phase::Open { body } | Phase::Closing { body } => body,
            Phase::Lingering { .. } => None,
        }
    }

    /// Keep `body` as the request in progress (in whichever phase the connection is).
    fn set_body(&mut self, new: Option<Pending>) {
        if let Phase::Open { body } | Phase::Closing { body } = &mut self.phase {
            *body = new;
        }
    }

    /// An answer that closes the connection was queued: read and answer nothing more.
    fn close_after(&mut self) {
        if let Phase::Open { body } = self.phase {
            self.phase = Phase::Closing { body };
        }
    }

    fn is_closing(&self) -> bool {
        matches!(self.phase, Phase::Closing { .. })
    }

    /// No more requests will come in: ours closes, or the client closed its side.
    fn done_reading(&self) -> bool {
        self.is_closing() || self.input.eof
    }

    /// Work out the deadline for the state the connection is in now: a plain store per
    /// readiness; the timer wheel checks it lazily. A lingering close keeps the deadline it
    /// was given when it began; output the client does not take counts before any request.
    fn set_deadline(&mut self, now: u64, t: &Timeouts) {
        let (at, kind) = match &self.phase {
            Phase::Lingering { .. } => (self.deadline_ms.min(now + t.linger_ms), Timeout::Linger),
            _ if !self.unsent.is_empty() => (self.active_ms + t.write_ms, Timeout::Write),
            _ if let Some(pk) = &self.parked => (pk.since_ms + COLD_READ_MS, Timeout::Cold),
            Phase::Open { body: Some(p) } | Phase::Closing { body: Some(p) } => {
                (p.since_ms + t.body_ms, Timeout::Body)
            }
            Phase::Open { body: None } | Phase::Closing { body: None }
                if !self.input.is_empty() =>
            {
                (
                    *self.head_since_ms.get_or_insert(now) + t.header_ms,
                    Timeout::Header,
                )
            }
            Phase::Open { body: None } | Phase::Closing { body: None } => {
                (self.active_ms + t.idle_ms, Timeout::Idle)
            }
        };
        self.deadline_ms = at;
        self.timeout = kind;
    }

    /// The deadline passed. A request in progress gets `408` (if the connection can still
    /// take an answer), then the connection closes.
    #[cold]
    pub fn on_timeout(&mut self, ctx: &mut Ctx<'_>) -> Next {
        if self.held_parts > 0
            && matches!(
                self.timeout,
                Timeout::Idle | Timeout::Header | Timeout::Body
            )
        {
            // Not the client's delay: its answers wait for the journal, and what it sent
            // behind them (a request we stopped reading past 64 KiB held, or one behind a
            // `Connection: close` answer) waits with them. A `408` now would follow a held `201`
            // onto the wire. Look again a period later, counted from now.
            let now = ctx.now_ms;
            self.active_ms = now;
            if self.head_since_ms.is_some() {
                self.head_since_ms = Some(now);
            }
            if let Some(mut p) = self.body() {
                p.since_ms = now;
                self.set_body(Some(p));
            }
            self.set_deadline(now, &ctx.limits.timeouts);
            return Next::Keep;
        }
        match self.timeout {
            Timeout::Cold => {
                self.cold_timed_out(ctx);
                Next::Keep
            }
            Timeout::Header | Timeout::Body if self.unsent.is_empty() => {
                // The 408 goes out through `complete`, which then closes (lingering over what
                // the client may still be sending).
                let head = self.body().map(|p| p.head);
                self.set_body(None);
                self.bulk_reset();
                refuse(
                    Reject::RequestTimeout,
                    head.as_ref(),
                    metrics::ROUTE_OTHER,
                    ctx,
                );
                self.close_after();
                self.input.drained = false;
                Next::Keep
            }
            Timeout::Idle | Timeout::Header | Timeout::Body | Timeout::Write | Timeout::Linger => {
                Next::Close
            }
        }
    }

    /// A request parked since the last call waits for its cold read: `(what, ticket)` for the
    /// worker to hand to its reader thread. Once per parked request.
    pub fn take_ask(&mut self) -> Option<(app::ColdAsk, u32)> {
        let pk = self.parked.as_mut().filter(|pk| !pk.asked)?;
        pk.asked = true;
        Some((pk.ask, pk.ticket))
    }

    /// The cold read of ticket `ticket` came back: keep it for the next drive, which answers
    /// it. `false` (and nothing kept) if that request is no longer waiting (it timed out).
    pub fn cold_done(&mut self, ticket: u32, r: crate::store::cold::ColdRead) -> bool {
        if self.parked.is_none_or(|pk| pk.ticket != ticket) {
            return false;
        }
        self.cold_result = Some(r);
        true
    }

    /// Give back the read buffer for reuse by the next connection.
    pub fn into_buf(self) -> Box<[u8]> {
        self.input.into_buf()
    }

    /// Accepted less than a second ago and nothing read yet: its first request may be on the
    /// way (a proxy opens connections before it has requests for them).
    pub fn fresh(&self, now_ms: u64) -> bool {
        self.clock.never_read() && now_ms < self.active_ms + 1000
    }

    /// No progress (an answer, a write) for `ms`: a client still using the connection would
    /// most likely have sent its next request by now.
    pub fn quiet_for(&self, now_ms: u64, ms: u64) -> bool {
        now_ms >= self.active_ms + ms
    }

    /// No request in progress and nothing to send: safe to close when shutting down.
    pub fn is_idle(&self) -> bool {
        self.input.is_empty()
            && self.unsent.is_empty()
            && !matches!(self.phase, Phase::Lingering { .. })
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

    /// The readiness in steps: a lingering close only discards; output held back goes
    /// first; then answer and read in turn; then record the latency of what was answered.
    /// The answers wait in the worker's outbox until the journal has this turn's usages; then
    /// the worker hands them to `complete`.
    fn drive<S: Read + Write>(&mut self, sock: &mut S, ctx: &mut Ctx<'_>, readable: bool) -> Next {
        if let Phase::Lingering { discarded } = self.phase {
            return self.linger(sock, discarded);
        }
        let mut readable = readable;
        self.bulk_drive = 0;
        if !self.unsent.is_empty() {
            if let Some(next) = self.flush_unsent(sock, ctx) {
                return next;
            }
            // Reads were paused while output was held back: data may be waiting unannounced.
            readable = true;
        }
        if self.answer_and_read(sock, ctx, readable).is_err() {
            return Next::Close;
        }
        self.clock.report(ctx.metrics);
        Next::Keep
    }

    /// Answer what is buffered, then read, until the socket is drained, the output is full
    /// or nothing more will be read. `Err`: the socket failed.
    fn answer_and_read<S: Read>(
        &mut self,
        sock: &mut S,
        ctx: &mut Ctx<'_>,
        mut readable: bool,
    ) -> Result<(), ()> {
        loop {
            match self.process(ctx) {
                Stop::OutputFull | Stop::Yield => {
                    // Answer the rest after this output is out (the worker drives us again).
                    self.more = true;
                    return Ok(());
                }
                // Read on once it is answered (the worker drives us again, readable).
                Stop::Parked => return Ok(()),
                Stop::Idle => {}
            }
            if self.done_reading() || !readable {
                return Ok(());
            }
            if !self.input.make_room(ctx.limits.max_buf()) {
                refuse(
                    Reject::BadRequest("request too large"),
                    None,
                    metrics::ROUTE_OTHER,
                    ctx,
                );
                self.close_after();
                return Ok(());
            }
            let first = self.input.is_empty();
            match self.input.read_from(sock) {
                Got::Eof => self.input.eof = true,
                Got::Bytes { n, filled } => {
                    self.clock.read(Instant::now(), first);
                    ctx.metrics.add(metrics::BYTES_IN, n as u64);
                    readable = filled || self.input.hup;
                    self.input.drained = !readable;
                }
                Got::Drained => {
                    self.input.drained = true;
                    return Ok(());
                }
                Got::Retry => {}
                Got::Failed => return Err(()),
            }
        }
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

#[cfg(test)]
mod tests;
