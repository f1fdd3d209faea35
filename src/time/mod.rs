//! Timestamps: the accepted input forms ([`mod@parse`]), calendar arithmetic ([`civil`]) and the
//! RFC 3339 output form ([`rfc3339`]). Bytes in, values out: nothing here allocates.
#![forbid(unsafe_code)]

pub mod civil;
pub mod parse;
pub mod rfc3339;

pub use parse::{from_epoch_ms, parse};

/// An instant (milliseconds since the Unix epoch, UTC) and the UTC offset it was written in.
///
/// INVARIANT (upheld by the constructors in [`mod@parse`]): the local date `ms + offset` lies in
/// the years 0000..=9999 and `|offset_min| <= 18 * 60`, so it always prints as RFC 3339.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timestamp {
    pub ms: i64,
    pub offset_min: i16,
}

/// Largest offset accepted, in minutes (±18:00, as API.md and ISO 8601 say).
pub const MAX_OFFSET_MIN: i32 = 18 * 60;
