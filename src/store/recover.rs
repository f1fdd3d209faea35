//! Recovery: find every journal segment and what it holds, so every acknowledged usage is
//! readable again (from its segment, through the segment table) and no id is handed out
//! twice. A sealed segment with a valid index (`.idx`, see [`super::index`]) is known by that
//! index's header alone: none of its records is read at start. Only segments without one (the
//! tail a crash left, one written by an earlier version, one whose index is missing or bad)
//! are read and checked, then indexed. In named phases:
//!
//! 1. `list`: find the segments by name, header (one read of 32 bytes) and length, and their
//!    indexes (one read of 96 bytes each). A `*.tmp` file (a segment or index whose creation a
//!    crash cut short), a file shorter than a header, an index without its segment and an
//!    invalid index are removed. A header that fails its checks, or disagrees with its file
//!    name, is corruption.
//! 2. `check_stripe`: walk each stripe's segments in order. Slots must continue from segment
//!    to segment and, in a scanned segment, record by record (a missing segment in the middle
//!    is corruption; a missing beginning is reported). A torn tail (see [`journal::scan`]) is
//!    cut back with a warning; corruption stops the start with an error naming file and
//!    offset, unless `repair`: then everything before it is kept and the rest of the stripe is
//!    moved aside as `*.corrupt-OFFSET`. Each scanned segment is synced and indexed. A stripe
//!    with segments to read is checked on a thread of its own.
//! 3. `plan`: the epochs, ordered by the ids they hold (empty ones are dropped). The last
//!    epoch continues only when this run has its stripe count and none of its stripes may have
//!    handed out ids past its last record (a lease ahead of it, or a repair that moved records
//!    aside); otherwise a new epoch starts past every id and lease seen, and past every id the
//!    moved-aside bytes could hold. In a cluster ([`Cluster`]) a node has only its own stripes
//!    of each epoch (of `--nodes` × its workers, every `--nodes`-th from `--node`); its new
//!    epoch's base keeps the residue of the last one mod `--nodes`, or is `--cluster-base`; a
//!    directory that contradicts `--nodes`/`--node` is refused.
//! 4. `build`: the segment table (every kept segment, sealed) and an empty store: the current
//!    epoch's stripes go on at their next slot; every usage stored before lies in a segment
//!    (cold). Nothing is read back into memory.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::identity::{self, Identity};
use super::ids;
use super::journal::{self, End, HEADER_LEN, Header, MAX_STRIPES, Record};
use super::retention::{self, Marks};
use super::segments::{self, Segments};
use super::{EpochLayout, Store, StripeWriter};

mod list;
mod plan;
mod summary;
use list::list;
pub use plan::Cluster;
use plan::{Plan, plan};
use summary::check_stripe;

/// What recovery found and built.
pub struct Recovered {
    pub store: Arc<Store>,
    /// One writer per worker (its stripe of the current epoch: [`ids::Layout::global_stripe`]),
    /// continuing where the journal ended.
    pub writers: Vec<StripeWriter>,
    /// How each worker's stripe's journal continues.
    pub journals: Vec<Continue>,
    /// The current epoch's base.
    pub base: u64,
    /// Usages in the store: in every kept segment.
    pub records: u64,
    /// Every kept segment, sealed, by stripe in slot order (its index entries in RAM only
    /// where its `.idx` was not written: read-only, or a failed write).
    pub segments: Arc<Segments>,
    /// Segments known by their index alone (no record read).
    pub by_index: u64,
    /// Bytes of segments read and checked record by record (those without a valid index).
    pub scanned_bytes: u64,
    pub elapsed: Duration,
    /// Torn tails cut, empty files removed, corruption moved aside: one line each.
    pub warnings: Vec<String>,
    /// Corruption was found (and skipped, read-only, or moved aside, with `repair`).
    pub corrupt: bool,
    /// Retention's low-water marks (`RETAINED`), as found.
    pub marks: Marks,
}

