//! A connection's read side: the buffer of received, unanswered bytes with its cursors, and
//! what the last reads said about the socket. Every move of the unread bytes to the front of
//! the buffer goes through [`Input::rebase`], which keeps the drain mark on the same byte; the
//! chunked decoder's compaction ([`Input::cut`]) shifts the mark itself, and `shrink` (only
//! ever on an empty input) has no mark to keep.
#![forbid(unsafe_code)]

use std::io::{self, Read};

use super::DEFAULT_BUF;

pub(super) struct Input {
    /// INVARIANT: `start <= end <= buf.len()`; `buf[start..end]` is received, unanswered input.
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// Shutting down: input at `start >= admitted` arrived after the drain began (`503`).
    /// An offset into `buf`, so it moves down whenever the bytes do.
    admitted: Option<usize>,
    /// The client closed its sending side.
    pub eof: bool,
    /// The last read left the socket drained.
    pub drained: bool,
    /// The event said the peer closed its side (EPOLLRDHUP): read on to the EOF, since no
    /// further edge will announce it.
    pub hup: bool,
}

/// What one `read` brought.
pub(super) enum Got {
    /// `n` bytes; `filled`: they filled the free space, so more may be waiting.
    Bytes { n: usize, filled: bool },
    /// The client closed its sending side.
    Eof,
    /// `WouldBlock`: nothing more for now.
    Drained,
    /// `Interrupted`: read again.
    Retry,
    /// Any other error: the connection is gone.
    Failed,
}

impl Input {
    pub fn new(buf: Box<[u8]>) -> Self {
        Input {
            buf,
            start: 0,
            end: 0,
            admitted: None,
            eof: false,
            drained: true,
            hup: false,
        }
    }

    /// Give back the buffer for reuse by the next connection.
    pub fn into_buf(self) -> Box<[u8]> {
        self.buf
    }

    /// The buffer's size (it grows for a large request and shrinks back when idle).
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// No unanswered input.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Unanswered bytes buffered.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// The unanswered input, from the request at `start` on.
    pub fn unread(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// As [`Input::unread`], for decoding a body in place.
    pub fn unread_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.end]
    }

    /// Everything from the request at `start` to the end of the buffer (the access log looks
    /// only at its head).
    pub fn request_onwards(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// The request at `start` was answered and took `n` bytes.
    pub fn consume(&mut self, n: usize) {
        self.start += n;
    }

    /// The chunked decoder moved the body's tail down by `freed` bytes.
    pub fn cut(&mut self, freed: usize) {
        self.end -= freed;
        self.shift_mark(freed);
    }

    /// Shutting down: what is buffered now was read before the drain.
    pub fn begin_drain(&mut self) {
        self.admitted = Some(self.end);
    }

    /// Shutting down, and the request at `start` arrived after the drain began.
    pub fn past_admitted(&self) -> bool {
        self.admitted.is_some_and(|a| self.start >= a)
    }

    /// Nothing unanswered: start the next request at the front of the buffer.
    pub fn reset(&mut self) {
        self.rebase();
    }

    /// Make space after `end` for a read: compact, or grow up to `max`. False: the buffer
    /// is full of one request at its largest size.
    pub fn make_room(&mut self, max: usize) -> bool {
        if self.end < self.buf.len() {
            return true;
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.rebase();
            return true;
        }
        self.grow(max)
    }

    /// Room for a request of `len` bytes from `start`, in one step (its length is known).
    pub fn reserve(&mut self, len: usize) {
        if self.start + len <= self.buf.len() {
            return;
        }
        if len <= self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
        } else {
            self.resize(len.next_multiple_of(DEFAULT_BUF));
        }
        self.rebase();
    }

    /// One `read` into the free space after `end` (see [`Input::make_room`]).
    pub fn read_from<S: Read>(&mut self, sock: &mut S) -> Got {
        let space = self.buf.len() - self.end;
        match sock.read(&mut self.buf[self.end..]) {
            Ok(0) => Got::Eof,
            Ok(n) => {
                self.end += n;
                Got::Bytes {
                    n,
                    filled: n == space,
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Got::Drained,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Got::Retry,
            Err(_) => Got::Failed,
        }
    }

    /// A `read` whose bytes are thrown away (a lingering close).
    pub fn discard_from<S: Read>(&mut self, sock: &mut S) -> io::Result<usize> {
        sock.read(&mut self.buf)
    }

    /// An idle connection holding a grown buffer goes back to the default size.
    pub fn shrink_if_grown(&mut self) {
        if self.is_empty() && self.buf.len() > DEFAULT_BUF {
            self.shrink();
        }
    }

    /// The unread bytes now sit at the front of the buffer: move the cursors (and the drain
    /// mark) down with them. Every move to the front goes through here (`cut` moves bytes
    /// within the request and shifts the mark itself).
    fn rebase(&mut self) {
        self.shift_mark(self.start);
        self.end -= self.start;
        self.start = 0;
    }

    /// The bytes after the drain mark moved down by `k`: keep the mark on the same byte.
    fn shift_mark(&mut self, k: usize) {
        if let Some(a) = &mut self.admitted {
            *a = a.saturating_sub(k);
        }
    }

    /// A buffer of `size` bytes holding `buf[start..end]` at its start.
    #[cold]
    fn resize(&mut self, size: usize) {
        let mut bigger = vec![0; size].into_boxed_slice();
        bigger[..self.end - self.start].copy_from_slice(&self.buf[self.start..self.end]);
        self.buf = bigger;
    }

    #[cold]
    fn grow(&mut self, max: usize) -> bool {
        if self.buf.len() >= max {
            return false;
        }
        self.resize((self.buf.len() * 2).min(max));
        self.rebase();
        true
    }

    #[cold]
    fn shrink(&mut self) {
        self.buf = vec![0; DEFAULT_BUF].into_boxed_slice();
        self.start = 0;
        self.end = 0;
    }
}
