//! Phase 3 of recovery: which epochs the store has, and whether the last one goes on or a new
//! one starts (and at which base). In a cluster ([`Cluster`]) a node's epochs keep the
//! cluster's owner rule: every base of one cluster epoch is `≡ B (mod N)`, so a node's new
//! epoch (a crash with a lease ahead, a `--threads` change, a repair) hands out only ids of its
//! own residue; `--cluster-base` starts a new cluster epoch (growth).

use std::collections::BTreeMap;

use super::super::committer::LEASE_SLOTS;
use super::super::identity::{self, Identity};
use super::super::ids::{Layout, MAX_ID};
use super::super::journal::MIN_RECORD;
use super::super::retention::Marks;
use super::{StripeKey, StripeScan};

/// This node's place in the cluster (`--nodes`, `--node`, `--cluster-base`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cluster {
    pub nodes: u32,
    pub node: u32,
    /// Start a new cluster epoch at this base (it must be past every id this node issued).
    pub base: Option<u64>,
}

impl Cluster {
    /// A server alone: every directory written before clusters is one of these.
    pub const SINGLE: Cluster = Cluster {
        nodes: 1,
        node: 0,
        base: None,
    };

    /// The layout of this node's epochs with `workers` stripes of its own.
    pub fn layout(&self, workers: u32) -> Layout {
        Layout {
            nodes: self.nodes,
            node: self.node,
            workers,
        }
    }
}

/// The epochs to build and whether the last one is new.
pub(super) struct Plan {
    /// Epochs that hold records, by base, then the current one.
    pub epochs: Vec<(u64, u32)>,
    /// The current epoch is new (its stripes start empty).
    pub fresh: bool,
}

/// Phase 3: order the epochs and decide whether the last continues (see the module doc).
/// `read_only` (export): no id is handed out, so the layout of the flags is not checked
/// against the directory's.
pub(super) fn plan(
    scans: &BTreeMap<StripeKey, StripeScan>,
    layout: Layout,
    cluster_base: Option<u64>,
    marks: &Marks,
    read_only: bool,
) -> Result<Plan, String> {
    let id_floor = marks.id_floor;
    let removed_bases: Vec<u64> = marks.below.keys().map(|k| k.base).collect();
    // Every id any earlier run may have handed out lies at or below `floor` (retention's
    // floor covers the ids of segments it removed).
    let mut floor = id_floor;
    let mut holding: BTreeMap<(u64, u32), bool> = BTreeMap::new();
    let mut unclean: BTreeMap<(u64, u32), bool> = BTreeMap::new();
    for (&(base, n, _), s) in scans {
        floor = floor.max(top(base, n, s));
        *holding.entry((base, n)).or_default() |= s.records > 0;
        // A lease ahead of the last record: ids past it may have been acknowledged and lost.
        // Records and no lease at all: a version-1 journal, whose crashes left no trace.
        let no_lease = s.records > 0 && s.lease == 0;
        *unclean.entry((base, n)).or_default() |=
            s.lease > s.last_id || s.lost_bytes > 0 || no_lease;
    }
    // Ids go up to 2^53 (a running writer refuses past it); a start with none left for this
    // node would only answer 503.
    if floor >= MAX_ID - u64::from(layout.nodes) {
        return Err(format!(
            "ids reach {floor}: the id space (2^53) is used up; refusing to start"
        ));
    }
    let mut epochs: Vec<(u64, u32)> = holding
        .iter()
        .filter(|(_, has)| **has)
        .map(|(&k, _)| k)
        .collect();
    for w in epochs.windows(2) {
        if w[0].0 == w[1].0 {
            return Err(format!(
                "two epochs with records start at id {} ({} and {} stripes): the data directory mixes two stores",
                w[0].0, w[0].1, w[1].1
            ));
        }
    }
    let latest = latest_layout(scans, marks);
    match cluster_base {
        // Export: the latest epoch already is this cluster epoch, the flag given again. (A
        // start gets `--cluster-base` from `resolve` only for a new cluster epoch: one at the
        // base of a node-local epoch is no continuation of it.)
        Some(b) if read_only && latest.is_some_and(|(base, _)| base == b) => {}
        Some(b) => {
            let at_or_below_latest = latest.is_some_and(|(base, _)| base >= b);
            if b < floor || at_or_below_latest || b >= MAX_ID / 2 {
                return Err(format!(
                    "--cluster-base {b} must be past every id this node handed out or leased \
                     (up to {floor}) and below {}",
                    MAX_ID / 2
                ));
            }
            epochs.push((b, layout.stripes()));
            return Ok(Plan {
                epochs,
                fresh: true,
            });
        }
        None => {}
    }
    if let Some(key) = latest.filter(|_| !read_only) {
        check_layout(&traces(scans, marks, key), key, layout)?;
    }
    let continues = epochs.last().is_some_and(|&(base, n)| {
        let max_of_others = scans
            .iter()
            .filter(|(k, _)| (k.0, k.1) != (base, n))
            .map(|(&(b, n, _), s)| top(b, n, s))
            .max()
            .unwrap_or(0);
        // Every stripe of this node must still have a segment (one retention emptied has no
        // lease or last id left to go on from), and no epoch retention removed may lie above
        // this one.
        let all_stripes = (0..n)
            .filter(|&g| layout.owns(g))
            .all(|g| scans.contains_key(&(base, n, g)));
        let none_removed_above = removed_bases.iter().all(|&b| b <= base);
        n == layout.stripes()
            && all_stripes
            && none_removed_above
            && !unclean[&(base, n)]
            && max_of_others <= base
    });
    if continues {
        return Ok(Plan {
            epochs,
            fresh: false,
        });
    }
    let base = match latest {
        _ if layout.nodes == 1 => floor,
        Some((b, _)) => next_base(floor, b, layout.nodes),
        None if floor == 0 => 0,
        None => {
            return Err(format!(
                "ids reach {floor} but no epoch is left to tell this node's residue mod \
                 --nodes {}: pass --cluster-base (past every id of the cluster)",
                layout.nodes
            ));
        }
    };
    epochs.push((base, layout.stripes()));
    Ok(Plan {
        epochs,
        fresh: true,
    })
}

