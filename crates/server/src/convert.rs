//! Conversions between the wire (`fleet_health_proto::v1`) and the domain, in
//! one place. What can fail is a `TryFrom` or returns a [`Status`] with
//! `INVALID_ARGUMENT`.

use fleet_health_proto::v1 as pb;
use fleet_health_sensor::Time;
use prost_types::Timestamp;
use tonic::Status;

use crate::model::{AgentEvent, AgentId, EventKind, Labels, Reason, State, check_labels};
use crate::registry::{AgentView, RegistryError, StateFilter, StormView, Transition};

impl From<RegistryError> for Status {
    fn from(e: RegistryError) -> Status {
        match e {
            RegistryError::TooManyAgents(_) => Status::resource_exhausted(e.to_string()),
            RegistryError::NotFound(_) => Status::not_found(e.to_string()),
            RegistryError::Superseded(_) | RegistryError::Forgotten(_) => {
                Status::aborted(e.to_string())
            }
        }
    }
}

/// A domain time as a protobuf timestamp.
pub fn timestamp(t: Time) -> Timestamp {
    let (seconds, nanos) = t.as_unix();
    Timestamp {
        seconds,
        nanos: nanos as i32,
    }
}

/// A protobuf timestamp as a domain time, or `INVALID_ARGUMENT` naming `field`.
pub fn time(ts: &Timestamp, field: &str) -> Result<Time, Status> {
    let nanos = u32::try_from(ts.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "{field}: nanos {} is not in 0..1000000000",
                ts.nanos
            ))
        })?;
    if ts.seconds < 0 {
        return Err(Status::invalid_argument(format!(
            "{field}: {}s is before the Unix epoch",
            ts.seconds
        )));
    }
    Time::from_unix(ts.seconds, nanos)
        .map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

/// An optional protobuf timestamp as an optional domain time.
pub fn opt_time(ts: Option<&Timestamp>, field: &str) -> Result<Option<Time>, Status> {
    ts.map(|t| time(t, field)).transpose()
}

/// Checks an agent ID from the wire.
pub fn agent_id(s: &str) -> Result<AgentId, Status> {
    AgentId::parse(s).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// Checks labels from the wire.
pub fn labels(map: &std::collections::HashMap<String, String>) -> Result<Labels, Status> {
    let labels: Labels = map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    check_labels(&labels).map_err(Status::invalid_argument)?;
    Ok(labels)
}

impl TryFrom<i32> for EventKind {
    type Error = Status;

    fn try_from(v: i32) -> Result<EventKind, Status> {
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
            Ok(K::Unspecified) => Err(Status::invalid_argument(
                "event kind is unspecified (0): give one of the eight kinds",
            )),
            Err(_) => Err(Status::invalid_argument(format!(
                "unknown event kind {v} (known: 1 to 8)"
            ))),
        }
    }
}

/// Checks a batch of events; nothing is applied unless all are valid.
pub fn events(batch: &pb::EventBatch, max: usize) -> Result<Vec<AgentEvent>, Status> {
    if batch.events.is_empty() {
        return Err(Status::invalid_argument(
            "an event batch must hold at least one event",
        ));
    }
    if batch.events.len() > max {
        return Err(Status::invalid_argument(format!(
            "{} events in one message (at most {max})",
            batch.events.len()
        )));
    }
    let mut prev = 0;
    batch
        .events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            if e.seq == 0 {
                return Err(Status::invalid_argument(format!(
                    "event {i}: sequence number 0 (they start at 1)"
                )));
            }
            if e.seq <= prev {
                return Err(Status::invalid_argument(format!(
                    "event {i}: sequence number {} after {prev} (they must increase)",
                    e.seq
                )));
            }
            prev = e.seq;
            let kind = EventKind::try_from(e.kind)
                .map_err(|s| Status::invalid_argument(format!("event {i}: {}", s.message())))?;
            let time = opt_time(e.time.as_ref(), &format!("event {i}: time"))?;
            Ok(AgentEvent {
                seq: e.seq,
                kind,
                time,
            })
        })
        .collect()
}

