//! Data directories written by real earlier builds open with today's code and read back
//! exactly. The fixtures (`tests/fixtures/`, made once by `tests/fixtures/make.sh`):
//!
//! - `dir-v1`: journal format 1 (segment header version 1, no leases), by 3da844a (the commit
//!   before format 2), `--threads 2`, five clean starts, one of them with no posts;
//! - `dir-v2`: format 2 (leases), by 572a9a3, `--threads 2 --segment-size 4096`, one clean
//!   stop, then `kill -9` after the last answer.
//!
//! `dir-vN.expected.ndjson` holds the old build's `GET` body of every id it acknowledged. Each
//! test works on a copy and checks that the fixture itself was not changed.

mod util;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use util::{Server, get, post, temp_data_dir};

/// A usage the old builds never saw, posted after the upgrade.
const NEW_BODY: &str = r#"{"patientId":"after-upgrade","timestamp":"2026-11-26T08:00:00+01:00","medication":"Tiotropium"}"#;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Every file of `dir` (flat, as a data directory is) by name.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let e = e.unwrap();
            assert!(e.file_type().unwrap().is_file(), "{:?}", e.path());
            let name = e.file_name().into_string().unwrap();
            (name, std::fs::read(e.path()).unwrap())
        })
        .collect()
}

/// The expected lines of fixture `name`, by id, each exactly as the old build's `GET` body.
fn expected(name: &str) -> BTreeMap<u64, String> {
    let path = fixtures().join(format!("{name}.expected.ndjson"));
    let text = std::fs::read_to_string(&path).unwrap();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let id = serde_json::from_str::<serde_json::Value>(line).unwrap()["id"]
            .as_u64()
            .unwrap();
        assert!(out.insert(id, line.to_string()).is_none(), "id {id} twice");
    }
    out
}

/// Ids of the records in the segments of `data` (read the way both formats lay them out:
/// 32-byte header, then `u16` length, CRC, payload with the id in its first 8 bytes and the
/// kind at byte 18): the usages' ids and the largest id of any record, leases included.
fn record_ids(data: &BTreeMap<String, Vec<u8>>) -> (Vec<u64>, u64) {
    const HEADER: usize = 32;
    const FRAME: usize = 6;
    const LEASE: u8 = 2;
    let (mut usages, mut top) = (Vec::new(), 0);
    for (name, bytes) in data.iter().filter(|(n, _)| n.ends_with(".seg")) {
        let mut at = HEADER;
        while at < bytes.len() {
            let len = u16::from_le_bytes([bytes[at], bytes[at + 1]]) as usize;
            let payload = &bytes[at + FRAME..at + FRAME + len];
            let id = u64::from_le_bytes(payload[..8].try_into().unwrap());
            top = top.max(id);
            if payload[18] != LEASE {
                usages.push(id);
            }
            at += FRAME + len;
        }
        assert_eq!(at, bytes.len(), "{name}: a torn record");
    }
    usages.sort_unstable();
    (usages, top)
}

/// `usaged export` of `dir`: its lines, which must be in id order.
fn export(dir: &Path) -> Vec<String> {
    util::export_text(dir).lines().map(str::to_string).collect()
}

/// Every id of `want` answers `GET` with exactly its line.
fn check_gets(s: &Server, want: &BTreeMap<u64, String>) {
    let mut c = s.connect();
    let ids: Vec<&u64> = want.keys().collect();
    for chunk in ids.chunks(100) {
        c.send(chunk.iter().map(|id| get(**id)).collect::<String>());
        for id in chunk {
            let r = c.read(false);
            assert_eq!(r.status, 200, "id {id}: {}", r.text());
            assert_eq!(r.text(), want[*id], "id {id}");
        }
    }
}

/// Open a copy of fixture `name` (written with `--threads 2`) with today's build: every old
/// id reads back exactly; a new usage gets an id above every id and lease on disk; `usaged
/// export` lists exactly the old usages and the new one; the same after a restart with another
/// thread count; the fixture itself is unchanged.
fn upgrade(name: &str) {
    let fixture = fixtures().join(name);
    let before = files(&fixture);
    let mut want = expected(name);
    let (usages, top) = record_ids(&before);
    assert_eq!(
        usages,
        want.keys().copied().collect::<Vec<_>>(),
        "{name}: the expected file covers exactly the usages on disk"
    );
    assert!(want.len() >= 250, "{name}: {} usages", want.len());

    let dir = temp_data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    for (file, bytes) in &before {
        std::fs::write(dir.join(file), bytes).unwrap();
    }

    let mut s = Server::start_in(&dir, &["--threads", "2"]);
    check_gets(&s, &want);
    let r = s.connect().request(post(NEW_BODY));
    assert_eq!(r.status, 201, "{}", r.text());
    let new_id = r.json()["id"].as_u64().unwrap();
    assert!(new_id > top, "{name}: new id {new_id}, on disk up to {top}");
    let r = s.connect().request(get(new_id));
    assert_eq!(r.status, 200);
    want.insert(new_id, r.text());
    assert!(s.stop().success());
    // The first start indexed every segment the old build wrote (and sealed its own).
    for seg in files(&dir).keys().filter(|n| n.ends_with(".seg")) {
        let idx = seg.replace(".seg", ".idx");
        assert!(dir.join(&idx).exists(), "{name}: {seg} has no index");
    }
    let all: Vec<String> = want.values().cloned().collect();
    assert_eq!(export(&dir), all, "{name}: export after the upgrade");

    let mut s = Server::start_in(&dir, &["--threads", "3"]);
    check_gets(&s, &want);
    assert!(s.stop().success());
    assert_eq!(export(&dir), all, "{name}: export after a second restart");

    assert!(
        files(&fixture) == before,
        "{name}: the fixture was changed in place"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_format_1_directory_opens_and_reads_exactly() {
    upgrade("dir-v1");
}

#[test]
fn a_format_2_directory_left_by_kill_9_opens_and_reads_exactly() {
    upgrade("dir-v2");
}
