//! `POST /api/usages` (validate, store, `201 {"id":N}`) and `GET /api/usages/{id}`.

use super::{Answer, persist};
use crate::http::request::Head;
use crate::http::response::{self, Extra, Persist};
use crate::http::status::Reject;
use crate::json::emit;
use crate::json::scan::{self, Field, JsonError};
use crate::store::arena::{Lookup, StoredPatient, StoredUsage};
use crate::store::cold::ColdRead;
use crate::store::journal::Header;
use crate::store::{Store, StoreFull, StripeWriter};
use crate::time::rfc3339;

/// Validate the body, store the usage, answer `201`. Returns whether to close.
pub fn create(
    w: &mut StripeWriter,
    body: &mut [u8],
    head: &Head,
    a: &mut Answer<'_>,
    created: &mut u64,
) -> Result<bool, Reject> {
    let usage = scan::scan_usage(body).map_err(|e| Reject::BadBody(json_reason(e)))?;
    let id = w
        .append(&usage)
        .map_err(|StoreFull| Reject::Busy(CANNOT_STORE))?;
    *created = id;
    Ok(created_answer(id, head, a, Extra::Location(id)))
}

/// Why a usage was not stored now (`503`).
pub const CANNOT_STORE: &str = "cannot store usages now; retry later";

/// `201` with `{"id":N}` and `extra` (its `Location`); returns whether to close.
pub fn created_answer(id: u64, head: &Head, a: &mut Answer<'_>, extra: Extra<'_>) -> bool {
    let mut num = itoa::Buffer::new();
    let digits = num.format(id).as_bytes();
    let p = persist(head, a.force_close);
    let status = b"HTTP/1.1 201 Created\r\n";
    response::head(
        a.out,
        status,
        a.date.text(),
        response::JSON,
        7 + digits.len(),
        extra,
        p,
    );
    a.out.extend_from_slice(b"{\"id\":");
    a.out.extend_from_slice(digits);
    a.out.push(b'}');
    p == Persist::Close
}

/// The stored usage as `{"id":N,"patientId":…,"timestamp":"…","medication":"…"}`, when it is
/// in RAM; one only on disk is asked of the worker's reader thread ([`ColdAsk`]), and answered
/// by [`answer_cold`] once read.
pub fn get(
    store: &Store,
    id: Option<u64>,
    head: &Head,
    a: &mut Answer<'_>,
) -> Result<Result<bool, ColdAsk>, Reject> {
    let id = id.ok_or(Reject::NotFound)?;
    match store.lookup(id) {
        Lookup::Hot(u) => Ok(Ok(answer_usage(id, &u, head, a))),
        Lookup::Cold { key, slot } => Ok(Err(ColdAsk { key, slot, id })),
        Lookup::Expired => Err(Reject::Gone),
        Lookup::Missing => Err(Reject::NotFound),
    }
}

/// A usage to read from its journal segment: stripe `key`, `slot` in it, and its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColdAsk {
    pub key: Header,
    pub slot: u64,
    pub id: u64,
}

/// The answer to a `GET` whose usage was read from disk (`ColdRead`): `200` with it, `404`
/// if the journal does not hold it (any more), `500` if its record is unreadable.
pub fn answer_cold(r: &ColdRead, id: u64, head: &Head, a: &mut Answer<'_>) -> Result<bool, Reject> {
    match r {
        ColdRead::Found(u) => Ok(answer_usage(id, u, head, a)),
        ColdRead::Missing => Err(Reject::NotFound),
        ColdRead::Unreadable(_) => Err(Reject::Unreadable),
    }
}

fn answer_usage(id: u64, u: &StoredUsage, head: &Head, a: &mut Answer<'_>) -> bool {
    super::answer_with(a, head, b"HTTP/1.1 200 OK\r\n", response::JSON, |out| {
        write_json(out, id, u)
    })
}

/// `{"id":N,"patientId":…,"timestamp":"…","medication":"…"}`: the API's shape of a stored usage
/// (also the lines of `usaged export`).
pub fn write_json(out: &mut Vec<u8>, id: u64, u: &StoredUsage) {
    let mut num = itoa::Buffer::new();
    out.extend_from_slice(b"{\"id\":");
    out.extend_from_slice(num.format(id).as_bytes());
    out.extend_from_slice(b",\"patientId\":");
    match &u.patient {
        StoredPatient::Num(n) => out.extend_from_slice(num.format(*n).as_bytes()),
        StoredPatient::Str(b, n) => {
            out.push(b'"');
            emit::escaped(out, &b[..*n]);
            out.push(b'"');
        }
    }
    let mut ts = [0; rfc3339::MAX_LEN];
    let ts_len = rfc3339::write(u.timestamp, &mut ts);
    out.extend_from_slice(b",\"timestamp\":\"");
    out.extend_from_slice(&ts[..ts_len]);
    out.extend_from_slice(b"\",\"medication\":\"");
    emit::escaped(out, u.medication());
    out.extend_from_slice(b"\"}");
}

/// `id,patientId,timestamp,medication` as a CSV row (strings always quoted, `"` doubled).
pub fn write_csv(out: &mut Vec<u8>, id: u64, u: &StoredUsage) {
    fn quoted(out: &mut Vec<u8>, s: &[u8]) {
        out.push(b'"');
        for &b in s {
            if b == b'"' {
                out.push(b'"');
            }
            out.push(b);
        }
        out.push(b'"');
    }
    let mut num = itoa::Buffer::new();
    out.extend_from_slice(num.format(id).as_bytes());
    out.push(b',');
    match &u.patient {
        StoredPatient::Num(n) => out.extend_from_slice(num.format(*n).as_bytes()),
        StoredPatient::Str(b, n) => quoted(out, &b[..*n]),
    }
    let mut ts = [0; rfc3339::MAX_LEN];
    let ts_len = rfc3339::write(u.timestamp, &mut ts);
    out.push(b',');
    out.extend_from_slice(&ts[..ts_len]);
    out.push(b',');
    quoted(out, u.medication());
    out.push(b'\n');
}

pub(crate) fn json_reason(e: JsonError) -> &'static str {
    match e {
        JsonError::Syntax => "body is not valid JSON",
        JsonError::NotObject => "body must be a JSON object",
        JsonError::Duplicate(Field::PatientId) => "duplicate key: patientId",
        JsonError::Duplicate(Field::Timestamp) => "duplicate key: timestamp",
        JsonError::Duplicate(Field::Medication) => "duplicate key: medication",
        JsonError::Missing(Field::PatientId) => "missing patientId",
        JsonError::Missing(Field::Timestamp) => "missing timestamp",
        JsonError::Missing(Field::Medication) => "missing medication",
        JsonError::Invalid(Field::PatientId) => {
            "patientId must be a non-empty string of at most 64 bytes or an integer in [0, 2^53)"
        }
        JsonError::Invalid(Field::Timestamp) => {
            "timestamp is not a valid date in an accepted format"
        }
        JsonError::Invalid(Field::Medication) => {
            "medication must be a non-empty string of at most 64 bytes"
        }
    }
}
