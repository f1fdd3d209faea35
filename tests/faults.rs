//! Fault injection, part 1 (issue 9): `kill -9` at every journal system call (strace's fault
//! injection), deep pipelining then a kill, `--threads` changes, headerless, truncated and
//! corrupt segments, `--repair`, and two servers on one port. After each fault: every
//! acknowledged id reads back exactly, `usaged export` lists exactly what is stored, and no
//! id is handed out twice (see `faults/ledger.rs`). Disk faults are in `faults_disk.rs`.

mod util;

#[path = "faults/harness.rs"]
mod harness;
#[path = "faults/ledger.rs"]
mod ledger;

use std::path::{Path, PathBuf};
use std::time::Duration;

use harness::{
    Start, TempDir, Usaged, Wrap, copy_dir, export, have_strace, kill_at, launch, segments,
    serve_args, shared, start_refused,
};
use ledger::Ledger;

const SECS_10: Duration = Duration::from_secs(10);
/// Every system call that can write to a file.
const WRITES: &str = "write,pwrite64,writev,pwritev,pwritev2";
const SYNCS: &str = "fdatasync,fsync";

/// Paths of the first segment of a fresh data directory with `--threads 1`: its name and the
/// temporary name it is created under.
fn first_segment(dir: &Path) -> Vec<String> {
    segment_paths(dir, 0..1)
}

/// Segments `seqs` of a fresh data directory with `--threads 1`, and their `.tmp` names.
fn segment_paths(dir: &Path, seqs: std::ops::Range<u32>) -> Vec<String> {
    seqs.flat_map(|seq| {
        let seg = dir
            .join(format!("e0-s1-w0-{seq:06}.seg"))
            .display()
            .to_string();
        [seg.clone(), format!("{seg}.tmp")]
    })
    .collect()
}

/// Where a kill is injected: which calls, the how-many-th, on which files, with which flags.
struct Point {
    set: &'static str,
    when: u32,
    /// `None`: the data directory itself; else these segments (and their `.tmp` names).
    segments: Option<std::ops::Range<u32>>,
    flags: &'static [&'static str],
}

/// One crash: a fresh directory, `usaged --threads 1` under strace with SIGKILL injected,
/// a client posting pipelined batches until the server dies (or 16 batches are answered, then
/// `kill -9`); then a plain restart must keep the promise. Whether the injection killed it.
fn crash_at(p: &Point) -> bool {
    let dir = TempDir::new();
    let paths = match &p.segments {
        None => vec![dir.path().display().to_string()],
        Some(seqs) => segment_paths(dir.path(), seqs.clone()),
    };
    let mut l = Ledger::default();
    let injected = l.crash_run(dir.path(), kill_at(p.set, p.when, &paths), p.flags);
    l.verify(dir.path(), 1);
    injected
}

