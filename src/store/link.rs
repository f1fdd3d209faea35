//! What a stripe's arena (its worker) and its journal thread share about sealing, and what
//! retention tells readers. One per stripe of the current epoch, behind an `Arc`; old epochs
//! get one too (never sealed further, all their slots cold).
//!
//! Orderings: the journal thread stores `sealed_end` with `Release` only after the segment
//! that ends there is in the segment table ([`super::segments::Segments::insert`]), so a writer
//! that loads it with `Acquire` and recycles a chunk below it knows a reader sent to the disk
//! finds that slot. Retention stores `expired_below` with `Release` after `RETAINED` is durable
//! and before it removes files; readers load it with `Acquire` before anything else.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(Debug)]
pub struct StripeLink {
    /// Slots below this lie in sealed segments: their chunks may be recycled.
    pub sealed_end: AtomicU64,
    /// The arena asks the journal thread to seal its open segment at its next batch (the
    /// unsealed part of the ring grows too large). Relaxed both ways: a hint.
    pub want_seal: AtomicBool,
    /// Slots below this were removed by retention (or evicted from a store without a journal):
    /// their ids answer `410`.
    pub expired_below: AtomicU64,
}

impl StripeLink {
    /// A stripe whose slots below `sealed_end` are already sealed and below `expired_below`
    /// expired.
    pub fn new(sealed_end: u64, expired_below: u64) -> StripeLink {
        StripeLink {
            sealed_end: AtomicU64::new(sealed_end),
            want_seal: AtomicBool::new(false),
            expired_below: AtomicU64::new(expired_below),
        }
    }

    pub fn sealed_end(&self) -> u64 {
        self.sealed_end.load(Ordering::Acquire)
    }

    pub fn expired_below(&self) -> u64 {
        self.expired_below.load(Ordering::Acquire)
    }
}
