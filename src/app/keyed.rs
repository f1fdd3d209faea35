//! `POST /api/usages` with an `Idempotency-Key` (API.md "Idempotent retries"): the first
//! request stores as usual, a retry with the same body gets the same answer again with
//! `Idempotent-Replayed: true`, a retry with another body `422`, one while the first is still
//! being stored `409`. The table is [`crate::idem`].
#![forbid(unsafe_code)]

use std::sync::Arc;

use super::usages::{CANNOT_STORE, created_answer, json_reason};
use super::{Answer, App, Node};
use crate::http::request::Head;
use crate::http::response::Extra;
use crate::http::status::Reject;
use crate::idem::{BodyHash, KeyHeader, KeyMark, Single};
use crate::idem::{Bulk, BulkEnd, BulkPrev, Run, Ticket};
use crate::json::scan;
use crate::metrics::{self, WorkerMetrics};

/// Why a key header is refused (`400`).
pub const BAD_KEY: &str = "bad Idempotency-Key";
/// Why a new key is refused when its bucket of the table is all in flight (`503`).
const FULL: &str = "too many requests with keys in flight; retry later";

/// Answer a single keyed post (`body` whole); returns `(close, status)`.
pub fn create(
    app: &mut App,
    body: &mut [u8],
    head: &Head,
    a: &mut Answer<'_>,
) -> Result<(bool, u16), Reject> {
    let KeyHeader::Key(key) = head.key else {
        return Err(Reject::BadBody(BAD_KEY));
    };
    // Before scanning: the scanner unescapes strings in place.
    let fp = BodyHash::of(body);
    let len = body.len() as u64;
    let usage = scan::scan_usage(body).map_err(|e| Reject::BadBody(json_reason(e)))?;
    let keys = &app.node.keys;
    let now_s = a.date.secs();
    let id = app.writer.next_id();
    let (found, forgot) = keys.single(key, fp, now_s, (id, app.worker, app.filling));
    let m = app.metrics.worker(app.worker);
    if forgot {
        m.add(metrics::KEYS_FORGOTTEN, 1);
    }
    match found {
        Single::Replay(id) => {
            m.add(metrics::KEYS_REPLAYED, 1);
            Ok((created_answer(id, head, a, Extra::Replayed(id)), 201))
        }
        Single::Busy => {
            m.add(metrics::KEYS_IN_FLIGHT, 1);
            Err(Reject::KeyInFlight)
        }
        Single::Conflict => {
            m.add(metrics::KEYS_REUSED, 1);
            Err(Reject::KeyReused)
        }
        Single::Full => Err(Reject::Busy(
            "too many requests with keys in flight; retry later",
        )),
        Single::Store(ticket) => {
            let mark = KeyMark {
                key,
                created_s: now_s,
                end: len,
                body: fp,
                line: 0,
            };
            match app.writer.append_keyed(&usage, Some(&mark)) {
                Ok(stored) => {
                    debug_assert_eq!(stored, id, "the claimed id is the one stored");
                    app.last_created = id;
                    Ok((created_answer(id, head, a, Extra::Location(id)), 201))
                }
                Err(_) => {
                    keys.forget(&ticket);
                    Err(Reject::Busy(CANNOT_STORE))
                }
            }
        }
    }
}

/// A keyed bulk in progress (kept by its connection): what its head found in the key table,
/// the fingerprint of its body so far, and the ids of its stored lines. Dropped without
/// [`KeyedBulk::finish`] (the client went away, a timeout, a framing error), it leaves its
/// key at the prefix stored so far, so a retry resumes there.
pub struct KeyedBulk {
    node: Arc<Node>,
    key: u128,
    /// The claim on the key (`None`: refused at the head, `verdict` says how).
    ticket: Option<Ticket>,
    /// Refused at the head: the body is read and dropped, then this is the answer.
    pub verdict: Option<Reject>,
    /// The bulk seen before under this key, whose stored prefix replays.
    prev: Option<BulkPrev>,
    created_s: u64,
    hash: BodyHash,
    /// Where the line being taken starts in the body.
    line_start: u64,
    /// The ids of the lines stored (or replayed) so far, in line order.
    runs: Vec<Run>,
    /// Valid lines answered from `prev` so far.
    replayed: u64,
    /// Lines stored by this request.
    stored: u64,
    /// The body through the last line stored or replayed: its length and fingerprint.
    stored_end: (u64, u64),
    /// A store was refused: no later line is stored (the prefix stays whole).
    halted: bool,
    /// The body is not the one `prev` was: `422`.
    pub mismatch: bool,
    worker: usize,
    stride: u32,
    batch: u64,
}

/// What to do with a valid line of a keyed bulk.
pub enum LineAct {
    Replay(u64),
    Store(KeyMark),
    /// Refused: a store before it was.
    Halted,
    /// The body differs from the one the key was first used with.
    Mismatch,
}

