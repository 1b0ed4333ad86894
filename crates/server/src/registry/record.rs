//! The stored form of an agent: [`AgentRecord`], a protobuf message (so
//! fields can be added without a migration), and the conversions between it
//! and the registry's `Agent`. Times are microseconds since the epoch;
//! reasons are `fleethealth.v1.Why` numbers, which never change meaning.
//!
//! No locks: callers convert under the agent's map entry.

use std::collections::BTreeMap;
use std::sync::Arc;

use fleet_health_sensor::{Sensor, Time, TimeError};
use prost::Message;

use crate::model::{AgentId, AgentIdError, LabelSet, Why};

use super::agent::Agent;
use super::types::Transition;

/// A stored record that cannot be turned back into an agent.
#[derive(Debug, thiserror::Error)]
#[error("the record of agent {agent:?} is damaged: {problem}")]
pub struct RecordError {
    /// The key the record is stored under.
    pub agent: String,
    /// What is wrong with it.
    pub problem: RecordProblem,
}

/// What is wrong with a stored record.
#[derive(Debug, thiserror::Error)]
pub enum RecordProblem {
    /// The bytes are not an [`AgentRecord`].
    #[error("it cannot be decoded: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The key is not a valid agent ID.
    #[error("its key is not an agent ID: {0}")]
    Id(#[from] AgentIdError),
    /// A time is out of the range the sensor handles.
    #[error("{field}: {source}")]
    Time {
        /// The field.
        field: &'static str,
        /// Why the time is refused.
        source: TimeError,
    },
    /// A reason number that no reason has.
    #[error("{field}: unknown reason {code}")]
    UnknownWhy {
        /// The field.
        field: &'static str,
        /// The number found.
        code: u32,
    },
}

/// One transition as stored.
#[derive(Clone, PartialEq, Message)]
pub struct TransitionRecord {
    /// When (microseconds since the epoch).
    #[prost(int64, tag = "1")]
    pub at: i64,
    /// The reason before, as its `fleethealth.v1.Why` number (0: none).
    #[prost(uint32, tag = "2")]
    pub from: u32,
    /// The reason after, as its `fleethealth.v1.Why` number.
    #[prost(uint32, tag = "3")]
    pub to: u32,
}

/// One agent as stored. Times are microseconds since the epoch; reasons are
/// `fleethealth.v1.Why` numbers, which never change meaning.
#[derive(Clone, PartialEq, Message)]
pub struct AgentRecord {
    /// The sensor's `started_at`.
    #[prost(int64, tag = "1")]
    pub started_at: i64,
    /// The sensor's `shutdown_at`.
    #[prost(int64, tag = "2")]
    pub shutdown_at: i64,
    /// The sensor's `last_received`.
    #[prost(int64, tag = "3")]
    pub last_received: i64,
    /// The sensor's `last_sent`.
    #[prost(int64, tag = "4")]
    pub last_sent: i64,
    /// Not registered (the default, false, is registered).
    #[prost(bool, tag = "5")]
    pub unregistered: bool,
    /// When last heard from.
    #[prost(int64, tag = "6")]
    pub last_heard: i64,
    /// When first heard from.
    #[prost(int64, tag = "7")]
    pub first_seen: i64,
    /// Since when it has had its reason.
    #[prost(int64, tag = "8")]
    pub since: i64,
    /// When its reason was last settled.
    #[prost(int64, tag = "9")]
    pub evaluated: i64,
    /// When it said "stopped", if it is stopped.
    #[prost(int64, optional, tag = "10")]
    pub stopped_at: Option<i64>,
    /// The reporter incarnation.
    #[prost(uint64, tag = "11")]
    pub incarnation: u64,
    /// The last sequence number applied for it.
    #[prost(uint64, tag = "12")]
    pub last_seq: u64,
    /// The reason.
    #[prost(uint32, tag = "13")]
    pub why: u32,
    /// Labels.
    #[prost(btree_map = "string, string", tag = "14")]
    pub labels: BTreeMap<String, String>,
    /// Recent transitions, oldest first.
    #[prost(message, repeated, tag = "15")]
    pub history: Vec<TransitionRecord>,
    /// Maintenance mark, remediation claim, "given up" and activity, if any
    /// (kept beside the agent in memory: see `ops`).
    #[prost(message, optional, tag = "16")]
    pub ops: Option<OpsRecord>,
}

/// What operators and remediators set on an agent, and what they did to it.
/// Times are microseconds since the epoch. Kept in this form in memory too.
#[derive(Clone, PartialEq, Message)]
pub struct OpsRecord {
    /// The maintenance mark.
    #[prost(message, optional, tag = "1")]
    pub maintenance: Option<MarkRecord>,
    /// The remediation claim (it may have run out: see its `until`).
    #[prost(message, optional, tag = "2")]
    pub claim: Option<ClaimRecord>,
    /// A remediator gave up on the agent.
    #[prost(message, optional, tag = "3")]
    pub given_up: Option<GivenUpRecord>,
    /// Activity, oldest first (bounded).
    #[prost(message, repeated, tag = "4")]
    pub activity: Vec<ActivityRecord>,
}

/// A maintenance mark.
#[derive(Clone, PartialEq, Message)]
pub struct MarkRecord {
    /// Why.
    #[prost(string, tag = "1")]
    pub reason: String,
    /// Who set it.
    #[prost(string, tag = "2")]
    pub by: String,
    /// When it was set.
    #[prost(int64, tag = "3")]
    pub since: i64,
    /// When it ends by itself.
    #[prost(int64, tag = "4")]
    pub until: i64,
}

/// A remediation claim.
#[derive(Clone, PartialEq, Message)]
pub struct ClaimRecord {
    /// The remediator's name.
    #[prost(string, tag = "1")]
    pub holder: String,
    /// Its identity.
    #[prost(string, tag = "2")]
    pub by: String,
    /// When it was first granted.
    #[prost(int64, tag = "3")]
    pub since: i64,
    /// When the lease runs out.
    #[prost(int64, tag = "4")]
    pub until: i64,
}

/// A remediator gave up on the agent.
#[derive(Clone, PartialEq, Message)]
pub struct GivenUpRecord {
    /// The remediator's name.
    #[prost(string, tag = "1")]
    pub holder: String,
    /// Its identity.
    #[prost(string, tag = "2")]
    pub by: String,
    /// When.
    #[prost(int64, tag = "3")]
    pub at: i64,
    /// Why.
    #[prost(string, tag = "4")]
    pub reason: String,
}

/// One entry of an agent's activity.
#[derive(Clone, PartialEq, Message)]
pub struct ActivityRecord {
    /// When.
    #[prost(int64, tag = "1")]
    pub at: i64,
    /// What: a `fleethealth.v1.ActivityKind` number.
    #[prost(int32, tag = "2")]
    pub kind: i32,
    /// Who.
    #[prost(string, tag = "3")]
    pub by: String,
    /// The remediator's name.
    #[prost(string, tag = "4")]
    pub holder: String,
    /// The maintenance reason, or why a remediator gave up.
    #[prost(string, tag = "5")]
    pub reason: String,
    /// When a mark set then ends (0: none).
    #[prost(int64, tag = "6")]
    pub until: i64,
    /// What a remediator ran.
    #[prost(message, optional, tag = "7")]
    pub remediation: Option<RemediationRecord>,
}

/// One remediation.
#[derive(Clone, PartialEq, Message)]
pub struct RemediationRecord {
    /// When the program started.
    #[prost(int64, tag = "1")]
    pub started: i64,
    /// When it ended.
    #[prost(int64, tag = "2")]
    pub finished: i64,
    /// The program as run.
    #[prost(string, tag = "3")]
    pub program: String,
    /// How it went: a `fleethealth.v1.RemediationResult` number.
    #[prost(int32, tag = "4")]
    pub result: i32,
    /// Its exit code.
    #[prost(int32, optional, tag = "5")]
    pub exit_code: Option<i32>,
    /// The signal that ended it.
    #[prost(int32, optional, tag = "6")]
    pub signal: Option<i32>,
    /// Its last output.
    #[prost(string, tag = "7")]
    pub output: String,
    /// The agent's reason then: a `fleethealth.v1.Why` number.
    #[prost(int32, tag = "8")]
    pub why: i32,
}

impl Agent {
    /// The agent's stored form.
    pub(super) fn to_record(&self) -> AgentRecord {
        let s = &self.sensor();
        AgentRecord {
            started_at: s.started_at().as_micros(),
            shutdown_at: s.shutdown_at().as_micros(),
            last_received: s.last_received().as_micros(),
            last_sent: s.last_sent().as_micros(),
            unregistered: !s.is_registered(),
            last_heard: self.last_heard.as_micros(),
            first_seen: self.first_seen.as_micros(),
            since: self.since().as_micros(),
            evaluated: self.evaluated.as_micros(),
            stopped_at: self.stopped().map(Time::as_micros),
            incarnation: self.incarnation,
            last_seq: self.last_seq,
            why: self.why().code(),
            labels: self
                .labels
                .as_deref()
                .map(LabelSet::to_map)
                .unwrap_or_default(),
            history: self
                .history()
                .iter()
                .map(|t| TransitionRecord {
                    at: t.at.as_micros(),
                    from: t.from.map_or(0, Why::code),
                    to: t.to.code(),
                })
                .collect(),
            ops: None,
        }
    }

