use super::*;
use crate::json::scan::{Patient, Usage};
use crate::store::ids;
use crate::store::recover::tests::temp_dir;
use crate::time::Timestamp;
use proptest::prelude::*;
use std::fs;
use std::io::Write;

/// A usage owning its strings.
#[derive(Debug, Clone)]
pub(crate) struct Owned {
    pub patient: Result<u64, Vec<u8>>,
    pub ms: i64,
    pub offset_min: i16,
    pub med: Vec<u8>,
}

impl Owned {
    pub fn usage(&self) -> Usage<'_> {
        Usage {
            patient: match &self.patient {
                Ok(n) => Patient::Num(*n),
                Err(s) => Patient::Str(s),
            },
            timestamp: Timestamp {
                ms: self.ms,
                offset_min: self.offset_min,
            },
            medication: &self.med,
        }
    }

    pub fn stored(&self) -> StoredUsage {
        StoredUsage::from_usage(&self.usage())
    }
}

/// Bytes JSON and CSV must escape, UTF-8 lead and continuation bytes, and plain ones.
const AWKWARD: &[u8] = b"\"\\\n\r\t\x00\x01\x1f\x7f,\xc3\xa9\xe2\x82\xac\xff a";

fn text() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        prop_oneof![any::<u8>(), proptest::sample::select(AWKWARD)],
        1..=journal::MAX_STR,
    )
}

pub(crate) fn owned() -> impl Strategy<Value = Owned> {
    (
        prop_oneof![any::<u64>().prop_map(Ok), text().prop_map(Err)],
        -(1i64 << 50)..(1i64 << 50),
        -1439i16..=1439,
        text(),
    )
        .prop_map(|(patient, ms, offset_min, med)| Owned {
            patient,
            ms,
            offset_min,
            med,
        })
}

/// One record of a test segment.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    Usage(Owned),
    Lease,
}

pub(crate) fn ops(max: usize) -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(
        prop_oneof![12 => owned().prop_map(Op::Usage), 1 => Just(Op::Lease)],
        0..max,
    )
}

/// Where a slot's record lies.
#[derive(Debug, Clone, Copy)]
struct At {
    seq: u32,
    offset: u64,
}

/// A stripe's records written as sealed segments into a table.
pub(crate) struct Built {
    pub key: Header,
    pub first_slot: u64,
    pub usages: Vec<Owned>,
    at: Vec<At>,
}

impl Built {
    pub fn id(&self, slot: u64) -> u64 {
        self.key.base + ids::id_of(self.key.stripe, slot, self.key.stripes)
    }

    pub fn end(&self) -> u64 {
        self.first_slot + self.usages.len() as u64
    }
}

/// Write `ops` of stripe `key` (its first usage at `first_slot`) into `segs` as sealed
/// segments of `sizes` records each (cycled; the last takes the rest), segment `seq`'s
/// index on disk when `on_disk[seq]` (cycled), else only in RAM. Lease records are sprinkled
/// in as `ops` says, and every segment begins with one.
pub(crate) fn write_stripe(
    segs: &Arc<Segments>,
    key: Header,
    first_slot: u64,
    ops: &[Op],
    sizes: &[usize],
    on_disk: &[bool],
) -> Built {
    let mut b = Built {
        key,
        first_slot,
        usages: Vec::new(),
        at: Vec::new(),
    };
    let (mut rest, mut seq, mut slot) = (ops, 0u32, first_slot);
    while !rest.is_empty() || seq == 0 {
        let n = sizes[seq as usize % sizes.len()].max(1).min(rest.len());
        let (these, after) = rest.split_at(n);
        let lease = b.id(slot + 1000);
        let (mut file, len) = journal::create_segment(segs.dir(), &key, seq, lease).unwrap();
        let mut bytes = Vec::new();
        let seg_first = slot;
        for op in these {
            match op {
                Op::Lease => journal::encode_lease(&mut bytes, b.id(slot + 1000)),
                Op::Usage(u) => {
                    let offset = len + bytes.len() as u64;
                    journal::encode(&mut bytes, b.id(slot), &u.usage());
                    b.at.push(At { seq, offset });
                    b.usages.push(u.clone());
                    slot += 1;
                }
            }
        }
        file.write_all(&bytes).unwrap();
        seal(
            segs,
            key,
            seq,
            seg_first,
            on_disk[seq as usize % on_disk.len()],
        );
        rest = after;
        seq += 1;
    }
    b
}

