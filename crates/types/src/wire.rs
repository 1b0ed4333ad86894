//! Conversions between the vocabulary and the protobuf messages of
//! `fleet-health-proto`, in one place for server and clients alike.
//!
//! What the wire can get wrong is a [`WireError`]; a server answers it with
//! `INVALID_ARGUMENT`, a client reports it as a bad answer.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use fleet_health_proto::v1 as pb;
use fleet_health_sensor::{Time, TimeError};
use prost_types::Timestamp;

use crate::why::{MaintenanceFilter, StateFilter};
use crate::{AgentId, AgentIdError, EventKind, LabelError, Labels, State, Why, check_labels};

/// A message field that does not hold what the API allows.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A timestamp's nanoseconds are outside `0..1_000_000_000`.
    #[error("{field}: nanos {nanos} is not in 0..1000000000")]
    Nanos {
        /// The field, as a person would find it (`event 3: time`).
        field: String,
        /// The nanoseconds given.
        nanos: i32,
    },
    /// A timestamp before 1970-01-01.
    #[error("{field}: {seconds}s is before the Unix epoch")]
    BeforeEpoch {
        /// The field.
        field: String,
        /// The seconds given.
        seconds: i64,
    },
    /// A timestamp past year 9999.
    #[error("{field}: {source}")]
    TimeRange {
        /// The field.
        field: String,
        /// What the time type said.
        source: TimeError,
    },
    /// A negative or malformed duration.
    #[error("{field}: a duration must be positive, with nanos in 0..1000000000")]
    Duration {
        /// The field.
        field: String,
    },
    /// A required field is absent.
    #[error("{0} is missing")]
    Missing(String),
    /// `EVENT_KIND_UNSPECIFIED`.
    #[error("event kind is unspecified (0): give one of the eight kinds")]
    UnspecifiedEventKind,
    /// An event kind this version does not know.
    #[error("unknown event kind {0} (known: 1 to 8)")]
    UnknownEventKind(i32),
    /// A why this version does not know (or `WHY_UNSPECIFIED` where one is needed).
    #[error("unknown why {0} (known: 1 to 9)")]
    UnknownWhy(i32),
    /// A state this version does not know (or `STATE_UNSPECIFIED` where one is needed).
    #[error("unknown state {0} (known: 1 to 3)")]
    UnknownState(i32),
    /// A state filter this version does not know.
    #[error("unknown state filter {0} (known: 0 to 5)")]
    UnknownStateFilter(i32),
    /// A maintenance filter this version does not know.
    #[error("unknown maintenance filter {0} (known: 0 to 3)")]
    UnknownMaintenanceFilter(i32),
    /// An agent ID that breaks the rule.
    #[error(transparent)]
    AgentId(#[from] AgentIdError),
    /// Labels that break the rules.
    #[error(transparent)]
    Labels(#[from] LabelError),
}

/// What the wire got wrong is the caller's mistake: a server answers it with
/// `INVALID_ARGUMENT`, naming the field and the rule.
impl From<WireError> for tonic::Status {
    fn from(e: WireError) -> tonic::Status {
        tonic::Status::invalid_argument(e.to_string())
    }
}

/// This machine's wall clock as a [`Time`]; it saturates at the ends of the
/// range (a clock set past year 9999 reads as year 9999) instead of failing.
pub fn now() -> Time {
    Time::try_from(SystemTime::now()).unwrap_or_else(|_| {
        if SystemTime::now() > SystemTime::UNIX_EPOCH {
            Time::MAX
        } else {
            Time::MIN
        }
    })
}

/// A [`Time`] as a protobuf timestamp: exact, since a time holds whole
/// microseconds.
pub fn timestamp(t: Time) -> Timestamp {
    let (seconds, nanos) = t.as_unix();
    Timestamp {
        seconds,
        // `as_unix` gives nanos below 1_000_000_000, which an i32 holds.
        nanos: i32::try_from(nanos).unwrap_or(999_999_999),
    }
}

/// A protobuf timestamp as a [`Time`] (truncated to the microsecond). Times
/// before the Unix epoch, past year 9999 or not normalized are refused,
/// naming `field`.
pub fn time(ts: &Timestamp, field: &str) -> Result<Time, WireError> {
    let nanos = u32::try_from(ts.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)
        .ok_or_else(|| WireError::Nanos {
            field: field.to_owned(),
            nanos: ts.nanos,
        })?;
    if ts.seconds < 0 {
        return Err(WireError::BeforeEpoch {
            field: field.to_owned(),
            seconds: ts.seconds,
        });
    }
    Time::from_unix(ts.seconds, nanos).map_err(|source| WireError::TimeRange {
        field: field.to_owned(),
        source,
    })
}

/// An optional protobuf timestamp as an optional [`Time`].
pub fn opt_time(ts: Option<&Timestamp>, field: &str) -> Result<Option<Time>, WireError> {
    ts.map(|t| time(t, field)).transpose()
}

/// A protobuf timestamp that must be present.
pub fn req_time(ts: Option<&Timestamp>, field: &str) -> Result<Time, WireError> {
    time(
        ts.ok_or_else(|| WireError::Missing(field.to_owned()))?,
        field,
    )
}

/// A [`Duration`] as a protobuf duration (saturating past 292 billion years).
pub fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        // `subsec_nanos` is below 1_000_000_000, which an i32 holds.
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(999_999_999),
    }
}

