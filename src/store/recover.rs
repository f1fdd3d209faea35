//! Recovery: read every journal segment, check every record, and rebuild the store, so every
//! acknowledged usage is readable again and no id is handed out twice.
//!
//! - A torn tail (the last record of a segment cut short by a crash) is cut back to the last
//!   whole record, with a warning naming the file and offset.
//! - A bad record in the middle stops the start with an error naming the file and offset;
//!   with `repair`, everything before it is kept and the rest of that stripe (the rest of the
//!   file, and its later segments) is moved aside as `*.corrupt`.
//! - The current layout continues the last epoch when the stripe count is unchanged; otherwise a
//!   new epoch starts past the largest id seen (earlier ids stay readable).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::journal::{self, Bad, HEADER_LEN, Header};
use super::{Store, StripeWriter};

/// What recovery found and built.
pub struct Recovered {
    pub store: Arc<Store>,
    /// One writer per stripe of the current epoch, continuing where the journal ended.
    pub writers: Vec<StripeWriter>,
    /// The last segment number of each current stripe (its journal continues after it).
    pub last_seq: Vec<Option<u32>>,
    pub records: u64,
    pub elapsed: Duration,
    /// Torn tails cut and corruption moved aside, one line each.
    pub warnings: Vec<String>,
}

/// A segment's bytes and the end of its last whole record.
type SegmentBytes = (Vec<u8>, usize);

struct Segment {
    path: PathBuf,
    header: Header,
    seq: u32,
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

/// Rebuild the store from the segments in `dir` (which must exist).
pub fn recover(dir: &Path, opt: Options) -> Result<Recovered, String> {
    let started = Instant::now();
    let mut warnings = Vec::new();
    let segments = list_segments(dir)?;
    // epoch (base, stripes) → stripe → segments in seq order
    let mut epochs: BTreeMap<(u64, u32), BTreeMap<u32, Vec<Segment>>> = BTreeMap::new();
    for s in segments {
        epochs
            .entry((s.header.base, s.header.stripes))
            .or_default()
            .entry(s.header.stripe)
            .or_default()
            .push(s);
    }
    for stripes in epochs.values_mut() {
        for segs in stripes.values_mut() {
            segs.sort_by_key(|s| s.seq);
        }
    }
    // Read every record (the bytes stay in memory until the store is built).
    let mut data: BTreeMap<(u64, u32, u32), Vec<SegmentBytes>> = BTreeMap::new();
    let mut max_id = 0;
    for (&(base, stripes), by_stripe) in &epochs {
        for (&stripe, segs) in by_stripe {
            let mut files = Vec::new();
            let mut stop = false;
            for seg in segs {
                if stop {
                    if !opt.read_only {
                        move_aside(&seg.path, 0)?;
                        warnings.push(format!(
                            "{}: moved aside (after a bad record)",
                            seg.path.display()
                        ));
                    }
                    continue;
                }
                let bytes =
                    fs::read(&seg.path).map_err(|e| format!("{}: {e}", seg.path.display()))?;
                let (end, last_id, bad) = scan(&bytes);
                match bad {
                    None => {}
                    Some((at, Bad::Truncated)) => {
                        warnings.push(format!(
                            "{}: torn tail at offset {at} ({} bytes) cut back to the last whole record",
                            seg.path.display(),
                            bytes.len() - at
                        ));
                        if !opt.read_only {
                            truncate(&seg.path, at as u64)?;
                        }
                    }
                    Some((at, Bad::Corrupt)) => {
                        if !opt.repair && !opt.read_only {
                            return Err(format!(
                                "{}: bad record at offset {at}; start with --repair to keep the {} records before it and move the rest aside",
                                seg.path.display(),
                                count(&bytes[HEADER_LEN..end])
                            ));
                        }
                        if !opt.read_only {
                            move_aside(&seg.path, at)?;
                        }
                        warnings.push(format!(
                            "{}: bad record at offset {at}; kept what came before it",
                            seg.path.display()
                        ));
                        stop = true;
                    }
                }
                max_id = max_id.max(last_id);
                files.push((bytes, end));
            }
            data.insert((base, stripes, stripe), files);
        }
    }
    // The epochs of the store: all found, plus a new one if this run's layout differs.
    let mut layout: Vec<(u64, u32)> = epochs.keys().copied().collect();
    let continues = layout.last().is_some_and(|&(_, s)| s == opt.stripes);
    if !continues {
        layout.push((max_id, opt.stripes));
    }
    let store = Arc::new(Store::with_epochs(&layout));
    let current = layout.len() - 1;
    let mut writers: Vec<Option<StripeWriter>> = (0..opt.stripes).map(|_| None).collect();
    let mut last_seq = vec![None; opt.stripes as usize];
    let mut records = 0u64;
    for (e, &(base, stripes)) in layout.iter().enumerate() {
        for stripe in 0..stripes {
            let mut w = store.epoch_writer(e, stripe);
            let segs = epochs.get(&(base, stripes)).and_then(|m| m.get(&stripe));
            for (bytes, end) in data
                .get(&(base, stripes, stripe))
                .map(Vec::as_slice)
                .unwrap_or(&[])
            {
                let mut at = HEADER_LEN;
                while at < *end {
                    let (r, n) = journal::decode(&bytes[at..*end])
                        .map_err(|_| "journal changed while reading".to_string())?;
                    let id = w
                        .append(&r.usage)
                        .map_err(|_| "store full during recovery".to_string())?;
                    if id != r.id {
                        let path = segs
                            .map(|s| s[0].path.display().to_string())
                            .unwrap_or_default();
                        return Err(format!(
                            "{path}: record at offset {at} has id {} where {id} was expected",
                            r.id
                        ));
                    }
                    records += 1;
                    at += n;
                }
            }
            if e == current {
                last_seq[stripe as usize] = segs.and_then(|s| s.last()).map(|s| s.seq);
                writers[stripe as usize] = Some(w);
            }
        }
    }
    Ok(Recovered {
        store,
        writers: writers
            .into_iter()
            .map(|w| w.expect("a writer per stripe"))
            .collect(),
        last_seq,
        records,
        elapsed: started.elapsed(),
        warnings,
    })
}

/// Walk the records of a segment: `(end of the last whole record, its id, what stopped it)`.
fn scan(bytes: &[u8]) -> (usize, u64, Option<(usize, Bad)>) {
    let mut at = HEADER_LEN.min(bytes.len());
    let mut last_id = 0;
    while at < bytes.len() {
        match journal::decode(&bytes[at..]) {
            Ok((r, n)) => {
                last_id = r.id;
                at += n;
            }
            Err(bad) => return (at, last_id, Some((at, bad))),
        }
    }
    (at, last_id, None)
}

fn count(mut records: &[u8]) -> usize {
    let mut n = 0;
    while let Ok((_, len)) = journal::decode(records) {
        records = &records[len..];
        n += 1;
    }
    n
}

fn list_segments(dir: &Path) -> Result<Vec<Segment>, String> {
    let mut out = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
        if path.extension().is_none_or(|x| x != "seg") {
            continue;
        }
        let bytes = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let header = Header::decode(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        let seq = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.rsplit('-').next())
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("{}: unexpected segment name", path.display()))?;
        out.push(Segment { path, header, seq });
    }
    Ok(out)
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
        return fs::rename(path, &aside).map_err(err);
    }
    let bytes = fs::read(path).map_err(err)?;
    fs::write(&aside, &bytes[from..]).map_err(err)?;
    truncate(path, from as u64)
}

#[cfg(test)]
mod tests;
