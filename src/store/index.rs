//! A sealed segment's side index: `e{base}-s{stripes}-w{stripe}-{seq:06}.idx` beside its
//! `.seg`, mapping every [`STRIDE`]th usage record to its offset in the segment, so any usage
//! of the segment is found by reading at most [`STRIDE`] records. The segment's bytes are not
//! changed by it; an index is derived data: a missing or invalid one is rebuilt from its
//! segment ([`Builder::from_segment`]), never a reason to distrust the segment.
//!
//! # Format (version 2; version 1 is still read)
//!
//! All integers little-endian. A header of [`HEADER_LEN`] (96) bytes: magic `USAGEDX1`,
//! version `u32` (2), stride `u32` (32), stripes `u32`, stripe `u32`, epoch base `u64`, seq
//! `u32` (these four as in the segment's name), CRC32C `u32` of the entries, first slot `u64`
//! (of the segment's first usage in its stripe), records `u64` (usage records; leases are not
//! counted), data length `u64` (the segment's length the index covers), last id `u64` (0:
//! none), lease `u64` (the segment's last lease record, 0: none), sealed at `u64` (wall clock,
//! Unix ms), CRC32C `u32` of bytes `0..88` and `92..96`, keyed `u32` (usage records that carry
//! an `Idempotency-Key`, at most `u32::MAX`; version 1: four zero bytes, the CRC of `0..88`
//! only, and no keyed record, as the builds that wrote it had none). Then `ceil(records / 32)`
//! entries, one `u64` each: entry *k* is the segment offset of usage record *32k*.
//!
//! An index is valid iff magic, version, header checksum and bounds hold, its name agrees with
//! its header, and its data length is the segment's length ([`read_meta`]: one read of 96
//! bytes). [`load`] also checks the entries' checksum. A lookup needs neither: the record it
//! finds proves itself (its own CRC, and the id asked for).
//!
//! Written by the journal thread when it seals a segment (`committer/segment.rs`, entries
//! built as the records are written), and by recovery for a segment it had to scan; start-up
//! reads only headers ([`read_meta`]).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::ids::MAX_ID;
use super::journal::{self, Header, MAX_STRIPES, MIN_RECORD, Record, u32_at, u64_at};
use crate::json::scan::Usage;

pub const MAGIC: &[u8; 8] = b"USAGEDX1";
pub const VERSION: u32 = 2;
/// One entry per this many usage records.
pub const STRIDE: u32 = 32;

/// Where each field of an index header lies (see the format above).
mod header_at {
    use std::ops::Range;
    pub const MAGIC: Range<usize> = 0..8;
    pub const VERSION: Range<usize> = 8..12;
    pub const STRIDE: Range<usize> = 12..16;
    pub const STRIPES: Range<usize> = 16..20;
    pub const STRIPE: Range<usize> = 20..24;
    pub const BASE: Range<usize> = 24..32;
    pub const SEQ: Range<usize> = 32..36;
    /// CRC32C of the entries.
    pub const ENTRIES_CRC: Range<usize> = 36..40;
    pub const FIRST_SLOT: Range<usize> = 40..48;
    pub const RECORDS: Range<usize> = 48..56;
    pub const DATA_LEN: Range<usize> = 56..64;
    pub const LAST_ID: Range<usize> = 64..72;
    pub const LEASE: Range<usize> = 72..80;
    pub const SEALED_MS: Range<usize> = 80..88;
    /// CRC32C of every byte before it.
    pub const CRC: Range<usize> = 88..92;
    /// Keyed usage records (version 1: zero).
    pub const KEYED: Range<usize> = 92..96;
}
pub const HEADER_LEN: usize = header_at::KEYED.end;

/// The header checksum of `version`: of bytes `0..88`, and for version 2 `92..96` too.
fn header_crc(h: &[u8], version: u32) -> u32 {
    let crc = crc32c::crc32c(&h[..header_at::CRC.start]);
    if version == 1 {
        crc
    } else {
        crc32c::crc32c_append(crc, &h[header_at::KEYED])
    }
}
/// Bytes per entry.
pub const ENTRY_LEN: usize = 8;

/// The CRC32C of entries `e`, as they lie on disk.
fn entries_crc(e: &[u64]) -> u32 {
    e.iter()
        .fold(0, |crc, o| crc32c::crc32c_append(crc, &o.to_le_bytes()))
}

/// The file name of the index of segment `seq` of `key`.
pub fn index_name(key: &Header, seq: u32) -> String {
    journal::name_as(key, seq, ".idx")
}