/// Issue 9, cases 1 and 5: a crash at any journal system call (creating, writing, syncing,
/// renaming a segment, syncing the directory; at start and when a segment rolls over) loses
/// no acknowledged usage and never leaves a directory that refuses to start (the old code
/// left a headerless segment behind: `bad magic` for good).
#[test]
fn kill_9_at_each_journal_syscall_loses_nothing_and_still_starts() {
    let _g = shared();
    if !have_strace() {
        return;
    }
    const CREATE: &str = "openat,open,creat";
    const RENAME: &str = "rename,renameat,renameat2";
    // 4096-byte segments: the 400 usages posted roll over about three times. strace counts
    // calls per thread, and segments after the first are created by the journal thread alone.
    const SMALL: &[&str] = &["--segment-size", "4096"];
    let at = |set, when, segments, flags| Point {
        set,
        when,
        segments,
        flags,
    };
    let mut points = Vec::new();
    for n in 1..=6 {
        points.push(at(WRITES, n, Some(0..1), &["--sync", "interval"]));
    }
    for n in 1..=3 {
        points.push(at(SYNCS, n, Some(0..1), &["--sync", "always"]));
    }
    points.push(at(CREATE, 1, Some(0..1), &[]));
    points.push(at(RENAME, 1, Some(0..1), &[]));
    points.push(at(SYNCS, 1, None, &[]));
    // Around the creation of the next segments, mid-run.
    for seq in [1, 2] {
        points.push(at(CREATE, 1, Some(seq..seq + 1), SMALL));
        points.push(at(WRITES, 1, Some(seq..seq + 1), SMALL));
        points.push(at(WRITES, 2, Some(seq..seq + 1), SMALL));
        points.push(at(SYNCS, 1, Some(seq..seq + 1), SMALL));
        points.push(at(RENAME, 1, Some(seq..seq + 1), SMALL));
    }
    points.push(at(SYNCS, 2, None, SMALL));
    points.push(at(WRITES, 9, Some(0..4), SMALL));
    points.push(at(
        SYNCS,
        4,
        Some(0..4),
        &["--segment-size", "4096", "--sync", "always"],
    ));
    let mut injected = 0;
    for p in &points {
        let on = match &p.segments {
            None => "the data dir".to_string(),
            Some(seqs) => format!("segments {seqs:?}"),
        };
        println!(
            "SIGKILL at call {} of {} on {on}, {:?}:",
            p.when, p.set, p.flags
        );
        injected += crash_at(p) as usize;
    }
    assert!(
        injected * 4 >= points.len() * 3,
        "only {injected} of {} injected kills happened: does the journal use other calls?",
        points.len()
    );
}

/// Issue 9, case 1: one worker, one connection that writes 3000 POSTs at once, SIGKILL at the
/// 3rd write on the segment (the reproduction: the old code answered re-driven
/// connections before journaling them, 1111 acknowledged, 877 recovered), and at later writes,
/// so that some batches are acknowledged before the kill.
#[test]
fn deep_pipelining_then_kill_9_loses_no_acknowledged_usage() {
    let _g = shared();
    if !have_strace() {
        return;
    }
    let mut acked = 0;
    for when in [3, 5, 9] {
        let dir = TempDir::new();
        let opts = kill_at(WRITES, when, &first_segment(dir.path()));
        let mut s = Usaged::up(Wrap::Strace(opts), &serve_args(dir.path(), 1, &[]));
        let mut l = Ledger::default();
        let c = s.conn();
        let mut sent = l.post_deep(&c, 3000);
        l.settle(&c, &mut sent, SECS_10);
        println!(
            "SIGKILL at write {when}: {} of 3000 pipelined acknowledged, {} unanswered (connection closed: {})",
            l.acked.len(),
            sent.pending.len(),
            sent.closed
        );
        acked += l.acked.len();
        s.kill9();
        l.verify(dir.path(), 1);
    }
    assert!(
        acked > 0,
        "no POST was acknowledged before any of the kills"
    );
}

/// Issue 9, case 4: `--threads 2` with no posts, then `--threads 1` with 3 posts: the old
/// code ordered epochs by `(base, stripes)`, so the empty `(0, 2)` hid ids 1..3 (404, and an
/// empty export with exit 0).
#[test]
fn an_empty_wider_epoch_does_not_hide_later_usages() {
    let _g = shared();
    let dir = TempDir::new();
    let mut l = Ledger::default();
    Usaged::start(dir.path(), 2, &[]).stop_ok();
    let mut s = Usaged::start(dir.path(), 1, &[]);
    let sent = l.post(&mut s.conn(), 3, SECS_10);
    assert_eq!(sent.created, [1, 2, 3], "{sent:?}");
    s.stop_ok();
    let mut s = Usaged::start(dir.path(), 1, &[]);
    l.check_reads(&s);
    s.stop_ok();
    l.check_export(dir.path());
    l.verify(dir.path(), 2);
}

