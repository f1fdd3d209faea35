use super::*;
use crate::json::scan::Patient;
use crate::store::recover::tests::temp_dir;
use crate::time::Timestamp;
use proptest::prelude::*;

const KEY: Header = Header {
    stripes: 3,
    stripe: 1,
    base: 40,
};

/// What one record of a test segment is.
#[derive(Debug, Clone)]
enum Op {
    /// A usage; its patient a number, or a string of this many bytes.
    Usage {
        patient: Option<u8>,
        med: u8,
    },
    Lease,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (proptest::option::of(1..=64u8), 1..=64u8)
            .prop_map(|(patient, med)| Op::Usage { patient, med }),
        1 => Just(Op::Lease),
    ]
}

/// A segment of `KEY` (header, a first lease, then `ops`), the ids of its usages in slot
/// order, and the offsets of those usages.
fn segment(ops: &[Op]) -> (Vec<u8>, Vec<u64>, Vec<u64>) {
    let mut b = KEY.encode().to_vec();
    journal::encode_lease(&mut b, 1000);
    let (mut ids, mut offsets) = (Vec::new(), Vec::new());
    let long = "p".repeat(64);
    let meds = "m".repeat(64);
    for (i, o) in ops.iter().enumerate() {
        let id = 7 + 3 * i as u64;
        match o {
            Op::Lease => journal::encode_lease(&mut b, id + 3000),
            Op::Usage { patient, med } => {
                let usage = Usage {
                    patient: match patient {
                        None => Patient::Num(id),
                        Some(n) => Patient::Str(&long.as_bytes()[..usize::from(*n)]),
                    },
                    timestamp: Timestamp {
                        ms: id as i64,
                        offset_min: 0,
                    },
                    medication: &meds.as_bytes()[..usize::from(*med)],
                };
                offsets.push(b.len() as u64);
                ids.push(id);
                journal::encode(&mut b, id, &usage);
            }
        }
    }
    (b, ids, offsets)
}

/// A valid index of `records` usages: entries rising by at least a stride of the smallest
/// records, by `gaps`.
fn sample(records: u64, gaps: &[u64], first_slot: u64, seq: u32) -> Sealed {
    let least = u64::from(STRIDE) * MIN_RECORD as u64;
    let mut at = journal::HEADER_LEN as u64;
    let entries: Vec<u64> = gaps
        .iter()
        .take(records.div_ceil(u64::from(STRIDE)) as usize)
        .map(|g| {
            let o = at;
            at += least + g;
            o
        })
        .collect();
    Sealed {
        meta: Meta {
            key: KEY,
            seq,
            first_slot,
            records,
            data_len: at,
            last_id: if records > 0 { 99 } else { 0 },
            lease: 1234,
            sealed_ms: 1_700_000_000_000,
            keyed: records.min(3) as u32,
        },
        entries,
    }
}

