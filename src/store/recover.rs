//! Recovery: read every journal segment, check every record, and rebuild the store, so every
//! acknowledged usage is readable again and no id is handed out twice. In named phases:
//!
//! 1. `list`: find the segments. A `*.tmp` file (a segment whose creation a crash cut short)
//!    and a file shorter than a header hold no records and are removed. A header that fails its
//!    checks, or disagrees with its file name, is corruption.
//! 2. `check_stripe`: walk each stripe's segments in order. Records must continue slot by
//!    slot (a missing segment in the middle is corruption; a missing beginning is reported). A
//!    torn tail (see [`journal::scan`]) is cut back with a warning; corruption stops the start
//!    with an error naming file and offset, unless `repair`: then everything before it is kept
//!    and the rest of the stripe is moved aside as `*.corrupt-OFFSET`.
//! 3. `plan`: the epochs, ordered by the ids they hold (empty ones are dropped). The last
//!    epoch continues only when this run has its stripe count and none of its stripes may have
//!    handed out ids past its last record (a lease ahead of it, or a repair that moved records
//!    aside); otherwise a new epoch starts past every id and lease seen, and past every id the
//!    moved-aside bytes could hold.
//! 4. `build`: the store, refilled record by record through the stripes' writers.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::committer::LEASE_SLOTS;
use super::ids::{self, MAX_ID};
use super::journal::{self, End, HEADER_LEN, Header, MAX_STRIPES, MIN_RECORD, Record};
use super::{EpochLayout, Store, StripeWriter};

mod list;
use list::list;

/// What recovery found and built.
pub struct Recovered {
    pub store: Arc<Store>,
    /// One writer per stripe of the current epoch, continuing where the journal ended.
    pub writers: Vec<StripeWriter>,
    /// How each current stripe's journal continues.
    pub journals: Vec<Continue>,
    /// The current epoch's base.
    pub base: u64,
    pub records: u64,
    pub elapsed: Duration,
    /// Torn tails cut, empty files removed, corruption moved aside: one line each.
    pub warnings: Vec<String>,
    /// Corruption was found (and skipped, read-only, or moved aside, with `repair`).
    pub corrupt: bool,
}

/// Where a current stripe's journal goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Continue {
    /// The segment number this run writes (one past every existing one of the stripe).
    pub seq: u32,
    /// The stripe's durable lease and its last id.
    pub lease: u64,
    pub last_id: u64,
}

/// Options for [`recover`].
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Stripes (workers) of this run.
    pub stripes: u32,
    /// Keep what comes before a bad record instead of refusing to start.
    pub repair: bool,
    /// Change nothing on disk (export): torn tails and bad records are skipped, not cut.
    pub read_only: bool,
}

/// `(base, stripes, stripe)`: which stripe of which epoch a segment belongs to.
type StripeKey = (u64, u32, u32);

struct Segment {
    path: PathBuf,
    seq: u32,
    /// The file's bytes (`None`: its header was bad; the whole file is corrupt).
    bytes: Option<Vec<u8>>,
}

/// What one stripe's segments hold after checking.
#[derive(Default)]
struct StripeScan {
    /// The kept segments' bytes and the end of their whole records.
    kept: Vec<(Vec<u8>, usize)>,
    /// The slot of the first record, and the number of records.
    start: Option<u64>,
    records: u64,
    last_id: u64,
    lease: u64,
    /// Bytes moved aside (or skipped, read-only): ids in them are unknown.
    lost_bytes: u64,
    next_seq: u32,
}

