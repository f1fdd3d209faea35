//! The latency clock: server time per request, from the read that brought its first byte to
//! the end of the readiness that answered it. `Instant::now` is taken once per read and once
//! per readiness that answered something, never per request.
#![forbid(unsafe_code)]

use std::time::Instant;

use crate::metrics::WorkerMetrics;

#[derive(Default)]
pub(super) struct Clock {
    /// When the read that brought the first byte of the request at `start` happened.
    req_started: Option<Instant>,
    last_read: Option<Instant>,
    /// Requests answered in this readiness: the first one's start, and how many more (which
    /// started at `last_read`).
    batch_first: Option<Instant>,
    batch_rest: u64,
}

impl Clock {
    /// A read brought bytes at `t`; `first`: the buffer held no unanswered input before it.
    pub fn read(&mut self, t: Instant, first: bool) {
        if first {
            self.req_started = Some(t);
        }
        self.last_read = Some(t);
    }

    /// Nothing was read on this connection yet.
    pub fn never_read(&self) -> bool {
        self.last_read.is_none()
    }

    /// The request at `start` was answered; `more`: input after it is buffered (the next
    /// request started with the last read).
    pub fn answered(&mut self, more: bool) {
        match self.batch_first {
            None if self.batch_rest == 0 => self.batch_first = self.req_started,
            _ => self.batch_rest += 1,
        }
        self.req_started = if more { self.last_read } else { None };
    }

    /// Microseconds since the request at `start` began (for the access log).
    pub fn request_micros(&self) -> u64 {
        self.req_started
            .map_or(0, |t| t.elapsed().as_micros() as u64)
    }

    /// End of a readiness: record the latency of what it answered.
    pub fn report(&mut self, metrics: &WorkerMetrics) {
        if self.batch_first.is_some() || self.batch_rest > 0 {
            let now = Instant::now();
            let ns = |t: Option<Instant>| t.map_or(0, |t| now.duration_since(t).as_nanos() as u64);
            metrics.latency(ns(self.batch_first), 1);
            metrics.latency(ns(self.last_read), self.batch_rest);
            self.batch_first = None;
            self.batch_rest = 0;
        }
    }
}
