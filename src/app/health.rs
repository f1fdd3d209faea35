//! `GET /health` and `GET /`: whether this node can store usages now; `GET /metrics`: what it
//! is doing.

use super::{Answer, Node, persist};
use crate::http::request::{Head, Method};
use crate::http::response::{self, Extra};

const OK: &[u8] = br#"{"status":"ok"}"#;

/// `200 {"status":"ok"}`, or `503 {"status":"unavailable","reason":"…"}` while draining or
/// while a journal cannot write. Returns `(close, status)`.
pub fn get(node: &Node, head: &Head, a: &mut Answer<'_>) -> (bool, u16) {
    let Some(reason) = node.trouble() else {
        let p = persist(head, a.force_close);
        response::head(
            a.out,
            b"HTTP/1.1 200 OK\r\n",
            a.date.text(),
            response::JSON,
            OK.len(),
            Extra::None,
            p,
        );
        if head.method != Method::Head {
            a.out.extend_from_slice(OK);
        }
        return (p == response::Persist::Close, 200);
    };
    const PRE: &[u8] = br#"{"status":"unavailable","reason":""#;
    const POST: &[u8] = br#""}"#;
    let p = persist(head, a.force_close);
    response::head(
        a.out,
        b"HTTP/1.1 503 Service Unavailable\r\n",
        a.date.text(),
        response::JSON,
        PRE.len() + reason.len() + POST.len(),
        Extra::RetryAfter(1),
        p,
    );
    if head.method != Method::Head {
        a.out.extend_from_slice(PRE);
        a.out.extend_from_slice(reason.as_bytes());
        a.out.extend_from_slice(POST);
    }
    (p == response::Persist::Close, 503)
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