/// `--threads` 4 → 2 → 3 with posts between clean stops: every usage stays readable and
/// exported, no id is handed out twice.
#[test]
fn thread_count_changes_with_posts_between_keep_every_usage() {
    let _g = shared();
    let dir = TempDir::new();
    let mut l = Ledger::default();
    for threads in [4, 2, 3] {
        let mut s = Usaged::start(dir.path(), threads, &[]);
        l.check_reads(&s);
        let sent = l.post(&mut s.conn(), 40, SECS_10);
        assert_eq!(sent.created.len(), 40, "--threads {threads}: {sent:?}");
        s.stop_ok();
    }
    l.check_export(dir.path());
    l.verify(dir.path(), 3);
}

/// `--threads` changes with `kill -9` between runs (an empty run among them): no id is handed
/// out twice, every acknowledged usage stays readable.
#[test]
fn thread_count_changes_with_kill_9_between_never_reissue_an_id() {
    let _g = shared();
    let dir = TempDir::new();
    let mut l = Ledger::default();
    for (threads, n) in [(3, 30), (1, 30), (2, 0), (4, 30), (1, 10)] {
        let mut s = Usaged::start(dir.path(), threads, &[]);
        l.check_reads(&s);
        if n > 0 {
            let sent = l.post(&mut s.conn(), n, SECS_10);
            assert_eq!(sent.created.len(), n, "--threads {threads}: {sent:?}");
        }
        s.kill9();
    }
    l.check_export(dir.path());
    l.verify(dir.path(), 2);
}

/// A data directory with 20 usages in one stripe, stopped cleanly.
fn twenty_usages() -> (TempDir, Ledger) {
    let dir = TempDir::new();
    let mut l = Ledger::default();
    let mut s = Usaged::start(dir.path(), 1, &[]);
    let sent = l.post(&mut s.conn(), 20, SECS_10);
    assert_eq!(sent.created.len(), 20, "{sent:?}");
    s.stop_ok();
    (dir, l)
}

/// The segment holding the records (the largest).
fn segment_with_records(dir: &Path) -> PathBuf {
    segments(dir)
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("a segment")
}

/// `e{base}-s{stripes}-w{stripe}-{seq}.seg` → `(base, seq)`.
fn base_and_seq(seg: &Path) -> (u64, u32) {
    let name = seg.file_name().unwrap().to_str().unwrap();
    let stem = name.strip_suffix(".seg").unwrap();
    let base = stem[1..].split('-').next().unwrap().parse().unwrap();
    let seq = stem.rsplit('-').next().unwrap().parse().unwrap();
    (base, seq)
}

/// The segment of the newest epoch with the highest number.
fn newest_segment(dir: &Path) -> PathBuf {
    segments(dir)
        .into_iter()
        .max_by_key(|p| base_and_seq(p))
        .expect("a segment")
}

/// The name of the segment after `seg` in its stripe (`…-000003.seg` → `…-000004.seg`).
fn next_segment(seg: &Path) -> PathBuf {
    let name = seg.file_name().unwrap().to_str().unwrap();
    let (prefix, _) = name.strip_suffix(".seg").unwrap().rsplit_once('-').unwrap();
    seg.with_file_name(format!("{prefix}-{:06}.seg", base_and_seq(seg).1 + 1))
}