/// Rebuild the store from the segments in `dir` (which must exist).
pub fn recover(dir: &Path, opt: Options) -> Result<Recovered, String> {
    let started = Instant::now();
    let mut warnings = Vec::new();
    let mut corrupt = false;
    let (by_stripe, aside) = list(dir, opt, &mut warnings)?;
    let mut scans: BTreeMap<StripeKey, StripeScan> = BTreeMap::new();
    for (key, segs) in by_stripe {
        let scan = check_stripe(key, segs, opt, &mut warnings, &mut corrupt)?;
        scans.insert(key, scan);
    }
    // Bytes moved aside by an earlier repair still count: ids in them are never given again
    // (the repair's new epoch, once its segments exist, records that floor too). They are
    // not corruption found now: `export` warns about them and still exits 0.
    for (key, bytes) in aside {
        scans.entry(key).or_default().lost_bytes += bytes;
    }
    let plan = plan(&scans, opt.stripes)?;
    if plan.fresh && !scans.is_empty() && !opt.read_only {
        let &(base, n) = plan.epochs.last().expect("an epoch");
        warnings.push(format!(
            "ids go on in a new epoch past {base} with {n} stripes (the stripe count changed, \
             the last run stopped without releasing its id lease, or records were moved aside)"
        ));
    }
    build(plan, scans, opt.stripes, started, warnings, corrupt)
}

/// Phase 2: check one stripe's segments, cutting torn tails and (with `repair`) moving
/// corruption aside.
fn check_stripe(
    key: StripeKey,
    segs: Vec<Segment>,
    opt: Options,
    warnings: &mut Vec<String>,
    corrupt: &mut bool,
) -> Result<StripeScan, String> {
    let (base, stripes, stripe) = key;
    let mut s = StripeScan {
        next_seq: segs.last().map_or(0, |g| g.seq + 1),
        ..StripeScan::default()
    };
    let mut stopped = false;
    for seg in segs {
        let shown = seg.path.display();
        if stopped {
            set_aside_whole(&seg.path, opt, &mut s)?;
            warnings.push(format!("{shown}: moved aside (after a bad record)"));
            continue;
        }
        let Some(bytes) = seg.bytes else {
            set_aside_whole(&seg.path, opt, &mut s)?;
            *corrupt = true;
            stopped = true;
            continue;
        };
        let walk = walk(&bytes, key, s.start, s.records);
        s.start = walk.start;
        let (cut, bad) = cut_point(&seg.path, &bytes, &walk, opt, warnings)?;
        let good_end = keep_until(&walk, cut, &mut s);
        if let Some(why) = bad {
            *corrupt = true;
            if !opt.repair && !opt.read_only {
                return Err(format!(
                    "{shown}: {why}; start with --repair to keep the records before it and move the rest aside"
                ));
            }
            s.lost_bytes += (bytes.len() - good_end) as u64;
            if !opt.read_only {
                move_aside(&seg.path, good_end)?;
            }
            warnings.push(format!("{shown}: {why}; kept what came before it"));
            stopped = true;
        }
        s.kept.push((bytes, good_end));
    }
    if s.start.is_some_and(|st| st > 0) {
        warnings.push(format!(
            "stripe {stripe} of epoch {base} ({stripes} stripes) begins at id {}: the segments before it are missing",
            base + ids::id_of(stripe, s.start.unwrap_or(0), stripes)
        ));
    }
    Ok(s)
}

/// A whole segment none of whose records count (its header was bad, or a bad record came
/// before it): its bytes are lost, and it is moved aside (unless read-only).
fn set_aside_whole(path: &Path, opt: Options, s: &mut StripeScan) -> Result<(), String> {
    s.lost_bytes += fs::metadata(path).map_or(0, |m| m.len());
    if !opt.read_only {
        move_aside(path, 0)?;
    }
    Ok(())
}

/// One segment's records, walked in order.
struct Walk {
    /// The stripe's first slot: as known before this segment, else its first usage's.
    start: Option<u64>,
    /// Each whole record before any bad one: `(offset, end, id of a usage or None for a
    /// lease, lease)`.
    found: Vec<(usize, usize, Option<u64>, u64)>,
    /// The first usage whose id breaks the slot order: `(offset, id, expected id)`.
    bad_id: Option<(usize, u64, u64)>,
    /// How the records end (see [`journal::scan`]).
    end: End,
}

