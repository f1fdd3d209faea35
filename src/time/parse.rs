//! The timestamp forms API.md accepts, each parsed by one function over a byte cursor:
//!
//! - RFC 3339 / ISO 8601: `2016-11-01T09:11:51.250-05:00` (`T`, `t` or a space; `Z`, `±HH:MM`,
//!   `±HHMM` or `±HH`),
//! - JavaScript `Date.prototype.toString()`: `Tue Nov 01 2016 09:11:51 GMT-0500 (CDT)`,
//! - RFC 2822 / HTTP-date: `Tue, 01 Nov 2016 14:11:51 GMT` (weekday and seconds optional,
//!   numeric or the RFC 822 North American zone names),
//! - epoch milliseconds, as a JSON integer ([`from_epoch_ms`]) or a string of digits.
//!
//! A date that does not exist (Feb 30, hour 24, second 60, offset beyond ±18:00, a weekday that
//! contradicts the date) is rejected. Names match case-insensitively.

use super::civil::{self, MS_PER_DAY};
use super::{MAX_OFFSET_MIN, Timestamp};

/// Parse any accepted string form. `None` means the client gets `400`.
pub fn parse(s: &[u8]) -> Option<Timestamp> {
    let first = *s.first()?;
    if first.is_ascii_digit() && s.get(4) == Some(&b'-') {
        rfc3339(s)
    } else if first.is_ascii_digit() || first == b'-' {
        if s[1..].iter().all(u8::is_ascii_digit) {
            epoch_digits(s)
        } else {
            rfc2822(s)
        }
    } else if s.get(3) == Some(&b',') {
        rfc2822(s)
    } else {
        js_date(s)
    }
}

/// An instant given as epoch milliseconds, printed back in `Z`.
pub fn from_epoch_ms(ms: i64) -> Option<Timestamp> {
    let day = ms.div_euclid(MS_PER_DAY);
    (civil::MIN_DAY..=civil::MAX_DAY)
        .contains(&day)
        .then_some(Timestamp { ms, offset_min: 0 })
}

fn epoch_digits(s: &[u8]) -> Option<Timestamp> {
    let (neg, digits) = match s {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 15 {
        return None;
    }
    let mut v: i64 = 0;
    for &d in digits {
        v = v * 10 + i64::from(d - b'0');
    }
    from_epoch_ms(if neg { -v } else { v })
}

/// The fields of a local date and time, before validation.
struct Local {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    min: u32,
    sec: u32,
    ms: u32,
}

/// Validate `local` at `offset_min` and turn it into a [`Timestamp`]; `weekday` (0 = Monday),
/// when the form carried one, must agree with the date.
fn finish(local: Local, offset_min: i32, weekday: Option<u32>) -> Option<Timestamp> {
    let Local {
        year,
        month,
        day,
        hour,
        min,
        sec,
        ms,
    } = local;
    if !(0..=9999).contains(&year)
        || !(1..=12).contains(&month)
        || day == 0
        || day > civil::days_in_month(year, month)
        || hour > 23
        || min > 59
        || sec > 59
        || offset_min.abs() > MAX_OFFSET_MIN
    {
        return None;
    }
    let days = civil::days_from_civil(year, month, day);
    if weekday.is_some_and(|w| w != civil::weekday(days)) {
        return None;
    }
    let local_ms = days * MS_PER_DAY
        + i64::from(hour) * 3_600_000
        + i64::from(min) * 60_000
        + i64::from(sec) * 1000
        + i64::from(ms);
    Some(Timestamp {
        ms: local_ms - i64::from(offset_min) * 60_000,
        offset_min: offset_min as i16,
    })
}

/// A cursor over the input: each step consumes what it matched or returns `None`.
struct Cur<'a> {
    s: &'a [u8],
}

impl<'a> Cur<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.first().copied()
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        let (&first, rest) = self.s.split_first()?;
        (first == b).then(|| self.s = rest)
    }

    fn eat_any(&mut self, set: &[u8]) -> Option<u8> {
        let (&first, rest) = self.s.split_first()?;
        set.contains(&first).then(|| {
            self.s = rest;
            first
        })
    }

    /// Exactly `n` ASCII digits.
    fn digits(&mut self, n: usize) -> Option<u32> {
        let head = self.s.get(..n)?;
        let mut v = 0u32;
        for &d in head {
            if !d.is_ascii_digit() {
                return None;
            }
            v = v * 10 + u32::from(d - b'0');
        }
        self.s = &self.s[n..];
        Some(v)
    }

    /// `min..=max` ASCII digits.
    fn digits_between(&mut self, min: usize, max: usize) -> Option<u32> {
        let n = self
            .s
            .iter()
            .take(max)
            .take_while(|d| d.is_ascii_digit())
            .count();
        if n < min {
            return None;
        }
        self.digits(n)
    }

    /// One or more spaces.
    fn spaces(&mut self) -> Option<()> {
        let n = self.s.iter().take_while(|&&b| b == b' ').count();
        (n > 0).then(|| self.s = &self.s[n..])
    }

    /// A three-letter name from `names`, case-insensitively; its index.
    fn name(&mut self, names: &[&[u8; 3]]) -> Option<u32> {
        let head = self.s.get(..3)?;
        let i = names.iter().position(|n| n.eq_ignore_ascii_case(head))?;
        self.s = &self.s[3..];
        Some(i as u32)
    }

    fn end(&self) -> Option<()> {
        self.s.is_empty().then_some(())
    }

    /// `HH:MM:SS`, or `HH:MM` when `seconds_optional`.
    fn time(&mut self, seconds_optional: bool) -> Option<(u32, u32, u32)> {
        let hour = self.digits(2)?;
        self.eat(b':')?;
        let min = self.digits(2)?;
        let sec = if seconds_optional && self.peek() != Some(b':') {
            0
        } else {
            self.eat(b':')?;
            self.digits(2)?
        };
        Some((hour, min, sec))
    }

    /// `±HHMM` (or `±HH:MM`/`±HH` when `iso`), in minutes.
    fn numeric_offset(&mut self, iso: bool) -> Option<i32> {
        let sign = if self.eat_any(b"+-")? == b'-' { -1 } else { 1 };
        let hours = self.digits(2)? as i32;
        let mins = match self.peek() {
            Some(b':') if iso => {
                self.eat(b':')?;
                self.digits(2)?
            }
            Some(d) if d.is_ascii_digit() => self.digits(2)?,
            _ if iso => 0,
            _ => return None,
        } as i32;
        (mins < 60).then_some(sign * (hours * 60 + mins))
    }
}

