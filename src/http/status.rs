//! Every way a request can be refused, and what each means on the wire: status line, the
//! `{"error":…}` reason, and whether the connection survives.

/// Why a request is refused. Match on it without `_`: a new kind forces a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Malformed request line or header, missing `Host`, bad framing: 400, connection closed.
    BadRequest(&'static str),
    /// A body whose length was known but whose content is not a valid usage: 400, kept.
    BadBody(&'static str),
    NotFound,
    /// The usage was stored but is gone: removed by retention, or evicted from a store without
    /// a journal: 410 `expired`, kept.
    Gone,
    /// Known path, other method; the value is the `Allow` list.
    MethodNotAllowed(&'static str),
    /// The request did not arrive within the header or body timeout: 408, closed.
    RequestTimeout,
    LengthRequired,
    PayloadTooLarge,
    UnsupportedMediaType,
    HeaderTooLarge,
    NotImplemented,
    VersionNotSupported,
    /// The server is draining for shutdown: 503, closed.
    Unavailable(&'static str),
    /// The server cannot store usages now (journal failing or stalled, stripe full): 503 with
    /// `Retry-After`, connection kept; nothing was stored.
    Busy(&'static str),
    /// A stored usage whose journal record cannot be read back (bad bytes on disk): 500, kept.
    Unreadable,
    /// The first request with this `Idempotency-Key` is still being stored: 409 with
    /// `Retry-After`, kept.
    KeyInFlight,
    /// The `Idempotency-Key` was used with another body: 422, kept.
    KeyReused,
}

impl Reject {
    /// The status code.
    pub fn status(self) -> u16 {
        let line = self.parts().0;
        line[9..12]
            .iter()
            .fold(0, |n, d| n * 10 + u16::from(d - b'0'))
    }
    /// `(status line, reason, close the connection after answering)`.
    pub fn parts(self) -> (&'static [u8], &'static str, bool) {
        match self {
            Reject::BadRequest(why) => (b"HTTP/1.1 400 Bad Request\r\n", why, true),
            Reject::BadBody(why) => (b"HTTP/1.1 400 Bad Request\r\n", why, false),
            Reject::NotFound => (b"HTTP/1.1 404 Not Found\r\n", "not found", false),
            Reject::Gone => (b"HTTP/1.1 410 Gone\r\n", "expired", false),
            Reject::MethodNotAllowed(_) => (
                b"HTTP/1.1 405 Method Not Allowed\r\n",
                "method not allowed",
                false,
            ),
            Reject::RequestTimeout => {
                (b"HTTP/1.1 408 Request Timeout\r\n", "request timeout", true)
            }
            Reject::LengthRequired => (
                b"HTTP/1.1 411 Length Required\r\n",
                "Content-Length required",
                false,
            ),
            Reject::PayloadTooLarge => (
                b"HTTP/1.1 413 Content Too Large\r\n",
                "body too large",
                true,
            ),
            Reject::UnsupportedMediaType => (
                b"HTTP/1.1 415 Unsupported Media Type\r\n",
                "Content-Type must be application/json",
                false,
            ),
            Reject::HeaderTooLarge => (
                b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
                "request header too large",
                true,
            ),
            Reject::NotImplemented => (
                b"HTTP/1.1 501 Not Implemented\r\n",
                "unsupported Transfer-Encoding",
                true,
            ),
            Reject::VersionNotSupported => (
                b"HTTP/1.1 505 HTTP Version Not Supported\r\n",
                "HTTP version not supported",
                true,
            ),
            Reject::Unavailable(why) => (b"HTTP/1.1 503 Service Unavailable\r\n", why, true),
            Reject::Busy(why) => (b"HTTP/1.1 503 Service Unavailable\r\n", why, false),
            Reject::Unreadable => (
                b"HTTP/1.1 500 Internal Server Error\r\n",
                "stored usage unreadable",
                false,
            ),
            Reject::KeyInFlight => (
                b"HTTP/1.1 409 Conflict\r\n",
                "a request with this Idempotency-Key is still being stored",
                false,
            ),
            Reject::KeyReused => (
                b"HTTP/1.1 422 Unprocessable Content\r\n",
                "Idempotency-Key reused with a different body",
                false,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_status_and_connection_rule() {
        let rows: &[(Reject, &str, bool)] = &[
            (Reject::BadRequest("x"), "400", true),
            (Reject::BadBody("x"), "400", false),
            (Reject::NotFound, "404", false),
            (Reject::Gone, "410", false),
            (Reject::Unreadable, "500", false),
            (Reject::MethodNotAllowed("GET"), "405", false),
            (Reject::RequestTimeout, "408", true),
            (Reject::LengthRequired, "411", false),
            (Reject::PayloadTooLarge, "413", true),
            (Reject::UnsupportedMediaType, "415", false),
            (Reject::HeaderTooLarge, "431", true),
            (Reject::NotImplemented, "501", true),
            (Reject::VersionNotSupported, "505", true),
            (Reject::Unavailable("draining"), "503", true),
            (Reject::Busy("journal"), "503", false),
            (Reject::KeyInFlight, "409", false),
            (Reject::KeyReused, "422", false),
        ];
        for &(r, code, close) in rows {
            let (line, reason, c) = r.parts();
            assert!(
                line.starts_with(format!("HTTP/1.1 {code} ").as_bytes()),
                "{r:?}"
            );
            assert!(line.ends_with(b"\r\n") && !reason.contains('"'));
            assert_eq!(c, close, "{r:?}");
        }
    }
}
