//! Where usages live: striped ids ([`ids`]) and one append-only arena per worker ([`arena`]).
//! The arena is the one place another thread reads; it does so without locks and without
//! `unsafe`, through atomics whose protocol is written beside them.
#![forbid(unsafe_code)]

pub mod arena;
pub mod committer;
pub mod export;
pub mod ids;
pub mod journal;
pub mod recover;

pub use arena::{EpochLayout, Store, StoreFull, StoredUsage, StripeWriter};
