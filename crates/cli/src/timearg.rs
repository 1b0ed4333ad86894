//! TIME and DURATION arguments: RFC 3339, epoch seconds, or relative to now;
//! `10s`, `500ms`. (How times are shown is in `render::time`.)

use std::time::Duration;

use fleet_health_client::Time;

/// Parses a TIME: RFC 3339 (`2024-05-01T12:00:00Z`, `2024-05-01 14:00:00+02:00`),
/// epoch seconds (`1714564800`, `1714564800.25`), relative to `now` (`-7h`,
/// `+2h`, `-90s`, `-1h30m`), or `now`.
pub fn parse_time(input: &str, now: Time) -> Result<Time, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err("empty TIME".into());
    }
    if s.eq_ignore_ascii_case("now") {
        return Ok(now);
    }
    if let Some(rest) = s.strip_prefix('+').or_else(|| s.strip_prefix('-')) {
        let span = parse_span(rest).map_err(|e| {
            format!("invalid relative TIME {s:?}: {e} (examples: -7h, +2h, -90s, -1h30m)")
        })?;
        let t = if s.starts_with('+') {
            now.checked_add(span)
        } else {
            now.checked_sub(span)
        };
        return t.ok_or_else(|| format!("TIME {s:?} is out of range"));
    }
    if s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return parse_epoch(s);
    }
    parse_rfc3339(s)
}

/// A span such as `7h`, `90s`, `1h30m`, `2d`: a number needs a unit.
fn parse_span(s: &str) -> Result<Duration, String> {
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return Err("a unit is needed (s, m, h, d)".into());
    }
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

fn parse_epoch(s: &str) -> Result<Time, String> {
    let invalid = || format!("invalid epoch seconds {s:?}");
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty() || frac.contains('.') {
        return Err(invalid());
    }
    let secs: i64 = whole.parse().map_err(|_| invalid())?;
    let nanos = parse_fraction(frac).ok_or_else(invalid)?;
    Time::from_unix(secs, nanos).map_err(|e| format!("{s:?}: {e}"))
}

/// Up to nine digits after the point, as nanoseconds (more are cut off).
fn parse_fraction(digits: &str) -> Option<u32> {
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut nanos = 0u32;
    for i in 0..9 {
        let d = digits.as_bytes().get(i).map_or(0, |b| u32::from(b - b'0'));
        nanos = nanos * 10 + d;
    }
    Some(nanos)
}

/// Parses an RFC 3339 timestamp with a `Z` or numeric offset; `T`, `t` or a
/// space between date and time (read by `jiff`). The civil date and time
/// and the offset are taken apart, so that the whole range of a [`Time`]
/// (up to the end of year 9999 in UTC) is accepted.
pub fn parse_rfc3339(s: &str) -> Result<Time, String> {
    let invalid = |why: &str| {
        format!(
            "invalid TIME {s:?}: {why} (use RFC 3339 like 2024-05-01T12:00:00Z, epoch seconds, or -7h / +2h)"
        )
    };
    let pieces = jiff::fmt::temporal::Pieces::parse(s).map_err(|e| invalid(&e.to_string()))?;
    let time = pieces
        .time()
        .ok_or_else(|| invalid("a time of day is needed"))?;
    let offset = pieces
        .to_numeric_offset()
        .ok_or_else(|| invalid("a time zone is needed: Z or an offset like +02:00"))?;
    if pieces.time_zone_annotation().is_some() {
        return Err(invalid("a bracketed time zone is not RFC 3339"));
    }
    let since_epoch = pieces
        .date()
        .to_datetime(time)
        .duration_since(jiff::civil::date(1970, 1, 1).at(0, 0, 0, 0))
        - jiff::SignedDuration::from_secs(i64::from(offset.seconds()));
    let nanos = u32::try_from(since_epoch.subsec_nanos())
        .ok()
        .filter(|_| since_epoch.as_secs() >= 0 || since_epoch.subsec_nanos() == 0);
    let (secs, nanos) = match nanos {
        Some(n) => (since_epoch.as_secs(), n),
        // A negative time with a fraction: one second less, plus the rest.
        None => (
            since_epoch.as_secs() - 1,
            u32::try_from(1_000_000_000 + since_epoch.subsec_nanos()).unwrap_or(0),
        ),
    };
    Time::from_unix(secs, nanos).map_err(|e| invalid(&e.to_string()))
}

