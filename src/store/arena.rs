//! One append-only arena per worker ("stripe"): fixed-size records of three words, and a
//! table of interned strings (medications, and patient ids longer than 8 bytes).
//!
//! Protocol (one writer per stripe, any number of readers, no locks):
//! - Only the stripe's [`StripeWriter`] (not `Clone`, one per stripe) writes. It fills a record's
//!   words and any string it interned with `Relaxed` stores, *then* publishes the new record
//!   count with a `Release` store to `len`.
//! - A reader loads `len` with `Acquire` and reads only slots below it; everything the writer did
//!   before that `Release` (chunk allocation, string bytes, record words) is visible to it.
//! - Chunks are allocated once, through `OnceLock` (itself release/acquire), and never move or
//!   free while the store lives. Words are atomics, so even a reader that broke the protocol
//!   could see stale values but never undefined behaviour.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use super::ids;
use crate::json::scan::{MAX_STR, Patient, Usage};
use crate::time::Timestamp;

const WORDS_PER_RECORD: usize = 3;
/// Bytes of one record in the arena (`/metrics` reports `usaged_arena_bytes` with it).
pub const RECORD_BYTES: u64 = (WORDS_PER_RECORD * 8) as u64;
const RECORD_CHUNK_BITS: u32 = 16;
/// Records per chunk (1.5 MiB of words per chunk).
const RECORDS_PER_CHUNK: u64 = 1 << RECORD_CHUNK_BITS;
/// Record chunks per stripe: 2^30 usages per stripe at most.
const RECORD_CHUNKS: usize = 1 << 14;
const STRING_CHUNK_WORDS: u64 = 1 << 16;
/// String chunks per stripe: 2 GiB of strings per stripe at most.
const STRING_CHUNKS: usize = 1 << 12;
/// Strings stored in a record's patient word instead of the string table.
const INLINE_MAX: usize = 8;
/// Words an interned string of at most [`MAX_STR`] bytes takes: its length, then its bytes.
const MAX_STRING_WORDS: u64 = 1 + MAX_STR.div_ceil(8) as u64;
/// Slots of the writer's intern table when it first grows.
const INTERN_MIN_SLOTS: usize = 64;

/// A record is three words, `[ms, patient, meta]`: the instant in epoch milliseconds (`i64`),
/// the patient word (a number, up to 8 inline bytes, or a string-table word index; see
/// [`Tag`]), and the [`Meta`] word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record {
    ms: i64,
    patient: u64,
    meta: Meta,
}

impl Record {
    #[inline]
    fn encode(&self) -> [u64; WORDS_PER_RECORD] {
        [self.ms as u64, self.patient, self.meta.encode()]
    }

    #[inline]
    fn decode([ms, patient, meta]: [u64; WORDS_PER_RECORD]) -> Record {
        Record {
            ms: ms as i64,
            patient,
            meta: Meta::decode(meta),
        }
    }
}

/// How a record's patient word is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    /// The patient id is the number in the word.
    Num = 0,
    /// A patient string of [`Meta::inline_len`] bytes, stored little-endian in the word.
    Inline = 1,
    /// A longer patient string, interned at the word index in the word.
    Interned = 2,
}

/// The third word of a record. Layout, low bit first:
///
/// | bits     | field          | meaning                                               |
/// |----------|----------------|-------------------------------------------------------|
/// | `0..32`  | `med`          | word index of the interned medication                 |
/// | `32..48` | `offset_min`   | UTC offset in minutes (`i16`, as its `u16` bits)      |
/// | `48..50` | `tag`          | [`Tag`] of the patient word                           |
/// | `50..52` | zero           |                                                       |
/// | `52..56` | `inline_len`   | patient length for [`Tag::Inline`] (`0..=8`), else 0  |
/// | `56..64` | zero           |                                                       |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Meta {
    med: u32,
    offset_min: i16,
    tag: Tag,
    inline_len: u8,
}

impl Meta {
    const OFFSET_SHIFT: u32 = 32;
    const TAG_SHIFT: u32 = 48;
    const TAG_MASK: u64 = 0b11;
    const LEN_SHIFT: u32 = 52;

    /// The word; panics if `inline_len` is past [`INLINE_MAX`] (it would not fit its bits, and
    /// no patient word holds more).
    #[inline]
    fn encode(&self) -> u64 {
        assert!(
            self.inline_len as usize <= INLINE_MAX,
            "inline patient of at most {INLINE_MAX} bytes"
        );
        u64::from(self.med)
            | u64::from(self.offset_min as u16) << Self::OFFSET_SHIFT
            | (self.tag as u64) << Self::TAG_SHIFT
            | u64::from(self.inline_len) << Self::LEN_SHIFT
    }

