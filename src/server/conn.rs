//! One connection: its read buffer, the request in progress, and output a full socket could
//! not take. [`Conn::on_ready`] is the whole state machine: flush what was held back, then
//! read → frame → answer until the socket is drained, then one `write` for the batch.
//!
//! Syscalls per readiness: one `read` (a short read means the socket is drained, so no extra
//! `read` to see `EAGAIN`; only a read that filled the buffer is followed by another) and one
//! `write`. Generic over the socket so the state machine runs in tests without a network.

use std::io::{self, Read, Write};

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
/// Bytes a closing connection reads and discards before it gives up on a clean close.
const LINGER_MAX: usize = 1 << 20;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_header: usize,
    pub max_body: usize,
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
    /// The worker's output buffer; empty when a connection starts running.
    pub out: &'a mut Vec<u8>,
    pub date: &'a DateCache,
    pub limits: Limits,
    /// Shutting down: every answer closes its connection.
    pub draining: bool,
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
    /// The client closed its sending side.
    eof: bool,
    /// The last read left the socket drained.
    drained: bool,
    lingering: Option<usize>,
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
            eof: false,
            drained: true,
            lingering: None,
        }
    }

    /// Give back the read buffer for reuse by the next connection.
    pub fn into_buf(self) -> Box<[u8]> {
        self.buf
    }

    /// No request in progress and nothing to send: safe to close when shutting down.
    pub fn is_idle(&self) -> bool {
        self.start == self.end && self.unsent.is_empty() && self.lingering.is_none()
    }

    /// Drive the connection after a readiness event (`readable`: the event said so).
    pub fn on_ready<S: Read + Write>(
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
                Ok(n) => drop(self.unsent.drain(..n)),
                Err(_) => return Next::Close,
            }
            if !self.unsent.is_empty() {
                return Next::Keep;
            }
            if self.closing || self.eof {
                return self.finish_close();
            }
            // Reads were paused while output was held back: data may be waiting unannounced.
            readable = true;
        }
        loop {
            if self.process(ctx) == Stop::OutputFull {
                match self.send(sock, ctx.out) {
                    Ok(true) => continue,
                    Ok(false) => return Next::Keep,
                    Err(_) => return Next::Close,
                }
            }
            if self.closing || self.eof || !readable {
                break;
            }
            if !self.make_room(ctx.limits) {
                crate::app::reject(
                    Reject::BadRequest("request too large"),
                    None,
                    &mut answer(ctx),
                );
                self.closing = true;
                break;
            }
            let space = self.buf.len() - self.end;
            match sock.read(&mut self.buf[self.end..]) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    self.end += n;
                    readable = n == space;
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
        match self.send(sock, ctx.out) {
            Ok(true) => {}
            Ok(false) => return Next::Keep,
            Err(_) => return Next::Close,
        }
        if self.closing || self.eof {
            return self.finish_close();
        }
        if self.start == self.end && self.buf.len() > DEFAULT_BUF {
            self.shrink();
        }
        Next::Keep
    }

    /// Answer every complete request in the buffer, in order.
    fn process(&mut self, ctx: &mut Ctx<'_>) -> Stop {
        loop {
            if self.closing {
                return Stop::Idle;
            }
            if ctx.out.len() >= OUT_HIGH {
                return Stop::OutputFull;
            }
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
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
                        app::reject(r, None, &mut answer(ctx));
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
                        self.end -= p.chunked.compact(&mut self.buf[body_start..self.end]);
                        return self.await_body(p, ctx);
                    }
                    Err(e) => {
                        let r = match e {
                            ChunkError::Malformed => Reject::BadRequest("malformed chunked body"),
                            ChunkError::TooLarge => Reject::PayloadTooLarge,
                        };
                        app::reject(r, Some(&p.head), &mut answer(ctx));
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
            if ctx.app.respond(p.route, &p.head, body, &mut a) {
                self.closing = true;
            }
            self.start = body_start + consumed;
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
                    app::reject(r, Some(&head), &mut answer(ctx));
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

    /// Write `out` once; keep what the socket did not take. `Ok(true)` when all of it went.
    fn send<S: Write>(&mut self, sock: &mut S, out: &mut Vec<u8>) -> io::Result<bool> {
        if out.is_empty() {
            return Ok(true);
        }
        let n = write_once(sock, out)?;
        if n < out.len() {
            self.unsent.extend_from_slice(&out[n..]);
        }
        out.clear();
        Ok(self.unsent.is_empty())
    }

    fn finish_close(&mut self) -> Next {
        if self.eof || (self.start == self.end && self.drained && self.pending.is_none()) {
            Next::Close
        } else {
            self.lingering = Some(0);
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