/// Issue 9, case 5: a crash between creating a segment and writing its header left a 0-byte
/// (or short) segment, and the old server, `--repair` and `export` refused to start for good
/// (`bad magic`). Such a file (and a leftover `*.tmp`) holds no records: removed with a
/// warning, every other record kept.
#[test]
fn headerless_and_truncated_segments_are_dropped_and_the_rest_kept() {
    let _g = shared();
    let (dir, mut l) = twenty_usages();
    let header = std::fs::read(newest_segment(dir.path())).unwrap()[..32].to_vec();
    let cases: [(&str, &str, Vec<u8>); 3] = [
        ("headerless", "", Vec::new()),
        ("10-byte header", "", header[..10].to_vec()),
        ("leftover .tmp", ".tmp", header[..20].to_vec()),
    ];
    for (what, suffix, bytes) in cases {
        // Where a crash while creating the next segment leaves it.
        let seg = next_segment(&newest_segment(dir.path()));
        let path = PathBuf::from(format!("{}{suffix}", seg.display()));
        assert!(!path.exists() && !seg.exists());
        println!("{what}: {}", path.display());
        std::fs::write(&path, &bytes).unwrap();
        let (st, _, err) = export(dir.path());
        assert!(st.success(), "export with a {what} segment: {st}\n{err}");
        l.check_export(dir.path());
        let mut s = Usaged::start(dir.path(), 1, &[]);
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(
            s.log()
                .lines()
                .any(|x| x.contains("warning") && x.contains(name)),
            "no warning naming the {what} file:\n{}",
            s.log()
        );
        l.check_reads(&s);
        let sent = l.post(&mut s.conn(), 5, SECS_10);
        assert_eq!(sent.created.len(), 5, "{sent:?}");
        s.stop_ok();
    }
    l.verify(dir.path(), 1);
}