    /// The fields of a word [`Meta::encode`] made.
    #[inline]
    fn decode(w: u64) -> Meta {
        Meta {
            med: w as u32,
            offset_min: (w >> Self::OFFSET_SHIFT) as u16 as i16,
            tag: match w >> Self::TAG_SHIFT & Self::TAG_MASK {
                0 => Tag::Num,
                1 => Tag::Inline,
                _ => Tag::Interned,
            },
            inline_len: (w >> Self::LEN_SHIFT) as u8,
        }
    }
}

/// `--cache` without the flag: RAM for recent usages, all workers together (about 20M
/// usages; fits a small machine beside its page cache).
pub const DEFAULT_CACHE: u64 = 512 << 20;

/// This stripe cannot take another usage: its arena is full or its journal failed (`503`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreFull;

type Chunk = OnceLock<Box<[AtomicU64]>>;

fn new_chunk(words: u64) -> Box<[AtomicU64]> {
    (0..words).map(|_| AtomicU64::new(0)).collect()
}

/// One stripe's shared half: what readers see.
struct Stripe {
    /// The first slot this stripe holds (earlier ones were lost or removed); fixed at creation.
    start: u64,
    /// Records published: slots `start..len` are complete. Written only by the stripe's writer.
    len: AtomicU64,
    records: Box<[Chunk]>,
    strings: Box<[Chunk]>,
}

impl Stripe {
    /// A stripe from slot `start`; a sealed one (an old epoch, `end` known) gets chunk tables
    /// only as long as its records need, so old epochs cost little.
    fn new(start: u64, end: Option<u64>) -> Self {
        let (records, strings) = match end {
            None => (RECORD_CHUNKS, STRING_CHUNKS),
            Some(end) => (
                (end.div_ceil(RECORDS_PER_CHUNK) as usize).min(RECORD_CHUNKS),
                // At most two interned strings per record, each at most `MAX_STRING_WORDS`.
                (((end - start) * 2 * MAX_STRING_WORDS).div_ceil(STRING_CHUNK_WORDS) as usize + 1)
                    .min(STRING_CHUNKS),
            ),
        };
        Stripe {
            start,
            len: AtomicU64::new(start),
            records: (0..records).map(|_| OnceLock::new()).collect(),
            strings: (0..strings).map(|_| OnceLock::new()).collect(),
        }
    }

    fn word(chunks: &[Chunk], chunk_words: u64, at: u64) -> u64 {
        let chunk = chunks[(at / chunk_words) as usize]
            .get()
            .expect("published data lies in an allocated chunk");
        chunk[(at % chunk_words) as usize].load(Ordering::Relaxed)
    }

    /// The string interned at word `at`, copied into `out`; its length.
    fn string(&self, at: u64, out: &mut [u8; MAX_STR]) -> usize {
        let len = Self::word(&self.strings, STRING_CHUNK_WORDS, at) as usize;
        for (i, piece) in out[..len].chunks_mut(8).enumerate() {
            let w = Self::word(&self.strings, STRING_CHUNK_WORDS, at + 1 + i as u64).to_le_bytes();
            piece.copy_from_slice(&w[..piece.len()]);
        }
        len
    }
}

/// Every stripe of the process; shared by all workers behind an `Arc`.
///
/// Ids come in epochs: a layout of `S` stripes that started at `base` hands out
/// `base + s + 1 + k·S`. A restart with another `--threads` starts a new epoch past the largest
/// id seen; earlier epochs stay readable. Epochs are fixed when the store is built.
pub struct Store {
    epochs: Box<[Epoch]>,
}

struct Epoch {
    base: u64,
    stripes: Box<[Stripe]>,
}

/// How an epoch is laid out: its base, the first slot of each of its stripes, and for a sealed
/// (old) epoch the end of each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochLayout {
    pub base: u64,
    pub starts: Vec<u64>,
    pub ends: Option<Vec<u64>>,
}
/// A stored usage, copied out of the arena (strings at most [`MAX_STR`] bytes, so no
/// allocation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredUsage {
    pub patient: StoredPatient,
    pub timestamp: Timestamp,
    medication: ([u8; MAX_STR], usize),
}

