use super::*;
use crate::json::scan::{Patient, Usage};
use crate::store::StoredUsage;
use crate::store::committer::{self, Committer, Status};
use crate::store::journal::SyncMode;
use crate::store::link::StripeLink;
use crate::time::Timestamp;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

mod cluster;
mod indexed;
mod retained;

/// A fresh, empty directory under the system temp dir (also for the `open` and `export`
/// tests).
pub fn temp_dir(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "usaged-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

fn usage(i: u64, buf: &mut String) -> Usage<'_> {
    buf.clear();
    buf.push_str(&format!("Med-{}", i % 7));
    let patient = if i.is_multiple_of(2) {
        Patient::Num(i)
    } else {
        Patient::Str(b"patient-with-a-long-name")
    };
    Usage {
        patient,
        timestamp: Timestamp {
            ms: i as i64 * 1000,
            offset_min: (i % 60) as i16,
        },
        medication: buf.as_bytes(),
    }
}

fn opts(stripes: u32) -> Options {
    Options {
        stripes,
        repair: false,
        read_only: false,
        cache_bytes: crate::store::arena::DEFAULT_CACHE,
        cluster: crate::store::recover::Cluster::SINGLE,
    }
}

/// Store `n` usages through recovered writers with journals, as a run of `stripes` workers
/// that stops cleanly (also for the `export` tests).
pub fn run(dir: &Path, stripes: u32, n: u64) -> Vec<u64> {
    run_with(dir, stripes, n, journal::SEGMENT_BYTES)
}

/// A journal thread for each writer of recovery `r` (segments rolling past
/// `segment_bytes`), as `open` sets them up for a server alone.
fn start_journals(
    dir: &Path,
    r: &Recovered,
    writers: &mut [StripeWriter],
    segment_bytes: u64,
) -> Vec<Committer> {
    let layout = crate::store::recover::Cluster::SINGLE.layout(writers.len() as u32);
    start_node_journals(dir, r, writers, segment_bytes, layout)
}

/// [`start_journals`] for the workers of one node of a cluster `layout`.
fn start_node_journals(
    dir: &Path,
    r: &Recovered,
    writers: &mut [StripeWriter],
    segment_bytes: u64,
    layout: ids::Layout,
) -> Vec<Committer> {
    writers
        .iter_mut()
        .enumerate()
        .map(|(s, w)| {
            w.enable_journal();
            let c = r.journals[s];
            let setup = committer::Setup {
                dir: dir.to_path_buf(),
                header: Header {
                    stripes: layout.stripes(),
                    stripe: layout.global_stripe(s as u32),
                    base: r.base,
                },
                seq: c.seq,
                sync: SyncMode::Never,
                segment_bytes,
                seal_after: None,
                lease: c.lease,
                last_id: c.last_id,
                worker: s,
                first_slot: c.next_slot,
                link: Arc::new(StripeLink::new(c.next_slot, 0)),
                segments: Arc::clone(&r.segments),
            };
            Committer::start(setup, Arc::new(Status::default()), Box::new(|| {})).unwrap()
        })
        .collect()
}

/// [`run`] with segments rolling past `segment_bytes`.
pub fn run_with(dir: &Path, stripes: u32, n: u64, segment_bytes: u64) -> Vec<u64> {
    let opt = opts(stripes);
    run_node(dir, opt, n, segment_bytes, false).unwrap()
}

