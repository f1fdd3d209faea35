//! Cold reads: one usage read back from the sealed segment that holds it, for a slot the
//! arena no longer has in RAM. Runs on a reader thread, never on a worker: it may block on the
//! disk and allocate.
//!
//! The index path: [`Segments::find`] names the segment; the span of the slot's stride comes
//! from its index entries in RAM ([`Sealed::entries`]) or from entries *k* and *k+1* of its
//! `.idx` (one `pread` of 16 bytes; every number bounded: within the segment's covered length,
//! rising, at most [`MAX_SPAN`] apart); one `pread` of the span from the `.seg`;
//! [`index::nth_usage`] walks it, and the record must pass its checksum and carry the id asked
//! for. Anything else (a bad or missing `.idx`, a short read, another id) falls back to
//! scanning the segment's records in windows ([`Records`]) for the id; only when that fails
//! too is the usage unreadable, with the file and offset that say why. An index is derived
//! data: never a reason to call a usage unreadable.
//!
//! Open files are cached (the last [`OPEN_FILES`] segments used, with their `.idx`), keyed by
//! (stripe key, seq). The segment table is asked first on every read, so a segment removed
//! from it (retention) is never read through a cached descriptor; [`Reader::prune`] closes
//! those descriptors, so that removed files do not stay allocated on disk.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use super::StoredUsage;
use super::index::{self, ENTRY_LEN, Meta, STRIDE};
use super::journal::{self, FRAME_LEN, Header, MAX_PAYLOAD, Record};
use super::segments::{Sealed, Segments};

/// The longest framed record.
pub const MAX_RECORD: usize = FRAME_LEN + MAX_PAYLOAD;
/// The most bytes between two index entries: [`STRIDE`] usages of the largest size and room
/// for the lease records among them (one per `LEASE_SLOTS` slots, and a clean stop's). A span
/// past this is a bad entry, and the read falls back to a scan.
pub const MAX_SPAN: u64 = (STRIDE as u64 + 1) * MAX_RECORD as u64;
/// Segments a [`Reader`] keeps open, least recently used closed first.
pub const OPEN_FILES: usize = 64;
/// Bytes a scan reads at a time.
pub const SCAN_WINDOW: usize = 1 << 20;
/// A [`Reader`] prunes its open files of removed segments once per this many reads.
const PRUNE_EVERY: u64 = 64;

/// What a cold read found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColdRead {
    Found(StoredUsage),
    /// No sealed segment holds the slot (not sealed yet, removed, or never written).
    Missing,
    /// The segment that holds it cannot give it back: why, naming the file and offset.
    Unreadable(String),
}

/// An open segment and, once needed, its index.
#[derive(Debug)]
struct Open {
    key: Header,
    seq: u32,
    seg: File,
    idx: Option<File>,
    /// The reader's tick when last used.
    used: u64,
}

/// Reads usages from sealed segments; one per reader thread.
#[derive(Debug)]
pub struct Reader {
    segs: Arc<Segments>,
    open: Vec<Open>,
    capacity: usize,
    /// Reads so far: the clock of the open files' LRU.
    tick: u64,
    /// The span read last, its allocation reused.
    span: Vec<u8>,
}

impl Reader {
    /// A reader of the segments in `segs`, keeping up to [`OPEN_FILES`] segments open.
    pub fn new(segs: Arc<Segments>) -> Reader {
        Reader::with_capacity(segs, OPEN_FILES)
    }

    /// A reader keeping up to `capacity` (at least 1) segments open.
    pub fn with_capacity(segs: Arc<Segments>, capacity: usize) -> Reader {
        Reader {
            segs,
            open: Vec::with_capacity(capacity.max(1)),
            capacity: capacity.max(1),
            tick: 0,
            span: Vec::with_capacity(MAX_SPAN as usize),
        }
    }

