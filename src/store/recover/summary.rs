//! Phase 2 of recovery: what each stripe's segments hold. A segment with a valid index
//! contributes its index header (slots, last id, lease, length): none of its records is read.
//! Every other segment (the tail a crash left, or one whose index is missing or bad) is read
//! and checked record by record, then synced and indexed (unless read-only: its index entries
//! are kept in RAM only).

use std::os::unix::fs::MetadataExt;

use super::*;
use crate::store::index::{self, Meta};
use crate::store::segments::Sealed;

/// A segment of the stripe as the segment table will hold it; `first_slot` of one without
/// usages is fixed once the stripe's position there is known.
struct Kept {
    path: PathBuf,
    meta: Meta,
    entries: Option<Vec<u64>>,
    idx_len: u64,
    /// Scanned now: synced and indexed (unless read-only) once its first slot is known.
    scanned: bool,
}

/// Phase 2: check one stripe's segments, cutting torn tails and (with `repair`) moving
/// corruption aside. Slots must continue from segment to segment: a gap is corruption.
pub(super) fn check_stripe(
    key: StripeKey,
    segs: Vec<Segment>,
    opt: Options,
    mark: u64,
    warnings: &mut Vec<String>,
    corrupt: &mut bool,
) -> Result<StripeScan, String> {
    let (base, stripes, stripe) = key;
    let mut s = StripeScan {
        next_seq: segs.last().map_or(0, |g| g.seq + 1),
        ..StripeScan::default()
    };
    let mut kept = Vec::new();
    let mut stopped = false;
    for seg in segs {
        let shown = seg.path.display().to_string();
        if stopped {
            set_aside_whole(&seg, opt, &mut s)?;
            warnings.push(format!("{shown}: moved aside (after a bad record)"));
            continue;
        }
        if seg.header_bad {
            set_aside_whole(&seg, opt, &mut s)?;
            *corrupt = true;
            stopped = true;
            continue;
        }
        let bad = match seg.index {
            Some(meta) => by_index(&seg, meta, &mut s, &mut kept),
            None => scan(&seg, key, opt, &mut s, &mut kept, warnings)?,
        };
        if let Some(why) = bad {
            *corrupt = true;
            if !opt.repair && !opt.read_only {
                return Err(format!(
                    "{shown}: {why}; start with --repair to keep the records before it and move the rest aside"
                ));
            }
            if seg.index.is_some() {
                // Nothing of it counts: its bytes may hold any id.
                set_aside_whole(&seg, opt, &mut s)?;
            }
            warnings.push(format!("{shown}: {why}; kept what came before it"));
            stopped = true;
        }
    }
    // Below the retention mark, segments were removed on purpose.
    if s.start.is_some_and(|st| st > mark) {
        warnings.push(format!(
            "stripe {stripe} of epoch {base} ({stripes} stripes) begins at id {}: the segments before it are missing",
            base + ids::id_of(stripe, s.start.unwrap_or(0), stripes)
        ));
    }
    s.sealed = seal_all(kept, s.start, opt, warnings);
    Ok(s)
}

/// A segment with a valid index: its header alone, no record read. One whose slots do not
/// continue the stripe's is corruption (the caller moves it aside whole).
fn by_index(seg: &Segment, meta: Meta, s: &mut StripeScan, kept: &mut Vec<Kept>) -> Option<String> {
    if meta.records > 0 {
        match s.start {
            Some(st) if st + s.records != meta.first_slot => {
                let want = st + s.records;
                return Some(format!(
                    "its index says it begins at slot {}, where {want} was expected (a segment missing or out of place?)",
                    meta.first_slot
                ));
            }
            Some(_) => {}
            None => s.start = Some(meta.first_slot),
        }
        s.records += meta.records;
        s.last_id = meta.last_id;
    }
    if meta.lease != 0 {
        s.lease = meta.lease;
    }
    s.by_index += 1;
    kept.push(Kept {
        path: seg.path.clone(),
        meta,
        entries: None,
        idx_len: meta.file_len(),
        scanned: false,
    });
    None
}

