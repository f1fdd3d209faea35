//! Answers, appended to the worker's output buffer: static status lines, the cached `Date`,
//! numbers through `itoa`. No allocation once the buffer has grown to its working size.

use super::date;

/// What the `Connection` header of an answer says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persist {
    /// HTTP/1.1 default: no header.
    KeepAlive,
    /// An HTTP/1.0 client asked for keep-alive: echo it.
    KeepAlive10,
    Close,
}

/// One extra header an answer may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extra<'a> {
    None,
    /// `Location: /api/usages/{id}`
    Location(u64),
    /// `Allow: …`
    Allow(&'a str),
    /// `Retry-After: N` (seconds)
    RetryAfter(u32),
    /// `Location: /api/usages/{id}` and `Idempotent-Replayed: true`: a retry's answer.
    Replayed(u64),
    /// `Idempotent-Replayed: true` alone (a bulk's answer).
    ReplayedBulk,
}

pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Status line and headers of an answer whose body is `body_len` bytes of `content_type`.
pub fn head(
    out: &mut Vec<u8>,
    status: &[u8],
    date: &[u8; date::LEN],
    content_type: &[u8],
    body_len: usize,
    extra: Extra<'_>,
    persist: Persist,
) {
    let mut num = itoa::Buffer::new();
    out.extend_from_slice(status);
    out.extend_from_slice(b"Date: ");
    out.extend_from_slice(date);
    out.extend_from_slice(b"\r\nContent-Type: ");
    out.extend_from_slice(content_type);
    out.extend_from_slice(b"\r\nContent-Length: ");
    out.extend_from_slice(num.format(body_len).as_bytes());
    out.extend_from_slice(b"\r\n");
    match extra {
        Extra::None => {}
        Extra::Location(id) => {
            out.extend_from_slice(b"Location: /api/usages/");
            out.extend_from_slice(num.format(id).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Extra::Allow(methods) => {
            out.extend_from_slice(b"Allow: ");
            out.extend_from_slice(methods.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Extra::Replayed(id) => {
            out.extend_from_slice(b"Location: /api/usages/");
            out.extend_from_slice(num.format(id).as_bytes());
            out.extend_from_slice(b"\r\nIdempotent-Replayed: true\r\n");
        }
        Extra::ReplayedBulk => out.extend_from_slice(b"Idempotent-Replayed: true\r\n"),
        Extra::RetryAfter(secs) => {
            out.extend_from_slice(b"Retry-After: ");
            out.extend_from_slice(num.format(secs).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(match persist {
        Persist::KeepAlive => b"\r\n",
        Persist::KeepAlive10 => b"Connection: keep-alive\r\n\r\n",
        Persist::Close => b"Connection: close\r\n\r\n",
    });
}

pub const JSON: &[u8] = b"application/json";
/// The media type of a bulk's answer, one JSON object per line.
pub const NDJSON: &[u8] = b"application/x-ndjson";

/// `{"error":"<reason>"}` with `status`; `reason` is a static ASCII string without quotes.
#[cold]
pub fn error(
    out: &mut Vec<u8>,
    status: &[u8],
    date: &[u8; date::LEN],
    reason: &str,
    extra: Extra<'_>,
    persist: Persist,
    with_body: bool,
) {
    const PRE: &[u8] = b"{\"error\":\"";
    const POST: &[u8] = b"\"}";
    head(
        out,
        status,
        date,
        JSON,
        PRE.len() + reason.len() + POST.len(),
        extra,
        persist,
    );
    if with_body {
        out.extend_from_slice(PRE);
        out.extend_from_slice(reason.as_bytes());
        out.extend_from_slice(POST);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created() {
        let mut out = Vec::new();
        head(
            &mut out,
            b"HTTP/1.1 201 Created\r\n",
            b"Tue, 01 Nov 2016 14:11:51 GMT",
            JSON,
            9,
            Extra::Location(42),
            Persist::KeepAlive10,
        );
        assert_eq!(
            out,
            b"HTTP/1.1 201 Created\r\nDate: Tue, 01 Nov 2016 14:11:51 GMT\r\nContent-Type: application/json\r\n\
Content-Length: 9\r\nLocation: /api/usages/42\r\nConnection: keep-alive\r\n\r\n"
        );
    }

    #[test]
    fn error_body_matches_its_length() {
        let mut out = Vec::new();
        error(
            &mut out,
            b"HTTP/1.1 404 Not Found\r\n",
            &[b'x'; 29],
            "not found",
            Extra::Allow("GET"),
            Persist::Close,
            true,
        );
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert_eq!(body, r#"{"error":"not found"}"#);
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        assert!(head.contains("Allow: GET\r\nConnection: close"));
    }
}
