//! Retention and recovery together: scenarios a review found by reading the code (issue 11).
use super::*;
use crate::store::arena::Lookup;
use crate::store::retention::{Hold, Policy, Retention};
use std::ops::Range;

struct HoldStripe(u32);

impl Hold for HoldStripe {
    fn may_remove(&self, key: &Header, _: u32, _: Range<u64>) -> bool {
        key.stripe != self.0
    }
}

/// Retention removes every sealed segment of stripe 1 (stripe 0 held by the sink; the same
/// happens without a hold when retention runs after the stop's final seals, see main.rs).
fn remove_all_of_stripe_1(dir: &Path) {
    let r = recover(dir, opts(2)).unwrap();
    let links: BTreeMap<Header, Arc<StripeLink>> = (0..2)
        .map(|s| {
            (
                Header {
                    stripes: 2,
                    stripe: s,
                    base: r.base,
                },
                r.store.link(r.store.epochs().len() - 1, s),
            )
        })
        .collect();
    let mut ret = Retention::new(
        Policy {
            max_age: None,
            max_bytes: Some(0),
            hold: Arc::new(HoldStripe(0)),
        },
        Arc::clone(&r.segments),
        links,
        r.marks.clone(),
    );
    assert!(ret.run(0, u64::MAX).unwrap() > 0);
}

#[test]
fn a_stripe_retention_emptied_goes_on_where_its_writer_goes_on() {
    let dir = temp_dir("rv-gone");
    run(&dir, 2, 100);
    remove_all_of_stripe_1(&dir);
    let r = recover(&dir, opts(2)).unwrap();
    let cur = r.store.epochs().len() - 1;
    let writer_start = r.store.stripe_slots(cur, 1).start;
    eprintln!(
        "epochs {:?} journals {:?} writer start {writer_start}",
        r.store.epochs(),
        r.journals
    );
    assert_eq!(
        r.journals[1].next_slot, writer_start,
        "the journal's first slot is the writer's"
    );
}

#[test]
fn no_id_twice_after_a_stripe_retention_emptied() {
    let dir = temp_dir("rv-gone2");
    let first = run(&dir, 2, 100);
    remove_all_of_stripe_1(&dir);
    let second = run(&dir, 2, 100);
    let r = recover(&dir, opts(2)).unwrap();
    eprintln!("warnings {:?}", r.warnings);
    eprintln!("records {}", r.records);
    drop(r);
    let third = run(&dir, 2, 100);
    let mut all: Vec<u64> = first.iter().chain(&second).chain(&third).copied().collect();
    all.sort();
    let n = all.len();
    all.dedup();
    assert_eq!(all.len(), n, "an id handed out twice");
}

/// Two removed epochs at one base (zero-record epochs of different --threads, which a
/// floor that did not move gives the same base) make two stubs at that base: the store
/// refuses the layout (a panic at start, every start).
#[test]
fn two_removed_epochs_at_one_base() {
    let mut marks = retention::Marks::default();
    for (stripes, stripe) in [(1, 0), (2, 0), (2, 1)] {
        marks.below.insert(
            Header {
                base: 500,
                stripes,
                stripe,
            },
            0,
        );
    }
    let layout = vec![
        EpochLayout {
            base: 0,
            starts: vec![10],
            ends: Some(vec![10]),
        },
        EpochLayout {
            base: 900,
            starts: vec![0],
            ends: None,
        },
    ];
    let l = with_removed_epochs(layout, &marks);
    eprintln!("{l:?}");
    let built = std::panic::catch_unwind(|| Store::with_cache(&l, 64 << 20, true));
    assert!(built.is_ok(), "the store refuses the layout recovery built");
}

