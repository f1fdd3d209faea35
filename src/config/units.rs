//! Sizes and durations as flags write them: `65536` or `64KiB`, `0.5` or `500ms`.
//!
//! - A **size** is a whole number of bytes, or a whole number followed (no space) by one of
//!   [`SIZE_SUFFIXES`]: `B`, `KiB`, `MiB`, `GiB`, `TiB` (powers of 1024, exactly as written;
//!   `kib`, `KB` and `1.5GiB` are errors). More than `u64::MAX` bytes is an error.
//! - A **duration** is a number of seconds as `f64` reads it (`10`, `0.5`, `1e3`: what the flags
//!   took before suffixes), or a decimal number (`90`, `1.5`) followed by one of
//!   [`DURATION_SUFFIXES`]: `ms`, `s`, `m`, `h`, `d`. A suffixed value is converted exactly, and
//!   one finer than a nanosecond (`0.0000000001s`) or past [`Duration::MAX`] is an error.
//!
//! Ranges are the caller's: these functions only read the value. Errors do not repeat the value
//! or name a flag, since `clap` puts both in front of them.
#![forbid(unsafe_code)]

use std::num::IntErrorKind;
use std::time::Duration;

/// The size suffixes and how many bytes each is, largest first.
pub const SIZE_SUFFIXES: [(&str, u64); 5] = [
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("B", 1),
];

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// The duration suffixes and how many nanoseconds each is, largest first.
pub const DURATION_SUFFIXES: [(&str, u64); 5] = [
    ("d", 86_400 * 1_000_000_000),
    ("h", 3_600 * 1_000_000_000),
    ("m", 60 * 1_000_000_000),
    ("s", 1_000_000_000),
    ("ms", 1_000_000),
];

const SIZE_EXPECTED: &str =
    "expected a whole number of bytes, or one with B, KiB, MiB, GiB or TiB (64MiB)";
const DURATION_EXPECTED: &str =
    "expected seconds (0.5), or a number with ms, s, m, h or d (500ms, 90s, 2m, 12h, 30d)";

/// A size in bytes: `65536`, `64KiB`, `1GiB`, `0B`.
pub fn parse_size(v: &str) -> Result<u64, String> {
    let (number, unit) = SIZE_SUFFIXES
        .iter()
        .find_map(|&(suffix, unit)| v.strip_suffix(suffix).map(|n| (n, unit)))
        .unwrap_or((v, 1));
    // `u64`'s own parser, so a plain number reads as it did before suffixes existed.
    let n = number.parse::<u64>().map_err(|e| match e.kind() {
        IntErrorKind::PosOverflow => too_large_size(),
        _ => SIZE_EXPECTED.to_string(),
    })?;
    n.checked_mul(unit).ok_or_else(too_large_size)
}

fn too_large_size() -> String {
    format!("too large (more than {} bytes)", u64::MAX)
}

/// `n` bytes with the largest suffix that writes it exactly (`65536` → `64KiB`), or as a plain
/// number when none does (`0`, `1000`). [`parse_size`] reads it back as `n`.
pub fn format_size(n: u64) -> String {
    SIZE_SUFFIXES
        .iter()
        .take_while(|&&(suffix, _)| suffix != "B")
        .find(|&&(_, unit)| n != 0 && n.is_multiple_of(unit))
        .map_or_else(
            || n.to_string(),
            |&(suffix, unit)| format!("{}{suffix}", n / unit),
        )
}

/// A duration: plain seconds (`10`, `0.5`), or a number with a suffix (`500ms`, `90s`, `1.5h`,
/// `30d`).
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    // `ms` before `s` and `m`: "5ms" is five milliseconds, not an error.
    let suffixed = ["ms", "d", "h", "m", "s"].iter().find_map(|&suffix| {
        let (_, nanos) = DURATION_SUFFIXES.iter().find(|(s, _)| *s == suffix)?;
        v.strip_suffix(suffix).map(|n| (n, u128::from(*nanos)))
    });
    match suffixed {
        Some((number, unit)) => exact(number, unit),
        // No suffix: seconds as `f64` reads them, converted as `Duration::from_secs_f64` does
        // (to the nearest nanosecond).
        None => match v.parse::<f64>() {
            Ok(s) if s < 0.0 => Err("expected a duration of 0 or more".to_string()),
            Ok(s) if !s.is_nan() => {
                Duration::try_from_secs_f64(s).map_err(|_| too_large_duration())
            }
            _ => Err(DURATION_EXPECTED.to_string()),
        },
    }
}

