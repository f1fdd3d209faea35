//! The request head: `httparse` for the syntax, then the framing and connection rules of
//! RFC 9112 and API.md, into an owned, `Copy` [`Head`] that names the path by its position in
//! the connection buffer (so a head is parsed once, even when its body arrives in pieces).

use std::mem::MaybeUninit;

use super::status::Reject;

/// Header lines accepted per request; more is `431`.
pub const MAX_HEADERS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Other,
}

/// How the body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length(usize),
    Chunked,
    /// Neither `Content-Length` nor `Transfer-Encoding`: no body.
    None,
}

/// Everything the rest of the server needs from a request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Bytes of request line and headers, including the final empty line.
    pub len: usize,
    pub method: Method,
    /// The path (no scheme, authority or query) as `start..end` of the parsed buffer.
    pub path: (usize, usize),
    pub http10: bool,
    /// Whether the connection stays open after the answer (before any error says otherwise).
    pub keep_alive: bool,
    pub framing: Framing,
    pub expect_continue: bool,
    /// `Content-Type` is `application/json` (any parameters).
    pub json: bool,
    /// `Content-Type` is `application/x-ndjson` (any parameters): a bulk of usages, one per
    /// line, whose `Content-Length` is checked against the bulk limit instead.
    pub ndjson: bool,
    /// Its `Idempotency-Key` (API.md "Idempotent retries").
    pub key: crate::idem::KeyHeader,
}

/// What the buffered bytes amount to so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// The head is not complete yet.
    Partial,
    Head(Head),
    Reject(Reject),
}

/// Parse the head at the start of `buf`, with one body limit for every request.
pub fn parse_head(buf: &[u8], max_header: usize, max_body: usize) -> Parsed {
    parse_head_bulk(buf, max_header, max_body, max_body)
}

/// Parse the head at the start of `buf`: a `Content-Length` past `max_body` is `413`, or
/// past `max_bulk` for an `application/x-ndjson` body (a bulk, streamed line by line).
pub fn parse_head_bulk(buf: &[u8], max_header: usize, max_body: usize, max_bulk: usize) -> Parsed {
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) if len <= max_header => len,
        Ok(httparse::Status::Complete(_)) => return Parsed::Reject(Reject::HeaderTooLarge),
        Ok(httparse::Status::Partial) if buf.len() >= max_header => {
            return Parsed::Reject(Reject::HeaderTooLarge);
        }
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(e) => return Parsed::Reject(syntax_error(e, buf)),
    };
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Parsed::Reject(Reject::BadRequest("malformed request line"));
    };
    match analyse(req.headers, version, (max_body, max_bulk)) {
        Ok(fields) => Parsed::Head(Head {
            len,
            method: match method {
                "GET" => Method::Get,
                "HEAD" => Method::Head,
                "POST" => Method::Post,
                _ => Method::Other,
            },
            path: path_range(buf, path),
            http10: version == 0,
            keep_alive: if version == 0 {
                fields.keep_alive && !fields.close
            } else {
                !fields.close
            },
            framing: fields.framing,
            expect_continue: fields.expect_continue && version == 1,
            json: fields.json,
            ndjson: fields.ndjson,
            key: fields.key,
        }),
        Err(r) => Parsed::Reject(r),
    }
}

#[cold]
fn syntax_error(e: httparse::Error, buf: &[u8]) -> Reject {
    match e {
        httparse::Error::Version if names_other_version(buf) => Reject::VersionNotSupported,
        httparse::Error::Version => Reject::BadRequest("malformed request line"),
        httparse::Error::TooManyHeaders => Reject::HeaderTooLarge,
        httparse::Error::HeaderName | httparse::Error::HeaderValue | httparse::Error::NewLine => {
            Reject::BadRequest("malformed header")
        }
        httparse::Error::Token | httparse::Error::Status => {
            Reject::BadRequest("malformed request line")
        }
    }
}

/// Whether the request line ends in a well-formed `HTTP/x.y` that httparse refused (so the
/// answer is `505`, not `400`).
fn names_other_version(buf: &[u8]) -> bool {
    let line = buf.split(|&b| b == b'\n').next().unwrap_or(buf);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let parts: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    match parts[..] {
        [_, _, version] => {
            matches!(version, [b'H', b'T', b'T', b'P', b'/', major, b'.', minor] if major.is_ascii_digit() && minor.is_ascii_digit())
                || matches!(version, [b'H', b'T', b'T', b'P', b'/', major] if major.is_ascii_digit())
        }
        _ => false,
    }
}

