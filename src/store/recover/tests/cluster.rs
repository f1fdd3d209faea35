//! Nodes of a cluster: each node's directory holds only its own stripes of the global layout;
//! ids never collide across nodes, node-local epochs and cluster epochs, and every id names its
//! node by the owner rule of its cluster epoch.

use super::*;
use crate::store::Lookup;
use crate::store::committer::LEASE_SLOTS;
use crate::store::ids::owner;
use proptest::prelude::*;
use std::collections::HashMap;

/// A cluster epoch: `(base, nodes)`.
type Epoch = (u64, u32);

fn node_opts(workers: u32, nodes: u32, node: u32, base: Option<u64>) -> Options {
    Options {
        cluster: Cluster { nodes, node, base },
        ..opts(workers)
    }
}

/// Segments small enough to roll a few times in a short run.
const SEG: u64 = 4096;

/// Every id of `got` (node → ids handed out) is unique over the cluster and is its node's by
/// the owner rule of the newest cluster epoch below it.
fn check_ids(got: &HashMap<u32, Vec<u64>>, epochs: &[Epoch]) {
    let mut seen = HashMap::new();
    for (&node, ids) in got {
        for &id in ids {
            if let Some(other) = seen.insert(id, node) {
                panic!("id {id} handed out by node {node} and node {other}");
            }
            let &(base, nodes) = epochs.iter().rev().find(|e| id > e.0).expect("an epoch");
            assert_eq!(
                owner(id, base, nodes),
                Some(node),
                "id {id} in epoch {base}"
            );
        }
    }
}

/// The floor a refused `--cluster-base` names: "... (up to FLOOR) ...".
fn named_floor(err: &str) -> u64 {
    let at = err.find("(up to ").expect("the floor is named") + 7;
    err[at..].split(')').next().unwrap().parse().unwrap()
}

#[test]
fn two_nodes_then_three_never_hand_out_an_id_twice() {
    let dirs: Vec<PathBuf> = (0..3).map(|_| temp_dir("cluster")).collect();
    let mut got: HashMap<u32, Vec<u64>> = HashMap::new();
    let run = |got: &mut HashMap<u32, Vec<u64>>, node: u32, o: Options, n: u64, crash| {
        let ids = run_node(&dirs[node as usize], o, n, SEG, crash).unwrap();
        got.entry(node).or_default().extend(ids);
    };
    // Two nodes with different worker counts, then a --threads change on each and a crash
    // with the lease ahead on node 0.
    run(&mut got, 0, node_opts(2, 2, 0, Some(0)), 300, false);
    run(&mut got, 1, node_opts(3, 2, 1, Some(0)), 200, false);
    run(&mut got, 0, node_opts(3, 2, 0, None), 100, true);
    // The lease is ahead: node 0 goes on in a node-local epoch past it, in its residue.
    let r = recover(&dirs[0], node_opts(3, 2, 0, None)).unwrap();
    let max0 = got[&0].iter().copied().max().unwrap();
    assert!(
        r.base > max0 + LEASE_SLOTS && r.base.is_multiple_of(2),
        "{}",
        r.base
    );
    drop(r);
    run(&mut got, 1, node_opts(1, 2, 1, None), 50, false);
    run(&mut got, 0, node_opts(3, 2, 0, None), 70, false);
    // Growth to three nodes: a base past every id handed out is still refused by node 0,
    // whose lease went further; the floor it names is taken.
    let mut b2 = got.values().flatten().copied().max().unwrap() + 1;
    for node in 0..2 {
        let o = node_opts(2, 3, node, Some(b2));
        if let Err(e) = recover(&dirs[node as usize], o) {
            assert!(e.contains("--cluster-base"), "{e}");
            b2 = b2.max(named_floor(&e) + 1);
        }
    }
    for node in 0..3 {
        run(&mut got, node, node_opts(2, 3, node, Some(b2)), 90, false);
    }
    // Later starts go on without the flag, or with it again, and change --threads.
    run(&mut got, 1, node_opts(2, 3, 1, None), 40, false);
    run(&mut got, 2, node_opts(4, 3, 2, Some(b2)), 40, true);
    run(&mut got, 2, node_opts(4, 3, 2, None), 40, false);
    let epochs = [(0, 2), (b2, 3)];
    check_ids(&got, &epochs);
    // Each node reads back its own stripes and answers Missing for the others' ids.
    for node in 0..3u32 {
        let r = recover(&dirs[node as usize], node_opts(4, 3, node, None)).unwrap();
        let held = stored(&r);
        assert!(held.keys().all(|id| got[&node].contains(id)));
        for (&other, ids) in &got {
            for &id in ids.iter().filter(|_| other != node).take(50) {
                assert_eq!(r.store.lookup(id), Lookup::Missing, "{id} on node {node}");
            }
        }
    }
    for d in dirs {
        let _ = fs::remove_dir_all(d);
    }
}