/// Parses a duration flag such as `10s`, `500ms`, `2m`.
pub fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Time {
        Time::from_unix(secs, 0).unwrap()
    }

    const NOW: i64 = 1_714_564_800; // 2024-05-01T12:00:00Z

    #[test]
    fn rfc3339_with_zones_fractions_and_separators() {
        let now = at(0);
        let cases = [
            ("2024-05-01T12:00:00Z", NOW, 0),
            ("2024-05-01t12:00:00z", NOW, 0),
            ("2024-05-01 12:00:00Z", NOW, 0),
            ("2024-05-01T14:00:00+02:00", NOW, 0),
            ("2024-05-01T07:30:00-04:30", NOW, 0),
            ("2024-05-01T12:00:00.25Z", NOW, 250_000_000),
            ("2024-05-01T12:00:00.123456789Z", NOW, 123_456_000),
            ("1970-01-01T00:00:00Z", 0, 0),
            ("2000-02-29T00:00:00Z", 951_782_400, 0),
            ("1969-12-31T23:59:59Z", -1, 0),
        ];
        for (text, secs, nanos) in cases {
            let t = parse_time(text, now).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(t.as_unix(), (secs, nanos), "{text}");
        }
    }

    #[test]
    fn bad_rfc3339_is_refused_with_a_hint() {
        for bad in [
            "2024-05-01T12:00:00",
            "2024-13-01T12:00:00Z",
            "2023-02-29T12:00:00Z",
            "2024-05-01T24:00:00Z",
            "2024-05-01T12:00:00.Z",
            "2024-05-01T12:00:00+2:00",
            "yesterday",
            "2024/05/01 12:00:00Z",
        ] {
            let err = parse_time(bad, at(NOW)).unwrap_err();
            assert!(err.contains(bad) || err.contains("TIME"), "{bad}: {err}");
        }
    }

    #[test]
    fn epoch_seconds() {
        assert_eq!(parse_time("1714564800", at(0)), Ok(at(NOW)));
        assert_eq!(
            parse_time("1714564800.5", at(0)).unwrap().as_unix(),
            (NOW, 500_000_000)
        );
        assert!(parse_time("1.2.3", at(0)).is_err());
        assert!(parse_time(".5", at(0)).is_err());
        assert!(parse_time("99999999999999", at(0)).is_err());
    }

    #[test]
    fn relative_to_now() {
        let now = at(NOW);
        assert_eq!(parse_time("-7h", now), Ok(at(NOW - 7 * 3600)));
        assert_eq!(parse_time("+2h", now), Ok(at(NOW + 2 * 3600)));
        assert_eq!(parse_time("-90s", now), Ok(at(NOW - 90)));
        assert_eq!(parse_time("-1h30m", now), Ok(at(NOW - 5400)));
        assert_eq!(parse_time("-11min", now), Ok(at(NOW - 660)));
        assert_eq!(parse_time("+1d", now), Ok(at(NOW + 86_400)));
        assert_eq!(parse_time("now", now), Ok(now));
        let err = parse_time("-90", now).unwrap_err();
        assert!(err.contains("unit"), "{err}");
        assert!(parse_time("-soon", now).is_err());
    }

    #[test]
    fn what_is_shown_parses_back() {
        use crate::render::time::format_time;
        for secs in [
            0,
            951_782_400,
            4_102_444_800,
            253_402_300_798,
            -86_400 * 400,
        ] {
            let t = Time::from_unix(secs, 123_000).unwrap();
            assert_eq!(parse_rfc3339(&format_time(t)), Ok(t), "{secs}");
        }
    }

    #[test]
    fn duration_flags() {
        assert_eq!(parse_duration_arg("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration_arg("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration_arg("ten").is_err());
    }
}
