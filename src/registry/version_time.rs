//! Version times as people and file names spell them: a version's
//! timestamp (ms since the Unix epoch, UTC) as the sortable ISO 8601 name
//! `2026-12-01T21:28:59.119Z` that `.versions/<file>/` and `modelfs log`
//! show, the times `--at` accepts, and the durations `--older-than`
//! accepts. Pure functions; no clock is read here except by callers.

/// Milliseconds in a day.
const DAY_MS: u64 = 86_400_000;

/// `ms` as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC): sorts as the times sort, for
/// every time from 1970 to year 9999.
pub fn format_ms(ms: u64) -> String {
    let days = ms / DAY_MS;
    let rem = ms % DAY_MS;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600_000,
        rem % 3_600_000 / 60_000,
        rem % 60_000 / 1000,
        rem % 1000
    )
}

/// Parses a time: ISO 8601 in UTC or with an offset
/// (`2026-12-01T21:28:59.119Z`, `2026-12-01T21:28:59+02:00`,
/// `2026-12-01T21:28Z`, `2026-12-01` for midnight UTC), a space in place of
/// `T`, `UTC` in place of `Z` (`modelfs ls -l`'s form), or milliseconds
/// since the epoch (`ms:1796196396224`). Fractions finer than a
/// millisecond are cut. `None` when it is none of these.
pub fn parse(text: &str) -> Option<u64> {
    let t = text.trim();
    if let Some(ms) = t.strip_prefix("ms:") {
        return ms.parse().ok();
    }
    let (date, rest) = match t.find(['T', 't', ' ']) {
        Some(i) => (&t[..i], t[i + 1..].trim()),
        None => (t, ""),
    };
    let days = parse_date(date)?;
    let (clock, offset_min) = split_offset(rest)?;
    let of_day = if clock.is_empty() { 0 } else { parse_clock(clock)? };
    let utc = (days as i64)
        .checked_mul(DAY_MS as i64)?
        .checked_add(of_day as i64)?
        .checked_sub(offset_min.checked_mul(60_000)?)?;
    u64::try_from(utc).ok()
}

/// Parses a duration: a number with a unit `s`, `m`, `h`, `d` or `w`
/// (`90s`, `12h`, `7d`), or several (`1d12h`); in ms.
pub fn parse_duration(text: &str) -> Option<u64> {
    let mut total: u64 = 0;
    let mut digits = String::new();
    let mut any = false;
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit: u64 = match c {
            's' => 1000,
            'm' => 60_000,
            'h' => 3_600_000,
            'd' => DAY_MS,
            'w' => 7 * DAY_MS,
            _ => return None,
        };
        let n: u64 = digits.parse().ok()?;
        total = total.checked_add(n.checked_mul(unit)?)?;
        digits.clear();
        any = true;
    }
    (any && digits.is_empty()).then_some(total)
}

/// `HH:MM[:SS[.fff]]` as ms into the day.
fn parse_clock(clock: &str) -> Option<u64> {
    let mut parts = clock.split(':');
    let h: u64 = number(parts.next()?, 2)?;
    let m: u64 = number(parts.next()?, 2)?;
    let (s, frac) = match parts.next() {
        Some(sec) => match sec.split_once(['.', ',']) {
            Some((s, f)) => (number(s, 2)?, f),
            None => (number(sec, 2)?, ""),
        },
        None => (0, ""),
    };
    if parts.next().is_some() || h > 23 || m > 59 || s > 60 || !frac.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let mut ms_text: String = frac.chars().take(3).collect();
    while ms_text.len() < 3 {
        ms_text.push('0');
    }
    let ms: u64 = ms_text.parse().ok()?;
    Some(((h * 60 + m) * 60 + s) * 1000 + ms)
}

/// Splits the zone off a clock: `Z`, ` UTC`, `+HH:MM`, `-HHMM` or nothing
/// (UTC); the offset in minutes east of UTC.
fn split_offset(rest: &str) -> Option<(&str, i64)> {
    for z in ["Z", "z", "UTC"] {
        if let Some(clock) = rest.strip_suffix(z) {
            return Some((clock.trim(), 0));
        }
    }
    let Some(i) = rest.rfind(['+', '-']) else {
        return Some((rest, 0));
    };
    let (clock, zone) = (&rest[..i], &rest[i..]);
    let sign = if zone.starts_with('-') { -1 } else { 1 };
    let digits: String = zone[1..].chars().filter(|c| *c != ':').collect();
    if digits.len() != 4 && digits.len() != 2 {
        return None;
    }
    let h: i64 = digits.get(..2)?.parse().ok()?;
    let m: i64 = digits
        .get(2..)
        .filter(|s| !s.is_empty())
        .map_or(Some(0), |s| s.parse().ok())?;
    Some((clock.trim(), sign * (h * 60 + m)))
}

/// `YYYY-MM-DD` as days since 1970-01-01.
fn parse_date(date: &str) -> Option<u64> {
    let mut parts = date.split('-');
    let y: i64 = number(parts.next()?, 4)? as i64;
    let m: u64 = number(parts.next()?, 2)?;
    let d: u64 = number(parts.next()?, 2)?;
    if parts.next().is_some() || !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
        return None;
    }
    u64::try_from(days_from_civil(y, m, d)).ok()
}

/// Exactly `width` ASCII digits as a number.
fn number(s: &str, width: usize) -> Option<u64> {
    (s.len() == width && s.chars().all(|c| c.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

fn days_in_month(y: i64, m: u64) -> u64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a civil date (the proleptic Gregorian
/// calendar, by eras of 400 years).
fn days_from_civil(y: i64, m: u64, d: u64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date `(year, month, day)` of a day counted from 1970-01-01
/// (Howard Hinnant's algorithm).
pub fn civil_from_days(days: i64) -> (i64, u64, u64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u64;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u64;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_the_sortable_name() {
        assert_eq!(format_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_ms(1_796_196_396_224), "2026-12-02T07:26:36.224Z");
        assert_eq!(format_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn parses_what_it_formats_and_other_spellings() {
        for ms in [0, 1_796_196_396_224, 951_782_400_000, 4_102_444_799_999] {
            assert_eq!(parse(&format_ms(ms)), Some(ms), "{}", format_ms(ms));
        }
        let t = 1_796_196_396_224;
        assert_eq!(parse("2026-12-02 07:26:36.224 UTC"), Some(t));
        assert_eq!(parse("2026-12-02T09:26:36.224+02:00"), Some(t));
        assert_eq!(parse("2026-12-02T02:26:36.224-0500"), Some(t));
        assert_eq!(parse("2026-12-02T07:26:36.224999Z"), Some(t));
        assert_eq!(parse("2026-12-02T07:26Z"), Some(t - 36_224));
        assert_eq!(parse("2026-12-02"), Some(t - 26_796_224));
        assert_eq!(parse("ms:1796196396224"), Some(t));
        for bad in [
            "",
            "production",
            "2026-13-01",
            "2026-02-30",
            "2026-12-02T25:00Z",
            "2026-12-02Tnoon",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("90s"), Some(90_000));
        assert_eq!(parse_duration("1d12h"), Some(36 * 3_600_000));
        assert_eq!(parse_duration("2w"), Some(14 * DAY_MS));
        for bad in ["", "12", "3y", "h"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }
}