/// One batch fills the cache before the journal sealed any of it: the writer refuses every
/// usage from then on, and the journal, given no batch, never seals (nothing else asks it).
#[test]
fn a_cache_filled_by_one_batch_is_never_sealed() {
    use crate::store::arena::Geometry;
    let dir = temp_dir("rv-wedge");
    let layout = EpochLayout {
        base: 0,
        starts: vec![0],
        ends: None,
    };
    let g = Geometry {
        chunk_bits: 6,
        frames: 8,
        blocks: 8,
        block_bits: 8,
    };
    let store = Arc::new(Store::with_geometry(&[layout], g, true));
    let segs = Arc::new(Segments::new(dir.clone()));
    let mut w = store.writer(0);
    w.enable_journal();
    let setup = committer::Setup {
        dir: dir.clone(),
        header: Header {
            stripes: 1,
            stripe: 0,
            base: 0,
        },
        seq: 0,
        sync: SyncMode::Never,
        segment_bytes: 64 << 20,
        seal_after: None,
        lease: 0,
        last_id: 0,
        worker: 0,
        first_slot: 0,
        link: store.link(0, 0),
        segments: Arc::clone(&segs),
    };
    let mut c = Committer::start(setup, Arc::new(Status::default()), Box::new(|| {})).unwrap();
    let patients: Vec<String> = (0..100_000).map(|i| format!("{i:064}")).collect();
    let u = |i: usize| Usage {
        patient: Patient::Str(patients[i].as_bytes()),
        timestamp: Timestamp {
            ms: i as i64,
            offset_min: 0,
        },
        medication: b"Aspirin",
    };
    let mut i = 0;
    // One loop turn's worth of usages, until the cache refuses.
    while w.append(&u(i)).is_ok() {
        i += 1;
    }
    eprintln!("stored {i} in one batch");
    // Turn after turn: hand over what there is, let the journal write it, try again.
    let mut stored_later = 0;
    for _ in 0..20 {
        if let Some((b, id)) = w.batch_mut() {
            c.submit(b, id);
        }
        while !c.idle() {
            std::thread::yield_now();
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        if w.append(&u(i)).is_ok() {
            i += 1;
            stored_later += 1;
        }
    }
    eprintln!(
        "sealed_end {} segments {}",
        store.link(0, 0).sealed_end(),
        segs.count()
    );
    assert!(stored_later > 0, "the stripe takes no usage any more");
}

/// Run `n` usages through stripe 0 only of a 2-stripe run (stripe 1's segment holds its
/// lease alone), then stop cleanly.
fn run_stripe0_only(dir: &Path, n: u64) -> Vec<u64> {
    let mut r = recover(dir, opts(2)).unwrap();
    let mut writers = std::mem::take(&mut r.writers);
    let mut cs = start_journals(dir, &r, &mut writers, journal::SEGMENT_BYTES);
    let mut m = String::new();
    let ids: Vec<u64> = (0..n)
        .map(|i| writers[0].append(&usage(i, &mut m)).unwrap())
        .collect();
    for (w, c) in writers.iter_mut().zip(cs.drain(..)) {
        let last = w.batch_mut().map(|(b, id)| (std::mem::take(b), id));
        c.stop(
            last,
            std::time::Instant::now() + std::time::Duration::from_secs(10),
        );
    }
    ids
}

struct OnlyBelow(u64);

impl Hold for OnlyBelow {
    fn may_remove(&self, _: &Header, _: u32, slots: Range<u64>) -> bool {
        slots.start < self.0
    }
}

/// No hold, no crash: run 1 posts to both stripes; run 2 posts to stripe 0 only, and its
/// retention removes run 1's segments (slots below 50); run 3 fails to start after recovery
/// (say a bad --access-log path); run 4 and run 5 follow.
#[test]
fn a_failed_start_after_retention_loses_acknowledged_usages() {
    let dir = temp_dir("rv-failed-start");
    let first = run(&dir, 2, 100); // slots 0..50 of each stripe
    let second = run_stripe0_only(&dir, 40);
    {
        let r = recover(&dir, opts(2)).unwrap();
        let links: BTreeMap<Header, Arc<StripeLink>> = (0..2)
            .map(|s| {
                let k = Header {
                    stripes: 2,
                    stripe: s,
                    base: r.base,
                };
                (k, r.store.link(r.store.epochs().len() - 1, s))
            })
            .collect();
        let mut ret = Retention::new(
            Policy {
                max_age: None,
                max_bytes: Some(0),
                hold: Arc::new(OnlyBelow(50)),
            },
            Arc::clone(&r.segments),
            links,
            r.marks.clone(),
        );
        assert_eq!(
            ret.run(0, u64::MAX).unwrap(),
            2,
            "run 1's segment of each stripe"
        );
    }
    // Run 3: recovery, then the start fails before any journal thread made its segment.
    let r3 = recover(&dir, opts(2)).unwrap();
    eprintln!("run 3: {:?} fresh-epoch base {}", r3.warnings, r3.base);
    drop(r3);
    let fourth = run(&dir, 2, 100);
    let r5 = recover(&dir, opts(2)).unwrap();
    eprintln!("run 5: {:?} records {}", r5.warnings, r5.records);
    // Every id of runs 2 and 4 was acknowledged and must still be in a segment.
    let held: std::collections::HashSet<u64> = r5
        .segments
        .keys()
        .iter()
        .flat_map(|k| r5.segments.list(k))
        .flat_map(|s| {
            let (b, n, st) = (s.meta.key.base, s.meta.key.stripes, s.meta.key.stripe);
            (s.meta.first_slot..s.meta.first_slot + s.meta.records)
                .map(move |slot| b + ids::id_of(st, slot, n))
        })
        .collect();
    let r5_records = r5.records;
    drop(r5);
    let fifth = run(&dir, 2, 100);
    let mut all: Vec<u64> = first
        .iter()
        .chain(&second)
        .chain(&fourth)
        .chain(&fifth)
        .copied()
        .collect();
    let n = all.len();
    all.sort();
    all.dedup();
    let missing: Vec<u64> = second
        .iter()
        .chain(&fourth)
        .filter(|id| !held.contains(id))
        .copied()
        .collect();
    eprintln!(
        "records at run 5: {r5_records}; acknowledged ids not where the table says: {}",
        missing.len()
    );
    assert_eq!(all.len(), n, "an id handed out twice");
    assert!(missing.is_empty(), "acknowledged ids lost: {missing:?}");
}

/// Stripe 1 removed whole, so its ids answer 410; `RETAINED` then damaged: the start warns
/// and rebuilds the marks from what is left, and no id that answered 410 reads back; an
/// unreadable `RETAINED` refuses the start.
#[test]
fn a_damaged_retained_is_rebuilt_and_an_unreadable_one_refuses() {
    let dir = temp_dir("rv-damaged");
    run(&dir, 2, 100);
    run(&dir, 2, 100);
    remove_all_of_stripe_1(&dir);
    let r = recover(&dir, opts(2)).unwrap();
    let before: Vec<(u64, bool)> = (1..=400)
        .map(|id| (id, matches!(r.store.lookup(id), Lookup::Expired)))
        .collect();
    assert!(before.iter().any(|&(_, e)| e), "stripe 1 expired");
    drop(r);
    let path = dir.join(crate::store::retention::FILE);
    let mut b = fs::read(&path).unwrap();
    b[20] ^= 1;
    fs::write(&path, &b).unwrap();
    let r = recover(&dir, opts(2)).unwrap();
    assert!(
        r.warnings.iter().any(|w| w.contains("rebuilt")),
        "{:?}",
        r.warnings
    );
    for &(id, expired) in &before {
        // What answered 410 never reads back: 410 where a segment of its stripe is left to
        // rebuild the mark from, else 404 (a stripe removed whole leaves nothing to say so).
        let now = r.store.lookup(id);
        assert!(
            !expired || matches!(now, Lookup::Expired | Lookup::Missing),
            "id {id}: {now:?}"
        );
    }
    drop(r);
    fs::remove_file(&path).unwrap();
    fs::create_dir(&path).unwrap();
    assert!(recover(&dir, opts(2)).is_err(), "RETAINED unreadable");
}
