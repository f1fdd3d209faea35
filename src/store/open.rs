//! Setting the store up for a run: empty and without a journal (`--in-memory`), or recovered
//! from the journal in the data directory, which the run then holds locked.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use super::arena::EpochLayout;
use super::committer;
use super::journal::{self, Header, SyncMode};
use super::recover::{self, Cluster, Options, Recovered};
use super::retention::{Hold, Marks, Policy, Retainer, Retention};
use super::segments::Segments;
use super::{Store, StripeWriter};

/// A store ready to serve: one writer per worker, and where each worker's journal continues.
pub struct Opened {
    pub store: Arc<Store>,
    pub writers: Vec<StripeWriter>,
    /// One per worker (`None`: in memory, no journal).
    pub journals: Option<Vec<committer::Setup>>,
    /// Every sealed segment (`None`: in memory).
    pub segments: Option<Arc<Segments>>,
    /// Retention's marks as recovery found them.
    pub marks: Marks,
    /// The data directory's `LOCK` file, locked while this lives: keep it until the journal
    /// threads have stopped (`None`: in memory).
    pub lock: Option<File>,
}

/// What [`journaled`] needs from the flags.
#[derive(Debug, Clone, Copy)]
pub struct Journal<'a> {
    /// `--data-dir`: created if missing.
    pub dir: &'a Path,
    /// `--repair`.
    pub repair: bool,
    /// `--sync`.
    pub sync: SyncMode,
    /// `--segment-size`.
    pub segment_bytes: u64,
    /// `--cache`.
    pub cache_bytes: u64,
    /// `--retain`, `--retain-bytes`: segments seal early enough for each to be a small part
    /// of what is kept.
    pub retain: Option<std::time::Duration>,
    pub retain_bytes: Option<u64>,
    /// `--nodes`, `--node`, `--cluster-base`.
    pub cluster: Cluster,
}

/// An empty store of `stripes` stripes holding `cache_bytes` of usages, without a journal
/// (`--in-memory`: the oldest usages leave RAM, and answer `410`, as new ones come).
pub fn in_memory(stripes: u32, cache_bytes: u64) -> Opened {
    in_memory_node(Cluster::SINGLE, stripes, cache_bytes)
}

/// [`in_memory`] for node `cluster.node` of `cluster.nodes`, with `workers` stripes of its own
/// in one epoch from `cluster.base` (or 0).
pub fn in_memory_node(cluster: Cluster, workers: u32, cache_bytes: u64) -> Opened {
    let node = cluster.layout(workers);
    let layout = EpochLayout {
        base: cluster.base.unwrap_or(0),
        starts: vec![0; node.stripes() as usize],
        ends: None,
    };
    let store = Arc::new(Store::for_node(&[layout], cache_bytes, false, node));
    let writers = (0..workers).map(|w| store.worker_writer(w)).collect();
    Opened {
        store,
        writers,
        journals: None,
        segments: None,
        marks: Marks::default(),
        lock: None,
    }
}

/// The store recovered from the journal in `j.dir`, with `stripes` writers; warnings and a
/// summary line go to stderr. Fails when the directory cannot be made or locked (another
/// server uses it) or recovery refuses (see [`recover::recover`]).
pub fn journaled(stripes: u32, j: &Journal) -> Result<Opened, String> {
    let dir = j.dir;
    journal::ensure_dir(dir)
        .map_err(|e| format!("cannot create --data-dir {}: {e}", dir.display()))?;
    let lock = lock(dir)?;
    let opt = Options {
        stripes,
        repair: j.repair,
        read_only: false,
        cache_bytes: j.cache_bytes,
        cluster: j.cluster,
    };
    let r = recover::recover(dir, opt)?;
    report(dir, &r);
    let journals = setups(j.cluster.layout(stripes), j, &r);
    Ok(Opened {
        store: r.store,
        writers: r.writers,
        journals: Some(journals),
        segments: Some(r.segments),
        marks: r.marks,
        lock: Some(lock),
    })
}

/// Retention over the opened store's journal (`None`: no journal, or neither `--retain` nor
/// `--retain-bytes`), keeping what `hold` says (the shipper's: [`crate::ship::shipped`]).
/// Every stripe of every epoch takes part.
pub fn retention(o: &Opened, j: &Journal, hold: Arc<dyn Hold>) -> Result<Option<Retainer>, String> {
    let Some(segments) = &o.segments else {
        return Ok(None);
    };
    if j.retain.is_none() && j.retain_bytes.is_none() {
        return Ok(None);
    }
    let mut links = std::collections::BTreeMap::new();
    for (e, (base, stripes)) in o.store.epochs().into_iter().enumerate() {
        for stripe in 0..stripes {
            let key = Header {
                stripes,
                stripe,
                base,
            };
            links.insert(key, o.store.link(e, stripe));
        }
    }
    let policy = Policy {
        max_age: j.retain,
        max_bytes: j.retain_bytes,
        hold,
    };
    let r = Retention::new(policy, Arc::clone(segments), links, o.marks.clone());
    Retainer::start(r)
        .map(Some)
        .map_err(|e| format!("cannot start the retention thread: {e}"))
}

