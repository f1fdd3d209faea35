//! The node's key table (see the module above): buckets of [`WAYS`] slots of [`WORDS`] words,
//! and a ring of words for the id runs of keyed bulks.

use std::alloc::{Layout, alloc_zeroed, handle_alloc_error};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

use super::WAYS;

/// Words per slot: key (2), body, id, batch, meta, end, runs.
const WORDS: usize = 8;
const W_KEY_HI: usize = 0;
const W_KEY_LO: usize = 1;
/// The fingerprint of the body (of a bulk: of its first `end` bytes).
const W_BODY: usize = 2;
/// The id of a single post.
const W_ID: usize = 3;
/// `batch << 16 | worker`: the journal batch that holds the result, and whose.
const W_BATCH: usize = 4;
/// `created_s << 8 | state`.
const W_META: usize = 5;
/// Body bytes the result covers (a bulk's prefix whose lines are stored).
const W_END: usize = 6;
/// A bulk's runs: `ring offset << 24 | count`, or [`NO_RUNS`].
const W_RUNS: usize = 7;
const NO_RUNS: u64 = u64::MAX;
const MAX_RUNS: usize = (1 << 24) - 1;

const EMPTY: u64 = 0;
const SINGLE: u64 = 1;
/// A keyed bulk is streaming (or replaying) under this key: `409` to any other request.
const STREAMING: u64 = 2;
/// A bulk whose body was cut off (or whose end is unknown after a restart): its stored
/// prefix replays, and what follows it is stored.
const PARTIAL: u64 = 3;
const COMPLETE: u64 = 4;

/// Spins on a busy bucket before answering `409`.
const SPINS: u32 = 200;

#[repr(C)]
struct Bucket {
    busy: AtomicU32,
    slots: [[AtomicU64; WORDS]; WAYS],
}

/// A run of ids of one stripe: `first`, then `count − 1` more, `stride` apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub first: u64,
    pub count: u32,
    pub stride: u32,
}

impl Run {
    /// Add `id` to the runs `rs` (extending the last run when it follows it).
    pub fn push(rs: &mut Vec<Run>, id: u64, stride: u32) {
        if let Some(r) = rs.last_mut()
            && r.stride == stride
            && r.count < u32::MAX
            && r.first + u64::from(r.count) * u64::from(stride) == id
        {
            r.count += 1;
            return;
        }
        rs.push(Run {
            first: id,
            count: 1,
            stride,
        });
    }

    /// The `k`-th id of the runs `rs`, if there are that many.
    pub fn nth(rs: &[Run], mut k: u64) -> Option<u64> {
        for r in rs {
            if k < u64::from(r.count) {
                return Some(r.first + k * u64::from(r.stride));
            }
            k -= u64::from(r.count);
        }
        None
    }
}

/// Which slot a claim holds: the bucket, the way, and the key (checked on every later use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    bucket: usize,
    way: usize,
    key: u128,
}

/// What to do with a single keyed post.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Single {
    /// New: claimed with the id it is about to get; [`Keys::forget`] it if it is not stored.
    Store(Ticket),
    /// Seen with this body, stored and journaled: answer this id again.
    Replay(u64),
    /// Its first request is still being stored (or the bucket was busy): `409`.
    Busy,
    /// Seen with another body (or as a bulk): `422`.
    Conflict,
    /// Every slot of its bucket is in flight: `503`.
    Full,
}

/// What a keyed bulk found at its head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bulk {
    /// New: claimed (streaming).
    Fresh(Ticket),
    /// Seen whole before: it replays, storing nothing (no claim).
    Replay(BulkPrev),
    /// Seen cut off before (claimed again, streaming): its stored prefix replays
    /// ([`BulkPrev`]), the rest is stored.
    Resume(Ticket, BulkPrev),
    Busy,
    /// The key belongs to a single post: `422` once the body is read.
    Conflict,
    Full,
}

/// A keyed bulk seen before: its first `end` body bytes (fingerprint `body`) hold its stored
/// lines, whose ids are `runs` in line order; `complete`: its body ended there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkPrev {
    pub end: u64,
    pub body: u64,
    pub complete: bool,
    pub created_s: u64,
    pub runs: Vec<Run>,
    words: [u64; WORDS],
}