/// Where a current stripe's journal goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Continue {
    /// The segment number this run writes (one past every existing one of the stripe).
    pub seq: u32,
    /// The stripe's durable lease and its last id.
    pub lease: u64,
    pub last_id: u64,
    /// The stripe's next slot: the first usage this run stores there.
    pub next_slot: u64,
}

/// Options for [`recover`].
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Stripes (workers) of this run: this node's stripes of an epoch.
    pub stripes: u32,
    /// This node's place in the cluster ([`Cluster::SINGLE`]: a server alone).
    pub cluster: Cluster,
    /// Keep what comes before a bad record instead of refusing to start.
    pub repair: bool,
    /// Change nothing on disk (export): torn tails and bad records are skipped, not cut.
    pub read_only: bool,
    /// `--cache`: RAM for the current epoch's stripes.
    pub cache_bytes: u64,
}

/// `(base, stripes, stripe)`: which stripe of which epoch a segment belongs to (`stripes`
/// and `stripe` global: every node's stripes of the epoch).
type StripeKey = (u64, u32, u32);

/// A segment file as phase 1 finds it: nothing read but its header.
struct Segment {
    path: PathBuf,
    seq: u32,
    /// The file's length.
    len: u64,
    /// Its header was bad: the whole file is corrupt.
    header_bad: bool,
    /// The header of its index, if it has a valid one.
    index: Option<super::index::Meta>,
}

/// What one stripe's segments hold after checking.
#[derive(Default)]
struct StripeScan {
    /// The kept segments, sealed, in order.
    sealed: Vec<segments::Sealed>,
    /// The slot of the first record, and the number of records.
    start: Option<u64>,
    records: u64,
    last_id: u64,
    lease: u64,
    /// Bytes moved aside (or skipped, read-only): ids in them are unknown.
    lost_bytes: u64,
    next_seq: u32,
    /// Segments known by their index alone; bytes of the ones read.
    by_index: u64,
    scanned_bytes: u64,
}

/// Rebuild the store from the segments in `dir` (which must exist).
pub fn recover(dir: &Path, opt: Options) -> Result<Recovered, String> {
    let node = opt.cluster.layout(opt.stripes);
    if u64::from(node.nodes) * u64::from(node.workers) > u64::from(MAX_STRIPES) {
        // A segment header names the epoch's stripes: past the bound, no start could read it.
        return Err(format!(
            "--nodes {} with {} workers makes {} stripes, more than the journal's {MAX_STRIPES}: \
             use fewer --threads",
            node.nodes,
            node.workers,
            u64::from(node.nodes) * u64::from(node.workers)
        ));
    }
    let started = Instant::now();
    let mut warnings = Vec::new();
    let mut corrupt = false;
    let (by_stripe, aside) = list(dir, opt, &mut warnings)?;
    let mut scans: BTreeMap<StripeKey, StripeScan> = BTreeMap::new();
    let (mut marks, rebuild) = load_marks(dir, &mut warnings)?;
    for (key, (scan, w, c)) in check_stripes(by_stripe, opt, &marks) {
        warnings.extend(w);
        corrupt |= c;
        let mut scan = scan?;
        let (base, stripes, stripe) = key;
        let mark = marks.below.get(&Header {
            base,
            stripes,
            stripe,
        });
        let mark = (mark.copied().unwrap_or(0), marks.id_floor);
        finish_removal(&mut scan, mark, dir, opt, &mut warnings);
        scans.insert(key, scan);
    }
    if rebuild {
        // Each stripe's first slot left is where retention had got to.
        for (&(base, stripes, stripe), scan) in &scans {
            if let Some(st) = scan.start.filter(|&st| st > 0) {
                let key = Header {
                    base,
                    stripes,
                    stripe,
                };
                marks.below.insert(key, st);
            }
        }
    }
    // Bytes moved aside by an earlier repair still count: ids in them are never given again
    // (the repair's new epoch, once its segments exist, records that floor too). They are
    // not corruption found now: `export` warns about them and still exits 0.
    for (key, bytes) in aside {
        scans.entry(key).or_default().lost_bytes += bytes;
    }
    let layout = opt.cluster.layout(opt.stripes);
    let plan = if opt.read_only {
        plan(&scans, layout, opt.cluster.base, &marks, true)?
    } else {
        plan_and_record(dir, &scans, opt.cluster, layout, &marks)?
    };
    if plan.fresh && !scans.is_empty() && !opt.read_only {
        let &(base, n) = plan.epochs.last().expect("an epoch");
        warnings.push(format!(
            "ids go on in a new epoch past {base} with {n} stripes (the stripe count changed, \
             the last run stopped without releasing its id lease, or records were moved aside)"
        ));
    }
    let found = Found {
        dir,
        started,
        warnings,
        corrupt,
        marks,
    };
    build(plan, scans, opt, found)
}

