//! Keyed requests for the `Idempotency-Key` tests: request builders, the answer checks every
//! replay shares, and the stored-usage count (from `/metrics` and from `usaged export`).
#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use crate::util::{Client, Response, Server};

pub const REPLAYED: &str = "idempotent-replayed";
pub const BAD_KEY: &str = "bad Idempotency-Key";
pub const REUSED: &str = "Idempotency-Key reused with a different body";
pub const IN_FLIGHT: &str = "a request with this Idempotency-Key is still being stored";

/// A usage whose `patientId` names it (`tag`-`i`), so an export can count it.
pub fn usage(tag: &str, i: usize) -> String {
    format!(
        r#"{{"patientId":"{tag}-{i}","timestamp":"2024-01-02T03:04:05Z","medication":"m{}"}}"#,
        i % 5
    )
}

/// A single `POST /api/usages` carrying `Idempotency-Key: {key}` (the raw header value).
pub fn keyed_post(key: &str, body: &str) -> String {
    format!(
        "POST /api/usages HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nIdempotency-Key: {key}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// The same POST with the body in chunks of `piece` bytes.
pub fn keyed_post_chunked(key: &str, body: &str, piece: usize) -> String {
    let mut s = format!(
        "POST /api/usages HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nIdempotency-Key: {key}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    for c in body.as_bytes().chunks(piece) {
        s.push_str(&format!("{:x}\r\n", c.len()));
        s.push_str(std::str::from_utf8(c).unwrap());
        s.push_str("\r\n");
    }
    s.push_str("0\r\n\r\n");
    s
}

/// The head of a keyed NDJSON bulk of `len` body bytes.
pub fn keyed_bulk_head(key: &str, len: usize) -> String {
    format!(
        "POST /api/usages HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-ndjson\r\nIdempotency-Key: {key}\r\nContent-Length: {len}\r\n\r\n"
    )
}

pub fn keyed_bulk(key: &str, body: &str) -> String {
    format!("{}{body}", keyed_bulk_head(key, body.len()))
}

/// `n` bulk lines tagged `tag`: every 5th invalid, every 7th empty (no result line). Returns
/// the body and, per result line, `Some(i)` for the valid usage `tag-i` or `None`.
pub fn bulk_body(tag: &str, n: usize) -> (String, Vec<Option<usize>>) {
    let mut body = String::new();
    let mut expect = Vec::new();
    for i in 1..=n {
        if i % 7 == 0 {
            body.push('\n');
        } else if i % 5 == 0 {
            body.push_str("{\"patientId\":12,\"medication\":\n");
            expect.push(None);
        } else {
            body.push_str(&usage(tag, i));
            body.push('\n');
            expect.push(Some(i));
        }
    }
    (body, expect)
}

/// Valid usage lines among the complete lines of `part` (a prefix of a [`bulk_body`]).
pub fn valid_lines(part: &str) -> u64 {
    part.split_inclusive('\n')
        .filter(|l| l.ends_with('\n') && l.contains("\"timestamp\""))
        .count() as u64
}

pub const HEALTH: &str = "GET /health HTTP/1.1\r\nHost: t\r\n\r\n";

/// The id of a `201`, checking `Location` names it.
pub fn created(r: &Response) -> u64 {
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_u64().expect("id");
    assert_eq!(
        r.header("location"),
        Some(format!("/api/usages/{id}").as_str())
    );
    id
}

/// A first answer: `201`, no `Idempotent-Replayed`; its id.
pub fn first(r: &Response) -> u64 {
    let id = created(r);
    assert_eq!(r.header(REPLAYED), None, "a first answer is no replay");
    id
}

/// A replay of `orig`: same status, body and Location, plus `Idempotent-Replayed: true`.
pub fn assert_replay(r: &Response, orig: &Response) {
    assert_eq!(r.status, orig.status, "{}", r.text());
    assert_same_body(&r.text(), &orig.text());
    assert_eq!(r.header("location"), orig.header("location"));
    assert_eq!(r.header("content-type"), orig.header("content-type"));
    assert_eq!(r.header(REPLAYED), Some("true"));
}

/// Equal bodies; else the first differing line (a bulk answer is long).
pub fn assert_same_body(got: &str, want: &str) {
    if got == want {
        return;
    }
    let (g, w): (Vec<&str>, Vec<&str>) = (got.split('\n').collect(), want.split('\n').collect());
    let n = (0..g.len().max(w.len()))
        .find(|&i| g.get(i) != w.get(i))
        .unwrap_or(0);
    panic!(
        "a replay answers the same body: line {}: {:?}, first answer {:?}",
        n + 1,
        g.get(n),
        w.get(n)
    );
}

/// A JSON error with `status` and `error`, no replay header, and the connection still usable.
pub fn assert_error(c: &mut Client, r: &Response, status: u16, error: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.error(), error);
    assert_eq!(r.header(REPLAYED), None);
    assert_eq!(c.request(HEALTH).status, 200, "connection kept");
}

/// The result lines of a bulk answer, checked against `expect` (from [`bulk_body`]); the ids.
pub fn bulk_ids(r: &Response, expect: &[Option<usize>]) -> Vec<(usize, u64)> {
    assert_eq!(r.status, 200, "{}", r.text());
    let lines: Vec<serde_json::Value> = r
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    assert_eq!(lines.len(), expect.len(), "one result per non-empty line");
    let mut ids = Vec::new();
    for (l, e) in lines.iter().zip(expect) {
        match e {
            Some(i) => ids.push((*i, l["id"].as_u64().unwrap_or_else(|| panic!("{l}")))),
            None => assert!(l["error"].is_string() && l["line"].is_u64(), "{l}"),
        }
    }
    ids
}

/// `usaged_usages_stored_total` of a running server.
pub fn stored(s: &Server) -> u64 {
    metric(s, "usaged_usages_stored_total").expect("usaged_usages_stored_total") as u64
}

/// One sample of `/metrics` (`name` with its labels, as printed), if present.
pub fn metric(s: &Server, name: &str) -> Option<f64> {
    let mut c = s.connect();
    let r = c.request("GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.status, 200);
    r.text()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.parse().unwrap())
}

/// Wait (bounded) until the server has stored `n` usages.
pub fn wait_stored(s: &Server, n: u64) {
    s.wait_until(Duration::from_secs(10), &format!("{n} stored"), |s| {
        stored(s) >= n
    });
}

/// `(id, patientId)` of every usage in the journal of the stopped server in `dir`.
pub fn exported(dir: &Path) -> Vec<(u64, String)> {
    crate::util::export_text(dir)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["id"].as_u64().unwrap(),
                v["patientId"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Send `req` on fresh connections until the answer is not `409` (the server has not yet
/// noticed an earlier connection was cut), at most `limit`.
pub fn until_not_409(s: &Server, req: &str, limit: Duration) -> Response {
    let deadline = Instant::now() + limit;
    loop {
        let mut c = s.connect();
        let r = c.request(req);
        if r.status != 409 {
            return r;
        }
        assert_eq!(r.error(), IN_FLIGHT);
        assert!(Instant::now() < deadline, "still 409 after {limit:?}");
        // Polling a state the server reaches by itself (bounded above), not readiness.
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Connections to a `--threads 2` server, one accepted by each worker (told apart by the
/// stripe of the id an unkeyed probe POST gets); the number of probes stored.
pub fn one_per_worker(s: &Server) -> ([Client; 2], u64) {
    let mut by_worker: [Option<Client>; 2] = [None, None];
    let mut probes = 0;
    while by_worker.iter().any(Option::is_none) {
        assert!(probes < 64, "64 connections all landed on one worker");
        let mut c = s.connect();
        let id = created(&c.request(crate::util::post(&usage("probe", probes as usize))));
        probes += 1;
        let w = ((id - 1) % 2) as usize;
        if by_worker[w].is_none() {
            by_worker[w] = Some(c);
        }
    }
    let [a, b] = by_worker;
    ([a.unwrap(), b.unwrap()], probes)
}