impl KeyedBulk {
    /// The key table's verdict on a bulk whose head carries `key`, starting now (`None`: no
    /// key).
    pub fn start(app: &App, key: KeyHeader, now_s: u64) -> Option<Box<KeyedBulk>> {
        let mut k = Box::new(KeyedBulk {
            node: Arc::clone(&app.node),
            key: 0,
            ticket: None,
            verdict: None,
            prev: None,
            created_s: now_s,
            hash: BodyHash::default(),
            line_start: 0,
            runs: Vec::new(),
            replayed: 0,
            stored: 0,
            stored_end: (0, BodyHash::default().value()),
            halted: false,
            mismatch: false,
            worker: app.worker,
            stride: app.writer.stride(),
            batch: 0,
        });
        let key = match key {
            KeyHeader::None => return None,
            KeyHeader::Bad => {
                k.verdict = Some(Reject::BadBody(BAD_KEY));
                return Some(k);
            }
            KeyHeader::Key(key) => key,
        };
        k.key = key;
        let m = app.metrics.worker(app.worker);
        let (found, forgot) = app.node.keys.bulk_start(key, now_s, app.worker);
        if forgot {
            m.add(metrics::KEYS_FORGOTTEN, 1);
        }
        match found {
            Bulk::Fresh(t) => k.ticket = Some(t),
            Bulk::Replay(prev) => {
                k.created_s = prev.created_s;
                k.prev = Some(prev);
            }
            Bulk::Resume(t, prev) => {
                k.ticket = Some(t);
                k.created_s = prev.created_s;
                k.runs.clone_from(&prev.runs);
                k.prev = Some(prev);
            }
            Bulk::Busy => {
                m.add(metrics::KEYS_IN_FLIGHT, 1);
                k.verdict = Some(Reject::KeyInFlight);
            }
            Bulk::Conflict => {
                m.add(metrics::KEYS_REUSED, 1);
                k.verdict = Some(Reject::KeyReused);
            }
            Bulk::Full => k.verdict = Some(Reject::Busy(FULL)),
        }
        Some(k)
    }

    /// The next `bytes` of the body (a line with its newline, or bytes dropped), taken before
    /// the line is scanned (which unescapes in place). Checks the prefix of a bulk seen before.
    pub fn bytes(&mut self, bytes: &[u8]) {
        self.line_start = self.hash.len();
        self.hash.write(bytes);
        let Some(prev) = &self.prev else { return };
        let (from, to) = (self.line_start, self.hash.len());
        if from < prev.end && to > prev.end {
            self.mismatch = true; // a line across the end of the prefix
        } else if to == prev.end && self.hash.value() != prev.body {
            self.mismatch = true;
        }
    }

    /// A valid line (number `line`) was taken: replay it, store it, or not.
    pub fn act(&mut self, line: u64) -> LineAct {
        if self.mismatch {
            return LineAct::Mismatch;
        }
        if let Some(prev) = &self.prev {
            if self.line_start < prev.end {
                return match Run::nth(&prev.runs, self.replayed) {
                    Some(id) => {
                        self.replayed += 1;
                        self.stored_end = (self.hash.len(), self.hash.value());
                        LineAct::Replay(id)
                    }
                    None => {
                        self.mismatch = true;
                        LineAct::Mismatch
                    }
                };
            }
            if prev.complete {
                self.mismatch = true; // longer than the body it replays
                return LineAct::Mismatch;
            }
        }
        if self.halted {
            return LineAct::Halted;
        }
        LineAct::Store(KeyMark {
            key: self.key,
            created_s: self.created_s,
            end: self.hash.len(),
            body: self.hash.value(),
            line: line.min(u64::from(u32::MAX)) as u32,
        })
    }

    /// The line acted on as [`LineAct::Store`] was stored as `id` into `batch`, or refused.
    pub fn stored(&mut self, id: Option<u64>, mark: &KeyMark, batch: u64) {
        match id {
            Some(id) => {
                Run::push(&mut self.runs, id, self.stride);
                self.stored += 1;
                self.stored_end = (mark.end, mark.body);
                self.batch = batch;
            }
            None => self.halted = true,
        }
    }

    /// The body has ended (`complete`: all of it was taken and every valid line stored):
    /// the bulk's answer, `Ok(replayed)` (`true`: nothing new was stored, the answer is a
    /// replay), or `Err` (the bulk is refused whole). The key is left for retries.
    pub fn finish(&mut self, complete: bool, m: &WorkerMetrics) -> Result<bool, Reject> {
        if let Some(r) = self.verdict {
            return Err(r);
        }
        if let Some(prev) = &self.prev {
            let len = self.hash.len();
            if len < prev.end || (prev.complete && len != prev.end) {
                self.mismatch = true;
            }
        }
        if self.mismatch {
            m.add(metrics::KEYS_REUSED, 1);
            self.release(false);
            return Err(Reject::KeyReused);
        }
        let replay = self.prev.is_some() && self.stored == 0;
        if replay {
            m.add(metrics::KEYS_REPLAYED, 1);
        }
        self.release(complete && !self.halted);
        Ok(replay)
    }

    /// Leave the key for retries: at the prefix stored (or, `complete`, the whole body), or
    /// as it was when nothing changed.
    fn release(&mut self, complete: bool) {
        let Some(t) = self.ticket.take() else { return };
        let keys = &self.node.keys;
        if self.mismatch {
            match &self.prev {
                Some(prev) => keys.bulk_end(&t, BulkEnd::Restore(prev)),
                None => keys.bulk_end(&t, BulkEnd::Drop),
            }
            return;
        }
        if self.stored == 0 && self.replayed == 0 && self.prev.is_none() {
            keys.bulk_end(&t, BulkEnd::Drop);
            return;
        }
        let (end, body) = if complete {
            (self.hash.len(), self.hash.value())
        } else {
            self.stored_end
        };
        let (end, body) = match &self.prev {
            // A resumed bulk cut off before its old prefix ended keeps the old prefix.
            Some(p) if end < p.end => (p.end, p.body),
            _ => (end, body),
        };
        keys.bulk_end(
            &t,
            BulkEnd::Stored {
                end,
                body,
                complete,
                created_s: self.created_s,
                runs: &self.runs,
                worker: self.worker,
                batch: self.batch,
            },
        );
    }
}

impl Drop for KeyedBulk {
    fn drop(&mut self) {
        self.release(false);
    }
}
