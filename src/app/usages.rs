//! `POST /api/usages` (validate, store, `201 {"id":N}`) and `GET /api/usages/{id}`.

use super::{Answer, persist};
use crate::http::request::{Head, Method};
use crate::http::response::{self, Extra, Persist};
use crate::http::status::Reject;
use crate::json::emit;
use crate::json::scan::{self, Field, JsonError};
use crate::store::arena::StoredPatient;
use crate::store::{Store, StoreFull, StripeWriter};
use crate::time::rfc3339;

/// Validate the body, store the usage, answer `201`. Returns whether to close.
pub fn create(
    w: &mut StripeWriter,
    body: &mut [u8],
    head: &Head,
    a: &mut Answer<'_>,
) -> Result<bool, Reject> {
    let usage = scan::scan_usage(body).map_err(|e| Reject::BadBody(json_reason(e)))?;
    let id = w
        .append(&usage)
        .map_err(|StoreFull| Reject::Unavailable("cannot store usages now"))?;
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
        Extra::Location(id),
        p,
    );
    a.out.extend_from_slice(b"{\"id\":");
    a.out.extend_from_slice(digits);
    a.out.push(b'}');
    Ok(p == Persist::Close)
}

/// The stored usage as `{"id":N,"patientId":…,"timestamp":"…","medication":"…"}`.
pub fn get(
    store: &Store,
    id: Option<u64>,
    head: &Head,
    a: &mut Answer<'_>,
) -> Result<bool, Reject> {
    let id = id.ok_or(Reject::NotFound)?;
    let u = store.get(id).ok_or(Reject::NotFound)?;
    let mut ids = itoa::Buffer::new();
    let id_text = ids.format(id).as_bytes();
    let mut pnum = itoa::Buffer::new();
    let patient: (&[u8], bool) = match &u.patient {
        StoredPatient::Num(n) => (pnum.format(*n).as_bytes(), false),
        StoredPatient::Str(b, n) => (&b[..*n], true),
    };
    let mut ts = [0; rfc3339::MAX_LEN];
    let ts_len = rfc3339::write(u.timestamp, &mut ts);
    const P1: &[u8] = b"{\"id\":";
    const P2: &[u8] = b",\"patientId\":";
    const P3: &[u8] = b",\"timestamp\":\"";
    const P4: &[u8] = b"\",\"medication\":\"";
    const P5: &[u8] = b"\"}";
    let patient_len = if patient.1 {
        emit::escaped_len(patient.0) + 2
    } else {
        patient.0.len()
    };
    let len = P1.len()
        + id_text.len()
        + P2.len()
        + patient_len
        + P3.len()
        + ts_len
        + P4.len()
        + emit::escaped_len(u.medication())
        + P5.len();
    let p = persist(head, a.force_close);
    response::head(
        a.out,
        b"HTTP/1.1 200 OK\r\n",
        a.date.text(),
        response::JSON,
        len,
        Extra::None,
        p,
    );
    if head.method != Method::Head {
        let out = &mut *a.out;
        out.extend_from_slice(P1);
        out.extend_from_slice(id_text);
        out.extend_from_slice(P2);
        if patient.1 {
            out.push(b'"');
            emit::escaped(out, patient.0);
            out.push(b'"');
        } else {
            out.extend_from_slice(patient.0);
        }
        out.extend_from_slice(P3);
        out.extend_from_slice(&ts[..ts_len]);
        out.extend_from_slice(P4);
        emit::escaped(out, u.medication());
        out.extend_from_slice(P5);
    }
    Ok(p == Persist::Close)
}

fn json_reason(e: JsonError) -> &'static str {
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
