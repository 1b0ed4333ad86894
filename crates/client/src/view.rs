//! What the fleet service answers, as plain client-side values.
//!
//! Every answer of `FleetService` is decoded here, once, with `TryFrom`:
//! timestamps become [`Time`]s (through `fleet_health_types::wire`), states
//! and whys become the vocabulary's [`State`] and [`Why`], a why's text is
//! settled (the server's text, or the known text of its why). Nothing above
//! [`crate::FleetClient`] sees a protobuf message or `prost_types`.
//!
//! A timestamp the server sends out of range or not normalized is a
//! [`DecodeError`], not a silently missing time. A state or why this client
//! does not know (from a newer server) reads as `None`, and the server's text
//! for it is kept: `AgentView::why_text`, `WhyCount::why_text`,
//! `Transition::to_why_text` and `WhyText::text` show what the server said.

use fleet_health_sensor::Time;
use fleet_health_types::{Labels, State, Why, wire};

use crate::ops::{Activity, Claim, GivenUp, Maintenance};
use crate::proto::{self, watch_agents_response::Event as WireEvent};

/// An answer of the server that this client cannot make sense of.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the server sent an invalid {field}: {reason}")]
pub struct DecodeError {
    /// Which field (`"AgentStatus.since"`).
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl DecodeError {
    fn missing(field: &'static str) -> DecodeError {
        DecodeError {
            field,
            reason: "it is missing".into(),
        }
    }
}

/// An optional wire timestamp as an optional [`Time`]; a timestamp that is
/// present but invalid is an error naming `field`.
pub(crate) fn time(
    field: &'static str,
    ts: Option<&prost_types::Timestamp>,
) -> Result<Option<Time>, DecodeError> {
    wire::opt_time(ts, field).map_err(|e| {
        // The wire error names the field first; the decode error names it once.
        let text = e.to_string();
        let reason = text
            .strip_prefix(field)
            .and_then(|rest| rest.strip_prefix(": "))
            .unwrap_or(&text)
            .to_owned();
        DecodeError { field, reason }
    })
}

/// A state from its wire number; `None` for unset (0) or one this version
/// does not know.
fn state(v: i32) -> Option<State> {
    State::try_from(v).ok()
}

/// A why from its wire number; `None` for unset (0) or one this version
/// does not know.
fn why(v: i32) -> Option<Why> {
    Why::try_from(v).ok()
}

/// The text of a why: the server's, or else the known text of `why`.
fn text_of(why: Option<Why>, text: String) -> String {
    match why {
        Some(w) if text.is_empty() => w.as_str().to_owned(),
        _ => text,
    }
}

/// One agent as the server sees it, at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentView {
    /// The agent's ID.
    pub agent_id: String,
    /// Whether the sensor's verdict is healthy.
    pub healthy: bool,
    /// Healthy, faulty or inactive; `None`: a state this version does not
    /// know.
    pub state: Option<State>,
    /// Why the agent is in its state; `None`: a why this version does not
    /// know (its text is in `why_text`).
    pub why: Option<Why>,
    /// The why as the server words it (`"no data sent to server"`).
    pub why_text: String,
    /// Since when the agent has had this state and why.
    pub since: Option<Time>,
    /// When the server last heard from the agent.
    pub last_heard: Option<Time>,
    /// Whether the agent has a stream open now.
    pub connected: bool,
    /// The agent's labels.
    pub labels: Labels,
    /// The incarnation of the agent process that reported last.
    pub incarnation: u64,
    /// The last sequence number applied from that incarnation.
    pub last_seq: u64,
    /// When the status will change by itself if nothing is heard; `None`:
    /// no change due.
    pub next_change: Option<Time>,
    /// When the agent said `stopped`, if it did.
    pub stopped_at: Option<Time>,
    /// When the server first heard of the agent.
    pub first_seen: Option<Time>,
    /// The time this view was evaluated at.
    pub evaluated_at: Option<Time>,
    /// The sensor's recorded times, when the server sent them.
    pub sensor: Option<SensorView>,
    /// Its maintenance mark, if it is under maintenance.
    pub maintenance: Option<Maintenance>,
    /// The remediation claim on it, if one holds.
    pub claim: Option<Claim>,
    /// Set when a remediator gave up on it.
    pub given_up: Option<GivenUp>,
}

