//! How times and durations are shown: RFC 3339 in UTC for scripts,
//! "2h13m" and "12s ago" for people.

use std::time::Duration;

use fleet_health_client::Time;

/// A time as RFC 3339 in UTC: `2024-05-01T12:00:00Z`, with six decimals
/// (`…:00.250000Z`) only when it is not a whole second. Written by `jiff`
/// from the civil date and time in UTC (the whole range of a [`Time`]).
pub fn format_time(t: Time) -> String {
    let (secs, nanos) = t.as_unix();
    // A Time holds whole microseconds.
    let micros = nanos / 1000;
    let since_epoch = jiff::SignedDuration::new(secs, (micros * 1000) as i32);
    let utc = jiff::civil::date(1970, 1, 1)
        .at(0, 0, 0, 0)
        .checked_add(since_epoch)
        .unwrap_or(jiff::civil::DateTime::MAX);
    if micros == 0 {
        format!("{utc:.0}Z")
    } else {
        format!("{utc:.6}Z")
    }
}

/// A duration as a person reads it: the two largest units, `2h13m`, `5m20s`,
/// `3d4h`, `42s`.
pub fn human_duration(d: Duration) -> String {
    let total = d.as_secs();
    let (days, hours, minutes, seconds) = (
        total / 86_400,
        total % 86_400 / 3600,
        total % 3600 / 60,
        total % 60,
    );
    let pair = |a: u64, ua: &str, b: u64, ub: &str| {
        if b == 0 {
            format!("{a}{ua}")
        } else {
            format!("{a}{ua}{b}{ub}")
        }
    };
    if days > 0 {
        pair(days, "d", hours, "h")
    } else if hours > 0 {
        pair(hours, "h", minutes, "m")
    } else if minutes > 0 {
        pair(minutes, "m", seconds, "s")
    } else {
        format!("{seconds}s")
    }
}

/// `then` relative to `now`: `"2h13m ago"` or `"in 3h"`.
pub fn relative(then: Time, now: Time) -> String {
    if then <= now {
        format!("{} ago", human_duration(now.since(then)))
    } else {
        format!("in {}", human_duration(then.since(now)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Time {
        Time::from_unix(secs, 0).unwrap()
    }

    const NOW: i64 = 1_714_564_800; // 2024-05-01T12:00:00Z

    #[test]
    fn format_is_rfc3339_utc() {
        assert_eq!(format_time(at(NOW)), "2024-05-01T12:00:00Z");
        assert_eq!(format_time(at(0)), "1970-01-01T00:00:00Z");
        assert_eq!(format_time(at(-1)), "1969-12-31T23:59:59Z");
        let t = Time::from_unix(NOW, 250_000_000).unwrap();
        assert_eq!(format_time(t), "2024-05-01T12:00:00.250000Z");
    }

    #[test]
    fn durations_read_like_a_person_says_them() {
        let cases = [
            (0, "0s"),
            (42, "42s"),
            (60, "1m"),
            (320, "5m20s"),
            (3600, "1h"),
            (2 * 3600 + 13 * 60 + 59, "2h13m"),
            (86_400, "1d"),
            (3 * 86_400 + 4 * 3600 + 5, "3d4h"),
            (400 * 86_400, "400d"),
        ];
        for (secs, text) in cases {
            assert_eq!(human_duration(Duration::from_secs(secs)), text);
        }
        assert_eq!(human_duration(Duration::from_millis(999)), "0s");
        assert_eq!(relative(at(NOW - 8000), at(NOW)), "2h13m ago");
        assert_eq!(relative(at(NOW + 3 * 3600), at(NOW)), "in 3h");
    }
}
