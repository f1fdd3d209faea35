//! One arena per worker ("stripe"), bounded by `--cache`: a ring of fixed chunks of records
//! (three words each) and a pool of string blocks (medications, and patient ids longer than 8
//! bytes) owned per chunk. A chunk is recycled (evicted) when the ring wraps or the pool runs
//! out, and only once its slots are in a sealed segment (with a journal) — without one, evicted
//! ids answer `410` (the cache is the store). Old epochs hold nothing in RAM: all their slots
//! are cold. Frames and blocks are allocated on first use, never freed, only reused, so the
//! bytes allocated never pass the budget.
//!
//! One writer per stripe ([`StripeWriter`], not `Clone`), any number of readers, no locks and
//! no `unsafe`; the reader protocol is written in `arena/ring.rs`. [`Store::lookup`] tells a
//! reader where an id is: in RAM ([`Lookup::Hot`]), in a segment ([`Lookup::Cold`]), gone
//! ([`Lookup::Expired`]) or never stored ([`Lookup::Missing`]).

use std::sync::atomic::{AtomicU64, Ordering, fence};
use std::sync::{Arc, OnceLock};

use super::ids;
use super::journal::Header;
use super::link::StripeLink;
use crate::json::scan::{MAX_STR, Patient, Usage};
use crate::time::Timestamp;

mod pool;
mod ring;

use pool::{Pool, Strings};
pub use ring::Geometry;
use ring::{EMPTY, Found, Frame, INLINE_MAX, Meta, Record, Stripe, Tag, WORDS_PER_RECORD};

/// `--cache` when none is given: 512 MiB.
pub const DEFAULT_CACHE: u64 = 512 << 20;

/// The smallest `--cache` share of one worker: below it the ring's fixed minimum (8 frames,
/// 8 blocks) would not fit the budget.
pub const MIN_CACHE_PER_WORKER: u64 = 4 << 20;

/// This stripe cannot take another usage: its cache cannot recycle a chunk (not sealed yet),
/// its journal failed, or ids ran out (`503`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreFull;

/// Where the usage with an id is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// In RAM, copied out.
    Hot(StoredUsage),
    /// Stored, but not in RAM: slot `slot` of the stripe `key` names, in its segments.
    Cold { key: Header, slot: u64 },
    /// Removed by retention, or evicted from a store without a journal: `410`.
    Expired,
    /// Never stored (or not yet published): `404`.
    Missing,
}

/// Every stripe of the process; shared by all workers behind an `Arc`.
///
/// Ids come in epochs: a layout of `S` stripes that started at `base` hands out
/// `base + s + 1 + k·S`. A restart with another `--threads` starts a new epoch past the largest
/// id seen; earlier epochs stay readable (cold). Epochs are fixed when the store is built.
///
/// In a cluster ([`ids::Layout`]) an epoch has the stripes of every node, but only this node's
/// current stripes get RAM and writers; another node's stripe is empty (its ids: `Missing`).
pub struct Store {
    epochs: Box<[Epoch]>,
    /// Which stripes of the current epoch this process writes.
    layout: ids::Layout,
    /// Whether a journal seals what is appended (eviction waits for `sealed_end`).
    journaled: bool,
    /// `--cache`.
    budget: u64,
    /// Bytes of frames and blocks allocated so far.
    allocated: AtomicU64,
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
    /// A store of `stripes` empty stripes (one per worker), without a journal, with the
    /// default cache.
    pub fn new(stripes: u32) -> Self {
        let layout = EpochLayout {
            base: 0,
            starts: vec![0; stripes as usize],
            ends: None,
        };
        Store::with_cache(&[layout], DEFAULT_CACHE, false)
    }

    /// A journaled store of empty epochs, in increasing `base`, with the default cache; the
    /// last is current.
    pub fn with_epochs(epochs: &[EpochLayout]) -> Self {
        Store::with_cache(epochs, DEFAULT_CACHE, true)
    }

    /// A store of empty epochs whose current stripes share `cache_bytes` evenly
    /// ([`Geometry::for_share`]); old epochs get no RAM.
    pub fn with_cache(epochs: &[EpochLayout], cache_bytes: u64, journaled: bool) -> Self {
        let current = epochs.last().map_or(1, |e| e.starts.len().max(1)) as u32;
        Store::for_node(epochs, cache_bytes, journaled, ids::Layout::single(current))
    }

    /// [`Store::with_cache`] for one node of a cluster: the current epoch has
    /// `layout.stripes()` stripes, and only the `layout.workers` this node owns share
    /// `cache_bytes` (the others hold nothing and are never written).
    pub fn for_node(
        epochs: &[EpochLayout],
        cache_bytes: u64,
        journaled: bool,
        layout: ids::Layout,
    ) -> Self {
        let g = Geometry::for_share(cache_bytes / u64::from(layout.workers.max(1)));
        let mut store = Store::build(epochs, g, journaled, layout);
        store.budget = cache_bytes;
        store
    }