/// The times the agent's sensor has recorded (`Time::ZERO`: never).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SensorView {
    /// The last `starting`.
    pub started_at: Option<Time>,
    /// The last `shutting_down`.
    pub shutdown_at: Option<Time>,
    /// The last `server_data_received`.
    pub last_received: Option<Time>,
    /// The last `server_data_sent`.
    pub last_sent: Option<Time>,
    /// Whether the agent is registered.
    pub registered: bool,
}

impl TryFrom<proto::AgentStatus> for AgentView {
    type Error = DecodeError;

    fn try_from(a: proto::AgentStatus) -> Result<AgentView, DecodeError> {
        let why = why(a.why);
        Ok(AgentView {
            since: time("AgentStatus.since", a.since.as_ref())?,
            last_heard: time("AgentStatus.last_heard", a.last_heard.as_ref())?,
            next_change: time("AgentStatus.next_change", a.next_change.as_ref())?,
            stopped_at: time("AgentStatus.stopped_at", a.stopped_at.as_ref())?,
            first_seen: time("AgentStatus.first_seen", a.first_seen.as_ref())?,
            evaluated_at: time("AgentStatus.evaluated_at", a.evaluated_at.as_ref())?,
            sensor: a.sensor.map(SensorView::try_from).transpose()?,
            maintenance: a.maintenance.map(Maintenance::try_from).transpose()?,
            claim: a.claim.map(Claim::try_from).transpose()?,
            given_up: a.given_up.map(GivenUp::try_from).transpose()?,
            agent_id: a.agent_id,
            healthy: a.healthy,
            state: state(a.state),
            why,
            why_text: text_of(why, a.why_text),
            connected: a.connected,
            labels: a.labels.into_iter().collect(),
            incarnation: a.incarnation,
            last_seq: a.last_seq,
        })
    }
}

impl TryFrom<proto::SensorTimes> for SensorView {
    type Error = DecodeError;

    fn try_from(s: proto::SensorTimes) -> Result<SensorView, DecodeError> {
        Ok(SensorView {
            started_at: time("SensorTimes.started_at", s.started_at.as_ref())?,
            shutdown_at: time("SensorTimes.shutdown_at", s.shutdown_at.as_ref())?,
            last_received: time("SensorTimes.last_received", s.last_received.as_ref())?,
            last_sent: time("SensorTimes.last_sent", s.last_sent.as_ref())?,
            registered: s.registered,
        })
    }
}

/// The storm guard: whether a large share of the active fleet is faulty at
/// once.
#[derive(Clone, Debug, PartialEq)]
pub struct Storm {
    /// Whether the storm flag is raised.
    pub active: bool,
    /// How many active agents are faulty.
    pub faulty: u64,
    /// How many agents are active.
    pub active_agents: u64,
    /// `faulty / active_agents`.
    pub faulty_share: f64,
    /// The share at which the flag rises.
    pub threshold: f64,
    /// The fewest active agents for the flag to rise at all.
    pub min_agents: u64,
    /// The why most faulty agents give, if any are faulty.
    pub dominant: Option<WhyText>,
    /// How many faulty agents give the dominant why.
    pub dominant_count: u64,
    /// Agents under maintenance, counted in neither `faulty` nor
    /// `active_agents`.
    pub maintenance: u64,
}

/// A why with its text as the server words it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WhyText {
    /// The why; `None`: one this version does not know.
    pub why: Option<Why>,
    /// Its text: the server's, or the known text of `why`.
    pub text: String,
}

impl From<proto::Storm> for Storm {
    fn from(s: proto::Storm) -> Storm {
        let dominant_why = why(s.dominant_why);
        Storm {
            active: s.active,
            faulty: s.faulty,
            active_agents: s.active_agents,
            faulty_share: s.faulty_share,
            threshold: s.threshold,
            min_agents: s.min_agents,
            dominant: (s.dominant_why != 0).then(|| WhyText {
                why: dominant_why,
                text: text_of(dominant_why, s.dominant_why_text),
            }),
            dominant_count: s.dominant_count,
            maintenance: s.maintenance,
        }
    }
}

