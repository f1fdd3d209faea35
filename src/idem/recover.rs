//! Rebuilding the key table at start from the journal: every keyed usage's record carries its
//! key ([`super::KeyMark`]). Only segments written within the window can hold a live key (a key's
//! records are written at or after its first use), and of those only the ones whose index
//! counts a keyed record, or that have no valid index (the segments still open): start-up reads
//! the window's keyed traffic and each stripe's open segment, not the whole history.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::{Keys, Run};
use crate::store::index;
use crate::store::journal::{self, Record};

/// A keyed bulk's stored lines found so far, in any order: `(line, id, stride, end, body)`.
type BulkLines = Vec<(u32, u64, u32, u64, u64)>;

/// What a rebuild found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rebuilt {
    /// Segments read, and segments of the window skipped because their index counts no key.
    pub segments: usize,
    pub unkeyed: usize,
    pub keys: usize,
}

/// Put every live key of the segments in `dir` into `keys`.
pub fn rebuild(dir: &Path, keys: &Keys, window_s: u64) -> std::io::Result<Rebuilt> {
    let now_s = super::unix_now();
    let since = SystemTime::now()
        .checked_sub(Duration::from_secs(window_s.saturating_add(1)))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut segs = Vec::new();
    let mut found = Rebuilt::default();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let Some((h, seq)) = name.to_str().and_then(journal::parse_name) else {
            continue;
        };
        let meta = e.metadata()?;
        let modified = meta.modified()?;
        if modified < since {
            continue;
        }
        // A sealed segment whose index counts no keyed record need not be read.
        let idx = dir.join(index::index_name(&h, seq));
        if index::read_meta(&idx, meta.len()).is_ok_and(|m| m.keyed == 0) {
            found.unkeyed += 1;
            continue;
        }
        segs.push((modified, h, seq, e.path()));
    }
    // Oldest first: a bulk resumed after a restart continues in a later segment.
    segs.sort_by_key(|s| (s.0, s.1, s.2));
    let mut bulks: HashMap<u128, (u64, BulkLines)> = HashMap::new();
    for (_, h, _, path) in &segs {
        let bytes = std::fs::read(path)?;
        found.segments += 1;
        journal::scan(&bytes, |at, r| {
            let Record::Usage { id, .. } = r else { return };
            let Some(m) = journal::key_mark(&bytes[at..]) else {
                return;
            };
            // Never trust a number read from disk: a key from the future, or past the window,
            // is not restored.
            if m.created_s > now_s.saturating_add(86_400)
                || m.created_s.saturating_add(window_s) < now_s
            {
                return;
            }
            found.keys += 1;
            if m.line == 0 {
                keys.restore_single(m.key, m.body, id, m.created_s, now_s);
            } else {
                let b = bulks.entry(m.key).or_insert((m.created_s, Vec::new()));
                b.1.push((m.line, id, h.stripes, m.end, m.body));
            }
        });
    }
    for (key, (created_s, lines)) in bulks {
        if let Some((prefix, runs)) = prefix(lines) {
            keys.restore_bulk(key, prefix, &runs, created_s);
        }
    }
    Ok(found)
}

/// A keyed bulk's stored prefix from its lines' records: its end and fingerprint (those of
/// its last line) and its ids in line order. A bulk resumed on another worker or after a
/// restart has lines in several stripes, read in any order, so they are sorted by line. Lines
/// that do not form one prefix (a line twice, or an end that goes back) are not restored:
/// the key is forgotten rather than replayed wrong.
fn prefix(mut lines: BulkLines) -> Option<((u64, u64), Vec<Run>)> {
    lines.sort_unstable_by_key(|l| l.0);
    let ordered = lines.windows(2).all(|w| w[0].0 < w[1].0 && w[0].3 < w[1].3);
    if !ordered {
        return None;
    }
    let &(_, _, _, end, body) = lines.last()?;
    let mut runs = Vec::new();
    for &(_, id, stride, _, _) in &lines {
        Run::push(&mut runs, id, stride);
    }
    Some(((end, body), runs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_is_its_lines_in_line_order_whatever_order_they_come_in() {
        // Lines 1 and 2 on one worker (stride 2), line 4 resumed on another after a restart.
        let lines = vec![(4, 100, 1, 90, 7), (1, 1, 2, 30, 5), (2, 3, 2, 60, 6)];
        let ((end, body), runs) = prefix(lines).unwrap();
        assert_eq!((end, body), (90, 7));
        assert_eq!(Run::nth(&runs, 0), Some(1));
        assert_eq!(Run::nth(&runs, 1), Some(3));
        assert_eq!(Run::nth(&runs, 2), Some(100));
        assert_eq!(Run::nth(&runs, 3), None);
        // A line twice, or ends that go back: not one prefix.
        assert_eq!(prefix(vec![(1, 1, 1, 30, 5), (1, 2, 1, 30, 5)]), None);
        assert_eq!(prefix(vec![(1, 1, 1, 30, 5), (2, 2, 1, 20, 5)]), None);
    }
}