/// An index header: what a sealed segment holds, without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// The segment's stripe layout (as its name and header say).
    pub key: Header,
    pub seq: u32,
    /// Slot (in its stripe) of the segment's first usage record.
    pub first_slot: u64,
    /// Usage records in the segment (leases not counted).
    pub records: u64,
    /// The segment's length, header included.
    pub data_len: u64,
    /// Id of the last usage record; 0 if none.
    pub last_id: u64,
    /// The last lease record's id; 0 if none.
    pub lease: u64,
    /// When the segment was sealed (Unix ms).
    pub sealed_ms: u64,
    /// Usage records that carry an `Idempotency-Key` (at start, a segment with none need not
    /// be read for keys).
    pub keyed: u32,
}

impl Meta {
    /// How many entries an index of `records` usages has.
    pub fn entry_count(&self) -> usize {
        self.records.div_ceil(u64::from(STRIDE)) as usize
    }

    /// The index file's length.
    pub fn file_len(&self) -> u64 {
        (HEADER_LEN + self.entry_count() * ENTRY_LEN) as u64
    }

    /// Where in the index file entry `k` lies (for a reader that reads two entries, not all).
    pub fn entry_range(k: usize) -> Range<u64> {
        let at = (HEADER_LEN + k * ENTRY_LEN) as u64;
        at..at + ENTRY_LEN as u64
    }

    /// `(k, nth)` for `slot`: the usage is the `nth` usage record (leases not counted) from
    /// entry `k`'s offset on; `None` if the slot is not in this segment.
    pub fn locate(&self, slot: u64) -> Option<(usize, usize)> {
        let i = slot.checked_sub(self.first_slot)?;
        if i >= self.records {
            return None;
        }
        let stride = u64::from(STRIDE);
        Some(((i / stride) as usize, (i % stride) as usize))
    }

