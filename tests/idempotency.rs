//! `Idempotency-Key` on single `POST /api/usages` (API.md, "Idempotent retries"): a replay on
//! the same connection and on the other worker's, `422` for another body, `400` for a malformed
//! key with the connection kept, a key whose request stored nothing is not remembered, and a
//! key forgotten after `--idempotency-window`. On NDJSON bulks: the whole answer replays (ids
//! and error lines), another body is `422`, a retry racing a keyed bulk still streaming is `409`
//! (single or bulk, on either worker), and a keyed bulk cut off mid-body then retried stores
//! every line exactly once.

mod idem;
mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use idem::*;
use util::{Client, Server, get};

#[test]
fn a_retry_replays_on_the_same_connection_and_on_the_other_worker() {
    let s = Server::start(&["--threads", "2"]);
    let ([mut w0, mut w1], probes) = one_per_worker(&s);
    assert_eq!(stored(&s), probes);
    // Bare tokens and quoted strings (with a space and both escapes), first on either worker.
    let keys = [
        "k-1",
        "0f8fad5b-d9cb-469f-a165-70867728950e",
        r#""a key with \"quotes\" and \\""#,
        "!#$%&'*+-.^_`|~:/?=@[]{}",
    ];
    let mut origs = Vec::new();
    for (k, key) in keys.iter().enumerate() {
        let body = usage("replay", k);
        let (a, b) = if k % 2 == 0 {
            (&mut w0, &mut w1)
        } else {
            (&mut w1, &mut w0)
        };
        let orig = a.request(keyed_post(key, &body));
        let id = first(&orig);
        assert_replay(&a.request(keyed_post(key, &body)), &orig);
        assert_replay(&b.request(keyed_post(key, &body)), &orig);
        // A fresh connection, and the same body chunked (identical once decoded).
        let mut c = s.connect();
        assert_replay(&c.request(keyed_post(key, &body)), &orig);
        assert_replay(&c.request(keyed_post_chunked(key, &body, 7)), &orig);
        // Pipelined retries behind each other.
        b.send(keyed_post(key, &body).repeat(3));
        for _ in 0..3 {
            assert_replay(&b.read(false), &orig);
        }
        let g = b.request(get(id));
        assert_eq!(g.status, 200);
        assert_eq!(g.json()["patientId"], format!("replay-{k}"));
        assert_eq!(
            stored(&s),
            probes + k as u64 + 1,
            "one usage per distinct key"
        );
        origs.push(orig);
    }
    // Same body, other key: a new usage.
    let body = usage("replay", 0);
    let other = first(&w1.request(keyed_post("k-2", &body)));
    let again = w0.request(keyed_post(keys[0], &body));
    assert_ne!(again.json()["id"], other);
    assert_eq!(stored(&s), probes + keys.len() as u64 + 1);
    // `"k-1"` names the key `k-1` (src/idem/header.rs: the key is what is inside the quotes).
    assert_replay(
        &w1.request(keyed_post("\"k-1\"", &usage("replay", 0))),
        &origs[0],
    );
    assert_eq!(stored(&s), probes + keys.len() as u64 + 1);
    assert_eq!(
        metric(&s, "usaged_idempotency_replays_total"),
        Some((keys.len() * 7 + 2) as f64),
        "replays counted"
    );
}

#[test]
fn the_same_key_with_another_body_is_422_and_the_first_still_replays() {
    let s = Server::start(&["--threads", "2"]);
    let ([mut a, mut b], probes) = one_per_worker(&s);
    let orig = a.request(keyed_post("k", &usage("x", 1)));
    let id = first(&orig);
    for c in [&mut a, &mut b] {
        let r = c.request(keyed_post("k", &usage("x", 2)));
        assert_error(c, &r, 422, REUSED);
        // One byte more (trailing whitespace) is another body too.
        let r = c.request(keyed_post("k", &format!("{} ", usage("x", 1))));
        assert_error(c, &r, 422, REUSED);
        // So is the same key on a bulk.
        let r = c.request(keyed_bulk("k", &format!("{}\n", usage("x", 1))));
        assert_error(c, &r, 422, REUSED);
        assert_replay(&c.request(keyed_post("k", &usage("x", 1))), &orig);
    }
    assert_eq!(stored(&s), probes + 1, "a 422 stores nothing");
    assert_eq!(a.request(get(id)).json()["patientId"], "x-1");
    assert_eq!(metric(&s, "usaged_idempotency_reused_total"), Some(6.0));
}

