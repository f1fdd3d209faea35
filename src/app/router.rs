//! Method and path to route: `404` for an unknown path, `405` with `Allow` for a known path
//! and another method; the head-level checks of a post (`411`, `415`) too, so that
//! `Expect: 100-continue` can be answered before the body is read.

use crate::http::request::{Framing, Head, Method};
use crate::http::status::Reject;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    CreateUsage,
    /// `POST /api/usages` with `Content-Type: application/x-ndjson`: one usage per line,
    /// streamed (`app::bulk`).
    CreateBulk,
    /// `GET`/`HEAD /api/usages/{id}`; `None` when `{id}` is not a positive decimal integer.
    GetUsage(Option<u64>),
    Health,
    Metrics,
}

impl Route {
    /// The `route` label of `usaged_requests_total`.
    pub fn label(route: &Result<Route, Reject>) -> usize {
        match route {
            Ok(Route::CreateUsage | Route::CreateBulk) => crate::metrics::ROUTE_CREATE,
            Ok(Route::GetUsage(_)) => crate::metrics::ROUTE_GET,
            Ok(Route::Health) => crate::metrics::ROUTE_HEALTH,
            Ok(Route::Metrics) => crate::metrics::ROUTE_METRICS,
            Err(_) => crate::metrics::ROUTE_OTHER,
        }
    }
}

const POST_ONLY: &str = "POST";
const READ_ONLY: &str = "GET, HEAD";

/// The route of `head`, whose path is `path`.
pub fn route(head: &Head, path: &[u8]) -> Result<Route, Reject> {
    let read = matches!(head.method, Method::Get | Method::Head);
    match path {
        b"/api/usages" if head.method == Method::Post => match head.framing {
            Framing::None => Err(Reject::LengthRequired),
            _ if head.ndjson => Ok(Route::CreateBulk),
            _ if !head.json => Err(Reject::UnsupportedMediaType),
            _ => Ok(Route::CreateUsage),
        },
        b"/api/usages" => Err(Reject::MethodNotAllowed(POST_ONLY)),
        b"/health" | b"/" if read => Ok(Route::Health),
        b"/health" | b"/" => Err(Reject::MethodNotAllowed(READ_ONLY)),
        b"/metrics" if read => Ok(Route::Metrics),
        b"/metrics" => Err(Reject::MethodNotAllowed(READ_ONLY)),
        _ => match path.strip_prefix(b"/api/usages/") {
            Some(id) if !id.is_empty() && !id.contains(&b'/') => {
                if read {
                    Ok(Route::GetUsage(parse_id(id)))
                } else {
                    Err(Reject::MethodNotAllowed(READ_ONLY))
                }
            }
            _ => Err(Reject::NotFound),
        },
    }
}

/// A positive decimal integer that fits in `u64`.
fn parse_id(s: &[u8]) -> Option<u64> {
    if s.len() > 20 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter()
        .try_fold(0u64, |n, &d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
        .filter(|&n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::{Parsed, parse_head};

    fn route_of(req: &str) -> Result<Route, Reject> {
        let Parsed::Head(h) = parse_head(req.as_bytes(), 8192, 65536) else {
            panic!("{req}")
        };
        route(&h, &req.as_bytes()[h.path.0..h.path.1])
    }

    #[test]
    fn table() {
        let json = "Content-Type: application/json\r\nContent-Length: 2\r\n";
        let rows: Vec<(String, Result<Route, Reject>)> = vec![
            (
                format!("POST /api/usages HTTP/1.1\r\nHost: x\r\n{json}\r\n"),
                Ok(Route::CreateUsage),
            ),
            (
                format!("POST /api/usages?x HTTP/1.1\r\nHost: x\r\n{json}\r\n"),
                Ok(Route::CreateUsage),
            ),
            (
                "POST /api/usages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\r\n"
                    .into(),
                Err(Reject::LengthRequired),
            ),
            (
                "POST /api/usages HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n".into(),
                Err(Reject::UnsupportedMediaType),
            ),
            (
                "POST /api/usages HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson; charset=utf-8\r\nContent-Length: 2\r\n\r\n".into(),
                Ok(Route::CreateBulk),
            ),
            (
                "POST /api/usages HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n".into(),
                Ok(Route::CreateBulk),
            ),
            (
                "GET /api/usages HTTP/1.1\r\nHost: x\r\n\r\n".into(),
                Err(Reject::MethodNotAllowed(POST_ONLY)),
            ),
            (
                "GET /api/usages/17 HTTP/1.1\r\nHost: x\r\n\r\n".into(),
                Ok(Route::GetUsage(Some(17))),
            ),
            (
                "HEAD /api/usages/017 HTTP/1.1\r\nHost: x\r\n\r\n".into(),
                Ok(Route::GetUsage(Some(17))),
            ),
            (
                "GET /api/usages/0 HTTP/1.1\r\nHost: x\r\n\r\n".into(),
                Ok(Route::GetUsage(None)),
            ),
            (
                "GET /api/usages/-1 HTTP/1.1\r\nHost: x\r\n\r\n".into(),
                Ok(Route::GetUsage(None)),
            ),
            (
                "GET /api/usages/99999999999999999999 HTTP/1.1\r\nHost: x\r\n\r\n".into(),
                Ok(Route::GetUsage(None)),
            ),
            (
                "DELETE /api/usages/1 HTTP/1.1\r\nHost: x\r\n\r\n".into(),
                Err(Reject::MethodNotAllowed(READ_ONLY)),
            ),
            (
                "GET /api/usages/1/x HTTP/1.1\r\nHost: x\r\n\r\n".into(),
                Err(Reject::NotFound),
            ),
            (
                "GET /api/usages/ HTTP/1.1\r\nHost: x\r\n\r\n".into(),
                Err(Reject::NotFound),
            ),
            (
                "GET /health HTTP/1.1\r\nHost: x\r\n\r\n".into(),
                Ok(Route::Health),
            ),
            (
                "HEAD / HTTP/1.1\r\nHost: x\r\n\r\n".into(),
                Ok(Route::Health),
            ),
            (
                "POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".into(),
                Err(Reject::MethodNotAllowed(READ_ONLY)),
            ),
            (
                "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n".into(),
                Err(Reject::NotFound),
            ),
            (
                "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".into(),
                Ok(Route::Metrics),
            ),
            (
                "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".into(),
                Err(Reject::MethodNotAllowed(READ_ONLY)),
            ),
        ];
        for (req, want) in rows {
            assert_eq!(route_of(&req), want, "{req:?}");
        }
    }
}