/// One page of a list.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AgentPage {
    /// The agents of the page, ordered by ID.
    pub agents: Vec<AgentView>,
    /// The token of the next page; `None` on the last page.
    pub next_page_token: Option<String>,
    /// The storm guard.
    pub storm: Option<Storm>,
    /// When the page was evaluated.
    pub evaluated_at: Option<Time>,
    /// Several servers: part of the fleet was missing from the answer
    /// (shards changing hands, or a server that did not answer).
    pub incomplete: bool,
}

impl TryFrom<proto::ListAgentsResponse> for AgentPage {
    type Error = DecodeError;

    fn try_from(p: proto::ListAgentsResponse) -> Result<AgentPage, DecodeError> {
        Ok(AgentPage {
            agents: p
                .agents
                .into_iter()
                .map(AgentView::try_from)
                .collect::<Result<_, _>>()?,
            next_page_token: (!p.next_page_token.is_empty()).then_some(p.next_page_token),
            storm: p.storm.map(Storm::from),
            evaluated_at: time("ListAgentsResponse.evaluated_at", p.evaluated_at.as_ref())?,
            incomplete: p.incomplete,
        })
    }
}

/// Every agent that matched a list, across all its pages.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AgentList {
    /// The agents, ordered by ID.
    pub agents: Vec<AgentView>,
    /// The storm guard, as the last page reported it.
    pub storm: Option<Storm>,
    /// When the first page was evaluated.
    pub evaluated_at: Option<Time>,
    /// Several servers: some page missed part of the fleet.
    pub incomplete: bool,
}

/// How many agents give one why in one state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WhyCount {
    /// The why; `None`: one this version does not know.
    pub why: Option<Why>,
    /// Its text, as the server words it.
    pub why_text: String,
    /// The state the why goes with; `None`: one this version does not know.
    pub state: Option<State>,
    /// How many agents.
    pub count: u64,
}

/// The fleet in numbers.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// Every known agent.
    pub total: u64,
    /// The healthy ones.
    pub healthy: u64,
    /// The faulty ones.
    pub faulty: u64,
    /// The inactive ones.
    pub inactive: u64,
    /// The ones with a stream open.
    pub connected: u64,
    /// Counts by why, largest first.
    pub by_why: Vec<WhyCount>,
    /// The storm guard.
    pub storm: Option<Storm>,
    /// When the summary was evaluated.
    pub evaluated_at: Option<Time>,
    /// Until when "not reporting" is held back after a server restart.
    pub grace_until: Option<Time>,
    /// Agents under maintenance (counted in the figures above too).
    pub maintenance: u64,
    /// Of those, the faulty ones.
    pub maintenance_faulty: u64,
    /// Agents a remediator gave up on.
    pub given_up: u64,
    /// Agents claimed by a remediator now.
    pub claimed: u64,
    /// Several servers: the counts leave part of the fleet out (shards
    /// changing hands, or a server that did not answer).
    pub incomplete: bool,
}

impl TryFrom<proto::GetSummaryResponse> for Summary {
    type Error = DecodeError;

    fn try_from(s: proto::GetSummaryResponse) -> Result<Summary, DecodeError> {
        Ok(Summary {
            total: s.total,
            healthy: s.healthy,
            faulty: s.faulty,
            inactive: s.inactive,
            connected: s.connected,
            by_why: s
                .by_why
                .into_iter()
                .map(|w| {
                    let why = why(w.why);
                    WhyCount {
                        why,
                        state: state(w.state),
                        why_text: text_of(why, w.why_text),
                        count: w.count,
                    }
                })
                .collect(),
            storm: s.storm.map(Storm::from),
            evaluated_at: time("GetSummaryResponse.evaluated_at", s.evaluated_at.as_ref())?,
            grace_until: time("GetSummaryResponse.grace_until", s.grace_until.as_ref())?,
            maintenance: s.maintenance,
            maintenance_faulty: s.maintenance_faulty,
            given_up: s.given_up,
            claimed: s.claimed,
            incomplete: s.incomplete,
        })
    }
}

/// A state with its why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateAndWhy {
    /// The state; `None`: one this version does not know.
    pub state: Option<State>,
    /// The why; `None`: one this version does not know.
    pub why: Option<Why>,
}

