//! `POST /api/usages` with an `Idempotency-Key` (API.md "Idempotent retries"): the first
//! request stores as usual, a retry with the same body gets the same answer again with
//! `Idempotent-Replayed: true`, a retry with another body `422`, one while the first is still
//! being stored `409`. The table is [`crate::idem`].
#![forbid(unsafe_code)]

use super::usages::{CANNOT_STORE, created_answer, json_reason};
use super::{Answer, App};
use crate::http::request::Head;
use crate::http::response::Extra;
use crate::http::status::Reject;
use crate::idem::{BodyHash, KeyHeader, KeyMark, Single};
use crate::json::scan;
use crate::metrics;

/// Why a key header is refused (`400`).
pub const BAD_KEY: &str = "bad Idempotency-Key";

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
