//! Clients that tell a FIN from a reset, and a request lost from one never sent.

use super::*;

// ---------------------------------------------------------------------------------------------
// Clients that tell a FIN from a reset, and a request lost from one never sent.

/// What the socket holds before we send: nothing yet (open), a FIN, stray bytes, or an error.
pub enum Peek {
    Open,
    Fin,
    Data,
    Failed(io::Error),
}

/// One non-blocking `MSG_PEEK`: the last look before a request is written.
pub fn peek(s: &TcpStream) -> Peek {
    let mut b = [0u8; 1];
    // SAFETY: `b` is a live 1-byte buffer and the length says 1; the fd is open (owned by `s`).
    let n = unsafe {
        libc::recv(
            s.as_raw_fd(),
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        0 => Peek::Fin,
        1 => Peek::Data,
        _ => {
            let e = io::Error::last_os_error();
            if e.kind() == ErrorKind::WouldBlock {
                Peek::Open
            } else {
                Peek::Failed(e)
            }
        }
    }
}

/// One answer: a whole response, a clean EOF before its first byte, or an error (a reset, a
/// timeout, or an answer cut short).
pub enum Answer {
    Got(Response),
    Eof,
    Failed(io::Error),
}

pub fn read_answer(r: &mut BufReader<TcpStream>) -> Answer {
    let mut line = String::new();
    match r.read_line(&mut line) {
        Ok(0) => return Answer::Eof,
        Ok(_) => {}
        Err(e) => return Answer::Failed(e),
    }
    let cut =
        |what: &str| Answer::Failed(io::Error::new(ErrorKind::UnexpectedEof, what.to_string()));
    let Some(status) = line.get(9..12).and_then(|s| s.parse().ok()) else {
        return cut(&format!("bad status line {line:?}"));
    };
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        match r.read_line(&mut h) {
            Ok(0) => return cut("EOF inside the head"),
            Ok(_) => {}
            Err(e) => return Answer::Failed(e),
        }
        if h == "\r\n" {
            break;
        }
        let Some((n, v)) = h.trim_end().split_once(':') else {
            return cut(&format!("bad header {h:?}"));
        };
        headers.push((n.to_string(), v.trim().to_string()));
    }
    let mut resp = Response {
        status,
        headers,
        body: Vec::new(),
    };
    let Some(len) = resp
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    else {
        return cut("no Content-Length");
    };
    resp.body = vec![0; len];
    match r.read_exact(&mut resp.body) {
        Ok(()) => Answer::Got(resp),
        Err(e) => Answer::Failed(e),
    }
}

pub fn closes(r: &Response) -> bool {
    r.header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("close"))
}

/// What one client saw. `acked`: `(backend, id, patientId)` of each `201`.
#[derive(Default)]
pub struct Tally {
    pub acked: Vec<(usize, u64, String)>,
    /// `503` with `Connection: close` (the server was draining): `patientId`s.
    pub unavailable: Vec<String>,
    /// A FIN seen before a request was written: nothing was sent, nothing lost.
    pub fin_before_send: usize,
    /// Pipelined after an answer that said `Connection: close`: not processed, by HTTP's rule.
    pub after_close: Vec<String>,
    /// Written, then a clean EOF with no answer: `patientId`s.
    pub unanswered: Vec<String>,
    /// A reset or another I/O error: what and when.
    pub errors: Vec<String>,
    /// Any other answer: status and body.
    pub unexpected: Vec<String>,
    /// Connection refused: the listener is closed.
    pub refused: usize,
}

impl Tally {
    pub fn merge(mut self, o: Tally) -> Tally {
        self.acked.extend(o.acked);
        self.unavailable.extend(o.unavailable);
        self.fin_before_send += o.fin_before_send;
        self.after_close.extend(o.after_close);
        self.unanswered.extend(o.unanswered);
        self.errors.extend(o.errors);
        self.unexpected.extend(o.unexpected);
        self.refused += o.refused;
        self
    }

    pub fn summary(&self) -> String {
        format!(
            "{} acknowledged, {} told 503 (draining), {} connections seen closed (FIN) before a \
             send, {} not processed after a Connection: close answer, {} sent and unanswered \
             (EOF or error) {:?}, {} errors (resets) {:?}, {} unexpected answers {:?}, {} \
             refused connects",
            self.acked.len(),
            self.unavailable.len(),
            self.fin_before_send,
            self.after_close.len(),
            self.unanswered.len(),
            first(&self.unanswered),
            self.errors.len(),
            first(&self.errors),
            self.unexpected.len(),
            first(&self.unexpected),
            self.refused
        )
    }
}

/// Where on its connection a request was: a fresh connection's first request tells a server
/// that closed a connection before reading anything from one that closed a used one.
pub fn nth(answered: usize) -> String {
    match answered {
        0 => "(first request on a fresh connection)".into(),
        n => format!("(after {n} answers on its connection)"),
    }
}

pub fn first(v: &[String]) -> &[String] {
    &v[..v.len().min(5)]
}

/// Which backend answered, from a proxy's response header.
pub type BackendOf<'a> = &'a (dyn Fn(&Response) -> Option<usize> + Sync);