    fn encode(&self, entries_crc: u32) -> [u8; HEADER_LEN] {
        let mut h = [0; HEADER_LEN];
        h[header_at::MAGIC].copy_from_slice(MAGIC);
        h[header_at::VERSION].copy_from_slice(&VERSION.to_le_bytes());
        h[header_at::STRIDE].copy_from_slice(&STRIDE.to_le_bytes());
        h[header_at::STRIPES].copy_from_slice(&self.key.stripes.to_le_bytes());
        h[header_at::STRIPE].copy_from_slice(&self.key.stripe.to_le_bytes());
        h[header_at::BASE].copy_from_slice(&self.key.base.to_le_bytes());
        h[header_at::SEQ].copy_from_slice(&self.seq.to_le_bytes());
        h[header_at::ENTRIES_CRC].copy_from_slice(&entries_crc.to_le_bytes());
        h[header_at::FIRST_SLOT].copy_from_slice(&self.first_slot.to_le_bytes());
        h[header_at::RECORDS].copy_from_slice(&self.records.to_le_bytes());
        h[header_at::DATA_LEN].copy_from_slice(&self.data_len.to_le_bytes());
        h[header_at::LAST_ID].copy_from_slice(&self.last_id.to_le_bytes());
        h[header_at::LEASE].copy_from_slice(&self.lease.to_le_bytes());
        h[header_at::SEALED_MS].copy_from_slice(&self.sealed_ms.to_le_bytes());
        h[header_at::KEYED].copy_from_slice(&self.keyed.to_le_bytes());
        let crc = header_crc(&h, VERSION);
        h[header_at::CRC].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// The header at the start of `b`, checked (magic, version, checksum, bounds), and the
    /// entries' checksum it records.
    pub fn decode(b: &[u8]) -> Result<(Meta, u32), String> {
        let Some(h) = b.get(..HEADER_LEN) else {
            return Err(format!(
                "index header cut short ({} of {HEADER_LEN} bytes)",
                b.len()
            ));
        };
        if &h[header_at::MAGIC] != MAGIC {
            return Err("not a usaged segment index (bad magic)".into());
        }
        let version = match u32_at(h, header_at::VERSION) {
            v @ (1 | 2) => v,
            v => {
                return Err(format!(
                    "index format version {v} (this build reads 1 and 2)"
                ));
            }
        };
        if u32_at(h, header_at::CRC) != header_crc(h, version)
            || (version == 1 && h[header_at::KEYED] != [0; 4])
        {
            return Err("index header checksum mismatch".into());
        }
        let m = Meta {
            key: Header {
                stripes: u32_at(h, header_at::STRIPES),
                stripe: u32_at(h, header_at::STRIPE),
                base: u64_at(h, header_at::BASE),
            },
            seq: u32_at(h, header_at::SEQ),
            first_slot: u64_at(h, header_at::FIRST_SLOT),
            records: u64_at(h, header_at::RECORDS),
            data_len: u64_at(h, header_at::DATA_LEN),
            last_id: u64_at(h, header_at::LAST_ID),
            lease: u64_at(h, header_at::LEASE),
            sealed_ms: u64_at(h, header_at::SEALED_MS),
            keyed: u32_at(h, header_at::KEYED),
        };
        m.check_bounds(u32_at(h, header_at::STRIDE))?;
        Ok((m, u32_at(h, header_at::ENTRIES_CRC)))
    }

    /// Every number within what a segment can hold; none is used before this holds.
    fn check_bounds(&self, stride: u32) -> Result<(), String> {
        let k = &self.key;
        if stride != STRIDE {
            return Err(format!("index stride {stride} (this build uses {STRIDE})"));
        }
        if k.stripes == 0 || k.stripes > MAX_STRIPES || k.stripe >= k.stripes {
            return Err(format!("bad stripe layout {} of {}", k.stripe, k.stripes));
        }
        if k.base >= MAX_ID || self.last_id >= MAX_ID || self.lease >= MAX_ID {
            return Err("index names an id out of range".into());
        }
        if u64::from(self.keyed) > self.records {
            return Err(format!(
                "{} keyed records among {}",
                self.keyed, self.records
            ));
        }
        if self
            .first_slot
            .checked_add(self.records)
            .is_none_or(|e| e >= MAX_ID)
        {
            return Err(format!(
                "slots {} + {} out of range",
                self.first_slot, self.records
            ));
        }
        // Every usage record takes more than MIN_RECORD bytes after the segment header.
        let least = self
            .records
            .checked_mul(MIN_RECORD as u64)
            .and_then(|n| n.checked_add(journal::HEADER_LEN as u64));
        if least.is_none_or(|least| self.data_len < least) {
            return Err(format!(
                "{} records cannot fit in {} bytes",
                self.records, self.data_len
            ));
        }
        Ok(())
    }

    /// Whether this header belongs to the index file `name` of a segment `seg_len` bytes long.
    pub fn check(&self, name: &str, seg_len: u64) -> Result<(), String> {
        if journal::parse_name_as(name, ".idx") != Some((self.key, self.seq)) {
            return Err(format!(
                "index header says {}, not its name",
                index_name(&self.key, self.seq)
            ));
        }
        if self.data_len != seg_len {
            return Err(format!(
                "index covers {} bytes, its segment has {seg_len}",
                self.data_len
            ));
        }
        Ok(())
    }
}

/// Where the usage record of a slot lies in its segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// The bytes of the segment to read: from an entry's offset to the next one (or the end).
    pub bytes: Range<u64>,
    /// The usage is the `nth` usage record in them (leases are skipped; see [`nth_usage`]).
    pub nth: usize,
}

/// A sealed segment's whole index: its header and entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub meta: Meta,
    /// Entry `k`: the segment offset of usage record `32k`.
    pub entries: Vec<u64>,
}

impl Sealed {
    /// The index file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        debug_assert_eq!(self.entries.len(), self.meta.entry_count());
        let mut b = Vec::with_capacity(self.meta.file_len() as usize);
        b.extend_from_slice(&self.meta.encode(entries_crc(&self.entries)));
        for o in &self.entries {
            b.extend_from_slice(&o.to_le_bytes());
        }
        b
    }

    /// The index file `b`, checked whole: header, its length, the entries' checksum, and
    /// entries that rise within the segment.
    pub fn decode(b: &[u8]) -> Result<Sealed, String> {
        let (meta, crc) = Meta::decode(b)?;
        if b.len() as u64 != meta.file_len() {
            return Err(format!(
                "index of {} bytes, its header says {}",
                b.len(),
                meta.file_len()
            ));
        }
        let raw = &b[HEADER_LEN..];
        if crc32c::crc32c(raw) != crc {
            return Err("index entries checksum mismatch".into());
        }
        let entries: Vec<u64> = raw
            .chunks_exact(ENTRY_LEN)
            .map(|e| u64::from_le_bytes(e.try_into().expect("8 bytes")))
            .collect();
        let rising = entries.windows(2).all(|w| w[0] < w[1]);
        let inside = entries
            .first()
            .is_none_or(|&o| o >= journal::HEADER_LEN as u64)
            && entries.last().is_none_or(|&o| o < meta.data_len);
        if !rising || !inside {
            return Err("index entries out of order or outside the segment".into());
        }
        Ok(Sealed { meta, entries })
    }

    /// The bytes of the segment holding the usage record of `slot`; `None` if the slot is not
    /// in this segment.
    pub fn lookup(&self, slot: u64) -> Option<Span> {
        let (k, nth) = self.meta.locate(slot)?;
        let end = self
            .entries
            .get(k + 1)
            .copied()
            .unwrap_or(self.meta.data_len);
        Some(Span {
            bytes: *self.entries.get(k)?..end,
            nth,
        })
    }
}