impl From<Reason> for pb::Why {
    fn from(r: Reason) -> pb::Why {
        match r {
            Reason::AllIsOk => pb::Why::AllIsOk,
            Reason::ShutdownInProgress => pb::Why::ShutdownInProgress,
            Reason::NotRegistered => pb::Why::NotRegistered,
            Reason::NoDataSent => pb::Why::NoDataSent,
            Reason::NoDataReceived => pb::Why::NoDataReceived,
            Reason::StuckAtShutdown => pb::Why::StuckAtShutdown,
            Reason::NotReporting => pb::Why::NotReporting,
            Reason::Stopped => pb::Why::Stopped,
            Reason::Inactive => pb::Why::Inactive,
        }
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

/// A reason filter from the wire.
pub fn reason(v: i32) -> Result<Reason, Status> {
    Reason::ALL
        .into_iter()
        .find(|r| pb::Why::from(*r) as i32 == v)
        .ok_or_else(|| Status::invalid_argument(format!("unknown why {v} (known: 1 to 9)")))
}

/// A state filter from the wire.
pub fn state_filter(v: i32) -> Result<StateFilter, Status> {
    use pb::StateFilter as F;
    match F::try_from(v) {
        Ok(F::Unspecified | F::Active) => Ok(StateFilter::Active),
        Ok(F::Faulty) => Ok(StateFilter::Faulty),
        Ok(F::Healthy) => Ok(StateFilter::Healthy),
        Ok(F::Inactive) => Ok(StateFilter::Inactive),
        Ok(F::All) => Ok(StateFilter::All),
        Err(_) => Err(Status::invalid_argument(format!(
            "unknown state filter {v} (known: 0 to 5)"
        ))),
    }
}

impl From<&AgentView> for pb::AgentStatus {
    fn from(v: &AgentView) -> pb::AgentStatus {
        let s = &v.sensor;
        pb::AgentStatus {
            agent_id: v.id.to_string(),
            healthy: v.state() == State::Healthy,
            state: pb::State::from(v.state()) as i32,
            why: pb::Why::from(v.reason) as i32,
            why_text: v.reason.as_str().to_string(),
            since: Some(timestamp(v.since)),
            last_heard: Some(timestamp(v.last_heard)),
            incarnation: v.incarnation,
            labels: v
                .labels
                .as_deref()
                .map(|l| {
                    l.iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect()
                })
                .unwrap_or_default(),
            sensor: Some(pb::SensorTimes {
                started_at: Some(timestamp(s.started_at())),
                shutdown_at: s.shutdown_recorded().then(|| timestamp(s.shutdown_at())),
                last_received: Some(timestamp(s.last_received())),
                last_sent: Some(timestamp(s.last_sent())),
                registered: s.is_registered(),
            }),
            next_change: v.next_change.map(timestamp),
            connected: v.connected,
            last_seq: v.last_seq,
            evaluated_at: Some(timestamp(v.evaluated_at)),
            stopped_at: v.stopped_at.map(timestamp),
            first_seen: Some(timestamp(v.first_seen)),
        }
    }
}

impl From<StormView> for pb::Storm {
    fn from(s: StormView) -> pb::Storm {
        pb::Storm {
            active: s.active,
            faulty: s.faulty,
            active_agents: s.active_agents,
            faulty_share: s.share(),
            threshold: s.threshold,
            min_agents: s.min_agents,
            dominant_why: s.dominant.map_or(0, |(r, _)| pb::Why::from(r) as i32),
            dominant_why_text: s
                .dominant
                .map(|(r, _)| r.as_str().to_string())
                .unwrap_or_default(),
            dominant_count: s.dominant.map_or(0, |(_, n)| n),
        }
    }
}

impl From<Transition> for pb::Transition {
    fn from(t: Transition) -> pb::Transition {
        pb::Transition {
            at: Some(timestamp(t.at)),
            from_state: t.from.map_or(0, |r| pb::State::from(r.state()) as i32),
            from_why: t.from.map_or(0, |r| pb::Why::from(r) as i32),
            to_state: pb::State::from(t.to.state()) as i32,
            to_why: pb::Why::from(t.to) as i32,
            to_why_text: t.to.as_str().to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_times_are_refused_with_the_field_named() {
        let bad = [
            Timestamp {
                seconds: 0,
                nanos: -1,
            },
            Timestamp {
                seconds: 0,
                nanos: 1_000_000_000,
            },
            Timestamp {
                seconds: -5,
                nanos: 0,
            },
            Timestamp {
                seconds: 300_000_000_000,
                nanos: 0,
            },
        ];
        for ts in bad {
            let e = time(&ts, "at").expect_err("refused");
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().starts_with("at: "), "{}", e.message());
        }
        let ok = time(
            &Timestamp {
                seconds: 1_700_000_000,
                nanos: 500_000_000,
            },
            "at",
        )
        .expect("valid");
        assert_eq!(
            timestamp(ok),
            Timestamp {
                seconds: 1_700_000_000,
                nanos: 500_000_000
            }
        );
    }

    #[test]
    fn event_batches_are_checked_whole() {
        let ev = |seq, kind| pb::Event {
            seq,
            kind,
            time: None,
        };
        let check =
            |list: Vec<pb::Event>| events(&pb::EventBatch { events: list }, 4).map(|v| v.len());
        assert_eq!(check(vec![ev(1, 1), ev(2, 7)]).expect("valid"), 2);
        for bad in [
            vec![],
            vec![ev(0, 1)],
            vec![ev(2, 1), ev(2, 1)],
            vec![ev(1, 0)],
            vec![ev(1, 99)],
            vec![ev(1, 1), ev(2, 1), ev(3, 1), ev(4, 1), ev(5, 1)],
        ] {
            let e = check(bad).expect_err("refused");
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
        }
    }

    #[test]
    fn every_reason_maps_to_its_wire_value_and_back() {
        for r in Reason::ALL {
            // The stored code is the wire number.
            assert_eq!(r.code() as i32, pb::Why::from(r) as i32);
            assert_eq!(Reason::from_code(r.code()), Some(r));
            assert_eq!(reason(pb::Why::from(r) as i32).ok(), Some(r));
        }
        assert!(reason(0).is_err());
        assert!(reason(42).is_err());
    }
}
