//! Conversions between the sensor's [`Time`] and the wire's timestamps and
//! durations.

use std::time::{Duration, SystemTime};

use fleet_health_sensor::{Time, TimeError};

/// The current time of this machine's clock.
///
/// # Panics
///
/// Never in practice: only if the system clock is set beyond year 9999.
pub fn now() -> Time {
    Time::try_from(SystemTime::now()).expect("the system clock is before year 9999")
}

/// A [`Time`] as a protobuf timestamp.
pub fn to_timestamp(t: Time) -> prost_types::Timestamp {
    let (seconds, nanos) = t.as_unix();
    prost_types::Timestamp {
        seconds,
        // At most 999_999_000, so it fits.
        nanos: i32::try_from(nanos).unwrap_or(999_999_999),
    }
}

/// A protobuf timestamp as a [`Time`] (truncated to the microsecond), or an
/// error if it is out of range or not normalized.
pub fn from_timestamp(ts: &prost_types::Timestamp) -> Result<Time, TimeError> {
    let nanos = u32::try_from(ts.nanos).map_err(|_| TimeError::OutOfRange)?;
    Time::from_unix(ts.seconds, nanos)
}

/// An optional protobuf timestamp as a [`Time`]; `None` when unset or invalid.
pub fn opt_time(ts: Option<&prost_types::Timestamp>) -> Option<Time> {
    ts.and_then(|ts| from_timestamp(ts).ok())
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
        assert_eq!(opt_time(None), None);
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
