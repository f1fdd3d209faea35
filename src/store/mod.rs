//! Where usages live: striped ids ([`ids`]) and one append-only arena per worker ([`arena`]). The
//! arena is the one place another thread reads; it does so without locks and without `unsafe`,
//! through atomics whose protocol is written beside them. Each stripe's journal is written by its
//! own thread ([`committer`], format in [`journal`]), which seals full segments into the
//! [`segments`] table and gives each a side index ([`index`]); at start [`open`] sets the store up
//! from the journal ([`recover`]: sealed segments by their index alone), and [`export`] prints it.
#![forbid(unsafe_code)]

pub mod arena;
pub mod committer;
pub mod export;
pub mod ids;
pub mod index;
pub mod journal;
pub mod link;
pub mod open;
pub mod recover;
pub mod segments;

pub use arena::{EpochLayout, Store, StoreFull, StoredUsage, StripeWriter};