/// Index segment `seq` of `key` (its first usage at `first_slot`) from its bytes and put it in
/// `segs`: its `.idx` written (`on_disk`) or its entries kept in RAM.
fn seal(segs: &Segments, key: Header, seq: u32, first_slot: u64, on_disk: bool) {
    let bytes = fs::read(segs.dir().join(journal::segment_name(&key, seq))).unwrap();
    let (builder, end) = index::Builder::from_segment(&bytes);
    assert_eq!(end, journal::End::Clean);
    let sealed = builder.seal(key, seq, first_slot, 0);
    let s = if on_disk {
        let idx_len = index::write(segs.dir(), &sealed).unwrap();
        Sealed {
            meta: sealed.meta,
            entries: None,
            idx_len,
        }
    } else {
        Sealed {
            meta: sealed.meta,
            entries: Some(sealed.entries.into()),
            idx_len: 0,
        }
    };
    segs.insert(s).unwrap();
}

pub(crate) fn table(name: &str) -> Arc<Segments> {
    Arc::new(Segments::new(temp_dir(name)))
}

pub(crate) fn cleanup(segs: &Segments) {
    let _ = fs::remove_dir_all(segs.dir());
}

/// Every slot of `b` reads back exactly (in the order `order` shuffles them), every slot
/// outside is `Missing`.
fn check_all(r: &mut Reader, b: &Built, order: &[usize]) -> Result<(), TestCaseError> {
    let n = b.usages.len();
    for i in order.iter().copied().filter(|&i| i < n).chain(0..n) {
        let slot = b.first_slot + i as u64;
        let got = r.read(&b.key, slot, b.id(slot));
        prop_assert_eq!(got, ColdRead::Found(b.usages[i].stored()), "slot {}", slot);
    }
    let before = b.first_slot.checked_sub(1);
    for slot in before.into_iter().chain([b.end(), b.end() + 40]) {
        prop_assert_eq!(r.read(&b.key, slot, b.id(slot)), ColdRead::Missing);
    }
    Ok(())
}

