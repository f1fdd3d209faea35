//! A stripe's ring of chunk frames (its [`Geometry`]), the record words inside them, and how a
//! reader on another thread looks a slot up while the stripe's writer recycles frames under it.
//!
//! A chunk is `2^chunk_bits` consecutive slots (chunk `c` holds `c << chunk_bits ..`); chunk `c`
//! lives in frame `c % frames`. A frame's words are allocated on first use and never freed, only
//! reused. A string a record uses lives in a pool block owned by the record's chunk
//! (see `pool.rs`), so evicting a chunk frees exactly its blocks.
//!
//! # Reader protocol
//!
//! Shared per stripe: `len` (next slot), each frame's `base` (first slot of the chunk it holds,
//! [`EMPTY`] before use and after an eviction), the record and block words (all `AtomicU64`), and
//! the stripe's [`StripeLink`] (`sealed_end`, `expired_below`, `want_seal`).
//!
//! - Writer evicting chunk *c* from frame *f*: **W1** `base.store(EMPTY, Relaxed)`; **W2**
//!   `fence(Release)`; **W3** the chunk's blocks go to the free list. Reusing *f* for the chunk
//!   at slot *s'*: **W4** `base.store(s', Relaxed)`; **W5** record and string words written
//!   (`Relaxed`); **W6** `len.store(slot + 1, Release)` per append. Every overwrite of a word a
//!   reader may hold is a W5 after the W2 of the chunk that owned it.
//! - Reader of `slot`: **R1** `len.load(Acquire)`; `slot >= len` → `Missing`; **R2** `slot <
//!   expired_below.load(Acquire)` → `Expired`; **R3** `slot < start` → `Cold`; **R4** `b1 =
//!   base.load(Acquire)`, `b1 != chunk_first(slot)` → `Cold`; **R5** copy the 3 words and their
//!   strings out (`Relaxed`), every index and length bounds-checked (out of range → `Cold`, never
//!   a panic); **R6** `fence(Acquire)`; **R7** `base.load(Relaxed) != b1` → `Cold`; else `Hot`.
//!
//! Why it holds: R1 acquires the W6 of that slot, so R5 sees its words or later ones. If any R5
//! load saw a later (W5) value, that value was written after the W2 of the eviction that freed
//! the word, so W2 synchronizes with R6 (fence to fence) and R7 sees W1's `EMPTY` or a later
//! base: the copy is discarded. Bases only grow per frame (`s' = s + frames << chunk_bits`) and
//! `EMPTY` is no chunk's first slot, so there is no ABA. A missing fence is not observable on
//! x86 (TSO), which is why the argument is written here; dropping R7 makes the stress test
//! `readers_never_see_a_recycled_slot` fail.

use std::sync::atomic::{AtomicU64, Ordering, fence};
use std::sync::{Arc, OnceLock};

use super::pool::{MAX_STRING_WORDS, Pool};
use super::{StoredPatient, StoredUsage};
use crate::json::scan::MAX_STR;
use crate::store::link::StripeLink;
use crate::time::Timestamp;

pub(super) const WORDS_PER_RECORD: usize = 3;
/// Strings stored in a record's patient word instead of the pool.
pub(super) const INLINE_MAX: usize = 8;
/// A frame's `base` when it holds no chunk (no chunk starts at `u64::MAX`).
pub(super) const EMPTY: u64 = u64::MAX;

/// A record is three words, `[ms, patient, meta]`: the instant in epoch milliseconds (`i64`),
/// the patient word (a number, up to 8 inline bytes, or a pool string ref; see [`Tag`]), and
/// the [`Meta`] word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Record {
    pub ms: i64,
    pub patient: u64,
    pub meta: Meta,
}

impl Record {
    #[inline]
    pub fn encode(&self) -> [u64; WORDS_PER_RECORD] {
        [self.ms as u64, self.patient, self.meta.encode()]
    }

    #[inline]
    pub fn decode([ms, patient, meta]: [u64; WORDS_PER_RECORD]) -> Record {
        Record {
            ms: ms as i64,
            patient,
            meta: Meta::decode(meta),
        }
    }
}

/// How a record's patient word is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tag {
    /// The patient id is the number in the word.
    Num = 0,
    /// A patient string of [`Meta::inline_len`] bytes, stored little-endian in the word.
    Inline = 1,
    /// A longer patient string, in the pool at the string ref in the word.
    Interned = 2,
}