/// A protobuf duration as a [`Duration`]; negative or malformed ones are refused.
pub fn from_duration(d: &prost_types::Duration, field: &str) -> Result<Duration, WireError> {
    let bad = || WireError::Duration {
        field: field.to_owned(),
    };
    let secs = u64::try_from(d.seconds).map_err(|_| bad())?;
    let nanos = u32::try_from(d.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)
        .ok_or_else(bad)?;
    Ok(Duration::new(secs, nanos))
}

/// An agent ID from the wire.
pub fn agent_id(s: &str) -> Result<AgentId, WireError> {
    Ok(AgentId::parse(s)?)
}

/// Labels from the wire, checked.
pub fn labels(map: &HashMap<String, String>) -> Result<Labels, WireError> {
    check_labels(map)?;
    Ok(map.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

impl From<EventKind> for pb::EventKind {
    fn from(k: EventKind) -> pb::EventKind {
        match k {
            EventKind::Starting => pb::EventKind::Starting,
            EventKind::ShuttingDown => pb::EventKind::ShuttingDown,
            EventKind::ServerDataReceived => pb::EventKind::ServerDataReceived,
            EventKind::ServerDataSent => pb::EventKind::ServerDataSent,
            EventKind::Registered => pb::EventKind::Registered,
            EventKind::Unregistered => pb::EventKind::Unregistered,
            EventKind::Heartbeat => pb::EventKind::Heartbeat,
            EventKind::Stopped => pb::EventKind::Stopped,
        }
    }
}

impl TryFrom<i32> for EventKind {
    type Error = WireError;

    fn try_from(v: i32) -> Result<EventKind, WireError> {
        use pb::EventKind as K;
        match K::try_from(v) {
            Ok(K::Starting) => Ok(EventKind::Starting),
            Ok(K::ShuttingDown) => Ok(EventKind::ShuttingDown),
            Ok(K::ServerDataReceived) => Ok(EventKind::ServerDataReceived),
            Ok(K::ServerDataSent) => Ok(EventKind::ServerDataSent),
            Ok(K::Registered) => Ok(EventKind::Registered),
            Ok(K::Unregistered) => Ok(EventKind::Unregistered),
            Ok(K::Heartbeat) => Ok(EventKind::Heartbeat),
            Ok(K::Stopped) => Ok(EventKind::Stopped),
            Ok(K::Unspecified) => Err(WireError::UnspecifiedEventKind),
            Err(_) => Err(WireError::UnknownEventKind(v)),
        }
    }
}

impl From<Why> for pb::Why {
    fn from(w: Why) -> pb::Why {
        match w {
            Why::AllIsOk => pb::Why::AllIsOk,
            Why::ShutdownInProgress => pb::Why::ShutdownInProgress,
            Why::NotRegistered => pb::Why::NotRegistered,
            Why::NoDataSent => pb::Why::NoDataSent,
            Why::NoDataReceived => pb::Why::NoDataReceived,
            Why::StuckAtShutdown => pb::Why::StuckAtShutdown,
            Why::NotReporting => pb::Why::NotReporting,
            Why::Stopped => pb::Why::Stopped,
            Why::Inactive => pb::Why::Inactive,
        }
    }
}

impl TryFrom<i32> for Why {
    type Error = WireError;

    /// A why from its wire number; `WHY_UNSPECIFIED` (0) is not a why.
    fn try_from(v: i32) -> Result<Why, WireError> {
        u32::try_from(v)
            .ok()
            .and_then(Why::from_code)
            .filter(|w| pb::Why::from(*w) as i32 == v)
            .ok_or(WireError::UnknownWhy(v))
    }
}

impl From<State> for pb::State {
    fn from(s: State) -> pb::State {
        match s {
            State::Healthy => pb::State::Healthy,
            State::Faulty => pb::State::Faulty,
            State::Inactive => pb::State::Inactive,
        }
    }
}

impl TryFrom<i32> for State {
    type Error = WireError;

    /// A state from its wire number; `STATE_UNSPECIFIED` (0) is not a state.
    fn try_from(v: i32) -> Result<State, WireError> {
        match pb::State::try_from(v) {
            Ok(pb::State::Healthy) => Ok(State::Healthy),
            Ok(pb::State::Faulty) => Ok(State::Faulty),
            Ok(pb::State::Inactive) => Ok(State::Inactive),
            Ok(pb::State::Unspecified) | Err(_) => Err(WireError::UnknownState(v)),
        }
    }
}

impl From<StateFilter> for pb::StateFilter {
    fn from(f: StateFilter) -> pb::StateFilter {
        match f {
            StateFilter::Active => pb::StateFilter::Active,
            StateFilter::Faulty => pb::StateFilter::Faulty,
            StateFilter::Healthy => pb::StateFilter::Healthy,
            StateFilter::Inactive => pb::StateFilter::Inactive,
            StateFilter::All => pb::StateFilter::All,
        }
    }
}

impl TryFrom<i32> for StateFilter {
    type Error = WireError;

    /// A state filter from its wire number; unspecified (0) means active.
    fn try_from(v: i32) -> Result<StateFilter, WireError> {
        use pb::StateFilter as F;
        match F::try_from(v) {
            Ok(F::Unspecified | F::Active) => Ok(StateFilter::Active),
            Ok(F::Faulty) => Ok(StateFilter::Faulty),
            Ok(F::Healthy) => Ok(StateFilter::Healthy),
            Ok(F::Inactive) => Ok(StateFilter::Inactive),
            Ok(F::All) => Ok(StateFilter::All),
            Err(_) => Err(WireError::UnknownStateFilter(v)),
        }
    }
}

impl From<MaintenanceFilter> for pb::MaintenanceFilter {
    fn from(f: MaintenanceFilter) -> pb::MaintenanceFilter {
        match f {
            MaintenanceFilter::Default => pb::MaintenanceFilter::Unspecified,
            MaintenanceFilter::Include => pb::MaintenanceFilter::Include,
            MaintenanceFilter::Exclude => pb::MaintenanceFilter::Exclude,
            MaintenanceFilter::Only => pb::MaintenanceFilter::Only,
        }
    }
}

impl TryFrom<i32> for MaintenanceFilter {
    type Error = WireError;

    /// A maintenance filter from its wire number; unspecified (0) is the
    /// default.
    fn try_from(v: i32) -> Result<MaintenanceFilter, WireError> {
        use pb::MaintenanceFilter as F;
        match F::try_from(v) {
            Ok(F::Unspecified) => Ok(MaintenanceFilter::Default),
            Ok(F::Include) => Ok(MaintenanceFilter::Include),
            Ok(F::Exclude) => Ok(MaintenanceFilter::Exclude),
            Ok(F::Only) => Ok(MaintenanceFilter::Only),
            Err(_) => Err(WireError::UnknownMaintenanceFilter(v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_exactly() {
        for micros in [0, 1, 999_999, 1_700_000_000_123_456] {
            let t = Time::from_micros(micros).unwrap();
            let ts = timestamp(t);
            assert!((0..1_000_000_000).contains(&ts.nanos));
            assert_eq!(time(&ts, "t"), Ok(t));
        }
        assert_eq!(time(&timestamp(Time::MAX), "t"), Ok(Time::MAX));
    }

    #[test]
    fn bad_timestamps_are_refused_with_their_field() {
        let bad = |seconds, nanos| time(&Timestamp { seconds, nanos }, "event 2: time");
        assert!(matches!(
            bad(0, -1),
            Err(WireError::Nanos { nanos: -1, .. })
        ));
        assert!(matches!(
            bad(0, 1_000_000_000),
            Err(WireError::Nanos { .. })
        ));
        let e = bad(-5, 0).unwrap_err();
        assert_eq!(e.to_string(), "event 2: time: -5s is before the Unix epoch");
        assert!(matches!(bad(i64::MAX, 0), Err(WireError::TimeRange { .. })));
        assert_eq!(opt_time(None, "t"), Ok(None));
        assert_eq!(
            req_time(None, "since"),
            Err(WireError::Missing("since".into()))
        );
    }

    #[test]
    fn durations_convert_and_refuse_negatives() {
        let d = Duration::new(30, 5);
        assert_eq!(from_duration(&duration(d), "d"), Ok(d));
        let neg = prost_types::Duration {
            seconds: -1,
            nanos: 0,
        };
        assert!(from_duration(&neg, "d").is_err());
        assert_eq!(duration(Duration::MAX).seconds, i64::MAX);
    }

    #[test]
    fn enums_round_trip_through_their_wire_numbers() {
        for k in EventKind::ALL {
            let v = pb::EventKind::from(k) as i32;
            assert_eq!(EventKind::try_from(v), Ok(k));
            assert_eq!(
                pb::EventKind::from(k).as_str_name(),
                format!("EVENT_KIND_{}", k.as_str().to_ascii_uppercase())
            );
        }
        assert_eq!(EventKind::try_from(0), Err(WireError::UnspecifiedEventKind));
        assert_eq!(
            EventKind::try_from(99),
            Err(WireError::UnknownEventKind(99))
        );
        for w in Why::ALL {
            let v = pb::Why::from(w) as i32;
            assert_eq!(v, w.code() as i32, "the store keeps the wire number");
            assert_eq!(Why::try_from(v), Ok(w));
            assert_eq!(Why::parse(pb::Why::from(w).as_str_name()), Some(w));
        }
        assert_eq!(Why::try_from(0), Err(WireError::UnknownWhy(0)));
        assert_eq!(Why::try_from(-3), Err(WireError::UnknownWhy(-3)));
        for s in State::ALL {
            assert_eq!(State::try_from(pb::State::from(s) as i32), Ok(s));
        }
        assert_eq!(State::try_from(0), Err(WireError::UnknownState(0)));
        for f in [
            StateFilter::Active,
            StateFilter::Faulty,
            StateFilter::Healthy,
            StateFilter::Inactive,
            StateFilter::All,
        ] {
            assert_eq!(
                StateFilter::try_from(pb::StateFilter::from(f) as i32),
                Ok(f)
            );
        }
        assert_eq!(StateFilter::try_from(0), Ok(StateFilter::Active));
        assert_eq!(
            StateFilter::try_from(6),
            Err(WireError::UnknownStateFilter(6))
        );
    }

    #[test]
    fn ids_and_labels_from_the_wire_are_checked() {
        assert!(agent_id("web-1").is_ok());
        assert!(matches!(agent_id("a b"), Err(WireError::AgentId(_))));
        let mut m = HashMap::new();
        m.insert("site".to_string(), "eu".to_string());
        assert_eq!(
            labels(&m).unwrap().get("site").map(String::as_str),
            Some("eu")
        );
        m.insert("bad key".to_string(), String::new());
        assert!(matches!(labels(&m), Err(WireError::Labels(_))));
    }

    #[test]
    fn now_reads_the_clock() {
        let a = now();
        assert!(a > Time::from_micros(1_600_000_000_000_000).unwrap());
    }
}
