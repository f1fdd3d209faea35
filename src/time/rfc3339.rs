//! The one output form: RFC 3339 in the offset the timestamp came with.

use super::Timestamp;
use super::civil::{self, MS_PER_DAY};

/// Longest output: `9999-12-31T23:59:59.999+18:00`.
pub const MAX_LEN: usize = 29;

/// Write `ts` as `YYYY-MM-DDTHH:MM:SS[.mmm](Z|±HH:MM)` into `out`; returns the length used.
/// Milliseconds appear only when non-zero; a zero offset prints as `Z`.
pub fn write(ts: Timestamp, out: &mut [u8; MAX_LEN]) -> usize {
    let local = ts.ms + i64::from(ts.offset_min) * 60_000;
    let (y, mo, d) = civil::civil_from_days(local.div_euclid(MS_PER_DAY));
    let in_day = local.rem_euclid(MS_PER_DAY) as u32;
    let (h, mi, s, ms) = (
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000,
    );
    let mut n = write_digits(out, y as u32, 4);
    let fields = [(b'-', mo), (b'-', d), (b'T', h), (b':', mi), (b':', s)];
    for (b, v) in fields {
        out[n] = b;
        n += 1;
        n += write_digits(&mut out[n..], v, 2);
    }
    if ms != 0 {
        out[n] = b'.';
        n += 1;
        n += write_digits(&mut out[n..], ms, 3);
    }
    if ts.offset_min == 0 {
        out[n] = b'Z';
        return n + 1;
    }
    let off = i32::from(ts.offset_min);
    out[n] = if off < 0 { b'-' } else { b'+' };
    n += 1;
    n += write_digits(&mut out[n..], off.unsigned_abs() / 60, 2);
    out[n] = b':';
    n += 1;
    n + write_digits(&mut out[n..], off.unsigned_abs() % 60, 2)
}

/// `v` zero-padded to `width` digits at the start of `out`; returns `width`.
fn write_digits(out: &mut [u8], mut v: u32, width: usize) -> usize {
    for slot in out[..width].iter_mut().rev() {
        *slot = b'0' + (v % 10) as u8;
        v /= 10;
    }
    width
}