/// How a keyed bulk ended, for [`Keys::bulk_end`].
pub enum BulkEnd<'a> {
    /// Its first `end` bytes (fingerprint `body`) hold its stored lines, `runs`; the last
    /// of them is in `batch` of `worker`'s journal.
    Stored {
        end: u64,
        body: u64,
        complete: bool,
        created_s: u64,
        runs: &'a [Run],
        worker: usize,
        batch: u64,
    },
    /// Nothing changed (a `422`, or a replay that stored nothing new): put `prev` back.
    Restore(&'a BulkPrev),
    /// Nothing stored under a new key: forget it.
    Drop,
}

/// The node's table of idempotency keys.
pub struct Keys {
    buckets: Box<[Bucket]>,
    window_s: u64,
    /// Per worker: the highest journal batch written.
    durable: Box<[AtomicU64]>,
    ring: Box<[AtomicU64]>,
    /// Words of the ring handed out so far (the next run goes at `cursor % len`).
    cursor: AtomicU64,
}

impl Default for Keys {
    /// A small table (64 KiB, a day's window, one worker): for tests.
    fn default() -> Self {
        Keys::new(1 << 16, 86_400, 1)
    }
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("capacity", &self.capacity())
            .field("window_s", &self.window_s)
            .finish()
    }
}

/// `n` zeroed `T`s, as a boxed slice. Zeroed pages cost no memory until written, so a large
/// table costs what its keys use.
fn zeroed<T: ZeroValid>(n: usize) -> Box<[T]> {
    let n = n.max(1);
    let layout = Layout::array::<T>(n).expect("table size fits memory");
    // SAFETY: `layout` is non-zero-sized (n ≥ 1, T is not a ZST); the allocation is checked
    // for null; `T: ZeroValid` means all-zero bytes are a valid `T` (atomics of plain
    // integers, and arrays and `repr(C)` structs of them); the box owns exactly `n` of them
    // allocated with the global allocator and that layout, as `Box<[T]>` frees them.
    // `a_new_table_is_empty_everywhere` checks every word reads as zero.
    unsafe {
        let p = alloc_zeroed(layout) as *mut T;
        if p.is_null() {
            handle_alloc_error(layout);
        }
        Box::from_raw(std::ptr::slice_from_raw_parts_mut(p, n))
    }
}

/// Types for which all-zero bytes are a valid value.
///
/// # Safety
/// Only plain-integer atomics and `repr(C)` aggregates of them.
unsafe trait ZeroValid {}
// SAFETY: atomic integers have the same bit validity as their integers.
unsafe impl ZeroValid for AtomicU64 {}
// SAFETY: a `repr(C)` struct of atomic integers and arrays of them.
unsafe impl ZeroValid for Bucket {}

/// What a slot at rest says of the bulk it holds, with its `runs`.
fn prev_of(words: [u64; WORDS], runs: Vec<Run>) -> BulkPrev {
    BulkPrev {
        end: words[W_END],
        body: words[W_BODY],
        complete: words[W_META] & 0xff == COMPLETE,
        created_s: words[W_META] >> 8,
        runs,
        words,
    }
}

fn meta(created_s: u64, state: u64) -> u64 {
    created_s << 8 | state
}

impl Keys {
    /// A table of about `memory` bytes (slots and runs), whose keys live `window_s` seconds,
    /// for `workers` workers.
    pub fn new(memory: usize, window_s: u64, workers: usize) -> Keys {
        let bucket_bytes = std::mem::size_of::<Bucket>();
        // An eighth for the runs of bulks, the rest for slots.
        let buckets = (memory - memory / 8) / bucket_bytes;
        let ring = memory / 8 / 8;
        Keys {
            buckets: zeroed(buckets.max(1)),
            window_s,
            durable: zeroed(workers),
            ring: zeroed(ring.max(64)),
            cursor: AtomicU64::new(0),
        }
    }

