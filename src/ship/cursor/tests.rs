use super::*;
use crate::json::scan::Patient;
use crate::store::recover::tests::temp_dir;
use crate::time::Timestamp;
use std::io::Write;
use std::path::PathBuf;

fn key(base: u64, stripe: u32) -> Header {
    Header {
        stripes: 2,
        stripe,
        base,
    }
}

/// The framed records of usages `ids`, with a lease record first.
fn records(ids: &[u64]) -> Vec<u8> {
    let mut out = Vec::new();
    journal::encode_lease(&mut out, 1_000_000);
    for &id in ids {
        let med = format!("med-{id}");
        let u = Usage {
            patient: Patient::Num(id * 10),
            timestamp: Timestamp {
                ms: id as i64,
                offset_min: 60,
            },
            medication: med.as_bytes(),
        };
        journal::encode(&mut out, id, &u);
    }
    out
}

/// Segment `seq` of `k` in `dir` holding `bytes` after its header; its path.
fn segment(dir: &Path, k: &Header, seq: u32, bytes: &[u8]) -> PathBuf {
    let (mut f, _) = journal::create_segment(dir, k, seq, 0).unwrap();
    f.write_all(bytes).unwrap();
    dir.join(journal::segment_name(k, seq))
}

fn append(path: &Path, bytes: &[u8]) {
    let mut f = fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

/// Read with a fresh listing; the ids read and why it stopped.
fn read(dir: &Path, c: &mut Cursor, max: usize) -> (Vec<u64>, Stop) {
    let listing = Listing::read(dir).unwrap();
    let mut ids = Vec::new();
    let mut buf = Vec::new();
    let (n, stop) = c
        .read(dir, &listing, &mut buf, max, |id, u| {
            assert_eq!(u.patient, Patient::Num(id * 10));
            ids.push(id);
        })
        .unwrap();
    assert_eq!(n, ids.len());
    (ids, stop)
}

#[test]
fn every_record_is_read_once_in_order_across_segments() {
    let dir = temp_dir("cursor-order");
    let k = key(0, 1);
    segment(&dir, &k, 0, &records(&[2, 4, 6]));
    segment(&dir, &k, 1, &records(&[8, 10]));
    let mut c = Cursor::new(k, Pos::default());
    assert_eq!(read(&dir, &mut c, 2), (vec![2, 4], Stop::Full));
    assert_eq!(read(&dir, &mut c, 100), (vec![6, 8, 10], Stop::CaughtUp));
    assert_eq!(c.pos.seq, 1);
    assert_eq!(read(&dir, &mut c, 100), (vec![], Stop::CaughtUp));
    // The open segment grows; a new cursor from the saved position reads only the new.
    append(
        &dir.join(journal::segment_name(&k, 1)),
        &records(&[12])[MIN_LEASE..],
    );
    let mut again = Cursor::new(k, c.pos);
    assert_eq!(read(&dir, &mut again, 100), (vec![12], Stop::CaughtUp));
    let _ = fs::remove_dir_all(dir);
}

/// A lease record's framed length (the first record of [`records`]).
const MIN_LEASE: usize = journal::MIN_RECORD;

#[test]
fn a_torn_tail_waits_while_the_segment_is_open_and_is_left_once_it_is_not() {
    let dir = temp_dir("cursor-torn");
    let k = key(0, 0);
    let whole = records(&[1, 3]);
    let cut = whole.len() - 5;
    let path = segment(&dir, &k, 0, &whole[..cut]);
    let mut c = Cursor::new(k, Pos::default());
    assert_eq!(read(&dir, &mut c, 100), (vec![1], Stop::CaughtUp));
    let before = c.pos;
    assert_eq!(read(&dir, &mut c, 100), (vec![], Stop::CaughtUp));
    assert_eq!(c.pos, before, "waits before the partial record");
    append(&path, &whole[cut..]);
    assert_eq!(read(&dir, &mut c, 100), (vec![3], Stop::CaughtUp));
    // Torn again, and then sealed by a successor: the tail is left, the next one read.
    append(&path, &records(&[5])[MIN_LEASE..][..7]);
    segment(&dir, &k, 1, &records(&[5, 7]));
    assert_eq!(read(&dir, &mut c, 100), (vec![5, 7], Stop::CaughtUp));
    assert_eq!(c.pos.seq, 1);
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn a_newer_epoch_or_an_index_makes_a_segment_final() {
    let dir = temp_dir("cursor-final");
    let old = key(0, 0);
    let whole = records(&[1, 3]);
    segment(&dir, &old, 0, &whole[..whole.len() - 3]);
    let listing = Listing::read(&dir).unwrap();
    assert!(!listing.is_final(&old, 0));
    fs::write(dir.join(journal::name_as(&old, 0, ".idx")), b"").unwrap();
    assert!(Listing::read(&dir).unwrap().is_final(&old, 0));
    fs::remove_file(dir.join(journal::name_as(&old, 0, ".idx"))).unwrap();
    segment(&dir, &key(100, 0), 0, &records(&[101]));
    assert!(Listing::read(&dir).unwrap().is_final(&old, 0));
    let mut c = Cursor::new(old, Pos::default());
    assert_eq!(read(&dir, &mut c, 100), (vec![1], Stop::CaughtUp));
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn a_corrupt_record_in_a_final_segment_is_never_skipped() {
    let dir = temp_dir("cursor-corrupt");
    let k = key(0, 0);
    let mut bytes = records(&[1, 3, 5]);
    let second = MIN_LEASE + (bytes.len() - MIN_LEASE) / 3;
    bytes[second + 8] ^= 0xff; // inside record 3's payload: its checksum fails
    segment(&dir, &k, 0, &bytes);
    segment(&dir, &k, 1, &records(&[7]));
    let mut c = Cursor::new(k, Pos::default());
    let (ids, stop) = read(&dir, &mut c, 100);
    assert_eq!(ids, vec![1]);
    assert!(
        matches!(stop, Stop::Corrupt(ref why) if why.contains("bad record")),
        "{stop:?}"
    );
    assert_eq!(
        read(&dir, &mut c, 100).0,
        Vec::<u64>::new(),
        "stays before it"
    );
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn a_removed_segment_moves_the_cursor_to_the_next_one() {
    let dir = temp_dir("cursor-gone");
    let k = key(0, 0);
    segment(&dir, &k, 3, &records(&[9]));
    let mut c = Cursor::new(k, Pos { seq: 1, offset: 0 });
    assert_eq!(read(&dir, &mut c, 100), (vec![9], Stop::CaughtUp));
    assert_eq!(c.pos.seq, 3);
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn records_larger_than_a_chunk_in_all_are_read_whole() {
    let dir = temp_dir("cursor-chunk");
    let k = key(0, 0);
    let ids: Vec<u64> = (1..=400_000).collect();
    let bytes = records(&ids);
    assert!(bytes.len() > CHUNK, "spans chunks");
    segment(&dir, &k, 0, &bytes);
    let mut c = Cursor::new(k, Pos::default());
    let (got, stop) = read(&dir, &mut c, usize::MAX);
    assert_eq!(stop, Stop::CaughtUp);
    assert_eq!(got, ids);
    let _ = fs::remove_dir_all(dir);
}
