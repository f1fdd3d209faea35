//! Fault injection, part 3 (issue 14): requests with an `Idempotency-Key` under faults. A
//! `kill -9` under keyed load (single posts, and a keyed NDJSON bulk cut off), a full disk, and
//! EIO on fdatasync. After each fault, retrying every key with its body stores each usage
//! exactly once: a key that got a `201` replays its id (`Idempotent-Replayed: true`), one that
//! got a `503` stores now, one whose answer was lost does either; `usaged export` lists one
//! usage per key, with the id its retries replay.

mod util;

#[path = "faults/harness.rs"]
mod harness;
#[path = "faults/ledger.rs"]
mod ledger;

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use harness::{Conn, Got, TempDir, Tmpfs, Usaged, export, have_strace, segments, shared};
use ledger::{assert_retry_later, body, stored};
use util::Response;

const SECS_5: Duration = Duration::from_secs(5);
const SECS_10: Duration = Duration::from_secs(10);
const SYNCS: &str = "fdatasync,fsync";
const IN_FLIGHT: &str = "a request with this Idempotency-Key is still being stored";

/// What the first request with a key got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum First {
    Acked(u64),
    /// `503`: nothing stored, the key not remembered.
    Refused,
    /// No answer (the server died, or the answer still waits).
    Unanswered,
}

/// A keyed usage a test sent: the header value, usage `i` (its body is `body(i)`), and what
/// its first request got.
#[derive(Clone, Debug)]
struct Keyed {
    key: String,
    i: u64,
    first: First,
}

/// Usage `i` under a key named by `tag`: every third as an sf-string with a space inside.
fn keyed(tag: &str, i: u64) -> Keyed {
    let key = format!("{tag}-{i}");
    let key = if i.is_multiple_of(3) {
        format!("\"{key} x\"")
    } else {
        key
    };
    let first = First::Unanswered;
    Keyed { key, i, first }
}

fn kpost(k: &Keyed) -> String {
    let b = body(k.i);
    format!(
        "POST /api/usages HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
         Idempotency-Key: {}\r\nContent-Length: {}\r\n\r\n{b}",
        k.key,
        b.len()
    )
}

/// A `201` for a keyed post: its id, and whether it says `Idempotent-Replayed: true`.
fn created(r: &Response, k: &Keyed) -> (u64, bool) {
    assert_eq!(r.status, 201, "POST with key {}: {}", k.key, r.text());
    let id = r.json()["id"].as_u64().expect("id in a 201");
    let loc = format!("/api/usages/{id}");
    assert_eq!(r.header("location"), Some(loc.as_str()), "key {}", k.key);
    let replayed = match r.header("idempotent-replayed") {
        None => false,
        Some("true") => true,
        Some(v) => panic!("key {}: Idempotent-Replayed: {v}", k.key),
    };
    (id, replayed)
}

/// Book the answer to the first request with `k`'s key.
fn book(k: &mut Keyed, r: &Response) {
    k.first = match r.status {
        503 => {
            assert_retry_later(r, "a keyed POST");
            First::Refused
        }
        _ => {
            let (id, replayed) = created(r, k);
            assert!(!replayed, "the first request with key {} replayed", k.key);
            First::Acked(id)
        }
    };
}

/// Post `ks` (their first requests) pipelined on `c`, each answer within `limit`; returns how
/// many were answered (the rest stay unanswered, in order; `Err` if the connection ended).
fn post_all(c: &mut Conn, ks: &mut [Keyed], limit: Duration) -> Result<usize, usize> {
    let bytes: String = ks.iter().map(kpost).collect();
    // A write that fails leaves answers to read (or a closed connection) all the same.
    let _ = c.send(bytes);
    settle(c, ks, limit)
}

/// Read the answers to `ks` (sent in order on `c`), each within `limit`.
fn settle(c: &Conn, ks: &mut [Keyed], limit: Duration) -> Result<usize, usize> {
    for (n, k) in ks.iter_mut().enumerate() {
        match c.next(limit) {
            Got::Answer(r) => book(k, &r),
            Got::Nothing => return Ok(n),
            Got::Closed => return Err(n),
        }
    }
    Ok(ks.len())
}

