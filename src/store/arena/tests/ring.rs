//! The ring: recycling under readers, no cap but ids, bounded bytes, sealing back-pressure.

use super::*;
use std::collections::BTreeMap;

/// Chunks of 64 records, 4 frames, 16 blocks of 64 words: the ring wraps every 256 slots and
/// `usage_for`'s strings (~280 words a chunk) run the pool out before the ring wraps.
const TINY: Geometry = Geometry {
    chunk_bits: 6,
    frames: 4,
    blocks: 16,
    block_bits: 6,
};

fn stripe_of(store: &Store) -> &Stripe {
    &store.epochs[store.epochs.len() - 1].stripes[0]
}

/// (a) Readers race a writer that wraps the ring and evicts early (long strings run the pool
/// out); every `Hot` answer must be exactly what was appended for the asked slot. Without R7
/// (the base re-check after the copy) readers return recycled words and this fails.
#[test]
fn readers_never_see_a_recycled_slot() {
    const MIN: u64 = 1000;
    const LIMIT: u64 = 50_000_000;
    // Appends at least (about 4000 wraps of the ring), so readers race many recyclings.
    const RUN: u64 = 1_000_000;
    let store = Arc::new(Store::with_geometry(&[layout(1)], TINY, true));
    let link = store.link(0, 0);
    let done = Arc::new(AtomicBool::new(false));
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let readers: Vec<_> = (0..3u64)
        .map(|r| {
            let (store, done, counts) =
                (Arc::clone(&store), Arc::clone(&done), Arc::clone(&counts));
            std::thread::spawn(move || {
                let mut x = r.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                while !done.load(Ordering::Acquire) {
                    let len = store.stripe_slots(0, 0).end;
                    let window = len.min(6 << TINY.chunk_bits);
                    if window == 0 {
                        continue;
                    }
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let slot = len - 1 - x % window;
                    match store.lookup(ids::id_of(0, slot, 1)) {
                        Lookup::Hot(u) => {
                            check(u, slot);
                            counts[0].fetch_add(1, Ordering::Relaxed);
                        }
                        Lookup::Cold { key, slot: s } => {
                            assert_eq!((key.stripes, key.stripe, key.base, s), (1, 0, 0, slot));
                            counts[1].fetch_add(1, Ordering::Relaxed);
                        }
                        other => panic!("slot {slot} below len {len}: {other:?}"),
                    }
                }
            })
        })
        .collect();
    let mut w = store.writer(0);
    let mut early = 0u64;
    let mut slot = 0;
    while slot < LIMIT
        && (slot < RUN
            || counts[0].load(Ordering::Relaxed) < MIN
            || counts[1].load(Ordering::Relaxed) < MIN)
    {
        append(&mut w, slot);
        slot += 1;
        // The test hook: everything appended is sealed at once.
        link.sealed_end.store(w.next, Ordering::Release);
        if w.chunk
            .is_some_and(|c| c - w.oldest + 1 < TINY.frames as u64)
            && slot > 1024
        {
            early += 1;
        }
    }
    done.store(true, Ordering::Release);
    for r in readers {
        r.join().unwrap();
    }
    let [hot, cold] = [0, 1].map(|i| counts[i].load(Ordering::Relaxed));
    assert!(hot >= MIN && cold >= MIN, "hot {hot}, cold {cold}");
    assert!(slot >= RUN, "{slot}");
    assert!(early > 0, "the pool ran out before the ring wrapped");
    assert!(store.cache_bytes() <= TINY.bytes());
}

/// No cap but the ids: a store without a journal takes 50 rings' worth, the evicted ids
/// answer `Expired`, the resident ones their usage, and the bytes stay within the geometry.
#[test]
fn without_a_journal_the_ring_wraps_and_evicted_ids_expire() {
    let store = Arc::new(Store::with_geometry(&[layout(2)], TINY, false));
    let mut w = store.writer(1);
    let n = 50 * TINY.records() + 17;
    for slot in 0..n {
        assert_eq!(append(&mut w, slot), ids::id_of(1, slot, 2));
        assert!(store.cache_bytes() <= 2 * TINY.bytes());
    }
    assert_eq!(store.len(), n);
    assert_eq!(store.stripe_slots(0, 1), 0..n);
    let resident_from = store.epochs[0].stripes[1]
        .resident_from
        .load(Ordering::Relaxed);
    assert!(resident_from > 0 && n - resident_from <= TINY.records());
    assert_eq!(store.cache_usages(), n - resident_from);
    assert_eq!(store.link(0, 1).expired_below(), resident_from);
    for slot in 0..n {
        match store.lookup(ids::id_of(1, slot, 2)) {
            Lookup::Hot(u) if slot >= resident_from => check(u, slot),
            Lookup::Expired if slot < resident_from => {}
            other => panic!("slot {slot} (resident from {resident_from}): {other:?}"),
        }
    }
    assert_eq!(store.lookup(ids::id_of(1, n, 2)), Lookup::Missing);
    assert_eq!(store.lookup(ids::id_of(0, 0, 2)), Lookup::Missing);
}

