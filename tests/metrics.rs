//! `GET /metrics`: exact counts after known traffic, valid exposition format (promtool), and a
//! scrape during load that blocks no worker.
//!
//! promtool comes from `.ci/run` (Debian package `prometheus`). A missing one fails its test,
//! unless `USAGED_SKIP_PROMTOOL=1` is set.

mod util;

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use util::{README_BODY, Server, get, post};

/// `name{labels}` → value, from the text format.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

fn scrape(s: &Server) -> (String, HashMap<String, f64>) {
    let mut c = s.connect();
    let r = c.request("GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = r.text();
    let m = samples(&text);
    (text, m)
}

#[test]
fn counters_match_known_traffic_exactly() {
    let s = Server::start(&[]);
    let (posts, gets, missing, healths, bad) = (120u64, 80u64, 30u64, 25u64, 7u64);
    // Spread over several connections, so over several workers.
    let mut ids = Vec::new();
    for _ in 0..4 {
        let mut c = s.connect();
        c.send(post(README_BODY).repeat(posts as usize / 4));
        for _ in 0..posts / 4 {
            ids.push(c.read(false).json()["id"].as_u64().unwrap());
        }
    }
    let mut c = s.connect();
    for id in ids.iter().take(gets as usize) {
        assert_eq!(c.request(get(*id)).status, 200);
    }
    for i in 0..missing {
        assert_eq!(c.request(get(1_000_000 + i)).status, 404);
    }
    for _ in 0..healths {
        assert_eq!(
            c.request("GET /health HTTP/1.1\r\nHost: t\r\n\r\n").status,
            200
        );
    }
    for _ in 0..bad {
        assert_eq!(c.request(post("{oops")).status, 400);
    }
    let (_, m) = scrape(&s);
    let req = |route: &str, code: &str| {
        m[&format!("usaged_requests_total{{route=\"{route}\",code=\"{code}\"}}")]
    };
    assert_eq!(req("create_usage", "2xx"), posts as f64);
    assert_eq!(req("create_usage", "4xx"), bad as f64);
    assert_eq!(req("get_usage", "2xx"), gets as f64);
    assert_eq!(req("get_usage", "4xx"), missing as f64);
    assert_eq!(req("health", "2xx"), healths as f64);
    assert_eq!(
        req("metrics", "2xx"),
        0.0,
        "the scrape counts once answered"
    );
    let total = (posts + gets + missing + healths + bad) as f64;
    assert_eq!(m["usaged_request_duration_seconds_count"], total);
    assert_eq!(
        m["usaged_request_duration_seconds_bucket{le=\"+Inf\"}"],
        total
    );
    assert_eq!(m["usaged_usages_stored_total"], posts as f64);
    assert_eq!(
        m["usaged_connections_accepted_total"], 6.0,
        "four posting, one other, and the scrape's"
    );
    assert!(m["usaged_received_bytes_total"] > 0.0 && m["usaged_sent_bytes_total"] > 0.0);
    assert!(m["usaged_journal_written_bytes_total"] > 0.0);
    let (_, again) = scrape(&s);
    assert_eq!(
        again["usaged_requests_total{route=\"metrics\",code=\"2xx\"}"],
        1.0
    );
}

#[test]
fn promtool_accepts_the_exposition() {
    let s = Server::start(&[]);
    let mut c = s.connect();
    assert_eq!(c.request(post(README_BODY)).status, 201);
    let (text, _) = scrape(&s);
    let mut p = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if std::env::var("USAGED_SKIP_PROMTOOL").as_deref() == Ok("1") {
                println!("SKIPPED: promtool is not installed and USAGED_SKIP_PROMTOOL=1");
                return;
            }
            panic!(
                "promtool is not installed: `apt-get install prometheus` (.ci/run does), or set \
                 USAGED_SKIP_PROMTOOL=1 to skip this test explicitly"
            );
        }
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_scrape_during_load_blocks_no_worker() {
    let s = Server::start(&[]);
    let port = s.port;
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let load: Vec<_> = (0..8)
            .map(|_| {
                let stop = &stop;
                let mut c = s.connect();
                scope.spawn(move || {
                    let mut worst = Duration::ZERO;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let t = Instant::now();
                        assert_eq!(c.request(post(README_BODY)).status, 201);
                        worst = worst.max(t.elapsed());
                    }
                    worst
                })
            })
            .collect();
        let _ = port;
        // Every scrape sees the ones before it (each is counted before it is answered), and
        // the posts counted never go back.
        let posts = |m: &HashMap<String, f64>| m["usaged_requests_total{route=\"create_usage\",code=\"2xx\"}"];
        let (_, m) = scrape(&s);
        let (first, mut last) = (posts(&m), posts(&m));
        for i in 1..200 {
            let (_, m) = scrape(&s);
            assert_eq!(
                m["usaged_requests_total{route=\"metrics\",code=\"2xx\"}"], i as f64,
                "scrape {i} sees every scrape before it"
            );
            assert!(posts(&m) >= last, "posts counted went back");
            last = posts(&m);
        }
        assert!(last > first, "no post counted during 200 scrapes");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for l in load {
            let worst = l.join().unwrap();
            assert!(
                worst < Duration::from_millis(500),
                "a request waited {worst:?} during scrapes"
            );
        }
    });
}

#[test]
fn the_access_log_has_a_line_per_request() {
    let dir = util::temp_data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("access.log");
    let s = Server::start(&["--access-log", log.to_str().unwrap()]);
    let mut c = s.connect();
    let r = c.request(post(README_BODY));
    let id = r.json()["id"].as_u64().unwrap();
    assert_eq!(c.request(get(id)).status, 200);
    assert_eq!(
        c.request("GET /nope?x=1 HTTP/1.1\r\nHost: t\r\n\r\n")
            .status,
        404
    );
    s.wait_until(Duration::from_secs(5), "three lines are written", |_| {
        std::fs::read_to_string(&log)
            .map(|t| t.lines().count() >= 3)
            .unwrap_or(false)
    });
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(
        (
            lines[0]["method"].as_str(),
            lines[0]["path"].as_str(),
            lines[0]["status"].as_u64()
        ),
        (Some("POST"), Some("/api/usages"), Some(201))
    );
    assert_eq!(lines[0]["id"].as_u64(), Some(id));
    assert!(lines[1]["id"].is_null(), "id only when created");
    assert_eq!(
        (lines[2]["path"].as_str(), lines[2]["status"].as_u64()),
        (Some("/nope"), Some(404))
    );
    assert!(
        lines[0]["client"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert!(lines[0]["bytes"].as_u64().unwrap() > 100);
    assert!(chrono::DateTime::parse_from_rfc3339(lines[0]["time"].as_str().unwrap()).is_ok());
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}
