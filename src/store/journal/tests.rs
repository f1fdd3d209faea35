use super::*;
use crate::time::Timestamp;
use proptest::prelude::*;

fn usages(long: &str) -> [Usage<'_>; 2] {
    [
        Usage {
            patient: Patient::Num(42),
            timestamp: Timestamp {
                ms: -5,
                offset_min: -300,
            },
            medication: b"A",
        },
        Usage {
            patient: Patient::Str(long.as_bytes()),
            timestamp: Timestamp {
                ms: 1,
                offset_min: 0,
            },
            medication: &[b'm'; MAX_STR],
        },
    ]
}

#[test]
fn records_round_trip_and_every_flip_is_caught() {
    let long = "é".repeat(MAX_STR / 2);
    for (i, u) in usages(&long).iter().enumerate() {
        let id = i as u64 + 7;
        let mut b = Vec::new();
        encode(&mut b, id, u);
        let (r, n) = decode(&b).unwrap();
        assert_eq!((r, n), (Record::Usage { id, usage: *u }, b.len()));
        for at in 0..b.len() {
            for bit in 0..8 {
                let mut c = b.clone();
                c[at] ^= 1 << bit;
                c.extend_from_slice(&b); // another record after it: never a torn tail
                assert!(
                    decode(&c)
                        .map(|(r, _)| r != Record::Usage { id, usage: *u })
                        .unwrap_or(true),
                    "flip at {at} bit {bit} unnoticed"
                );
                let mut seg = Header {
                    stripes: 1,
                    stripe: 0,
                    base: 0,
                }
                .encode()
                .to_vec();
                seg.extend_from_slice(&c);
                if decode(&c).is_err() {
                    assert_eq!(
                        scan(&seg, |_, _| {}),
                        End::Corrupt { at: HEADER_LEN },
                        "flip at {at} bit {bit} before an intact record is corruption"
                    );
                }
            }
        }
        for cut in 0..b.len() {
            assert_eq!(
                decode(&b[..cut]).map(|_| ()),
                Err(Bad::Truncated),
                "cut at {cut}"
            );
        }
    }
}

#[test]
fn torn_tails_and_corruption_are_told_apart() {
    let long = "x".repeat(40);
    let h = Header {
        stripes: 2,
        stripe: 1,
        base: 10,
    };
    let mut seg = h.encode().to_vec();
    encode_lease(&mut seg, 99);
    let mut ends = vec![seg.len()];
    for (i, u) in usages(&long).iter().cycle().take(5).enumerate() {
        encode(&mut seg, 12 + 2 * i as u64, u);
        ends.push(seg.len());
    }
    let mut seen = Vec::new();
    assert_eq!(scan(&seg, |at, r| seen.push((at, r))), End::Clean);
    assert_eq!(seen[0], (HEADER_LEN, Record::Lease(99)));
    assert_eq!(seen.len(), 6);
    // A cut anywhere inside the last record: torn at its start.
    let last = ends[ends.len() - 2];
    for cut in last + 1..seg.len() {
        assert_eq!(scan(&seg[..cut], |_, _| {}), End::Torn { at: last });
    }
    // Zeros after the last whole record (a power loss after the size grew): torn.
    let mut zeroed = seg.clone();
    zeroed.extend_from_slice(&[0; 300]);
    assert_eq!(scan(&zeroed, |_, _| {}), End::Torn { at: seg.len() });
    // A longer length in the second-to-last record: it would run to the end, but an
    // intact record follows it, so it is corruption and nothing is cut.
    let second_last = ends[ends.len() - 3];
    let mut bad = seg.clone();
    bad[second_last] = 140;
    assert_eq!(scan(&bad, |_, _| {}), End::Corrupt { at: second_last });
    // The last record complete in length but with a bad byte: corruption, not a tear.
    let mut flipped = seg.clone();
    let n = flipped.len();
    flipped[n - 1] ^= 1;
    assert_eq!(scan(&flipped, |_, _| {}), End::Corrupt { at: last });
}