/// A journaled ring evicts only sealed chunks: held back, it fills and refuses (`StoreFull`)
/// without losing anything; `want_seal` rises at a quarter of the ring; released, appends go on.
#[test]
fn a_journaled_ring_waits_for_the_seal() {
    // Pool enough for the whole ring, so the ring's quarter is what asks for the seal.
    let g = Geometry { blocks: 64, ..TINY };
    let store = Arc::new(Store::with_geometry(&[layout(1)], g, true));
    let link = store.link(0, 0);
    let mut w = store.writer(0);
    let quarter = TINY.records() / 4;
    for slot in 0..quarter - 1 {
        append(&mut w, slot);
    }
    assert!(!link.want_seal.load(Ordering::Relaxed));
    append(&mut w, quarter - 1);
    assert!(link.want_seal.load(Ordering::Relaxed));
    // Fill until refused: the ring or the pool, whichever runs out first; never more than a ring.
    let mut slot = quarter;
    let full = loop {
        match try_append(&mut w, slot) {
            Ok(_) => slot += 1,
            Err(StoreFull) => break slot,
        }
        assert!(slot <= TINY.records());
    };
    assert_eq!(full, TINY.records(), "the ring is full, nothing evicted");
    assert_eq!(store.len(), full);
    for s in 0..full {
        check(store.get(ids::id_of(0, s, 1)).expect("nothing evicted"), s);
    }
    // Refused again while nothing is sealed; then the journal seals everything.
    assert_eq!(try_append(&mut w, full), Err(StoreFull));
    link.sealed_end.store(full, Ordering::Release);
    for s in full..full + 3 * TINY.records() {
        append(&mut w, s);
        link.sealed_end.store(w.next, Ordering::Release);
    }
    assert!(matches!(store.lookup(1), Lookup::Cold { slot: 0, .. }));
    assert_eq!(
        store.link(0, 0).expired_below(),
        0,
        "sealed ids are cold, not expired"
    );
}

/// Unsealed chunks owning a quarter of the pool ask for the seal too, long before the ring's
/// quarter: else long strings would run the pool out with nothing sealed to evict.
#[test]
fn a_quarter_of_the_pool_unsealed_asks_for_the_seal() {
    let g = Geometry { frames: 64, ..TINY };
    let store = Arc::new(Store::with_geometry(&[layout(1)], g, true));
    let link = store.link(0, 0);
    let mut w = store.writer(0);
    let mut slot = 0;
    while !link.want_seal.load(Ordering::Relaxed) {
        append(&mut w, slot);
        slot += 1;
        assert!(slot < g.records() / 4, "want_seal by the pool's quarter");
    }
    assert!(slot > 8, "not at once: {slot}");
    // Sealed: the check starts over from the sealed end.
    link.sealed_end.store(w.next, Ordering::Release);
    link.want_seal.store(false, Ordering::Relaxed);
    append(&mut w, slot);
    assert!(!link.want_seal.load(Ordering::Relaxed));
}

/// Old epochs hold nothing: their slots are cold whatever a writer appends to them; the
/// current epoch's stripes share the cache.
#[test]
fn old_epochs_are_cold() {
    let layouts = [
        EpochLayout {
            base: 0,
            starts: vec![0, 0],
            ends: Some(vec![5, 5]),
        },
        EpochLayout {
            base: 100,
            starts: vec![3],
            ends: None,
        },
    ];
    let store = Arc::new(Store::with_cache(&layouts, 64 << 20, true));
    assert_eq!(store.cache_budget(), 64 << 20);
    assert_eq!(stripe_of(&store).frames.len(), 149);
    let mut old = store.epoch_writer(0, 1);
    for slot in 0..5 {
        assert_eq!(append(&mut old, slot), ids::id_of(1, slot, 2));
    }
    let key = Header {
        stripes: 2,
        stripe: 1,
        base: 0,
    };
    assert_eq!(store.lookup(2), Lookup::Cold { key, slot: 0 });
    assert_eq!(store.lookup(1), Lookup::Missing);
    assert_eq!(store.cache_bytes(), 0);
    let mut w = store.writer(0);
    assert_eq!(append(&mut w, 3), 104);
    check(store.get(104).unwrap(), 3);
    // Below the current stripe's start: cold, named by the current epoch's key.
    assert!(matches!(store.lookup(103), Lookup::Cold { slot: 2, key } if key.base == 100));
    assert_eq!(store.lookup(105), Lookup::Missing);
    for id in [0, u64::MAX, ids::MAX_ID, 101] {
        let _ = store.lookup(id);
    }
}

