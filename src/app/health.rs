//! `GET /health` and `GET /`: whether this node can store usages now; `GET /metrics`: what it
//! is doing.

use super::{Answer, Node, persist};
use crate::http::request::{Head, Method};
use crate::http::response::{self, Extra};

/// `200 {"status":"ok"}`, or `503 {"status":"unavailable","reason":"…"}` while draining or
/// while a journal cannot write. Returns `(close, status)`.
pub fn get(node: &Node, head: &Head, a: &mut Answer<'_>) -> (bool, u16) {
    let (line, status, extra, body): (&[u8], u16, _, [&[u8]; 3]) = match node.trouble() {
        None => (
            b"HTTP/1.1 200 OK\r\n",
            200,
            Extra::None,
            [br#"{"status":"ok"}"#, b"", b""],
        ),
        Some(reason) => (
            b"HTTP/1.1 503 Service Unavailable\r\n",
            503,
            Extra::RetryAfter(1),
            [
                br#"{"status":"unavailable","reason":""#,
                reason.as_bytes(),
                br#""}"#,
            ],
        ),
    };
    let p = persist(head, a.force_close);
    let len = body.iter().map(|b| b.len()).sum();
    response::head(a.out, line, a.date.text(), response::JSON, len, extra, p);
    if head.method != Method::Head {
        body.iter().for_each(|b| a.out.extend_from_slice(b));
    }
    (p == response::Persist::Close, status)
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
