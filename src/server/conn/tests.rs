use super::testing::{Fixture, HEALTH, LIMITS, MockSock, POST, statuses};
use super::*;
use crate::http::response;
use crate::store::Store;
use crate::store::cold::ColdRead;

struct Harness {
    fx: Fixture,
    conn: Conn,
}

impl Harness {
    fn new() -> Self {
        Harness {
            fx: Fixture::new(),
            conn: Conn::new(vec![0; DEFAULT_BUF].into_boxed_slice()),
        }
    }

    fn ready(&mut self, sock: &mut MockSock, readable: bool) -> Next {
        let mut ctx = self.fx.ctx();
        self.conn.run_once(sock, &mut ctx, readable)
    }

    /// One drive with bulks of up to 8 MiB (the worker's `drive`: no `complete` after it).
    fn drive_big(&mut self, sock: &mut MockSock) -> Next {
        let mut ctx = self.fx.ctx();
        ctx.limits.max_bulk = 8 << 20;
        self.conn.on_ready(sock, &mut ctx, true)
    }

    /// As [`Harness::ready`], with bulks of up to 8 MiB.
    fn ready_big(&mut self, sock: &mut MockSock) -> Next {
        let mut ctx = self.fx.ctx();
        ctx.limits.max_bulk = 8 << 20;
        self.conn.run_once(sock, &mut ctx, true)
    }
}

#[test]
fn pipelined_batch_is_one_read_and_one_write() {
    let mut h = Harness::new();
    let mut sock = MockSock::default();
    sock.input.push_back(POST.repeat(40));
    assert_eq!(h.ready(&mut sock, true), Next::Keep);
    assert_eq!(
        (sock.reads, sock.writes),
        (1, 1),
        "short read: no extra read for EAGAIN"
    );
    assert_eq!(statuses(&sock.written), vec!["201"; 40]);
    let text = String::from_utf8(std::mem::take(&mut sock.written)).unwrap();
    assert!(text.contains("{\"id\":1}") && text.ends_with("{\"id\":40}"));
    // 50 requests overfill the 8 KiB buffer: a full read is followed by another, one write.
    sock.input.push_back(POST.repeat(50));
    let (reads, writes) = (sock.reads, sock.writes);
    assert_eq!(h.ready(&mut sock, true), Next::Keep);
    assert_eq!((sock.reads - reads, sock.writes - writes), (2, 1));
    assert_eq!(statuses(&sock.written), vec!["201"; 50]);
}

#[test]
fn byte_at_a_time_gives_the_same_answer() {
    let mut h = Harness::new();
    let mut sock = MockSock::default();
    for &b in POST {
        sock.input.push_back(vec![b]);
        assert_eq!(h.ready(&mut sock, true), Next::Keep);
    }
    assert_eq!(statuses(&sock.written), vec!["201"]);
    assert!(sock.written.ends_with(b"{\"id\":1}"));
}

#[test]
fn held_back_output_is_flushed_on_writable_and_bounds_reading() {
    let mut h = Harness::new();
    let mut sock = MockSock {
        write_room: Some(100),
        ..Default::default()
    };
    sock.input.push_back(POST.repeat(10));
    assert_eq!(h.ready(&mut sock, true), Next::Keep);
    assert_eq!(sock.written.len(), 100);
    // More requests arrive while output is held back: they wait.
    sock.input.push_back(POST.to_vec());
    assert_eq!(h.ready(&mut sock, true), Next::Keep);
    assert_eq!(sock.input.len(), 1, "no read while output is held back");
    sock.write_room = None;
    assert_eq!(h.ready(&mut sock, false), Next::Keep);
    assert_eq!(statuses(&sock.written), vec!["201"; 11]);
}

/// A write that fails (a reset) closes the connection, whether the answers were just released
/// (`complete`) or held back by a full socket (`flush_unsent`); nothing more is written or
/// read. If either path kept the connection (or retried), the `Next` would differ.
#[test]
fn a_failed_write_closes_the_connection_on_either_write_path() {
    let mut h = Harness::new();
    let mut sock = MockSock {
        broken: true,
        ..Default::default()
    };
    sock.input.push_back(POST.repeat(3));
    assert_eq!(
        h.ready(&mut sock, true),
        Next::Close,
        "complete's write failed"
    );
    assert!(sock.written.is_empty());
    assert_eq!(sock.writes, 1, "one write, not retried");

    let mut h = Harness::new();
    let mut sock = MockSock {
        write_room: Some(100),
        ..Default::default()
    };
    sock.input.push_back(POST.repeat(3));
    assert_eq!(h.ready(&mut sock, true), Next::Keep);
    assert_eq!(sock.written.len(), 100, "the rest is held back");
    sock.broken = true;
    sock.input.push_back(POST.to_vec());
    let (reads, writes) = (sock.reads, sock.writes);
    assert_eq!(
        h.ready(&mut sock, false),
        Next::Close,
        "flush_unsent's write failed"
    );
    assert_eq!(sock.writes, writes + 1, "one write, not retried");
    assert_eq!(sock.reads, reads, "nothing read after the failure");
    assert_eq!(sock.written.len(), 100);
}