    /// The agent a stored record describes: not connected, its timer not
    /// yet scheduled, its labels not yet interned.
    pub(super) fn from_record(r: AgentRecord) -> Result<Agent, RecordProblem> {
        let time = |micros: i64, field: &'static str| {
            Time::from_micros(micros).map_err(|source| RecordProblem::Time { field, source })
        };
        let why = |code: u32, field: &'static str| {
            Why::from_code(code).ok_or(RecordProblem::UnknownWhy { field, code })
        };
        let sensor = Sensor::from_parts(
            time(r.started_at, "started_at")?,
            time(r.shutdown_at, "shutdown_at")?,
            time(r.last_received, "last_received")?,
            time(r.last_sent, "last_sent")?,
            !r.unregistered,
        );
        let history = r
            .history
            .into_iter()
            .map(|t| {
                Ok(Transition {
                    at: time(t.at, "history")?,
                    from: match t.from {
                        0 => None,
                        code => Some(why(code, "history")?),
                    },
                    to: why(t.to, "history")?,
                })
            })
            .collect::<Result<Vec<_>, RecordProblem>>()?;
        let mut a = Agent::new(time(r.first_seen, "first_seen")?);
        a.set_sensor(sensor);
        a.last_heard = time(r.last_heard, "last_heard")?;
        a.evaluated = time(r.evaluated, "evaluated")?;
        a.set_stopped(r.stopped_at.map(|t| time(t, "stopped_at")).transpose()?);
        a.incarnation = r.incarnation;
        a.last_seq = r.last_seq;
        a.labels = (!r.labels.is_empty()).then(|| Arc::new(LabelSet::from(&r.labels)));
        a.restore(why(r.why, "reason")?, time(r.since, "since")?, history);
        if a.why() == Why::NotReporting {
            a.grace = crate::model::Grace::None;
        }
        Ok(a)
    }
}

