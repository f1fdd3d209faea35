//! Where usages live: striped ids ([`ids`]) and one arena per worker ([`arena`]), a ring of
//! chunks bounded by `--cache`. The arena is the one place another thread reads; it does so
//! without locks and without `unsafe`, through atomics whose protocol is written beside them.
//! Each stripe's journal is written by its own thread ([`committer`], format in [`journal`]),
//! which seals full segments into the [`segments`] table and gives each a side index
//! ([`index`]); usages no longer in RAM are read back from there ([`cold`]), and [`retention`]
//! removes old segments. At start [`open`] sets the store up from the journal ([`recover`]:
//! sealed segments by their index alone; checked against the node's [`identity`] in a
//! cluster), and [`export`] prints it.
#![forbid(unsafe_code)]

pub mod arena;
pub mod cold;
pub mod committer;
pub mod export;
pub mod identity;
pub mod ids;
pub mod index;
pub mod journal;
pub mod link;
pub mod open;
pub mod recover;
pub mod retention;
pub mod segments;

pub use arena::{EpochLayout, Lookup, Store, StoreFull, StoredUsage, StripeWriter};