    /// How long a key lives, in seconds.
    pub fn window_s(&self) -> u64 {
        self.window_s
    }

    /// How many keys it can hold.
    pub fn capacity(&self) -> usize {
        self.buckets.len() * WAYS
    }

    /// Worker `w`'s journal has written every batch up to `batch`.
    pub fn set_durable(&self, w: usize, batch: u64) {
        if let Some(d) = self.durable.get(w) {
            d.fetch_max(batch, Ordering::Release);
        }
    }

    fn bucket_of(&self, key: u128) -> usize {
        (key as u64 % self.buckets.len() as u64) as usize
    }

    /// Set the bucket's busy flag, spinning at most [`SPINS`] times; `false`: still busy.
    fn lock(&self, b: usize) -> bool {
        let busy = &self.buckets[b].busy;
        for _ in 0..SPINS {
            if busy
                .compare_exchange_weak(0, 1, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return true;
            }
            std::hint::spin_loop();
        }
        false
    }

    fn unlock(&self, b: usize) {
        self.buckets[b].busy.store(0, Ordering::Release);
    }

    fn word(&self, b: usize, way: usize, w: usize) -> u64 {
        self.buckets[b].slots[way][w].load(Ordering::Relaxed)
    }

    fn set(&self, b: usize, way: usize, words: [u64; WORDS]) {
        for (cell, v) in self.buckets[b].slots[way].iter().zip(words) {
            cell.store(v, Ordering::Relaxed);
        }
    }

    fn words(&self, b: usize, way: usize) -> [u64; WORDS] {
        std::array::from_fn(|w| self.word(b, way, w))
    }

    /// Whether the result in slot (b, way) is written to its journal.
    fn durable(&self, b: usize, way: usize) -> bool {
        let bw = self.word(b, way, W_BATCH);
        let (batch, worker) = (bw >> 16, (bw & 0xffff) as usize);
        self.durable
            .get(worker)
            .is_none_or(|d| d.load(Ordering::Acquire) >= batch)
    }

    /// Whether the slot is free to take at `now_s`: empty, or expired and at rest.
    fn free(&self, b: usize, way: usize, now_s: u64) -> bool {
        let m = self.word(b, way, W_META);
        m & 0xff == EMPTY
            || (m & 0xff != STREAMING
                && (m >> 8).saturating_add(self.window_s) < now_s
                && self.durable(b, way))
    }

    /// The way of bucket `b` that holds `key` (live), if one does.
    fn find(&self, b: usize, key: u128, now_s: u64) -> Option<usize> {
        (0..WAYS).find(|&way| {
            !self.free(b, way, now_s)
                && self.word(b, way, W_KEY_HI) == (key >> 64) as u64
                && self.word(b, way, W_KEY_LO) == key as u64
        })
    }

    /// A way of bucket `b` for a new key: a free one, else the one at rest seen longest ago
    /// (`true`: a live key was forgotten), else none.
    fn victim(&self, b: usize, now_s: u64) -> Option<(usize, bool)> {
        if let Some(w) = (0..WAYS).find(|&w| self.free(b, w, now_s)) {
            return Some((w, false));
        }
        (0..WAYS)
            .filter(|&w| self.word(b, w, W_META) & 0xff != STREAMING && self.durable(b, w))
            .min_by_key(|&w| self.word(b, w, W_META) >> 8)
            .map(|w| (w, true))
    }

    /// Look up `key` for a single post with body fingerprint `body`; if new, claim it with the
    /// `id` it is about to be stored under, in `batch` of `worker`'s journal. The `bool`: a
    /// live key was forgotten to make room.
    pub fn single(
        &self,
        key: u128,
        body: u64,
        now_s: u64,
        (id, worker, batch): (u64, usize, u64),
    ) -> (Single, bool) {
        let b = self.bucket_of(key);
        if !self.lock(b) {
            return (Single::Busy, false);
        }
        let r = match self.find(b, key, now_s) {
            Some(way) => {
                let state = self.word(b, way, W_META) & 0xff;
                let answer = if state == STREAMING {
                    Single::Busy
                } else if state != SINGLE || self.word(b, way, W_BODY) != body {
                    Single::Conflict
                } else if !self.durable(b, way) {
                    Single::Busy
                } else {
                    Single::Replay(self.word(b, way, W_ID))
                };
                (answer, false)
            }
            None => match self.victim(b, now_s) {
                Some((way, forgot)) => {
                    let bw = batch << 16 | worker as u64;
                    let (hi, lo) = ((key >> 64) as u64, key as u64);
                    self.set(b, way, [hi, lo, body, id, bw, meta(now_s, SINGLE), 0, 0]);
                    (
                        Single::Store(Ticket {
                            bucket: b,
                            way,
                            key,
                        }),
                        forgot,
                    )
                }
                None => (Single::Full, false),
            },
        };
        self.unlock(b);
        r
    }

