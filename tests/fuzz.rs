//! Property-based fuzzing (stable Rust has no `cargo fuzz`): random and mutated inputs for the
//! request head and chunked decoder, the JSON scanner, the timestamp parser, and the whole
//! connection state machine fed in random pieces. None may panic; the connection's output must
//! always be a sequence of well-formed answers. `FUZZ_CASES` sets the count (CI: the default;
//! `scripts/fuzz.sh`: many more).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::Arc;

use proptest::prelude::*;
use usaged::app::App;
use usaged::http::chunked::Chunked;
use usaged::http::date::DateCache;
use usaged::http::request::parse_head;
use usaged::json::scan::scan_usage;
use usaged::server::conn::{Conn, Ctx, DEFAULT_BUF, Limits, Next, Timeouts};
use usaged::store::Store;

fn cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

const README: &str = r#"{"patientId":"100","timestamp":"Tue Nov 01 2016 09:11:51 GMT-0500 (CDT)","medication":"Albuterol"}"#;

/// Requests of every kind the server knows, valid and not.
fn seeds() -> Vec<Vec<u8>> {
    let post = |body: &str, extra: &str| {
        format!(
            "POST /api/usages HTTP/1.1\r\nHost: f\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    };
    vec![
        post(README, ""),
        post(README, "Expect: 100-continue\r\n"),
        post(r#"{"patientId":1,"timestamp":0,"medication":"\u00e9"}"#, "Connection: close\r\n"),
        b"POST /api/usages HTTP/1.1\r\nHost: f\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\n{\"pat\r\n0\r\nT: v\r\n\r\n".to_vec(),
        b"GET /api/usages/1 HTTP/1.1\r\nHost: f\r\n\r\n".to_vec(),
        b"HEAD /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".to_vec(),
        b"GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n".to_vec(),
        b"DELETE /api/usages HTTP/1.1\r\nHost: f\r\nContent-Length: 3\r\n\r\nabc".to_vec(),
        b"GET / HTTP/2.0\r\n\r\n".to_vec(),
    ]
}

fn mutated() -> impl Strategy<Value = Vec<u8>> {
    let seed = proptest::sample::select(seeds());
    let edits = proptest::collection::vec(
        (0u8..4, any::<proptest::sample::Index>(), any::<u8>()),
        0..4,
    );
    (seed, edits).prop_map(|(mut s, edits)| {
        for (kind, at, b) in edits {
            let i = at.index(s.len() + 1);
            match kind {
                0 if i < s.len() => {
                    s.remove(i);
                }
                1 => s.insert(i, b),
                2 if i < s.len() => s[i] = b,
                3 if i < s.len() => s.truncate(i),
                _ => {}
            }
        }
        s
    })
}

/// A socket double: hands out the queued pieces one read at a time; takes every write.
struct Pieces {
    input: VecDeque<Vec<u8>>,
    output: Vec<u8>,
}

impl Read for Pieces {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(mut p) = self.input.pop_front() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let n = p.len().min(buf.len());
        buf[..n].copy_from_slice(&p[..n]);
        if n < p.len() {
            p.drain(..n);
            self.input.push_front(p);
        }
        Ok(n)
    }
}

impl Write for Pieces {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The output is whole answers: status line, headers, then exactly Content-Length bytes.
fn well_formed(mut out: &[u8]) -> Result<usize, String> {
    let mut answers = 0;
    while !out.is_empty() {
        let end = out
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or("unterminated head")?
            + 4;
        let head = std::str::from_utf8(&out[..end]).map_err(|e| e.to_string())?;
        if !head.starts_with("HTTP/1.1 ") {
            return Err(format!("bad status line in {head:?}"));
        }
        let status: u16 = head[9..12]
            .parse()
            .map_err(|_| format!("bad status in {head:?}"))?;
        let len = if status == 100 {
            0
        } else {
            head.lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .ok_or(format!("no Content-Length in {head:?}"))?
                .parse::<usize>()
                .map_err(|e| e.to_string())?
        };
        // HEAD answers carry the length of a body they do not send; the next answer starts
        // right after the head then.
        let body_len = if out.len() >= end + len && !out[end..].starts_with(b"HTTP/1.1 ") {
            len
        } else {
            0
        };
        out = &out[(end + body_len).min(out.len())..];
        answers += 1;
    }
    Ok(answers)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn connection_state_machine(
        requests in proptest::collection::vec(mutated(), 1..6),
        cuts in proptest::collection::vec(1usize..64, 0..24),
    ) {
        let stream: Vec<u8> = requests.concat();
        let mut input = VecDeque::new();
        let mut rest = &stream[..];
        for c in cuts {
            let n = c.min(rest.len());
            input.push_back(rest[..n].to_vec());
            rest = &rest[n..];
        }
        if !rest.is_empty() {
            input.push_back(rest.to_vec());
        }
        let store = Arc::new(Store::new(1));
        let mut app = App::new(Arc::clone(&store), store.writer(0), Arc::new(usaged::metrics::Metrics::new(1)), Arc::new(Default::default()));
        let (mut out, date) = (Vec::new(), DateCache::default());
        let timeouts = Timeouts { header_ms: 1000, body_ms: 1000, idle_ms: 1000, write_ms: 1000, linger_ms: 1000 };
        let limits = Limits { max_header: 1024, max_body: 4096, max_bulk: 65536, timeouts };
        let mut conn = Conn::new(vec![0; DEFAULT_BUF].into_boxed_slice());
        let wm = usaged::metrics::WorkerMetrics::default();
        let mut sock = Pieces { input, output: Vec::new() };
        for turn in 0..200 {
            let mut ctx = Ctx { app: &mut app, out: &mut out, out_start: 0, date: &date, limits, draining: false, now_ms: turn, turn_start: 0, metrics: &wm, access: None, log_time: b"" };
            if conn.run_once(&mut sock, &mut ctx, true) == Next::Close || sock.input.is_empty() {
                break;
            }
        }
        out.clear();
        let mut ctx = Ctx { app: &mut app, out: &mut out, out_start: 0, date: &date, limits, draining: false, now_ms: 10_000, turn_start: 0, metrics: &wm, access: None, log_time: b"" };
        if conn.on_timeout(&mut ctx) == Next::Keep {
            let _ = conn.complete(&mut sock, &out, 10_000, &timeouts, &wm);
        }
        prop_assert!(well_formed(&sock.output).is_ok(), "{:?}: {:?}", well_formed(&sock.output), String::from_utf8_lossy(&sock.output));
    }

    #[test]
    fn head_parser(bytes in prop_oneof![mutated(), proptest::collection::vec(any::<u8>(), 0..300)]) {
        let _ = parse_head(&bytes, 1024, 4096);
    }

    #[test]
    fn chunked_decoder(bytes in proptest::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'0'), Just(b'a'), Just(b';'), any::<u8>()], 0..200)) {
        let mut b = bytes;
        let _ = Chunked::default().advance(&mut b, 64);
    }

    #[test]
    fn json_scanner(body in prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200),
        (any::<proptest::sample::Index>(), any::<u8>()).prop_map(|(i, b)| {
            let mut v = README.as_bytes().to_vec();
            let at = i.index(v.len());
            v[at] = b;
            v
        }),
    ]) {
        let mut b = body;
        let _ = scan_usage(&mut b);
    }

    #[test]
    fn timestamp_parser(s in prop_oneof![
        "[0-9TZ:+. -]{0,40}",
        "[A-Za-z0-9,:() +-]{0,45}",
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(|v| String::from_utf8_lossy(&v).into_owned()),
    ]) {
        let _ = usaged::time::parse(s.as_bytes());
    }
}
