//! A stripe's string pool: fixed blocks of words holding the strings its records use
//! (medications, and patient ids longer than 8 bytes), each string as its length word then its
//! bytes. A string ref is `block << block_bits | word` (32 bits, the record's `Meta.med`).
//!
//! Every block belongs to one chunk of the ring: the chunk whose records use its strings. The
//! writer's intern table is reset when it enters a chunk (its capacity kept), so a string used
//! in two chunks is stored once in each, and evicting a chunk frees exactly its blocks. Blocks
//! are allocated on first use and never freed, only reused; readers follow the protocol in
//! `ring.rs` (a reused block is a recycled frame's W5).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::json::scan::MAX_STR;

/// No block (an empty list, or no current block).
const NONE: u32 = u32::MAX;
/// Slots of the writer's intern table when it first grows.
const INTERN_MIN_SLOTS: usize = 64;
/// Words a string of at most [`MAX_STR`] bytes takes: its length, then its bytes.
pub(super) const MAX_STRING_WORDS: u64 = 1 + MAX_STR.div_ceil(8) as u64;

/// The shared half: what readers see.
pub(super) struct Pool {
    pub bits: u32,
    pub blocks: Box<[OnceLock<Box<[AtomicU64]>>]>,
}

impl Pool {
    pub fn new(blocks: usize, bits: u32) -> Pool {
        Pool {
            bits,
            blocks: (0..blocks).map(|_| OnceLock::new()).collect(),
        }
    }

    fn block_words(&self) -> u64 {
        1 << self.bits
    }

    /// The string at `at`, copied into `out`; its length. `None` if `at` or the length it finds
    /// is out of bounds (a reader racing a recycled block; the writer never makes one).
    pub fn string(&self, at: u64, out: &mut [u8; MAX_STR]) -> Option<usize> {
        let block = self
            .blocks
            .get(usize::try_from(at >> self.bits).ok()?)?
            .get()?;
        let word = (at & (self.block_words() - 1)) as usize;
        let len = usize::try_from(block.get(word)?.load(Ordering::Relaxed)).ok()?;
        if len > MAX_STR {
            return None;
        }
        let words = block.get(word + 1..word + 1 + len.div_ceil(8))?;
        for (piece, w) in out[..len].chunks_mut(8).zip(words) {
            piece.copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes()[..piece.len()]);
        }
        Some(len)
    }
}

/// The pool has no free block: the writer must evict a chunk (or give up with `StoreFull`).
#[derive(Debug)]
pub(super) struct NoBlock;

/// The writer's private half: free blocks, which chunk (frame) owns which, the block being
/// filled and the intern table of the chunk being written.
pub(super) struct Strings {
    free: Vec<u32>,
    /// Blocks `fresh..` were never allocated.
    fresh: u32,
    /// Per block: the next block of the same owner's list.
    next: Vec<u32>,
    /// Per frame: the first block of its chunk's list.
    owned: Vec<u32>,
    /// Per frame: how many blocks its chunk owns.
    owned_count: Vec<u32>,
    /// Blocks taken so far (a counter that moves with every take).
    pub taken: u64,
    current: u32,
    /// Next free word of `current`.
    word: u64,
    /// Open-addressing intern table: `hash << 32 | (ref + 1)`, 0 when empty.
    interned: Vec<u64>,
    interned_count: usize,
}

impl Strings {
    pub fn new(frames: usize, blocks: usize) -> Strings {
        Strings {
            free: Vec::with_capacity(blocks),
            fresh: 0,
            next: vec![NONE; blocks],
            owned: vec![NONE; frames],
            owned_count: vec![0; frames],
            taken: 0,
            current: NONE,
            word: 0,
            interned: Vec::new(),
            interned_count: 0,
        }
    }

    /// The writer enters a new chunk in `frame` (whose blocks were freed): strings start afresh.
    pub fn enter_chunk(&mut self, frame: usize) {
        debug_assert_eq!(self.owned[frame], NONE, "a frame's blocks are freed first");
        self.interned.fill(0);
        self.interned_count = 0;
        self.current = NONE;
    }

    /// W3: the blocks of the chunk in `frame` go to the free list (after its W1 and W2).
    pub fn free_frame(&mut self, frame: usize) {
        self.owned_count[frame] = 0;
        let mut b = std::mem::replace(&mut self.owned[frame], NONE);
        while b != NONE {
            self.free.push(b);
            b = self.next[b as usize];
        }
    }

    /// Blocks the chunk in `frame` owns.
    pub fn owned_by(&self, frame: usize) -> u64 {
        u64::from(self.owned_count[frame])
    }

    /// The ref of `s` among the strings of the chunk in `frame`, adding it the first time.
    pub fn intern(
        &mut self,
        pool: &Pool,
        frame: usize,
        s: &[u8],
        allocated: &AtomicU64,
    ) -> Result<u64, NoBlock> {
        let hash = hash(s);
        if self.interned_count * 2 >= self.interned.len() {
            self.grow_interned();
        }
        let mask = self.interned.len() - 1;
        let mut i = hash as usize & mask;
        let mut buf = [0; MAX_STR];
        loop {
            let e = self.interned[i];
            if e == 0 {
                break;
            }
            if e >> 32 == u64::from(hash) {
                let at = (e & 0xffff_ffff) - 1;
                if pool.string(at, &mut buf).is_some_and(|n| &buf[..n] == s) {
                    return Ok(at);
                }
            }
            i = (i + 1) & mask;
        }
        let at = self.push(pool, frame, s, allocated)?;
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

    /// Write `s` (at most [`MAX_STR`] bytes) into the current block of the chunk in `frame`,
    /// taking a new block when it does not fit; its ref.
    fn push(
        &mut self,
        pool: &Pool,
        frame: usize,
        s: &[u8],
        allocated: &AtomicU64,
    ) -> Result<u64, NoBlock> {
        let words = 1 + s.len().div_ceil(8) as u64;
        if self.current == NONE || self.word + words > pool.block_words() {
            self.take_block(pool, frame, allocated)?;
        }
        let block = pool.blocks[self.current as usize]
            .get()
            .expect("the current block is allocated");
        let base = self.word as usize;
        block[base].store(s.len() as u64, Ordering::Relaxed);
        for (i, piece) in s.chunks(8).enumerate() {
            let mut w = [0; 8];
            w[..piece.len()].copy_from_slice(piece);
            block[base + 1 + i].store(u64::from_le_bytes(w), Ordering::Relaxed);
        }
        let at = u64::from(self.current) << pool.bits | self.word;
        self.word += words;
        Ok(at)
    }

    /// A free block (else a never-used one, allocated now) becomes the current block of the
    /// chunk in `frame`.
    fn take_block(
        &mut self,
        pool: &Pool,
        frame: usize,
        allocated: &AtomicU64,
    ) -> Result<(), NoBlock> {
        let b = match self.free.pop() {
            Some(b) => b,
            None if (self.fresh as usize) < pool.blocks.len() => {
                let b = self.fresh;
                pool.blocks[b as usize].get_or_init(|| {
                    allocated.fetch_add(pool.block_words() * 8, Ordering::Relaxed);
                    (0..pool.block_words()).map(|_| AtomicU64::new(0)).collect()
                });
                self.fresh += 1;
                b
            }
            None => return Err(NoBlock),
        };
        self.next[b as usize] = self.owned[frame];
        self.owned[frame] = b;
        self.owned_count[frame] += 1;
        self.taken += 1;
        self.current = b;
        self.word = 0;
        Ok(())
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