/// Issue 9, case 9 (and 3): a flipped bit anywhere in a segment header is corruption: exit
/// status 1 naming the file, without allocating gigabytes (the start runs under `ulimit -v`)
/// or aborting; `export` exits non-zero; `--repair` then starts, and never hands out an id
/// acknowledged before (the old code read a flipped stripe count as a million stripes).
#[test]
fn a_flipped_header_bit_stops_the_start_and_repair_never_reissues() {
    let _g = shared();
    let (base, l0) = twenty_usages();
    let seg = segment_with_records(base.path());
    let name = seg.file_name().unwrap().to_str().unwrap().to_string();
    let flips = [
        (0, 0, "magic"),
        (8, 2, "version"),
        (12, 1, "stripe count 1 -> 3"),
        (14, 4, "stripe count + 2^20"),
        (16, 0, "stripe 0 -> 1"),
        (20, 0, "checksum"),
        (24, 0, "epoch base 0 -> 1"),
        (31, 7, "epoch base + 2^63"),
    ];
    let mut failures = Vec::new();
    for (at, bit, what) in flips {
        let run = || {
            let dir = copy_dir(base.path());
            let path = dir.path().join(&name);
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[at] ^= 1 << bit;
            std::fs::write(&path, &bytes).unwrap();
            let (st, err) = start_refused(dir.path(), 1, &[]);
            assert_eq!(st.code(), Some(1), "exit {st}, not 1\n{err}");
            assert!(err.contains(&name), "stderr does not name {name}:\n{err}");
            let (st, _, err) = export(dir.path());
            assert!(
                st.code().is_some_and(|c| c != 0),
                "export of a corrupt journal: {st}\n{err}"
            );
            let args = serve_args(dir.path(), 1, &["--repair"]);
            let mut s = Usaged::up(Wrap::Limited, &args);
            let mut l = l0.clone();
            let sent = l.post(&mut s.conn(), 10, SECS_10);
            assert_eq!(sent.created.len(), 10, "{sent:?}");
            s.stop_ok();
        };
        // Every flip is tried, and the report names each one that failed.
        if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!("{what} (byte {at}, bit {bit}): {msg}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} header flips mishandled:\n{}",
        failures.len(),
        flips.len(),
        failures.join("\n\n")
    );
}

/// Issue 9, case 9 (and 3): a bad length in the second-to-last record (one that runs past the
/// end of the file) was taken for a torn tail, and the intact last record was cut with only a
/// warning. It is corruption: exit 1 naming file and offset, `export` exits non-zero;
/// `--repair` keeps what precedes it, and new posts never get an id acknowledged before.
#[test]
fn a_bad_length_before_the_last_record_is_corruption_not_a_torn_tail() {
    let _g = shared();
    let (dir, mut l) = twenty_usages();
    let seg = segment_with_records(dir.path());
    let mut bytes = std::fs::read(&seg).unwrap();
    let mut offsets = Vec::new();
    let mut at = 32;
    while at + 6 <= bytes.len() {
        offsets.push(at);
        at += 6 + u16::from_le_bytes([bytes[at], bytes[at + 1]]) as usize;
    }
    assert_eq!(at, bytes.len(), "the segment ends with a whole record");
    assert!(offsets.len() >= 20, "{} records", offsets.len());
    let bad = offsets[offsets.len() - 2];
    // Long enough to run one byte past the end of the file.
    let len = (bytes.len() - bad - 6 + 1) as u16;
    bytes[bad..bad + 2].copy_from_slice(&len.to_le_bytes());
    std::fs::write(&seg, &bytes).unwrap();
    // A sealed segment with its index is not read at start: without it, it is scanned.
    std::fs::remove_file(seg.with_extension("idx")).unwrap();
    let name = seg.file_name().unwrap().to_str().unwrap();
    let (st, err) = start_refused(dir.path(), 1, &[]);
    assert_eq!(st.code(), Some(1), "exit {st}, not 1:\n{err}");
    assert!(
        err.contains(name) && err.contains(&bad.to_string()),
        "stderr does not name {name} and offset {bad}:\n{err}"
    );
    let (st, _, err) = export(dir.path());
    assert!(
        st.code().is_some_and(|c| c != 0),
        "export of a corrupt journal: {st}\n{err}"
    );
    // --repair keeps the records before the bad one: all but the last two usages at least.
    let mut s = Usaged::start(dir.path(), 1, &["--repair"]);
    let lost: Vec<u64> = l.acked.keys().rev().take(2).copied().collect();
    for id in lost {
        l.retire(id);
    }
    l.check_reads(&s);
    let sent = l.post(&mut s.conn(), 20, SECS_10);
    assert_eq!(sent.created.len(), 20, "{sent:?}");
    s.stop_ok();
    l.verify(dir.path(), 1);
}

/// Issue 9, case 2: SO_REUSEPORT let a second usaged join a port another one served, and both
/// handed out the same ids. A second server (own data directory) exits 1 with one line saying
/// `already in use` and the address; the same for a port some other program holds.
#[test]
fn a_second_server_on_a_taken_port_exits_1_already_in_use() {
    let _g = shared();
    let (a_dir, b_dir) = (TempDir::new(), TempDir::new());
    let mut a = Usaged::start(a_dir.path(), 2, &[]);
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other_port = other.local_addr().unwrap().port();
    for (port, holder) in [(a.port, "another usaged"), (other_port, "a plain listener")] {
        let mut args = serve_args(b_dir.path(), 2, &[]);
        args[1] = port.to_string();
        let (st, err) = match launch(Wrap::Plain, &args) {
            Start::Exited { status, stderr } => (status, stderr),
            Start::Up(mut b) => {
                b.kill9();
                panic!(
                    "a second usaged listens on port {port} held by {holder}:\n{}",
                    b.log()
                );
            }
        };
        assert_eq!(
            st.code(),
            Some(1),
            "port held by {holder}: exit {st}\n{err}"
        );
        let lines: Vec<&str> = err
            .lines()
            .filter(|x| x.contains("already in use"))
            .collect();
        assert_eq!(lines.len(), 1, "port held by {holder}: stderr\n{err}");
        assert!(
            lines[0].contains(&format!("127.0.0.1:{port}")),
            "the line does not name the address: {}",
            lines[0]
        );
    }
    let mut l = Ledger::default();
    let sent = l.post(&mut a.conn(), 10, SECS_10);
    assert_eq!(
        sent.created.len(),
        10,
        "the first server still serves: {sent:?}"
    );
    a.stop_ok();
    drop(other);
}
