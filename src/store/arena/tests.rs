use super::*;
use proptest::prelude::*;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

mod ring;

/// The usage stored at `slot` in the stress tests: content is a pure function of the slot.
fn usage_for(slot: u64, patient: &mut String, med: &mut String) -> (Timestamp, u64) {
    patient.clear();
    med.clear();
    use std::fmt::Write;
    match slot % 3 {
        0 => {}
        1 => write!(patient, "p{}", slot % 1000).unwrap(),
        _ => write!(patient, "a-long-patient-name-{}", slot % 5000).unwrap(),
    }
    write!(med, "Medication-{}", slot % 97).unwrap();
    (
        Timestamp {
            ms: slot as i64 * 1000 - 5,
            offset_min: (slot % 2161) as i16 - 1080,
        },
        slot * 7,
    )
}

fn check(got: StoredUsage, slot: u64) {
    let (mut p, mut m) = (String::new(), String::new());
    let (ts, num) = usage_for(slot, &mut p, &mut m);
    assert_eq!(got.timestamp, ts, "slot {slot}");
    assert_eq!(got.medication(), m.as_bytes(), "slot {slot}");
    match got.patient {
        StoredPatient::Num(n) => assert!(p.is_empty() && n == num, "slot {slot}"),
        StoredPatient::Str(b, n) => assert_eq!(&b[..n], p.as_bytes(), "slot {slot}"),
    }
}

/// One epoch of `stripes` empty stripes.
fn layout(stripes: usize) -> EpochLayout {
    EpochLayout {
        base: 0,
        starts: vec![0; stripes],
        ends: None,
    }
}

fn append(w: &mut StripeWriter, slot: u64) -> u64 {
    try_append(w, slot).unwrap()
}

/// Append `usage_for(slot)`.
fn try_append(w: &mut StripeWriter, slot: u64) -> Result<u64, StoreFull> {
    let (mut p, mut m) = (String::new(), String::new());
    let (timestamp, num) = usage_for(slot, &mut p, &mut m);
    let patient = if p.is_empty() {
        Patient::Num(num)
    } else {
        Patient::Str(p.as_bytes())
    };
    w.append(&Usage {
        patient,
        timestamp,
        medication: m.as_bytes(),
    })
}

#[test]
fn round_trip_across_stripes() {
    let store = Arc::new(Store::new(3));
    let mut writers: Vec<_> = (0..3).map(|s| store.writer(s)).collect();
    let mut ids = Vec::new();
    for slot in 0..1000 {
        for (s, w) in writers.iter_mut().enumerate() {
            let id = append(w, slot);
            assert_eq!(id, ids::id_of(s as u32, slot, 3));
            ids.push((id, slot));
        }
    }
    assert_eq!(store.len(), 3000);
    for (id, slot) in ids {
        check(store.get(id).unwrap(), slot);
    }
    assert!(store.get(0).is_none());
    assert!(store.get(3001).is_none(), "never stored");
}

#[test]
fn edge_strings() {
    let store = Arc::new(Store::new(1));
    let mut w = store.writer(0);
    // Strings of exactly the longest length, in two- and one-byte characters.
    let longest_wide = "é".repeat(MAX_STR / 2);
    let longest = "x".repeat(MAX_STR);
    assert_eq!(longest_wide.len(), MAX_STR);
    for (patient, med) in [
        ("12345678", "A"),
        ("123456789", "\"quoted\"\n"),
        (longest_wide.as_str(), longest_wide.as_str()),
        (longest.as_str(), longest.as_str()),
        ("p", longest.as_str()),
    ] {
        let ts = Timestamp {
            ms: -1,
            offset_min: -1080,
        };
        let id = w
            .append(&Usage {
                patient: Patient::Str(patient.as_bytes()),
                timestamp: ts,
                medication: med.as_bytes(),
            })
            .unwrap();
        let got = store.get(id).unwrap();
        assert_eq!(got.medication(), med.as_bytes());
        assert_eq!(got.timestamp, ts);
        assert!(matches!(got.patient, StoredPatient::Str(b, n) if &b[..n] == patient.as_bytes()));
    }
    let id = w
        .append(&Usage {
            patient: Patient::Num((1 << 53) - 1),
            timestamp: Timestamp {
                ms: 0,
                offset_min: 0,
            },
            medication: b"A",
        })
        .unwrap();
    assert_eq!(
        store.get(id).unwrap().patient,
        StoredPatient::Num((1 << 53) - 1)
    );
}