/// The smallest `x ≥ floor` with `x ≡ base (mod nodes)`.
pub(super) fn next_base(floor: u64, base: u64, nodes: u32) -> u64 {
    let n = u64::from(nodes);
    floor + (base % n + n - floor % n) % n
}

/// `(base, stripes)` of the newest epoch this node has any trace of: a segment (with records
/// or not) or a retention mark.
fn latest_layout(scans: &BTreeMap<StripeKey, StripeScan>, marks: &Marks) -> Option<(u64, u32)> {
    let from_scans = scans.keys().map(|&(b, n, _)| (b, n));
    let from_marks = marks.below.keys().map(|k| (k.base, k.stripes));
    from_scans.chain(from_marks).max()
}

/// The stripes of epoch `(base, n)` this directory has a trace of: a segment or a retention
/// mark.
fn traces(
    scans: &BTreeMap<StripeKey, StripeScan>,
    marks: &Marks,
    (base, n): (u64, u32),
) -> Vec<u32> {
    let from_scans = scans.keys().map(|&(b, m, g)| ((b, m), g));
    let from_marks = marks.below.keys().map(|k| ((k.base, k.stripes), k.stripe));
    let mut v: Vec<u32> = from_scans
        .chain(from_marks)
        .filter(|&(e, _)| e == (base, n))
        .map(|(_, g)| g)
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The newest epoch must be one this node (`--nodes`, `--node`) could have written: its
/// stripes a multiple of the nodes, and every stripe of it on disk (`traces`) this node's.
/// A directory whose stripes (two or more) are exactly every `d`-th one, `d` past `--nodes`,
/// is a node of `d` started with the wrong `--nodes` (an `--nodes 1` start of it would give
/// the other nodes' ids again): refused too. (A node of one worker cannot be told apart.)
fn check_layout(traces: &[u32], (base, n): (u64, u32), layout: Layout) -> Result<(), String> {
    if n % layout.nodes != 0 {
        return Err(format!(
            "the latest epoch (base {base}) has {n} stripes, not a multiple of --nodes {}: \
             start with the --nodes it was written with, or pass --cluster-base",
            layout.nodes
        ));
    }
    if let Some(&g) = traces.iter().find(|&&g| !layout.owns(g)) {
        return Err(format!(
            "the latest epoch (base {base}) holds stripe {g} of {n}, node {}'s with --nodes {}: \
             this is not --node {}'s directory (or --nodes is wrong)",
            g % layout.nodes,
            layout.nodes,
            layout.node
        ));
    }
    let Some(&first) = traces.first() else {
        return Ok(());
    };
    let d = traces.iter().fold(n, |d, &g| gcd(d, g - first));
    // One stripe alone proves nothing: retention may have left no trace of the others.
    if d > layout.nodes && traces.len() >= 2 && traces.len() as u32 == n / d {
        return Err(format!(
            "the latest epoch (base {base}) holds only every {d}th of its {n} stripes, from \
             {first}: it looks like node {} of {d}, not --node {} of --nodes {} (pass \
             --cluster-base to start a new layout)",
            first % d,
            layout.node,
            layout.nodes
        ));
    }
    Ok(())
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The highest id a stripe may have handed out: its last record or lease, or, when bytes of
/// it could not be read (moved aside), a bound on the ids they could hold: at most one record
/// per `MIN_RECORD` bytes, each a slot further, and a lease at most `LEASE_SLOTS` slots past.
pub(super) fn top(base: u64, stripes: u32, s: &StripeScan) -> u64 {
    let known = base.max(s.last_id).max(s.lease);
    if s.lost_bytes == 0 {
        return known;
    }
    let slots = s.lost_bytes / MIN_RECORD as u64 + 1 + LEASE_SLOTS;
    known.saturating_add(slots.saturating_mul(u64::from(stripes)))
}

/// What this start writes into `CLUSTER` once its plan stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Record {
    /// The file already says it.
    Unchanged,
    /// A new cluster epoch from this base.
    At(u64),
    /// No file yet: the base of the epoch the plan continues or starts (a base of the same
    /// cluster epoch: same owner rule).
    Current,
}

/// Check this start's flags against the directory's `CLUSTER` file (`file`) and say which
/// `--cluster-base` [`plan`] gets and what to record. `latest`: the base of the newest epoch
/// with any trace on disk; `empty`: no trace of any epoch.
///
/// - With a file: `--node`/`--nodes` must be the file's unless `--cluster-base` starts a
///   newer cluster epoch; an older `--cluster-base` is refused, and the file's own (or one of
///   its node epochs, same residue) counts as given again. A recorded epoch with no segment
///   yet (a crash right after the file was written) is started again at its base.
/// - A node's number never changes (its old ids are routed to it by number): `--node` must
///   be the file's even with a new `--cluster-base`.
/// - Without one: a new node of a cluster of more than one must be given `--cluster-base`
///   (base 0 could repeat the ids of an epoch the cluster has outgrown). A directory with
///   segments but no file was a server alone (`alone`: its newest epoch has every stripe),
///   node 0, or a node whose file was lost: a new `--cluster-base` is refused for it unless it
///   is the first (the server alone) becoming node 0; its current one given again (`latest`
///   at or past it, same residue) goes on as without the flag, the segments checking the node.
pub(super) fn resolve(
    file: Option<Identity>,
    cluster: Cluster,
    latest: Option<u64>,
    empty: bool,
    alone: bool,
) -> Result<(Option<u64>, Record), String> {
    let Some(f) = file else {
        // The flag names the epoch the segments already go on in (its base, or below a
        // node-local epoch of its residue): given again, checked by the segments as without it.
        let again = |b: u64| {
            latest.is_some_and(|l| l >= b && (l - b).is_multiple_of(u64::from(cluster.nodes)))
        };
        if let Some(b) = cluster.base.filter(|&b| !again(b)) {
            let server_alone_as_node_0 = alone && cluster.node == 0;
            if !(empty || server_alone_as_node_0) {
                return Err(format!(
                    "{} is missing and the segments cannot prove this directory is --node {}: \
                     restore {} (a server alone joins a cluster as --node 0)",
                    identity::FILE,
                    cluster.node,
                    identity::FILE
                ));
            }
            return Ok((Some(b), Record::At(b)));
        }
        if let Some(b) = cluster.base {
            return Ok((None, Record::At(b)));
        }
        if empty && cluster.nodes > 1 {
            return Err(format!(
                "a new node of a cluster of {} nodes needs --cluster-base: 0 if the whole \
                 cluster starts new, else past every id the cluster has issued (see the \
                 README's growth procedure)",
                cluster.nodes
            ));
        }
        return Ok((None, Record::Current));
    };
    if cluster.node != f.node {
        return Err(format!(
            "this data directory is node {} (of {}, cluster epoch base {}, in {}): a node keeps \
             its number in every epoch; start it with --node {}",
            f.node,
            f.nodes,
            f.base,
            identity::FILE,
            f.node
        ));
    }
    match cluster.base {
        Some(b) if b > f.base => return Ok((Some(b), Record::At(b))),
        Some(b) if (f.base - b) % u64::from(f.nodes) != 0 => {
            return Err(format!(
                "--cluster-base {b} is older than this node's cluster epoch (base {}, in {})",
                f.base,
                identity::FILE
            ));
        }
        _ => {}
    }
    if (cluster.nodes, cluster.node) != (f.nodes, f.node) {
        return Err(format!(
            "this data directory is node {} of {} (cluster epoch base {}, in {}): start it \
             with --node {} --nodes {}, or start a new cluster epoch with --cluster-base",
            f.node,
            f.nodes,
            f.base,
            identity::FILE,
            f.node,
            f.nodes
        ));
    }
    let started = latest.is_some_and(|l| l >= f.base);
    Ok((if started { None } else { Some(f.base) }, Record::Unchanged))
}

/// Whether the newest epoch on disk has a trace of every one of its stripes (a server alone
/// writes them all; a node of a cluster only its own).
pub(super) fn alone(scans: &BTreeMap<StripeKey, StripeScan>, marks: &Marks) -> bool {
    latest_layout(scans, marks).is_some_and(|key| traces(scans, marks, key).len() == key.1 as usize)
}

/// The base of the newest epoch with a segment or a retention mark.
pub(super) fn latest_base(scans: &BTreeMap<StripeKey, StripeScan>, marks: &Marks) -> Option<u64> {
    latest_layout(scans, marks).map(|(b, _)| b)
}
