//! Conversions between the sensor's [`Time`] and the wire's timestamps and
//! durations, and this machine's clock. None of them panics or truncates:
//! a value out of range is an error or saturates, as each says.

use std::time::{Duration, SystemTime};

use fleet_health_sensor::{Time, TimeError};

/// The current time of this machine's clock, saturating at [`Time::MIN`] and
/// [`Time::MAX`] (years -9999 and 9999) if the clock is set beyond them.
pub fn now() -> Time {
    clamp_system_time(SystemTime::now())
}

/// A system time as a [`Time`], saturating outside the range of [`Time`].
fn clamp_system_time(t: SystemTime) -> Time {
    Time::try_from(t).unwrap_or_else(|_| {
        if t > SystemTime::UNIX_EPOCH {
            Time::MAX
        } else {
            Time::MIN
        }
    })
}

/// A [`Time`] as a protobuf timestamp.
pub fn to_timestamp(t: Time) -> prost_types::Timestamp {
    let (seconds, nanos) = t.as_unix();
    prost_types::Timestamp {
        seconds,
        // A Time's nanoseconds are below one second, so they always fit.
        nanos: i32::try_from(nanos).unwrap_or(999_999_999),
    }
}

/// A protobuf timestamp as a [`Time`] (truncated to the microsecond), or an
/// error if it is out of range or not normalized.
pub fn from_timestamp(ts: &prost_types::Timestamp) -> Result<Time, TimeError> {
    let nanos = u32::try_from(ts.nanos).map_err(|_| TimeError::OutOfRange)?;
    Time::from_unix(ts.seconds, nanos)
}

/// A protobuf duration as a [`Duration`]; `None` if unset or negative.
pub fn from_proto_duration(d: Option<&prost_types::Duration>) -> Option<Duration> {
    let d = d?;
    let secs = u64::try_from(d.seconds).ok()?;
    let nanos = u32::try_from(d.nanos).ok()?;
    if nanos >= 1_000_000_000 {
        return None;
    }
    Some(Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip() {
        for micros in [0, 1, 1_700_000_000_123_456, -1_500_000] {
            let t = Time::from_micros(micros).unwrap();
            let ts = to_timestamp(t);
            assert!((0..1_000_000_000).contains(&ts.nanos));
            assert_eq!(from_timestamp(&ts), Ok(t));
        }
        assert!(
            from_timestamp(&prost_types::Timestamp {
                seconds: 0,
                nanos: -1
            })
            .is_err()
        );
        assert!(
            from_timestamp(&prost_types::Timestamp {
                seconds: 0,
                nanos: 1_000_000_000
            })
            .is_err()
        );
        assert!(
            from_timestamp(&prost_types::Timestamp {
                seconds: i64::MAX,
                nanos: 0
            })
            .is_err()
        );
        // Extreme times keep their nanoseconds on the wire.
        let ts = to_timestamp(Time::MAX.saturating_sub(Duration::from_micros(1)));
        assert_eq!(ts.nanos, 999_999_000);
    }

    #[test]
    fn the_clock_saturates_instead_of_panicking() {
        let far = SystemTime::UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        assert_eq!(clamp_system_time(far), Time::MAX);
        let before = SystemTime::UNIX_EPOCH - Duration::from_secs(400_000_000_000);
        assert_eq!(clamp_system_time(before), Time::MIN);
        let t = clamp_system_time(SystemTime::UNIX_EPOCH + Duration::from_micros(1_500_000));
        assert_eq!(t, Time::from_micros(1_500_000).unwrap());
    }

    #[test]
    fn durations_convert_and_refuse_negatives() {
        let d = prost_types::Duration {
            seconds: 30,
            nanos: 5,
        };
        assert_eq!(from_proto_duration(Some(&d)), Some(Duration::new(30, 5)));
        let neg = prost_types::Duration {
            seconds: -1,
            nanos: 0,
        };
        assert_eq!(from_proto_duration(Some(&neg)), None);
        assert_eq!(from_proto_duration(None), None);
    }
}