    /// A store whose current stripes each get geometry `g` (tests shrink it); the budget
    /// reported is what `g` takes for every current stripe.
    pub fn with_geometry(epochs: &[EpochLayout], g: Geometry, journaled: bool) -> Self {
        let current = epochs.last().map_or(1, |e| e.starts.len().max(1)) as u32;
        Store::build(epochs, g, journaled, ids::Layout::single(current))
    }

    fn build(epochs: &[EpochLayout], g: Geometry, journaled: bool, layout: ids::Layout) -> Self {
        assert!(
            !epochs.is_empty() && epochs.iter().all(|e| !e.starts.is_empty()),
            "at least one stripe"
        );
        assert!(
            epochs.windows(2).all(|w| w[0].base < w[1].base),
            "epochs in increasing base"
        );
        g.check();
        let last = epochs.len() - 1;
        assert_eq!(
            epochs[last].starts.len(),
            layout.stripes() as usize,
            "the current epoch has the layout's stripes"
        );
        let geometry = |e: usize, s: usize| {
            if e == last && layout.owns(s as u32) {
                g
            } else {
                Geometry::NONE
            }
        };
        let epochs: Box<[Epoch]> = epochs
            .iter()
            .enumerate()
            .map(|(i, e)| Epoch {
                base: e.base,
                stripes: e
                    .starts
                    .iter()
                    .enumerate()
                    .map(|(s, &start)| new_stripe(start, geometry(i, s)))
                    .collect(),
            })
            .collect();
        let budget = g.bytes() * u64::from(layout.workers);
        Store {
            epochs,
            layout,
            journaled,
            budget,
            allocated: AtomicU64::new(0),
        }
    }

    /// `(base, stripes)` of every epoch, oldest first.
    pub fn epochs(&self) -> Vec<(u64, u32)> {
        self.epochs
            .iter()
            .map(|e| (e.base, e.stripes.len() as u32))
            .collect()
    }

    /// Which stripes of the current epoch this process writes.
    pub fn layout(&self) -> ids::Layout {
        self.layout
    }

    /// The slots `start..end` that `stripe` of epoch `epoch` took since the store was built.
    pub fn stripe_slots(&self, epoch: usize, stripe: u32) -> std::ops::Range<u64> {
        let s = &self.epochs[epoch].stripes[stripe as usize];
        s.start..s.len.load(Ordering::Acquire)
    }

    /// The link `stripe` of epoch `epoch` shares with its journal thread (panics on a stripe
    /// the store does not have).
    pub fn link(&self, epoch: usize, stripe: u32) -> Arc<StripeLink> {
        Arc::clone(&self.epochs[epoch].stripes[stripe as usize].link)
    }

    /// Usages published since the store was built, over all epochs and stripes.
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

    /// Bytes allocated for frames and string blocks (never more than
    /// [`Store::cache_budget`] from a 4 MiB share up).
    pub fn cache_bytes(&self) -> u64 {
        self.allocated.load(Ordering::Relaxed)
    }

    /// `--cache`: what the frames and blocks may take.
    pub fn cache_budget(&self) -> u64 {
        self.budget
    }

    /// Usages in RAM now.
    pub fn cache_usages(&self) -> u64 {
        self.epochs
            .iter()
            .flat_map(|e| e.stripes.iter())
            .map(Stripe::resident)
            .sum()
    }

    /// Where the usage with `id` is; any `id` gives an answer, never a panic.
    pub fn lookup(&self, id: u64) -> Lookup {
        let Some(e) = self.epochs.iter().rev().find(|e| id > e.base) else {
            return Lookup::Missing;
        };
        let stripes = e.stripes.len() as u32;
        let Some((stripe, slot)) = ids::locate(id - e.base, stripes) else {
            return Lookup::Missing;
        };
        match e.stripes[stripe as usize].lookup(slot) {
            Found::Hot(u) => Lookup::Hot(u),
            Found::Cold => Lookup::Cold {
                key: Header {
                    stripes,
                    stripe,
                    base: e.base,
                },
                slot,
            },
            Found::Expired => Lookup::Expired,
            Found::Missing => Lookup::Missing,
        }
    }

    /// The usage with `id` if it is in RAM.
    pub fn get(&self, id: u64) -> Option<StoredUsage> {
        match self.lookup(id) {
            Lookup::Hot(u) => Some(u),
            _ => None,
        }
    }