/// The `nth` usage record of `bytes` (records from an entry's offset on, as [`Sealed::lookup`]
/// spans them), leases skipped, each decoded and checked by [`journal::decode`]: its id and
/// usage. `Err` if a record before it, or it, is bad or cut short.
pub fn nth_usage(bytes: &[u8], nth: usize) -> Result<(u64, Usage<'_>), journal::Bad> {
    let (mut at, mut left) = (0, nth);
    loop {
        let (r, n) = journal::decode(bytes.get(at..).unwrap_or(&[]))?;
        match r {
            Record::Usage { id, usage } if left == 0 => return Ok((id, usage)),
            Record::Usage { .. } => left -= 1,
            Record::Lease(_) => {}
        }
        at += n;
    }
}

/// Builds a segment's entries as its records are written, or from its bytes.
///
/// [`Builder::note_batch`] walks frames by their length and kind alone (no checksum): it is
/// for records this process just encoded, in the order they are written; a batch may end
/// anywhere, even inside a record. [`Builder::from_segment`] is for bytes read back from disk.
#[derive(Debug, Clone)]
pub struct Builder {
    entries: Vec<u64>,
    records: u64,
    last_id: u64,
    lease: u64,
    /// Offset just past the last byte noted: the segment's length so far.
    end: u64,
    /// The start of a record that the last batch cut short: its first `head_len` bytes.
    head: [u8; MIN_RECORD],
    head_len: usize,
    /// Bytes of the current record still to come after its head.
    skip: u64,
    /// Keyed usage records noted.
    keyed: u32,
}

impl Builder {
    /// A builder for a segment that has its header and nothing else yet.
    pub fn new() -> Builder {
        Builder {
            entries: Vec::new(),
            records: 0,
            last_id: 0,
            lease: 0,
            end: journal::HEADER_LEN as u64,
            head: [0; MIN_RECORD],
            head_len: 0,
            skip: 0,
            keyed: 0,
        }
    }

    /// The builder of the records of `bytes` (a whole segment, header included; every record
    /// checked by [`journal::scan`]), and how they end. Only whole records are noted: the
    /// length covered is that of the records before a torn or corrupt one.
    pub fn from_segment(bytes: &[u8]) -> (Builder, journal::End) {
        let mut b = Builder::new();
        let end = journal::scan(bytes, |at, r| match r {
            Record::Usage { id, .. } => {
                b.note(at as u64, id, false, journal::is_keyed(&bytes[at..]))
            }
            Record::Lease(id) => b.note(at as u64, id, true, false),
        });
        b.end = match end {
            journal::End::Clean => bytes.len().max(journal::HEADER_LEN),
            journal::End::Torn { at } | journal::End::Corrupt { at } => at,
        } as u64;
        (b, end)
    }

