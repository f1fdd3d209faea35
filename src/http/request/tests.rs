use super::*;

fn head(s: &str) -> Head {
    match parse_head(s.as_bytes(), 8192, 65536) {
        Parsed::Head(h) => h,
        other => panic!("{s:?}: {other:?}"),
    }
}

fn reject(s: &[u8]) -> Reject {
    match parse_head(s, 8192, 65536) {
        Parsed::Reject(r) => r,
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(s)),
    }
}

#[test]
fn readme_post() {
    let s = "POST /api/usages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json; charset=UTF-8\r\nContent-Length: 98\r\n\r\n";
    let h = head(s);
    assert_eq!(h.len, s.len());
    assert_eq!(
        (h.method, h.framing, h.json, h.keep_alive, h.http10),
        (Method::Post, Framing::Length(98), true, true, false)
    );
    assert_eq!(&s[h.path.0..h.path.1], "/api/usages");
}

#[test]
fn targets() {
    for (target, path) in [
        ("/api/usages?x=1", "/api/usages"),
        ("http://example.com/api/usages", "/api/usages"),
        ("HTTPS://example.com:8080/health?q#f", "/health"),
        ("http://example.com", ""),
        ("/", "/"),
    ] {
        let s = format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n");
        let h = head(&s);
        assert_eq!(&s[h.path.0..h.path.1], path, "{target}");
    }
}

#[test]
fn connection_rules() {
    assert!(
        !head("GET / HTTP/1.0\r\n\r\n").keep_alive,
        "1.0 closes by default"
    );
    assert!(head("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
    assert!(!head("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").keep_alive);
    assert!(!head("GET / HTTP/1.1\r\nHost: x\r\nconnection: foo, CLOSE\r\n\r\n").keep_alive);
    assert!(head("GET / HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\n\r\n").expect_continue);
    assert!(
        !head("GET / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n").expect_continue,
        "1.0 ignores Expect"
    );
    assert_eq!(
        head("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n").framing,
        Framing::Chunked
    );
    assert_eq!(
        head("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\ncontent-length: 5\r\n\r\n")
            .framing,
        Framing::Length(5)
    );
    assert!(!head("POST / HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\r\n").json);
    assert!(head("POST / HTTP/1.1\r\nHost: x\r\ncontent-type: APPLICATION/JSON\r\n\r\n").json);
}

#[test]
fn error_rows() {
    let bad = |why| Reject::BadRequest(why);
    let rows: &[(&[u8], Reject)] = &[
        (b"GET / HTTP/1.1\r\n\r\n", bad("missing Host header")),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", bad("more than one Host header")),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\n\r\n", bad("malformed header")),
        (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", bad("malformed header")),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n", bad("malformed header")),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n", bad("malformed header")),
        (b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n", bad("malformed request line")),
        (b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n", bad("malformed request line")),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", bad("both Content-Length and Transfer-Encoding")),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", bad("conflicting Content-Length")),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", bad("invalid Content-Length")),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1e3\r\n\r\n", bad("invalid Content-Length")),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 65537\r\n\r\n", Reject::PayloadTooLarge),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n", bad("invalid Content-Length")),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", Reject::NotImplemented),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", Reject::NotImplemented),
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", Reject::VersionNotSupported),
        (b"GET / HTTP/1.2\r\nHost: x\r\n\r\n", Reject::VersionNotSupported),
        (b"GET / HTTP/3\r\nHost: x\r\n\r\n", Reject::VersionNotSupported),
        (b"GE T / HTTP/1.1\r\nHost: x\r\n\r\n", bad("malformed request line")),
        (b"GET / FTP/1.1\r\nHost: x\r\n\r\n", bad("malformed request line")),
    ];
    for &(input, want) in rows {
        assert_eq!(reject(input), want, "{:?}", String::from_utf8_lossy(input));
    }
    let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
    assert_eq!(
        reject(format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes()),
        Reject::HeaderTooLarge
    );
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n",
        "a".repeat(8200)
    );
    assert_eq!(reject(big.as_bytes()), Reject::HeaderTooLarge);
    assert_eq!(
        reject(&big.as_bytes()[..8192]),
        Reject::HeaderTooLarge,
        "partial but already too large"
    );
}

#[test]
fn every_prefix_is_partial_then_the_same_head() {
    let s = b"POST http://h/api/usages?a HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    let whole = parse_head(s, 8192, 65536);
    assert!(matches!(whole, Parsed::Head(_)));
    for cut in 0..s.len() {
        assert_eq!(
            parse_head(&s[..cut], 8192, 65536),
            Parsed::Partial,
            "cut {cut}"
        );
    }
    let mut more = s.to_vec();
    more.extend_from_slice(b"5\r\nhello");
    assert_eq!(parse_head(&more, 8192, 65536), whole);
}