    /// The writer of worker `w`: of its stripe ([`ids::Layout::global_stripe`]) in the
    /// current epoch. Once per worker, like [`Store::writer`].
    pub fn worker_writer(self: &Arc<Self>, w: u32) -> StripeWriter {
        self.writer(self.layout.global_stripe(w))
    }

    /// The writer for `stripe` (global). Call once per stripe: two writers for one stripe would
    /// hand out the same ids (the worker setup in `server` makes exactly one each).
    pub fn writer(self: &Arc<Self>, stripe: u32) -> StripeWriter {
        self.epoch_writer(self.epochs.len() - 1, stripe)
    }

    /// The writer for `stripe` of epoch `epoch` (recovery refills with these; an old epoch's
    /// writer only moves its `len`: nothing of it is held). Once per stripe, on an empty stripe.
    pub fn epoch_writer(self: &Arc<Self>, epoch: usize, stripe: u32) -> StripeWriter {
        let e = &self.epochs[epoch];
        assert!((stripe as usize) < e.stripes.len(), "stripe in range");
        let s = &e.stripes[stripe as usize];
        assert_eq!(s.len.load(Ordering::Acquire), s.start, "a fresh stripe");
        StripeWriter {
            store: Arc::clone(self),
            epoch,
            base: e.base,
            stripes: e.stripes.len() as u32,
            batch: None,
            last_id: 0,
            accepting: true,
            stripe,
            next: s.start,
            chunk: None,
            oldest: 0,
            quarter: (s.ring_records() / 4).max(1),
            checked_taken: 0,
            strings: Strings::new(s.frames.len(), s.pool.blocks.len()),
        }
    }
}

/// A stripe from slot `start` with geometry `g` (nothing allocated yet).
fn new_stripe(start: u64, g: Geometry) -> Stripe {
    Stripe {
        start,
        len: AtomicU64::new(start),
        resident_from: AtomicU64::new(start),
        link: Arc::new(StripeLink::new(start, 0)),
        chunk_bits: g.chunk_bits,
        frames: (0..g.frames)
            .map(|_| Frame {
                base: AtomicU64::new(EMPTY),
                words: OnceLock::new(),
            })
            .collect(),
        pool: Pool::new(g.blocks, g.block_bits),
    }
}