    /// Note `bytes`, written at `file_offset` of the segment: the next bytes after the ones
    /// noted before (a record may span batches).
    pub fn note_batch(&mut self, bytes: &[u8], file_offset: u64) {
        debug_assert!(
            self.head_len == 0 && self.skip == 0 || file_offset == self.end,
            "a batch continues the record the last one cut short"
        );
        let mut rest = bytes;
        let mut at = file_offset;
        while !rest.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(rest.len() as u64);
                self.skip -= n;
                rest = &rest[n as usize..];
                at += n;
                continue;
            }
            let n = (MIN_RECORD - self.head_len).min(rest.len());
            self.head[self.head_len..self.head_len + n].copy_from_slice(&rest[..n]);
            self.head_len += n;
            rest = &rest[n..];
            at += n as u64;
            if self.head_len < MIN_RECORD {
                break; // the rest of the head comes with the next batch
            }
            let (len, id, lease) = journal::peek(&self.head);
            self.note(
                at - MIN_RECORD as u64,
                id,
                lease,
                journal::is_keyed(&self.head),
            );
            self.head_len = 0;
            self.skip = (len - MIN_RECORD) as u64;
        }
        self.end = file_offset + bytes.len() as u64;
    }

    /// The record at `at` has `id` and is a lease or a usage, keyed or not.
    fn note(&mut self, at: u64, id: u64, lease: bool, keyed: bool) {
        if lease {
            self.lease = id;
            return;
        }
        if keyed {
            self.keyed = self.keyed.saturating_add(1);
        }
        if self.records.is_multiple_of(u64::from(STRIDE)) {
            self.entries.push(at);
        }
        self.records += 1;
        self.last_id = id;
    }

    /// The builder of these records once moved behind `prefix` (the builder of what a new
    /// segment holds before them: whole lease records only), as a relinked segment is made.
    pub fn behind(mut self, prefix: Builder) -> Builder {
        debug_assert!(
            prefix.records == 0 && prefix.head_len == 0 && prefix.skip == 0,
            "a prefix of whole lease records"
        );
        let by = prefix.end - journal::HEADER_LEN as u64;
        for e in &mut self.entries {
            *e += by;
        }
        self.end += by;
        if self.lease == 0 {
            self.lease = prefix.lease; // the last lease record is still the last one
        }
        self
    }

    /// Usage records noted.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The entries so far.
    pub fn entries(&self) -> &[u64] {
        &self.entries
    }

    /// Offset just past the last byte noted.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// The index of segment `seq` of `key` once sealed, its first usage at `first_slot`, at
    /// `sealed_ms` (Unix ms).
    pub fn seal(self, key: Header, seq: u32, first_slot: u64, sealed_ms: u64) -> Sealed {
        debug_assert!(
            self.head_len == 0 && self.skip == 0,
            "sealed inside a record"
        );
        Sealed {
            meta: Meta {
                key,
                seq,
                first_slot,
                records: self.records,
                data_len: self.end,
                last_id: self.last_id,
                lease: self.lease,
                sealed_ms,
                keyed: self.keyed,
            },
            entries: self.entries,
        }
    }
}

impl Default for Builder {
    fn default() -> Builder {
        Builder::new()
    }
}

/// Write the index `s` into `dir` durably: under `NAME.idx.tmp` (a leftover of a crash
/// replaced), synced, renamed over any older index, the directory synced. Returns the index
/// file's length. Call it only once the segment itself is durable: an index must never point
/// past data a power loss can take.
pub fn write(dir: &Path, s: &Sealed) -> io::Result<u64> {
    let path = dir.join(index_name(&s.meta.key, s.meta.seq));
    let tmp = journal::tmp_path(&path);
    let _ = fs::remove_file(&tmp);
    let bytes = s.encode();
    let made = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&bytes).and_then(|_| f.sync_data()))
        .and_then(|_| fs::rename(&tmp, &path))
        .and_then(|_| journal::sync_dir(dir));
    if let Err(e) = made {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(bytes.len() as u64)
}

/// The file name of `path`, or "" if it has none (never a valid index name).
fn file_name(path: &Path) -> &str {
    path.file_name().and_then(|n| n.to_str()).unwrap_or("")
}

/// The header of the index at `path`, valid for a segment `seg_len` bytes long (one read of
/// [`HEADER_LEN`] bytes; the entries are not read). What start-up checks.
pub fn read_meta(path: &Path, seg_len: u64) -> Result<Meta, String> {
    let mut h = [0; HEADER_LEN];
    File::open(path)
        .and_then(|f| f.read_exact_at(&mut h, 0))
        .map_err(|e| e.to_string())?;
    let (meta, _) = Meta::decode(&h)?;
    meta.check(file_name(path), seg_len)?;
    Ok(meta)
}

/// The index at `path` read whole and checked whole (entries' checksum included), valid for
/// a segment `seg_len` bytes long.
pub fn load(path: &Path, seg_len: u64) -> Result<Sealed, String> {
    let name = file_name(path);
    // Its name first: a `*.idx.tmp` left by a crash is never read as an index.
    if journal::parse_name_as(name, ".idx").is_none() {
        return Err(format!("{name:?} is not an index file name"));
    }
    let bytes = fs::read(path).map_err(|e| e.to_string())?;
    let s = Sealed::decode(&bytes)?;
    s.meta.check(name, seg_len)?;
    Ok(s)
}

#[cfg(test)]
mod tests;