#[test]
fn headers_are_checked_and_bounded() {
    let h = Header {
        stripes: 4,
        stripe: 3,
        base: 1 << 40,
    };
    let b = h.encode();
    assert_eq!(Header::decode(&b), Ok(h));
    assert!(Header::decode(b"not a header at all, not at all!").is_err());
    assert!(Header::decode(&b[..10]).is_err());
    for at in 0..HEADER_LEN {
        for bit in 0..8 {
            let mut c = b;
            c[at] ^= 1 << bit;
            assert!(Header::decode(&c).is_err(), "flip at {at} bit {bit}");
        }
    }
    // Version 1 (no checksum) is still read, within bounds.
    let mut v1 = b;
    v1[header_at::VERSION].copy_from_slice(&1u32.to_le_bytes());
    v1[header_at::CRC].copy_from_slice(&[0; 4]);
    assert_eq!(Header::decode(&v1), Ok(h));
    v1[header_at::STRIPES].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(
        Header::decode(&v1).is_err(),
        "a huge stripe count is refused"
    );
}

#[test]
fn names_round_trip() {
    let h = Header {
        stripes: 3,
        stripe: 2,
        base: 77,
    };
    assert_eq!(segment_name(&h, 5), "e77-s3-w2-000005.seg");
    assert_eq!(parse_name("e77-s3-w2-000005.seg"), Some((h, 5)));
    assert_eq!(parse_name("e77-s3-w2-000005.seg.tmp"), None);
    assert_eq!(parse_name("LOCK"), None);
}

/// A framed string record of `patient` and `medication`, whatever their lengths.
fn framed(patient: &[u8], medication: &[u8]) -> Vec<u8> {
    let mut out = vec![0; FRAME_LEN];
    let fixed = Fixed {
        id: 1,
        ms: 0,
        offset_min: 0,
        kind: KIND_STR,
        patient_len: patient.len() as u8,
        med_len: medication.len() as u8,
    };
    out.extend_from_slice(&fixed.encode());
    out.extend_from_slice(patient);
    out.extend_from_slice(medication);
    frame(&mut out, 0);
    out
}

/// `MAX_STR` bytes is the longest string a record holds; one more is not a record (so the
/// journal and the scanner, which share the constant, agree on what can be stored).
#[test]
fn strings_of_max_str_bytes_are_records_and_longer_are_not() {
    let longest = [b'x'; MAX_STR];
    let too_long = [b'x'; MAX_STR + 1];
    for (p, m) in [(&longest[..], &longest[..]), (b"p", &longest[..])] {
        let b = framed(p, m);
        let (r, n) = decode(&b).unwrap();
        assert_eq!(n, b.len());
        let Record::Usage { usage, .. } = r else {
            panic!("a usage")
        };
        assert_eq!((usage.patient, usage.medication), (Patient::Str(p), m));
    }
    assert_eq!(decode(&framed(&too_long, b"m")), Err(Bad::Corrupt));
    assert_eq!(decode(&framed(b"p", &too_long)), Err(Bad::Corrupt));
}

/// The header of any valid layout.
fn header() -> impl Strategy<Value = Header> {
    (1..=MAX_STRIPES, any::<u32>(), 0..crate::store::ids::MAX_ID).prop_map(
        |(stripes, stripe, base)| Header {
            stripes,
            stripe: stripe % stripes,
            base,
        },
    )
}

/// A string the scanner accepts: 1 to `MAX_STR` bytes.
fn string() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 1..=MAX_STR)
}

proptest! {
    /// Every field survives a header, and every single flipped bit is refused.
    #[test]
    fn headers_round_trip_and_refuse_any_flip(h in header(), at in 0..HEADER_LEN, bit in 0..8u8) {
        let mut b = h.encode();
        prop_assert_eq!(Header::decode(&b), Ok(h));
        b[at] ^= 1 << bit;
        prop_assert!(Header::decode(&b).is_err());
    }

    /// Every field survives a record, and a single flipped bit anywhere leaves no intact copy
    /// of it: the record is refused, or (a flipped length that still frames) decodes to
    /// another.
    #[test]
    fn records_round_trip_and_any_flip_is_not_intact(
        id in 1..crate::store::ids::MAX_ID,
        ms in any::<i64>(),
        offset_min in any::<i16>(),
        num in proptest::option::of(any::<u64>()),
        patient in string(),
        medication in string(),
        flip in any::<proptest::sample::Index>(),
        bit in 0..8u8,
    ) {
        let usage = Usage {
            patient: num.map_or(Patient::Str(&patient), Patient::Num),
            timestamp: Timestamp { ms, offset_min },
            medication: &medication,
        };
        let mut b = Vec::new();
        encode(&mut b, id, &usage);
        prop_assert_eq!(decode(&b), Ok((Record::Usage { id, usage }, b.len())));
        let at = flip.index(b.len());
        b[at] ^= 1 << bit;
        let intact = Record::Usage { id, usage };
        prop_assert!(decode(&b).map_or(true, |(r, _)| r != intact), "flip at {} unnoticed", at);
    }

    /// A lease is the shortest record, and its id survives it.
    #[test]
    fn leases_round_trip(lease in 1..crate::store::ids::MAX_ID) {
        let mut b = Vec::new();
        encode_lease(&mut b, lease);
        prop_assert_eq!(b.len(), MIN_RECORD);
        prop_assert_eq!(decode(&b), Ok((Record::Lease(lease), MIN_RECORD)));
    }

    #[test]
    fn any_bytes_decode_without_panic(b in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = decode(&b);
        let _ = scan(&b, |_, _| {});
        let _ = Header::decode(&b);
    }
}

