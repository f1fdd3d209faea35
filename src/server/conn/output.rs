//! A connection's write side and its close: output held back by a full socket
//! (`unsent`), the answers the worker releases from its outbox ([`Conn::complete`]), and the
//! end of a connection (a plain close, or a lingering one that reads and discards until the
//! client closes).
#![forbid(unsafe_code)]

use std::io::{self, Read, Write};

use super::{Conn, Ctx, LINGER_MAX, Next, Phase, Timeouts};
use crate::metrics::{self, WorkerMetrics};

/// The capacity of `unsent` kept once it is empty again.
const UNSENT_KEEP: usize = 256 << 10;

impl Conn {
    /// Write output held back by a full socket. `None`: all of it went and the connection
    /// goes on reading; else what the readiness ends with.
    pub(super) fn flush_unsent<S: Write>(
        &mut self,
        sock: &mut S,
        ctx: &mut Ctx<'_>,
    ) -> Option<Next> {
        match write_once(sock, &self.unsent) {
            Ok(0) => {}
            Ok(n) => {
                ctx.metrics.add(metrics::BYTES_OUT, n as u64);
                self.unsent.drain(..n);
                self.active_ms = ctx.now_ms;
            }
            Err(_) => return Some(Next::Close),
        }
        if !self.unsent.is_empty() {
            return Some(Next::Keep);
        }
        if self.unsent.capacity() > UNSENT_KEEP {
            // It held a long answer (a bulk's): not kept for the connection's life.
            self.unsent = Vec::new();
        }
        if self.done_reading() {
            if self.held_parts > 0 {
                // Its last answers still wait for the journal: closing comes after them.
                return Some(Next::Keep);
            }
            return Some(self.finish_close());
        }
        None
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
        if let Phase::Lingering { .. } = self.phase {
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
        } else if self.done_reading() {
            self.more = false;
            self.finish_close()
        } else {
            self.input.shrink_if_grown();
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

    /// Everything it had to send is out: close now if nothing is left unread, else shut our
    /// side and linger.
    pub(super) fn finish_close(&mut self) -> Next {
        if self.input.eof || (self.input.is_empty() && self.input.drained && self.body().is_none())
        {
            Next::Close
        } else {
            self.phase = Phase::Lingering { discarded: 0 };
            self.deadline_ms = u64::MAX;
            Next::Linger
        }
    }

    /// Read and discard until the client closes (or sends too much), then close.
    pub(super) fn linger<S: Read>(&mut self, sock: &mut S, mut discarded: usize) -> Next {
        loop {
            match self.input.discard_from(sock) {
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
        self.phase = Phase::Lingering { discarded };
        Next::Keep
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