#[test]
fn a_layout_that_contradicts_the_directory_is_refused() {
    let dir = temp_dir("cluster-refuse");
    let err = run_node(&dir, node_opts(2, 2, 1, None), 20, SEG, false).unwrap_err();
    assert!(err.contains("needs --cluster-base"), "{err}");
    run_node(&dir, node_opts(2, 2, 1, Some(0)), 20, SEG, false).unwrap();
    // CLUSTER names the node it is.
    for (nodes, node) in [(2, 0), (3, 1), (1, 0)] {
        let err = recover(&dir, node_opts(2, nodes, node, None))
            .err()
            .unwrap();
        assert!(err.contains("this data directory is node 1"), "{err}");
    }
    let err = recover(&dir, node_opts(2, 2, 1, Some(5))).err().unwrap();
    assert!(
        err.contains("--cluster-base 5") && named_floor(&err) >= 40,
        "{err}"
    );
    // Without CLUSTER (lost, or a directory written before it), the segments still tell.
    fs::remove_file(dir.join(crate::store::identity::FILE)).unwrap();
    let err = recover(&dir, node_opts(2, 2, 0, None)).err().unwrap();
    assert!(err.contains("not --node 0's directory"), "{err}");
    let err = recover(&dir, node_opts(2, 3, 1, None)).err().unwrap();
    assert!(err.contains("not a multiple of --nodes 3"), "{err}");
    // Forgetting --nodes would hand out the other node's ids.
    let err = recover(&dir, node_opts(2, 1, 0, None)).err().unwrap();
    assert!(err.contains("looks like node 1 of 2"), "{err}");
    let err = recover(&dir, node_opts(65, 64, 1, None)).err().unwrap();
    assert!(err.contains("4160 stripes"), "{err}");
    // The right flags go on in the same epoch, and record CLUSTER again.
    let r = recover(&dir, node_opts(2, 2, 1, None)).unwrap();
    assert_eq!((r.base, r.records), (0, 20));
    drop(r);
    let err = recover(&dir, node_opts(2, 2, 0, None)).err().unwrap();
    assert!(err.contains("this data directory is node 1"), "{err}");
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn cluster_records_a_new_epoch_before_its_first_segment() {
    use crate::store::identity::{FILE, Identity};
    let dir = temp_dir("cluster-file");
    run_node(&dir, node_opts(1, 2, 0, Some(0)), 10, SEG, false).unwrap();
    let first = Identity::load(&dir).unwrap().unwrap();
    assert_eq!((first.base, first.nodes, first.node), (0, 2, 0));
    // A start into a new cluster epoch that dies before any segment of it exists: the next
    // start without the flag starts that epoch, not the old one with the new flags.
    let r = recover(&dir, node_opts(1, 3, 0, Some(1000))).unwrap();
    assert_eq!(r.base, 1000);
    drop(r);
    for seg in segments(&dir).iter().filter(|p| {
        let name = p.file_name().unwrap().to_str().unwrap();
        journal::parse_name_as(name, ".seg").is_some_and(|(h, _)| h.base == 1000)
    }) {
        fs::remove_file(seg).unwrap();
    }
    assert_eq!(Identity::load(&dir).unwrap().unwrap().base, 1000);
    let ids = run_node(&dir, node_opts(1, 3, 0, None), 10, SEG, false).unwrap();
    assert!(
        ids.iter()
            .all(|&id| id > 1000 && owner(id, 1000, 3) == Some(0)),
        "{ids:?}"
    );
    // The old --cluster-base given again (as a script that always passes it would) is fine
    // only while it is the recorded one; an older epoch's is refused.
    let err = recover(&dir, node_opts(1, 2, 0, Some(0))).err().unwrap();
    assert!(
        err.contains("older than this node's cluster epoch"),
        "{err}"
    );
    assert!(recover(&dir, node_opts(1, 3, 0, Some(1000))).is_ok());
    // A damaged file refuses the start.
    fs::write(dir.join(FILE), b"usaged cluster 1\nbase 1000\n").unwrap();
    let err = recover(&dir, node_opts(1, 3, 0, None)).err().unwrap();
    assert!(err.contains("CLUSTER is damaged"), "{err}");
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn an_old_directory_is_one_node_of_one() {
    let dir = temp_dir("cluster-old");
    let a = run(&dir, 3, 30);
    let b = run_node(&dir, node_opts(3, 1, 0, None), 30, SEG, false).unwrap();
    assert_eq!(b[0], a.iter().max().unwrap() + 1, "the same epoch goes on");
    let _ = fs::remove_dir_all(dir);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Random runs of the nodes of a cluster (worker counts, crashes), growing once: no id
    /// twice over the union, and every id's owner is the node that handed it out.
    #[test]
    fn ids_are_unique_across_nodes_stripes_and_epochs(
        nodes in 1u32..4,
        runs in proptest::collection::vec((0u32..8, 1u32..4, 1u64..40, any::<bool>()), 1..8),
        grow_at in 0usize..8,
    ) {
        let dirs: Vec<PathBuf> = (0..nodes + 1).map(|_| temp_dir("cluster-prop")).collect();
        let mut got: HashMap<u32, Vec<u64>> = HashMap::new();
        let mut epochs: Vec<Epoch> = vec![(0, nodes)];
        for (i, &(k, workers, n, crash)) in runs.iter().enumerate() {
            let mut base = None;
            if i == grow_at {
                // Every node starts the new epoch past every floor (the refusals name them).
                let mut b2 = got.values().flatten().copied().max().unwrap_or(0) + 1;
                for node in 0..nodes {
                    let o = node_opts(1, nodes + 1, node, Some(b2));
                    if let Err(e) = recover(&dirs[node as usize], o) {
                        b2 = b2.max(named_floor(&e) + 1);
                    }
                }
                epochs.push((b2, nodes + 1));
                base = Some(b2);
            }
            let &(b, nn) = epochs.last().unwrap();
            let node = k % nn;
            // A node's first start is told the cluster epoch's base.
            let first = fs::read_dir(&dirs[node as usize]).unwrap().next().is_none();
            let base = base.or((first && nn > 1).then_some(b));
            let o = node_opts(workers, nn, node, base);
            let ids = run_node(&dirs[node as usize], o, n, SEG, crash).unwrap();
            got.entry(node).or_default().extend(ids);
            if base.is_some() {
                // The other nodes join the new epoch too.
                for other in (0..nn).filter(|&x| x != node) {
                    let o = node_opts(1, nn, other, base);
                    let ids = run_node(&dirs[other as usize], o, 3, SEG, false).unwrap();
                    got.entry(other).or_default().extend(ids);
                }
            }
        }
        check_ids(&got, &epochs);
        for d in dirs {
            let _ = fs::remove_dir_all(d);
        }
    }
}

/// Review (issue 12): `--cluster-base B` given again (a supervisor's fixed flags) after the
/// node went on to a node-local epoch of `B` (a crash with the lease ahead, a `--threads`
/// change) goes on as without the flag, not refused as "not past every id".
#[test]
fn the_same_cluster_base_again_after_a_node_local_epoch_goes_on() {
    let dir = temp_dir("cluster-again");
    let b2 = 1000;
    let mut ids = run_node(&dir, node_opts(2, 3, 1, Some(b2)), 100, SEG, true).unwrap();
    // The lease is ahead: this start moves to a node-local epoch past it, still of `b2`.
    ids.extend(run_node(&dir, node_opts(2, 3, 1, Some(b2)), 30, SEG, false).unwrap());
    let r = recover(&dir, node_opts(2, 3, 1, None)).unwrap();
    assert!(r.base > b2 && (r.base - b2).is_multiple_of(3), "{}", r.base);
    drop(r);
    let again = run_node(&dir, node_opts(2, 3, 1, Some(b2)), 30, SEG, false);
    let again = again.unwrap_or_else(|e| panic!("the same --cluster-base is refused: {e}"));
    ids.extend(again);
    check_ids(&HashMap::from([(1, ids)]), &[(b2, 3)]);
    let _ = fs::remove_dir_all(dir);
}

/// Review (issue 12): a fresh cluster's nodes start with `--cluster-base 0`: no id is at or
/// below 0, so nothing contradicts it.
#[test]
fn cluster_base_zero_on_an_empty_directory_starts() {
    let dir = temp_dir("cluster-zero");
    let ids = run_node(&dir, node_opts(1, 2, 1, Some(0)), 5, SEG, false);
    assert_eq!(ids.unwrap(), [2, 4, 6, 8, 10]);
    let _ = fs::remove_dir_all(dir);
}

/// Review (issue 12): `--cluster-base` must not skip the check of the directory against
/// `--node`: node 1's directory started as `--node 0` when growing would hand out node 0's ids
/// of the new epoch a second time, and node 1's old ids would no longer be served by the
/// backend HAProxy sends them to. Refused with CLUSTER, and without it (lost) too.
#[test]
fn a_cluster_base_start_with_another_nodes_directory_is_refused() {
    let dirs: Vec<PathBuf> = (0..2).map(|_| temp_dir("cluster-swap")).collect();
    let old0 = run_node(&dirs[0], node_opts(2, 2, 0, Some(0)), 20, SEG, false).unwrap();
    let old1 = run_node(&dirs[1], node_opts(2, 2, 1, Some(0)), 20, SEG, false).unwrap();
    let b2 = old0.iter().chain(&old1).max().unwrap() + 1;
    let new0 = run_node(&dirs[0], node_opts(2, 3, 0, Some(b2)), 10, SEG, false).unwrap();
    for lost in [false, true] {
        if lost {
            fs::remove_file(dirs[1].join(crate::store::identity::FILE)).unwrap();
        }
        // Node 1's directory, given node 0's identity by mistake.
        let swapped = run_node(&dirs[1], node_opts(2, 3, 0, Some(b2)), 10, SEG, false);
        let twice: Vec<u64> = swapped
            .iter()
            .flatten()
            .filter(|id| new0.contains(id))
            .copied()
            .collect();
        let err = swapped.expect_err(&format!("ids {twice:?} handed out twice (lost {lost})"));
        assert!(
            err.contains("node 1") || err.contains("CLUSTER is missing"),
            "{err}"
        );
    }
    // A server alone (every stripe of its epoch) joins a cluster as node 0, not as another.
    let alone = temp_dir("cluster-alone");
    let before = run(&alone, 2, 20);
    fs::remove_file(alone.join(crate::store::identity::FILE)).unwrap();
    let err = recover(&alone, node_opts(2, 2, 1, Some(100)))
        .err()
        .unwrap();
    assert!(err.contains("CLUSTER is missing"), "{err}");
    let after = run_node(&alone, node_opts(2, 2, 0, Some(100)), 10, SEG, false).unwrap();
    assert!(
        after.iter().all(|&id| id > 100 && id % 2 == 1),
        "{after:?} after {before:?}"
    );
    for d in dirs.into_iter().chain([alone]) {
        let _ = fs::remove_dir_all(d);
    }
}

/// Ids past 2^52 (half the id space) still restart: a cluster epoch from a base just below
/// 2^52 goes on past it, over restarts and a crash with the lease ahead, up to 2^53.
#[test]
fn ids_past_half_the_id_space_still_restart() {
    let dir = temp_dir("cluster-half");
    let b = (1u64 << 52) - 10;
    let mut ids = run_node(&dir, node_opts(2, 2, 1, Some(b)), 40, SEG, true).unwrap();
    for _ in 0..2 {
        ids.extend(run_node(&dir, node_opts(2, 2, 1, None), 40, SEG, false).unwrap());
    }
    assert!(ids.iter().any(|&id| id > 1 << 52), "{ids:?}");
    check_ids(&HashMap::from([(1, ids)]), &[(b, 2)]);
    let _ = fs::remove_dir_all(dir);
}

/// A node whose `CLUSTER` is gone (a directory from before the file, or one removed as the
/// "damaged" refusal says) restarted the way `scripts/cluster.sh` restarts every node, with
/// its cluster epoch's `--cluster-base` given again: it goes on in its epoch (the segments
/// prove the node, as they do without the flag) instead of being refused at every start.
#[test]
fn a_lost_cluster_file_with_the_same_cluster_base_goes_on() {
    let dir = temp_dir("cluster-lost");
    let mut ids = run_node(&dir, node_opts(2, 2, 1, Some(0)), 20, SEG, false).unwrap();
    // A crash with the lease ahead: a node-local epoch, same residue.
    ids.extend(run_node(&dir, node_opts(2, 2, 1, None), 20, SEG, true).unwrap());
    fs::remove_file(dir.join(crate::store::identity::FILE)).unwrap();
    let more = run_node(&dir, node_opts(2, 2, 1, Some(0)), 20, SEG, false);
    ids.extend(more.unwrap_or_else(|e| panic!("refused: {e}")));
    check_ids(&HashMap::from([(1, ids)]), &[(0, 2)]);
    // Still refused as another node, and for a new cluster epoch it cannot prove.
    fs::remove_file(dir.join(crate::store::identity::FILE)).unwrap();
    let err = recover(&dir, node_opts(2, 2, 0, Some(0))).err().unwrap();
    assert!(err.contains("not --node 0's directory"), "{err}");
    let err = recover(&dir, node_opts(2, 3, 1, Some(1 << 40)))
        .err()
        .unwrap();
    assert!(err.contains("CLUSTER is missing"), "{err}");
    let _ = fs::remove_dir_all(dir);
}

/// A growth's `--cluster-base` that happens to be the base of the node's own latest epoch (a
/// node-local one: a crash, a `--threads` change) is a new cluster epoch, not that epoch
/// given again: refused naming the floor past the epoch's lease (for the operator, or
/// `scripts/cluster.sh`, to pick a larger base), not with a layout complaint.
#[test]
fn a_growth_base_equal_to_a_node_local_epoch_names_the_floor() {
    let dir = temp_dir("cluster-coincide");
    run_node(&dir, node_opts(1, 2, 0, Some(0)), 16, SEG, false).unwrap();
    // A --threads change starts a node-local epoch; a crash leaves its lease ahead.
    run_node(&dir, node_opts(2, 2, 0, None), 4, SEG, true).unwrap();
    let latest = segments(&dir)
        .iter()
        .filter_map(|p| journal::parse_name_as(p.file_name()?.to_str()?, ".seg"))
        .map(|(h, _)| h.base)
        .max()
        .unwrap();
    assert!(latest > 0);
    let err = recover(&dir, node_opts(1, 3, 0, Some(latest)))
        .err()
        .unwrap();
    assert!(err.contains("(up to "), "{err}");
    assert!(named_floor(&err) >= latest, "{err}");
    let _ = fs::remove_dir_all(dir);
}
