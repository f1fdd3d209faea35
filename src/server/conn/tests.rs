use super::*;
use crate::store::Store;
use std::collections::VecDeque;
use std::sync::Arc;

/// A socket double: each `read` hands out one queued piece (then `WouldBlock`); `write` takes
/// up to `write_room` bytes. Counts syscalls.
#[derive(Default)]
pub struct MockSock {
    pub input: VecDeque<Vec<u8>>,
    pub written: Vec<u8>,
    pub write_room: Option<usize>,
    pub reads: usize,
    pub writes: usize,
    pub eof: bool,
    pub broken: bool,
}

impl Read for MockSock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reads += 1;
        let Some(mut piece) = self.input.pop_front() else {
            return if self.eof {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        };
        let n = piece.len().min(buf.len());
        buf[..n].copy_from_slice(&piece[..n]);
        if n < piece.len() {
            piece.drain(..n);
            self.input.push_front(piece);
        }
        Ok(n)
    }
}

impl Write for MockSock {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.writes += 1;
        if self.broken {
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        let n = self.write_room.map_or(data.len(), |r| r.min(data.len()));
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        if let Some(r) = &mut self.write_room {
            *r -= n;
        }
        self.written.extend_from_slice(&data[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub const POST: &[u8] = b"POST /api/usages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 98\r\n\r\n{\"patientId\":\"100\",\"timestamp\":\"Tue Nov 01 2016 09:11:51 GMT-0500 (CDT)\",\"medication\":\"Albuterol\"}";

static WORKER_METRICS: std::sync::LazyLock<crate::metrics::WorkerMetrics> =
    std::sync::LazyLock::new(Default::default);
const TIMEOUTS: Timeouts = Timeouts {
    header_ms: 10_000,
    body_ms: 10_000,
    idle_ms: 60_000,
    write_ms: 10_000,
    linger_ms: 2000,
};

struct Harness {
    app: App,
    out: Vec<u8>,
    date: DateCache,
    conn: Conn,
}

impl Harness {
    fn new() -> Self {
        Harness {
            app: {
                let store = Arc::new(Store::new(1));
                App::new(
                    Arc::clone(&store),
                    store.writer(0),
                    Arc::new(crate::metrics::Metrics::new(1)),
                    Arc::new(Default::default()),
                )
            },
            out: Vec::new(),
            date: DateCache::default(),
            conn: Conn::new(vec![0; DEFAULT_BUF].into_boxed_slice()),
        }
    }

    fn ready(&mut self, sock: &mut MockSock, readable: bool) -> Next {
        let mut ctx = Ctx {
            app: &mut self.app,
            out: &mut self.out,
            out_start: 0,
            date: &self.date,
            limits: Limits {
                max_header: 8192,
                max_body: 65536,
                timeouts: TIMEOUTS,
            },
            draining: false,
            now_ms: 0,
            turn_start: 0,
            metrics: &WORKER_METRICS,
            access: None,
            log_time: b"",
        };
        self.conn.run_once(sock, &mut ctx, readable)
    }
}

fn statuses(written: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(written);
    text.match_indices("HTTP/1.1 ")
        .map(|(i, _)| text[i + 9..i + 12].to_string())
        .collect()
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
        h.conn.buf.len(),
        DEFAULT_BUF,
        "idle connection holds the default buffer only"
    );
}

/// Regression: a connection whose write failed left its answers in the worker's output
/// buffer, and the next connection driven sent them to its own client.
#[test]
fn a_failed_write_leaves_nothing_for_the_next_connection() {
    let mut h = Harness::new();
    let mut sock = MockSock {
        broken: true,
        ..Default::default()
    };
    sock.input.push_back(POST.repeat(3));
    assert_eq!(h.ready(&mut sock, true), Next::Close);
    h.conn = Conn::new(vec![0; DEFAULT_BUF].into_boxed_slice());
    let mut other = MockSock::default();
    other
        .input
        .push_back(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n".to_vec());
    h.ready(&mut other, true);
    assert_eq!(statuses(&other.written), vec!["200"], "only its own answer");
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
    rest.extend_from_slice(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
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
