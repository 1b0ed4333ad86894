//! Instants as whole microseconds since the Unix epoch.
//!
//! The reference keeps times as Python floats and compares differences such as
//! `now - shutdown_at >= 600`. Whole microseconds make those comparisons exact
//! (no rounding at a window's edge), and the type cannot hold NaN or infinity.
//! Every time the reference can be given that is a multiple of one microsecond
//! (in particular every multiple of 0.5 s) is represented exactly.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const MICROS_PER_SEC: i64 = 1_000_000;

/// The largest second accepted: 9999-12-31T23:59:59Z, the end of RFC 3339 and
/// of `google.protobuf.Timestamp`. The smallest is its negation.
pub const MAX_UNIX_SECS: i64 = 253_402_300_799;

/// An instant, in whole microseconds since 1970-01-01T00:00:00Z.
///
/// Always within `±MAX_UNIX_SECS` seconds of the epoch, so the difference of
/// any two instants, and an instant plus any [`crate::Windows`] window, fit in
/// an `i64` of microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(i64);

/// Why a number could not be taken as a [`Time`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeError {
    /// The number was NaN or infinite.
    NotFinite,
    /// The number was finite but beyond year 9999 (or before year -9999).
    OutOfRange,
}

impl fmt::Display for TimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TimeError::NotFinite => f.write_str("time is not a finite number"),
            TimeError::OutOfRange => write!(
                f,
                "time is out of range (at most {MAX_UNIX_SECS} s from the Unix epoch, year 9999)"
            ),
        }
    }
}

impl std::error::Error for TimeError {}

impl Time {
    /// The Unix epoch, which the reference takes as "long ago".
    pub const ZERO: Time = Time(0);
    /// The latest representable instant, 9999-12-31T23:59:59Z.
    pub const MAX: Time = Time(MAX_UNIX_SECS * MICROS_PER_SEC);
    /// The earliest representable instant.
    pub const MIN: Time = Time(-MAX_UNIX_SECS * MICROS_PER_SEC);

    /// Takes seconds since the epoch, as the reference's floats, rounding to
    /// the nearest microsecond. Rejects NaN, infinities and out-of-range values.
    pub fn from_secs_f64(secs: f64) -> Result<Time, TimeError> {
        if !secs.is_finite() {
            return Err(TimeError::NotFinite);
        }
        if secs.abs() > MAX_UNIX_SECS as f64 {
            return Err(TimeError::OutOfRange);
        }
        // Whole and fractional parts apart: exact for every input in range.
        let whole = secs.trunc();
        let frac_micros = ((secs - whole) * MICROS_PER_SEC as f64).round() as i64;
        Time::from_micros(whole as i64 * MICROS_PER_SEC + frac_micros)
    }

    /// Takes whole microseconds since the epoch.
    pub fn from_micros(micros: i64) -> Result<Time, TimeError> {
        if (Time::MIN.0..=Time::MAX.0).contains(&micros) {
            Ok(Time(micros))
        } else {
            Err(TimeError::OutOfRange)
        }
    }

    /// Takes seconds and nanoseconds since the epoch (the fields of a
    /// `google.protobuf.Timestamp`), truncating to the microsecond.
    pub fn from_unix(secs: i64, nanos: u32) -> Result<Time, TimeError> {
        if secs.unsigned_abs() > MAX_UNIX_SECS as u64 || nanos >= 1_000_000_000 {
            return Err(TimeError::OutOfRange);
        }
        Time::from_micros(secs * MICROS_PER_SEC + i64::from(nanos / 1000))
    }

    /// Whole microseconds since the epoch.
    pub const fn as_micros(self) -> i64 {
        self.0
    }

    /// Seconds since the epoch, rounded towards negative infinity, and the
    /// nanoseconds within that second: the fields of a protobuf `Timestamp`.
    pub const fn as_unix(self) -> (i64, u32) {
        let secs = self.0.div_euclid(MICROS_PER_SEC);
        let micros = self.0.rem_euclid(MICROS_PER_SEC);
        (secs, (micros * 1000) as u32)
    }