/// The third word of a record. Layout, low bit first:
///
/// | bits     | field          | meaning                                               |
/// |----------|----------------|-------------------------------------------------------|
/// | `0..32`  | `med`          | pool string ref of the medication                     |
/// | `32..48` | `offset_min`   | UTC offset in minutes (`i16`, as its `u16` bits)      |
/// | `48..50` | `tag`          | [`Tag`] of the patient word                           |
/// | `50..52` | zero           |                                                       |
/// | `52..56` | `inline_len`   | patient length for [`Tag::Inline`] (`0..=8`), else 0  |
/// | `56..64` | zero           |                                                       |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Meta {
    pub med: u32,
    pub offset_min: i16,
    pub tag: Tag,
    pub inline_len: u8,
}

impl Meta {
    const OFFSET_SHIFT: u32 = 32;
    const TAG_SHIFT: u32 = 48;
    const TAG_MASK: u64 = 0b11;
    const LEN_SHIFT: u32 = 52;

    /// The word; panics if `inline_len` is past [`INLINE_MAX`] (it would not fit its bits, and
    /// no patient word holds more).
    #[inline]
    pub fn encode(&self) -> u64 {
        assert!(
            self.inline_len as usize <= INLINE_MAX,
            "inline patient of at most {INLINE_MAX} bytes"
        );
        u64::from(self.med)
            | u64::from(self.offset_min as u16) << Self::OFFSET_SHIFT
            | (self.tag as u64) << Self::TAG_SHIFT
            | u64::from(self.inline_len) << Self::LEN_SHIFT
    }

    /// The fields of a word [`Meta::encode`] made (any word decodes; a reader bounds-checks
    /// what it then uses).
    #[inline]
    pub fn decode(w: u64) -> Meta {
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

/// The shape of each current stripe's cache. Runtime, so tests can shrink it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// A chunk is `2^chunk_bits` records.
    pub chunk_bits: u32,
    /// Chunk frames in the ring.
    pub frames: usize,
    /// String blocks in the pool.
    pub blocks: usize,
    /// A block is `2^block_bits` words.
    pub block_bits: u32,
}

impl Geometry {
    /// 2^14 records a chunk: 384 KiB of words.
    pub const CHUNK_BITS: u32 = 14;
    /// 4096 words a block: 32 KiB.
    pub const BLOCK_BITS: u32 = 12;
    /// No frames, no blocks: every slot cold (old epochs).
    pub const NONE: Geometry = Geometry {
        chunk_bits: Geometry::CHUNK_BITS,
        frames: 0,
        blocks: 0,
        block_bits: Geometry::BLOCK_BITS,
    };

    /// The geometry for `share` bytes: 7/8 for frames, 1/8 for blocks, at least 8 of each
    /// (so within `share` from 4 MiB up, the smallest share `--cache` allows a worker), at most
    /// 2^20 blocks (string refs are 32 bits). Chunks are 2^14 records and blocks 4096 words
    /// unless half the pool cannot hold one chunk's strings, worst case (two distinct strings
    /// of [`MAX_STR`] bytes a record; shares under 36 MiB): then both shrink, chunks to fit and
    /// blocks with them (a quarter of a chunk's records in words, as by default), so the chunk
    /// being written can always get blocks by evicting older chunks, and a chunk of few strings
    /// still takes one block only.
    pub fn for_share(share: u64) -> Geometry {
        let pool_words = share / 8 / 8;
        let mut chunk_bits = Geometry::CHUNK_BITS;
        while chunk_bits > 6 && (1u64 << chunk_bits) * 2 * MAX_STRING_WORDS > pool_words / 2 {
            chunk_bits -= 1;
        }
        let block_bits = Geometry::BLOCK_BITS + chunk_bits - Geometry::CHUNK_BITS;
        let chunk = Geometry::bytes_of(chunk_bits, WORDS_PER_RECORD as u64);
        Geometry {
            chunk_bits,
            frames: (share / 8 * 7 / chunk).max(8) as usize,
            blocks: (pool_words >> block_bits).clamp(8, 1 << 20) as usize,
            block_bits,
        }
    }

    fn bytes_of(bits: u32, words_each: u64) -> u64 {
        (1u64 << bits) * words_each * 8
    }

    /// Bytes the ring and the pool take once every frame and block is in use.
    pub fn bytes(&self) -> u64 {
        self.frames as u64 * Geometry::bytes_of(self.chunk_bits, WORDS_PER_RECORD as u64)
            + self.blocks as u64 * Geometry::bytes_of(self.block_bits, 1)
    }

    /// Usages the ring holds at once.
    pub fn records(&self) -> u64 {
        (self.frames as u64) << self.chunk_bits
    }

