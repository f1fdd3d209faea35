use super::*;
use crate::time::rfc3339;
use chrono::DateTime;
use proptest::prelude::*;

fn parsed(s: &str) -> Option<(i64, i16)> {
    parse(s.as_bytes()).map(|t| (t.ms, t.offset_min))
}

fn printed(s: &str) -> String {
    let mut buf = [0; rfc3339::MAX_LEN];
    let n = rfc3339::write(parse(s.as_bytes()).expect(s), &mut buf);
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

const README_MS: i64 = 1_478_009_511_000; // 2016-11-01T14:11:51Z

#[test]
fn table_of_accepted_forms() {
    let rows: &[(&str, i64, i16, &str)] = &[
        (
            "Tue Nov 01 2016 09:11:51 GMT-0500 (CDT)",
            README_MS,
            -300,
            "2016-11-01T09:11:51-05:00",
        ),
        (
            "Tue Nov 01 2016 09:11:51 GMT-0500",
            README_MS,
            -300,
            "2016-11-01T09:11:51-05:00",
        ),
        (
            "2016-11-01T09:11:51-05:00",
            README_MS,
            -300,
            "2016-11-01T09:11:51-05:00",
        ),
        ("2016-11-01t14:11:51z", README_MS, 0, "2016-11-01T14:11:51Z"),
        (
            "2016-11-01 14:11:51.5Z",
            README_MS + 500,
            0,
            "2016-11-01T14:11:51.500Z",
        ),
        (
            "2016-11-01T14:11:51.123456789+00:00",
            README_MS + 123,
            0,
            "2016-11-01T14:11:51.123Z",
        ),
        (
            "2016-11-01T19:41:51+0530",
            README_MS,
            330,
            "2016-11-01T19:41:51+05:30",
        ),
        (
            "2016-11-01T16:11:51+02",
            README_MS,
            120,
            "2016-11-01T16:11:51+02:00",
        ),
        (
            "Tue, 01 Nov 2016 14:11:51 GMT",
            README_MS,
            0,
            "2016-11-01T14:11:51Z",
        ),
        (
            "1 Nov 2016 09:11:51 CDT",
            README_MS,
            -300,
            "2016-11-01T09:11:51-05:00",
        ),
        (
            "Tue, 1 Nov 2016 09:11 -0500",
            README_MS - 51_000,
            -300,
            "2016-11-01T09:11:00-05:00",
        ),
        ("1478009511000", README_MS, 0, "2016-11-01T14:11:51Z"),
        ("-1000", -1000, 0, "1969-12-31T23:59:59Z"),
        (
            "2016-11-01T09:11:51-18:00",
            README_MS + 13 * 3_600_000,
            -1080,
            "2016-11-01T09:11:51-18:00",
        ),
        (
            "0000-01-01T00:00:00Z",
            -62_167_219_200_000,
            0,
            "0000-01-01T00:00:00Z",
        ),
        (
            "9999-12-31T23:59:59.999Z",
            253_402_300_799_999,
            0,
            "9999-12-31T23:59:59.999Z",
        ),
    ];
    for &(input, ms, off, out) in rows {
        assert_eq!(parsed(input), Some((ms, off)), "{input}");
        assert_eq!(printed(input), out, "{input}");
    }
}

#[test]
fn table_of_rejected_forms() {
    for input in [
        "",
        "2016-02-30T00:00:00Z",      // no Feb 30
        "2017-02-29T00:00:00Z",      // not a leap year
        "2016-11-01T24:00:00Z",      // hour 24
        "2016-11-01T23:60:00Z",      // minute 60
        "2016-11-01T23:59:60Z",      // leap seconds are not stored
        "2016-11-01T09:11:51-18:01", // offset beyond ±18:00
        "2016-11-01T09:11:51+19:00",
        "2016-11-01T09:11:51+05:60",
        "2016-11-01T09:11:51",   // no offset
        "2016-11-01T09:11Z",     // no seconds
        "2016-11-01T09:11:51.Z", // empty fraction
        "2016-13-01T09:11:51Z",
        "2016-11-01T09:11:51Z ",                   // trailing space
        "Wed Nov 01 2016 09:11:51 GMT-0500 (CDT)", // weekday contradicts the date
        "Tue Nov 01 2016 09:11:51 GMT-0500 (CDT",  // unclosed zone name
        "Tue Nov 01 2016 09:11:51 GMT-0500 (CDT) x",
        "Tue Nov 01 2016 09:11:51",
        "Tue Foo 01 2016 09:11:51 GMT-0500",
        "Wed, 01 Nov 2016 14:11:51 GMT",
        "Tue, 01 Nov 2016 14:11:51 XYZ",
        "Tue, 01 Nov 2016 14:11:51 -0500x",
        "Tue, 31 Nov 2016 14:11:51 GMT",
        "99999999999999999999",
        "1e3",
        "-",
        "253402300800000", // year 10000
        "now",
    ] {
        assert_eq!(parsed(input), None, "{input:?} must be rejected");
    }
}

#[test]
fn epoch_range() {
    assert!(from_epoch_ms(0).is_some());
    assert!(from_epoch_ms(253_402_300_799_999).is_some());
    assert!(from_epoch_ms(253_402_300_800_000).is_none());
    assert!(from_epoch_ms(-62_167_219_200_000).is_some());
    assert!(from_epoch_ms(-62_167_219_200_001).is_none());
    assert!(from_epoch_ms(i64::MIN).is_none());
}

/// The oracle: chrono's parser for the same form, plus API.md's limits (±18:00, years 0..=9999).
fn oracle(form: u8, s: &str) -> Option<(i64, i16)> {
    let dt = match form {
        0 => DateTime::parse_from_rfc3339(s).ok()?,
        1 => {
            let core = s.split(" (").next().unwrap();
            DateTime::parse_from_str(core, "%a %b %d %Y %H:%M:%S GMT%z").ok()?
        }
        _ => DateTime::parse_from_rfc2822(s).ok()?,
    };
    let off = dt.offset().local_minus_utc() / 60;
    let year = dt
        .naive_local()
        .format("%Y")
        .to_string()
        .parse::<i64>()
        .ok()?;
    if off.abs() > 18 * 60 || !(0..=9999).contains(&year) {
        return None;
    }
    Some((dt.timestamp_millis(), off as i16))
}

fn arb_input() -> impl Strategy<Value = (u8, String)> {
    (
        0u8..3,
        (1000i64..=9999, 0u32..=13, 0u32..=32),
        (0u32..=24, 0u32..=60, 0u32..=59, 0u32..1000),
        (any::<bool>(), 0i32..=19, 0i32..=60),
        (0usize..7, any::<bool>(), any::<bool>()),
    )
        .prop_map(
            |(form, (y, mo, d), (h, mi, s, ms), (neg, oh, om), (wd, real_wd, frac))| {
                let sign = if neg { '-' } else { '+' };
                let months = [
                    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
                    "Dec",
                ];
                let days = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
                let valid = (1..=12).contains(&mo)
                    && d >= 1
                    && d <= crate::time::civil::days_in_month(y, mo);
                let wd = if real_wd && valid {
                    crate::time::civil::weekday(crate::time::civil::days_from_civil(y, mo, d))
                        as usize
                } else {
                    wd
                };
                let mon = months
                    .get((mo as usize).wrapping_sub(1))
                    .copied()
                    .unwrap_or("Foo");
                let s = match form {
                    0 if frac => format!(
                        "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}{sign}{oh:02}:{om:02}"
                    ),
                    0 => {
                        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{sign}{oh:02}:{om:02}")
                    }
                    1 => format!(
                        "{} {mon} {d:02} {y} {h:02}:{mi:02}:{s:02} GMT{sign}{oh:02}{om:02} (XYZ)",
                        days[wd]
                    ),
                    _ => format!(
                        "{}, {d} {mon} {y} {h:02}:{mi:02}:{s:02} {sign}{oh:02}{om:02}",
                        days[wd]
                    ),
                };
                (form, s)
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn agrees_with_chrono((form, s) in arb_input()) {
        prop_assert_eq!(parsed(&s), oracle(form, &s), "input {:?}", s);
    }

    #[test]
    fn printed_form_parses_back_to_the_same_instant((_, s) in arb_input()) {
        if let Some(ts) = parse(s.as_bytes()) {
            let mut buf = [0; rfc3339::MAX_LEN];
            let n = rfc3339::write(ts, &mut buf);
            prop_assert_eq!(parse(&buf[..n]), Some(ts));
            let text = std::str::from_utf8(&buf[..n]).unwrap();
            let again = DateTime::parse_from_rfc3339(text).unwrap();
            prop_assert_eq!(again.timestamp_millis(), ts.ms);
        }
    }

    #[test]
    fn epoch_ms_agrees_with_chrono(ms in -62_167_219_200_000i64..253_402_300_800_000) {
        let ts = from_epoch_ms(ms).unwrap();
        let mut buf = [0; rfc3339::MAX_LEN];
        let n = rfc3339::write(ts, &mut buf);
        let want = DateTime::from_timestamp_millis(ms).unwrap().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let want = want.replace(".000Z", "Z");
        prop_assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), want);
    }

    #[test]
    fn never_panics_on_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..48)) {
        let _ = parse(&bytes);
    }
}