#[test]
fn malformed_keys_are_400_and_the_connection_is_kept() {
    let s = Server::start(&[]);
    let mut c = s.connect();
    let body = usage("bad", 1);
    let long = "k".repeat(256);
    let bad = [
        "",
        "\"\"",
        long.as_str(),
        "ab\tcd",
        "a b",
        "caf\u{e9}",
        "\"abc",
        "\"a\\qb\"",
        "\"abc\"x",
        "\"tab\tinside\"",
    ];
    for key in bad {
        let r = c.request(keyed_post(key, &body));
        assert_error(&mut c, &r, 400, BAD_KEY);
        let r = c.request(keyed_bulk(key, &format!("{body}\n")));
        assert_error(&mut c, &r, 400, BAD_KEY);
    }
    // Two Idempotency-Key headers, even equal ones.
    let two = keyed_post("k", &body).replace(
        "Idempotency-Key: k\r\n",
        "Idempotency-Key: k\r\nIdempotency-Key: k\r\n",
    );
    let r = c.request(two);
    assert_error(&mut c, &r, 400, BAD_KEY);
    assert_eq!(stored(&s), 0, "a bad key stores nothing");
    // 255 characters is fine, bare or quoted; on the same connection.
    let k255 = "k".repeat(255);
    let id = first(&c.request(keyed_post(&k255, &body)));
    first(&c.request(keyed_post(&format!("\"{}\"", "q".repeat(255)), &body)));
    // Ignored on other methods and paths.
    let r = c.request("GET /health HTTP/1.1\r\nHost: t\r\nIdempotency-Key: \r\n\r\n");
    assert_eq!(r.status, 200);
    let r = c.request(format!(
        "GET /api/usages/{id} HTTP/1.1\r\nHost: t\r\nIdempotency-Key: {long}\r\n\r\n"
    ));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(stored(&s), 2);
}

#[test]
fn a_key_whose_request_stored_nothing_is_not_remembered() {
    let s = Server::start(&[]);
    let mut c = s.connect();
    let bad_bodies = [
        r#"{"patientId":"1","medication":"m"}"#.to_string(),
        "{not json".to_string(),
        usage("n", 1).replace("2024-01-02", "2024-02-30"),
    ];
    for (k, bad) in bad_bodies.iter().enumerate() {
        let key = format!("nothing-{k}");
        let r = c.request(keyed_post(&key, bad));
        assert_eq!(r.status, 400, "{}", r.text());
        assert_eq!(r.header(REPLAYED), None);
        // Again: still 400, not a replay of the 400 nor a 422.
        let r = c.request(keyed_post(&key, bad));
        assert_eq!(r.status, 400, "{}", r.text());
        assert_eq!(r.header(REPLAYED), None);
        // A valid body with that key is a first request, then replays.
        let orig = c.request(keyed_post(&key, &usage("n", k)));
        first(&orig);
        assert_replay(&c.request(keyed_post(&key, &usage("n", k))), &orig);
    }
    assert_eq!(stored(&s), 3);
}