/// `patientId` in the type it came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredPatient {
    Num(u64),
    Str([u8; MAX_STR], usize),
}

impl StoredUsage {
    /// A usage as it was posted (or read back from the journal), copied.
    pub fn from_usage(u: &Usage<'_>) -> StoredUsage {
        let mut med = [0; MAX_STR];
        med[..u.medication.len()].copy_from_slice(u.medication);
        let patient = match u.patient {
            Patient::Num(n) => StoredPatient::Num(n),
            Patient::Str(s) => {
                let mut p = [0; MAX_STR];
                p[..s.len()].copy_from_slice(s);
                StoredPatient::Str(p, s.len())
            }
        };
        StoredUsage {
            patient,
            timestamp: u.timestamp,
            medication: (med, u.medication.len()),
        }
    }

    pub fn medication(&self) -> &[u8] {
        &self.medication.0[..self.medication.1]
    }
}

impl Store {
    /// A store of `stripes` empty stripes (one per worker).
    pub fn new(stripes: u32) -> Self {
        Store::with_epochs(&[EpochLayout {
            base: 0,
            starts: vec![0; stripes as usize],
            ends: None,
        }])
    }

    /// A store of empty epochs, in increasing `base`; the last is current.
    pub fn with_epochs(epochs: &[EpochLayout]) -> Self {
        assert!(
            !epochs.is_empty() && epochs.iter().all(|e| !e.starts.is_empty()),
            "at least one stripe"
        );
        assert!(
            epochs.windows(2).all(|w| w[0].base < w[1].base),
            "epochs in increasing base"
        );
        let epochs = epochs
            .iter()
            .map(|e| Epoch {
                base: e.base,
                stripes: e
                    .starts
                    .iter()
                    .enumerate()
                    .map(|(i, &s)| Stripe::new(s, e.ends.as_ref().map(|ends| ends[i])))
                    .collect(),
            })
            .collect();
        Store { epochs }
    }

    /// `(base, stripes)` of every epoch, oldest first.
    pub fn epochs(&self) -> Vec<(u64, u32)> {
        self.epochs
            .iter()
            .map(|e| (e.base, e.stripes.len() as u32))
            .collect()
    }

    /// The slots `start..end` that `stripe` of epoch `epoch` holds.
    pub fn stripe_slots(&self, epoch: usize, stripe: u32) -> std::ops::Range<u64> {
        let s = &self.epochs[epoch].stripes[stripe as usize];
        s.start..s.len.load(Ordering::Acquire)
    }