/// A segment without a valid index: read whole and checked record by record (see
/// [`walk`]); its whole records are kept and their index entries built.
fn scan(
    seg: &Segment,
    key: StripeKey,
    opt: Options,
    s: &mut StripeScan,
    kept: &mut Vec<Kept>,
    warnings: &mut Vec<String>,
) -> Result<Option<String>, String> {
    let err = |e: std::io::Error| format!("{}: {e}", seg.path.display());
    let bytes = fs::read(&seg.path).map_err(err)?;
    s.scanned_bytes += bytes.len() as u64;
    let first_slot = s.start.map(|st| st + s.records);
    let walk = walk(&bytes, key, s.start, s.records);
    s.start = walk.start;
    let (cut, bad) = cut_point(&seg.path, &bytes, &walk, opt, warnings)?;
    let good_end = keep_until(&walk, cut, s);
    if bad.is_some() {
        s.lost_bytes += (bytes.len() - good_end) as u64;
        // Without `repair` (and not read-only) the caller refuses to start: nothing moves.
        if opt.repair && !opt.read_only {
            move_aside(&seg.path, good_end)?;
        }
    }
    let mut b = index::Builder::new();
    // Whole records, each checked just now: walked by their lengths alone.
    b.note_batch(
        bytes.get(HEADER_LEN..good_end).unwrap_or(&[]),
        HEADER_LEN as u64,
    );
    let first_slot = first_slot.or(walk.start).unwrap_or(0);
    let sealed_ms = fs::metadata(&seg.path).map_or(0, |m| (m.mtime() as u64).saturating_mul(1000));
    let (base, stripes, stripe) = key;
    let header = Header {
        stripes,
        stripe,
        base,
    };
    let sealed = b.seal(header, seg.seq, first_slot, sealed_ms);
    kept.push(Kept {
        path: seg.path.clone(),
        meta: sealed.meta,
        entries: Some(sealed.entries),
        idx_len: 0,
        scanned: true,
    });
    Ok(bad)
}

/// The stripe's kept segments as the segment table holds them. One without usages gets the
/// slot the stripe is at there (`start` before its first usage). A scanned one is synced and
/// its index written (unless read-only; a failed write only costs a warning: its entries stay
/// in RAM and the next start scans it again).
fn seal_all(
    kept: Vec<Kept>,
    start: Option<u64>,
    opt: Options,
    warnings: &mut Vec<String>,
) -> Vec<Sealed> {
    // No usage kept: where the stripe is comes from the first index that says so.
    let mut at = start
        .or_else(|| kept.iter().find(|k| !k.scanned).map(|k| k.meta.first_slot))
        .unwrap_or(0);
    let mut out = Vec::with_capacity(kept.len());
    for mut k in kept {
        if k.meta.records == 0 {
            k.meta.first_slot = at;
        }
        at = k.meta.first_slot + k.meta.records;
        let mut entries = k.entries.take();
        let mut idx_len = k.idx_len;
        if k.scanned && !opt.read_only {
            let s = index::Sealed {
                meta: k.meta,
                entries: entries.take().unwrap_or_default(),
            };
            let dir = k.path.parent().unwrap_or(Path::new("."));
            let written = fs::File::open(&k.path)
                .and_then(|f| f.sync_data())
                .and_then(|_| index::write(dir, &s));
            match written {
                Ok(len) => idx_len = len,
                Err(e) => {
                    warnings.push(format!(
                        "{}: cannot write its index ({e}); scanned again at the next start",
                        k.path.display()
                    ));
                    entries = Some(s.entries);
                }
            }
        }
        out.push(Sealed {
            meta: k.meta,
            entries: entries.map(Arc::from),
            idx_len,
        });
    }
    out
}

/// A whole segment none of whose records count (its header was bad, a bad record came
/// before it, or its slots do not continue the stripe's): its bytes are lost, and it is moved
/// aside with its index removed (unless read-only).
fn set_aside_whole(seg: &Segment, opt: Options, s: &mut StripeScan) -> Result<(), String> {
    s.lost_bytes += seg.len;
    if !opt.read_only {
        move_aside(&seg.path, 0)?;
        let idx = seg.path.with_extension("idx");
        match fs::remove_file(&idx) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(format!("{}: {e}", idx.display()));
            }
            _ => {}
        }
    }
    Ok(())
}

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
