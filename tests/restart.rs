//! A restart opens sealed segments by their index alone: a record damaged in the middle of a
//! sealed segment is not even noticed at start (a start that read it would refuse to start),
//! only when that usage is read (`500`); everything else reads back.

mod util;

use std::path::PathBuf;

use util::{Client, README_BODY, Server, get, post, segments};

const HEADER: usize = 32;
const FRAME: usize = 6;
const LEASE: u8 = 2;

fn post_n(c: &mut Client, n: usize) -> Vec<u64> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n / 100 {
        c.send(post(README_BODY).repeat(100));
        for _ in 0..100 {
            let r = c.read(false);
            assert_eq!(r.status, 201);
            ids.push(r.json()["id"].as_u64().unwrap());
        }
    }
    ids
}

/// `(offset, id)` of every usage record of the segment `bytes` (frames walked by length).
fn usage_records(bytes: &[u8]) -> Vec<(usize, u64)> {
    let mut out = Vec::new();
    let mut at = HEADER;
    while at + FRAME <= bytes.len() {
        let len = u16::from_le_bytes([bytes[at], bytes[at + 1]]) as usize;
        let p = &bytes[at + FRAME..at + FRAME + len];
        if p[18] != LEASE {
            out.push((at, u64::from_le_bytes(p[..8].try_into().unwrap())));
        }
        at += FRAME + len;
    }
    out
}

#[test]
fn sealed_segments_are_not_read_at_start_and_a_damaged_record_is_a_500() {
    let dir = util::temp_data_dir();
    let flags = ["--threads", "2", "--segment-size", "4KiB"];
    let mut s = Server::start_in(&dir, &flags);
    let mut c = s.connect();
    let ids = post_n(&mut c, 20_000);
    drop(c);
    assert!(s.stop().success());
    let segs = segments(&dir);
    assert!(segs.len() > 60, "{} segments", segs.len());
    for seg in &segs {
        assert!(
            seg.with_extension("idx").exists(),
            "{} has no index",
            seg.display()
        );
    }
    // A record in the middle of a sealed segment, in the middle of the stripe that took the
    // posts (one connection: one worker).
    let stripe_of = |p: &PathBuf| {
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        name.split('-').nth(2).unwrap().to_string()
    };
    let busiest = ["w0", "w1"]
        .into_iter()
        .max_by_key(|w| segs.iter().filter(|p| stripe_of(p) == *w).count())
        .unwrap();
    let mine: Vec<&PathBuf> = segs.iter().filter(|p| stripe_of(p) == busiest).collect();
    let victim = mine[mine.len() / 2];
    let mut bytes = std::fs::read(victim).unwrap();
    let records = usage_records(&bytes);
    let (at, bad_id) = records[records.len() / 2];
    let len = u16::from_le_bytes([bytes[at], bytes[at + 1]]) as usize;
    bytes[at + FRAME + len - 1] ^= 0x20;
    std::fs::write(victim, &bytes).unwrap();
    let in_victim: Vec<u64> = records.iter().map(|&(_, id)| id).collect();

    let s = Server::start_in(&dir, &flags);
    let mut c = s.connect();
    let r = c.request(get(bad_id));
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.error(), "stored usage unreadable");
    // Everything outside the damaged segment reads back (a sample), and so does the first
    // record of the damaged segment (another index stride).
    for &id in ids.iter().filter(|id| !in_victim.contains(id)).step_by(13) {
        let r = c.request(get(id));
        assert_eq!(r.status, 200, "id {id}");
        assert!(r.text().starts_with(&format!("{{\"id\":{id},")));
    }
    assert_eq!(c.request(get(in_victim[0])).status, 200);
    // New usages get ids never handed out before.
    let fresh = post_n(&mut c, 100);
    let old: std::collections::BTreeSet<u64> = ids.iter().copied().collect();
    assert!(fresh.iter().all(|id| !old.contains(id)));
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}
