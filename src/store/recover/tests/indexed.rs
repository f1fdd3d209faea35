//! Start-up by index: sealed segments are known by their `.idx` alone; only segments without
//! a valid one are read.

use super::*;
use crate::store::index::{self, Builder};

fn idx_of(seg: &Path) -> PathBuf {
    seg.with_extension("idx")
}

fn read_only(stripes: u32) -> Options {
    Options {
        read_only: true,
        ..opts(stripes)
    }
}

fn len(p: &Path) -> u64 {
    fs::metadata(p).unwrap().len()
}

/// The index at `idx` is valid for its segment `seg` and says exactly what scanning `seg`
/// says.
fn index_matches(seg: &Path) {
    let bytes = fs::read(seg).unwrap();
    let (b, end) = Builder::from_segment(&bytes);
    assert_eq!(end, End::Clean);
    let got = index::load(&idx_of(seg), bytes.len() as u64).unwrap();
    assert_eq!(got.entries, b.entries(), "{}", seg.display());
    assert_eq!(got.meta.records, b.records());
    assert_eq!(got.meta.data_len, b.end());
}

#[test]
fn sealed_segments_are_opened_by_index_alone() {
    let dir = temp_dir("by-index");
    let ids = run_with(&dir, 2, 3000, 4096);
    let segs = segments(&dir);
    assert!(segs.len() > 20, "{} segments", segs.len());
    for seg in &segs {
        index_matches(seg);
    }
    let r = recover(&dir, opts(2)).unwrap();
    assert_eq!((r.scanned_bytes, r.by_index), (0, segs.len() as u64));
    assert_eq!((r.records, r.segments.count()), (3000, segs.len() as u64));
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    all_readable(&r, &ids);
    for key in r.segments.keys() {
        for s in r.segments.list(&key) {
            assert!(s.entries.is_none());
            assert_eq!(s.idx_len, len(&r.segments.index_path(&s.meta)));
        }
    }
    drop(r);

    // A record flipped in the middle of a sealed segment: not noticed, as nothing is read.
    let mid = &segs[segs.len() / 2];
    let mut bytes = fs::read(mid).unwrap();
    let at = usage_offsets(&bytes);
    assert!(at.len() > 2);
    bytes[at[at.len() / 2] + 10] ^= 0x40;
    fs::write(mid, &bytes).unwrap();
    // A segment without its index: read, checked and indexed again.
    let other = &segs[segs.len() / 3];
    fs::remove_file(idx_of(other)).unwrap();
    let r = recover(&dir, opts(2)).unwrap();
    assert_eq!(r.scanned_bytes, len(other));
    assert_eq!(r.by_index, segs.len() as u64 - 1);
    assert_eq!(r.records, 3000);
    assert!(!r.corrupt && r.warnings.is_empty(), "{:?}", r.warnings);
    index_matches(other);
    drop(r);
    assert_eq!(recover(&dir, opts(2)).unwrap().scanned_bytes, 0);

    // Without its index, the flipped record is found.
    fs::remove_file(idx_of(mid)).unwrap();
    let err = recover(&dir, opts(2)).err().expect("corruption found");
    assert!(err.contains(&mid.display().to_string()), "{err}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_orphan_and_leftover_indexes_are_removed_and_rebuilt() {
    let dir = temp_dir("bad-idx");
    let ids = run_with(&dir, 1, 600, 4096);
    let segs = segments(&dir);
    let (a, b) = (&segs[1], &segs[4]);
    // a: a flipped header byte; b: its entries cut short.
    let mut idx = fs::read(idx_of(a)).unwrap();
    idx[50] ^= 1;
    fs::write(idx_of(a), &idx).unwrap();
    let idx = fs::read(idx_of(b)).unwrap();
    fs::write(idx_of(b), &idx[..idx.len() - 8]).unwrap();
    // An index without a segment, and a write a crash cut short.
    let key = journal::parse_name(a.file_name().unwrap().to_str().unwrap())
        .unwrap()
        .0;
    let orphan = dir.join(index::index_name(&key, 999));
    fs::copy(idx_of(&segs[2]), &orphan).unwrap();
    let tmp = journal::tmp_path(&idx_of(&segs[3]));
    fs::write(&tmp, b"half an index").unwrap();
    let before: Vec<(PathBuf, Vec<u8>)> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.clone(), fs::read(&p).unwrap()))
        .collect();

    // Read-only: the same findings, nothing written or removed; the rebuilt entries in RAM.
    let r = recover(&dir, read_only(1)).unwrap();
    assert_eq!(r.scanned_bytes, len(a) + len(b));
    assert_eq!(r.warnings.len(), 4, "{:?}", r.warnings);
    for (p, bytes) in &before {
        assert_eq!(&fs::read(p).unwrap(), bytes, "{} unchanged", p.display());
    }
    let in_ram: Vec<u32> = r
        .segments
        .list(&key)
        .iter()
        .filter(|s| s.entries.is_some())
        .map(|s| s.meta.seq)
        .collect();
    let seq = |p: &Path| {
        journal::parse_name(p.file_name().unwrap().to_str().unwrap())
            .unwrap()
            .1
    };
    assert_eq!(in_ram, vec![seq(a), seq(b)]);
    all_readable(&r, &ids);
    drop(r);

    let r = recover(&dir, opts(1)).unwrap();
    let warned = |what: &str, p: &Path| {
        assert!(
            r.warnings
                .iter()
                .any(|w| w.contains(&p.display().to_string()) && w.contains(what)),
            "{what} {}: {:?}",
            p.display(),
            r.warnings
        )
    };
    warned("invalid", &idx_of(a));
    warned("invalid", &idx_of(b));
    warned("no segment", &orphan);
    warned("cut short", &tmp);
    assert_eq!(r.scanned_bytes, len(a) + len(b));
    assert!(!orphan.exists() && !tmp.exists());
    index_matches(a);
    index_matches(b);
    all_readable(&r, &ids);
    drop(r);
    let r = recover(&dir, opts(1)).unwrap();
    assert_eq!(
        (r.scanned_bytes, r.warnings.len()),
        (0, 0),
        "{:?}",
        r.warnings
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_missing_segment_between_indexed_ones_is_corruption() {
    let dir = temp_dir("gap");
    let first = run_with(&dir, 1, 600, 4096);
    let segs = segments(&dir);
    let records = |p: &Path| index::read_meta(&idx_of(p), len(p)).unwrap().records;
    let kept: u64 = segs[..3].iter().map(|p| records(p)).sum();
    assert!(kept > 0 && records(&segs[3]) > 0);
    fs::remove_file(&segs[3]).unwrap();
    fs::remove_file(idx_of(&segs[3])).unwrap();
    let err = recover(&dir, opts(1))
        .err()
        .expect("a gap refuses the start");
    assert!(
        err.contains(&segs[4].display().to_string()) && err.contains("was expected"),
        "{err}"
    );
    let r = recover(&dir, read_only(1)).unwrap();
    assert!(r.corrupt);
    assert_eq!(r.records, kept);
    all_readable(&r, &first[..kept as usize]);
    drop(r);

    let r = recover(
        &dir,
        Options {
            repair: true,
            ..opts(1)
        },
    )
    .unwrap();
    assert_eq!(r.records, kept);
    assert!(PathBuf::from(format!("{}.corrupt-0", segs[4].display())).exists());
    assert!(!idx_of(&segs[4]).exists() && !segs[5].exists());
    drop(r);
    // Ids go on past every id the moved-aside segments held.
    let second = run_with(&dir, 1, 50, 4096);
    let max = *first.iter().max().unwrap();
    assert!(second.iter().all(|&id| id > max));
    let r = recover(&dir, opts(1)).unwrap();
    all_readable(&r, &first[..kept as usize]);
    all_readable(&r, &second);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_id_stays_readable_and_unique_across_restarts() {
    let dir = temp_dir("restarts");
    let mut all = Vec::new();
    for (round, stripes) in [2, 2, 3, 1, 1].into_iter().enumerate() {
        let ids = run_with(&dir, stripes, 400 + round as u64 * 7, 2048);
        let r = recover(&dir, opts(stripes)).unwrap();
        all_readable(&r, &ids);
        assert_eq!(
            r.scanned_bytes, 0,
            "a clean stop leaves every segment indexed"
        );
        all.extend(ids);
        assert_eq!(stored(&r).len(), all.len());
        let unique: std::collections::HashSet<u64> = all.iter().copied().collect();
        assert_eq!(unique.len(), all.len(), "no id handed out twice");
    }
    fs::remove_dir_all(&dir).unwrap();
}