/// How a load client behaves.
pub struct Load<'a> {
    pub port: u16,
    /// Requests written at once (1: plain keep-alive).
    pub depth: usize,
    /// Ends the client after its current round trip.
    pub stop: &'a AtomicBool,
    /// `201`s per backend, as they come.
    pub acked: &'a [AtomicUsize],
    /// Which backend answered (by a proxy's header); `None`: no proxy, backend 0.
    pub backend_of: Option<BackendOf<'a>>,
    /// Reconnect after a close (direct: until refused); through a proxy every close is an error.
    pub direct: bool,
}

/// POST on keep-alive connections until stopped (or, direct, until the listener is closed).
/// Before each write the socket is peeked, so a FIN that came first is told apart from a
/// request lost after it was sent.
pub fn load_client(tag: &str, l: &Load) -> Tally {
    let mut t = Tally::default();
    let mut seq = 0u64;
    'conns: while !l.stop.load(Ordering::Relaxed) {
        let stream = match TcpStream::connect(("127.0.0.1", l.port)) {
            Ok(s) => s,
            Err(e) if e.kind() == ErrorKind::ConnectionRefused && l.direct => {
                t.refused += 1;
                break;
            }
            Err(e) => {
                t.errors.push(format!("connect: {e}"));
                break;
            }
        };
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut writer = stream.try_clone().unwrap();
        let mut reader = BufReader::new(stream);
        // Requests answered on this connection so far (0: its first write is in flight).
        let mut answered = 0usize;
        while !l.stop.load(Ordering::Relaxed) {
            if !reader.buffer().is_empty() {
                t.errors.push("bytes nobody asked for".into());
                continue 'conns;
            }
            match peek(reader.get_ref()) {
                Peek::Open => {}
                Peek::Fin if l.direct => {
                    t.fin_before_send += 1;
                    continue 'conns;
                }
                Peek::Fin => {
                    t.errors
                        .push("the proxy closed a keep-alive connection".into());
                    continue 'conns;
                }
                Peek::Data => {
                    t.errors.push("bytes nobody asked for".into());
                    continue 'conns;
                }
                Peek::Failed(e) => {
                    t.errors.push(format!("before a send: {e}"));
                    continue 'conns;
                }
            }
            let pids: Vec<String> = (0..l.depth)
                .map(|_| {
                    seq += 1;
                    format!("{tag}-{seq}")
                })
                .collect();
            let bytes: String = pids.iter().map(|p| post(&usage(p))).collect();
            if let Err(e) = writer.write_all(bytes.as_bytes()) {
                t.errors.push(format!("write: {e}"));
                continue 'conns;
            }
            let mut ended = false;
            for pid in pids {
                if ended {
                    t.after_close.push(pid);
                    continue;
                }
                match read_answer(&mut reader) {
                    Answer::Got(r) if r.status == 201 => {
                        let backend = match l.backend_of {
                            None => Some(0),
                            Some(f) => f(&r),
                        };
                        let (Some(b), Some(id)) = (backend, r.json()["id"].as_u64()) else {
                            t.unexpected
                                .push(format!("201 from where? {:?}", r.headers));
                            continue;
                        };
                        l.acked[b].fetch_add(1, Ordering::Relaxed);
                        t.acked.push((b, id, pid));
                        ended = closes(&r);
                    }
                    // usaged's drain answer; a proxy drops the hop-by-hop `Connection: close`.
                    Answer::Got(r)
                        if r.status == 503
                            && (closes(&r) || !l.direct)
                            && r.header("content-type") == Some("application/json") =>
                    {
                        t.unavailable.push(pid);
                        // Directly the server closes; a proxy keeps our connection (and
                        // serves the requests pipelined after this one).
                        ended = closes(&r);
                    }
                    Answer::Got(r) => {
                        t.unexpected
                            .push(format!("{} {:?} {}", r.status, r.headers, r.text()));
                        ended = closes(&r);
                    }
                    Answer::Eof => {
                        t.unanswered.push(format!("{pid} {}", nth(answered)));
                        ended = true;
                    }
                    Answer::Failed(e) => {
                        t.errors.push(format!(
                            "{:?} reading an answer {}: {e}",
                            e.kind(),
                            nth(answered)
                        ));
                        t.unanswered.push(format!("{pid} {}", nth(answered)));
                        ended = true;
                    }
                }
                answered += 1;
            }
            if ended {
                continue 'conns;
            }
        }
        break;
    }
    t
}

/// Run `clients` load clients (`(tag, depth)`) while `during` runs; join and merge them.
pub fn with_load(
    clients: &[(&str, usize)],
    load: &Load,
    during: impl FnOnce() -> String,
) -> (Tally, String) {
    std::thread::scope(|scope| {
        let handles: Vec<_> = clients
            .iter()
            .map(|&(tag, depth)| {
                scope.spawn(move || {
                    load_client(
                        tag,
                        &Load {
                            depth,
                            backend_of: load.backend_of,
                            ..*load
                        },
                    )
                })
            })
            .collect();
        let note = during();
        load.stop.store(true, Ordering::Relaxed);
        let t = handles
            .into_iter()
            .map(|h| h.join().expect("load client panicked"))
            .fold(Tally::default(), Tally::merge);
        (t, note)
    })
}

/// Wait (bounded) until `cond` holds; a load counter, not readiness, is what it polls.
pub fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}
