//! The segment a journal thread appends to: writes cut back on failure, syncs as `--sync`
//! says, leases, seals (index entries built as it is written) and rolls, and a segment deleted
//! or replaced under it rewritten.

use crate::store::ids::MAX_ID;
use crate::store::index;
use crate::store::journal::{self, Header, SyncMode};
use crate::store::segments;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use super::*;

/// The segment a journal thread appends to, and what it knows about it.
pub(super) struct Segment {
    pub(super) dir: PathBuf,
    pub(super) header: Header,
    pub(super) seq: u32,
    pub(super) path: PathBuf,
    pub(super) file: File,
    /// INVARIANT: the file holds exactly `len` bytes of whole records (after a failed write it
    /// is cut back here before anything else is written; `cut_to` remembers a cut still owed).
    pub(super) len: u64,
    pub(super) cut_to: Option<u64>,
    pub(super) sync: SyncMode,
    pub(super) segment_bytes: u64,
    pub(super) seal_after: Option<Duration>,
    /// When this segment was opened (for `seal_after`).
    pub(super) opened: Instant,
    pub(super) unsynced: bool,
    pub(super) last_sync: Instant,
    /// When the segment's name was last checked (deleted or replaced?).
    pub(super) link_checked: Instant,
    /// The durable lease, and the last id written.
    pub(super) lease: u64,
    pub(super) last_id: u64,
    pub(super) worker: usize,
    pub(super) bytes_written: u64,
    pub(super) syncs: u64,
    pub(super) sync_ns: u64,
    pub(super) scratch: Vec<u8>,
    /// The stripe slot of this segment's first usage record.
    pub(super) first_slot: u64,
    /// INVARIANT: has noted every byte of the file after its header (`builder.end() == len`),
    /// unless `sealed`.
    pub(super) builder: index::Builder,
    /// This segment is sealed (in the segment table); the next one is not open yet (its
    /// creation failed): nothing is written before it is.
    pub(super) sealed: bool,
    /// Sealed segments whose index is not written yet (a write failed): tried again at the
    /// next seal and at the stop.
    pub(super) unindexed: Vec<index::Sealed>,
    pub(super) link: Arc<StripeLink>,
    pub(super) segments: Arc<Segments>,
}

/// The index builder of a segment just made by [`journal::create_segment`] with `lease`: it
/// has noted the lease record that follows the header.
fn fresh_builder(lease: u64) -> index::Builder {
    let mut b = index::Builder::new();
    if lease > 0 {
        let mut rec = Vec::with_capacity(journal::MIN_RECORD);
        journal::encode_lease(&mut rec, lease);
        b.note_batch(&rec, journal::HEADER_LEN as u64);
    }
    b
}