/// README-shaped usages (numeric patient, one of a few medications) cost at most 32 B of RAM
/// each once the cache is full.
#[test]
fn a_full_cache_costs_at_most_32_bytes_a_usage() {
    let g = Geometry::for_share(4 << 20);
    let store = Arc::new(Store::with_geometry(&[layout(1)], g, false));
    let mut w = store.writer(0);
    let meds = ["Albuterol", "Fluticasone", "Montelukast", "Budesonide"];
    let mut worst = 0f64;
    for i in 0..3 * g.records() {
        let u = Usage {
            patient: Patient::Num(100 + i % 977),
            timestamp: Timestamp {
                ms: i as i64,
                offset_min: -300,
            },
            medication: meds[(i % 4) as usize].as_bytes(),
        };
        w.append(&u).unwrap();
        // Full from the first wrap on; measured just inside each new chunk (the worst point).
        if i >= g.records() && i % (1 << g.chunk_bits) == 0 {
            worst = worst.max(store.cache_bytes() as f64 / store.cache_usages() as f64);
        }
    }
    assert!(store.cache_bytes() <= g.bytes() && g.bytes() <= 4 << 20);
    assert!(worst > 20.0 && worst <= 32.0, "{worst} B a usage");
}

/// The geometries `--cache` gives: the figures the README quotes, always within the share,
/// and chunks small enough that half the pool holds one chunk's strings.
#[test]
fn geometry_for_a_share() {
    let g = Geometry::for_share(DEFAULT_CACHE);
    assert_eq!((g.chunk_bits, g.frames, g.blocks), (14, 1194, 2048));
    assert_eq!(g.records(), 19_562_496);
    let g = Geometry::for_share(256 << 20);
    assert_eq!((g.chunk_bits, g.frames, g.blocks), (14, 597, 1024));
    assert_eq!(g.records(), 9_781_248);
    let g = Geometry::for_share(4 << 20);
    assert_eq!(
        (g.chunk_bits, g.frames, g.blocks, g.block_bits),
        (10, 149, 256, 8)
    );
    for mib in [4u64, 5, 8, 17, 32, 35, 36, 100, 512, 4096] {
        let g = Geometry::for_share(mib << 20);
        assert!(g.bytes() <= mib << 20, "{mib} MiB: {g:?}");
        let worst = (1u64 << g.chunk_bits) * 2 * pool::MAX_STRING_WORDS;
        assert!(
            worst <= (g.blocks as u64) << g.block_bits >> 1,
            "{mib} MiB: {g:?}"
        );
        assert_eq!(g.chunk_bits == 14, mib >= 36, "{mib} MiB: {g:?}");
    }
}

/// Distinct strings of the longest length in every record never wedge a stripe without a
/// journal on the smallest share: older chunks are evicted early for the current one's blocks.
#[test]
fn the_smallest_share_takes_the_longest_distinct_strings() {
    let g = Geometry::for_share(4 << 20);
    let store = Arc::new(Store::with_geometry(&[layout(1)], g, false));
    let mut w = store.writer(0);
    for i in 0..4 * g.records() {
        let (p, m) = (format!("{i:0>64}"), format!("{:0>64}", i + 1));
        let u = Usage {
            patient: Patient::Str(p.as_bytes()),
            timestamp: Timestamp {
                ms: 0,
                offset_min: 0,
            },
            medication: m.as_bytes(),
        };
        w.append(&u).unwrap();
    }
    assert!(store.cache_bytes() <= 4 << 20);
}

fn short_string() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-c]{1,8}",
        "[a-c]{9,20}",
        "[a-z]{40,64}"
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// (c) Any sequence against an oracle: resident slots are `Hot` with the exact usage,
    /// evicted ones `Cold` (journaled, sealed at once) or `Expired` (no journal), past `len`
    /// `Missing`.
    #[test]
    fn lookups_match_an_oracle(
        usages in proptest::collection::vec((short_string(), short_string(), any::<i64>()), 1..1500),
        journaled in any::<bool>(),
    ) {
        let store = Arc::new(Store::with_geometry(&[layout(1)], TINY, journaled));
        let link = store.link(0, 0);
        let mut w = store.writer(0);
        let mut oracle = BTreeMap::new();
        for (slot, (p, m, ms)) in usages.iter().enumerate() {
            let u = Usage {
                patient: if p.is_empty() { Patient::Num(slot as u64) } else { Patient::Str(p.as_bytes()) },
                timestamp: Timestamp { ms: *ms, offset_min: 7 },
                medication: m.as_bytes(),
            };
            let id = w.append(&u).unwrap();
            oracle.insert(id, StoredUsage::from_usage(&u));
            link.sealed_end.store(w.next, Ordering::Release);
        }
        let from = stripe_of(&store).resident_from.load(Ordering::Relaxed);
        prop_assert!(usages.len() as u64 - from <= TINY.records());
        for (&id, want) in &oracle {
            let slot = id - 1;
            match store.lookup(id) {
                Lookup::Hot(u) => prop_assert!(slot >= from && u == *want, "slot {}", slot),
                Lookup::Cold { slot: s, .. } => prop_assert!(journaled && s == slot && slot < from),
                Lookup::Expired => prop_assert!(!journaled && slot < from),
                Lookup::Missing => prop_assert!(false, "slot {} missing", slot),
            }
        }
        prop_assert_eq!(store.lookup(usages.len() as u64 + 1), Lookup::Missing);
    }
}