/// Phase 3 for a start that may hand out ids: checked against the directory's `CLUSTER`
/// ([`plan::resolve`]), planned, and the identity recorded durably when it is new, before any
/// id of it is handed out.
fn plan_and_record(
    dir: &Path,
    scans: &BTreeMap<StripeKey, StripeScan>,
    cluster: Cluster,
    layout: ids::Layout,
    marks: &Marks,
) -> Result<Plan, String> {
    let file = Identity::load(dir)?;
    let empty = scans.is_empty() && marks.below.is_empty() && marks.id_floor == 0;
    let latest = plan::latest_base(scans, marks);
    let alone = plan::alone(scans, marks);
    let (base, record) = plan::resolve(file, cluster, latest, empty, alone)?;
    let plan = plan(scans, layout, base, marks, false)?;
    let base = match record {
        plan::Record::Unchanged => return Ok(plan),
        plan::Record::At(b) => b,
        plan::Record::Current => plan.epochs.last().map_or(0, |e| e.0),
    };
    let id = Identity {
        base,
        nodes: cluster.nodes,
        node: cluster.node,
    };
    id.store(dir)
        .map_err(|e| format!("cannot write {}: {e}", dir.join(identity::FILE).display()))?;
    Ok(plan)
}

/// What `check_stripe` found of one stripe, its warnings, and whether it found corruption.
type Checked = (Result<StripeScan, String>, Vec<String>, bool);

/// A stripe's check: done here, or running on its own thread.
enum Pending<'scope> {
    Done(Checked),
    Running(std::thread::ScopedJoinHandle<'scope, Checked>),
}

/// Phase 2 for every stripe, in stripe order: a stripe with a segment to read (one without a
/// valid index) on a thread of its own, the others (index headers only) on this one.
fn check_stripes(
    by_stripe: BTreeMap<StripeKey, Vec<Segment>>,
    opt: Options,
    marks: &Marks,
) -> Vec<(StripeKey, Checked)> {
    let check = move |key: StripeKey, segs, mark: u64| {
        let (mut warnings, mut corrupt) = (Vec::new(), false);
        let scan = check_stripe(key, segs, opt, mark, &mut warnings, &mut corrupt);
        (scan, warnings, corrupt)
    };
    std::thread::scope(|threads| {
        let started: Vec<_> = by_stripe
            .into_iter()
            .map(|(key, segs)| {
                let (base, stripes, stripe) = key;
                let mark = marks
                    .below
                    .get(&Header {
                        base,
                        stripes,
                        stripe,
                    })
                    .copied()
                    .unwrap_or(0);
                if segs.iter().any(|s| s.index.is_none()) {
                    (
                        key,
                        Pending::Running(threads.spawn(move || check(key, segs, mark))),
                    )
                } else {
                    (key, Pending::Done(check(key, segs, mark)))
                }
            })
            .collect();
        started
            .into_iter()
            .map(|(key, c)| match c {
                Pending::Done(checked) => (key, checked),
                Pending::Running(t) => (key, t.join().expect("a stripe's check panicked")),
            })
            .collect()
    })
}

/// What recovery carries into `build` besides the plan.
struct Found<'a> {
    dir: &'a Path,
    started: Instant,
    warnings: Vec<String>,
    corrupt: bool,
    marks: Marks,
}

