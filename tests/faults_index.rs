//! Fault injection, part 3 (issue 11): `kill -9` while a segment is sealed and its index
//! written, while the first start of this version indexes a directory an earlier one wrote,
//! and while retention removes segments. After each: the store starts, every acknowledged id
//! reads back exactly (or, once retention took it, `410` for good), no id is handed out twice.

mod util;

#[path = "faults/harness.rs"]
mod harness;
#[path = "faults/ledger.rs"]
mod ledger;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use harness::{
    Start, TempDir, Usaged, Wrap, copy_dir, have_strace, kill_at, launch, serve_args, shared,
};
use ledger::{Ledger, stored};
use util::get;

const CREATE: &str = "openat,open,creat";
const WRITES: &str = "write,pwrite64,writev,pwritev,pwritev2";
const SYNCS: &str = "fdatasync,fsync";
const RENAME: &str = "rename,renameat,renameat2";
const UNLINK: &str = "unlink,unlinkat";

/// `NAME` and `NAME.tmp` for each file name in `dir`.
fn paths(dir: &Path, names: &[String]) -> Vec<String> {
    names
        .iter()
        .flat_map(|n| {
            let p = dir.join(n).display().to_string();
            [p.clone(), format!("{p}.tmp")]
        })
        .collect()
}

/// `NAME` alone (a `.tmp` of it is unlinked before each is made: not what is aimed at).
fn exactly(dir: &Path, name: &str) -> Vec<String> {
    vec![dir.join(name).display().to_string()]
}

/// Every segment of `dir` has an index beside it.
fn assert_indexed(dir: &Path) {
    for seg in harness::segments(dir) {
        assert!(
            seg.with_extension("idx").exists(),
            "{} has no index",
            seg.display()
        );
    }
}

#[test]
fn kill_9_while_a_segment_is_sealed_and_indexed_loses_nothing() {
    let _g = shared();
    if !have_strace() {
        return;
    }
    // 4096-byte segments: the 400 usages posted seal about three of them.
    const SMALL: &[&str] = &["--segment-size", "4096"];
    let mut points = 0;
    let mut injected = 0;
    for seq in [0u32, 1] {
        for (set, when) in [(CREATE, 1), (WRITES, 1), (SYNCS, 1), (RENAME, 1)] {
            println!("SIGKILL at call {when} of {set} on index {seq}:");
            let dir = TempDir::new();
            let names = [format!("e0-s1-w0-{seq:06}.idx")];
            let mut l = Ledger::default();
            points += 1;
            injected += l.crash_run(
                dir.path(),
                kill_at(set, when, &paths(dir.path(), &names)),
                SMALL,
            ) as usize;
            l.verify(dir.path(), 1);
            assert_indexed(dir.path());
        }
    }
    assert!(
        injected * 4 >= points * 3,
        "only {injected} of {points} injected kills happened: are indexes written otherwise?"
    );
}

#[test]
fn kill_9_while_the_first_start_indexes_an_older_directory_loses_nothing() {
    let _g = shared();
    if !have_strace() {
        return;
    }
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dir-v2");
    let expected: BTreeMap<u64, String> = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dir-v2.expected.ndjson"),
    )
    .unwrap()
    .lines()
    .map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        (v["id"].as_u64().unwrap(), l.to_string())
    })
    .collect();
    let first = harness::segments(&fixture)[0].with_extension("idx");
    let name = first.file_name().unwrap().to_str().unwrap().to_string();
    for (set, when) in [(CREATE, 1), (WRITES, 1), (SYNCS, 1), (RENAME, 1)] {
        println!("SIGKILL at call {when} of {set} on {name}:");
        let dir = copy_dir(&fixture);
        let opts = kill_at(set, when, &paths(dir.path(), std::slice::from_ref(&name)));
        match launch(Wrap::Strace(opts), &serve_args(dir.path(), 2, &[])) {
            Start::Exited { .. } => {}
            Start::Up(mut s) => {
                println!("  the kill did not come before it listened");
                s.kill9();
            }
        }
        let mut s = Usaged::start(dir.path(), 2, &[]);
        let mut c = s.conn();
        for (id, line) in &expected {
            let r = c.ask(&get(*id), Duration::from_secs(10));
            assert_eq!((r.status, r.text()), (200, line.clone()), "id {id}");
        }
        drop(c);
        s.stop_ok();
        assert_indexed(dir.path());
    }
}

/// What every acknowledged id answers now: `410` for a prefix of ids (one stripe: slot order
/// is id order), exactly its usage for the rest; never `404`.
fn answers(l: &Ledger, s: &Usaged) -> Vec<(u64, u16)> {
    let mut c = s.conn();
    l.acked
        .iter()
        .map(|(&id, &i)| {
            let r = c.ask(&get(id), Duration::from_secs(10));
            match r.status {
                200 => assert_eq!(r.text(), stored(id, i), "id {id}"),
                410 => assert_eq!(r.error(), "expired", "id {id}"),
                st => panic!("id {id}: {st} {}", r.text()),
            }
            (id, r.status)
        })
        .collect()
}

#[test]
fn kill_9_while_retention_removes_segments_keeps_its_promise() {
    let _g = shared();
    if !have_strace() {
        return;
    }
    const RETAIN: &[&str] = &["--segment-size", "4096", "--retain", "1s"];
    let mut injected = 0;
    let mut points = 0;
    // The first open of `RETAINED` is the read at start; the second makes `RETAINED.tmp`.
    let sets = [
        (CREATE, 2, "RETAINED"),
        (WRITES, 1, "RETAINED"),
        (SYNCS, 1, "RETAINED"),
        (RENAME, 1, "RETAINED"),
        (UNLINK, 1, "e0-s1-w0-000000.idx"),
        (UNLINK, 1, "e0-s1-w0-000000.seg"),
    ];
    for (set, when, file) in sets {
        println!("SIGKILL at call {when} of {set} on {file}:");
        let dir = TempDir::new();
        let mut l = Ledger::default();
        points += 1;
        let on = if set == UNLINK {
            exactly(dir.path(), file)
        } else {
            paths(dir.path(), &[file.to_string()])
        };
        let opts = kill_at(set, when, &on);
        // Batches for about three seconds: segments seal, age past a second, and go.
        injected +=
            l.crash_run_paced(dir.path(), opts, RETAIN, Duration::from_millis(200)) as usize;
        // Restarted without --retain: what was removed stays removed, nothing more goes.
        let mut s = Usaged::start(dir.path(), 1, &[]);
        let first = answers(&l, &s);
        let kept = first
            .iter()
            .position(|&(_, st)| st == 200)
            .unwrap_or(first.len());
        assert!(
            first[kept..].iter().all(|&(_, st)| st == 200),
            "410 after a 200: {first:?}"
        );
        if set == UNLINK {
            // Killed after the marks were durable: what they cover answers 410.
            assert!(kept > 0, "no 410 after a kill while removing: {first:?}");
        }
        let mut c = s.conn();
        let sent = l.post(&mut c, 20, Duration::from_secs(10));
        assert_eq!(sent.created.len(), 20, "{sent:?}");
        drop(c);
        s.stop_ok();
        let s = Usaged::start(dir.path(), 1, &[]);
        let second = answers(&l, &s);
        assert_eq!(
            &second[..first.len()],
            &first[..],
            "answers changed over a restart"
        );
        drop(s);
        for &(id, st) in &first {
            if st == 410 {
                l.retire(id);
            }
        }
        l.check_export(dir.path());
    }
    assert!(
        injected * 4 >= points * 3,
        "only {injected} of {points} injected kills happened: does retention use other calls?"
    );
}