/// Store `n` usages as a run with `opt` (a node of a cluster, maybe), then stop cleanly, or,
/// with `crash`, stop as a crash does: the batches handed over are written, the rest is lost
/// and each stripe's lease stays ahead of its last record. The ids returned are those handed
/// over to the journal (acknowledged, in a server); after a crash the others may come again.
/// `Err`: recovery refused.
pub fn run_node(
    dir: &Path,
    opt: Options,
    n: u64,
    segment_bytes: u64,
    crash: bool,
) -> Result<Vec<u64>, String> {
    let mut r = recover(dir, opt)?;
    let layout = opt.cluster.layout(opt.stripes);
    let stripes = opt.stripes;
    let mut ids = Vec::new();
    let mut writers = std::mem::take(&mut r.writers);
    let mut committers = start_node_journals(dir, &r, &mut writers, segment_bytes, layout);
    let mut m = String::new();
    let mut handed = vec![0; stripes as usize];
    for i in 0..n {
        let w = &mut writers[(i % stripes as u64) as usize];
        ids.push(w.append(&usage(i, &mut m)).unwrap());
        // Hand over a batch of 16 (as a worker's loop turn does), so segments roll often.
        if i % (16 * stripes as u64) >= 15 * stripes as u64 {
            let c = &mut committers[(i % stripes as u64) as usize];
            while !c.idle() {
                std::thread::yield_now(); // the batch before is being written
            }
            if let Some((b, id)) = w.batch_mut() {
                assert!(c.submit(b, id));
                handed[(i % stripes as u64) as usize] = id;
            }
        }
    }
    if crash {
        // Usage `i` went to worker `i mod stripes`, whose ids grow.
        let w = |i: usize| i % stripes as usize;
        ids = (0..ids.len())
            .filter(|&i| ids[i] <= handed[w(i)] && handed[w(i)] > 0)
            .map(|i| ids[i])
            .collect();
    }
    for (w, c) in writers.iter_mut().zip(committers) {
        if crash {
            while !c.idle() {
                std::thread::yield_now();
            }
            // Its thread waits for a batch that never comes, as if the process had died.
            std::mem::forget(c);
            continue;
        }
        let last = w.batch_mut().map(|(b, id)| (std::mem::take(b), id));
        c.stop(
            last,
            std::time::Instant::now() + std::time::Duration::from_secs(10),
        );
    }
    Ok(ids)
}

/// Every usage the segment table of `r` holds, read from the segment files it names. Checks
/// on the way that each segment holds exactly the usages its entry says, at its slots.
pub fn stored(r: &Recovered) -> BTreeMap<u64, StoredUsage> {
    let segs = &r.segments;
    let mut out = BTreeMap::new();
    for key in segs.keys() {
        for s in segs.list(&key) {
            let bytes = fs::read(segs.segment_path(&s.meta)).unwrap();
            let bytes = &bytes[..s.meta.data_len as usize];
            let mut slot = s.meta.first_slot;
            let end = journal::scan(bytes, |_, r| {
                if let Record::Usage { id, usage } = r {
                    assert_eq!(id, key.base + ids::id_of(key.stripe, slot, key.stripes));
                    slot += 1;
                    assert!(out.insert(id, StoredUsage::from_usage(&usage)).is_none());
                }
            });
            assert_eq!(end, End::Clean, "segment {} of {key:?}", s.meta.seq);
            assert_eq!(slot, s.meta.first_slot + s.meta.records);
        }
    }
    out
}

/// Every id of `ids` reads back as the `i`th usage [`run`] stored, from the segments.
fn all_readable(r: &Recovered, ids: &[u64]) {
    let got = stored(r);
    let mut m = String::new();
    for (i, id) in ids.iter().enumerate() {
        let want = StoredUsage::from_usage(&usage(i as u64, &mut m));
        assert_eq!(got.get(id), Some(&want), "id {id}");
    }
}

/// Offsets of the usage records of a segment.
fn usage_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut v = Vec::new();
    journal::scan(bytes, |at, r| {
        if matches!(r, journal::Record::Usage { .. }) {
            v.push(at)
        }
    });
    v
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

#[test]
fn round_trip_and_continuation() {
    let dir = temp_dir("rt");
    let first = run(&dir, 3, 100);
    let r = recover(&dir, opts(3)).unwrap();
    assert_eq!(r.records, 100);
    all_readable(&r, &first);
    assert_eq!(stored(&r).len(), 100);
    drop(r);
    let second = run(&dir, 3, 50);
    let all: std::collections::HashSet<u64> = first.iter().chain(&second).copied().collect();
    assert_eq!(all.len(), 150, "no id handed out twice");
    assert_eq!(recover(&dir, opts(3)).unwrap().records, 150);
}