/// The path of an origin-form or absolute-form target, without query or fragment, as a range
/// of `buf` (`path` borrows from `buf`).
fn path_range(buf: &[u8], path: &str) -> (usize, usize) {
    let start = path.as_ptr() as usize - buf.as_ptr() as usize;
    let mut p = path.as_bytes();
    let mut skip = 0;
    for scheme in [&b"http://"[..], b"https://"] {
        if p.len() >= scheme.len() && p[..scheme.len()].eq_ignore_ascii_case(scheme) {
            let authority = p[scheme.len()..]
                .iter()
                .position(|&b| b == b'/')
                .unwrap_or(p.len() - scheme.len());
            skip = scheme.len() + authority;
            p = &p[skip..];
            break;
        }
    }
    let end = p
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(p.len());
    (start + skip, start + skip + end)
}

/// What the headers say, before it is turned into a [`Head`].
struct Fields {
    framing: Framing,
    keep_alive: bool,
    close: bool,
    expect_continue: bool,
    json: bool,
    ndjson: bool,
    key: crate::idem::KeyHeader,
}

/// The headers into [`Fields`]; `max_body` is `(json, bulk)`: the largest `Content-Length`
/// of any other body and of an `application/x-ndjson` one.
fn analyse(
    headers: &[httparse::Header<'_>],
    version: u8,
    (max_body, max_bulk): (usize, usize),
) -> Result<Fields, Reject> {
    let mut f = Fields {
        framing: Framing::None,
        keep_alive: false,
        close: false,
        expect_continue: false,
        json: false,
        ndjson: false,
        key: crate::idem::KeyHeader::None,
    };
    let (mut hosts, mut length, mut chunked, mut other_coding) = (0, None, false, false);
    for h in headers {
        let name = h.name.as_bytes();
        let value = trim(h.value);
        if name.eq_ignore_ascii_case(b"content-length") {
            for item in value.split(|&b| b == b',') {
                let n = parse_length(trim(item))?;
                if length.is_some_and(|l| l != n) {
                    return Err(Reject::BadRequest("conflicting Content-Length"));
                }
                length = Some(n);
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            for coding in value.split(|&b| b == b',').map(trim) {
                if coding.eq_ignore_ascii_case(b"chunked") && !chunked {
                    chunked = true;
                } else {
                    other_coding = true;
                }
            }
        } else if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',').map(trim) {
                f.close |= token.eq_ignore_ascii_case(b"close");
                f.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case(b"expect") {
            f.expect_continue |= value.eq_ignore_ascii_case(b"100-continue");
        } else if name.eq_ignore_ascii_case(b"content-type") {
            let media = value.split(|&b| b == b';').next().map_or(&b""[..], trim);
            f.json = media.eq_ignore_ascii_case(b"application/json");
            f.ndjson = media.eq_ignore_ascii_case(b"application/x-ndjson");
        } else if name.eq_ignore_ascii_case(b"idempotency-key") {
            f.key = f.key.and(value);
        }
    }
    if version == 1 && hosts != 1 {
        return Err(Reject::BadRequest(if hosts == 0 {
            "missing Host header"
        } else {
            "more than one Host header"
        }));
    }
    f.framing = match (length, chunked || other_coding) {
        (Some(_), true) => {
            return Err(Reject::BadRequest(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        (_, true) if other_coding => return Err(Reject::NotImplemented),
        (_, true) => Framing::Chunked,
        (Some(n), false) if n > (if f.ndjson { max_bulk } else { max_body }) as u64 => {
            return Err(Reject::PayloadTooLarge);
        }
        (Some(n), false) => Framing::Length(n as usize),
        (None, false) => Framing::None,
    };
    Ok(f)
}

fn parse_length(v: &[u8]) -> Result<u64, Reject> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(Reject::BadRequest("invalid Content-Length"));
    }
    Ok(v.iter().fold(0, |n, &d| n * 10 + u64::from(d - b'0')))
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &v[start..end]
}

#[cfg(test)]
mod tests;
