//! The `Date` header value, formatted once per second per worker, never per request.

use crate::time::civil;
use std::time::{SystemTime, UNIX_EPOCH};

/// IMF-fixdate: `Tue, 01 Nov 2016 14:11:51 GMT`.
pub const LEN: usize = 29;

pub struct DateCache {
    secs: u64,
    text: [u8; LEN],
}

impl Default for DateCache {
    fn default() -> Self {
        let mut d = DateCache {
            secs: u64::MAX,
            text: [b' '; LEN],
        };
        d.update(SystemTime::now());
        d
    }
}

impl DateCache {
    /// Called once per loop turn; reformats only when the second changed.
    pub fn update(&mut self, now: SystemTime) {
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if secs != self.secs {
            self.secs = secs;
            self.text = format_imf(secs);
        }
    }

    /// Seconds since the Unix epoch, as of the last update.
    pub fn secs(&self) -> u64 {
        self.secs
    }

    pub fn text(&self) -> &[u8; LEN] {
        &self.text
    }
}

fn format_imf(secs: u64) -> [u8; LEN] {
    const DAYS: [&[u8; 3]; 7] = [b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun"];
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let days = (secs / 86_400) as i64;
    let (y, m, d) = civil::civil_from_days(days);
    let s = (secs % 86_400) as u32;
    let mut out = *b"Thu, 01 Jan 1970 00:00:00 GMT";
    out[..3].copy_from_slice(DAYS[civil::weekday(days) as usize]);
    out[8..11].copy_from_slice(MONTHS[m as usize - 1]);
    for (at, v, width) in [
        (5, d, 2),
        (12, y as u32, 4),
        (17, s / 3600, 2),
        (20, s / 60 % 60, 2),
        (23, s % 60, 2),
    ] {
        let mut v = v;
        for i in (0..width).rev() {
            out[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_like_chrono() {
        for secs in [
            0u64,
            1_478_009_511,
            951_782_400,
            4_102_444_799,
            1_795_000_000,
        ] {
            let want = chrono::DateTime::from_timestamp(secs as i64, 0)
                .unwrap()
                .format("%a, %d %b %Y %H:%M:%S GMT")
                .to_string();
            assert_eq!(std::str::from_utf8(&format_imf(secs)).unwrap(), want);
        }
    }

    #[test]
    fn updates_when_the_second_changes() {
        let mut d = DateCache::default();
        d.update(UNIX_EPOCH + Duration::from_millis(1_478_009_511_900));
        assert_eq!(d.text(), b"Tue, 01 Nov 2016 14:11:51 GMT");
        d.update(UNIX_EPOCH + Duration::from_millis(1_478_009_512_000));
        assert_eq!(d.text(), b"Tue, 01 Nov 2016 14:11:52 GMT");
    }
}