    /// The usage `id`, at `slot` of stripe `key`, read from its sealed segment.
    pub fn read(&mut self, key: &Header, slot: u64, id: u64) -> ColdRead {
        self.tick += 1;
        if self.tick.is_multiple_of(PRUNE_EVERY) {
            self.prune();
        }
        let Some(s) = self.segs.find(key, slot) else {
            return ColdRead::Missing;
        };
        let i = match self.file(&s) {
            Ok(i) => i,
            Err(e) => {
                let why = format!("{}: {e}", self.segs.segment_path(&s.meta).display());
                return self.gone_or(&s, slot, why);
            }
        };
        match self.by_index(i, &s, slot, id) {
            Ok(u) => return ColdRead::Found(u),
            // Reopened next time: an index rebuilt meanwhile is read afresh.
            Err(()) => self.open[i].idx = None,
        }
        match self.by_scan(i, &s, id) {
            Ok(u) => ColdRead::Found(u),
            Err(why) => self.gone_or(&s, slot, why),
        }
    }

    /// Close the files of segments no longer in the table (removed by retention: the oldest
    /// of their stripe). [`Reader::read`] calls it now and then; a reader thread may call it
    /// when idle.
    pub fn prune(&mut self) {
        let segs = &self.segs;
        self.open.retain(|o| {
            segs.first(&o.key)
                .is_some_and(|first| first.meta.seq <= o.seq)
        });
    }

    /// Segments open now.
    pub fn open_files(&self) -> usize {
        self.open.len()
    }

    /// `Unreadable(why)` if segment `s` still holds `slot`; `Missing` if it was removed
    /// meanwhile (retention), which is not a fault of the segment.
    fn gone_or(&self, s: &Sealed, slot: u64, why: String) -> ColdRead {
        match self.segs.find(&s.meta.key, slot) {
            Some(now) if now.meta.seq == s.meta.seq => ColdRead::Unreadable(why),
            _ => ColdRead::Missing,
        }
    }

    /// Where segment `s` is in the open files, opened if it was not (closing the least
    /// recently used one if they are full).
    fn file(&mut self, s: &Sealed) -> std::io::Result<usize> {
        let (key, seq) = (s.meta.key, s.meta.seq);
        if let Some(i) = self.open.iter().position(|o| o.key == key && o.seq == seq) {
            self.open[i].used = self.tick;
            return Ok(i);
        }
        let seg = File::open(self.segs.segment_path(&s.meta))?;
        if self.open.len() >= self.capacity
            && let Some(lru) = (0..self.open.len()).min_by_key(|&i| self.open[i].used)
        {
            self.open.swap_remove(lru);
        }
        self.open.push(Open {
            key,
            seq,
            seg,
            idx: None,
            used: self.tick,
        });
        Ok(self.open.len() - 1)
    }

    /// The usage through the index: one span read and walked. `Err` if anything on the way
    /// is not as it must be (the caller then scans).
    fn by_index(&mut self, i: usize, s: &Sealed, slot: u64, id: u64) -> Result<StoredUsage, ()> {
        let (k, nth) = s.meta.locate(slot).ok_or(())?;
        let span = self.span(i, s, k)?;
        self.span.resize((span.end - span.start) as usize, 0);
        self.open[i]
            .seg
            .read_exact_at(&mut self.span, span.start)
            .map_err(|_| ())?;
        match index::nth_usage(&self.span, nth) {
            Ok((got, u)) if got == id => Ok(StoredUsage::from_usage(&u)),
            _ => Err(()),
        }
    }

    /// The bytes of entry `k`'s stride in segment `s` (open file `i`), every bound checked.
    fn span(&mut self, i: usize, s: &Sealed, k: usize) -> Result<Range<u64>, ()> {
        let m = &s.meta;
        let (start, next) = match &s.entries {
            Some(e) => (*e.get(k).ok_or(())?, e.get(k + 1).copied()),
            None => self.entries_on_disk(i, m, k)?,
        };
        let end = next.unwrap_or(m.data_len);
        let inside = start >= journal::HEADER_LEN as u64 && start < end && end <= m.data_len;
        if !inside || end - start > MAX_SPAN {
            return Err(());
        }
        Ok(start..end)
    }