/// Wall clock, Unix ms (when a segment is sealed).
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Segment {
    pub(super) fn create(s: Setup) -> io::Result<Segment> {
        let (file, len) = journal::create_segment(&s.dir, &s.header, s.seq, s.lease)?;
        Ok(Segment {
            path: s.dir.join(journal::segment_name(&s.header, s.seq)),
            dir: s.dir,
            header: s.header,
            seq: s.seq,
            file,
            len,
            cut_to: None,
            sync: s.sync,
            segment_bytes: s.segment_bytes,
            seal_after: s.seal_after,
            opened: Instant::now(),
            unsynced: false,
            last_sync: Instant::now(),
            link_checked: Instant::now(),
            lease: s.lease,
            last_id: s.last_id,
            worker: s.worker,
            bytes_written: 0,
            syncs: 0,
            sync_ns: 0,
            scratch: Vec::with_capacity(journal::MIN_RECORD),
            first_slot: s.first_slot,
            builder: fresh_builder(s.lease),
            sealed: false,
            unindexed: Vec::new(),
            link: s.link,
            segments: s.segments,
        })
    }

    /// Append a batch (and a lease before it when its ids pass the lease); sync as the mode
    /// says, and always when the lease moved. On error the file is cut back to where it was.
    pub(super) fn write_batch(&mut self, bytes: &[u8], last_id: u64) -> io::Result<()> {
        self.ready()?;
        let start = self.len;
        let result = self.append_batch(bytes, last_id);
        if result.is_err() {
            self.cut_to = Some(start);
            let _ = self.cut();
        }
        result
    }

    pub(super) fn append_batch(&mut self, bytes: &[u8], last_id: u64) -> io::Result<()> {
        let mut must_sync = self.sync == SyncMode::Always;
        let mut lease = None;
        if last_id > self.lease {
            let step = LEASE_SLOTS * u64::from(self.header.stripes);
            let l = last_id.saturating_add(step).min(MAX_ID - 1);
            self.scratch.clear();
            journal::encode_lease(&mut self.scratch, l);
            self.file.write_all(&self.scratch)?;
            self.len += self.scratch.len() as u64;
            lease = Some(l);
            must_sync = true;
        }
        self.file.write_all(bytes)?;
        self.len += bytes.len() as u64;
        self.bytes_written += bytes.len() as u64;
        self.unsynced = true;
        if must_sync {
            self.sync()?;
        }
        // Deleted while we wrote? Then these records live only in our open file: copy them
        // into a new segment before their answers go (one `fstat` per batch).
        if self.file.metadata()?.nlink() == 0 {
            self.relink()?;
        }
        // Written for good: the index notes them (they are the file's last bytes, wherever a
        // relink put them).
        let lease_len = if lease.is_some() {
            self.scratch.len()
        } else {
            0
        };
        let at = self.len - (lease_len + bytes.len()) as u64;
        if lease.is_some() {
            self.builder.note_batch(&self.scratch, at);
        }
        self.builder.note_batch(bytes, at + lease_len as u64);
        if let Some(l) = lease {
            self.lease = l;
        }
        self.last_id = last_id;
        Ok(())
    }

    /// Before a write: make good a cut still owed, notice a deleted or replaced segment
    /// (rewriting its records into a new one), and roll over a full segment, or one the
    /// writer wants sealed that holds a usage (a segment of leases alone is not worth it).
    pub(super) fn ready(&mut self) -> io::Result<()> {
        self.cut()?;
        if self.sealed {
            return self.roll(); // the next segment still to open
        }
        let now = Instant::now();
        let full = self.len >= self.segment_bytes;
        let wanted = self.builder.records() > 0
            && (self.link.want_seal.load(Ordering::Relaxed)
                || self.seal_due_in(now).is_some_and(|d| d.is_zero()));
        if full || wanted || now.duration_since(self.link_checked) >= LINK_CHECK {
            self.check_link(now)?;
        }
        if full || wanted {
            self.roll()?;
        }
        Ok(())
    }

    /// Relink the segment's records if its name no longer leads to our file.
    pub(super) fn check_link(&mut self, now: Instant) -> io::Result<()> {
        let meta = self.file.metadata()?;
        let replaced = match std::fs::metadata(&self.path) {
            Ok(m) => m.ino() != meta.ino() || m.dev() != meta.dev(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => true,
            Err(e) => return Err(e),
        };
        if meta.nlink() == 0 || replaced {
            self.relink()?; // on failure: looked at again before the next try
        }
        self.link_checked = now;
        Ok(())
    }

    pub(super) fn cut(&mut self) -> io::Result<()> {
        if let Some(at) = self.cut_to {
            self.file.set_len(at)?;
            self.len = at;
            self.cut_to = None;
        }
        Ok(())
    }

    pub(super) fn sync(&mut self) -> io::Result<()> {
        if !self.unsynced {
            return Ok(());
        }
        let t = Instant::now();
        self.file.sync_data()?;
        self.sync_ns += t.elapsed().as_nanos() as u64;
        self.syncs += 1;
        self.unsynced = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// `--sync interval`: when the written records are due for their sync.
    pub(super) fn sync_due_in(&self, now: Instant) -> Option<Duration> {
        (self.unsynced && self.sync == SyncMode::Interval)
            .then(|| (self.last_sync + SYNC_INTERVAL).saturating_duration_since(now))
    }

    /// With retention by age: when a segment holding usages is due to seal (it is sealed a
    /// tenth of `--retain` after it was opened, so its usages can expire on time even when no
    /// more come).
    pub(super) fn seal_due_in(&self, now: Instant) -> Option<Duration> {
        let after = self.seal_after?;
        (self.builder.records() > 0 && !self.sealed)
            .then(|| (self.opened + after).saturating_duration_since(now))
    }

    /// The next time the thread must act without a batch: a sync or a seal due.
    pub(super) fn due_in(&self, now: Instant) -> Option<Duration> {
        match (self.sync_due_in(now), self.seal_due_in(now)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The worker asked for a seal and the segment holds usages to seal.
    pub(super) fn seal_wanted(&self) -> bool {
        !self.sealed && self.builder.records() > 0 && self.link.want_seal.load(Ordering::Relaxed)
    }

    /// No batch came: sync what is due, and seal a segment whose time has come or that the
    /// worker wants sealed (`ready` rolls it).
    pub(super) fn idle(&mut self) -> io::Result<()> {
        self.sync()?;
        let due = self
            .seal_due_in(Instant::now())
            .is_some_and(|d| d.is_zero());
        if self.seal_wanted() || due {
            self.ready()?;
        }
        Ok(())
    }

    /// The first segment number past `seq` with no file (a segment made by a try that failed
    /// after its rename is complete but unused: it is left as it is).
    pub(super) fn free_seq(&self) -> u32 {
        let mut seq = self.seq + 1;
        while self
            .dir
            .join(journal::segment_name(&self.header, seq))
            .exists()
        {
            seq += 1;
        }
        seq
    }

    /// Seal this segment (synced in every mode: a later segment never holds records while an
    /// earlier one may lose some), continue in the next one, then write the index. A failure
    /// may come after the seal: the next call goes on from there.
    #[cold]
    pub(super) fn roll(&mut self) -> io::Result<()> {
        self.sync()?;
        self.seal();
        let seq = self.free_seq();
        let (file, len) = journal::create_segment(&self.dir, &self.header, seq, self.lease)?;
        self.seq = seq;
        self.path = self.dir.join(journal::segment_name(&self.header, self.seq));
        self.file = file;
        self.len = len;
        self.unsynced = false;
        self.builder = fresh_builder(self.lease);
        self.opened = Instant::now();
        debug_assert_eq!(
            self.builder.end(),
            self.len,
            "the builder noted the first lease"
        );
        self.sealed = false;
        self.write_indexes();
        Ok(())
    }

    /// Seal the segment, synced already (once; nothing more is written to it): into the
    /// segment table with its index entries, `sealed_end` past it (its slots may now leave
    /// the arena: readers find them here), `want_seal` answered. Its index is written later
    /// ([`Segment::write_indexes`]).
    #[cold]
    pub(super) fn seal(&mut self) {
        if self.sealed {
            return;
        }
        debug_assert!(!self.unsynced, "sealed only once synced");
        let builder = std::mem::take(&mut self.builder);
        let sealed = builder.seal(self.header, self.seq, self.first_slot, unix_ms());
        debug_assert_eq!(sealed.meta.data_len, self.len, "the index covers the file");
        let end = self.first_slot + sealed.meta.records;
        let entry = segments::Sealed {
            meta: sealed.meta,
            entries: Some(Arc::from(sealed.entries.as_slice())),
            idx_len: 0,
        };
        match self.segments.insert(entry) {
            Ok(()) => self.link.sealed_end.store(end, Ordering::Release),
            // A bug, never a reason to fail a write: `sealed_end` stays, so the arena keeps
            // these slots (or refuses new usages once it is full).
            Err(e) => eprintln!(
                "usaged: worker {}: sealed segment {} not in the segment table: {e}",
                self.worker,
                self.path.display()
            ),
        }
        self.link.want_seal.store(false, Ordering::Relaxed);
        self.first_slot = end;
        self.sealed = true;
        self.unindexed.push(sealed);
    }

    /// Write the index of every sealed segment that has none yet; one that fails stays for
    /// the next try (its entries stay in the segment table meanwhile), one line logged.
    #[cold]
    pub(super) fn write_indexes(&mut self) {
        let mut left = std::mem::take(&mut self.unindexed);
        left.retain(|s| match index::write(&self.dir, s) {
            Ok(len) => {
                self.segments.indexed(&s.meta.key, s.meta.seq, len);
                false
            }
            Err(e) => {
                eprintln!(
                    "usaged: worker {}: cannot write the index of {}: {e}; kept in memory, tried again at the next seal",
                    self.worker,
                    journal::segment_name(&s.meta.key, s.meta.seq)
                );
                true
            }
        });
        self.unindexed = left;
    }

    /// Our segment was deleted or replaced: its records live on only in our open file. Copy
    /// them into a new segment (synced), and continue there.
    #[cold]
    pub(super) fn relink(&mut self) -> io::Result<()> {
        let old = journal::HEADER_LEN as u64;
        let records = self.len.saturating_sub(old);
        let seq = self.free_seq();
        let (mut file, mut len) =
            journal::create_segment(&self.dir, &self.header, seq, self.lease)?;
        let new_path = self.dir.join(journal::segment_name(&self.header, seq));
        let mut buf = vec![0; 1 << 20];
        let mut at = old;
        let copied = (|| {
            while at < old + records {
                let n = ((old + records - at) as usize).min(buf.len());
                self.file.read_exact_at(&mut buf[..n], at)?;
                file.write_all(&buf[..n])?;
                at += n as u64;
                len += n as u64;
            }
            file.sync_data()
        })();
        if let Err(e) = copied {
            // Not a segment to keep: the next try starts over.
            let _ = std::fs::remove_file(&new_path);
            return Err(e);
        }
        eprintln!(
            "usaged: worker {}: journal segment {} was deleted or replaced; its {} bytes of records were rewritten to {}",
            self.worker,
            self.path.display(),
            records,
            journal::segment_name(&self.header, seq)
        );
        // The records moved behind the new segment's first lease.
        let noted = std::mem::take(&mut self.builder);
        self.builder = noted.behind(fresh_builder(self.lease));
        self.seq = seq;
        self.path = self.dir.join(journal::segment_name(&self.header, seq));
        self.file = file;
        self.len = len;
        self.unsynced = false;
        Ok(())
    }

    /// A clean stop: a last lease equal to the last id (so the next start continues this
    /// epoch), synced, and the segment sealed and indexed (even one without usages), so the
    /// next start reads no record.
    pub(super) fn finish(&mut self) -> io::Result<()> {
        if self.lease > self.last_id {
            self.ready()?;
            self.scratch.clear();
            journal::encode_lease(&mut self.scratch, self.last_id.max(1));
            let start = self.len;
            let written = self.file.write_all(&self.scratch);
            if let Err(e) = written {
                self.cut_to = Some(start);
                let _ = self.cut();
                return Err(e);
            }
            self.builder.note_batch(&self.scratch, start);
            self.len += self.scratch.len() as u64;
            self.unsynced = true;
            self.lease = self.last_id;
        }
        self.sync()?;
        self.seal();
        self.write_indexes();
        Ok(())
    }

    pub(super) fn publish(&self, status: &Status) {
        status
            .bytes_written
            .store(self.bytes_written, Ordering::Relaxed);
        status.syncs.store(self.syncs, Ordering::Relaxed);
        status.sync_ns.store(self.sync_ns, Ordering::Relaxed);
        // A new epoch's stripe has no lease yet: its base lies past every id of the runs
        // before (recovery's floor), so it is the bound until the first lease.
        let lease = self.lease.max(self.last_id).max(self.header.base);
        status.lease.store(lease, Ordering::Relaxed);
    }
}