#[test]
fn a_different_thread_count_starts_a_new_epoch() {
    let dir = temp_dir("epochs");
    let a = run(&dir, 4, 101);
    let b = run(&dir, 2, 40);
    let c = run(&dir, 3, 7);
    let max_a = *a.iter().max().unwrap();
    assert!(b.iter().all(|&id| id > max_a), "new ids past every old one");
    let r = recover(&dir, opts(5)).unwrap();
    assert_eq!(r.records, 148);
    for ids in [&a, &b, &c] {
        all_readable(&r, ids);
    }
    assert_eq!(stored(&r).len(), 148);
}

#[test]
fn a_torn_tail_is_cut_at_every_offset_of_the_last_record() {
    let dir = temp_dir("torn");
    run(&dir, 1, 5);
    let seg = segments(&dir).remove(0);
    let whole = fs::read(&seg).unwrap();
    // The last record starts where the fourth ends.
    let end4 = usage_offsets(&whole)[4];
    // The clean stop's last lease follows the last usage.
    let end5 = end4 + journal::decode(&whole[end4..]).unwrap().1;
    for cut in end4..end5 {
        fs::write(&seg, &whole[..cut]).unwrap();
        let r = recover(&dir, opts(1)).unwrap();
        assert_eq!(r.records, 4, "cut at {cut}");
        // Its index no longer fits it: removed, the segment scanned, cut and indexed again.
        assert!(r.scanned_bytes > 0, "cut at {cut}");
        if cut > end4 {
            assert!(
                r.warnings
                    .iter()
                    .any(|w| w.contains(&format!("torn tail at offset {end4}"))),
                "{:?}",
                r.warnings
            );
        }
        assert_eq!(
            fs::metadata(&seg).unwrap().len(),
            end4 as u64,
            "cut back to the last whole record"
        );
    }
    fs::write(&seg, &whole).unwrap();
    assert_eq!(recover(&dir, opts(1)).unwrap().records, 5);
}

#[test]
fn corruption_in_the_middle_stops_the_start_unless_repair() {
    let dir = temp_dir("corrupt");
    run(&dir, 1, 10);
    let seg = segments(&dir).remove(0);
    let mut bytes = fs::read(&seg).unwrap();
    let at3 = usage_offsets(&bytes)[3];
    bytes[at3 + 10] ^= 0x40;
    fs::write(&seg, &bytes).unwrap();
    // Its index makes the start read none of its records (see `indexed`): without it, it is
    // read and checked.
    fs::remove_file(seg.with_extension("idx")).unwrap();
    let err = recover(&dir, opts(1)).err().expect("refuses to start");
    assert!(
        err.contains(&seg.display().to_string()) && err.contains(&format!("offset {at3}")),
        "{err}"
    );
    let read_only = recover(
        &dir,
        Options {
            stripes: 1,
            repair: false,
            read_only: true,
            cache_bytes: crate::store::arena::DEFAULT_CACHE,
            cluster: crate::store::recover::Cluster::SINGLE,
        },
    )
    .unwrap();
    assert_eq!(
        read_only.records, 3,
        "export reads the prefix and changes nothing"
    );
    assert_eq!(fs::read(&seg).unwrap(), bytes);
    assert!(!seg.with_extension("idx").exists(), "no index written");
    assert_eq!(stored(&read_only).len(), 3);
    let r = recover(
        &dir,
        Options {
            stripes: 1,
            repair: true,
            read_only: false,
            cache_bytes: crate::store::arena::DEFAULT_CACHE,
            cluster: crate::store::recover::Cluster::SINGLE,
        },
    )
    .unwrap();
    assert_eq!(r.records, 3);
    assert!(
        PathBuf::from(format!("{}.corrupt-{at3}", seg.display())).exists(),
        "the rest is kept aside"
    );
    assert_eq!(
        recover(&dir, opts(1)).unwrap().records,
        3,
        "starts cleanly after the repair"
    );
}
