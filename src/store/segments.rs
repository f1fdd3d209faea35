//! The segment table: every sealed segment of every stripe, in slot order, with its index
//! header and, while they are only in RAM, its index entries (a segment just sealed whose
//! `.idx` is not durable yet, or one a read-only recovery indexed without writing). Shared by
//! the journal threads (insert at seal), the reader threads (cold reads), retention and
//! `/metrics`; never touched on a worker's hot path. One mutex, held only to copy a few words.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::index::{self, Meta};
use super::journal::{self, Header};

/// One sealed segment.
#[derive(Debug, Clone)]
pub struct Sealed {
    pub meta: Meta,
    /// Its index entries while they are only in RAM; `None` once its `.idx` is durable (read
    /// them from there).
    pub entries: Option<Arc<[u64]>>,
    /// The `.idx` file's length once written (0 before).
    pub idx_len: u64,
}

impl Sealed {
    /// Bytes on disk: the segment and its index.
    pub fn disk_bytes(&self) -> u64 {
        self.meta.data_len + self.idx_len
    }
}

#[derive(Debug, Default)]
struct Table {
    stripes: BTreeMap<Header, VecDeque<Sealed>>,
}

#[derive(Debug)]
pub struct Segments {
    dir: PathBuf,
    table: Mutex<Table>,
    /// Bytes of sealed segments and their indexes.
    bytes: AtomicU64,
    count: AtomicU64,
}

impl Segments {
    pub fn new(dir: PathBuf) -> Segments {
        Segments {
            dir,
            table: Mutex::new(Table::default()),
            bytes: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn segment_path(&self, m: &Meta) -> PathBuf {
        self.dir.join(journal::segment_name(&m.key, m.seq))
    }

    pub fn index_path(&self, m: &Meta) -> PathBuf {
        self.dir.join(index::index_name(&m.key, m.seq))
    }

    /// Add a sealed segment: the next one of its stripe (its first slot continues the last
    /// one's; checked).
    pub fn insert(&self, s: Sealed) -> Result<(), String> {
        let mut t = self.lock();
        let list = t.stripes.entry(s.meta.key).or_default();
        if let Some(last) = list.back() {
            let end = last.meta.first_slot + last.meta.records;
            if s.meta.first_slot != end || s.meta.seq <= last.meta.seq {
                return Err(format!(
                    "segment {} starts at slot {}, the one before ends at {end}",
                    s.meta.seq, s.meta.first_slot
                ));
            }
        }
        self.bytes.fetch_add(s.disk_bytes(), Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        list.push_back(s);
        Ok(())
    }

    /// Its `.idx` is durable (`idx_len` bytes): drop the entries kept in RAM.
    pub fn indexed(&self, key: &Header, seq: u32, idx_len: u64) {
        let mut t = self.lock();
        if let Some(s) = t
            .stripes
            .get_mut(key)
            .and_then(|l| l.iter_mut().find(|s| s.meta.seq == seq))
        {
            self.bytes.fetch_add(idx_len, Ordering::Relaxed);
            self.bytes.fetch_sub(s.idx_len, Ordering::Relaxed);
            s.idx_len = idx_len;
            s.entries = None;
        }
    }

    /// The sealed segment of `key` holding `slot`, if any.
    pub fn find(&self, key: &Header, slot: u64) -> Option<Sealed> {
        let t = self.lock();
        let list = t.stripes.get(key)?;
        let i = list.partition_point(|s| s.meta.first_slot + s.meta.records <= slot);
        list.get(i).filter(|s| s.meta.first_slot <= slot).cloned()
    }

    /// The oldest sealed segment of `key`.
    pub fn first(&self, key: &Header) -> Option<Sealed> {
        self.lock().stripes.get(key)?.front().cloned()
    }

    /// Remove the oldest sealed segment of `key` from the table (retention; the files are
    /// the caller's).
    pub fn remove_first(&self, key: &Header) -> Option<Sealed> {
        let s = self.lock().stripes.get_mut(key)?.pop_front()?;
        self.bytes.fetch_sub(s.disk_bytes(), Ordering::Relaxed);
        self.count.fetch_sub(1, Ordering::Relaxed);
        Some(s)
    }

    /// Every stripe key with sealed segments.
    pub fn keys(&self) -> Vec<Header> {
        self.lock().stripes.keys().copied().collect()
    }

    /// Every sealed segment of `key`, oldest first.
    pub fn list(&self, key: &Header) -> Vec<Sealed> {
        self.lock()
            .stripes
            .get(key)
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Bytes of sealed segments and their indexes.
    pub fn disk_bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Sealed segments.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(stripe: u32, seq: u32, first_slot: u64, records: u64) -> Meta {
        Meta {
            key: Header {
                stripes: 2,
                stripe,
                base: 0,
            },
            seq,
            first_slot,
            records,
            data_len: 100,
            last_id: 0,
            lease: 0,
            sealed_ms: 0,
            keyed: 0,
        }
    }

    fn sealed(m: Meta) -> Sealed {
        Sealed {
            meta: m,
            entries: Some(Arc::from(vec![32u64])),
            idx_len: 0,
        }
    }

    #[test]
    fn a_slot_is_found_in_the_segment_that_holds_it_and_nowhere_else() {
        let t = Segments::new(PathBuf::from("/nonexistent"));
        t.insert(sealed(meta(0, 0, 0, 10))).unwrap();
        t.insert(sealed(meta(0, 1, 10, 5))).unwrap();
        t.insert(sealed(meta(1, 0, 0, 7))).unwrap();
        let k0 = meta(0, 0, 0, 0).key;
        assert_eq!(t.find(&k0, 0).unwrap().meta.seq, 0);
        assert_eq!(t.find(&k0, 9).unwrap().meta.seq, 0);
        assert_eq!(t.find(&k0, 10).unwrap().meta.seq, 1);
        assert_eq!(t.find(&k0, 14).unwrap().meta.seq, 1);
        assert!(t.find(&k0, 15).is_none());
        assert_eq!(t.count(), 3);
        assert_eq!(t.disk_bytes(), 300);
        t.indexed(&k0, 1, 40);
        assert!(t.find(&k0, 12).unwrap().entries.is_none());
        assert_eq!(t.disk_bytes(), 340);
        assert_eq!(t.remove_first(&k0).unwrap().meta.seq, 0);
        assert!(t.find(&k0, 3).is_none());
        assert_eq!(t.disk_bytes(), 240);
    }

    #[test]
    fn a_segment_that_does_not_continue_its_stripe_is_refused() {
        let t = Segments::new(PathBuf::from("/nonexistent"));
        t.insert(sealed(meta(0, 0, 0, 10))).unwrap();
        assert!(t.insert(sealed(meta(0, 1, 11, 5))).is_err());
        assert!(t.insert(sealed(meta(0, 0, 10, 5))).is_err());
        assert_eq!(t.count(), 1);
    }
}