/// Checks that `bytes`, stored under `key`, decode as an agent (what a
/// restore checks of a backup before writing it).
pub fn check(key: &str, bytes: &[u8]) -> Result<(), RecordError> {
    decode(key, bytes).map(|_| ())
}

/// The encoded record of an agent, with what operators and remediators set
/// on it, as the store keeps it.
pub(super) fn encode(a: &Agent, ops: Option<OpsRecord>) -> Vec<u8> {
    let mut r = a.to_record();
    r.ops = ops;
    r.encode_to_vec()
}

/// The agent stored under `key` as `bytes`, and what operators and
/// remediators set on it.
pub(super) fn decode(
    key: &str,
    bytes: &[u8],
) -> Result<(AgentId, Agent, Option<OpsRecord>), RecordError> {
    let parse = || -> Result<(AgentId, Agent, Option<OpsRecord>), RecordProblem> {
        let id = AgentId::parse(key)?;
        let mut record = AgentRecord::decode(bytes)?;
        let ops = record.ops.take();
        Ok((id, Agent::from_record(record)?, ops))
    };
    parse().map_err(|problem| RecordError {
        agent: key.to_string(),
        problem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EventKind;

    use crate::testing::t;

    #[test]
    fn an_agent_survives_its_record() {
        let mut a = Agent::new(t(100));
        a.apply(EventKind::Starting, t(101));
        a.apply(EventKind::ServerDataSent, t(102));
        a.apply(EventKind::Stopped, t(103));
        a.incarnation = 7;
        a.last_seq = 9;
        a.evaluated = t(104);
        a.labels = Some(Arc::new(LabelSet::from(
            &[("site".to_string(), "eu".to_string())].into(),
        )));
        a.moved(None, Why::NoDataReceived, t(100), 8);
        a.moved(Some(Why::NoDataReceived), Why::Stopped, t(103), 8);
        a.evaluated = t(104);
        let ops = OpsRecord {
            maintenance: Some(MarkRecord {
                reason: "kernel upgrade".into(),
                by: "operator/ana".into(),
                since: 100,
                until: 200,
            }),
            ..OpsRecord::default()
        };
        let (id, b, back) = decode("a", &encode(&a, Some(ops.clone()))).expect("decodes");
        assert_eq!(back, Some(ops));
        assert_eq!(id.as_str(), "a");
        assert_eq!(b.to_record(), a.to_record());
        assert_eq!(b.facts(), a.facts());
        assert_eq!(b.history(), a.history());
        assert!(!b.connected());
    }

    #[test]
    fn damaged_records_say_what_is_wrong() {
        let err = decode("a", &[0xff, 0xff, 0xff]).expect_err("garbage");
        assert!(matches!(err.problem, RecordProblem::Decode(_)), "{err}");
        let err = decode("not an id", &[]).expect_err("bad key");
        assert!(matches!(err.problem, RecordProblem::Id(_)), "{err}");
        let bad_reason = AgentRecord {
            why: 42,
            ..AgentRecord::default()
        };
        let err = decode("a", &bad_reason.encode_to_vec()).expect_err("bad reason");
        assert!(
            matches!(
                err.problem,
                RecordProblem::UnknownWhy {
                    field: "reason",
                    code: 42
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("agent \"a\""), "{err}");
        let bad_time = AgentRecord {
            why: 1,
            last_heard: i64::MAX,
            ..AgentRecord::default()
        };
        let err = decode("a", &bad_time.encode_to_vec()).expect_err("bad time");
        assert!(
            matches!(
                err.problem,
                RecordProblem::Time {
                    field: "last_heard",
                    ..
                }
            ),
            "{err}"
        );
    }
}
