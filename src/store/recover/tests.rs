use super::*;
use crate::json::scan::{Patient, Usage};
use crate::store::committer::{self, Committer, Status};
use crate::store::journal::SyncMode;
use crate::time::Timestamp;
use std::sync::atomic::{AtomicUsize, Ordering};

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
    }
}

/// Store `n` usages through recovered writers with journals, as a run of `stripes` workers
/// that stops cleanly (also for the `export` tests).
pub fn run(dir: &Path, stripes: u32, n: u64) -> Vec<u64> {
    let r = recover(dir, opts(stripes)).unwrap();
    let mut ids = Vec::new();
    let mut writers = r.writers;
    let committers: Vec<Committer> = writers
        .iter_mut()
        .enumerate()
        .map(|(s, w)| {
            w.enable_journal();
            let c = r.journals[s];
            let setup = committer::Setup {
                dir: dir.to_path_buf(),
                header: Header {
                    stripes,
                    stripe: s as u32,
                    base: r.base,
                },
                seq: c.seq,
                sync: SyncMode::Never,
                segment_bytes: journal::SEGMENT_BYTES,
                lease: c.lease,
                last_id: c.last_id,
                worker: s,
                first_slot: r
                    .store
                    .stripe_slots(r.store.epochs().len() - 1, s as u32)
                    .end,
                link: Arc::new(crate::store::link::StripeLink::new(0, 0)),
                segments: Arc::new(crate::store::segments::Segments::new(dir.to_path_buf())),
            };
            Committer::start(setup, Arc::new(Status::default()), Box::new(|| {})).unwrap()
        })
        .collect();
    let mut m = String::new();
    for i in 0..n {
        let w = &mut writers[(i % stripes as u64) as usize];
        ids.push(w.append(&usage(i, &mut m)).unwrap());
    }
    for (w, c) in writers.iter_mut().zip(committers) {
        let last = w.batch_mut().map(|(b, id)| (std::mem::take(b), id));
        c.stop(
            last,
            std::time::Instant::now() + std::time::Duration::from_secs(10),
        );
    }
    ids
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
    let mut m = String::new();
    for (i, id) in first.iter().enumerate() {
        let got = r.store.get(*id).unwrap();
        let want = usage(i as u64, &mut m);
        assert_eq!(
            (got.timestamp, got.medication()),
            (want.timestamp, want.medication)
        );
    }
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
    let mut m = String::new();
    for (ids, n) in [(&a, 101), (&b, 40), (&c, 7)] {
        for (i, id) in ids.iter().enumerate().take(n) {
            assert_eq!(
                r.store.get(*id).unwrap().timestamp,
                usage(i as u64, &mut m).timestamp,
                "id {id}"
            );
        }
    }
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
        if cut > end4 {
            assert!(
                r.warnings[0].contains(&format!("torn tail at offset {end4}")),
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
        },
    )
    .unwrap();
    assert_eq!(
        read_only.records, 3,
        "export reads the prefix and changes nothing"
    );
    assert_eq!(fs::read(&seg).unwrap(), bytes);
    let r = recover(
        &dir,
        Options {
            stripes: 1,
            repair: true,
            read_only: false,
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
