use super::*;

fn keys() -> Keys {
    Keys::new(1 << 16, 60, 2)
}

#[test]
fn a_new_table_is_empty_everywhere() {
    let k = keys();
    assert!(k.capacity() >= 200);
    for b in k.buckets.iter() {
        assert_eq!(b.busy.load(Ordering::Relaxed), 0);
        for s in &b.slots {
            assert!(s.iter().all(|w| w.load(Ordering::Relaxed) == 0));
        }
    }
    assert!(k.ring.iter().all(|w| w.load(Ordering::Relaxed) == 0));
    assert!(k.durable.iter().all(|w| w.load(Ordering::Relaxed) == 0));
}

#[test]
fn a_single_post_replays_once_its_batch_is_written() {
    let k = keys();
    let (s, forgot) = k.single(7, 70, 1000, (5, 1, 3));
    assert!(matches!(s, Single::Store(_)) && !forgot);
    // Batch 3 of worker 1 not written yet: still being stored.
    assert_eq!(k.single(7, 70, 1000, (9, 0, 1)).0, Single::Busy);
    k.set_durable(1, 3);
    assert_eq!(k.single(7, 70, 1001, (9, 0, 1)).0, Single::Replay(5));
    assert_eq!(k.single(7, 71, 1001, (9, 0, 1)).0, Single::Conflict);
    // Another key is another story.
    assert!(matches!(
        k.single(8, 70, 1001, (9, 0, 1)).0,
        Single::Store(_)
    ));
}

#[test]
fn a_forgotten_claim_leaves_no_trace() {
    let k = keys();
    let Single::Store(t) = k.single(7, 70, 1000, (5, 0, 0)).0 else {
        panic!("new key")
    };
    k.forget(&t);
    let Single::Store(_) = k.single(7, 71, 1000, (6, 0, 0)).0 else {
        panic!("forgotten key is new again")
    };
}

#[test]
fn keys_expire_after_the_window() {
    let k = keys();
    k.single(7, 70, 1000, (5, 0, 0));
    // Whole seconds: kept through second 1060 (at least the window, at most a second more).
    assert_eq!(k.single(7, 70, 1060, (6, 0, 0)).0, Single::Replay(5));
    assert!(matches!(
        k.single(7, 70, 1061, (6, 0, 0)).0,
        Single::Store(_)
    ));
}

#[test]
fn a_full_bucket_forgets_its_oldest_key_at_rest_and_never_one_in_flight() {
    let k = Keys::new(1, 1000, 1); // one bucket
    assert_eq!(k.capacity(), WAYS);
    for i in 0..WAYS as u128 {
        let (s, forgot) = k.single(i, 1, 100 + i as u64, (i as u64 + 1, 0, 0));
        assert!(matches!(s, Single::Store(_)) && !forgot);
    }
    let (s, forgot) = k.single(99, 1, 200, (50, 0, 0));
    assert!(matches!(s, Single::Store(_)) && forgot);
    // Key 0 (the oldest) went; key 2 stays.
    assert_eq!(k.single(2, 1, 201, (52, 0, 0)).0, Single::Replay(3));
    // Every slot in flight (batch 5 not written): nothing to forget.
    let k = Keys::new(1, 1000, 1);
    for i in 0..WAYS as u128 {
        k.single(i, 1, 100, (i as u64 + 1, 0, 5));
    }
    assert_eq!(k.single(99, 1, 100, (9, 0, 5)).0, Single::Full);
}

#[test]
fn a_bulk_streams_then_resumes_from_its_runs() {
    let k = keys();
    let (Bulk::Fresh(t), false) = k.bulk_start(42, 1000, 0) else {
        panic!("new bulk key")
    };
    assert_eq!(k.bulk_start(42, 1000, 1).0, Bulk::Busy);
    assert_eq!(k.single(42, 1, 1000, (1, 1, 0)).0, Single::Busy);
    let mut runs = Vec::new();
    for id in [1, 3, 5, 11] {
        Run::push(&mut runs, id, 2);
    }
    assert_eq!(runs.len(), 2);
    assert_eq!(Run::nth(&runs, 2), Some(5));
    assert_eq!(Run::nth(&runs, 3), Some(11));
    assert_eq!(Run::nth(&runs, 4), None);
    let stored = BulkEnd::Stored {
        end: 300,
        body: 77,
        complete: false,
        created_s: 1000,
        runs: &runs,
        worker: 0,
        batch: 2,
    };
    k.bulk_end(&t, stored);
    assert_eq!(
        k.bulk_start(42, 1001, 0).0,
        Bulk::Busy,
        "batch 2 not written"
    );
    k.set_durable(0, 2);
    let (Bulk::Resume(t, prev), false) = k.bulk_start(42, 1001, 1) else {
        panic!("seen bulk")
    };
    assert_eq!((prev.end, prev.body, prev.complete), (300, 77, false));
    assert_eq!(prev.runs, runs);
    k.bulk_end(&t, BulkEnd::Restore(&prev));
    assert_eq!(k.single(42, 77, 1001, (1, 1, 0)).0, Single::Conflict);
    let (Bulk::Resume(t, again), _) = k.bulk_start(42, 1002, 1) else {
        panic!("restored")
    };
    assert_eq!(again, prev);
    // Completed: replays take no claim, so two run side by side.
    let whole = BulkEnd::Stored {
        end: 400,
        body: 78,
        complete: true,
        created_s: 1000,
        runs: &runs,
        worker: 0,
        batch: 2,
    };
    k.bulk_end(&t, whole);
    let (Bulk::Replay(a), _) = k.bulk_start(42, 1003, 0) else {
        panic!("complete")
    };
    let (Bulk::Replay(b), _) = k.bulk_start(42, 1003, 1) else {
        panic!("complete, again")
    };
    assert_eq!(a, b);
    assert!(a.complete && a.end == 400 && a.runs == runs);
}

#[test]
fn runs_overwritten_in_the_ring_are_not_replayed() {
    let k = Keys::new(1 << 12, 60, 1);
    let len = k.ring.len();
    let (Bulk::Fresh(t), _) = k.bulk_start(1, 10, 0) else {
        panic!()
    };
    let runs = [Run {
        first: 1,
        count: 3,
        stride: 1,
    }];
    let stored = |runs| BulkEnd::Stored {
        end: 10,
        body: 1,
        complete: true,
        created_s: 10,
        runs,
        worker: 0,
        batch: 0,
    };
    k.bulk_end(&t, stored(&runs));
    // Other bulks fill the whole ring after it.
    let big = vec![runs[0]; len / 4];
    for key in 2..5 {
        let (Bulk::Fresh(t), _) = k.bulk_start(key, 10, 0) else {
            panic!()
        };
        k.bulk_end(&t, stored(&big));
    }
    let (b, forgot) = k.bulk_start(1, 11, 0);
    assert!(matches!(b, Bulk::Fresh(_)) && forgot, "{b:?}");
}

#[test]
fn a_single_key_is_a_conflict_for_a_bulk() {
    let k = keys();
    k.single(5, 1, 10, (1, 0, 0));
    assert_eq!(k.bulk_start(5, 10, 0).0, Bulk::Conflict);
}