/// One server per data directory: a second one would hand out the same ids.
fn lock(dir: &Path) -> Result<File, String> {
    let path = dir.join("LOCK");
    let lock = File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    if lock.try_lock().is_err() {
        return Err(format!(
            "another usaged is using --data-dir {}",
            dir.display()
        ));
    }
    Ok(lock)
}

/// Recovery's warnings, then what it read and how fast, to stderr.
fn report(dir: &Path, r: &Recovered) {
    for w in &r.warnings {
        eprintln!("usaged: warning: {w}");
    }
    eprintln!(
        "usaged: recovered {} usages from {} in {:.3} s; {} segments opened by index, {} bytes scanned",
        r.records,
        dir.display(),
        r.elapsed.as_secs_f64(),
        r.by_index,
        r.scanned_bytes
    );
}

/// With retention, a stripe keeps at least this many segments' worth: each segment is at most
/// a tenth of what is kept (by age or by size), so removing one whole is a small step.
const SEGMENTS_KEPT: u32 = 10;

/// `--segment-size`, or less under `--retain-bytes`: a tenth of each stripe's share of it
/// (never under 4 KiB).
fn segment_bytes(j: &Journal, stripes: u32) -> u64 {
    let by_retention = j.retain_bytes.map_or(u64::MAX, |b| {
        b / u64::from(SEGMENTS_KEPT) / u64::from(stripes)
    });
    j.segment_bytes.min(by_retention.max(4096))
}

/// Where each worker's journal thread goes on, after recovery: worker `w` journals its
/// global stripe ([`crate::store::ids::Layout::global_stripe`]).
fn setups(node: crate::store::ids::Layout, j: &Journal, r: &Recovered) -> Vec<committer::Setup> {
    let current = r.store.epochs().len() - 1;
    let stripes = node.workers;
    r.journals
        .iter()
        .enumerate()
        .map(|(s, c)| committer::Setup {
            dir: j.dir.to_path_buf(),
            header: Header {
                stripes: node.stripes(),
                stripe: node.global_stripe(s as u32),
                base: r.base,
            },
            seq: c.seq,
            sync: j.sync,
            segment_bytes: segment_bytes(j, stripes),
            seal_after: j.retain.map(|r| r / SEGMENTS_KEPT),
            lease: c.lease,
            last_id: c.last_id,
            worker: s,
            first_slot: c.next_slot,
            link: r.store.link(current, node.global_stripe(s as u32)),
            segments: Arc::clone(&r.segments),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::recover::tests::temp_dir;

    #[test]
    fn in_memory_has_a_writer_per_stripe_and_no_journal() {
        let o = in_memory(3, crate::store::arena::DEFAULT_CACHE);
        assert_eq!(o.writers.len(), 3);
        assert!(o.journals.is_none() && o.lock.is_none());
        assert_eq!(o.store.len(), 0);
    }

    #[test]
    fn journaled_creates_locks_and_continues_the_directory() {
        let dir = temp_dir("open").join("nested");
        let j = Journal {
            dir: &dir,
            repair: false,
            sync: SyncMode::Never,
            segment_bytes: 1 << 20,
            cache_bytes: crate::store::arena::DEFAULT_CACHE,
            retain: None,
            retain_bytes: None,
            cluster: Cluster::SINGLE,
        };
        let o = journaled(2, &j).expect("an empty directory opens");
        assert!(dir.join("LOCK").exists());
        assert_eq!(o.writers.len(), 2);
        let setups = o.journals.as_ref().expect("journaled");
        assert_eq!(setups.len(), 2);
        for (s, setup) in setups.iter().enumerate() {
            assert_eq!((setup.worker, setup.header.stripe), (s, s as u32));
            assert_eq!((setup.header.stripes, setup.seq), (2, 0));
            assert_eq!(
                (setup.sync, setup.segment_bytes),
                (SyncMode::Never, 1 << 20)
            );
        }
        let second = journaled(2, &j).err().expect("the directory is locked");
        assert!(second.contains("another usaged"), "{second}");
        drop(o);
        assert!(
            journaled(2, &j).is_ok(),
            "the lock goes with the first store"
        );
        let _ = std::fs::remove_dir_all(dir.parent().unwrap());
    }
}
