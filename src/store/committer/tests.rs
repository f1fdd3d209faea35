//! Sealing in the journal thread: every sealed segment is in the segment table and gets an
//! index that says exactly what its bytes say.

use super::segment::Segment;
use super::*;
use crate::json::scan::{Patient, Usage};
use crate::store::index::{self, Builder};
use crate::store::journal;
use crate::store::recover::tests::temp_dir;
use crate::time::Timestamp;

const KEY: Header = Header {
    stripes: 1,
    stripe: 0,
    base: 0,
};

fn setup(dir: &std::path::Path, segment_bytes: u64) -> Setup {
    Setup {
        dir: dir.to_path_buf(),
        header: KEY,
        seq: 0,
        sync: SyncMode::Never,
        segment_bytes,
        seal_after: None,
        lease: 0,
        last_id: 0,
        worker: 0,
        first_slot: 0,
        link: Arc::new(StripeLink::new(0, 0)),
        segments: Arc::new(Segments::new(dir.to_path_buf())),
    }
}

/// A batch of the usages `ids` (slot = id - 1: one stripe, base 0).
fn batch(ids: std::ops::Range<u64>) -> Vec<u8> {
    let mut out = Vec::new();
    for id in ids {
        let med = format!("med-{}", id % 13);
        let patient = if id % 3 == 0 {
            Patient::Num(id)
        } else {
            Patient::Str(b"a patient")
        };
        let u = Usage {
            patient,
            timestamp: Timestamp {
                ms: id as i64,
                offset_min: 0,
            },
            medication: med.as_bytes(),
        };
        journal::encode(&mut out, id, &u);
    }
    out
}

/// Every segment file of `dir`, by seq.
fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

/// Each segment of `dir` is sealed in `seg`'s table with an index on disk equal to what a
/// scan of its bytes builds, the slots continuing; returns the usages they hold.
fn check_sealed(dir: &std::path::Path, seg: &Segment) -> u64 {
    let table = seg.segments.list(&KEY);
    let paths = files(dir);
    assert_eq!(table.len(), paths.len(), "every segment sealed");
    let mut slot = 0;
    for (s, path) in table.iter().zip(&paths) {
        let bytes = std::fs::read(path).unwrap();
        let (b, end) = Builder::from_segment(&bytes);
        assert_eq!(end, journal::End::Clean);
        let idx = index::load(&path.with_extension("idx"), bytes.len() as u64).unwrap();
        assert_eq!(idx.entries, b.entries(), "{}", path.display());
        assert_eq!((idx.meta.records, idx.meta.first_slot), (b.records(), slot));
        assert_eq!(idx.meta, s.meta);
        assert!(s.entries.is_none(), "index durable: entries dropped");
        assert_eq!(s.idx_len, idx.meta.file_len());
        slot += b.records();
    }
    assert_eq!(seg.link.sealed_end(), slot);
    slot
}

#[test]
fn rolling_seals_and_indexes_every_segment_and_finish_the_last() {
    let dir = temp_dir("seal-roll");
    let mut seg = Segment::create(setup(&dir, 4096)).unwrap();
    let mut id = 1;
    for n in (1..60).cycle().take(80) {
        seg.write_batch(&batch(id..id + n), id + n - 1).unwrap();
        id += n;
        assert_eq!(seg.first_slot, seg.link.sealed_end(), "sealed up to here");
    }
    assert!(files(&dir).len() > 10);
    seg.finish().unwrap();
    assert_eq!(check_sealed(&dir, &seg), id - 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn want_seal_rolls_at_the_next_batch_if_the_segment_holds_a_usage() {
    let dir = temp_dir("seal-want");
    let mut seg = Segment::create(setup(&dir, 1 << 20)).unwrap();
    seg.link.want_seal.store(true, Ordering::Relaxed);
    seg.write_batch(&batch(1..4), 3).unwrap();
    assert_eq!(seg.seq, 0, "a segment of leases alone is not sealed");
    seg.write_batch(&batch(4..6), 5).unwrap();
    assert_eq!(seg.seq, 1, "sealed before the batch");
    assert!(!seg.link.want_seal.load(Ordering::Relaxed));
    assert_eq!(seg.link.sealed_end(), 3);
    seg.write_batch(&batch(6..7), 6).unwrap();
    assert_eq!(seg.seq, 1, "asked once, sealed once");
    seg.finish().unwrap();
    assert_eq!(check_sealed(&dir, &seg), 6);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_relinked_segment_is_indexed_at_its_new_offsets() {
    let dir = temp_dir("seal-relink");
    let mut seg = Segment::create(setup(&dir, 1 << 20)).unwrap();
    seg.write_batch(&batch(1..50), 49).unwrap();
    std::fs::remove_file(&seg.path).unwrap();
    seg.write_batch(&batch(50..90), 89).unwrap();
    assert_eq!(seg.seq, 1, "rewritten into a new segment");
    seg.finish().unwrap();
    assert_eq!(check_sealed(&dir, &seg), 89);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_index_that_cannot_be_written_stays_in_memory_and_is_tried_again() {
    let dir = temp_dir("seal-retry");
    let mut seg = Segment::create(setup(&dir, 1 << 20)).unwrap();
    let blocker = journal::tmp_path(&dir.join(index::index_name(&KEY, 0)));
    std::fs::create_dir(&blocker).unwrap();
    seg.write_batch(&batch(1..10), 9).unwrap();
    seg.link.want_seal.store(true, Ordering::Relaxed);
    seg.write_batch(&batch(10..12), 11).unwrap();
    let first = seg.segments.list(&KEY).remove(0);
    assert!(first.entries.is_some(), "kept in memory");
    assert_eq!(seg.link.sealed_end(), 9, "sealed all the same");
    assert_eq!(seg.unindexed.len(), 1);
    std::fs::remove_dir(&blocker).unwrap();
    seg.finish().unwrap();
    assert!(seg.unindexed.is_empty());
    assert_eq!(check_sealed(&dir, &seg), 11);
    std::fs::remove_dir_all(&dir).unwrap();
}