#[test]
fn after_the_window_a_retry_is_stored_anew() {
    // Keys are timed in whole seconds (src/idem/table.rs: expired once created second +
    // window <= now second), so one is remembered between window - 1 s and window: a 2 s
    // window is sure to replay for the first second.
    let window = Duration::from_secs(2);
    let sure = window - Duration::from_secs(1);
    let s = Server::start(&["--idempotency-window", "2s"]);
    let mut c = s.connect();
    let body = usage("w", 1);
    let t0 = Instant::now();
    let orig = c.request(keyed_post("k", &body));
    let id = first(&orig);
    let r = c.request(keyed_post("k", &body));
    if t0.elapsed() < sure {
        assert_replay(&r, &orig);
    }
    // Past the window (expiry may be checked coarsely): retries until one is stored anew,
    // each one before it a replay; bounded.
    std::thread::sleep(sure);
    let deadline = t0 + window * 4;
    let (fresh, t1) = loop {
        let sent = Instant::now();
        let r = c.request(keyed_post("k", &body));
        if r.header(REPLAYED).is_none() {
            break (r, sent);
        }
        assert_replay(&r, &orig);
        assert!(
            Instant::now() < deadline,
            "key still remembered after 4x window"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let id2 = first(&fresh);
    assert_ne!(id2, id, "a new usage after the window");
    assert_eq!(stored(&s), 2);
    // Both read back; and the key now names the new usage (until its own window ends).
    assert_eq!(c.request(get(id)).status, 200);
    assert_eq!(c.request(get(id2)).status, 200);
    let r = c.request(keyed_post("k", &body));
    if t1.elapsed() < sure {
        assert_replay(&r, &fresh);
    }
}

/// Each `(i, id)` reads back as usage `tag-i`.
fn read_back(c: &mut Client, tag: &str, ids: &[(usize, u64)]) {
    for &(i, id) in ids {
        let r = c.request(get(id));
        assert_eq!(r.status, 200, "id {id}");
        assert_eq!(r.json()["patientId"], format!("{tag}-{i}"));
    }
}

#[test]
fn a_keyed_bulk_replays_its_whole_answer_on_any_worker() {
    let s = Server::start(&["--threads", "2"]);
    let ([mut a, mut b], probes) = one_per_worker(&s);
    let (body, expect) = bulk_body("b", 1000);
    let valid = valid_lines(&body);
    let orig = a.request(keyed_bulk("bulk-1", &body));
    assert_eq!(orig.header(REPLAYED), None);
    let ids = bulk_ids(&orig, &expect);
    assert_eq!(ids.len() as u64, valid);
    assert!(ids.len() < expect.len(), "some error lines");
    assert_eq!(stored(&s), probes + valid);
    for c in [&mut a, &mut b] {
        assert_replay(&c.request(keyed_bulk("bulk-1", &body)), &orig);
    }
    // Chunked (identical once decoded), on a fresh connection.
    let mut c = s.connect();
    let chunked = keyed_bulk("bulk-1", &body).replace(
        &format!("Content-Length: {}\r\n\r\n", body.len()),
        "Transfer-Encoding: chunked\r\n\r\n",
    );
    let chunked = format!(
        "{}{:x}\r\n{body}\r\n0\r\n\r\n",
        &chunked[..chunked.len() - body.len()],
        body.len()
    );
    assert_replay(&c.request(chunked), &orig);
    assert_eq!(stored(&s), probes + valid, "replays store nothing");
    read_back(&mut b, "b", &ids);
    // Another body with that key: one line less, one line changed.
    let shorter = &body[..body.len() - usage("b", 999).len() - 1];
    let r = b.request(keyed_bulk("bulk-1", shorter));
    assert_error(&mut b, &r, 422, REUSED);
    let changed = body.replacen("\"b-1\"", "\"b-0\"", 1);
    let r = a.request(keyed_bulk("bulk-1", &changed));
    assert_error(&mut a, &r, 422, REUSED);
    assert_eq!(stored(&s), probes + valid);
    assert_replay(&a.request(keyed_bulk("bulk-1", &body)), &orig);
}

#[test]
fn a_retry_racing_a_keyed_bulk_still_streaming_is_409() {
    let s = Server::start(&["--threads", "2"]);
    let ([mut a, mut b], p1) = one_per_worker(&s);
    let ([mut a2, _], p2) = one_per_worker(&s);
    // `a` and `a2` are on worker 0, `b` on worker 1.
    let probes = p1 + p2;
    let (body, expect) = bulk_body("r", 300);
    let cut = body[..body.len() / 2].rfind('\n').unwrap() + 1;
    // The first: head and half the lines, then the socket stays open.
    a.send(keyed_bulk_head("race", body.len()));
    a.send(&body[..cut]);
    wait_stored(&s, probes + valid_lines(&body[..cut]));
    // Retries on the other worker and on the streaming bulk's worker: single and bulk.
    for c in [&mut b, &mut a2] {
        let r = c.request(keyed_post("race", &usage("r", 1)));
        assert_error(c, &r, 409, IN_FLIGHT);
        let r = c.request(keyed_bulk("race", &body));
        assert_error(c, &r, 409, IN_FLIGHT);
    }
    // Other keys and unkeyed posts are not held up.
    first(&b.request(keyed_post("other", &usage("o", 1))));
    first(&a2.request(util::post(&usage("o", 2))));
    assert_eq!(stored(&s), probes + valid_lines(&body[..cut]) + 2);
    // The first ends; now a retry replays it.
    a.send(&body[cut..]);
    let orig = a.read(false);
    assert_eq!(orig.header(REPLAYED), None);
    let ids = bulk_ids(&orig, &expect);
    assert_replay(&b.request(keyed_bulk("race", &body)), &orig);
    assert_replay(&a2.request(keyed_bulk("race", &body)), &orig);
    assert_eq!(stored(&s), probes + ids.len() as u64 + 2);
    read_back(&mut a, "r", &ids);
    assert_eq!(metric(&s, "usaged_idempotency_in_flight_total"), Some(4.0));
}

#[test]
fn a_keyed_bulk_cut_off_then_retried_stores_every_line_once() {
    let mut s = Server::start(&["--threads", "2"]);
    let (body, expect) = bulk_body("cut", 600);
    // Cut in the middle of a line, past a third of the body.
    let line_end = body[..body.len() / 3].rfind('\n').unwrap() + 1;
    let cut = line_end + 20;
    let before = valid_lines(&body[..cut]);
    assert!(before > 100);
    let mut c = s.connect();
    c.send(keyed_bulk_head("cut", body.len()));
    c.send(&body[..cut]);
    wait_stored(&s, before);
    c.stream.shutdown(std::net::Shutdown::Both).unwrap();
    drop(c);
    // The retry: the whole body, once the server has noticed the cut.
    let req = keyed_bulk("cut", &body);
    let r = until_not_409(&s, &req, Duration::from_secs(10));
    let ids = bulk_ids(&r, &expect);
    let distinct: BTreeSet<u64> = ids.iter().map(|&(_, id)| id).collect();
    assert_eq!(distinct.len(), ids.len(), "no id answered twice");
    assert_eq!(stored(&s), ids.len() as u64, "no line stored twice");
    let mut c = s.connect();
    read_back(&mut c, "cut", &ids);
    // From now on the bulk replays as answered.
    assert_replay(&c.request(req.as_str()), &r);
    assert_eq!(stored(&s), ids.len() as u64);
    drop(c);
    assert!(s.stop().success());
    // The journal holds each line once, under the id answered.
    let journal: BTreeMap<u64, String> = exported(&s.data_dir).into_iter().collect();
    let answered: BTreeMap<u64, String> = ids
        .iter()
        .map(|&(i, id)| (id, format!("cut-{i}")))
        .collect();
    assert_eq!(journal, answered);
}