#[test]
fn expect_continue_then_body() {
    let mut h = Harness::new();
    let mut sock = MockSock::default();
    let head_end = POST.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let mut head = POST[..head_end - 2].to_vec();
    head.extend_from_slice(b"Expect: 100-continue\r\n\r\n");
    sock.input.push_back(head);
    h.ready(&mut sock, true);
    assert_eq!(sock.written, response::CONTINUE);
    sock.input.push_back(POST[head_end..].to_vec());
    h.ready(&mut sock, true);
    assert_eq!(statuses(&sock.written), vec!["100", "201"]);
}

#[test]
fn framing_error_closes_with_linger_when_input_is_unread() {
    let mut h = Harness::new();
    let mut sock = MockSock::default();
    sock.input.push_back(
        b"POST /api/usages HTTP/1.1\r\nHost: x\r\nContent-Length: 999999\r\n\r\nxxxx".to_vec(),
    );
    assert_eq!(h.ready(&mut sock, true), Next::Linger);
    assert_eq!(statuses(&sock.written), vec!["413"]);
    sock.input.push_back(vec![b'x'; 5000]);
    assert_eq!(h.ready(&mut sock, true), Next::Keep, "discarding");
    sock.eof = true;
    assert_eq!(h.ready(&mut sock, true), Next::Close);
}

#[test]
fn client_half_close_gets_its_answers_then_close() {
    let mut h = Harness::new();
    let mut sock = MockSock {
        eof: true,
        ..Default::default()
    };
    sock.input.push_back(POST.repeat(2));
    // The piece fills less than the buffer, so EOF is seen on the next readiness.
    assert_eq!(h.ready(&mut sock, true), Next::Keep);
    assert_eq!(h.ready(&mut sock, true), Next::Close);
    assert_eq!(statuses(&sock.written), vec!["201", "201"]);
}