/// The bytes the format in the module doc describes, built field by field without the layout
/// constants: a change to the on-disk layout fails here.
#[test]
fn bytes_are_the_documented_format() {
    let h = Header {
        stripes: 3,
        stripe: 2,
        base: 0x0102_0304_0506,
    };
    let mut want = b"USAGEDJ1".to_vec();
    for v in [3u32, 3, 2] {
        want.extend_from_slice(&v.to_le_bytes());
    }
    let crc = crc32c::crc32c_append(crc32c::crc32c(&want), &h.base.to_le_bytes());
    want.extend_from_slice(&crc.to_le_bytes());
    want.extend_from_slice(&h.base.to_le_bytes());
    assert_eq!(h.encode().to_vec(), want);

    let payload = |id: u64, ms: i64, off: i16, kind: u8, p: &[u8], m: &[u8]| {
        let mut b = Vec::new();
        b.extend_from_slice(&id.to_le_bytes());
        b.extend_from_slice(&ms.to_le_bytes());
        b.extend_from_slice(&off.to_le_bytes());
        b.extend_from_slice(&[kind, p.len() as u8, m.len() as u8]);
        b.extend_from_slice(p);
        b.extend_from_slice(m);
        let mut framed = (b.len() as u16).to_le_bytes().to_vec();
        framed.extend_from_slice(&crc32c::crc32c(&b).to_le_bytes());
        framed.extend_from_slice(&b);
        framed
    };
    let [num, s] = usages("patient-x");
    let mut got = Vec::new();
    encode(&mut got, 9, &num);
    assert_eq!(got, payload(9, -5, -300, 0, &42u64.to_le_bytes(), b"A"));
    got.clear();
    encode(&mut got, 10, &s);
    assert_eq!(got, payload(10, 1, 0, 1, b"patient-x", &[b'm'; MAX_STR]));
    got.clear();
    encode_lease(&mut got, 77);
    assert_eq!(got, payload(77, 0, 0, 2, b"", b""));

    // A keyed usage: kind | 0x80, the trailer after the medication, all under one checksum.
    let mark = KeyMark {
        key: 0x0011_2233_4455_6677_8899_aabb_ccdd_eeff,
        created_s: 1_700_000_000,
        end: 123,
        body: 0xdead_beef,
        line: 4,
    };
    let mut trailer = mark.key.to_le_bytes().to_vec();
    for v in [mark.created_s, mark.end, mark.body] {
        trailer.extend_from_slice(&v.to_le_bytes());
    }
    trailer.extend_from_slice(&4u32.to_le_bytes());
    let mut b = 9u64.to_le_bytes().to_vec();
    b.extend_from_slice(&(-5i64).to_le_bytes());
    b.extend_from_slice(&(-300i16).to_le_bytes());
    b.extend_from_slice(&[0x80, 8, 1]);
    b.extend_from_slice(&42u64.to_le_bytes());
    b.push(b'A');
    b.extend_from_slice(&trailer);
    let mut want = (b.len() as u16).to_le_bytes().to_vec();
    want.extend_from_slice(&crc32c::crc32c(&b).to_le_bytes());
    want.extend_from_slice(&b);
    got.clear();
    encode_keyed(&mut got, 9, &num, Some(&mark));
    assert_eq!(got, want);
    let (r, n) = decode(&got).expect("a keyed record decodes");
    assert_eq!((r, n), (Record::Usage { id: 9, usage: num }, got.len()));
    assert_eq!(key_mark(&got), Some(mark));
    got.clear();
    encode(&mut got, 9, &num);
    assert_eq!(key_mark(&got), None);
}