    /// Usages published so far, over all epochs and stripes.
    pub fn len(&self) -> u64 {
        self.epochs
            .iter()
            .flat_map(|e| e.stripes.iter())
            .map(|s| s.len.load(Ordering::Acquire) - s.start)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The usage with `id`, from whichever stripe holds it; `None` if it was never stored.
    pub fn get(&self, id: u64) -> Option<StoredUsage> {
        let e = self.epochs.iter().rev().find(|e| id > e.base)?;
        let (stripe, slot) = ids::locate(id - e.base, e.stripes.len() as u32)?;
        let s = &e.stripes[stripe as usize];
        if slot < s.start || slot >= s.len.load(Ordering::Acquire) {
            return None;
        }
        let base = slot * WORDS_PER_RECORD as u64;
        let per_chunk = RECORDS_PER_CHUNK * WORDS_PER_RECORD as u64;
        let r = Record::decode(std::array::from_fn(|i| {
            Stripe::word(&s.records, per_chunk, base + i as u64)
        }));
        let mut med = [0; MAX_STR];
        let med_len = s.string(u64::from(r.meta.med), &mut med);
        let patient = match r.meta.tag {
            Tag::Num => StoredPatient::Num(r.patient),
            Tag::Inline => {
                let mut p = [0; MAX_STR];
                let n = usize::from(r.meta.inline_len);
                p[..n].copy_from_slice(&r.patient.to_le_bytes()[..n]);
                StoredPatient::Str(p, n)
            }
            Tag::Interned => {
                let mut p = [0; MAX_STR];
                let n = s.string(r.patient, &mut p);
                StoredPatient::Str(p, n)
            }
        };
        Some(StoredUsage {
            patient,
            timestamp: Timestamp {
                ms: r.ms,
                offset_min: r.meta.offset_min,
            },
            medication: (med, med_len),
        })
    }

    /// The writer for `stripe`. Call once per stripe: two writers for one stripe would hand out
    /// the same ids (the worker setup in `server` makes exactly one each).
    pub fn writer(self: &std::sync::Arc<Self>, stripe: u32) -> StripeWriter {
        self.epoch_writer(self.epochs.len() - 1, stripe)
    }

    /// The writer for `stripe` of epoch `epoch` (recovery refills old epochs with these).
    /// Once per stripe, on an empty stripe: the writer's string table starts empty.
    pub fn epoch_writer(self: &std::sync::Arc<Self>, epoch: usize, stripe: u32) -> StripeWriter {
        let e = &self.epochs[epoch];
        assert!((stripe as usize) < e.stripes.len(), "stripe in range");
        let s = &e.stripes[stripe as usize];
        assert_eq!(s.len.load(Ordering::Acquire), s.start, "a fresh stripe");
        StripeWriter {
            store: std::sync::Arc::clone(self),
            epoch,
            base: e.base,
            stripes: e.stripes.len() as u32,
            batch: None,
            last_id: 0,
            accepting: true,
            stripe,
            next: s.start,
            string_words: 0,
            interned: Vec::new(),
            interned_count: 0,
        }
    }
}

/// The one writer of a stripe, owned by its worker thread.
pub struct StripeWriter {
    store: std::sync::Arc<Store>,
    epoch: usize,
    base: u64,
    stripes: u32,
    /// With a journal: the records of usages appended since the last hand-over to the journal
    /// thread (the batch being filled; see `committer.rs`).
    batch: Option<Vec<u8>>,
    /// The id of the last usage appended.
    last_id: u64,
    /// Whether new usages are taken (the worker turns it off while its journal cannot write).
    accepting: bool,
    stripe: u32,
    /// Records written; equals the stripe's published `len`.
    next: u64,
    /// Next free word of the string table.
    string_words: u64,
    /// Open-addressing intern table: `hash << 32 | (word index + 1)`, 0 when empty.
    interned: Vec<u64>,
    interned_count: usize,
}

impl StripeWriter {
    fn stripe(&self) -> &Stripe {
        &self.store.epochs[self.epoch].stripes[self.stripe as usize]
    }

    /// Encode every usage appended from now on into a batch for the journal.
    pub fn enable_journal(&mut self) {
        self.batch = Some(Vec::with_capacity(256 * 1024));
    }

    /// The records appended since the last call, and the last id among them; `batch` holds them
    /// (swapped in place by the caller, see [`super::committer::Committer::submit`]).
    pub fn batch_mut(&mut self) -> Option<(&mut Vec<u8>, u64)> {
        let last = self.last_id;
        self.batch.as_mut().map(|b| (b, last))
    }

    /// Take new usages (`true`) or refuse them with [`StoreFull`] (`false`).
    pub fn set_accepting(&mut self, yes: bool) {
        self.accepting = yes;
    }

    /// Usages appended by this writer so far (a counter that moves with every append).
    pub fn appended(&self) -> u64 {
        self.next
    }

    /// The id of the last usage appended (0: none yet).
    pub fn last_id(&self) -> u64 {
        self.last_id
    }

    /// Store `u` and return its id. The single place a usage enters the store: its journal
    /// record is encoded here too, into the batch the worker hands to its journal thread.
    pub fn append(&mut self, u: &Usage<'_>) -> Result<u64, StoreFull> {
        let slot = self.next;
        if !self.accepting || slot >= RECORDS_PER_CHUNK * self.stripe().records.len() as u64 {
            return Err(StoreFull);
        }
        // `push_string` keeps every word index below `u32::MAX`.
        let med = u32::try_from(self.intern(u.medication)?).map_err(|_| StoreFull)?;
        let (tag, inline_len, patient) = match u.patient {
            Patient::Num(n) => (Tag::Num, 0, n),
            Patient::Str(s) if s.len() <= INLINE_MAX => {
                let mut w = [0; 8];
                w[..s.len()].copy_from_slice(s);
                (Tag::Inline, s.len() as u8, u64::from_le_bytes(w))
            }
            Patient::Str(s) => (Tag::Interned, 0, self.intern(s)?),
        };
        let record = Record {
            ms: u.timestamp.ms,
            patient,
            meta: Meta {
                med,
                offset_min: u.timestamp.offset_min,
                tag,
                inline_len,
            },
        };
        let stripe = &self.store.epochs[self.epoch].stripes[self.stripe as usize];
        let chunk = stripe.records[(slot >> RECORD_CHUNK_BITS) as usize]
            .get_or_init(|| new_chunk(RECORDS_PER_CHUNK * WORDS_PER_RECORD as u64));
        let base = (slot % RECORDS_PER_CHUNK) as usize * WORDS_PER_RECORD;
        for (i, w) in record.encode().into_iter().enumerate() {
            chunk[base + i].store(w, Ordering::Relaxed);
        }
        self.next = slot + 1;
        // Publish: everything above happens-before any reader's Acquire load that sees it.
        stripe.len.store(self.next, Ordering::Release);
        let id = self.base + ids::id_of(self.stripe, slot, self.stripes);
        if let Some(b) = &mut self.batch {
            super::journal::encode(b, id, u);
        }
        self.last_id = id;
        Ok(id)
    }