    /// Entries `k` and `k + 1` (`None` past the last) of segment `m`'s `.idx`: one read.
    fn entries_on_disk(&mut self, i: usize, m: &Meta, k: usize) -> Result<(u64, Option<u64>), ()> {
        let o = &mut self.open[i];
        if o.idx.is_none() {
            o.idx = Some(File::open(self.segs.index_path(m)).map_err(|_| ())?);
        }
        let idx = o.idx.as_ref().expect("opened");
        let two = k + 1 < m.entry_count();
        let mut b = [0u8; 2 * ENTRY_LEN];
        let n = if two { 2 * ENTRY_LEN } else { ENTRY_LEN };
        idx.read_exact_at(&mut b[..n], Meta::entry_range(k).start)
            .map_err(|_| ())?;
        let at =
            |j: usize| u64::from_le_bytes(b[j * ENTRY_LEN..][..ENTRY_LEN].try_into().expect("8"));
        Ok((at(0), two.then(|| at(1))))
    }

    /// The usage `id` found by walking segment `s` (open file `i`) from its start.
    fn by_scan(&mut self, i: usize, s: &Sealed, id: u64) -> Result<StoredUsage, String> {
        let path = self.segs.segment_path(&s.meta);
        let file = self.open[i]
            .seg
            .try_clone()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let mut records = Records::new(file, path, s.meta.data_len, SCAN_WINDOW);
        while let Some((_, r)) = records.next_record()? {
            if let Record::Usage { id: got, usage } = r
                && got == id
            {
                return Ok(StoredUsage::from_usage(&usage));
            }
        }
        Err(format!(
            "{}: no record of id {id} in its {} bytes",
            records.path.display(),
            s.meta.data_len
        ))
    }
}

/// The records of a segment's first `end` bytes (a sealed segment's covered length), in
/// order, read a window at a time: memory is one window, whatever the segment's size.
#[derive(Debug)]
pub struct Records {
    file: File,
    path: PathBuf,
    buf: Vec<u8>,
    window: usize,
    /// The file offset of `buf[0]`.
    at: u64,
    /// Where the next record starts in `buf`.
    pos: usize,
    end: u64,
}

impl Records {
    /// The records of `file` (named `path` in errors) up to `end`, read `window` bytes (at
    /// least two of the largest records) at a time.
    pub fn new(file: File, path: PathBuf, end: u64, window: usize) -> Records {
        Records {
            file,
            path,
            buf: Vec::new(),
            window: window.max(2 * MAX_RECORD),
            at: journal::HEADER_LEN as u64,
            pos: 0,
            end,
        }
    }

    /// The file's name, as errors give it.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The next record and its offset; `None` at the end. `Err` (naming file and offset) for a
    /// bad record, one that runs past the end, or a file shorter than the end.
    pub fn next_record(&mut self) -> Result<Option<(u64, Record<'_>)>, String> {
        let at = self.at + self.pos as u64;
        if at >= self.end {
            return Ok(None);
        }
        let more_on_disk = self.at + (self.buf.len() as u64) < self.end;
        if self.buf.len() - self.pos < MAX_RECORD && more_on_disk {
            self.refill()?;
        }
        match journal::decode(&self.buf[self.pos..]) {
            Ok((r, n)) => {
                self.pos += n;
                Ok(Some((at, r)))
            }
            Err(journal::Bad::Truncated) => Err(format!(
                "{}: the record at offset {at} runs past the {} bytes sealed",
                self.path.display(),
                self.end
            )),
            Err(journal::Bad::Corrupt) => Err(format!(
                "{}: bad record at offset {at}",
                self.path.display()
            )),
        }
    }

    /// Keep the bytes not yet walked and read the next ones, up to a window or the end.
    fn refill(&mut self) -> Result<(), String> {
        self.buf.drain(..self.pos);
        self.at += self.pos as u64;
        self.pos = 0;
        let have = self.buf.len();
        let from = self.at + have as u64;
        let want = ((self.window - have) as u64).min(self.end - from) as usize;
        self.buf.resize(have + want, 0);
        self.file
            .read_exact_at(&mut self.buf[have..], from)
            .map_err(|e| {
                format!(
                    "{}: reading {want} bytes at offset {from}: {e}",
                    self.path.display()
                )
            })
    }
}

#[cfg(test)]
pub(crate) mod tests;