    /// Seconds since the epoch as a float (exact up to 2^53 microseconds).
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / MICROS_PER_SEC as f64
    }

    /// The instant `span` later, or `None` past [`Time::MAX`].
    pub fn checked_add(self, span: Duration) -> Option<Time> {
        let micros = i64::try_from(span.as_micros()).ok()?;
        Time::from_micros(self.0.checked_add(micros)?).ok()
    }

    /// The instant `span` earlier, or `None` before [`Time::MIN`].
    pub fn checked_sub(self, span: Duration) -> Option<Time> {
        let micros = i64::try_from(span.as_micros()).ok()?;
        Time::from_micros(self.0.checked_sub(micros)?).ok()
    }

    /// The instant `span` later, capped at [`Time::MAX`].
    pub fn saturating_add(self, span: Duration) -> Time {
        self.checked_add(span).unwrap_or(Time::MAX)
    }

    /// The instant `span` earlier, capped at [`Time::MIN`].
    pub fn saturating_sub(self, span: Duration) -> Time {
        self.checked_sub(span).unwrap_or(Time::MIN)
    }

    /// How long after `earlier` this instant is; zero if it is not later.
    pub fn since(self, earlier: Time) -> Duration {
        // Both within range, so the difference cannot overflow.
        let micros = self.0 - earlier.0;
        Duration::from_micros(u64::try_from(micros).unwrap_or(0))
    }

    /// Microseconds from `earlier` to this instant (negative if earlier is later).
    pub(crate) const fn micros_since(self, earlier: Time) -> i64 {
        self.0 - earlier.0
    }
}

impl TryFrom<SystemTime> for Time {
    type Error = TimeError;

    fn try_from(t: SystemTime) -> Result<Time, TimeError> {
        match t.duration_since(UNIX_EPOCH) {
            Ok(after) => Time::ZERO.checked_add(after).ok_or(TimeError::OutOfRange),
            Err(before) => Time::ZERO
                .checked_sub(before.duration())
                .ok_or(TimeError::OutOfRange),
        }
    }
}

impl fmt::Display for Time {
    /// Seconds since the epoch with up to six decimals, as the reference's floats.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (secs, nanos) = self.as_unix();
        let micros = nanos / 1000;
        if micros == 0 {
            write!(f, "{secs}")
        } else {
            let frac = format!("{micros:06}");
            write!(f, "{secs}.{}", frac.trim_end_matches('0'))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_nan_and_infinities() {
        assert_eq!(Time::from_secs_f64(f64::NAN), Err(TimeError::NotFinite));
        assert_eq!(
            Time::from_secs_f64(f64::INFINITY),
            Err(TimeError::NotFinite)
        );
        assert_eq!(
            Time::from_secs_f64(f64::NEG_INFINITY),
            Err(TimeError::NotFinite)
        );
    }

    #[test]
    fn rejects_out_of_range() {
        assert_eq!(Time::from_secs_f64(1e12), Err(TimeError::OutOfRange));
        assert_eq!(Time::from_secs_f64(-1e12), Err(TimeError::OutOfRange));
        assert_eq!(
            Time::from_micros(Time::MAX.as_micros() + 1),
            Err(TimeError::OutOfRange)
        );
        assert_eq!(
            Time::from_unix(0, 1_000_000_000),
            Err(TimeError::OutOfRange)
        );
        assert!(Time::from_secs_f64(MAX_UNIX_SECS as f64).is_ok());
    }

    #[test]
    fn half_seconds_are_exact() {
        let t = Time::from_secs_f64(1_700_021_599.5).expect("in range");
        assert_eq!(t.as_micros(), 1_700_021_599_500_000);
        let far = Time::from_secs_f64(253_402_300_798.5).expect("in range");
        assert_eq!(far.as_micros(), 253_402_300_798_500_000);
        assert_eq!(t.to_string(), "1700021599.5");
    }

    #[test]
    fn unix_fields_round_trip_before_and_after_epoch() {
        for micros in [-1_500_000, -1, 0, 1, 1_700_000_000_250_000] {
            let t = Time::from_micros(micros).expect("in range");
            let (s, n) = t.as_unix();
            assert_eq!(Time::from_unix(s, n), Ok(t));
        }
    }

    #[test]
    fn arithmetic_saturates_at_the_range() {
        assert_eq!(Time::MAX.checked_add(Duration::from_micros(1)), None);
        assert_eq!(Time::MAX.saturating_add(Duration::from_secs(5)), Time::MAX);
        assert_eq!(Time::MIN.saturating_sub(Duration::from_secs(5)), Time::MIN);
        assert_eq!(Time::ZERO.since(Time::MAX), Duration::ZERO);
    }
}
