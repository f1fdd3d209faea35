//! Proleptic Gregorian calendar arithmetic on day numbers (days since 1970-01-01).

pub const MS_PER_DAY: i64 = 86_400_000;

/// Whether `y` is a leap year.
pub const fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

/// Days in month `m` (1..=12) of year `y`.
pub const fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Day number of a valid civil date (H. Hinnant's `days_from_civil`).
pub const fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = m as i64;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Civil date `(year, month, day)` of a day number.
pub const fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    (y, m, d)
}

/// Day of the week of a day number: 0 = Monday … 6 = Sunday.
pub const fn weekday(z: i64) -> u32 {
    (z + 3).rem_euclid(7) as u32
}

/// Day number of 0000-01-01 and of 9999-12-31: the range every stored local date lies in.
pub const MIN_DAY: i64 = days_from_civil(0, 1, 1);
pub const MAX_DAY: i64 = days_from_civil(9999, 12, 31);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2016, 11, 1), 17_106);
        assert_eq!(civil_from_days(17_106), (2016, 11, 1));
        assert_eq!(weekday(0), 3, "1970-01-01 was a Thursday");
        assert_eq!(weekday(17_106), 1, "2016-11-01 was a Tuesday");
        assert_eq!(civil_from_days(MIN_DAY), (0, 1, 1));
        assert_eq!(civil_from_days(MAX_DAY), (9999, 12, 31));
    }

    #[test]
    fn round_trip_every_day_of_four_centuries() {
        let mut z = days_from_civil(1800, 1, 1);
        for y in 1800..2200 {
            for m in 1..=12 {
                for d in 1..=days_in_month(y, m) {
                    assert_eq!(days_from_civil(y, m, d), z);
                    assert_eq!(civil_from_days(z), (y, m, d));
                    z += 1;
                }
            }
        }
    }

    #[test]
    fn leap_years() {
        assert!(is_leap(2000) && is_leap(2016) && !is_leap(1900) && !is_leap(2017));
        assert_eq!(days_in_month(2016, 2), 29);
        assert_eq!(days_in_month(2100, 2), 28);
        assert_eq!(days_in_month(2016, 13), 0);
    }
}