/// Walk the records of `bytes`, a segment of stripe `key` whose records so far began at slot
/// `start` and numbered `before`: each usage must have the next slot's id.
fn walk(bytes: &[u8], (base, stripes, stripe): StripeKey, start: Option<u64>, before: u64) -> Walk {
    let mut w = Walk {
        start,
        found: Vec::new(),
        bad_id: None,
        end: End::Clean,
    };
    let mut here = 0u64;
    w.end = journal::scan(bytes, |at, r| {
        if w.bad_id.is_some() {
            return;
        }
        let len = journal::decode(&bytes[at..]).map_or(0, |(_, n)| n);
        match r {
            Record::Lease(l) => w.found.push((at, at + len, None, l)),
            Record::Usage { id, .. } => {
                let slot = (id > base)
                    .then(|| ids::locate(id - base, stripes))
                    .flatten()
                    .filter(|&(st, _)| st == stripe)
                    .map(|(_, slot)| slot);
                let want = w.start.map(|st| st + before + here);
                match (slot, want) {
                    (Some(slot), Some(want)) if slot == want => {}
                    (Some(slot), None) => w.start = Some(slot),
                    _ => {
                        let expected = want.map_or(0, |s| base + ids::id_of(stripe, s, stripes));
                        w.bad_id = Some((at, id, expected));
                        return;
                    }
                }
                here += 1;
                w.found.push((at, at + len, Some(id), 0));
            }
        }
    });
    w
}

/// Where the segment at `path` stops counting, and why if that is corruption. A torn tail is
/// no corruption: it is cut back (unless read-only) with a warning.
fn cut_point(
    path: &Path,
    bytes: &[u8],
    walk: &Walk,
    opt: Options,
    warnings: &mut Vec<String>,
) -> Result<(usize, Option<String>), String> {
    Ok(match (walk.bad_id, walk.end) {
        (Some((at, id, want)), _) => (
            at,
            Some(format!(
                "record at offset {at} has id {id} where {want} was expected (a segment missing or out of place?)"
            )),
        ),
        (None, End::Clean) => (bytes.len(), None),
        (None, End::Torn { at }) => {
            warnings.push(format!(
                "{}: torn tail at offset {at} ({} bytes) cut back to the last whole record",
                path.display(),
                bytes.len() - at
            ));
            if !opt.read_only {
                truncate(path, at as u64)?;
            }
            (at, None)
        }
        (None, End::Corrupt { at }) => (at, Some(format!("bad record at offset {at}"))),
    })
}

/// Count the records before `cut` into `s` (usages, the last id, the lease); returns the end
/// of the last of them (the header's end when there is none).
fn keep_until(walk: &Walk, cut: usize, s: &mut StripeScan) -> usize {
    let mut good_end = HEADER_LEN;
    for &(at, end, id, lease) in &walk.found {
        if at >= cut {
            break;
        }
        match id {
            Some(id) => {
                s.records += 1;
                s.last_id = id;
            }
            None => s.lease = lease,
        }
        good_end = end;
    }
    good_end
}

/// The epochs to build and whether the last one is new.
struct Plan {
    /// Epochs that hold records, by base, then the current one.
    epochs: Vec<(u64, u32)>,
    /// The current epoch is new (its stripes start empty).
    fresh: bool,
}

