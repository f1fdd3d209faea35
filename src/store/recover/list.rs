//! Phase 1 of recovery: what each file of the data directory is (a segment, a repair's
//! leftover, or nothing to read), and every segment by stripe in order.

use super::*;

/// Segments by stripe, and the bytes of each stripe moved aside by a repair.
pub(super) type Listed = (BTreeMap<StripeKey, Vec<Segment>>, BTreeMap<StripeKey, u64>);

/// What one file of the data directory is to recovery.
pub(super) enum Entry {
    /// A segment of the stripe `StripeKey`.
    Segment(StripeKey, Segment),
    /// Bytes of the stripe `StripeKey` that an earlier repair moved aside.
    Aside(StripeKey, u64),
    /// Nothing recovery reads (or a leftover it removed).
    Skip,
}

/// Phase 1: every segment of `dir`, by stripe, in `seq` order; and the `*.corrupt-*` files
/// earlier repairs left.
pub(super) fn list(dir: &Path, opt: Options, warnings: &mut Vec<String>) -> Result<Listed, String> {
    let mut out: BTreeMap<StripeKey, Vec<Segment>> = BTreeMap::new();
    let mut aside: BTreeMap<StripeKey, u64> = BTreeMap::new();
    let entries = fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
        match classify(path, opt, warnings)? {
            Entry::Segment(key, seg) => out.entry(key).or_default().push(seg),
            Entry::Aside(key, len) => *aside.entry(key).or_default() += len,
            Entry::Skip => {}
        }
    }
    for segs in out.values_mut() {
        segs.sort_by_key(|s| s.seq);
    }
    Ok((out, aside))
}

/// What the file at `path` is, by its name; a `*.seg.tmp` is removed (unless read-only).
pub(super) fn classify(
    path: PathBuf,
    opt: Options,
    warnings: &mut Vec<String>,
) -> Result<Entry, String> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.ends_with(".seg.tmp") {
        if !opt.read_only {
            fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        warnings.push(format!(
            "{}: a segment whose creation was cut short (no records); removed",
            path.display()
        ));
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
    if !name.ends_with(".seg") {
        return Ok(Entry::Skip);
    }
    read_segment(path, opt, warnings)
}

/// A `*.seg` file: read whole, its header checked against its name. One shorter than a
/// header is removed (unless read-only); a bad header is an error, unless `repair` or
/// read-only: then the segment has no bytes (the whole file is corrupt).
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
    let bytes = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() < HEADER_LEN {
        if !opt.read_only {
            fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        warnings.push(format!(
            "{}: {} bytes, shorter than a header, so no records; removed",
            path.display(),
            bytes.len()
        ));
        return Ok(Entry::Skip);
    }
    let header = Header::decode(&bytes).and_then(|h| {
        if h == named {
            Ok(h)
        } else {
            Err(format!(
                "header says epoch {} stripe {} of {}, the name another",
                h.base, h.stripe, h.stripes
            ))
        }
    });
    let bytes = match header {
        Ok(_) => Some(bytes),
        Err(e) if !opt.repair && !opt.read_only => {
            return Err(format!(
                "{}: bad segment header ({e}); start with --repair to move this stripe's segments from it on aside",
                path.display()
            ));
        }
        Err(e) => {
            warnings.push(format!("{}: bad segment header ({e})", path.display()));
            None
        }
    };
    let key = (named.base, named.stripes, named.stripe);
    Ok(Entry::Segment(key, Segment { path, seq, bytes }))
}
