//! `--retain` and `--retain-bytes`: whole old segments go, their ids answer `410
//! {"error":"expired"}` (after a restart too), and nothing else changes.

mod util;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use util::{Client, README_BODY, Server, get, post};

fn post_n(c: &mut Client, n: usize) -> Vec<u64> {
    let mut ids = Vec::with_capacity(n);
    for chunk in 0..n.div_ceil(100) {
        let k = (n - chunk * 100).min(100);
        c.send(post(README_BODY).repeat(k));
        for _ in 0..k {
            let r = c.read(false);
            assert_eq!(r.status, 201, "{}", r.text());
            ids.push(r.json()["id"].as_u64().unwrap());
        }
    }
    ids
}

fn metric(c: &mut Client, name: &str) -> u64 {
    let text = c.request("GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

fn status(c: &mut Client, id: u64) -> u16 {
    let r = c.request(get(id));
    match r.status {
        410 => assert_eq!(r.error(), "expired"),
        200 => assert!(r.text().starts_with(&format!("{{\"id\":{id},"))),
        _ => {}
    }
    r.status
}

/// Bytes of `*.seg` and `*.idx` files in `dir`.
fn disk_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| {
            let n = e.file_name().into_string().unwrap();
            n.ends_with(".seg") || n.ends_with(".idx")
        })
        // A file removed between the listing and its size counts nothing.
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

#[test]
fn usages_older_than_retain_answer_410_and_later_ones_stay() {
    let dir = util::temp_data_dir();
    let flags = ["--threads", "2", "--retain", "2s", "--segment-size", "4KiB"];
    let mut s = Server::start_in(&dir, &flags);
    let mut c = s.connect();
    let old = post_n(&mut c, 300);
    s.wait_until(
        Duration::from_secs(20),
        "the first segments removed",
        |_| {
            metric(&mut c, "usaged_retention_removed_segments_total") > 0
                && old.iter().all(|&id| status(&mut c, id) == 410)
        },
    );
    let new = post_n(&mut c, 300);
    for &id in &new {
        assert_eq!(status(&mut c, id), 200, "id {id}");
    }
    let unknown = new.iter().max().unwrap() + 10_000;
    assert_eq!(status(&mut c, unknown), 404);
    assert_eq!(status(&mut c, 0), 404);
    drop(c);
    assert!(s.stop().success());
    // After a restart (within the retention time of the new ones): the same answers.
    let s = Server::start_in(&dir, &flags);
    let mut c = s.connect();
    for &id in old.iter().step_by(7) {
        assert_eq!(status(&mut c, id), 410, "id {id} after restart");
    }
    for &id in new.iter().step_by(7) {
        assert_eq!(status(&mut c, id), 200, "id {id} after restart");
    }
    assert_eq!(status(&mut c, unknown), 404);
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn retain_bytes_keeps_the_journal_under_its_size_oldest_first() {
    let dir = util::temp_data_dir();
    let cap: u64 = 1 << 20;
    let flags = [
        "--threads",
        "2",
        "--retain-bytes",
        "1MiB",
        "--segment-size",
        "16KiB",
    ];
    let s = Server::start_in(&dir, &flags);
    let mut c = s.connect();
    // About 37 bytes a usage: 80,000 of them are near three times the cap.
    let ids = post_n(&mut c, 80_000);
    s.wait_until(Duration::from_secs(20), "the journal under its cap", |_| {
        // Open segments (one per worker) are never removed: they may add to the cap.
        disk_bytes(&dir) <= cap + 2 * (16 << 10) + 4096
    });
    assert!(metric(&mut c, "usaged_retention_removed_segments_total") > 0);
    // What went is a prefix of each stripe: ids (stripe = (id-1) % 2) answer 410 up to a
    // point and 200 after it, never the other way round.
    for stripe in 0..2 {
        let mine: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|id| (id - 1) % 2 == stripe)
            .collect();
        if mine.is_empty() {
            continue; // one connection: one worker took every post
        }
        let answers: Vec<u16> = mine
            .iter()
            .step_by(97)
            .map(|&id| status(&mut c, id))
            .collect();
        let first_kept = answers.iter().position(|&a| a == 200).expect("newest kept");
        assert!(
            first_kept > 0,
            "stripe {stripe}: nothing removed: {answers:?}"
        );
        assert!(
            answers[..first_kept].iter().all(|&a| a == 410)
                && answers[first_kept..].iter().all(|&a| a == 200),
            "stripe {stripe}: {answers:?}"
        );
    }
    let last: BTreeSet<u64> = ids.iter().rev().take(500).copied().collect();
    for id in last {
        assert_eq!(status(&mut c, id), 200, "id {id}");
    }
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}