fn key() -> impl Strategy<Value = Header> {
    (1u32..=5, 0u32..5, 0u64..1000).prop_map(|(stripes, s, base)| Header {
        stripes,
        stripe: s % stripes,
        base,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn every_slot_reads_back_exactly(
        key in key(),
        first_slot in 0u64..100,
        ops in ops(300),
        sizes in proptest::collection::vec(1usize..=100, 1..6),
        on_disk in proptest::collection::vec(any::<bool>(), 1..4),
        order in proptest::collection::vec(0usize..300, 0..200),
        open in 1usize..=4,
    ) {
        let segs = table("cold");
        let b = write_stripe(&segs, key, first_slot, &ops, &sizes, &on_disk);
        let mut r = Reader::with_capacity(segs.clone(), open);
        check_all(&mut r, &b, &order)?;
        prop_assert!(r.open_files() <= open);
        // Another stripe of the same epoch has no segments.
        let other = Header { stripes: key.stripes + 1, ..key };
        prop_assert_eq!(r.read(&other, first_slot, 1), ColdRead::Missing);
        cleanup(&segs);
    }

    #[test]
    fn a_corrupt_index_entry_falls_back_to_a_scan(
        key in key(),
        ops in ops(300),
        sizes in proptest::collection::vec(1usize..=100, 1..6),
        bad in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..5), 1..6),
    ) {
        let segs = table("cold-idx");
        let b = write_stripe(&segs, key, 0, &ops, &sizes, &[true]);
        let list = segs.list(&key);
        for (pick, how) in &bad {
            let s = &list[pick.index(list.len())];
            let n = s.meta.entry_count();
            if n == 0 {
                continue;
            }
            let k = pick.index(n);
            let path = segs.index_path(&s.meta);
            let at = Meta::entry_range(k).start;
            let mut e = [0u8; ENTRY_LEN];
            File::open(&path).unwrap().read_exact_at(&mut e, at).unwrap();
            let was = u64::from_le_bytes(e);
            let now = match how {
                0 => u64::MAX,
                1 => 0,
                2 => was.wrapping_add(1),
                3 => was.wrapping_add(MIN_USAGE),
                // The next usage record: a whole record, another id.
                _ => b.at.iter()
                    .find(|a| a.seq == s.meta.seq && a.offset > was)
                    .map_or(u64::MAX, |a| a.offset),
            };
            fs::OpenOptions::new().write(true).open(&path).unwrap()
                .write_all_at(&now.to_le_bytes(), at).unwrap();
        }
        // The index file cut short, too, for the first segment.
        let idx = segs.index_path(&list[0].meta);
        fs::OpenOptions::new().write(true).open(&idx).unwrap()
            .set_len(index::HEADER_LEN as u64 + 4).unwrap();
        let mut r = Reader::new(segs.clone());
        check_all(&mut r, &b, &[])?;
        // And without it at all.
        fs::remove_file(&idx).unwrap();
        check_all(&mut Reader::new(segs.clone()), &b, &[])?;
        cleanup(&segs);
    }

    #[test]
    fn a_flipped_record_byte_is_unreadable_and_only_its_stride_suffers(
        key in key(),
        ops in ops(300),
        sizes in proptest::collection::vec(1usize..=100, 1..6),
        on_disk in proptest::collection::vec(any::<bool>(), 1..4),
        pick in any::<prop::sample::Index>(),
        byte in 0usize..FRAME_LEN + journal::FIXED_PAYLOAD,
    ) {
        let segs = table("cold-flip");
        let b = write_stripe(&segs, key, 0, &ops, &sizes, &on_disk);
        prop_assume!(!b.usages.is_empty());
        let j = pick.index(b.usages.len());
        let bad = b.at[j];
        let path = segs.dir().join(journal::segment_name(&key, bad.seq));
        let f = fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let mut x = [0u8];
        f.read_exact_at(&mut x, bad.offset + byte as u64).unwrap();
        f.write_all_at(&[x[0] ^ 0x10], bad.offset + byte as u64).unwrap();
        let mut r = Reader::new(segs.clone());
        let slot = j as u64;
        let got = r.read(&key, slot, b.id(slot));
        prop_assert!(matches!(&got, ColdRead::Unreadable(why)
            if why.contains(&path.display().to_string()) && why.contains("offset")), "{:?}", got);
        // Slot i's stride: the segment and the usage's entry.
        let stride = |i: usize| {
            let s = segs.find(&key, i as u64).unwrap();
            (s.meta.seq, s.meta.locate(i as u64).unwrap().0)
        };
        for i in 0..b.usages.len() {
            let got = r.read(&key, i as u64, b.id(i as u64));
            let want = ColdRead::Found(b.usages[i].stored());
            if stride(i) != stride(j) || i < j {
                prop_assert_eq!(got, want, "slot {} (the bad one: {})", i, j);
            } else {
                // The bad record and those after it in its stride: never a wrong usage.
                prop_assert!(got == want || matches!(got, ColdRead::Unreadable(_)));
            }
        }
        cleanup(&segs);
    }
}

/// Offsets of the shortest usage record apart: an entry moved by it points at another record.
const MIN_USAGE: u64 = (FRAME_LEN + journal::FIXED_PAYLOAD + 1) as u64;

pub(crate) fn plain(i: u64) -> Owned {
    Owned {
        patient: if i.is_multiple_of(3) {
            Err(format!("patient-{i}").into_bytes())
        } else {
            Ok(i)
        },
        ms: i as i64 * 1000,
        offset_min: (i % 120) as i16 - 60,
        med: format!("Med-{}", i % 7).into_bytes(),
    }
}