/// One change of an agent's status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// When it changed.
    pub at: Option<Time>,
    /// The status before; `None` for the first status of a new agent.
    pub from: Option<StateAndWhy>,
    /// The state after; `None`: one this version does not know.
    pub to_state: Option<State>,
    /// The why after; `None`: one this version does not know.
    pub to_why: Option<Why>,
    /// The text of the why after, as the server words it.
    pub to_why_text: String,
}

impl TryFrom<proto::Transition> for Transition {
    type Error = DecodeError;

    fn try_from(t: proto::Transition) -> Result<Transition, DecodeError> {
        let to_why = why(t.to_why);
        Ok(Transition {
            at: time("Transition.at", t.at.as_ref())?,
            from: (t.from_state != 0).then(|| StateAndWhy {
                state: state(t.from_state),
                why: why(t.from_why),
            }),
            to_state: state(t.to_state),
            to_why,
            to_why_text: text_of(to_why, t.to_why_text),
        })
    }
}

/// The recent changes of one agent's status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct History {
    /// The agent.
    pub agent_id: String,
    /// Its transitions, oldest first.
    pub transitions: Vec<Transition>,
    /// What operators and remediators did to it, oldest first.
    pub activity: Vec<Activity>,
}

impl TryFrom<proto::GetHistoryResponse> for History {
    type Error = DecodeError;

    fn try_from(h: proto::GetHistoryResponse) -> Result<History, DecodeError> {
        Ok(History {
            agent_id: h.agent_id,
            transitions: h
                .transitions
                .into_iter()
                .map(Transition::try_from)
                .collect::<Result<_, _>>()?,
            activity: h
                .activity
                .into_iter()
                .map(Activity::try_from)
                .collect::<Result<_, _>>()?,
        })
    }
}

/// One message of a watch.
#[derive(Clone, Debug, PartialEq)]
pub enum WatchChange {
    /// An agent of the current matching set (before [`WatchChange::Synced`]).
    Snapshot(AgentView),
    /// The snapshot is complete; changes follow.
    Synced {
        /// How many agents the snapshot held.
        count: u64,
        /// The storm guard at that moment.
        storm: Option<Storm>,
        /// When the snapshot was taken.
        at: Option<Time>,
    },
    /// An agent entered the set or its status changed.
    Changed(AgentView),
    /// An agent left the set.
    Left {
        /// The agent.
        agent_id: String,
        /// Its status after leaving, unless it was forgotten.
        status: Option<AgentView>,
        /// Whether it left because it was forgotten.
        forgotten: bool,
    },
    /// The watch starts over: a fresh snapshot and a `Synced` follow, and
    /// they replace everything seen before.
    Resync {
        /// Why it starts over.
        cause: ResyncCause,
    },
    /// The storm flag rose or fell.
    Storm(Storm),
}

/// Why a watch starts over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResyncCause {
    /// The watcher fell behind the server, which dropped this many changes.
    FellBehind {
        /// How many changes were dropped.
        missed: u64,
    },
    /// The connection to the server was lost and made again; what changed
    /// in between is not known.
    Reconnected {
        /// What ended the earlier watch.
        after: String,
    },
}

impl TryFrom<WireEvent> for WatchChange {
    type Error = DecodeError;

    fn try_from(e: WireEvent) -> Result<WatchChange, DecodeError> {
        Ok(match e {
            WireEvent::Snapshot(a) => WatchChange::Snapshot(a.try_into()?),
            WireEvent::Synced(s) => WatchChange::Synced {
                count: s.count,
                storm: s.storm.map(Storm::from),
                at: time("Synced.at", s.at.as_ref())?,
            },
            WireEvent::Changed(a) => WatchChange::Changed(a.try_into()?),
            WireEvent::Left(l) => WatchChange::Left {
                agent_id: l.agent_id,
                status: l.status.map(AgentView::try_from).transpose()?,
                forgotten: l.forgotten,
            },
            WireEvent::Resync(r) => WatchChange::Resync {
                cause: ResyncCause::FellBehind { missed: r.missed },
            },
            WireEvent::Storm(s) => WatchChange::Storm(s.into()),
        })
    }
}

