//! Phase 1 of recovery: what each file of the data directory is (a segment, its index, a
//! repair's leftover, or nothing to read), and every segment by stripe in order, each with its
//! index's header when it has a valid one. A segment is known here by its name, its header
//! (one read of [`HEADER_LEN`] bytes) and its length: no record is read.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::FileExt;

use super::*;
use crate::store::index::{self, Meta};

/// Segments by stripe, and the bytes of each stripe moved aside by a repair.
pub(super) type Listed = (BTreeMap<StripeKey, Vec<Segment>>, BTreeMap<StripeKey, u64>);

/// What one file of the data directory is to recovery.
pub(super) enum Entry {
    /// A segment of the stripe `StripeKey`.
    Segment(StripeKey, Segment),
    /// The index of segment `seq` of the stripe `StripeKey`.
    Index(StripeKey, u32, PathBuf),
    /// Bytes of the stripe `StripeKey` that an earlier repair moved aside.
    Aside(StripeKey, u64),
    /// Nothing recovery reads (or a leftover it removed).
    Skip,
}

/// Phase 1: every segment of `dir`, by stripe, in `seq` order, with its valid index's header;
/// and the `*.corrupt-*` files earlier repairs left. Invalid and orphan indexes are removed
/// (unless read-only) with a warning.
pub(super) fn list(dir: &Path, opt: Options, warnings: &mut Vec<String>) -> Result<Listed, String> {
    let mut out: BTreeMap<StripeKey, Vec<Segment>> = BTreeMap::new();
    let mut aside: BTreeMap<StripeKey, u64> = BTreeMap::new();
    let mut indexes = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
        match classify(path, opt, warnings)? {
            Entry::Segment(key, seg) => out.entry(key).or_default().push(seg),
            Entry::Index(key, seq, path) => indexes.push((key, seq, path)),
            Entry::Aside(key, len) => *aside.entry(key).or_default() += len,
            Entry::Skip => {}
        }
    }
    for segs in out.values_mut() {
        segs.sort_by_key(|s| s.seq);
    }
    attach_indexes(&mut out, indexes, opt, warnings)?;
    Ok((out, aside))
}

/// Give each segment its index if that is valid for it (see [`index::read_meta`]; also its
/// file length must be what its header says). An index without a segment, or an invalid one,
/// is removed (unless read-only): the segment is scanned and indexed again.
fn attach_indexes(
    segs: &mut BTreeMap<StripeKey, Vec<Segment>>,
    indexes: Vec<(StripeKey, u32, PathBuf)>,
    opt: Options,
    warnings: &mut Vec<String>,
) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    for (key, seq, path) in indexes {
        let seg = segs
            .get_mut(&key)
            .and_then(|l| l.iter_mut().find(|s| s.seq == seq));
        let why = match seg {
            None => "no segment of its name".to_string(),
            Some(_) if !seen.insert((key, seq)) => "a second index of one segment".to_string(),
            Some(seg) if seg.header_bad => "its segment's header is bad".to_string(),
            Some(seg) => match valid(&path, seg.len) {
                Ok(meta) => {
                    seg.index = Some(meta);
                    continue;
                }
                Err(e) => format!("invalid ({e})"),
            },
        };
        if !opt.read_only {
            fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        warnings.push(format!(
            "{}: index {why}; removed (its segment, if any, is scanned and indexed again)",
            path.display()
        ));
    }
    Ok(())
}

/// The header of the index at `path` if it is valid for a segment `seg_len` bytes long.
fn valid(path: &Path, seg_len: u64) -> Result<Meta, String> {
    let meta = index::read_meta(path, seg_len)?;
    let len = fs::metadata(path).map_err(|e| e.to_string())?.len();
    if len != meta.file_len() {
        return Err(format!("{len} bytes, its header says {}", meta.file_len()));
    }
    Ok(meta)
}

/// What the file at `path` is, by its name; a `*.seg.tmp` or `*.idx.tmp` is removed (unless
/// read-only).
pub(super) fn classify(
    path: PathBuf,
    opt: Options,
    warnings: &mut Vec<String>,
) -> Result<Entry, String> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let leftover = if name.ends_with(".seg.tmp") {
        Some("a segment whose creation was cut short (no records)")
    } else if name.ends_with(".idx.tmp") {
        Some("an index whose writing was cut short")
    } else {
        None
    };
    if let Some(what) = leftover {
        if !opt.read_only {
            fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        warnings.push(format!("{}: {what}; removed", path.display()));
        return Ok(Entry::Skip);
    }
    if let Some((seg, _)) = name.split_once(".corrupt-") {
        let Some((h, _)) = journal::parse_name(seg) else {
            return Ok(Entry::Skip);
        };
        let len = fs::metadata(&path).map_or(0, |m| m.len());
        warnings.push(format!(
            "{}: moved aside by an earlier repair: not read, and its ids are never given again",
            path.display()
        ));
        return Ok(Entry::Aside((h.base, h.stripes, h.stripe), len));
    }
    if let Some((h, seq)) = journal::parse_name_as(name, ".idx") {
        return Ok(Entry::Index((h.base, h.stripes, h.stripe), seq, path));
    }
    if !name.ends_with(".seg") {
        return Ok(Entry::Skip);
    }
    read_segment(path, opt, warnings)
}

/// A `*.seg` file: its header read and checked against its name, and its length. One shorter
/// than a header is removed (unless read-only); a bad header is an error, unless `repair` or
/// read-only: then the whole file is corrupt.
pub(super) fn read_segment(
    path: PathBuf,
    opt: Options,
    warnings: &mut Vec<String>,
) -> Result<Entry, String> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let Some((named, seq)) = journal::parse_name(name)
        .filter(|(h, _)| h.stripes > 0 && h.stripes <= MAX_STRIPES && h.stripe < h.stripes)
    else {
        return Err(format!(
            "{}: not a segment name this build writes; move it out of the data directory",
            path.display()
        ));
    };
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    let file = File::open(&path).map_err(err)?;
    let len = file.metadata().map_err(err)?.len();
    if len < HEADER_LEN as u64 {
        if !opt.read_only {
            fs::remove_file(&path).map_err(err)?;
        }
        warnings.push(format!(
            "{}: {len} bytes, shorter than a header, so no records; removed",
            path.display()
        ));
        return Ok(Entry::Skip);
    }
    let mut head = [0; HEADER_LEN];
    file.read_exact_at(&mut head, 0).map_err(err)?;
    let header = Header::decode(&head).and_then(|h| {
        if h == named {
            Ok(h)
        } else {
            Err(format!(
                "header says epoch {} stripe {} of {}, the name another",
                h.base, h.stripe, h.stripes
            ))
        }
    });
    let header_bad = match header {
        Ok(_) => false,
        Err(e) if !opt.repair && !opt.read_only => {
            return Err(format!(
                "{}: bad segment header ({e}); start with --repair to move this stripe's segments from it on aside",
                path.display()
            ));
        }
        Err(e) => {
            warnings.push(format!("{}: bad segment header ({e})", path.display()));
            true
        }
    };
    let key = (named.base, named.stripes, named.stripe);
    let seg = Segment {
        path,
        seq,
        len,
        header_bad,
        index: None,
    };
    Ok(Entry::Segment(key, seg))
}
