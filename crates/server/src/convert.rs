//! The server's answers on the wire: registry views as protobuf messages, and
//! the checks of an event batch. The vocabulary's own conversions (times, IDs,
//! labels, enums) are `fleet_health_types::wire`; what the wire gets wrong is
//! a `WireError`, answered with `INVALID_ARGUMENT`.

use fleet_health_proto::v1 as pb;
use fleet_health_types::wire::{self, timestamp};
use smallvec::SmallVec;
use tonic::Status;

use crate::model::{AgentEvent, EventKind, State};
use crate::registry::ops::{OUTPUT_KEPT, TEXT_MAX};
use crate::registry::{
    ActivityRecord, AgentView, ClaimRecord, GivenUpRecord, MarkRecord, RegistryError,
    RemediationRecord, StormView, Transition,
};

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

/// Events of one message: a few in place (no allocation for the usual
/// message of one event), more on the heap.
pub type Events = SmallVec<[AgentEvent; 4]>;

/// Checks a batch of events; nothing is applied unless all are valid.
pub fn events(batch: &pb::EventBatch, max: usize) -> Result<Events, Status> {
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
    let mut out = Events::with_capacity(batch.events.len());
    let mut prev = 0;
    for (i, e) in batch.events.iter().enumerate() {
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
        // The event's number is written into the message only on an
        // error: no formatting for a valid event.
        let at_event =
            |w: fleet_health_types::WireError| Status::invalid_argument(format!("event {i}: {w}"));
        let kind = EventKind::try_from(e.kind).map_err(at_event)?;
        let time = wire::opt_time(e.time.as_ref(), "time").map_err(at_event)?;
        out.push(AgentEvent {
            seq: e.seq,
            kind,
            time,
        });
    }
    Ok(out)
}

impl From<&AgentView> for pb::AgentStatus {
    fn from(v: &AgentView) -> pb::AgentStatus {
        let s = &v.sensor;
        pb::AgentStatus {
            agent_id: v.id.to_string(),
            healthy: v.state() == State::Healthy,
            state: pb::State::from(v.state()) as i32,
            why: pb::Why::from(v.why) as i32,
            why_text: v.why.as_str().to_string(),
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
            maintenance: v.maintenance.as_ref().map(Into::into),
            claim: v.claim.as_ref().map(Into::into),
            given_up: v.given_up.as_ref().map(Into::into),
        }
    }
}

/// Stored microseconds as a timestamp (`None` for 0, "none", or a time out
/// of range, which the server never stores).
fn micros(t: i64) -> Option<prost_types::Timestamp> {
    (t != 0)
        .then(|| fleet_health_sensor::Time::from_micros(t).ok())
        .flatten()
        .map(timestamp)
}

impl From<&MarkRecord> for pb::Maintenance {
    fn from(m: &MarkRecord) -> pb::Maintenance {
        pb::Maintenance {
            reason: m.reason.clone(),
            by: m.by.clone(),
            since: micros(m.since),
            until: micros(m.until),
        }
    }
}

impl From<&ClaimRecord> for pb::Claim {
    fn from(c: &ClaimRecord) -> pb::Claim {
        pb::Claim {
            holder: c.holder.clone(),
            by: c.by.clone(),
            since: micros(c.since),
            until: micros(c.until),
        }
    }
}

impl From<&GivenUpRecord> for pb::GivenUp {
    fn from(g: &GivenUpRecord) -> pb::GivenUp {
        pb::GivenUp {
            holder: g.holder.clone(),
            by: g.by.clone(),
            at: micros(g.at),
            reason: g.reason.clone(),
        }
    }
}

impl From<&RemediationRecord> for pb::Remediation {
    fn from(r: &RemediationRecord) -> pb::Remediation {
        pb::Remediation {
            started: micros(r.started),
            finished: micros(r.finished),
            program: r.program.clone(),
            result: r.result,
            exit_code: r.exit_code,
            signal: r.signal,
            output: r.output.clone(),
            why: r.why,
        }
    }
}

impl From<&ActivityRecord> for pb::Activity {
    fn from(a: &ActivityRecord) -> pb::Activity {
        pb::Activity {
            at: micros(a.at),
            kind: a.kind,
            by: a.by.clone(),
            holder: a.holder.clone(),
            reason: a.reason.clone(),
            until: micros(a.until),
            remediation: a.remediation.as_ref().map(Into::into),
        }
    }
}

/// A remediation as a remediator reports it, checked: times in range,
/// a known result and why, texts within their bounds (the output is cut
/// to its last [`OUTPUT_KEPT`] bytes rather than refused).
pub fn remediation(r: &pb::Remediation) -> Result<RemediationRecord, Status> {
    let started = wire::req_time(r.started.as_ref(), "remediation.started")?;
    let finished = wire::req_time(r.finished.as_ref(), "remediation.finished")?;
    if finished < started {
        return Err(Status::invalid_argument(
            "remediation.finished is before remediation.started",
        ));
    }
    match pb::RemediationResult::try_from(r.result) {
        Ok(pb::RemediationResult::Unspecified) | Err(_) => {
            return Err(Status::invalid_argument(format!(
                "remediation.result: unknown result {} (known: 1 to 4)",
                r.result
            )));
        }
        Ok(_) => {}
    }
    if r.why != 0 {
        crate::model::Why::try_from(r.why)?;
    }
    text("remediation.program", &r.program, true)?;
    Ok(RemediationRecord {
        started: started.as_micros(),
        finished: finished.as_micros(),
        program: r.program.clone(),
        result: r.result,
        exit_code: r.exit_code,
        signal: r.signal,
        output: crate::registry::ops::tail(&r.output, OUTPUT_KEPT).to_owned(),
        why: r.why,
    })
}

/// Checks a free text field: at most [`TEXT_MAX`] bytes, no control
/// characters; `required`: not empty.
pub fn text(field: &str, s: &str, required: bool) -> Result<(), Status> {
    if required && s.trim().is_empty() {
        return Err(Status::invalid_argument(format!("{field} is required")));
    }
    if s.len() > TEXT_MAX {
        return Err(Status::invalid_argument(format!(
            "{field} is {} bytes long (at most {TEXT_MAX})",
            s.len()
        )));
    }
    if s.chars().any(char::is_control) {
        return Err(Status::invalid_argument(format!(
            "{field} holds a control character"
        )));
    }
    Ok(())
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
            maintenance: s.maintenance,
            faulty_by_why: s
                .faulty_by_why
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(r, n)| pb::WhyCount {
                    why: pb::Why::from(r) as i32,
                    why_text: r.as_str().to_owned(),
                    state: pb::State::from(r.state()) as i32,
                    count: *n,
                })
                .collect(),
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
        // The message names the event and the field.
        let late = pb::Event {
            seq: 2,
            kind: 1,
            time: Some(prost_types::Timestamp {
                seconds: -5,
                nanos: 0,
            }),
        };
        let e = check(vec![ev(1, 1), late]).expect_err("refused");
        assert_eq!(e.message(), "event 1: time: -5s is before the Unix epoch");
        let e = check(vec![ev(1, 1), ev(2, 99)]).expect_err("refused");
        assert_eq!(
            e.message(),
            "event 1: unknown event kind 99 (known: 1 to 8)"
        );
    }
}