/// The agent of a `GetAgent` answer, which must hold one.
pub(crate) fn the_agent(r: proto::GetAgentResponse) -> Result<AgentView, DecodeError> {
    r.agent
        .ok_or_else(|| DecodeError::missing("GetAgentResponse.agent"))?
        .try_into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(secs: i64) -> Option<prost_types::Timestamp> {
        Some(wire::timestamp(Time::from_unix(secs, 0).unwrap()))
    }

    #[test]
    fn an_agent_decodes_with_its_times_and_settled_text() {
        let wire = proto::AgentStatus {
            agent_id: "db-7".into(),
            state: proto::State::Faulty as i32,
            why: proto::Why::NoDataSent as i32,
            why_text: String::new(),
            since: ts(100),
            labels: [("site".to_owned(), "eu".to_owned())].into_iter().collect(),
            sensor: Some(proto::SensorTimes {
                last_sent: ts(0),
                ..Default::default()
            }),
            ..Default::default()
        };
        let a = AgentView::try_from(wire).unwrap();
        assert_eq!(a.state, Some(State::Faulty));
        assert_eq!(a.why, Some(Why::NoDataSent));
        assert_eq!(a.why_text, "no data sent to server");
        assert_eq!(a.since, Some(Time::from_unix(100, 0).unwrap()));
        assert_eq!(a.last_heard, None);
        assert_eq!(a.sensor.unwrap().last_sent, Some(Time::ZERO));
        assert_eq!(a.labels["site"], "eu");
    }

    #[test]
    fn an_invalid_timestamp_is_an_error_naming_the_field() {
        let wire = proto::AgentStatus {
            last_heard: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: -5,
            }),
            ..Default::default()
        };
        let e = AgentView::try_from(wire).unwrap_err();
        assert_eq!(e.field, "AgentStatus.last_heard");
        assert_eq!(
            e.to_string(),
            "the server sent an invalid AgentStatus.last_heard: nanos -5 is not in 0..1000000000"
        );
        let far = proto::GetSummaryResponse {
            grace_until: Some(prost_types::Timestamp {
                seconds: i64::MAX,
                nanos: 0,
            }),
            ..Default::default()
        };
        let e = Summary::try_from(far).unwrap_err();
        assert!(e.to_string().contains("grace_until"), "{e}");
    }

    #[test]
    fn unset_enums_become_none() {
        let storm = Storm::from(proto::Storm::default());
        assert_eq!(storm.dominant, None);
        let t = Transition::try_from(proto::Transition {
            to_state: proto::State::Healthy as i32,
            to_why: proto::Why::AllIsOk as i32,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(t.from, None);
        assert_eq!(t.to_state, Some(State::Healthy));
        assert_eq!(t.to_why, Some(Why::AllIsOk));
        assert_eq!(t.to_why_text, "all is ok");
        assert_eq!(
            the_agent(proto::GetAgentResponse { agent: None }).unwrap_err(),
            DecodeError::missing("GetAgentResponse.agent")
        );
    }

    #[test]
    fn a_why_from_a_newer_server_keeps_its_text() {
        let wire = proto::AgentStatus {
            agent_id: "db-7".into(),
            state: 42,
            why: 77,
            why_text: "cosmic rays".into(),
            ..Default::default()
        };
        let a = AgentView::try_from(wire).unwrap();
        assert_eq!((a.state, a.why), (None, None));
        assert_eq!(a.why_text, "cosmic rays");
        let storm = Storm::from(proto::Storm {
            dominant_why: 77,
            dominant_why_text: "cosmic rays".into(),
            ..Default::default()
        });
        assert_eq!(
            storm.dominant,
            Some(WhyText {
                why: None,
                text: "cosmic rays".into()
            })
        );
        let t = Transition::try_from(proto::Transition {
            from_state: 42,
            from_why: 77,
            to_state: proto::State::Faulty as i32,
            to_why: proto::Why::NotReporting as i32,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            t.from,
            Some(StateAndWhy {
                state: None,
                why: None
            })
        );
        assert_eq!(t.to_why_text, "not reporting");
    }

    #[test]
    fn the_last_page_has_no_token() {
        let page = AgentPage::try_from(proto::ListAgentsResponse::default()).unwrap();
        assert_eq!(page.next_page_token, None);
        let page = AgentPage::try_from(proto::ListAgentsResponse {
            next_page_token: "x".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(page.next_page_token.as_deref(), Some("x"));
    }
}