const WEEKDAYS: [&[u8; 3]; 7] = [b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun"];
const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

fn rfc3339(s: &[u8]) -> Option<Timestamp> {
    let mut c = Cur { s };
    let year = i64::from(c.digits(4)?);
    c.eat(b'-')?;
    let month = c.digits(2)?;
    c.eat(b'-')?;
    let day = c.digits(2)?;
    c.eat_any(b"Tt ")?;
    let (hour, min, sec) = c.time(false)?;
    let mut ms = 0;
    if c.eat(b'.').is_some() {
        let n = c.s.iter().take_while(|d| d.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        for (i, &d) in c.s[..n.min(3)].iter().enumerate() {
            ms += u32::from(d - b'0') * [100, 10, 1][i];
        }
        c.s = &c.s[n..];
    }
    let offset = if c.eat_any(b"Zz").is_some() {
        0
    } else {
        c.numeric_offset(true)?
    };
    c.end()?;
    let local = Local {
        year,
        month,
        day,
        hour,
        min,
        sec,
        ms,
    };
    finish(local, offset, None)
}

/// `Tue Nov 01 2016 09:11:51 GMT-0500 (CDT)`; the parenthesised name is optional.
fn js_date(s: &[u8]) -> Option<Timestamp> {
    let mut c = Cur { s };
    let weekday = c.name(&WEEKDAYS)?;
    c.spaces()?;
    let month = c.name(&MONTHS)? + 1;
    c.spaces()?;
    let day = c.digits_between(1, 2)?;
    c.spaces()?;
    let year = i64::from(c.digits(4)?);
    c.spaces()?;
    let (hour, min, sec) = c.time(false)?;
    c.spaces()?;
    c.name(&[b"GMT"])?;
    let offset = c.numeric_offset(false)?;
    if c.spaces().is_some() {
        c.eat(b'(')?;
        let close = c.s.iter().position(|&b| b == b')')?;
        c.s = &c.s[close + 1..];
    }
    c.end()?;
    let local = Local {
        year,
        month,
        day,
        hour,
        min,
        sec,
        ms: 0,
    };
    finish(local, offset, Some(weekday))
}

/// `[Tue, ]1 Nov 2016 14:11[:51] GMT|UT|UTC|Z|EST…PDT|±HHMM`.
fn rfc2822(s: &[u8]) -> Option<Timestamp> {
    let mut c = Cur { s };
    let mut weekday = None;
    if c.peek().is_some_and(|b| b.is_ascii_alphabetic()) {
        weekday = Some(c.name(&WEEKDAYS)?);
        c.eat(b',')?;
        c.spaces()?;
    }
    let day = c.digits_between(1, 2)?;
    c.spaces()?;
    let month = c.name(&MONTHS)? + 1;
    c.spaces()?;
    let year = i64::from(c.digits(4)?);
    c.spaces()?;
    let (hour, min, sec) = c.time(true)?;
    c.spaces()?;
    let offset = match c.peek()? {
        b'+' | b'-' => {
            let offset = c.numeric_offset(false)?;
            c.end()?;
            offset
        }
        _ => zone_name(c.s)?,
    };
    let local = Local {
        year,
        month,
        day,
        hour,
        min,
        sec,
        ms: 0,
    };
    finish(local, offset, weekday)
}

/// The whole rest of the input as an RFC 822 zone name; its offset in minutes.
fn zone_name(s: &[u8]) -> Option<i32> {
    const ZONES: [(&[u8], i32); 12] = [
        (b"GMT", 0),
        (b"UT", 0),
        (b"UTC", 0),
        (b"Z", 0),
        (b"EST", -300),
        (b"EDT", -240),
        (b"CST", -360),
        (b"CDT", -300),
        (b"MST", -420),
        (b"MDT", -360),
        (b"PST", -480),
        (b"PDT", -420),
    ];
    ZONES
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(s))
        .map(|&(_, off)| off)
}

#[cfg(test)]
mod tests;
