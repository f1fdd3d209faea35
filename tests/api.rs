//! The contract of API.md, spoken in raw bytes to the real binary.

mod util;

use std::collections::HashSet;
use std::io::Write;
use util::{README_BODY, Server, get, post};

#[test]
fn post_then_get_the_readme_usage() {
    let s = Server::start(&[]);
    let mut c = s.connect();
    let r = c.request(post(README_BODY));
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_u64().unwrap();
    assert!(id >= 1);
    assert_eq!(
        r.header("location"),
        Some(format!("/api/usages/{id}").as_str())
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    let date = chrono::DateTime::parse_from_rfc2822(r.header("date").unwrap()).unwrap();
    assert!(
        (chrono::Utc::now().timestamp() - date.timestamp()).abs() <= 5,
        "Date is now"
    );

    let g = c.request(get(id));
    assert_eq!(g.status, 200);
    assert_eq!(
        g.json(),
        serde_json::json!({"id": id, "patientId": "100", "timestamp": "2016-11-01T09:11:51-05:00", "medication": "Albuterol"})
    );
    let h = c.request(format!("HEAD /api/usages/{id} HTTP/1.1\r\nHost: t\r\n\r\n"));
    assert_eq!((h.status, h.body.len()), (200, 0));
    assert_eq!(h.header("content-length"), g.header("content-length"));
    // The connection is still usable after HEAD: no stray body bytes.
    assert_eq!(
        c.request("GET /health HTTP/1.1\r\nHost: t\r\n\r\n").text(),
        r#"{"status":"ok"}"#
    );
}

#[test]
fn values_come_back_in_their_type_and_offset() {
    let s = Server::start(&[]);
    let mut c = s.connect();
    let rows = [
        (
            r#"{"patientId":42,"timestamp":1478009511000,"medication":"A"}"#,
            serde_json::json!(42),
            "2016-11-01T14:11:51Z",
        ),
        (
            r#"{"medication":"Flu\u00e9 \"x\"","timestamp":"2016-11-01T09:11:51.250+05:30","patientId":"a-long-patient-identifier-\ud83d\ude00","extra":[1,{"a":null}]}"#,
            serde_json::json!("a-long-patient-identifier-😀"),
            "2016-11-01T09:11:51.250+05:30",
        ),
        (
            r#"{"patientId":"7","timestamp":"Tue, 01 Nov 2016 14:11:51 GMT","medication":"B"}"#,
            serde_json::json!("7"),
            "2016-11-01T14:11:51Z",
        ),
    ];
    let mut meds = Vec::new();
    for (body, patient, ts) in rows {
        let r = c.request(post(body));
        assert_eq!(r.status, 201, "{body}: {}", r.text());
        let g = c.request(get(r.json()["id"].as_u64().unwrap())).json();
        assert_eq!(g["patientId"], patient, "{body}");
        assert_eq!(g["timestamp"], ts, "{body}");
        meds.push(g["medication"].clone());
    }
    assert_eq!(meds[1], "Flué \"x\"");
}

/// Every error row of API.md: status, an `{"error":…}` body, and whether the connection
/// survives (checked by sending a health request after it).
#[test]
fn every_error_row() {
    let s = Server::start(&["--max-body", "1000", "--max-header", "1024"]);
    let json = "Content-Type: application/json\r\n";
    let rows: Vec<(String, u16, bool)> = vec![
        ("GET / HTTP/1.1\r\n\r\n".into(), 400, true), // no Host
        ("GE T / HTTP/1.1\r\nHost: t\r\n\r\n".into(), 400, true),
        ("GET / HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n folded\r\n\r\n".into(), 400, true),
        ("GET / HTTP/1.1\r\nHost : t\r\n\r\n".into(), 400, true),
        ("GET / HTTP/1.1\r\nHost: t\r\nX-A: a\0b\r\n\r\n".into(), 400, true),
        (format!("POST /api/usages HTTP/1.1\r\nHost: t\r\n{json}Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"), 400, true),
        (format!("POST /api/usages HTTP/1.1\r\nHost: t\r\n{json}Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"), 400, true),
        (format!("POST /api/usages HTTP/1.1\r\nHost: t\r\n{json}Transfer-Encoding: chunked\r\n\r\nzz\r\n"), 400, true),
        (post("{not json"), 400, false),
        (post(r#"{"patientId":"1","timestamp":"2016-02-30T00:00:00Z","medication":"A"}"#), 400, false),
        (post(r#"{"patientId":"1","patientId":"2","timestamp":0,"medication":"A"}"#), 400, false),
        (post(r#"{"patientId":true,"timestamp":0,"medication":"A"}"#), 400, false),
        (post(r#"{"timestamp":0,"medication":"A"}"#), 400, false),
        ("GET /nope HTTP/1.1\r\nHost: t\r\n\r\n".into(), 404, false),
        ("GET /api/usages/999999 HTTP/1.1\r\nHost: t\r\n\r\n".into(), 404, false),
        ("GET /api/usages/abc HTTP/1.1\r\nHost: t\r\n\r\n".into(), 404, false),
        ("GET /api/usages/0 HTTP/1.1\r\nHost: t\r\n\r\n".into(), 404, false),
        ("DELETE /api/usages HTTP/1.1\r\nHost: t\r\n\r\n".into(), 405, false),
        (format!("POST /api/usages HTTP/1.1\r\nHost: t\r\n{json}\r\n"), 411, false),
        (format!("POST /api/usages HTTP/1.1\r\nHost: t\r\n{json}Content-Length: 1001\r\n\r\n"), 413, true),
        (format!("POST /api/usages HTTP/1.1\r\nHost: t\r\n{json}Transfer-Encoding: chunked\r\n\r\n3E9\r\n"), 413, true),
        ("POST /api/usages HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n{}".into(), 415, false),
        ("POST /api/usages HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}".into(), 415, false),
        (format!("GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n", "a".repeat(1100)), 431, true),
        (format!("POST /api/usages HTTP/1.1\r\nHost: t\r\n{json}Transfer-Encoding: gzip\r\n\r\n"), 501, true),
        ("GET / HTTP/2.0\r\nHost: t\r\n\r\n".into(), 505, true),
    ];
    for (req, status, closes) in rows {
        let mut c = s.connect();
        let r = c.request(&req);
        assert_eq!(r.status, status, "{req:?}: {}", r.text());
        assert!(!r.error().is_empty(), "{req:?}");
        assert_eq!(r.header("content-type"), Some("application/json"));
        if closes {
            assert_eq!(r.header("connection"), Some("close"), "{req:?}");
            c.assert_closed();
        } else {
            assert_eq!(r.header("connection"), None, "{req:?}");
            assert_eq!(
                c.request("GET /health HTTP/1.1\r\nHost: t\r\n\r\n").status,
                200,
                "kept after {req:?}"
            );
        }
        if status == 405 {
            assert_eq!(r.header("allow"), Some("POST"));
        }
    }
}

#[test]
fn a_framing_error_harms_no_other_connection() {
    let s = Server::start(&[]);
    let mut good = s.connect();
    assert_eq!(good.request(post(README_BODY)).status, 201);
    let mut bad = s.connect();
    bad.send("POST /api/usages HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabc");
    let mut bad2 = s.connect();
    assert_eq!(
        bad2.request(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n")
            .status,
        400
    );
    bad2.assert_closed();
    assert_eq!(good.request(post(README_BODY)).status, 201);
    bad.send("de\r\nXX\r\n");
    assert_eq!(bad.read(false).status, 400);
    bad.assert_closed();
    assert_eq!(good.request(post(README_BODY)).status, 201);
}

#[test]
fn fifty_pipelined_requests_in_one_write() {
    let s = Server::start(&[]);
    let mut c = s.connect();
    let batch: String = (0..50)
        .map(|i| {
            if i % 5 == 4 {
                "GET /health HTTP/1.1\r\nHost: t\r\n\r\n".to_string()
            } else {
                post(README_BODY)
            }
        })
        .collect();
    c.send(batch);
    let mut ids = Vec::new();
    for i in 0..50 {
        let r = c.read(false);
        if i % 5 == 4 {
            assert_eq!(r.status, 200);
        } else {
            assert_eq!(r.status, 201);
            ids.push(r.json()["id"].as_u64().unwrap());
        }
    }
    // One connection stays on one worker: its ids are strictly increasing in its stripe.
    assert!(
        ids.windows(2)
            .all(|w| w[1] > w[0] && (w[1] - w[0]) % 4 == 0),
        "{ids:?}"
    );
}

#[test]
fn byte_at_a_time_delivery() {
    let s = Server::start(&[]);
    let mut c = s.connect();
    let req = post(README_BODY) + "GET /health HTTP/1.1\r\nHost: t\r\n\r\n";
    for b in req.as_bytes() {
        c.stream.write_all(&[*b]).unwrap();
    }
    assert_eq!(c.read(false).status, 201);
    assert_eq!(c.read(false).status, 200);
}

#[test]
fn chunked_bodies_with_extensions_and_trailers() {
    let s = Server::start(&[]);
    let mut c = s.connect();
    let (a, b) = README_BODY.split_at(40);
    let req = format!(
        "POST /api/usages HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x};ext=1\r\n{a}\r\n{:X}\r\n{b}\r\n0\r\nX-Trailer: yes\r\n\r\n",
        a.len(),
        b.len()
    );
    // In pieces that cut through sizes, data and the trailer.
    for piece in req.as_bytes().chunks(7) {
        c.send(piece);
    }
    let r = c.read(false);
    assert_eq!(r.status, 201, "{}", r.text());
    let g = c.request(get(r.json()["id"].as_u64().unwrap()));
    assert_eq!(g.json()["medication"], "Albuterol");
}

#[test]
fn expect_100_continue() {
    let s = Server::start(&[]);
    let mut c = s.connect();
    c.send(format!(
        "POST /api/usages HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        README_BODY.len()
    ));
    let interim = c.read(false);
    assert_eq!(interim.status, 100);
    c.send(README_BODY);
    assert_eq!(c.read(false).status, 201);
    // A request that will be refused gets its final answer at once, without sending the body.
    c.send("POST /api/usages HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n");
    let r = c.read(false);
    assert_eq!(r.status, 415);
    assert_eq!(r.header("connection"), Some("close"));
}

#[test]
fn http_1_0_and_connection_close() {
    let s = Server::start(&[]);
    let mut c = s.connect();
    let r = c.request("GET /health HTTP/1.0\r\n\r\n");
    assert_eq!(r.status, 200);
    c.assert_closed();

    let mut c = s.connect();
    let r = c.request("GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(r.header("connection"), Some("keep-alive"));
    let body = README_BODY;
    let r = c.request(format!(
        "POST /api/usages HTTP/1.0\r\nConnection: keep-alive\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    assert_eq!(
        (r.status, r.header("connection")),
        (201, Some("keep-alive"))
    );

    let mut c = s.connect();
    let r = c.request("GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    c.assert_closed();
}

#[test]
fn absolute_form_and_query_strings() {
    let s = Server::start(&[]);
    let mut c = s.connect();
    let body = README_BODY;
    let r = c.request(format!(
        "POST http://example.com/api/usages?source=app HTTP/1.1\r\nHost: example.com\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    assert_eq!(r.status, 201);
    assert_eq!(
        c.request("GET /health?verbose=1 HTTP/1.1\r\nHost: t\r\n\r\n")
            .status,
        200
    );
    assert_eq!(c.request("HEAD / HTTP/1.1\r\nhost: t\r\n\r\n").status, 200);
}

/// 20,000 posts from 40 connections at once: every id distinct, every one readable back
/// through GET on a different connection (so usually from another worker).
#[test]
fn twenty_thousand_concurrent_posts_have_distinct_readable_ids() {
    const CONNS: usize = 40;
    const PER_CONN: usize = 500;
    const BATCH: usize = 25;
    let s = Server::start(&[]);
    let threads: Vec<_> = (0..CONNS)
        .map(|t| {
            let mut c = s.connect();
            std::thread::spawn(move || {
                let mut got = Vec::with_capacity(PER_CONN);
                for b in 0..PER_CONN / BATCH {
                    let batch: String = (0..BATCH)
                        .map(|i| {
                            post(&format!(
                                r#"{{"patientId":{},"timestamp":{},"medication":"M{t}"}}"#,
                                t * PER_CONN + b * BATCH + i,
                                1_478_009_511_000u64 + i as u64
                            ))
                        })
                        .collect();
                    c.send(batch);
                    for i in 0..BATCH {
                        let r = c.read(false);
                        assert_eq!(r.status, 201);
                        got.push((
                            r.json()["id"].as_u64().unwrap(),
                            (t * PER_CONN + b * BATCH + i) as u64,
                            t,
                        ));
                    }
                }
                got
            })
        })
        .collect();
    let all: Vec<(u64, u64, usize)> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(all.len(), CONNS * PER_CONN);
    let ids: HashSet<u64> = all.iter().map(|a| a.0).collect();
    assert_eq!(ids.len(), all.len(), "ids are distinct");
    let mut c = s.connect();
    for chunk in all.chunks(200) {
        let batch: String = chunk.iter().map(|(id, _, _)| get(*id)).collect();
        c.send(batch);
        for (id, patient, t) in chunk {
            let g = c.read(false).json();
            assert_eq!(
                (g["id"].as_u64(), g["patientId"].as_u64()),
                (Some(*id), Some(*patient))
            );
            assert_eq!(g["medication"], format!("M{t}"));
        }
    }
}

#[test]
fn sigterm_exits_zero() {
    let mut s = Server::start(&[]);
    let mut c = s.connect();
    assert_eq!(c.request(post(README_BODY)).status, 201);
    let st = s.stop();
    assert!(st.success(), "{st:?}");
    c.assert_closed();
}

#[test]
fn bad_flags_exit_2_with_one_line_naming_the_flag() {
    for (args, needle) in [
        (&["--port", "x"][..], "--port"),
        (&["--threads", "0"], "--threads"),
        (&["--what"], "--what"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_usaged"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{err:?}");
        assert!(err.contains(needle), "{err:?}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_usaged"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--bind",
        "--port",
        "--threads",
        "--no-pin",
        "--max-body",
        "--max-header",
        "default",
    ] {
        assert!(help.contains(flag), "{flag} in --help");
    }
}