proptest! {
    #[test]
    fn header_and_entries_round_trip(
        records in 0..2000u64,
        gaps in proptest::collection::vec(0..10_000u64, 63),
        first_slot in 0..MAX_ID / 2,
        seq in any::<u32>(),
        stripes in 1..=MAX_STRIPES,
        base in 0..MAX_ID,
        sealed_ms in any::<u64>(),
    ) {
        let mut s = sample(records, &gaps, first_slot, seq);
        s.meta.key = Header { stripes, stripe: stripes - 1, base };
        s.meta.sealed_ms = sealed_ms;
        let b = s.encode();
        prop_assert_eq!(b.len() as u64, s.meta.file_len());
        prop_assert_eq!(Sealed::decode(&b), Ok(s.clone()));
        prop_assert_eq!(Meta::decode(&b[..HEADER_LEN]).map(|(m, _)| m), Ok(s.meta));
    }

    #[test]
    fn builder_in_batches_equals_builder_over_the_file(
        ops in proptest::collection::vec(op(), 0..300),
        cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..20),
        probes in proptest::collection::vec(any::<proptest::sample::Index>(), 1..20),
    ) {
        let (seg, ids, offsets) = segment(&ops);
        let (whole, end) = Builder::from_segment(&seg);
        prop_assert_eq!(end, journal::End::Clean);
        let oracle: Vec<u64> = offsets.iter().step_by(STRIDE as usize).copied().collect();
        prop_assert_eq!(whole.entries(), &oracle[..]);
        prop_assert_eq!(whole.records(), ids.len() as u64);
        prop_assert_eq!(whole.end(), seg.len() as u64);

        // The same records noted in batches cut anywhere, even inside a frame.
        let records = &seg[journal::HEADER_LEN..];
        let mut at: Vec<usize> = cuts.iter().map(|c| c.index(records.len() + 1)).collect();
        at.extend([0, records.len()]);
        at.sort_unstable();
        let mut parts = Builder::new();
        for w in at.windows(2) {
            parts.note_batch(&records[w[0]..w[1]], (journal::HEADER_LEN + w[0]) as u64);
        }
        let sealed = parts.seal(KEY, 4, 500, 1);
        prop_assert_eq!(&sealed, &whole.seal(KEY, 4, 500, 1));
        prop_assert_eq!(sealed.meta.last_id, ids.last().copied().unwrap_or(0));
        let b = sealed.encode();
        prop_assert_eq!(Sealed::decode(&b), Ok(sealed.clone()));
        prop_assert_eq!(sealed.meta.check("e40-s3-w1-000004.idx", seg.len() as u64), Ok(()));
        // Every probed slot's span holds the record with its id.
        prop_assert_eq!(sealed.lookup(499), None);
        prop_assert_eq!(sealed.lookup(500 + ids.len() as u64), None);
        for p in probes.iter().filter(|_| !ids.is_empty()) {
            let i = p.index(ids.len());
            let span = sealed.lookup(500 + i as u64).expect("slot in segment");
            let bytes = &seg[span.bytes.start as usize..span.bytes.end as usize];
            let (id, _) = nth_usage(bytes, span.nth).expect("record in span");
            prop_assert_eq!(id, ids[i]);
        }
    }
}

#[test]
fn every_flipped_bit_is_caught() {
    let s = sample(100, &[5, 0, 7, 1], 10, 2);
    let b = s.encode();
    assert_eq!(s.entries.len(), 4);
    for at in 0..b.len() {
        for bit in 0..8 {
            let mut c = b.clone();
            c[at] ^= 1 << bit;
            assert!(Sealed::decode(&c).is_err(), "flip at {at} bit {bit}");
            if at < HEADER_LEN {
                assert!(Meta::decode(&c).is_err(), "header flip at {at} bit {bit}");
            }
        }
    }
}

#[test]
fn bad_lengths_and_bounds_are_rejected() {
    let s = sample(64, &[0, 0], 0, 0);
    let b = s.encode();
    assert!(Sealed::decode(&b[..b.len() - 1]).is_err(), "cut short");
    let mut longer = b.clone();
    longer.extend_from_slice(&[0; ENTRY_LEN]);
    assert!(Sealed::decode(&longer).is_err(), "an entry too many");
    for bad in [
        Meta {
            first_slot: MAX_ID - 64,
            ..s.meta
        },
        Meta {
            data_len: 64 * MIN_RECORD as u64,
            ..s.meta
        },
        Meta {
            key: Header {
                stripes: 2,
                stripe: 2,
                base: 0,
            },
            ..s.meta
        },
    ] {
        let b = Sealed {
            meta: bad,
            entries: s.entries.clone(),
        }
        .encode();
        assert!(Sealed::decode(&b).is_err(), "{bad:?}");
    }
    // Entries must rise inside the segment, even with a right checksum.
    let falling = Sealed {
        meta: s.meta,
        entries: vec![s.entries[1], s.entries[0]],
    };
    assert!(Sealed::decode(&falling.encode()).is_err());
}

