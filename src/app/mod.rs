//! The API itself: which route a request names ([`router`]) and what each answers
//! ([`usages`], [`health`]). Bytes in, bytes appended to the worker's output buffer.
#![forbid(unsafe_code)]

pub mod bulk;
pub mod health;
pub mod keyed;
pub mod router;
pub mod usages;

use std::sync::Arc;

use crate::http::date::DateCache;
use crate::http::request::{Head, Method};
use crate::http::response::{self, Extra, Persist};
use crate::http::status::Reject;
use crate::metrics::Metrics;
use crate::store::{Store, StripeWriter};
pub use router::Route;
pub use usages::ColdAsk;

use crate::store::arena::Lookup;
use crate::store::cold::ColdRead;

/// What every worker sees of the node's health: draining, and each journal's state.
#[derive(Debug, Default)]
pub struct Node {
    /// Set on SIGINT/SIGTERM: `/health` answers `503` from then on.
    pub draining: std::sync::atomic::AtomicBool,
    /// One per worker with a journal.
    pub journals: Vec<Arc<crate::store::committer::Status>>,
    /// The node's `Idempotency-Key`s, shared by every worker.
    pub keys: crate::idem::Keys,
}

impl Node {
    /// Why this node cannot store usages now, if it cannot.
    pub fn trouble(&self) -> Option<&'static str> {
        use crate::store::committer::{STALL_MS, Trouble, clock_ms};
        if self.draining.load(std::sync::atomic::Ordering::Relaxed) {
            return Some("draining");
        }
        let now = clock_ms();
        self.journals.iter().find_map(|j| match j.trouble() {
            Trouble::None if j.busy_for_ms(now) > STALL_MS => {
                Some("journal stalled: a write or sync has not returned")
            }
            Trouble::None => None,
            t => Some(t.reason()),
        })
    }
}

/// One worker's view of the application: the shared store and its own stripe writer.
pub struct App {
    pub store: Arc<Store>,
    pub writer: StripeWriter,
    /// Every worker's counters, for `GET /metrics`.
    pub metrics: Arc<Metrics>,
    /// The node's health, for `GET /health`.
    pub node: Arc<Node>,
    /// The id of the last usage created (for the access log).
    pub last_created: u64,
    /// This worker's index (its keys name it), and the journal batch its usages go into now
    /// (0 without a journal): set by the worker.
    pub worker: usize,
    pub filling: u64,
}

/// What the handler needs besides the request: where to write and how to end the answer.
pub struct Answer<'a> {
    pub out: &'a mut Vec<u8>,
    pub date: &'a DateCache,
    /// The connection closes after this answer whatever the request asked (draining).
    pub force_close: bool,
}

impl App {
    pub fn new(
        store: Arc<Store>,
        writer: StripeWriter,
        metrics: Arc<Metrics>,
        node: Arc<Node>,
    ) -> Self {
        App {
            store,
            writer,
            metrics,
            node,
            last_created: 0,
            worker: 0,
            filling: 0,
        }
    }

    /// Answer a complete request: `Done` (close the connection after it, and the status), or
    /// `Cold`: the usage asked for is on disk only and nothing was answered yet; the
    /// connection waits for its reader thread, then [`App::respond_cold`] answers.
    pub fn respond(
        &mut self,
        route: Result<Route, Reject>,
        head: &Head,
        body: &mut [u8],
        a: &mut Answer<'_>,
    ) -> Responded {
        let result = match route {
            Err(r) => Err(r),
            Ok(Route::CreateUsage) => match head.key {
                crate::idem::KeyHeader::None => {
                    usages::create(&mut self.writer, body, head, a, &mut self.last_created)
                        .map(|c| (c, 201))
                }
                _ => keyed::create(self, body, head, a),
            },
            // Streamed by the connection (`server/conn/bulk.rs` with [`bulk`]), never whole.
            Ok(Route::CreateBulk) => Err(Reject::NotImplemented),
            Ok(Route::GetUsage(id)) => match usages::get(&self.store, id, head, a) {
                Ok(Ok(c)) => Ok((c, 200)),
                Ok(Err(ask)) => return Responded::Cold(ask),
                Err(r) => Err(r),
            },
            Ok(Route::Health) => Ok(health::get(&self.node, head, a)),
            Ok(Route::Metrics) => Ok((health::metrics(&self.metrics, &self.store, head, a), 200)),
        };
        done(result, head, a)
    }

    /// Answer a `GET` whose usage its reader thread read from disk.
    pub fn respond_cold(
        &mut self,
        r: &ColdRead,
        id: u64,
        head: &Head,
        a: &mut Answer<'_>,
    ) -> (bool, u16) {
        // Retention may have removed it while it was read: `410` from then on, for good.
        let expired = matches!(self.store.lookup(id), Lookup::Expired);
        let answer = if expired {
            Err(Reject::Gone)
        } else {
            usages::answer_cold(r, id, head, a)
        };
        match answer {
            Ok(close) => (close, 200),
            Err(r) => (reject(r, Some(head), a), r.status()),
        }
    }
}

/// What [`App::respond`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Responded {
    Done { close: bool, status: u16 },
    Cold(ColdAsk),
}

fn done(result: Result<(bool, u16), Reject>, head: &Head, a: &mut Answer<'_>) -> Responded {
    match result {
        Ok((close, status)) => Responded::Done { close, status },
        Err(r) => Responded::Done {
            close: reject(r, Some(head), a),
            status: r.status(),
        },
    }
}

/// A `200`-style answer whose body `write` appends: the body goes first (its length is the
/// head's), then the head, then the two swap places in the buffer. A `HEAD` keeps only the head.
/// Returns whether the connection closes after it.
pub fn answer_with(
    a: &mut Answer<'_>,
    head: &Head,
    status: &[u8],
    content_type: &[u8],
    write: impl FnOnce(&mut Vec<u8>),
) -> bool {
    let at = a.out.len();
    write(a.out);
    let body_len = a.out.len() - at;
    let p = persist(head, a.force_close);
    response::head(
        a.out,
        status,
        a.date.text(),
        content_type,
        body_len,
        Extra::None,
        p,
    );
    a.out[at..].rotate_left(body_len);
    if head.method == Method::Head {
        a.out.truncate(a.out.len() - body_len);
    }
    p == Persist::Close
}

/// The `Connection` header for an answer that closes when `close`.
pub fn persist(head: &Head, close: bool) -> Persist {
    if close || !head.keep_alive {
        Persist::Close
    } else if head.http10 {
        Persist::KeepAlive10
    } else {
        Persist::KeepAlive
    }
}

/// Write the error answer for `r` (to `head`, when the head was understood); returns whether
/// the connection must close.
#[cold]
pub fn reject(r: Reject, head: Option<&Head>, a: &mut Answer<'_>) -> bool {
    let (status, reason, close_for_error) = r.parts();
    let close = close_for_error || a.force_close || head.is_none_or(|h| !h.keep_alive);
    let persist = match head {
        Some(h) => persist(h, close),
        None => Persist::Close,
    };
    let extra = match r {
        Reject::MethodNotAllowed(allow) => Extra::Allow(allow),
        Reject::Busy(_) | Reject::KeyInFlight => Extra::RetryAfter(1),
        _ => Extra::None,
    };
    let with_body = head.is_none_or(|h| h.method != Method::Head);
    response::error(
        a.out,
        status,
        a.date.text(),
        reason,
        extra,
        persist,
        with_body,
    );
    close
}