/// `number` (`90`, `1.5`: digits, then optionally a point and digits) times `unit`
/// nanoseconds, exactly.
fn exact(number: &str, unit: u128) -> Result<Duration, String> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || (number.contains('.') && !digits(fraction)) {
        return Err(DURATION_EXPECTED.to_string());
    }
    let fraction = fraction.trim_end_matches('0');
    // Past 18 decimals no unit here (at most 2^16 · 5^11 ns) can make the value whole.
    if fraction.len() > 18 {
        return Err("finer than a nanosecond".to_string());
    }
    let mantissa = whole
        .bytes()
        .chain(fraction.bytes())
        .try_fold(0u128, |m, b| {
            m.checked_mul(10)?.checked_add(u128::from(b - b'0'))
        })
        .ok_or_else(too_large_duration)?;
    let scale = 10u128.pow(fraction.len() as u32);
    let scaled = mantissa.checked_mul(unit).ok_or_else(too_large_duration)?;
    if !scaled.is_multiple_of(scale) {
        return Err("finer than a nanosecond".to_string());
    }
    let nanos = scaled / scale;
    let secs = u64::try_from(nanos / NANOS_PER_SEC).map_err(|_| too_large_duration())?;
    Ok(Duration::new(secs, (nanos % NANOS_PER_SEC) as u32))
}

fn too_large_duration() -> String {
    "too large (more than 2^64 seconds)".to_string()
}