#[test]
fn names_and_segment_length_must_agree() {
    let m = sample(1, &[0], 0, 7).meta;
    let len = m.data_len;
    assert_eq!(index_name(&KEY, 7), "e40-s3-w1-000007.idx");
    assert_eq!(m.check("e40-s3-w1-000007.idx", len), Ok(()));
    assert!(m.check("e40-s3-w1-000008.idx", len).is_err());
    assert!(m.check("e40-s3-w0-000007.idx", len).is_err());
    assert!(m.check("e40-s3-w1-000007.seg", len).is_err());
    assert!(m.check("e40-s3-w1-000007.idx.tmp", len).is_err());
    assert!(m.check("e40-s3-w1-000007.idx", len + 1).is_err());
    // A segment's name is not an index's, and the other way round.
    assert_eq!(journal::parse_name("e40-s3-w1-000007.idx"), None);
    assert_eq!(
        journal::parse_name_as("e40-s3-w1-000007.idx", ".idx"),
        Some((KEY, 7))
    );
}

#[test]
fn written_index_reads_back_and_a_tmp_leftover_is_not_one() {
    let dir = temp_dir("index");
    let ops: Vec<Op> = (0..100)
        .map(|i| match i % 9 {
            4 => Op::Lease,
            _ => Op::Usage {
                patient: Some(i % 64 + 1),
                med: 3,
            },
        })
        .collect();
    let (seg, _, _) = segment(&ops);
    let (b, _) = Builder::from_segment(&seg);
    let s = b.seal(KEY, 3, 0, 5);
    let seg_len = seg.len() as u64;
    // A crash's leftover under the temporary name is replaced.
    let path = dir.join(index_name(&KEY, 3));
    let tmp = journal::tmp_path(&path);
    fs::write(&tmp, b"torn").unwrap();
    assert_eq!(write(&dir, &s).unwrap(), s.meta.file_len());
    assert!(!tmp.exists());
    assert_eq!(load(&path, seg_len), Ok(s.clone()));
    assert_eq!(read_meta(&path, seg_len), Ok(s.meta));
    assert!(
        read_meta(&path, seg_len - 1).is_err(),
        "segment grew or shrank"
    );
    assert!(load(&path, seg_len + 1).is_err());

    // A whole index left under the temporary name (killed before the rename) is not read.
    fs::copy(&path, &tmp).unwrap();
    assert!(load(&tmp, seg_len).is_err());
    assert!(read_meta(&tmp, seg_len).is_err());
    // Nor is one renamed to another segment's name.
    let other = dir.join(index_name(&KEY, 4));
    fs::rename(&path, &other).unwrap();
    assert!(load(&other, seg_len).is_err());
    assert!(read_meta(&other, seg_len).is_err());
    assert!(load(&path, seg_len).is_err(), "missing");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn from_segment_stops_at_a_torn_tail() {
    let ops = vec![
        Op::Usage {
            patient: None,
            med: 5,
        };
        40
    ];
    let (mut seg, _, offsets) = segment(&ops);
    let last = *offsets.last().unwrap();
    seg.truncate(seg.len() - 3);
    let (b, end) = Builder::from_segment(&seg);
    assert_eq!(end, journal::End::Torn { at: last as usize });
    assert_eq!((b.records(), b.end()), (39, last));
    assert_eq!(b.entries(), &[offsets[0], offsets[32]]);
}

#[test]
fn journal_segments_index_and_recovery_takes_rewritten_indexes() {
    use crate::store::recover::tests::run;
    let (a, b) = (temp_dir("index-plain"), temp_dir("index-with-idx"));
    let ids = run(&a, 2, 300);
    for entry in fs::read_dir(&a).unwrap() {
        let path = entry.unwrap().path();
        fs::copy(&path, b.join(path.file_name().unwrap())).unwrap();
        let name = file_name(&path).to_string();
        let Some((key, seq)) = journal::parse_name(&name) else {
            continue;
        };
        let seg = fs::read(&path).unwrap();
        let (builder, end) = Builder::from_segment(&seg);
        assert_eq!(end, journal::End::Clean);
        let s = builder.seal(key, seq, 0, 1);
        // Every usage of the stripe, found through the index of its one segment.
        let mine: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|&id| (id - 1 - key.base) % 2 == u64::from(key.stripe))
            .collect();
        assert_eq!(s.meta.records, mine.len() as u64);
        for (slot, &want) in mine.iter().enumerate() {
            let span = s.lookup(slot as u64).unwrap();
            let bytes = &seg[span.bytes.start as usize..span.bytes.end as usize];
            assert_eq!(nth_usage(bytes, span.nth).unwrap().0, want);
        }
        write(&b, &s).unwrap();
        fs::write(journal::tmp_path(&b.join(index_name(&key, seq + 1))), b"x").unwrap();
    }
    // Recovery takes the rewritten indexes and removes the `*.idx.tmp` leftover: both runs go
    // on alike.
    assert_eq!(run(&a, 2, 50), run(&b, 2, 50));
    for d in [a, b] {
        fs::remove_dir_all(d).unwrap();
    }
}