/// Post each of `ks` again (pipelined, 200 at a time, on two connections in turn): the
/// answers, each within 10 s.
fn ask_all(s: &Usaged, ks: &[Keyed]) -> Vec<Response> {
    let mut conns = [s.conn(), s.conn()];
    let mut out = Vec::new();
    for (n, chunk) in ks.chunks(200).enumerate() {
        let c = &mut conns[n % 2];
        assert!(c.send(chunk.iter().map(kpost).collect::<String>()));
        for k in chunk {
            match c.next(SECS_10) {
                Got::Answer(r) => out.push(r),
                other => panic!("retry with key {}: {other:?}", k.key),
            }
        }
    }
    out
}

/// The first retry after a fault, into `finals` (usage → id): a key acknowledged replays its
/// id; one refused stores now; one unanswered does either (it was journaled or not).
fn retry_after_fault(s: &Usaged, ks: &[Keyed], finals: &mut BTreeMap<u64, u64>) {
    let mut seen = BTreeMap::new();
    for (k, r) in ks.iter().zip(ask_all(s, ks)) {
        let (id, replayed) = created(&r, k);
        let (ok, first) = match k.first {
            First::Acked(first) => ((id, replayed) == (first, true), "acked"),
            // Else a usage refused with 503 was stored.
            First::Refused => (!replayed, "refused"),
            First::Unanswered => (true, "unanswered"),
        };
        assert!(ok, "retry of key {} ({first}): {id}, {replayed}", k.key);
        assert_eq!(finals.insert(k.i, id), None, "key {} retried twice", k.key);
        *seen.entry((first, replayed)).or_insert(0) += 1;
    }
    println!("  retried (first answer, replayed): {seen:?}");
}

/// Every key of `ks` replays its final id.
fn replay_all(s: &Usaged, ks: &[Keyed], finals: &BTreeMap<u64, u64>) {
    for (k, r) in ks.iter().zip(ask_all(s, ks)) {
        let (id, replayed) = created(&r, k);
        assert!(replayed && id == finals[&k.i], "key {}: {id}", k.key);
    }
}

/// `usaged export` (exit 0) as usage → id; a usage listed twice fails.
fn exported(dir: &Path) -> BTreeMap<u64, u64> {
    let (status, out, err) = export(dir);
    assert!(status.success(), "usaged export: {status}\n{err}");
    let mut m = BTreeMap::new();
    for line in out.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("export line");
        let id = v["id"].as_u64().expect("id");
        let i: u64 = v["patientId"].as_str().unwrap()[2..].parse().unwrap();
        assert_eq!(line, stored(id, i), "export of id {id}");
        let old = m.insert(i, id);
        assert_eq!(old, None, "usage {i} stored twice: ids {old:?} and {id}");
    }
    m
}

/// `usaged export` lists exactly one usage per key, with its final id.
fn check_export(dir: &Path, finals: &BTreeMap<u64, u64>) {
    let got = exported(dir);
    assert_eq!(got.len(), finals.len(), "usages exported, keys");
    let diff: Vec<_> = finals
        .iter()
        .filter(|(i, id)| got.get(i) != Some(id))
        .collect();
    assert!(
        diff.is_empty(),
        "{} keys exported with other ids: {diff:?}",
        diff.len()
    );
    let ids: BTreeSet<u64> = finals.values().copied().collect();
    assert_eq!(ids.len(), finals.len(), "an id given to two keys");
}

// ---------------------------------------------------------------------------------------------
// kill -9

