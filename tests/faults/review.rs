//! The tools of the review regression tests: stalling a write or sync under strace, seeing
//! where the server waits, and asking a connection for an answer within a bound.

use super::*;

pub const SECS_2: Duration = Duration::from_secs(2);
pub const SECS_5: Duration = Duration::from_secs(5);
pub const WRITES: &str = "write,pwrite64,writev,pwritev,pwritev2";
pub const SYNCS: &str = "fdatasync,fsync";

/// The system calls of [`WRITES`] and [`SYNCS`], by number (what `/proc/…/syscall` shows).
#[cfg(target_arch = "x86_64")]
pub const WRITE_OR_SYNC_NRS: &[u64] = &[1, 18, 20, 296, 328, 75, 74];
#[cfg(target_arch = "aarch64")]
pub const WRITE_OR_SYNC_NRS: &[u64] = &[64, 68, 66, 70, 287, 83, 82];

/// The first segment of a fresh data directory with `--threads 1`.
pub fn first_segment(dir: &Path) -> PathBuf {
    dir.join("e0-s1-w0-000000.seg")
}

/// strace options: `inject` on the calls `set` made on `paths` (and their `.tmp` names).
pub fn strace_opts(set: &str, inject: &str, paths: &[PathBuf]) -> Vec<String> {
    let mut o = vec![
        "-e".to_string(),
        format!("trace={set}"),
        "-e".to_string(),
        format!("inject={set}:{inject}"),
    ];
    for p in paths {
        o.push("-P".into());
        o.push(p.display().to_string());
    }
    o
}

/// Attach strace to `s`: the first write (or sync) of its first segment after this call is
/// held for `secs` seconds.
pub fn stall(s: &Usaged, dir: &Path, set: &str, secs: u32) -> Tracer {
    let seg = first_segment(dir);
    let tmp = PathBuf::from(format!("{}.tmp", seg.display()));
    s.attach_strace(&strace_opts(
        set,
        &format!("delay_enter={}:when=1", secs * 1_000_000),
        &[seg, tmp],
    ))
}

/// The thread of `pid` that strace holds in a write or sync of `file`, if one is held now:
/// stopped by the tracer (state `t`) inside such a call on a descriptor for `file`.
pub fn held_in(pid: u32, file: &Path) -> Option<String> {
    let want = std::fs::canonicalize(file).ok()?;
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    for t in tasks.flatten() {
        let dir = t.path();
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        let state = stat.rsplit_once(')').map(|(_, r)| r.trim_start());
        if !state.is_some_and(|r| r.starts_with('t')) {
            continue;
        }
        let Ok(call) = std::fs::read_to_string(dir.join("syscall")) else {
            continue;
        };
        let mut f = call.split_whitespace();
        let nr = f.next().and_then(|n| n.parse::<u64>().ok());
        let fd = f
            .next()
            .and_then(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok());
        let (Some(nr), Some(fd)) = (nr, fd) else {
            continue;
        };
        if !WRITE_OR_SYNC_NRS.contains(&nr) {
            continue;
        }
        if std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok() == Some(want.clone()) {
            return Some(call.trim().to_string());
        }
    }
    None
}

/// Wait (at most `limit`) until strace holds a thread of `pid` in a write or sync of `file`,
/// seen twice 20 ms apart in the same call (a call strace merely passes through is gone by
/// then): the server has read the request and handed its record to the journal.
pub fn wait_held(pid: u32, file: &Path, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(first) = held_in(pid, file) {
            std::thread::sleep(Duration::from_millis(20));
            if held_in(pid, file).as_deref() == Some(first.as_str()) {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no thread of usaged was held in a write or sync of {} within {limit:?}",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The process that traces `pid` (strace), if any.
pub fn tracer_of(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))?
        .trim()
        .parse()
        .ok()
        .filter(|&p| p != 0)
}

/// `req` on `c` is answered within 100 ms, or (a scheduler hiccup on a busy machine) a
/// repeat asked at once is; neither may take a second.
pub fn quickly(c: &mut Conn, req: &str, what: &str) -> Response {
    let fast = Duration::from_millis(100);
    let (r, dt) = c.timed(req, SECS_5);
    assert!(dt < Duration::from_secs(1), "{what} took {dt:?}");
    if dt < fast {
        return r;
    }
    println!("{what} took {dt:?}; asking again");
    let (again, dt2) = c.timed(req, SECS_5);
    assert!(dt2 < fast, "{what} took {dt2:?} (and {dt:?} before)");
    again
}

/// The `201` for usage `i`: booked in the ledger; its id.
pub fn created(l: &mut Ledger, i: u64, r: &Response, what: &str) -> u64 {
    assert_eq!(r.status, 201, "{what}: {} {}", r.status, r.text());
    let id = r.json()["id"].as_u64().expect("id in a 201");
    l.ack(id, i);
    id
}

/// The next answer on `c`, which must come within `limit`.
pub fn answer(c: &Conn, limit: Duration, what: &str, s: &Usaged) -> Response {
    match c.next(limit) {
        Got::Answer(r) => r,
        other => panic!("{what}: {other:?} within {limit:?}\n{}", s.log()),
    }
}

/// The answer says `Connection: close`.
pub fn closes(r: &Response) -> bool {
    r.header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("close"))
}

/// Wait (at most `limit`) until the drain proper has begun after SIGTERM (no grace): a new
/// connection is no longer taken, or its `/health` is answered with a close (or not at all).
pub fn wait_drain_began(port: u16, limit: Duration) {
    let deadline = Instant::now() + limit;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    loop {
        let Ok(mut t) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
            return;
        };
        t.set_read_timeout(Some(SECS_2)).unwrap();
        let _ = t.write_all(HEALTH.as_bytes());
        match read_response(&mut BufReader::new(t)) {
            Some(r) if !closes(&r) => {}
            _ => return,
        }
        assert!(
            Instant::now() < deadline,
            "{limit:?} after SIGTERM, new connections still served without a close"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The connection ends (EOF, or a reset after it) within `limit`, with no answer before.
pub fn assert_ends(c: &Conn, limit: Duration, what: &str) {
    match c.next(limit) {
        Got::Closed => {}
        other => panic!("{what}: expected the connection to end, got {other:?}"),
    }
}