/// Phase 4: the segment table, and the store: empty, its current epoch's stripes at their
/// next slot, old epochs' stripes at their end (every slot before is in a segment).
fn build(
    plan: Plan,
    mut scans: BTreeMap<StripeKey, StripeScan>,
    opt: Options,
    found: Found,
) -> Result<Recovered, String> {
    let current = plan.epochs.len() - 1;
    let mark = |(base, stripes, stripe): StripeKey| {
        let key = Header {
            base,
            stripes,
            stripe,
        };
        found.marks.below.get(&key).copied().unwrap_or(0)
    };
    // A stripe goes on past its records and past what retention removed (all of it, maybe).
    let next = |scans: &BTreeMap<StripeKey, StripeScan>, key| {
        let held = scans
            .get(&key)
            .map_or(0, |x: &StripeScan| x.start.unwrap_or(0) + x.records);
        held.max(mark(key))
    };
    let layout: Vec<EpochLayout> = plan
        .epochs
        .iter()
        .enumerate()
        .map(|(e, &(base, n))| {
            let fresh = e == current && plan.fresh;
            let starts: Vec<u64> = (0..n)
                .map(|s| if fresh { 0 } else { next(&scans, (base, n, s)) })
                .collect();
            let ends = (e != current).then(|| starts.clone());
            EpochLayout { base, starts, ends }
        })
        .collect();
    let layout = with_removed_epochs(layout, &found.marks);
    let node = opt.cluster.layout(opt.stripes);
    let store = Arc::new(Store::for_node(&layout, opt.cache_bytes, true, node));
    // Ids below a stripe's mark answer 410.
    for (e, l) in layout.iter().enumerate() {
        for s in 0..l.starts.len() as u32 {
            let m = mark((l.base, l.starts.len() as u32, s));
            store
                .link(e, s)
                .expired_below
                .store(m, std::sync::atomic::Ordering::Release);
        }
    }
    let current = layout.len() - 1;
    let table = Arc::new(Segments::new(found.dir.to_path_buf()));
    let (mut records, mut by_index, mut scanned_bytes) = (0, 0, 0);
    for scan in scans.values_mut() {
        records += scan.records;
        by_index += scan.by_index;
        scanned_bytes += scan.scanned_bytes;
        for sealed in std::mem::take(&mut scan.sealed) {
            table.insert(sealed).map_err(|e| format!("recovery: {e}"))?;
        }
    }
    let (base, n) = *plan.epochs.last().expect("a current epoch");
    let mut writers = Vec::with_capacity(opt.stripes as usize);
    let mut journals = Vec::with_capacity(opt.stripes as usize);
    for w in 0..opt.stripes {
        let s = node.global_stripe(w);
        writers.push(store.epoch_writer(current, s));
        let scan = scans.get(&(base, n, s));
        journals.push(match scan {
            Some(x) if !plan.fresh => Continue {
                seq: x.next_seq,
                lease: x.lease,
                last_id: x.last_id,
                next_slot: next(&scans, (base, n, s)),
            },
            // A new epoch: every stripe starts at slot 0.
            _ => Continue {
                seq: scan.map_or(0, |x| x.next_seq),
                lease: 0,
                last_id: 0,
                next_slot: if plan.fresh {
                    0
                } else {
                    next(&scans, (base, n, s))
                },
            },
        });
    }
    Ok(Recovered {
        store,
        writers,
        journals,
        base,
        records,
        segments: table,
        by_index,
        scanned_bytes,
        elapsed: found.started.elapsed(),
        warnings: found.warnings,
        corrupt: found.corrupt,
        marks: found.marks,
    })
}

