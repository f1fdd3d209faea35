//! Shutting down (SIGINT/SIGTERM): serve normally through `--drain-grace`, then stop taking
//! new handshakes, answer what each connection already sent, refuse (`503` and a close) what
//! it sends after, close idle connections without a reset, and end once the last connection
//! and the last held answer are gone (or the shutdown timeout passed).
#![forbid(unsafe_code)]

use std::io;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mio::Poll;

use super::Worker;
use crate::app::App;
use crate::server::conn::Next;
use crate::server::slab::token;

/// While draining, how often the loop looks at the clock.
pub(super) const TICK: Duration = Duration::from_millis(50);
/// While draining, an idle connection is closed once it has been quiet this long (ms).
const QUIET_MS: u64 = 100;
/// While draining, the listener stays open this long after it stops taking new handshakes,
/// for those already under way to complete (a round trip) and be accepted: closing it
/// earlier would reset a client that believes it is connected.
const LISTEN_HOLD: Duration = Duration::from_millis(100);

impl Worker {
    /// After SIGINT/SIGTERM: serve normally through `--drain-grace` (`/health` already says
    /// 503), then drain; true once the last connection is gone or the deadline passed.
    pub(super) fn shutdown(&mut self, poll: &Poll, app: &mut App) -> bool {
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
        (self.listener.is_none() && self.conns.is_empty() && self.outbox.is_empty())
            || now >= deadline
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
            && let Err(e) = crate::server::listener::refuse_new(l)
        {
            eprintln!(
                "usaged: worker {}: cannot stop new handshakes: {e}",
                self.index
            );
        }
        self.listen_until = Some(Instant::now() + LISTEN_HOLD);
        self.accept(poll);
        for i in 0..self.conns.capacity() {
            if self.conns.at_mut(i).is_some() {
                let generation = self.conns.generation(i);
                self.drive(token(i, generation), true, false, app);
            }
            if let Some((_, c)) = self.conns.at_mut(i) {
                c.begin_drain();
            }
        }
        self.commit(app);
        self.release(app);
    }

    /// While draining: a connection with nothing in progress and nothing waiting is looked at
    /// (`peek`): a request that came in is read and answered (`503` and a close); otherwise,
    /// once quiet for `QUIET_MS`, it is closed with a FIN and read until the client closes:
    /// never a reset over unread bytes. A connection that has sent nothing yet gets a second
    /// for its first request.
    fn close_idle(&mut self, app: &mut App) {
        let (now, linger) = (self.now_ms, self.limits.timeouts.linger_ms);
        for i in 0..self.conns.capacity() {
            let Some((stream, c)) = self.conns.at_mut(i) else {
                continue;
            };
            if !c.is_idle() {
                continue;
            }
            let next = match stream.peek(&mut [0; 1]) {
                Ok(0) => Next::Close,
                Ok(_) => {
                    let generation = self.conns.generation(i);
                    self.drive(token(i, generation), true, false, app);
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // A busy client's next request gets `503` and a close, which no race
                    // can lose; a FIN goes only to connections quiet for a while.
                    if c.fresh(now) || !c.quiet_for(now, QUIET_MS) {
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
