//! Usages evicted from RAM (`--cache`) are read back from the journal: byte for byte what a
//! `GET` gave while they were hot, in order on a pipelined connection, `HEAD` too; and the
//! cache stays within its budget.

mod util;

use std::collections::BTreeMap;
use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use util::{Client, README_BODY, Server, get, post, read_response};

/// One worker with the smallest cache it accepts: its ring holds well under 400,000 usages.
const FLAGS: &[&str] = &[
    "--threads",
    "1",
    "--cache",
    "4MiB",
    "--segment-size",
    "1MiB",
];
/// Usages posted to push the first ones out of RAM (more than the ring holds twice over).
const FILLER: usize = 400_000;

/// A small deterministic generator (xorshift), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A usage body of every shape the API keeps: numeric and string patients (short, inline,
/// long, with escapes and non-ASCII), medications, timestamps with offsets.
fn random_body(r: &mut Rng) -> String {
    let patient = match r.below(4) {
        0 => r.below(1 << 53).to_string(),
        1 => format!("\"p{}\"", r.below(1000)),
        2 => format!("\"{}\"", "x".repeat(1 + r.below(64) as usize)),
        _ => format!("\"q\\\"é\\\\{}\\n\"", r.below(100)),
    };
    let med = [
        "Albuterol",
        "Tiotropium",
        "Fluticasone/Salmeterol \\u00e9",
        "m",
    ][r.below(4) as usize];
    let ts = format!(
        "20{:02}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}{}",
        10 + r.below(20),
        1 + r.below(12),
        1 + r.below(28),
        r.below(24),
        r.below(60),
        r.below(60),
        r.below(1000),
        ["Z", "+05:30", "-08:00", "+14:00"][r.below(4) as usize]
    );
    format!(r#"{{"patientId":{patient},"timestamp":"{ts}","medication":"{med}"}}"#)
}

/// Post `bodies` pipelined on one connection; their ids in order.
fn post_all(c: &mut Client, bodies: &[String]) -> Vec<u64> {
    let mut ids = Vec::with_capacity(bodies.len());
    for chunk in bodies.chunks(256) {
        let reqs: String = chunk.iter().map(|b| post(b)).collect();
        c.send(reqs);
        for _ in chunk {
            let r = c.read(false);
            assert_eq!(r.status, 201, "{}", r.text());
            ids.push(r.json()["id"].as_u64().unwrap());
        }
    }
    ids
}

/// Post `n` copies of the README body, pipelined over one connection with a reader thread.
fn post_filler(s: &Server, n: usize) {
    let stream = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let counting = std::thread::spawn(move || {
        for i in 0..n {
            let r = read_response(&mut reader).unwrap_or_else(|| panic!("answer {i} missing"));
            assert_eq!(
                r.status,
                201,
                "answer {i}: {}",
                String::from_utf8_lossy(&r.body)
            );
        }
    });
    let one = post(README_BODY);
    let batch = one.repeat(1000);
    let mut w = stream;
    for _ in 0..n / 1000 {
        w.write_all(batch.as_bytes()).unwrap();
    }
    counting.join().unwrap();
}

/// `name`'s value in a `/metrics` scrape (the sum over its samples when labelled by `label`).
fn metric(c: &mut Client, name: &str, label: &str) -> u64 {
    let text = c.request("GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").text();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter(|l| l.contains(label))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

#[test]
fn evicted_usages_read_back_exactly_hot_and_cold() {
    let s = Server::start(FLAGS);
    let mut c = s.connect();
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let bodies: Vec<String> = (0..2000).map(|_| random_body(&mut rng)).collect();
    let ids = post_all(&mut c, &bodies);
    // What each answers while hot.
    let mut hot = BTreeMap::new();
    for &id in &ids {
        let r = c.request(get(id));
        assert_eq!(r.status, 200);
        hot.insert(id, r.body);
    }
    assert_eq!(metric(&mut c, "usaged_cold_reads_total", ""), 0);

    post_filler(&s, FILLER);
    let filler_first = ids.last().unwrap() + 1;
    let filler_last = filler_first + FILLER as u64 - 1;
    // The filler's body as the server writes it, from the newest (hot) one.
    let template = c.request(get(filler_last)).text();
    let tail = template
        .split_once(',')
        .map(|(_, rest)| rest.to_string())
        .unwrap();
    let filler_body = |id: u64| format!("{{\"id\":{id},{tail}");

    // Every early usage, now cold, in random order, byte for byte.
    let mut order: Vec<u64> = ids.clone();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    for &id in &order {
        let r = c.request(get(id));
        assert_eq!(r.status, 200, "id {id}");
        assert_eq!(r.body, hot[&id], "id {id}");
    }
    let cold = metric(&mut c, "usaged_cold_reads_total", "result=\"ok\"");
    assert!(cold >= ids.len() as u64, "{cold} cold reads");
    // Random filler ids, old (cold) and recent (hot).
    for _ in 0..500 {
        let id = filler_first + rng.below(FILLER as u64);
        let r = c.request(get(id));
        assert_eq!(r.status, 200, "id {id}");
        assert_eq!(r.text(), filler_body(id), "id {id}");
    }
    // Pipelined: cold, hot, a POST, unknown, cold HEAD — answered in order.
    let (a, b) = (ids[7], filler_last);
    let unknown = filler_last + 1_000_000;
    c.send(format!(
        "{}{}{}{}HEAD /api/usages/{a} HTTP/1.1\r\nHost: t\r\n\r\n",
        get(a),
        get(b),
        post(README_BODY),
        get(unknown)
    ));
    let r = c.read(false);
    assert_eq!((r.status, &r.body), (200, &hot[&a]));
    assert_eq!(c.read(false).text(), filler_body(b));
    assert_eq!(c.read(false).status, 201);
    assert_eq!(c.read(false).status, 404);
    let h = c.read(true);
    assert_eq!(h.status, 200);
    assert_eq!(
        h.header("content-length").unwrap(),
        hot[&a].len().to_string()
    );
    // Within budget: the cache holds what it is given, no more.
    let bytes = metric(&mut c, "usaged_arena_bytes", "");
    assert!(bytes <= 4 << 20, "{bytes} bytes in RAM for a 4 MiB cache");
    let in_ram = metric(&mut c, "usaged_cache_usages", "");
    assert!(
        in_ram > 0 && in_ram < FILLER as u64,
        "{in_ram} usages in RAM"
    );
}

#[test]
fn after_a_restart_every_usage_reads_back_from_disk() {
    let dir = util::temp_data_dir();
    let mut s = Server::start_in(&dir, FLAGS);
    let mut c = s.connect();
    let mut rng = Rng(42);
    let bodies: Vec<String> = (0..3000).map(|_| random_body(&mut rng)).collect();
    let ids = post_all(&mut c, &bodies);
    let before: Vec<Vec<u8>> = ids.iter().map(|&id| c.request(get(id)).body).collect();
    drop(c);
    assert!(s.stop().success());
    let s = Server::start_in(&dir, FLAGS);
    let mut c = s.connect();
    for (id, body) in ids.iter().zip(&before) {
        let r = c.request(get(*id));
        assert_eq!((r.status, &r.body), (200, body), "id {id}");
    }
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}
