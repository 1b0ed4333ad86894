//! Helpers the server's unit tests share.

use fleet_health_sensor::Time;

/// A moment to start tests at (2023-11-14T22:13:20Z).
pub(crate) const T0: i64 = 1_700_000_000;

/// `s` seconds after the epoch, as a [`Time`].
pub(crate) fn t(s: i64) -> Time {
    Time::from_micros(s * 1_000_000).expect("in range")
}