#[test]
fn a_removed_segment_is_missing_and_its_file_is_closed() {
    let segs = table("cold-removed");
    let key = Header {
        stripes: 2,
        stripe: 1,
        base: 0,
    };
    let ops: Vec<Op> = (0..100).map(|i| Op::Usage(plain(i))).collect();
    let b = write_stripe(&segs, key, 0, &ops, &[40], &[true, false]);
    let mut r = Reader::new(segs.clone());
    assert_eq!(
        r.read(&key, 5, b.id(5)),
        ColdRead::Found(b.usages[5].stored())
    );
    assert_eq!(
        r.read(&key, 45, b.id(45)),
        ColdRead::Found(b.usages[45].stored())
    );
    assert_eq!(r.open_files(), 2);
    let gone = segs.remove_first(&key).unwrap();
    // Its file is still open in the reader and still on disk: the table decides.
    assert!(segs.segment_path(&gone.meta).exists());
    assert_eq!(r.read(&key, 5, b.id(5)), ColdRead::Missing);
    r.prune();
    assert_eq!(r.open_files(), 1);
    assert_eq!(
        r.read(&key, 45, b.id(45)),
        ColdRead::Found(b.usages[45].stored())
    );
    // A segment whose file is gone while it is still in the table: unreadable, named.
    fs::remove_file(segs.dir().join(journal::segment_name(&key, 2))).unwrap();
    let got = r.read(&key, 85, b.id(85));
    assert!(
        matches!(&got, ColdRead::Unreadable(why) if why.contains("000002.seg")),
        "{got:?}"
    );
    cleanup(&segs);
}

#[test]
fn records_are_walked_a_window_at_a_time_up_to_the_sealed_end() {
    let segs = table("cold-records");
    let key = Header {
        stripes: 1,
        stripe: 0,
        base: 0,
    };
    let ops: Vec<Op> = (0..500)
        .map(|i| match i % 50 {
            7 => Op::Lease,
            _ => Op::Usage(plain(i)),
        })
        .collect();
    write_stripe(&segs, key, 0, &ops, &[500], &[true]);
    let path = segs.dir().join(journal::segment_name(&key, 0));
    let bytes = fs::read(&path).unwrap();
    let mut want = Vec::new();
    journal::scan(&bytes, |at, r| want.push((at as u64, format!("{r:?}"))));
    let walk = |end: u64| {
        let mut rs = Records::new(File::open(&path).unwrap(), path.clone(), end, 1);
        let mut got = Vec::new();
        loop {
            match rs.next_record() {
                Ok(Some((at, r))) => got.push((at, format!("{r:?}"))),
                Ok(None) => return Ok(got),
                Err(e) => return Err(e),
            }
        }
    };
    assert_eq!(walk(bytes.len() as u64).unwrap(), want);
    // Sealed before the last record: it is not walked.
    let (last, _) = want.last().unwrap().clone();
    assert_eq!(walk(last).unwrap(), want[..want.len() - 1]);
    // An end inside a record, or past the file: errors naming file and offset.
    let e = walk(last + 3).unwrap_err();
    assert!(e.contains(&format!("offset {last}")), "{e}");
    let e = walk(bytes.len() as u64 + 10).unwrap_err();
    assert!(e.contains("000000.seg"), "{e}");
    cleanup(&segs);
}

/// The cost of one cold read, page cache warm: `cargo test --release --lib cold_read_cost --
/// --ignored --nocapture`.
#[test]
#[ignore = "a measurement; run it by hand"]
fn cold_read_cost() {
    let segs = table("cold-bench");
    let key = Header {
        stripes: 1,
        stripe: 0,
        base: 0,
    };
    let n = 400_000u64;
    let ops: Vec<Op> = (0..n).map(|i| Op::Usage(plain(i))).collect();
    let b = write_stripe(&segs, key, 0, &ops, &[25_000], &[true]);
    let mut r = Reader::new(segs.clone());
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    for _ in 0..10_000 {
        let slot = next();
        assert!(matches!(r.read(&key, slot, b.id(slot)), ColdRead::Found(_)));
    }
    let mut ns: Vec<u128> = (0..10_000)
        .map(|_| {
            let slot = next();
            let t = std::time::Instant::now();
            let got = r.read(&key, slot, b.id(slot));
            let d = t.elapsed().as_nanos();
            assert_eq!(got, ColdRead::Found(b.usages[slot as usize].stored()));
            d
        })
        .collect();
    ns.sort_unstable();
    let at = |q: f64| ns[((ns.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
    println!(
        "cold read, {n} usages in {} segments, page cache warm: median {:.2} µs, p99 {:.2} µs",
        segs.count(),
        at(0.5),
        at(0.99)
    );
    cleanup(&segs);
}