/// Keyed usage records are counted, whether the records come whole from a file or in batches
/// cut anywhere, and the count survives the header.
#[test]
fn keyed_records_are_counted_from_the_file_and_in_batches() {
    let mut b = KEY.encode().to_vec();
    journal::encode_lease(&mut b, 1000);
    let usage = Usage {
        patient: Patient::Num(5),
        timestamp: Timestamp {
            ms: 1,
            offset_min: 0,
        },
        medication: b"m",
    };
    for i in 0..7u64 {
        let mark = journal::KeyMark {
            key: u128::from(i) + 1,
            created_s: 1,
            end: 10,
            body: 2,
            line: 0,
        };
        let keyed = i % 3 == 0;
        journal::encode_keyed(&mut b, 40 + 2 + 3 * i, &usage, keyed.then_some(&mark));
    }
    let (whole, end) = Builder::from_segment(&b);
    assert_eq!(end, journal::End::Clean);
    let mut pieces = Builder::new();
    for (k, byte) in b[journal::HEADER_LEN..].iter().enumerate() {
        pieces.note_batch(std::slice::from_ref(byte), (journal::HEADER_LEN + k) as u64);
    }
    for builder in [whole, pieces] {
        let s = builder.seal(KEY, 0, 0, 1);
        assert_eq!((s.meta.records, s.meta.keyed), (7, 3));
        assert_eq!(Meta::decode(&s.encode()).unwrap().0, s.meta);
    }
}

/// A version 1 header (checksum of bytes 0..88, four zero bytes after it) still reads, as an
/// index without keyed records; a version 1 header with those bytes set does not, nor does a
/// count above the records.
#[test]
fn a_version_1_header_reads_as_one_without_keys() {
    let s = sample(100, &[5, 0, 7, 1], 10, 2);
    let mut v1 = s.encode();
    v1[header_at::VERSION].copy_from_slice(&1u32.to_le_bytes());
    v1[header_at::KEYED].copy_from_slice(&[0; 4]);
    let crc = crc32c::crc32c(&v1[..header_at::CRC.start]);
    v1[header_at::CRC].copy_from_slice(&crc.to_le_bytes());
    let (m, _) = Meta::decode(&v1).unwrap();
    assert_eq!(m.keyed, 0);
    assert_eq!(m.records, s.meta.records);
    v1[header_at::KEYED].copy_from_slice(&1u32.to_le_bytes());
    assert!(Meta::decode(&v1).is_err());
    let mut many = s.meta;
    many.keyed = 101;
    assert!(Meta::decode(&many.encode(0)).is_err());
}
