//! NDJSON bulks (`POST /api/usages`, `Content-Type: application/x-ndjson`) against the real
//! binary: per-line results with the right line numbers, stored lines readable, any split of
//! the body, chunked bodies, the limit, order on a kept-alive connection, and every id
//! answered surviving a `kill -9`.

mod util;

use std::io::Write;
use std::time::Duration;

use util::{Client, README_BODY, Response, Server, get};

fn bulk_head(len: usize) -> String {
    format!(
        "POST /api/usages HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-ndjson; charset=utf-8\r\nContent-Length: {len}\r\n\r\n"
    )
}

fn bulk(body: &str) -> String {
    format!("{}{body}", bulk_head(body.len()))
}

fn chunked(body: &str, piece: usize) -> String {
    let mut s = String::from(
        "POST /api/usages HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    for c in body.as_bytes().chunks(piece) {
        s.push_str(&format!(
            "{:x}\r\n{}\r\n",
            c.len(),
            std::str::from_utf8(c).unwrap()
        ));
    }
    s.push_str("0\r\n\r\n");
    s
}

/// The result lines of a bulk's answer.
fn results(r: &Response) -> Vec<serde_json::Value> {
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    r.text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

fn usage(i: usize) -> String {
    format!(
        r#"{{"patientId":"p{i}","timestamp":"2024-01-02T03:04:05Z","medication":"m{}"}}"#,
        i % 7
    )
}

/// `n` lines; every 997th is invalid JSON, every 1009th is empty (no result line).
fn body_of(n: usize) -> (String, Vec<Option<usize>>) {
    let mut body = String::new();
    let mut expect = Vec::new(); // per input line: Some(i) valid usage i, None invalid
    for k in 1..=n {
        if k % 1009 == 0 {
            body.push('\n');
            continue;
        }
        if k % 997 == 0 {
            body.push_str("{\"patientId\":\n");
            expect.push(None);
        } else {
            body.push_str(&usage(k));
            body.push('\n');
            expect.push(Some(k));
        }
    }
    (body, expect)
}

fn check(results: &[serde_json::Value], n: usize) -> Vec<(usize, u64)> {
    let (_, expect) = body_of(n);
    assert_eq!(results.len(), expect.len());
    let mut ids = Vec::new();
    let lines = (1..=n).filter(|k| k % 1009 != 0);
    for ((r, e), k) in results.iter().zip(&expect).zip(lines) {
        match e {
            Some(i) => ids.push((*i, r["id"].as_u64().unwrap_or_else(|| panic!("{r}")))),
            None => {
                assert_eq!(r["line"].as_u64(), Some(k as u64), "{r}");
                assert!(r["error"].is_string(), "{r}");
            }
        }
    }
    ids
}

fn read_back(c: &mut Client, ids: &[(usize, u64)]) {
    for chunk in ids.chunks(500) {
        let reqs: String = chunk.iter().map(|&(_, id)| get(id)).collect();
        c.send(reqs);
        for &(i, id) in chunk {
            let r = c.read(false);
            assert_eq!(r.status, 200, "id {id}");
            assert_eq!(r.json()["patientId"], format!("p{i}"));
        }
    }
}

#[test]
fn a_bulk_of_100k_lines_stores_the_valid_ones_and_numbers_the_errors() {
    let s = Server::start(&[]);
    let mut c = s.connect();
    let n = 100_000;
    let (body, _) = body_of(n);
    let r = c.request(bulk(&body));
    let ids = check(&results(&r), n);
    assert!(ids.len() > 99_000);
    read_back(&mut c, &ids);
}

#[test]
fn a_bulk_in_one_byte_writes_and_a_chunked_bulk_answer_the_same() {
    let s = Server::start(&[]);
    let n = 3000;
    let (body, _) = body_of(n);
    let mut c = s.connect();
    for b in bulk(&body).as_bytes() {
        c.stream.write_all(&[*b]).unwrap();
    }
    let ids = check(&results(&c.read(false)), n);
    read_back(&mut c, &ids);
    for piece in [1, 7, 5000, 1 << 20] {
        let r = c.request(chunked(&body, piece));
        let ids = check(&results(&r), n);
        read_back(&mut c, &ids);
    }
}

#[test]
fn long_lines_and_a_last_line_without_newline() {
    let s = Server::start(&[]);
    let mut c = s.connect();
    let long = format!("{{\"x\":\"{}\"}}", "a".repeat(10_000));
    let body = format!("{}\n\n{long}\n  \n{}", usage(1), usage(2));
    let r = results(&c.request(bulk(&body)));
    assert_eq!(r.len(), 3, "{r:?}");
    assert!(r[0]["id"].is_u64());
    assert_eq!(r[1]["error"], "line too long");
    assert_eq!(r[1]["line"], 3);
    assert!(r[2]["id"].is_u64());
    // The same, in small chunks: the long line never fits in one read.
    let r2 = results(&c.request(chunked(&body, 100)));
    assert_eq!(r2[1], r[1]);
}

#[test]
fn a_bulk_over_the_limit_is_413_and_json_posts_keep_their_limit() {
    let s = Server::start(&["--max-bulk-body", "64KiB", "--max-body", "1KiB"]);
    let (body, _) = body_of(2000);
    assert!(body.len() > 64 << 10);
    let mut c = s.connect();
    let r = c.request(bulk_head(body.len()));
    assert_eq!(r.status, 413);
    assert!(r.json()["error"].is_string());
    let mut c = s.connect();
    c.send(chunked(&body, 4096));
    assert_eq!(c.read(false).status, 413);
    // Under the bulk limit but over --max-body: a bulk is fine.
    let (small, _) = body_of(100);
    assert!(small.len() > 1024);
    let mut c = s.connect();
    check(&results(&c.request(bulk(&small))), 100);
    let big_json = format!(
        "POST /api/usages HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 2000\r\n\r\n{}",
        " ".repeat(2000)
    );
    assert_eq!(c.request(big_json).status, 413);
}

#[test]
fn pipelined_requests_after_a_bulk_keep_their_order() {
    let s = Server::start(&[]);
    let mut c = s.connect();
    let (body, _) = body_of(500);
    let mut all = util::post(README_BODY);
    all.push_str(&bulk(&body));
    all.push_str(&util::post(README_BODY));
    all.push_str(&chunked(&body, 300));
    all.push_str("GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
    c.send(all);
    let first = c.read(false);
    assert_eq!(first.status, 201);
    let ids = check(&results(&c.read(false)), 500);
    let mid = c.read(false);
    assert_eq!(mid.status, 201);
    let ids2 = check(&results(&c.read(false)), 500);
    assert_eq!(c.read(false).status, 200);
    // Ids grow in the order the lines were stored (one connection: one worker).
    let id = |r: &Response| r.json()["id"].as_u64().unwrap();
    assert!(id(&first) < ids[0].1 && ids.last().unwrap().1 < id(&mid));
    assert!(id(&mid) < ids2[0].1);
}

#[test]
fn every_id_answered_reads_back_after_kill_9() {
    let dir = util::temp_data_dir();
    let mut s = Server::start_in(&dir, &["--threads", "1"]);
    let mut c = s.connect();
    let (body, _) = body_of(20_000);
    let ids = check(&results(&c.request(bulk(&body))), 20_000);
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    let s2 = Server::start_in(&dir, &["--threads", "1"]);
    let mut c = s2.connect();
    c.stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    read_back(&mut c, &ids);
    drop(s2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_big_bulk_leaves_room_for_another_connection_on_its_worker() {
    let s = Server::start(&["--threads", "1"]);
    let n = 150_000;
    let (body, _) = body_of(n);
    let mut a = s.connect();
    let mut b = s.connect();
    let bulk_thread = std::thread::spawn(move || {
        a.send(bulk(&body));
        check(&results(&a.read(false)), n)
    });
    // POSTs and GETs on the other connection while the bulk streams: each answered soon.
    let mut posted = Vec::new();
    while !bulk_thread.is_finished() && posted.len() < 10_000 {
        let t = std::time::Instant::now();
        let r = b.request(util::post(README_BODY));
        assert_eq!(r.status, 201, "{}", r.text());
        let id = r.json()["id"].as_u64().unwrap();
        assert_eq!(b.request(get(id)).status, 200);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        posted.push(id);
    }
    let ids = bulk_thread.join().unwrap();
    assert!(ids.len() > n - n / 400);
    // One worker numbers in the order it stores: posts stored between the bulk's lines.
    let (first, last) = (ids[0].1, ids.last().unwrap().1);
    let between = posted.iter().filter(|&&id| first < id && id < last).count();
    assert!(
        between >= 2,
        "{between} of {} posts during the bulk",
        posted.len()
    );
    read_back(&mut b, &ids[..2000]);
    read_back(&mut b, &ids[ids.len() - 2000..]);
}