    /// The claim `t` stored nothing: free its slot.
    pub fn forget(&self, t: &Ticket) {
        self.with_ticket(t, |k| k.set(t.bucket, t.way, [0; WORDS]));
    }

    /// Run `f` under the bucket's flag if the slot still holds the ticket's key (a claim is
    /// never taken over while in flight, so it does unless the flag stayed busy).
    fn with_ticket(&self, t: &Ticket, f: impl FnOnce(&Keys)) {
        // Spin until free: a ticket's owner must get its slot back, and others hold the
        // flag only for a few loads and stores.
        while !self.lock(t.bucket) {}
        let (hi, lo) = ((t.key >> 64) as u64, t.key as u64);
        if self.word(t.bucket, t.way, W_KEY_HI) == hi && self.word(t.bucket, t.way, W_KEY_LO) == lo
        {
            f(self);
        }
        self.unlock(t.bucket);
    }

    /// Look up `key` for a bulk starting now on `worker`; claim it (streaming) if new or seen
    /// as a bulk before (then its runs are copied out).
    pub fn bulk_start(&self, key: u128, now_s: u64, worker: usize) -> (Bulk, bool) {
        let b = self.bucket_of(key);
        if !self.lock(b) {
            return (Bulk::Busy, false);
        }
        let (hi, lo) = ((key >> 64) as u64, key as u64);
        let streaming = [
            hi,
            lo,
            0,
            0,
            worker as u64,
            meta(now_s, STREAMING),
            0,
            NO_RUNS,
        ];
        let r = match self.find(b, key, now_s) {
            Some(way) => {
                let words = self.words(b, way);
                let state = words[W_META] & 0xff;
                if state == STREAMING || !self.durable(b, way) {
                    (Bulk::Busy, false)
                } else if state == SINGLE {
                    (Bulk::Conflict, false)
                } else if state == COMPLETE {
                    // Replayed whole, storing nothing: no claim, so replays may run side by
                    // side and a retry meanwhile is answered too.
                    match self.read_runs(words[W_RUNS]) {
                        Some(runs) => (Bulk::Replay(prev_of(words, runs)), false),
                        None => {
                            self.set(b, way, streaming);
                            (
                                Bulk::Fresh(Ticket {
                                    bucket: b,
                                    way,
                                    key,
                                }),
                                true,
                            )
                        }
                    }
                } else {
                    let t = Ticket {
                        bucket: b,
                        way,
                        key,
                    };
                    let mut s = streaming;
                    s[W_META] = meta(words[W_META] >> 8, STREAMING);
                    self.set(b, way, s);
                    match self.read_runs(words[W_RUNS]) {
                        Some(runs) => (Bulk::Resume(t, prev_of(words, runs)), false),
                        // Its runs were overwritten: forgotten, as if full.
                        None => {
                            self.set(b, way, streaming);
                            (Bulk::Fresh(t), true)
                        }
                    }
                }
            }
            None => match self.victim(b, now_s) {
                Some((way, forgot)) => {
                    self.set(b, way, streaming);
                    (
                        Bulk::Fresh(Ticket {
                            bucket: b,
                            way,
                            key,
                        }),
                        forgot,
                    )
                }
                None => (Bulk::Full, false),
            },
        };
        self.unlock(b);
        r
    }

