//! Rebuilding the key table at start from the journal: every keyed usage's record carries its
//! key ([`KeyMark`]). Only segments written within the window can hold a live key (a key's
//! records are written at or after its first use), so only they are read: start-up reads the
//! window's keyed traffic, not the whole history.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::{KeyMark, Keys, Run};
use crate::store::journal::{self, Record};

/// A bulk's stored lines seen so far: the prefix through its last stored line, and the ids.
struct BulkSeen {
    end: u64,
    body: u64,
    line: u32,
    created_s: u64,
    runs: Vec<Run>,
}

/// What a rebuild found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rebuilt {
    pub segments: usize,
    pub keys: usize,
}

/// Put every live key of the segments in `dir` into `keys`.
pub fn rebuild(dir: &Path, keys: &Keys, window_s: u64) -> std::io::Result<Rebuilt> {
    let now_s = super::unix_now();
    let since = SystemTime::now()
        .checked_sub(Duration::from_secs(window_s.saturating_add(1)))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut segs = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let Some((h, seq)) = name.to_str().and_then(journal::parse_name) else {
            continue;
        };
        let modified = e.metadata()?.modified()?;
        if modified >= since {
            segs.push((modified, h, seq, e.path()));
        }
    }
    // Oldest first: a bulk resumed after a restart continues in a later segment.
    segs.sort_by_key(|s| (s.0, s.1, s.2));
    let mut found = Rebuilt::default();
    let mut bulks: HashMap<u128, BulkSeen> = HashMap::new();
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
                || m.created_s.saturating_add(window_s) <= now_s
            {
                return;
            }
            found.keys += 1;
            take(keys, &mut bulks, id, &m, h.stripes, now_s);
        });
    }
    for (key, b) in bulks {
        keys.restore_bulk(key, (b.end, b.body), &b.runs, b.created_s);
    }
    Ok(found)
}

fn take(
    keys: &Keys,
    bulks: &mut HashMap<u128, BulkSeen>,
    id: u64,
    m: &KeyMark,
    stride: u32,
    now_s: u64,
) {
    if m.line == 0 {
        keys.restore_single(m.key, m.body, id, m.created_s, now_s);
        return;
    }
    let b = bulks.entry(m.key).or_insert_with(|| BulkSeen {
        end: 0,
        body: 0,
        line: 0,
        created_s: m.created_s,
        runs: Vec::new(),
    });
    // Lines come in order (one stripe's records are in order; a bulk resumed later is in a
    // later segment); one out of order is not a continuation of this bulk's prefix.
    if m.line <= b.line || m.end < b.end {
        return;
    }
    b.line = m.line;
    b.end = m.end;
    b.body = m.body;
    Run::push(&mut b.runs, id, stride);
}
