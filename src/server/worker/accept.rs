//! Accepting: new connections into free slots, a pause that grows while the process is out of
//! descriptors or memory, and a pause at `--max-conns` (they wait in the backlog).
#![forbid(unsafe_code)]

use std::io;

use mio::{Interest, Poll};

use super::Worker;
use crate::metrics;
use crate::server::conn::{Conn, DEFAULT_BUF};

/// Read buffers kept for reuse when connections close.
const SPARE_BUFFERS: usize = 256;
/// First and longest pause in accepting after running out of descriptors or memory.
pub(super) const BACKOFF_MIN_MS: u64 = 10;
const BACKOFF_MAX_MS: u64 = 1000;

impl Worker {
    /// Take connections from the backlog until it is empty (or we are full or backing off).
    pub(super) fn accept(&mut self, poll: &Poll) {
        while self.backoff_until.is_none() {
            let Some(listener) = &self.listener else {
                return;
            };
            if self.conns.len() >= self.max_conns {
                self.accept_full = true;
                return;
            }
            match listener.accept() {
                Ok((mut stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let (index, t) = self.conns.reserve();
                    if poll
                        .registry()
                        .register(&mut stream, t, Interest::READABLE | Interest::WRITABLE)
                        .is_err()
                    {
                        self.conns.unreserve(index);
                        continue;
                    }
                    let buf = self
                        .spare
                        .pop()
                        .unwrap_or_else(|| vec![0; DEFAULT_BUF].into_boxed_slice());
                    let conn = Conn::accepted(buf, peer, self.now_ms, &self.limits.timeouts);
                    let (_, c) = self.conns.fill(index, (stream, conn));
                    if self.draining.is_some() {
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
    pub(super) fn retry_accept(&mut self, poll: &Poll) {
        if self.backoff_until.is_some_and(|t| t <= self.now_ms) {
            self.backoff_until = None;
            self.accept(poll);
        } else if self.accept_full && self.conns.len() < self.max_conns {
            self.accept_full = false;
            self.accept(poll);
        }
    }

    /// Keep a closed connection's read buffer for the next one (default-sized ones, up to
    /// [`SPARE_BUFFERS`]).
    pub(super) fn spare_buffer(&mut self, buf: Box<[u8]>) {
        if self.spare.len() < SPARE_BUFFERS && buf.len() == DEFAULT_BUF {
            self.spare.push(buf);
        }
    }
}