    /// The bulk holding `t` ended: see [`BulkEnd`].
    pub fn bulk_end(&self, t: &Ticket, end: BulkEnd<'_>) {
        let words = match end {
            BulkEnd::Drop => [0; WORDS],
            BulkEnd::Restore(prev) => prev.words,
            BulkEnd::Stored {
                end,
                body,
                complete,
                created_s,
                runs,
                worker,
                batch,
            } => {
                let (hi, lo) = ((t.key >> 64) as u64, t.key as u64);
                let state = if complete { COMPLETE } else { PARTIAL };
                let bw = batch << 16 | worker as u64;
                let r = self.write_runs(runs);
                [hi, lo, body, 0, bw, meta(created_s, state), end, r]
            }
        };
        self.with_ticket(t, |k| k.set(t.bucket, t.way, words));
    }

    /// Put `runs` in the ring: their reference, or [`NO_RUNS`] if they do not fit.
    fn write_runs(&self, runs: &[Run]) -> u64 {
        let n = runs.len() * 2;
        if runs.len() > MAX_RUNS || n > self.ring.len() / 2 {
            return NO_RUNS;
        }
        let at = self.cursor.fetch_add(n as u64, Ordering::Relaxed);
        // Readers check the cursor after reading: one that read any word below was overwritten
        // sees a cursor past it.
        fence(Ordering::Release);
        let len = self.ring.len() as u64;
        for (i, r) in runs.iter().enumerate() {
            let p = at + 2 * i as u64;
            self.ring[(p % len) as usize].store(r.first, Ordering::Relaxed);
            let v = u64::from(r.count) << 32 | u64::from(r.stride);
            self.ring[((p + 1) % len) as usize].store(v, Ordering::Relaxed);
        }
        at << 24 | runs.len() as u64
    }

    /// The runs `r` refers to, unless they were overwritten since.
    fn read_runs(&self, r: u64) -> Option<Vec<Run>> {
        if r == NO_RUNS {
            return None;
        }
        let (at, count) = (r >> 24, (r & MAX_RUNS as u64) as usize);
        let len = self.ring.len() as u64;
        let runs: Vec<Run> = (0..count as u64)
            .map(|i| {
                let p = at + 2 * i;
                let first = self.ring[(p % len) as usize].load(Ordering::Relaxed);
                let v = self.ring[((p + 1) % len) as usize].load(Ordering::Relaxed);
                Run {
                    first,
                    count: (v >> 32) as u32,
                    stride: v as u32,
                }
            })
            .collect();
        fence(Ordering::Acquire);
        let cursor = self.cursor.load(Ordering::Relaxed);
        (cursor <= at + len).then_some(runs)
    }

    /// At start: `key` was stored as a single post with `body` as `id` at `created_s`.
    pub fn restore_single(&self, key: u128, body: u64, id: u64, created_s: u64, now_s: u64) {
        let b = self.bucket_of(key);
        while !self.lock(b) {}
        if self.find(b, key, now_s).is_none()
            && let Some((way, _)) = self.victim(b, now_s)
        {
            let (hi, lo) = ((key >> 64) as u64, key as u64);
            self.set(b, way, [hi, lo, body, id, 0, meta(created_s, SINGLE), 0, 0]);
        }
        self.unlock(b);
    }

    /// At start: `key` was a bulk whose first `end` bytes (fingerprint `body`) hold its stored
    /// lines, `runs`. Whether its body ended there is not known: it resumes.
    pub fn restore_bulk(&self, key: u128, prefix: (u64, u64), runs: &[Run], created_s: u64) {
        let now_s = super::unix_now();
        let b = self.bucket_of(key);
        let r = self.write_runs(runs);
        while !self.lock(b) {}
        let way = self
            .find(b, key, now_s)
            .or_else(|| self.victim(b, now_s).map(|v| v.0));
        if let Some(way) = way {
            let (hi, lo) = ((key >> 64) as u64, key as u64);
            let m = meta(created_s, PARTIAL);
            self.set(b, way, [hi, lo, prefix.1, 0, 0, m, prefix.0, r]);
        }
        self.unlock(b);
    }
}

#[cfg(test)]
mod tests;