/// Four client threads post keyed usages (pipelined, 8 at a time) until the server dies;
/// `kill -9` once `after` of them are acknowledged. What each key got.
fn load_until_killed(s: &mut Usaged, round: u64, after: usize) -> Vec<Keyed> {
    let acks = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (acks, port) = (Arc::clone(&acks), s.port);
            std::thread::spawn(move || {
                let mut c = Conn::open(port);
                let mut sent = Vec::new();
                let base = round * 1_000_000 + t * 100_000;
                // Until the server dies (at most 3200 POSTs).
                for b in 0..400 {
                    let mut ks: Vec<Keyed> =
                        (0..8).map(|n| keyed("kill", base + b * 8 + n)).collect();
                    let answered = post_all(&mut c, &mut ks, SECS_10);
                    acks.fetch_add(answered.unwrap_or_else(|n| n), Ordering::Relaxed);
                    sent.extend(ks);
                    if answered != Ok(8) {
                        break;
                    }
                }
                sent
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while acks.load(Ordering::Relaxed) < after {
        assert!(Instant::now() < deadline, "{after} POSTs not acked in 30 s");
        // Polling a counter of the client threads, bounded above.
        std::thread::sleep(Duration::from_millis(1));
    }
    s.kill9();
    let sent: Vec<Keyed> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
        .collect();
    let acked = sent.iter().filter(|k| k.first != First::Unanswered);
    println!(
        "  kill -9: {} of {} acknowledged",
        acked.count(),
        sent.len()
    );
    sent
}

/// Three rounds on one data directory: keyed load from 4 clients, `kill -9` after 30, 400 and
/// 1500 acknowledgements, a restart (another `--threads`), every key of the round retried (the
/// promise of each answer kept), then every key of every round once more (each replays its
/// final id); after a clean stop `export` lists one usage per key.
#[test]
fn kill_9_under_keyed_load_then_every_key_is_stored_once() {
    let _g = shared();
    let dir = TempDir::new();
    let mut finals = BTreeMap::new();
    let mut all = Vec::new();
    for (round, after, threads) in [(0, 30, 1), (1, 400, 3), (2, 1500, 2)] {
        println!("round {round}: kill -9 after {after} acks, restart with --threads {threads}");
        let mut s = Usaged::start(dir.path(), 2, &[]);
        let sent = load_until_killed(&mut s, round, after);
        let mut s = Usaged::start(dir.path(), threads, &[]);
        retry_after_fault(&s, &sent, &mut finals);
        all.extend(sent);
        replay_all(&s, &all, &finals);
        s.stop_ok();
        check_export(dir.path(), &finals);
    }
}

/// `n` NDJSON lines, usage `k` on line `k` (from 1), every 50th line invalid; the usage of
/// each line (`None`: invalid).
fn bulk_body(n: u64) -> (String, Vec<Option<u64>>) {
    let mut s = String::new();
    let lines = (1..=n)
        .map(|k| {
            let valid = (!k.is_multiple_of(50)).then_some(k);
            s.push_str(&valid.map_or("{\"patientId\":".into(), body));
            s.push('\n');
            valid
        })
        .collect();
    (s, lines)
}

/// A bulk's `200`: one result per line, an id for each valid one (usage → id), errors numbered.
fn bulk_ids(r: &Response, lines: &[Option<u64>]) -> BTreeMap<u64, u64> {
    assert_eq!(r.status, 200, "keyed bulk: {}", r.text());
    let text = r.text();
    assert_eq!(text.lines().count(), lines.len(), "results of the bulk");
    let mut ids = BTreeMap::new();
    for (k, (res, line)) in text.lines().zip(lines).enumerate() {
        let res: serde_json::Value = serde_json::from_str(res).unwrap();
        match (line, res["id"].as_u64()) {
            (Some(i), Some(id)) => assert_eq!(ids.insert(*i, id), None),
            (None, None) => assert_eq!(res["line"].as_u64(), Some(k as u64 + 1), "{res}"),
            _ => panic!("line {}: {res}", k + 1),
        }
    }
    ids
}

/// Bytes in the segments of `dir`.
fn journal_bytes(dir: &Path) -> u64 {
    let len = |p: &std::path::PathBuf| std::fs::metadata(p).map_or(0, |m| m.len());
    segments(dir).iter().map(len).sum()
}

/// A keyed bulk of 3000 lines cut off twice by `kill -9` (half of it sent, then, after a
/// restart, 80%), each time once more of its lines are journaled: what is stored is a prefix
/// of its valid lines, and keeps its ids. After the last restart the whole bulk with the same
/// key answers every line once, the lines stored before with their ids; a second retry replays
/// the whole answer; `export` has every valid line once.
#[test]
fn a_keyed_bulk_cut_by_kill_9_resumes_and_stores_each_line_once() {
    let _g = shared();
    let dir = TempDir::new();
    let (body, lines) = bulk_body(3000);
    let valid: Vec<u64> = lines.iter().flatten().copied().collect();
    let req = format!(
        "POST /api/usages HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-ndjson\r\n\
         Idempotency-Key: bulk-cut\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let head = req.len() - body.len();
    let mut before = BTreeMap::new();
    for (percent, threads) in [(50, 1), (80, 2)] {
        let mut s = Usaged::start(dir.path(), threads, &[]);
        let base = journal_bytes(dir.path());
        assert!(s.conn().send(&req[..head + body.len() * percent / 100]));
        // Until new lines' records are in the journal (what is sent makes 100 KiB or more).
        let deadline = Instant::now() + SECS_10;
        while journal_bytes(dir.path()) < base + (16 << 10) {
            assert!(Instant::now() < deadline, "no new line journaled in 10 s");
            std::thread::sleep(Duration::from_millis(2));
        }
        s.kill9();
        let now = exported(dir.path());
        println!("{percent}% sent: {} lines stored at the kill", now.len());
        assert!(now.len() > before.len(), "nothing new stored");
        let prefix = now.keys().eq(&valid[..now.len()]);
        assert!(prefix, "what is stored is not a prefix of the valid lines");
        for (i, id) in &before {
            assert_eq!(now.get(i), Some(id), "usage {i} stored as id {id} before");
        }
        before = now;
    }
    let mut s = Usaged::start(dir.path(), 2, &[]);
    let mut c = s.conn();
    let r = c.ask(&req, SECS_10);
    assert_eq!(r.header("idempotent-replayed"), None, "a bulk resumed");
    let ids = bulk_ids(&r, &lines);
    for (i, id) in &before {
        assert_eq!(ids.get(i), Some(id), "usage {i} stored before the kills");
    }
    let again = c.ask(&req, SECS_10);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!((again.status, again.text()), (200, r.text()), "bulk replay");
    s.stop_ok();
    check_export(dir.path(), &ids);
}

// ---------------------------------------------------------------------------------------------
// The disk fails

/// During an outage: a key acknowledged replays; one refused is refused again (`503`); one
/// whose answer waits gets `409` (its batch is unwritten) or `503` (not read yet).
fn retry_during_outage(s: &Usaged, ks: &[Keyed]) {
    let mut seen = BTreeMap::new();
    for (k, r) in ks.iter().zip(ask_all(s, ks)) {
        match k.first {
            First::Acked(id) => assert_eq!(created(&r, k), (id, true), "key {} replay", k.key),
            First::Refused => assert_retry_later(&r, "a retry of a refused key"),
            First::Unanswered if r.status == 409 => {
                assert_eq!(r.error(), IN_FLIGHT, "key {}", k.key)
            }
            First::Unanswered => assert_retry_later(&r, "a retry of a waiting key"),
        }
        *seen.entry(r.status).or_insert(0) += 1;
    }
    println!("  retries during the outage: {seen:?}");
}

/// Post keyed usages on `c` in pipelined batches of 20 until the journal fails (a `503` or
/// answers that stop coming), at most 100 batches, then 5 on a new connection: `503` at once.
/// `ks` gets them all; returns which of them wait on `c`.
fn post_until_failing(s: &Usaged, c: &mut Conn, tag: &str, ks: &mut Vec<Keyed>) -> Range<usize> {
    for _ in 0..100 {
        let from = ks.len();
        let mut batch: Vec<Keyed> = (from..from + 20).map(|i| keyed(tag, i as u64)).collect();
        let answered = post_all(c, &mut batch, Duration::from_secs(1));
        let failed = answered != Ok(20) || batch.iter().any(|k| k.first == First::Refused);
        ks.extend(batch);
        if failed {
            let n = answered.unwrap_or_else(|n| n);
            let at = ks.len() as u64;
            let mut new: Vec<Keyed> = (at..at + 5).map(|i| keyed(tag, i)).collect();
            assert_eq!(post_all(&mut s.conn(), &mut new, SECS_5), Ok(5));
            let refused = new.iter().all(|k| k.first == First::Refused);
            assert!(refused, "keyed POSTs while the journal fails: {new:?}");
            ks.extend(new);
            return from + n..from + 20;
        }
    }
    panic!("2000 keyed POSTs all got 201 while the journal should fail");
}

/// Keyed posts on `s` through an outage of its journal (`fault` starts it, `heal` ends it):
/// the retries meanwhile ([`retry_during_outage`], twice, while the journal retries); once
/// healed, writes resume by themselves (a new key stores within 3 s), the answers that waited
/// come (a first `201` or `503`), and every key is retried twice. What each key got, its final id.
fn outage<T>(
    s: &Usaged,
    tag: &str,
    fault: impl FnOnce() -> T,
    heal: impl FnOnce(T),
) -> (Vec<Keyed>, BTreeMap<u64, u64>) {
    let mut a = s.conn();
    let mut ks: Vec<Keyed> = (0..20).map(|i| keyed(tag, i)).collect();
    assert_eq!(post_all(&mut a, &mut ks, SECS_5), Ok(20));
    let f = fault();
    let waiting = post_until_failing(s, &mut a, tag, &mut ks);
    for _ in 0..2 {
        retry_during_outage(s, &ks);
        // The journal retries meanwhile (with backoff): still nothing stored twice.
        std::thread::sleep(Duration::from_millis(300));
    }
    heal(f);
    let healed = Instant::now();
    loop {
        let mut k = [keyed(tag, ks.len() as u64)];
        let got = post_all(&mut s.conn(), &mut k, SECS_5);
        ks.push(k[0].clone());
        if matches!(k[0].first, First::Acked(_)) {
            break;
        }
        let late = healed.elapsed() > Duration::from_secs(3);
        assert!(
            got == Ok(1) && !late,
            "keyed POSTs refused 3 s after the fault: {k:?}"
        );
        // Pacing the retries of a client, as Retry-After asks.
        std::thread::sleep(Duration::from_millis(100));
    }
    let n = waiting.len();
    let got = settle(&a, &mut ks[waiting], SECS_5);
    assert_eq!(got, Ok(n), "answers that waited on the outage");
    let mut finals = BTreeMap::new();
    retry_after_fault(s, &ks, &mut finals);
    replay_all(s, &ks, &finals);
    (ks, finals)
}

/// Fill the file system that holds `path` with that file, but `leave` bytes.
fn fill(path: &Path, leave: u64) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0x5a_u8; 64 << 10];
    let mut len = 0;
    while let Ok(n @ 1..) = f.write(&chunk) {
        len += n as u64;
    }
    f.set_len(len.saturating_sub(leave)).unwrap();
}

/// A full disk (a 2 MiB tmpfs) under keyed posts: `503` + `Retry-After`, nothing acknowledged
/// unwritten, retries meanwhile `409`/`503` or a replay; once space is freed, every key stores
/// once (a refused key now: `201`, then replays), also after a restart; `export` has each
/// usage once.
#[test]
fn a_full_disk_refuses_keyed_posts_then_each_key_stores_once() {
    let _g = shared();
    let Some(fs) = Tmpfs::mount("2m") else {
        return;
    };
    let dir = fs.path.join("data");
    let filler = fs.path.join("filler");
    let mut s = Usaged::start(&dir, 1, &[]);
    let fault = || fill(&filler, 32 << 10);
    let (ks, finals) = outage(&s, "full", fault, |()| {
        std::fs::remove_file(&filler).unwrap()
    });
    s.stop_ok();
    let mut s = Usaged::start(&dir, 1, &[]);
    replay_all(&s, &ks, &finals);
    s.stop_ok();
    check_export(&dir, &finals);
    drop(fs);
}

/// EIO on every fdatasync (strace attached to the running server), `--sync always`, under
/// keyed posts: retries get `409` or `503` (never a second usage) or replay; once strace
/// detaches the journal recovers, each key replays the id of its first `201`, if any, or
/// stores once; after `kill -9` every key still replays, and `export` has each usage once.
#[test]
fn eio_on_fdatasync_under_keyed_posts_stores_each_key_once() {
    let _g = shared();
    if !have_strace() {
        return;
    }
    let dir = TempDir::new();
    let mut s = Usaged::start(dir.path(), 1, &["--sync", "always"]);
    let seg = dir.path().join("e0-s1-w0-000000.seg").display().to_string();
    let opts = format!("-e trace={SYNCS} -e inject={SYNCS}:error=EIO -P {seg} -P {seg}.tmp");
    let opts: Vec<String> = opts.split(' ').map(String::from).collect();
    let (ks, finals) = outage(&s, "eio", || s.attach_strace(&opts), drop);
    s.kill9();
    let mut s = Usaged::start(dir.path(), 1, &[]);
    replay_all(&s, &ks, &finals);
    s.stop_ok();
    check_export(dir.path(), &finals);
}
