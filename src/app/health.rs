//! `GET /health` and `GET /`: the process is up and serving; `GET /metrics`: what it is doing.

use super::{Answer, persist};
use crate::http::request::{Head, Method};
use crate::http::response::{self, Extra};
use crate::http::status::Reject;

const BODY: &[u8] = br#"{"status":"ok"}"#;

pub fn get(head: &Head, a: &mut Answer<'_>) -> Result<bool, Reject> {
    let p = persist(head, a.force_close);
    response::head(
        a.out,
        b"HTTP/1.1 200 OK\r\n",
        a.date.text(),
        response::JSON,
        BODY.len(),
        Extra::None,
        p,
    );
    if head.method != Method::Head {
        a.out.extend_from_slice(BODY);
    }
    Ok(p == response::Persist::Close)
}

/// `GET /metrics`: every worker's counters, summed, in the Prometheus text format.
#[cold]
pub fn metrics(
    m: &crate::metrics::Metrics,
    store: &crate::store::Store,
    head: &Head,
    a: &mut Answer<'_>,
) -> bool {
    let at = a.out.len();
    m.render(store, a.out);
    let body_len = a.out.len() - at;
    let p = persist(head, a.force_close);
    response::head(
        a.out,
        b"HTTP/1.1 200 OK\r\n",
        a.date.text(),
        b"text/plain; version=0.0.4; charset=utf-8",
        body_len,
        Extra::None,
        p,
    );
    a.out[at..].rotate_left(body_len);
    if head.method == Method::Head {
        a.out.truncate(a.out.len() - body_len);
    }
    p == response::Persist::Close
}
