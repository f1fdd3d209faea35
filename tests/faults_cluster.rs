//! Fault injection, part 4 (issue 12): `kill -9` at each step of writing `CLUSTER` (a node's
//! identity: temporary file made, written, synced, renamed), at a node's first start and at
//! its start into a new cluster epoch (a growth). After each: the node starts again with the
//! same flags, every acknowledged id reads back exactly, no id is handed out twice, and every
//! id is the node's by the owner rule of the epoch it was handed out in.

mod util;

#[path = "faults/harness.rs"]
mod harness;
#[path = "faults/ledger.rs"]
mod ledger;

use harness::{
    Start, TempDir, Usaged, Wrap, have_strace, kill_at, launch, segments, serve_args, shared,
    start_refused,
};
use ledger::Ledger;
use std::time::Duration;
use usaged::cluster::{Epoch, owner};

const CREATE: &str = "openat,open,creat";
const WRITES: &str = "write,pwrite64,writev,pwritev,pwritev2";
const SYNCS: &str = "fdatasync,fsync";
const RENAME: &str = "rename,renameat,renameat2";

/// Node 1 of a cluster of two from base 0.
const NODE: &[&str] = &["--nodes", "2", "--node", "1", "--cluster-base", "0"];
/// The same node grown into a cluster of three from base 2^40.
const GROWN: &[&str] = &[
    "--nodes",
    "3",
    "--node",
    "1",
    "--cluster-base",
    "1099511627776",
];
const EPOCHS: [Epoch; 2] = [
    Epoch { base: 0, nodes: 2 },
    Epoch {
        base: 1 << 40,
        nodes: 3,
    },
];

/// `CLUSTER`'s temporary file in `dir` (made, written, synced, renamed; `CLUSTER` itself
/// is only read, which is not what is aimed at).
fn cluster_paths(dir: &std::path::Path) -> Vec<String> {
    vec![format!("{}.tmp", dir.join("CLUSTER").display())]
}

/// Every id `l` acknowledged is node 1's.
fn all_node_1(l: &Ledger) {
    for &id in l.acked.keys() {
        assert_eq!(owner(id, &EPOCHS), Some(1), "id {id}");
    }
}

#[test]
fn kill_9_while_cluster_is_written_loses_no_identity() {
    let _g = shared();
    if !have_strace() {
        return;
    }
    for (set, when) in [(CREATE, 1), (WRITES, 1), (SYNCS, 1), (RENAME, 1)] {
        println!("SIGKILL at call {when} of {set} on CLUSTER, first start:");
        let dir = TempDir::new();
        let mut l = Ledger::default();
        let killed = l.crash_run(
            dir.path(),
            kill_at(set, when, &cluster_paths(dir.path())),
            NODE,
        );
        assert!(killed, "the first start writes CLUSTER");
        l.verify_with(dir.path(), 1, NODE);
        all_node_1(&l);

        println!("SIGKILL at call {when} of {set} on CLUSTER, growth:");
        let killed = l.crash_run(
            dir.path(),
            kill_at(set, when, &cluster_paths(dir.path())),
            GROWN,
        );
        assert!(killed, "a start into a new epoch writes CLUSTER");
        l.verify_with(dir.path(), 1, GROWN);
        assert!(
            l.acked.keys().any(|&id| id > 1 << 40),
            "ids went on in the new epoch"
        );
        all_node_1(&l);
        let new_epoch = segments(dir.path()).iter().any(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("e1099511627776-s3-")
        });
        assert!(new_epoch, "a segment of epoch 2^40 with 3 stripes");
        // The node is in the new epoch for good: its old flags are refused.
        let (status, said) = start_refused(dir.path(), 1, NODE);
        assert!(!status.success());
        assert!(
            said.contains("is node 1 of 3") || said.contains("older"),
            "{said}"
        );
        // And the flags of the new epoch alone go on, without --cluster-base.
        go_on_without_the_base(&mut l, dir.path());
    }
}

/// Killed after `CLUSTER` names the new epoch but before its first segment exists: the next
/// start, even without `--cluster-base`, starts that epoch (not the old one).
#[test]
fn kill_9_before_a_new_epochs_first_segment_starts_it_again() {
    let _g = shared();
    if !have_strace() {
        return;
    }
    let dir = TempDir::new();
    let mut l = Ledger::default();
    let mut s = Usaged::start(dir.path(), 1, NODE);
    let sent = l.post(&mut s.conn(), 30, Duration::from_secs(10));
    assert_eq!(sent.created.len(), 30, "{sent:?}");
    s.stop_ok();
    // Made as a temporary file, then renamed.
    let first = dir.path().join("e1099511627776-s3-w1-000000.seg.tmp");
    let at = kill_at(CREATE, 1, &[first.display().to_string()]);
    let killed = l.crash_run(dir.path(), at, GROWN);
    assert!(killed, "killed at the new epoch's first segment");
    go_on_without_the_base(&mut l, dir.path());
    assert!(
        l.acked.keys().any(|&id| id > 1 << 40),
        "the new epoch was started"
    );
}

/// A start with the new epoch's `--nodes`/`--node` alone: every acknowledged id reads back,
/// ten more are handed out, all node 1's.
fn go_on_without_the_base(l: &mut Ledger, dir: &std::path::Path) {
    {
        let mut s = Usaged::start(dir, 2, &["--nodes", "3", "--node", "1"]);
        l.check_reads(&s);
        let sent = l.post(&mut s.conn(), 10, Duration::from_secs(10));
        assert_eq!(sent.created.len(), 10, "{sent:?}");
        s.stop_ok();
        all_node_1(l);
    }
}

/// A start into a new cluster epoch whose `CLUSTER` cannot be written (`ENOSPC` on its write,
/// `EIO` on its sync, injected by strace) is refused before it hands out an id, and the file
/// still names the old epoch; the same start without the fault then goes on into the new
/// one, every acknowledged id reading back and no id handed out twice.
#[test]
fn a_cluster_file_that_cannot_be_written_refuses_the_start() {
    let _g = shared();
    if !have_strace() {
        return;
    }
    for (set, error) in [(WRITES, "ENOSPC"), (SYNCS, "EIO")] {
        println!("{error} on {set} of CLUSTER, growth:");
        let dir = TempDir::new();
        let mut l = Ledger::default();
        let mut s = Usaged::start(dir.path(), 1, NODE);
        let sent = l.post(&mut s.conn(), 30, Duration::from_secs(10));
        assert_eq!(sent.created.len(), 30, "{sent:?}");
        s.stop_ok();
        let before = std::fs::read(dir.path().join("CLUSTER")).unwrap();
        let mut opts = vec![
            "-e".to_string(),
            format!("trace={set}"),
            "-e".to_string(),
            format!("inject={set}:error={error}:when=1"),
        ];
        for p in cluster_paths(dir.path()) {
            opts.extend(["-P".to_string(), p]);
        }
        match launch(Wrap::Strace(opts), &serve_args(dir.path(), 1, GROWN)) {
            Start::Exited { status, stderr } => {
                assert!(!status.success(), "{stderr}");
                assert!(stderr.contains("cannot write"), "{stderr}");
            }
            Start::Up(mut s) => {
                s.kill9();
                panic!("started though CLUSTER could not be written:\n{}", s.log());
            }
        }
        let after = std::fs::read(dir.path().join("CLUSTER")).unwrap();
        assert_eq!(before, after, "CLUSTER still names the old epoch");
        l.verify_with(dir.path(), 1, GROWN);
        assert!(l.acked.keys().any(|&id| id > 1 << 40), "the new epoch, now");
        all_node_1(&l);
    }
}