#[test]
fn strings_cross_blocks_and_are_interned_per_chunk() {
    let g = Geometry {
        chunk_bits: 10,
        frames: 4,
        blocks: 64,
        block_bits: 6,
    };
    let store = Arc::new(Store::with_geometry(&[layout(1)], g, false));
    let mut w = store.writer(0);
    // 50 distinct strings of the longest length take 9 words each: several 64-word blocks.
    let name = |i: u64| format!("{i:0MAX_STR$}");
    fn usage(m: &str, i: u64) -> Usage<'_> {
        Usage {
            patient: Patient::Num(i),
            timestamp: Timestamp {
                ms: 0,
                offset_min: 0,
            },
            medication: m.as_bytes(),
        }
    }
    let ids: Vec<u64> = (0..50)
        .map(|i| w.append(&usage(&name(i), i)).unwrap())
        .collect();
    let bytes = store.cache_bytes();
    assert!(bytes >= 1024 * 24 + 8 * 64 * 8, "{bytes}");
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            store.get(*id).unwrap().medication(),
            name(i as u64).as_bytes()
        );
    }
    // The same strings again, in the same chunk, are interned: no block is taken.
    for i in 0..50 {
        w.append(&usage(&name(i), i)).unwrap();
    }
    assert_eq!(store.cache_bytes(), bytes);
    // In the next chunk they are stored again, in blocks of their own.
    for i in 0..1024 {
        w.append(&usage(&name(i % 50), i)).unwrap();
    }
    assert!(store.cache_bytes() > bytes);
}

/// Readers on other threads race the writer across chunk boundaries; every slot they can see
/// below the published length must be complete. A publish before the record is written, or a
/// chunk not yet visible, fails here.
#[test]
fn concurrent_readers_see_only_complete_records() {
    const N: u64 = (3 << Geometry::CHUNK_BITS) + 1000;
    let store = Arc::new(Store::new(2));
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|r| {
            let (store, done) = (Arc::clone(&store), Arc::clone(&done));
            std::thread::spawn(move || {
                let mut checked = 0u64;
                let mut probe = r as u64;
                while !done.load(Ordering::Acquire) || probe < N {
                    let len = store.stripe_slots(0, 1).end;
                    if len == 0 {
                        continue;
                    }
                    // The newest record, and one further back.
                    for slot in [len - 1, probe % len] {
                        check(store.get(ids::id_of(1, slot, 2)).expect("published"), slot);
                        checked += 1;
                    }
                    probe += 7919;
                    if len == N && probe >= N {
                        break;
                    }
                }
                checked
            })
        })
        .collect();
    let mut w = store.writer(1);
    for slot in 0..N {
        append(&mut w, slot);
    }
    done.store(true, Ordering::Release);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
    assert!(store.get(ids::id_of(1, N, 2)).is_none());
}

fn tag() -> impl Strategy<Value = Tag> {
    prop_oneof![Just(Tag::Num), Just(Tag::Inline), Just(Tag::Interned)]
}

proptest! {
    /// Every field survives the word: a shift or mask that overlaps another field, or a sign
    /// extension of a negative offset into the tag, fails here.
    #[test]
    fn a_record_decodes_to_what_was_encoded(
        ms in any::<i64>(),
        patient in any::<u64>(),
        med in any::<u32>(),
        offset_min in any::<i16>(),
        tag in tag(),
        inline_len in 0..=INLINE_MAX as u8,
    ) {
        let r = Record { ms, patient, meta: Meta { med, offset_min, tag, inline_len } };
        prop_assert_eq!(Record::decode(r.encode()), r);
        // Unused bits stay zero.
        let w = r.meta.encode();
        prop_assert_eq!(w & (0b11 << 50 | 0xff << 56), 0);
    }
}

/// An inline length past `INLINE_MAX` does not fit its bits (nor a patient word): encoding it
/// is refused, from the first length too long.
#[test]
#[should_panic(expected = "inline patient of at most")]
fn an_inline_length_past_the_word_is_refused() {
    let meta = Meta {
        med: u32::MAX,
        offset_min: -1,
        tag: Tag::Inline,
        inline_len: INLINE_MAX as u8 + 1,
    };
    meta.encode();
}

#[test]
fn a_node_holds_its_own_stripes_and_misses_the_others() {
    // Node 2 of 3 with 2 workers: global stripes 2 and 5 of 6, from base 100.
    let node = ids::Layout {
        nodes: 3,
        node: 2,
        workers: 2,
    };
    let epoch = EpochLayout {
        base: 100,
        ..layout(6)
    };
    let store = Arc::new(Store::for_node(&[epoch], 8 << 20, false, node));
    assert_eq!((store.layout(), store.cache_budget()), (node, 8 << 20));
    let mut ws: Vec<StripeWriter> = (0..2).map(|w| store.worker_writer(w)).collect();
    let mut mine = Vec::new();
    for slot in 0..20 {
        let id = append(&mut ws[(slot % 2) as usize], slot / 2);
        assert_eq!(ids::owner(id, 100, 3), Some(2), "id {id}");
        mine.push(id);
    }
    for (i, &id) in mine.iter().enumerate() {
        check(store.get(id).expect("held"), i as u64 / 2);
    }
    // Every other id of the epoch, and ids past it, are another node's: Missing.
    for id in (0..200).filter(|id| !mine.contains(id)) {
        assert_eq!(store.lookup(id), Lookup::Missing, "id {id}");
    }
}