    /// Panics on a geometry whose string refs would not fit 32 bits or whose block cannot
    /// hold the longest string.
    pub(super) fn check(&self) {
        assert!(self.chunk_bits <= 30, "chunks of at most 2^30 records");
        assert!(
            1u64 << self.block_bits >= MAX_STRING_WORDS,
            "a block holds the longest string"
        );
        assert!(
            (self.blocks as u64) << self.block_bits <= 1 << 32,
            "string refs fit 32 bits"
        );
    }
}

/// One frame of the ring: the chunk it holds and that chunk's record words.
pub(super) struct Frame {
    pub base: AtomicU64,
    pub words: OnceLock<Box<[AtomicU64]>>,
}

/// Where a lookup of one slot ended (the stripe-level half of [`super::Lookup`]).
pub(super) enum Found {
    Hot(StoredUsage),
    Cold,
    Expired,
    Missing,
}

/// One stripe's shared half: what readers see.
pub(super) struct Stripe {
    /// Slots below this are not held by this store's RAM (earlier runs, or an old epoch);
    /// fixed at creation.
    pub start: u64,
    /// Records published: slots `start..len` were appended. Written only by the stripe's writer.
    pub len: AtomicU64,
    /// The first slot still resident (`start` until the first eviction); writer-stored,
    /// `Relaxed`, for `/metrics` only.
    pub resident_from: AtomicU64,
    pub link: Arc<StripeLink>,
    pub chunk_bits: u32,
    pub frames: Box<[Frame]>,
    pub pool: Pool,
}

impl Stripe {
    /// The first slot of the chunk that holds `slot`.
    #[inline]
    pub fn chunk_first(&self, slot: u64) -> u64 {
        slot >> self.chunk_bits << self.chunk_bits
    }

    /// The frame chunk `chunk` lives in; `None` for a stripe without frames.
    #[inline]
    pub fn frame_of_chunk(&self, chunk: u64) -> Option<&Frame> {
        let n = self.frames.len() as u64;
        (n > 0).then(|| &self.frames[(chunk % n) as usize])
    }

    /// Slots the ring holds at once.
    pub fn ring_records(&self) -> u64 {
        (self.frames.len() as u64) << self.chunk_bits
    }

    /// Usages resident now (approximate while the writer runs).
    pub fn resident(&self) -> u64 {
        if self.frames.is_empty() {
            return 0;
        }
        let len = self.len.load(Ordering::Acquire);
        len.saturating_sub(self.resident_from.load(Ordering::Relaxed))
    }

    /// The reader protocol (module doc), R1 to R7.
    pub fn lookup(&self, slot: u64) -> Found {
        if slot >= self.len.load(Ordering::Acquire) {
            return Found::Missing; // R1
        }
        if slot < self.link.expired_below() {
            return Found::Expired; // R2
        }
        if slot < self.start {
            return Found::Cold; // R3
        }
        let Some(frame) = self.frame_of_chunk(slot >> self.chunk_bits) else {
            return Found::Cold;
        };
        let b1 = frame.base.load(Ordering::Acquire); // R4
        if b1 != self.chunk_first(slot) {
            return Found::Cold;
        }
        let copied = self.copy(frame, slot); // R5
        fence(Ordering::Acquire); // R6
        if frame.base.load(Ordering::Relaxed) != b1 {
            return Found::Cold; // R7
        }
        copied.map_or(Found::Cold, Found::Hot)
    }

    /// R5: the record at `slot` of `frame` and its strings, copied; `None` on any bound broken
    /// (only a recycled frame gives one, and R7 then discards the copy anyway).
    fn copy(&self, frame: &Frame, slot: u64) -> Option<StoredUsage> {
        let words = frame.words.get()?;
        let at = (slot - self.chunk_first(slot)) as usize * WORDS_PER_RECORD;
        let w = words.get(at..at + WORDS_PER_RECORD)?;
        let r = Record::decode(std::array::from_fn(|i| w[i].load(Ordering::Relaxed)));
        let mut med = [0; MAX_STR];
        let med_len = self.pool.string(u64::from(r.meta.med), &mut med)?;
        let patient = match r.meta.tag {
            Tag::Num => StoredPatient::Num(r.patient),
            Tag::Inline => {
                let n = usize::from(r.meta.inline_len);
                let bytes = r.patient.to_le_bytes();
                let src = bytes.get(..n)?; // at most 8: checked before `p` is indexed
                let mut p = [0; MAX_STR];
                p[..n].copy_from_slice(src);
                StoredPatient::Str(p, n)
            }
            Tag::Interned => {
                let mut p = [0; MAX_STR];
                let n = self.pool.string(r.patient, &mut p)?;
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
}
