//! Idempotency keys (API.md "Idempotent retries"): which `Idempotency-Key`s this node has
//! seen, for what body, and with what result, so a retry is answered as the first request was
//! instead of storing again.
//!
//! One table for the whole node, shared by every worker (a retry may reach any of them), of
//! fixed capacity (`--idempotency-memory`), allocated once at start. It is a hash table of
//! buckets of [`WAYS`] slots; a key's bucket is chosen by its fingerprint. Each bucket has a
//! one-word busy flag, set only around a handful of loads and stores of that bucket, never
//! across a system call: a worker that finds it set spins a bounded number of times, then
//! answers `409` (a retry may come back), so no worker ever waits for another. POSTs without a
//! key never look at the table.
//!
//! A slot holds a key's fingerprint (128-bit SipHash of the key), the fingerprint of the body
//! it came with, when it was first seen, and its result: the id of a single post, or where the
//! id runs of a bulk are ([`Run`]). A result counts only once the journal batch holding it is
//! written: the slot names the worker and batch, and each worker publishes the batches its
//! journal has written ([`Keys::set_durable`]); before that, a retry gets `409`.
//!
//! The table is rebuilt at start from the journal (`recover.rs`): every keyed usage's record
//! carries its key ([`KeyMark`]), written with the usage in one record, so a usage and its key
//! are durable together or not at all.
//!
//! When a bucket is full, the key seen longest ago is forgotten early (`forgotten` in the
//! metrics): a retry of it then stores again. When every slot of a bucket is in flight, the
//! new key gets `503` (with `Retry-After`).

pub mod header;
pub mod recover;
mod table;

pub use header::{KeyHeader, key_fingerprint};
pub use table::{Bulk, BulkEnd, BulkPrev, Keys, Run, Single, Ticket};

use siphasher::sip128::{Hasher128, SipHasher13};
use std::hash::Hasher;

pub use crate::store::journal::KeyMark;

/// Fixed SipHash keys: fingerprints must be the same after a restart (they are journaled).
const SIP_K0: u64 = 0x7573_6167_6564_2d69;
const SIP_K1: u64 = 0x6465_6d70_6f74_656e;

/// Slots per bucket.
pub const WAYS: usize = 4;

/// A running fingerprint of body bytes (the body of a single post, or a bulk's so far).
#[derive(Debug, Clone, Copy)]
pub struct BodyHash {
    h: SipHasher13,
    len: u64,
}

impl Default for BodyHash {
    fn default() -> Self {
        BodyHash {
            h: SipHasher13::new_with_keys(SIP_K0 ^ 1, SIP_K1),
            len: 0,
        }
    }
}

impl BodyHash {
    pub fn write(&mut self, bytes: &[u8]) {
        self.h.write(bytes);
        self.len += bytes.len() as u64;
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The fingerprint of the bytes so far.
    pub fn value(&self) -> u64 {
        self.h.finish128().h1
    }

    /// The fingerprint of `bytes`, alone.
    pub fn of(bytes: &[u8]) -> u64 {
        let mut h = BodyHash::default();
        h.write(bytes);
        h.value()
    }
}

/// Seconds since the Unix epoch, from the system clock.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