/// The one writer of a stripe, owned by its worker thread.
pub struct StripeWriter {
    store: Arc<Store>,
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
    /// The chunk being written (`None` before the first append); chunks `oldest..=chunk` are
    /// resident.
    chunk: Option<u64>,
    oldest: u64,
    /// A quarter of the ring: unsealed slots past it raise `want_seal`.
    quarter: u64,
    /// `strings.taken` when the pool's share of unsealed chunks was last checked.
    checked_taken: u64,
    strings: Strings,
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
        self.append_keyed(u, None)
    }

    /// How far apart this writer's ids are (its epoch's stripes).
    pub fn stride(&self) -> u32 {
        self.stripes
    }

    /// The id the next [`StripeWriter::append`] gives (if it stores).
    pub fn next_id(&self) -> u64 {
        self.base + ids::id_of(self.stripe, self.next, self.stripes)
    }

    /// [`StripeWriter::append`] of a usage posted with an `Idempotency-Key`: `mark` goes into
    /// its journal record (in the same record, so both are durable or neither is).
    pub fn append_keyed(
        &mut self,
        u: &Usage<'_>,
        mark: Option<&super::journal::KeyMark>,
    ) -> Result<u64, StoreFull> {
        let slot = self.next;
        let id = self.base + ids::id_of(self.stripe, slot, self.stripes);
        if !self.accepting || id >= ids::MAX_ID {
            return Err(StoreFull);
        }
        if !self.stripe().frames.is_empty() {
            self.put(slot, u)?;
        }
        self.next = slot + 1;
        // Publish (W6): everything above happens-before any reader's Acquire load that sees it.
        self.stripe().len.store(self.next, Ordering::Release);
        if self.store.journaled && self.unsealed_too_large() {
            self.stripe().link.want_seal.store(true, Ordering::Relaxed);
        }
        if let Some(b) = &mut self.batch {
            super::journal::encode_keyed(b, id, u, mark);
        }
        self.last_id = id;
        Ok(id)
    }

    /// Whether the unsealed part of the stripe holds a quarter of its ring, or (checked when a
    /// block was taken since the last check) its chunks own a quarter of the pool: then the
    /// journal thread is asked to seal, so eviction never waits for the open segment.
    fn unsealed_too_large(&mut self) -> bool {
        let stripe = &self.store.epochs[self.epoch].stripes[self.stripe as usize];
        let sealed = stripe.link.sealed_end.load(Ordering::Relaxed);
        if self.next.saturating_sub(sealed) >= self.quarter {
            return true;
        }
        if self.strings.taken == self.checked_taken {
            return false;
        }
        self.checked_taken = self.strings.taken;
        let Some(current) = self.chunk else {
            return false;
        };
        let frames = stripe.frames.len() as u64;
        let first = self.oldest.max(sealed >> stripe.chunk_bits);
        let owned: u64 = (first..=current)
            .map(|c| self.strings.owned_by((c % frames) as usize))
            .sum();
        owned * 4 >= stripe.pool.blocks.len() as u64
    }

    /// Write `u`'s record (W4, W5) at `slot`, entering its chunk and interning its strings.
    fn put(&mut self, slot: u64, u: &Usage<'_>) -> Result<(), StoreFull> {
        let chunk = slot >> self.stripe().chunk_bits;
        if self.chunk != Some(chunk) {
            self.enter(chunk)?;
        }
        // String refs stay below 2^32 (`Geometry::check`).
        let med = self.intern(u.medication)? as u32;
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
        let stripe = self.stripe();
        let frame = stripe.frame_of_chunk(chunk).expect("a stripe with frames");
        let words = frame.words.get().expect("entered chunks are allocated");
        let at = (slot - stripe.chunk_first(slot)) as usize * WORDS_PER_RECORD;
        for (i, w) in record.encode().into_iter().enumerate() {
            words[at + i].store(w, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Make `chunk` (the one after the current) resident: evict what its frame holds, then
    /// W4. On `StoreFull` nothing changed but evictions already done.
    fn enter(&mut self, chunk: u64) -> Result<(), StoreFull> {
        let frames = self.stripe().frames.len() as u64;
        if self.chunk.is_none() {
            self.oldest = chunk;
        }
        while chunk - self.oldest >= frames {
            self.evict_oldest()?;
        }
        let f = (chunk % frames) as usize;
        let stripe = &self.store.epochs[self.epoch].stripes[self.stripe as usize];
        let frame = &stripe.frames[f];
        frame.words.get_or_init(|| {
            let words = (1u64 << stripe.chunk_bits) * WORDS_PER_RECORD as u64;
            self.store.allocated.fetch_add(words * 8, Ordering::Relaxed);
            (0..words).map(|_| AtomicU64::new(0)).collect()
        });
        frame
            .base
            .store(chunk << stripe.chunk_bits, Ordering::Relaxed); // W4
        self.strings.enter_chunk(f);
        self.chunk = Some(chunk);
        Ok(())
    }

    /// Evict the oldest resident chunk (W1, W2, W3) if it is sealed (with a journal) and not
    /// the one being written; without a journal its slots become expired.
    fn evict_oldest(&mut self) -> Result<(), StoreFull> {
        let k = self.oldest;
        if self.chunk == Some(k) {
            return Err(StoreFull); // the pool cannot hold one chunk's strings
        }
        let stripe = &self.store.epochs[self.epoch].stripes[self.stripe as usize];
        let end = (k + 1) << stripe.chunk_bits;
        if self.store.journaled && end > stripe.link.sealed_end.load(Ordering::Acquire) {
            // Nothing to recycle until the journal seals: ask it to (it looks even when no
            // batch comes).
            stripe.link.want_seal.store(true, Ordering::Relaxed);
            return Err(StoreFull);
        }
        if !self.store.journaled {
            // Expired before it leaves RAM: a reader in between gets 410, never 404.
            stripe.link.expired_below.fetch_max(end, Ordering::Release);
        }
        let f = (k % stripe.frames.len() as u64) as usize;
        // Release: a reader that sees EMPTY and goes to the segment table finds the segment
        // (inserted before the `sealed_end` this writer loaded above).
        stripe.frames[f].base.store(EMPTY, Ordering::Release); // W1
        fence(Ordering::Release); // W2
        self.strings.free_frame(f); // W3
        self.oldest = k + 1;
        stripe
            .resident_from
            .store(end.max(stripe.start), Ordering::Relaxed);
        Ok(())
    }

    /// The ref of `s` among the current chunk's strings, evicting the oldest chunk early while
    /// the pool has no free block.
    fn intern(&mut self, s: &[u8]) -> Result<u64, StoreFull> {
        let chunk = self.chunk.expect("a chunk is entered before its strings");
        loop {
            let stripe = &self.store.epochs[self.epoch].stripes[self.stripe as usize];
            let f = (chunk % stripe.frames.len() as u64) as usize;
            match self
                .strings
                .intern(&stripe.pool, f, s, &self.store.allocated)
            {
                Ok(at) => return Ok(at),
                Err(pool::NoBlock) => self.evict_oldest()?,
            }
        }
    }
}

#[cfg(test)]
mod tests;
