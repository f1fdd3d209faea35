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
    let content_type = b"text/plain; version=0.0.4; charset=utf-8";
    super::answer_with(a, head, b"HTTP/1.1 200 OK\r\n", content_type, |out| {
        m.render(store, out)
    })
}