#[test]
fn a_body_bigger_than_the_buffer_grows_it_then_shrinks_back() {
    let mut h = Harness::new();
    let mut sock = MockSock::default();
    let pad = "x".repeat(30_000);
    let body = format!(r#"{{"pad":"{pad}","patientId":1,"timestamp":0,"medication":"A"}}"#);
    let req = format!(
        "POST /api/usages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    sock.input.push_back(req.into_bytes());
    while statuses(&sock.written).is_empty() {
        assert_eq!(h.ready(&mut sock, true), Next::Keep);
    }
    assert_eq!(statuses(&sock.written), vec!["201"]);
    assert_eq!(
        h.conn.input.capacity(),
        DEFAULT_BUF,
        "idle connection holds the default buffer only"
    );
}

#[test]
fn draining_answers_what_was_read_and_refuses_what_comes_after() {
    let mut h = Harness::new();
    let mut sock = MockSock::default();
    let head_end = POST.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    sock.input.push_back(POST[..head_end].to_vec());
    h.ready(&mut sock, true);
    h.conn.begin_drain();
    // The body of the request already started is answered; a request after it is not.
    let mut rest = POST[head_end..].to_vec();
    rest.extend_from_slice(HEALTH);
    sock.input.push_back(rest);
    h.ready(&mut sock, true);
    assert_eq!(statuses(&sock.written), vec!["201", "503"]);
    let text = String::from_utf8(sock.written).unwrap();
    assert!(text.ends_with("{\"error\":\"server is shutting down\"}"));
    assert!(
        text.matches("Connection: close").count() == 1,
        "the 503 closes"
    );
}

/// A store whose first epoch (base 0, one stripe) is all on disk: ids 1..=10 are cold.
fn cold_fixture() -> Fixture {
    use crate::store::EpochLayout;
    let layouts = [
        EpochLayout {
            base: 0,
            starts: vec![10],
            ends: Some(vec![10]),
        },
        EpochLayout {
            base: 1000,
            starts: vec![0],
            ends: None,
        },
    ];
    Fixture::with_store(std::sync::Arc::new(Store::with_epochs(&layouts)))
}

fn a_usage() -> crate::store::StoredUsage {
    use crate::json::scan::{Patient, Usage};
    crate::store::StoredUsage::from_usage(&Usage {
        patient: Patient::Num(7),
        timestamp: crate::time::Timestamp {
            ms: 0,
            offset_min: 60,
        },
        medication: b"Cold",
    })
}

#[test]
fn a_cold_get_parks_the_connection_and_its_answer_keeps_its_place() {
    let mut h = Harness {
        fx: cold_fixture(),
        conn: Conn::new(vec![0; DEFAULT_BUF].into_boxed_slice()),
    };
    let mut sock = MockSock::default();
    let mut reqs = b"GET /api/usages/3 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    reqs.extend_from_slice(HEALTH);
    sock.input.push_back(reqs);
    assert_eq!(h.ready(&mut sock, true), Next::Keep);
    assert!(
        sock.written.is_empty(),
        "nothing answered past a parked request"
    );
    assert_eq!(h.conn.deadline().1, Timeout::Cold);
    let (ask, ticket) = h.conn.take_ask().expect("a read to ask for");
    assert_eq!((ask.id, ask.slot), (3, 2));
    assert!(h.conn.take_ask().is_none(), "asked once");
    assert!(
        !h.conn.cold_done(ticket + 1, ColdRead::Missing),
        "another ticket"
    );
    assert!(h.conn.cold_done(ticket, ColdRead::Found(a_usage())));
    assert_eq!(h.ready(&mut sock, true), Next::Keep);
    assert_eq!(statuses(&sock.written), vec!["200", "200"]);
    let text = String::from_utf8(sock.written.clone()).unwrap();
    let first = text.find("\"medication\":\"Cold\"").unwrap();
    assert!(first < text.find("{\"status\":\"ok\"}").unwrap(), "{text}");
    assert!(text.contains("{\"id\":3,\"patientId\":7,"), "{text}");
}

#[test]
fn a_cold_read_that_does_not_come_back_is_a_503_and_the_connection_goes_on() {
    let mut h = Harness {
        fx: cold_fixture(),
        conn: Conn::new(vec![0; DEFAULT_BUF].into_boxed_slice()),
    };
    let mut sock = MockSock::default();
    let mut reqs = b"GET /api/usages/5 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    reqs.extend_from_slice(HEALTH);
    sock.input.push_back(reqs);
    h.ready(&mut sock, true);
    let (_, ticket) = h.conn.take_ask().unwrap();
    let mut ctx = h.fx.ctx();
    assert_eq!(h.conn.on_timeout(&mut ctx), Next::Keep);
    let timed_out = std::mem::take(&mut h.fx.out);
    assert_eq!(statuses(&timed_out), vec!["503"]);
    let text = String::from_utf8(timed_out).unwrap();
    assert!(text.contains("Retry-After: 1"), "{text}");
    assert!(h.conn.take_more(), "driven again for what follows");
    assert!(!h.conn.cold_done(ticket, ColdRead::Missing), "too late");
    assert_eq!(h.ready(&mut sock, true), Next::Keep);
    assert_eq!(statuses(&sock.written), vec!["200"]);
    // Unreadable on disk: 500, the connection kept.
    sock.written.clear();
    sock.input
        .push_back(b"GET /api/usages/7 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec());
    h.ready(&mut sock, true);
    let (_, ticket) = h.conn.take_ask().unwrap();
    assert!(h.conn.cold_done(ticket, ColdRead::Unreadable("bad".into())));
    assert_eq!(h.ready(&mut sock, true), Next::Keep);
    assert_eq!(statuses(&sock.written), vec!["500"]);
}

/// A hostile bulk: 2-byte invalid lines up to the bulk limit would answer ~25 times its size
/// (a ~50-byte error line each); the answer stops at its cap, the buffers holding it are freed
/// after it, and the connection goes on.
#[test]
fn a_bulk_of_tiny_invalid_lines_has_a_bounded_answer_and_frees_it() {
    let mut h = Harness::new();
    let mut sock = MockSock::default();
    let max = LIMITS.max_bulk;
    let head = format!(
        "POST /api/usages HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\nContent-Length: {max}\r\n\r\n"
    );
    sock.input.push_back(head.into_bytes());
    for _ in 0..max / (64 << 10) {
        sock.input.push_back(b"x\n".repeat(32 << 10));
    }
    sock.input.push_back(HEALTH.to_vec());
    while statuses(&sock.written).len() < 2 {
        assert_eq!(h.ready(&mut sock, true), Next::Keep);
    }
    assert_eq!(statuses(&sock.written), vec!["200", "200"]);
    let text = String::from_utf8(std::mem::take(&mut sock.written)).unwrap();
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..text.rfind("HTTP/1.1").unwrap()];
    let cap = app::bulk::answer_cap(max);
    assert!(body.len() <= cap, "answer {} bytes, cap {cap}", body.len());
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines[0], r#"{"error":"body is not valid JSON","line":1}"#);
    let n = lines.len();
    let stop = format!(r#"{{"error":"{}","line":{n}}}"#, app::bulk::STOPPED);
    assert_eq!(lines[n - 1], stop, "the last line says where it stopped");
    assert!(
        h.conn.bulk_out.capacity() <= 64 << 10,
        "answer buffer freed"
    );
    assert!(h.conn.unsent.capacity() <= 256 << 10);
}

fn bulk_of(lines: usize) -> Vec<u8> {
    let line = br#"{"patientId":"p","timestamp":"2024-01-02T03:04:05Z","medication":"m"}"#;
    let mut body = Vec::new();
    for _ in 0..lines {
        body.extend_from_slice(line);
        body.push(b'\n');
    }
    let mut req = format!(
        "POST /api/usages HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    req
}

#[test]
fn one_drive_takes_a_bounded_share_of_a_bulk_and_the_next_goes_on() {
    let mut h = Harness::new();
    let mut sock = MockSock::default();
    let n = 60_000; // 4.2 MiB, all in the socket at once
    sock.input.push_back(bulk_of(n));
    assert_eq!(h.drive_big(&mut sock), Next::Keep);
    let stored = h.fx.app.writer.last_id();
    let most = (bulk::BULK_DRIVE + LIMITS.max_buf()) / 71 + 1;
    assert!(stored > 0 && stored as usize <= most, "{stored} > {most}");
    assert!(h.conn.take_more(), "driven again without a readiness event");
    assert!(h.fx.out.is_empty(), "not answered yet");
    // Driven again as the worker does: the rest, and one complete answer.
    h.fx.out.clear();
    while statuses(&sock.written).is_empty() {
        assert_eq!(h.ready_big(&mut sock), Next::Keep);
    }
    assert_eq!(statuses(&sock.written), vec!["200"]);
    let text = String::from_utf8(std::mem::take(&mut sock.written)).unwrap();
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    assert_eq!(body.lines().count(), n);
    assert!(body.lines().all(|l| l.starts_with("{\"id\":")));
}

#[test]
fn a_bulk_the_store_refuses_from_its_first_line_is_503() {
    let mut h = Harness::new();
    let mut sock = MockSock::default();
    h.fx.app.writer.set_accepting(false);
    sock.input.push_back(bulk_of(3));
    sock.input.push_back(HEALTH.to_vec());
    while statuses(&sock.written).len() < 2 {
        assert_eq!(h.ready(&mut sock, true), Next::Keep);
    }
    assert_eq!(statuses(&sock.written), vec!["503", "200"]);
    let text = String::from_utf8(std::mem::take(&mut sock.written)).unwrap();
    assert!(text.contains("Retry-After: 1\r\n"), "{text}");
    assert!(text.contains(r#"{"error":"cannot store usages now; retry later"}"#));
    // Once a line is stored, a refusal is that line's error: the bulk still gets its 200.
    h.fx.app.writer.set_accepting(true);
    let req = bulk_of(30_000); // 2.1 MiB
    let (first, rest) = req.split_at(req.len() - (1 << 20));
    sock.input.push_back(first.to_vec());
    assert_eq!(h.drive_big(&mut sock), Next::Keep);
    assert!(h.fx.app.writer.last_id() > 0);
    h.fx.out.clear();
    h.fx.app.writer.set_accepting(false);
    sock.input.push_back(rest.to_vec());
    while statuses(&sock.written).is_empty() {
        assert_eq!(h.ready_big(&mut sock), Next::Keep);
    }
    assert_eq!(statuses(&sock.written), vec!["200"]);
    let text = String::from_utf8(sock.written).unwrap();
    assert!(
        text.ends_with("{\"error\":\"cannot store usages now; retry later\",\"line\":30000}\n")
    );
}
