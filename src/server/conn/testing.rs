//! Test doubles for the connection state machine: a socket ([`MockSock`]) and the worker
//! state a connection runs with ([`Fixture::ctx`]), so tests of `conn` and `worker` build
//! them one way.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::{Arc, LazyLock};

use super::{Ctx, Limits, Timeouts};
use crate::app::App;
use crate::http::date::DateCache;
use crate::metrics::{Metrics, WorkerMetrics};
use crate::store::Store;

/// A socket double: each `read` hands out one queued piece (then `WouldBlock`, or EOF once
/// `eof` is set); `write` takes up to `write_room` bytes. Counts syscalls.
#[derive(Default)]
pub struct MockSock {
    pub input: VecDeque<Vec<u8>>,
    pub written: Vec<u8>,
    pub write_room: Option<usize>,
    pub reads: usize,
    pub writes: usize,
    pub eof: bool,
    pub broken: bool,
}

impl Read for MockSock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reads += 1;
        let Some(mut piece) = self.input.pop_front() else {
            return if self.eof {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        };
        let n = piece.len().min(buf.len());
        buf[..n].copy_from_slice(&piece[..n]);
        if n < piece.len() {
            piece.drain(..n);
            self.input.push_front(piece);
        }
        Ok(n)
    }
}

impl Write for MockSock {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.writes += 1;
        if self.broken {
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        let n = self.write_room.map_or(data.len(), |r| r.min(data.len()));
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        if let Some(r) = &mut self.write_room {
            *r -= n;
        }
        self.written.extend_from_slice(&data[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A valid `POST /api/usages` (answered `201`).
pub const POST: &[u8] = b"POST /api/usages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 98\r\n\r\n{\"patientId\":\"100\",\"timestamp\":\"Tue Nov 01 2016 09:11:51 GMT-0500 (CDT)\",\"medication\":\"Albuterol\"}";

/// A `GET /health` (answered `200`).
pub const HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n";

pub const TIMEOUTS: Timeouts = Timeouts {
    header_ms: 10_000,
    body_ms: 10_000,
    idle_ms: 60_000,
    write_ms: 10_000,
    linger_ms: 2000,
};

pub const LIMITS: Limits = Limits {
    max_header: 8192,
    max_body: 65536,
    max_bulk: 1 << 20,
    timeouts: TIMEOUTS,
};

/// The counters of the one test worker.
pub static WORKER_METRICS: LazyLock<WorkerMetrics> = LazyLock::new(Default::default);

/// What a worker lends its connections: an app over a one-stripe in-memory store, an output
/// buffer and a `Date` cache.
pub struct Fixture {
    pub app: App,
    pub out: Vec<u8>,
    pub date: DateCache,
}

impl Fixture {
    pub fn new() -> Self {
        Fixture::with_store(Arc::new(Store::new(1)))
    }

    /// A fixture over `store` (its last epoch's stripe 0 is this worker's).
    pub fn with_store(store: Arc<Store>) -> Self {
        Fixture {
            app: App::new(
                Arc::clone(&store),
                store.writer(0),
                Arc::new(Metrics::new(1)),
                Arc::new(Default::default()),
            ),
            out: Vec::new(),
            date: DateCache::default(),
        }
    }

    /// The context of one drive at time 0, not draining, without an access log; answers are
    /// appended to `out` from its current end.
    pub fn ctx(&mut self) -> Ctx<'_> {
        let Fixture { app, out, date } = self;
        ctx(app, out, date)
    }

    /// As [`Fixture::ctx`], with answers appended to `out` (a worker's outbox) instead.
    pub fn ctx_into<'a>(&'a mut self, out: &'a mut Vec<u8>) -> Ctx<'a> {
        ctx(&mut self.app, out, &self.date)
    }
}

fn ctx<'a>(app: &'a mut App, out: &'a mut Vec<u8>, date: &'a DateCache) -> Ctx<'a> {
    Ctx {
        app,
        out_start: out.len(),
        out,
        date,
        limits: LIMITS,
        draining: false,
        now_ms: 0,
        turn_start: 0,
        metrics: &WORKER_METRICS,
        access: None,
        log_time: b"",
    }
}

/// The status codes of the responses in `written`, in order.
pub fn statuses(written: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(written);
    text.match_indices("HTTP/1.1 ")
        .map(|(i, _)| text[i + 9..i + 12].to_string())
        .collect()
}