/// Phase 3: order the epochs and decide whether the last continues.
fn plan(scans: &BTreeMap<StripeKey, StripeScan>, stripes: u32) -> Result<Plan, String> {
    // Every id any earlier run may have handed out lies at or below `floor`.
    let mut floor = 0u64;
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
    if floor >= MAX_ID / 2 {
        return Err(format!(
            "ids reach {floor}: past half the id space; refusing to start"
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
    let continues = epochs.last().is_some_and(|&(base, n)| {
        let max_of_others = scans
            .iter()
            .filter(|(k, _)| (k.0, k.1) != (base, n))
            .map(|(&(b, n, _), s)| top(b, n, s))
            .max()
            .unwrap_or(0);
        n == stripes && !unclean[&(base, n)] && max_of_others <= base
    });
    if continues {
        return Ok(Plan {
            epochs,
            fresh: false,
        });
    }
    epochs.push((floor, stripes));
    Ok(Plan {
        epochs,
        fresh: true,
    })
}

/// The highest id a stripe may have handed out: its last record or lease, or, when bytes of
/// it could not be read (moved aside), a bound on the ids they could hold: at most one record
/// per `MIN_RECORD` bytes, each a slot further, and a lease at most `LEASE_SLOTS` slots past.
fn top(base: u64, stripes: u32, s: &StripeScan) -> u64 {
    let known = base.max(s.last_id).max(s.lease);
    if s.lost_bytes == 0 {
        return known;
    }
    let slots = s.lost_bytes / MIN_RECORD as u64 + 1 + LEASE_SLOTS;
    known.saturating_add(slots.saturating_mul(u64::from(stripes)))
}

/// Phase 4: the store, every kept record appended again through its stripe's writer.
fn build(
    plan: Plan,
    mut scans: BTreeMap<StripeKey, StripeScan>,
    stripes: u32,
    started: Instant,
    warnings: Vec<String>,
    corrupt: bool,
) -> Result<Recovered, String> {
    let current = plan.epochs.len() - 1;
    let layout: Vec<EpochLayout> = plan
        .epochs
        .iter()
        .enumerate()
        .map(|(e, &(base, n))| {
            let fresh = e == current && plan.fresh;
            let scan = |s: u32| scans.get(&(base, n, s)).filter(|_| !fresh);
            let starts: Vec<u64> = (0..n)
                .map(|s| scan(s).and_then(|x| x.start).unwrap_or(0))
                .collect();
            let ends = (e != current).then(|| {
                (0..n)
                    .map(|s| scan(s).map_or(0, |x| x.start.unwrap_or(0) + x.records))
                    .collect()
            });
            EpochLayout { base, starts, ends }
        })
        .collect();
    let store = Arc::new(Store::with_epochs(&layout));
    let mut writers = Vec::with_capacity(stripes as usize);
    let mut journals = Vec::with_capacity(stripes as usize);
    let mut records = 0u64;
    for (e, &(base, n)) in plan.epochs.iter().enumerate() {
        let fresh = e == current && plan.fresh;
        for s in 0..n {
            let mut w = store.epoch_writer(e, s);
            let scan = scans.remove(&(base, n, s));
            let next_seq = scan.as_ref().map_or(0, |x| x.next_seq);
            let (lease, last_id) = match &scan {
                Some(x) if !fresh => {
                    for (bytes, end) in &x.kept {
                        records += refill(&mut w, &bytes[..*end])?;
                    }
                    (x.lease, x.last_id)
                }
                _ => (0, 0),
            };
            if e == current {
                writers.push(w);
                journals.push(Continue {
                    seq: next_seq,
                    lease,
                    last_id,
                });
            }
        }
    }
    Ok(Recovered {
        store,
        writers,
        journals,
        base: plan.epochs[current].0,
        records,
        elapsed: started.elapsed(),
        warnings,
        corrupt,
    })
}

/// Append every usage record of `bytes` (a checked segment prefix) through `w`.
fn refill(w: &mut StripeWriter, bytes: &[u8]) -> Result<u64, String> {
    let mut n = 0;
    let mut failed = None;
    journal::scan(bytes, |_, r| {
        if let (Record::Usage { id, usage }, None) = (r, &failed) {
            match w.append(&usage) {
                Ok(got) if got == id => n += 1,
                Ok(got) => failed = Some(format!("record {id} came back as {got}")),
                Err(_) => failed = Some(format!("store full at id {id}")),
            }
        }
    });
    match failed {
        Some(e) => Err(format!("recovery: {e}")),
        None => Ok(n),
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
