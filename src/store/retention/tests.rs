use super::*;
use crate::store::index::Meta;
use crate::store::recover::tests::temp_dir;

fn key(stripe: u32) -> Header {
    Header {
        stripes: 2,
        stripe,
        base: 0,
    }
}

/// A table of `per` segments per stripe of 2 stripes, 10 slots and 1000 bytes each, sealed at
/// `sealed_ms = 100·seq + stripe`, with (empty) files in a new directory.
fn setup(per: u32) -> (Arc<Segments>, BTreeMap<Header, Arc<StripeLink>>) {
    let dir = temp_dir("retention");
    let segs = Arc::new(Segments::new(dir.clone()));
    let mut links = BTreeMap::new();
    for stripe in 0..2 {
        links.insert(key(stripe), Arc::new(StripeLink::new(0, 0)));
        for seq in 0..per {
            let meta = Meta {
                key: key(stripe),
                seq,
                first_slot: u64::from(seq) * 10,
                records: 10,
                data_len: 1000,
                last_id: (u64::from(seq) * 10 + 9) * 2 + u64::from(stripe) + 1,
                lease: 0,
                sealed_ms: 100 * u64::from(seq) + u64::from(stripe),
                keyed: 0,
            };
            fs::write(segs.segment_path(&meta), b"s").unwrap();
            fs::write(segs.index_path(&meta), b"i").unwrap();
            segs.insert(Sealed {
                meta,
                entries: None,
                idx_len: 0,
            })
            .unwrap();
        }
    }
    (segs, links)
}

fn policy(age_ms: Option<u64>, bytes: Option<u64>, hold: Arc<dyn Hold>) -> Policy {
    Policy {
        max_age: age_ms.map(Duration::from_millis),
        max_bytes: bytes,
        hold,
    }
}

#[test]
fn marks_round_trip_and_any_damage_is_refused() {
    let mut m = Marks {
        id_floor: 77,
        ..Marks::default()
    };
    m.below.insert(key(1), 40);
    m.below.insert(
        Header {
            stripes: 3,
            stripe: 2,
            base: 1 << 40,
        },
        u64::MAX,
    );
    let b = m.encode();
    assert_eq!(Marks::decode(&b).unwrap(), m);
    for i in 0..b.len() {
        let mut bad = b.clone();
        bad[i] ^= 0x10;
        assert!(Marks::decode(&bad).is_err(), "flipped byte {i} accepted");
    }
    assert!(Marks::decode(&b[..b.len() - 1]).is_err());
    assert!(Marks::decode(b"").is_err());
}

#[test]
fn old_segments_go_oldest_first_and_their_stripes_marks_rise() {
    let (segs, links) = setup(4);
    let dir = segs.dir().to_path_buf();
    let mut r = Retention::new(
        policy(Some(150), None, Arc::new(NoHold)),
        Arc::clone(&segs),
        links.clone(),
        Marks::default(),
    );
    // At 302 ms: sealed at 0, 1, 100, 101 are older than 150 ms; 200 and later are not.
    assert_eq!(r.run(302, 0).unwrap(), 4);
    for stripe in 0..2 {
        assert_eq!(links[&key(stripe)].expired_below(), 20);
        assert_eq!(segs.first(&key(stripe)).unwrap().meta.seq, 2);
    }
    let marks = Marks::load(&dir).unwrap();
    assert_eq!(marks.below[&key(0)], 20);
    assert_eq!(marks.id_floor, 19 * 2 + 2);
    let left: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".seg"))
        .collect();
    assert_eq!(left.len(), 4, "{left:?}");
    assert_eq!(r.stats.removed_segments.load(Ordering::Relaxed), 4);
    // Nothing more is due at the same instant; a later one takes the next pair.
    assert_eq!(r.run(302, 0).unwrap(), 0);
    assert_eq!(
        r.run(351, 0).unwrap(),
        1,
        "only stripe 0's seal at 200 is past 150 ms"
    );
    assert_eq!(links[&key(0)].expired_below(), 30);
    assert_eq!(links[&key(1)].expired_below(), 20);
}

#[test]
fn a_size_limit_removes_the_oldest_until_under_it() {
    let (segs, links) = setup(3);
    let mut r = Retention::new(
        policy(None, Some(3500), Arc::new(NoHold)),
        Arc::clone(&segs),
        links.clone(),
        Marks::default(),
    );
    // 6 segments of 1000 bytes: three must go, in seal order 0 (s0), 1 (s1), 100 (s0).
    assert_eq!(r.run(0, 6000).unwrap(), 3);
    assert_eq!(links[&key(0)].expired_below(), 20);
    assert_eq!(links[&key(1)].expired_below(), 10);
    assert_eq!(segs.count(), 3);
}

struct HoldStripe(u32);

impl Hold for HoldStripe {
    fn may_remove(&self, key: &Header, _: u32, _: Range<u64>) -> bool {
        key.stripe != self.0
    }
}

#[test]
fn a_held_segment_stays_with_everything_after_it_and_is_counted() {
    let (segs, links) = setup(3);
    let mut r = Retention::new(
        policy(Some(1), None, Arc::new(HoldStripe(1))),
        Arc::clone(&segs),
        links.clone(),
        Marks::default(),
    );
    assert_eq!(r.run(10_000, 0).unwrap(), 3);
    assert_eq!(links[&key(0)].expired_below(), 30);
    assert_eq!(links[&key(1)].expired_below(), 0);
    assert_eq!(segs.list(&key(1)).len(), 3);
    assert_eq!(r.stats.held_bytes.load(Ordering::Relaxed), 1000);
}

#[test]
fn nothing_is_removed_when_the_marks_cannot_be_written() {
    let (segs, links) = setup(2);
    let dir = segs.dir().to_path_buf();
    // A directory where the marks' temporary file should go: the write fails.
    fs::create_dir(dir.join("RETAINED.tmp")).unwrap();
    fs::write(dir.join("RETAINED.tmp").join("x"), b"x").unwrap();
    let mut r = Retention::new(
        policy(Some(1), None, Arc::new(NoHold)),
        Arc::clone(&segs),
        links.clone(),
        Marks::default(),
    );
    assert!(r.run(10_000, 0).is_err());
    assert_eq!(segs.count(), 4);
    assert_eq!(links[&key(0)].expired_below(), 0);
    assert_eq!(r.stats.errors.load(Ordering::Relaxed), 1);
}