    /// The word index of `s` in the string table, adding it the first time it is seen.
    fn intern(&mut self, s: &[u8]) -> Result<u64, StoreFull> {
        let hash = hash(s);
        if self.interned_count * 2 >= self.interned.len() {
            self.grow_interned();
        }
        let mask = self.interned.len() - 1;
        let mut i = hash as usize & mask;
        loop {
            let e = self.interned[i];
            if e == 0 {
                break;
            }
            if e >> 32 == u64::from(hash) {
                let at = (e & 0xffff_ffff) - 1;
                let mut buf = [0; MAX_STR];
                let n = self.stripe().string(at, &mut buf);
                if &buf[..n] == s {
                    return Ok(at);
                }
            }
            i = (i + 1) & mask;
        }
        let at = self.push_string(s)?;
        self.interned[i] = u64::from(hash) << 32 | (at + 1);
        self.interned_count += 1;
        Ok(at)
    }

    #[cold]
    fn grow_interned(&mut self) {
        let size = (self.interned.len() * 2).max(INTERN_MIN_SLOTS);
        let old = std::mem::replace(&mut self.interned, vec![0; size]);
        let mask = self.interned.len() - 1;
        for e in old.into_iter().filter(|&e| e != 0) {
            let mut i = (e >> 32) as usize & mask;
            while self.interned[i] != 0 {
                i = (i + 1) & mask;
            }
            self.interned[i] = e;
        }
    }

    /// Append `s` (at most [`MAX_STR`] bytes) to the string table; its word index.
    fn push_string(&mut self, s: &[u8]) -> Result<u64, StoreFull> {
        let words = 1 + s.len().div_ceil(8) as u64;
        let mut at = self.string_words;
        if at % STRING_CHUNK_WORDS + words > STRING_CHUNK_WORDS {
            at = at.next_multiple_of(STRING_CHUNK_WORDS);
        }
        let table = self.stripe().strings.len() as u64;
        if at + words > STRING_CHUNK_WORDS * table || at + words >= u32::MAX as u64 {
            return Err(StoreFull);
        }
        let chunk = self.stripe().strings[(at / STRING_CHUNK_WORDS) as usize]
            .get_or_init(|| new_chunk(STRING_CHUNK_WORDS));
        let base = (at % STRING_CHUNK_WORDS) as usize;
        chunk[base].store(s.len() as u64, Ordering::Relaxed);
        for (i, piece) in s.chunks(8).enumerate() {
            let mut w = [0; 8];
            w[..piece.len()].copy_from_slice(piece);
            chunk[base + 1 + i].store(u64::from_le_bytes(w), Ordering::Relaxed);
        }
        self.string_words = at + words;
        Ok(at)
    }
}

/// A small multiplicative hash (FxHash-like); the table is private to one writer, so no
/// flooding concern beyond longer probes.
fn hash(s: &[u8]) -> u32 {
    let mut h: u64 = s.len() as u64;
    for piece in s.chunks(8) {
        let mut w = [0; 8];
        w[..piece.len()].copy_from_slice(piece);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    (h >> 32) as u32
}

#[cfg(test)]
mod tests;

// STUB(srv): replaced by helper "ring"'s real ring at merge.
/// Where the usage of an id is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Hot(StoredUsage),
    Cold {
        key: super::journal::Header,
        slot: u64,
    },
    Expired,
    Missing,
}

impl Store {
    /// STUB(srv).
    pub fn lookup(&self, id: u64) -> Lookup {
        match self.get(id) {
            Some(u) => Lookup::Hot(u),
            None => Lookup::Missing,
        }
    }
}