/// `d` with the largest suffix that writes it exactly (`90s` → `90s`, `120s` → `2m`), else
/// as seconds with a fraction (`1.000000001s`); `0s` for zero. [`parse_duration`] reads it
/// back as `d`.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_string();
    }
    match DURATION_SUFFIXES
        .iter()
        .find(|&&(_, unit)| nanos.is_multiple_of(u128::from(unit)))
    {
        Some(&(suffix, unit)) => format!("{}{suffix}", nanos / u128::from(unit)),
        None => {
            let fraction = format!("{:09}", d.subsec_nanos());
            format!("{}.{}s", d.as_secs(), fraction.trim_end_matches('0'))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sizes() {
        for (v, n) in [
            ("0", 0),
            ("65536", 65536),
            ("+7", 7),
            ("0B", 0),
            ("100B", 100),
            ("64KiB", 64 << 10),
            ("64MiB", 64 << 20),
            ("1GiB", 1 << 30),
            ("500GiB", 500 << 30),
            ("2TiB", 2 << 40),
            ("16777215TiB", 16_777_215 << 40),
            ("18446744073709551615", u64::MAX),
            ("18446744073709551615B", u64::MAX),
        ] {
            assert_eq!(parse_size(v), Ok(n), "{v}");
        }
        for v in [
            "", "B", "KiB", "-1", "1.5GiB", "64 MiB", " 64MiB", "64MiB ", "64kib", "64KB", "64K",
            "64M", "64mib", "64iB", "0x10", "1e3", "64MiBB", "MiB64", "64B64",
        ] {
            let e = parse_size(v).unwrap_err();
            assert!(e.starts_with("expected a whole number"), "{v}: {e}");
        }
        for v in [
            "16777216TiB",
            "18446744073709551616",
            "18446744073709551616B",
            "99999999999999999999999GiB",
        ] {
            let e = parse_size(v).unwrap_err();
            assert!(e.starts_with("too large"), "{v}: {e}");
        }
        assert_eq!(format_size(0), "0");
        assert_eq!(format_size(1000), "1000");
        assert_eq!(format_size(4096), "4KiB");
        assert_eq!(format_size(1 << 40), "1TiB");
        assert_eq!(format_size(3 << 50), "3072TiB");
    }

    #[test]
    fn durations() {
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        for (v, d) in [
            ("10", s(10)),
            ("0.5", ms(500)),
            ("1e3", s(1000)),
            ("+2", s(2)),
            ("0", Duration::ZERO),
            ("0.0999999999", ms(100)), // as `Duration::from_secs_f64` rounds it
            ("500ms", ms(500)),
            ("0.5ms", Duration::from_micros(500)),
            ("0.000001ms", Duration::from_nanos(1)),
            ("90s", s(90)),
            ("0.1s", ms(100)),
            ("1.000000001s", Duration::new(1, 1)),
            ("2m", s(120)),
            ("1.5m", s(90)),
            ("12h", s(12 * 3600)),
            ("1.5h", s(5400)),
            ("30d", s(30 * 86_400)),
            ("0d", Duration::ZERO),
            ("007s", s(7)),
            ("1.50000000000000000000000000000000000000000h", s(5400)),
        ] {
            assert_eq!(parse_duration(v), Ok(d), "{v}");
        }
        for v in [
            "", "s", "ms", "soon", "5 s", "5S", "5sec", "5mss", "5min", "1e3s", "+5s", "-5s",
            ".5s", "5.s", "1.2.3s", "5us", "5ns", "5w", "5y", "NaNs", "infs", "five",
        ] {
            let e = parse_duration(v).unwrap_err();
            assert!(e.starts_with("expected seconds"), "{v}: {e}");
        }
        for v in [
            "0.0000000001s",
            "0.0000001ms",
            "1.0000000000000000001ms",
            "1.00000000000000000000001d",
        ] {
            assert_eq!(
                parse_duration(v).unwrap_err(),
                "finer than a nanosecond",
                "{v}"
            );
        }
        for v in [
            "inf",
            "1e30",
            "213503982334602d",
            "18446744073709551616s",
            "999999999999999999999999999999999999999999s",
        ] {
            let e = parse_duration(v).unwrap_err();
            assert!(e.starts_with("too large"), "{v}: {e}");
        }
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("NaN").is_err());
        assert_eq!(parse_duration("18446744073709551615s"), Ok(s(u64::MAX)));
        assert_eq!(
            parse_duration("18446744073709551615.999999999s"),
            Ok(Duration::MAX)
        );
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(ms(100)), "100ms");
        assert_eq!(format_duration(s(86_400)), "1d");
        assert_eq!(format_duration(s(90)), "90s");
        assert_eq!(format_duration(Duration::new(1, 1)), "1.000000001s");
        assert_eq!(format_duration(Duration::from_micros(1500)), "0.0015s");
    }

    proptest! {
        /// `n` with each size suffix reads back as `n` times it, or as too large.
        #[test]
        fn size_with_each_suffix_round_trips(
            n in prop_oneof![any::<u64>(), 0u64..1 << 24, Just(u64::MAX)],
        ) {
            prop_assert_eq!(parse_size(&n.to_string()), Ok(n));
            for (suffix, unit) in SIZE_SUFFIXES {
                let v = format!("{n}{suffix}");
                match n.checked_mul(unit) {
                    Some(bytes) => prop_assert_eq!(parse_size(&v), Ok(bytes), "{}", v),
                    None => prop_assert!(parse_size(&v).unwrap_err().starts_with("too large")),
                }
            }
            prop_assert_eq!(parse_size(&format_size(n)), Ok(n));
        }

        /// A whole number, or one with a decimal fraction, with each duration suffix reads
        /// back exactly.
        #[test]
        fn duration_with_each_suffix_round_trips(
            n in prop_oneof![0u64..1 << 20, any::<u32>().prop_map(u64::from)],
            tenths in 0u64..10,
            nanos in 0u64..1 << 50,
        ) {
            let of = |total: u128| Duration::new(
                u64::try_from(total / NANOS_PER_SEC).unwrap(),
                (total % NANOS_PER_SEC) as u32,
            );
            for (suffix, unit) in DURATION_SUFFIXES {
                let unit = u128::from(unit);
                let v = format!("{n}{suffix}");
                prop_assert_eq!(parse_duration(&v), Ok(of(u128::from(n) * unit)), "{}", v);
                let v = format!("{n}.{tenths}{suffix}");
                let want = of(u128::from(n) * unit + u128::from(tenths) * unit / 10);
                prop_assert_eq!(parse_duration(&v), Ok(want), "{}", v);
            }
            // `nanos` as seconds and as milliseconds with all their decimals.
            let nanos = u128::from(nanos);
            for (suffix, unit, decimals) in [("s", NANOS_PER_SEC, 9), ("ms", 1_000_000, 6)] {
                let v = format!("{}.{:0decimals$}{suffix}", nanos / unit, nanos % unit);
                prop_assert_eq!(parse_duration(&v), Ok(of(nanos)), "{}", v);
            }
            let d = of(nanos);
            prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
            let d = Duration::new(u64::try_from(nanos).unwrap(), (nanos % NANOS_PER_SEC) as u32);
            prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }
}