/// Retention's marks, and whether they must be rebuilt from the segments left (`RETAINED`
/// is damaged: a warning). A file that cannot be read refuses the start: starting without
/// its marks would answer `404` where `410` was answered.
fn load_marks(dir: &Path, warnings: &mut Vec<String>) -> Result<(Marks, bool), String> {
    let path = dir.join(retention::FILE);
    match fs::read(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((Marks::default(), false)),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        Ok(b) => match Marks::decode(&b) {
            Ok(m) => Ok((m, false)),
            Err(e) => {
                warnings.push(format!(
                    "{}: {e}; rebuilt from the segments left",
                    path.display()
                ));
                Ok((Marks::default(), true))
            }
        },
    }
}

/// `layout` with a stub for every epoch retention removed whole (no segment left): its
/// stripes hold nothing but answer `410` below their marks.
fn with_removed_epochs(mut layout: Vec<EpochLayout>, marks: &Marks) -> Vec<EpochLayout> {
    let mut stubs: BTreeMap<(u64, u32), Vec<u64>> = BTreeMap::new();
    for (k, &below) in &marks.below {
        // A mark of 0 removed nothing that had ids; an epoch of that base is kept already.
        if below == 0 || layout.iter().any(|l| l.base == k.base) {
            continue;
        }
        if stubs.keys().any(|&(b, n)| b == k.base && n != k.stripes) {
            continue; // two layouts at one base: only one can have held ids
        }
        let ends = stubs
            .entry((k.base, k.stripes))
            .or_insert_with(|| vec![0; k.stripes as usize]);
        ends[k.stripe as usize] = below;
    }
    for ((base, _), ends) in stubs {
        // Never past the current epoch: a stub only ever lies below it.
        let at = layout.partition_point(|l| l.base < base);
        if at == layout.len() {
            continue;
        }
        let stub = EpochLayout {
            base,
            starts: ends.clone(),
            ends: Some(ends),
        };
        layout.insert(at, stub);
    }
    layout
}

/// Segments wholly below the stripe's retention mark: retention was removing them when the
/// last run stopped. The removal is finished (read-only: they are only left out); the stripe
/// then begins at the mark.
fn finish_removal(
    s: &mut StripeScan,
    (mark, id_floor): (u64, u64),
    dir: &Path,
    opt: Options,
    warnings: &mut Vec<String>,
) {
    // Retention's floor covers every id and lease of what it removed: a segment past it was
    // never picked, whatever its slots say.
    let below = |m: &super::index::Meta| {
        let slots_below =
            m.first_slot + m.records <= mark && (m.records > 0 || m.first_slot < mark);
        slots_below && m.last_id.max(m.lease) <= id_floor
    };
    let n = s.sealed.iter().take_while(|x| below(&x.meta)).count();
    for x in s.sealed.drain(..n) {
        s.records -= x.meta.records;
        if let Some(st) = s.start.as_mut() {
            *st += x.meta.records;
        }
        let seg = dir.join(journal::segment_name(&x.meta.key, x.meta.seq));
        if !opt.read_only {
            let _ = fs::remove_file(dir.join(super::index::index_name(&x.meta.key, x.meta.seq)));
            let _ = fs::remove_file(&seg);
        }
        warnings.push(format!(
            "{}: below the retention mark (removed before the last stop); {}",
            seg.display(),
            if opt.read_only { "skipped" } else { "removed" }
        ));
    }
}

fn truncate(path: &Path, len: u64) -> Result<(), String> {
    let f = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.set_len(len)
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Copy `path[from..]` to `path.corrupt-<from>` and cut `path` at `from` (the whole file when
/// `from` is 0: it is renamed).
fn move_aside(path: &Path, from: usize) -> Result<(), String> {
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    let aside = PathBuf::from(format!("{}.corrupt-{from}", path.display()));
    if from == 0 {
        fs::rename(path, &aside).map_err(err)?;
    } else {
        let bytes = fs::read(path).map_err(err)?;
        fs::write(&aside, &bytes[from..]).map_err(err)?;
        fs::File::open(&aside)
            .and_then(|f| f.sync_all())
            .map_err(err)?;
        truncate(path, from as u64)?;
    }
    if let Some(dir) = path.parent() {
        journal::sync_dir(dir).map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests;
