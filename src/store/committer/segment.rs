//! The segment a journal thread appends to: writes cut back on failure, syncs as `--sync`
//! says, leases, rolls, and a segment deleted or replaced under it rewritten.

use crate::store::ids::MAX_ID;
use crate::store::journal::{self, Header, SyncMode};
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

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
        if let Some(l) = lease {
            self.lease = l;
        }
        self.last_id = last_id;
        Ok(())
    }

    /// Before a write: make good a cut still owed, notice a deleted or replaced segment
    /// (rewriting its records into a new one), and roll over a full segment.
    pub(super) fn ready(&mut self) -> io::Result<()> {
        self.cut()?;
        let full = self.len >= self.segment_bytes;
        let now = Instant::now();
        if full || now.duration_since(self.link_checked) >= LINK_CHECK {
            self.check_link(now)?;
        }
        if full {
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
    /// earlier one may lose some) and continue in the next one.
    #[cold]
    pub(super) fn roll(&mut self) -> io::Result<()> {
        self.sync()?;
        let seq = self.free_seq();
        let (file, len) = journal::create_segment(&self.dir, &self.header, seq, self.lease)?;
        self.seq = seq;
        self.path = self.dir.join(journal::segment_name(&self.header, self.seq));
        self.file = file;
        self.len = len;
        self.unsynced = false;
        Ok(())
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
        self.seq = seq;
        self.path = self.dir.join(journal::segment_name(&self.header, seq));
        self.file = file;
        self.len = len;
        self.unsynced = false;
        Ok(())
    }

    /// A clean stop: a last lease equal to the last id (so the next start continues this
    /// epoch), synced.
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
            self.len += self.scratch.len() as u64;
            self.unsynced = true;
            self.lease = self.last_id;
        }
        self.sync()
    }

    pub(super) fn publish(&self, status: &Status) {
        status
            .bytes_written
            .store(self.bytes_written, Ordering::Relaxed);
        status.syncs.store(self.syncs, Ordering::Relaxed);
        status.sync_ns.store(self.sync_ns, Ordering::Relaxed);
    }
}
