//! Where usages live: striped ids ([`ids`]) and one arena per worker ([`arena`]), a ring of
//! chunks bounded by `--cache`. The arena is the one place another thread reads; it does so
//! without locks and without `unsafe`, through atomics whose protocol is written beside them.
//! Each stripe's journal is written by its own thread ([`committer`], format in [`journal`];
//! [`index`] is the format of a sealed segment's side index, which nothing writes yet: issue 11);
//! at start [`open`] sets the store up, rebuilding it from the journal ([`recover`]), and
//! [`export`] prints it.
#![forbid(unsafe_code)]

pub mod arena;
pub mod cold;
pub mod committer;
pub mod export;
pub mod ids;
pub mod index;
pub mod journal;
pub mod link;
pub mod open;
pub mod recover;
pub mod retention;
pub mod segments;

pub use arena::{EpochLayout, Lookup, Store, StoreFull, StoredUsage, StripeWriter};
