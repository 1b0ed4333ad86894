//! The registry's value types: what callers pass in (selectors, limits) and
//! get back (views, pages, summaries, transitions, changes). Plain data, no
//! locks.

use std::num::NonZeroU32;
use std::sync::Arc;

use fleet_health_sensor::{Sensor, Time};

use crate::model::{AgentId, ByWhy, LabelSet, Labels, MaintenanceFilter, State, Why};

use super::record::{ClaimRecord, GivenUpRecord, MarkRecord};

/// Limits that protect the server.
#[derive(Clone, Debug)]
pub struct Limits {
    /// The most agents the registry will know.
    pub max_agents: usize,
    /// Capacity of the change feed; a watcher further behind resyncs.
    pub watch_buffer: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_agents: 1_000_000,
            watch_buffer: 4096,
        }
    }
}

/// A refusal by the registry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The agent cap is reached.
    #[error("the server already knows {0} agents, its limit (--max-agents)")]
    TooManyAgents(usize),
    /// The agent is not known.
    #[error("agent {0} is not known")]
    NotFound(String),
    /// A newer stream for the same agent took over.
    #[error("a newer stream for agent {0} took over")]
    Superseded(String),
    /// The agent was forgotten while its stream was open.
    #[error("agent {0} was forgotten by an operator")]
    Forgotten(String),
}

/// One change of an agent's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    /// When the verdict changed (the due time, for a time-driven change).
    pub at: Time,
    /// The reason before (`None` for the agent's first status).
    pub from: Option<Why>,
    /// The reason after.
    pub to: Why,
}

/// Everything known of one agent, evaluated at one time.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentView {
    /// The agent.
    pub id: AgentId,
    /// Why it is in its state.
    pub why: Why,
    /// Since when it has had this reason.
    pub since: Time,
    /// When it was last heard from.
    pub last_heard: Time,
    /// When it was first heard from.
    pub first_seen: Time,
    /// The incarnation of its last Hello.
    pub incarnation: u64,
    /// The highest sequence number applied for that incarnation.
    pub last_seq: u64,
    /// Its labels.
    pub labels: Option<Arc<LabelSet>>,
    /// Its sensor: the reference's four times and registration.
    pub sensor: Sensor,
    /// When its status will next change if nothing is heard.
    pub next_change: Option<Time>,
    /// Whether a stream from it is open.
    pub connected: bool,
    /// When it said "stopped", if it is stopped.
    pub stopped_at: Option<Time>,
    /// The time this view was evaluated at (now, or the as-of time).
    pub evaluated_at: Time,
    /// Its maintenance mark, if one is in force then.
    pub maintenance: Option<MarkRecord>,
    /// The remediation claim on it, if one holds then.
    pub claim: Option<ClaimRecord>,
    /// Set when a remediator gave up on it.
    pub given_up: Option<GivenUpRecord>,
}

impl AgentView {
    /// The agent's state.
    pub fn state(&self) -> State {
        self.why.state()
    }
}

/// The storm guard's reading.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StormView {
    /// Whether the faulty share is at or above the threshold, in a fleet of
    /// at least the minimum size.
    pub active: bool,
    /// Faulty agents (restart candidates).
    pub faulty: u64,
    /// Healthy and faulty agents: the fleet the share is taken of
    /// (inactive agents do not count).
    pub active_agents: u64,
    /// The faulty share that raises the flag (`--storm-share`).
    pub threshold: f64,
    /// The configured minimum fleet.
    pub min_agents: u64,
    /// The reason more than half the faulty agents share, and how many.
    pub dominant: Option<(Why, u64)>,
    /// Agents under maintenance, counted in neither `faulty` nor
    /// `active_agents`.
    pub maintenance: u64,
    /// The faulty agents not under maintenance, by reason.
    pub faulty_by_why: ByWhy<u64>,
}

impl StormView {
    /// Faulty share of the active fleet.
    pub fn share(&self) -> f64 {
        if self.active_agents == 0 {
            0.0
        } else {
            self.faulty as f64 / self.active_agents as f64
        }
    }
}

/// What watchers are told.
#[derive(Clone, Debug)]
pub enum Change {
    /// An agent's status changed (or it was first heard of: `before` is `None`).
    Status {
        /// Its new status.
        view: Arc<AgentView>,
        /// Its reason before.
        before: Option<Why>,
        /// Whether it was under maintenance before.
        was_maintained: bool,
    },
    /// An agent was forgotten.
    Forgotten {
        /// Its status just before.
        last: Arc<AgentView>,
    },
    /// The storm flag changed.
    Storm(StormView),
}

pub use crate::model::StateFilter;

/// Which agents a list or watch takes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Selector {
    /// Which states are taken.
    pub filter: StateFilter,
    /// Any of these reasons; empty: any.
    pub whys: Vec<Why>,
    /// All of these labels.
    pub labels: Labels,
    /// Agents under maintenance: by default left out of faulty lists only.
    pub maintenance: MaintenanceFilter,
    /// Only agents whose ID contains this text (case-sensitive); `None`:
    /// any ID.
    pub id_contains: Option<String>,
}

impl Selector {
    /// Whether an agent with this ID may be selected (its ID contains the
    /// text asked for, if any). Cheaper than [`Selector::matches`], which
    /// does not look at the ID: check this first.
    pub fn takes_id(&self, id: &str) -> bool {
        self.id_contains
            .as_deref()
            .is_none_or(|text| id.contains(text))
    }

    /// Whether an agent with this reason and these labels, under
    /// maintenance or not, is selected (its ID aside: see
    /// [`Selector::takes_id`]).
    pub fn matches(&self, why: Why, labels: Option<&LabelSet>, maintained: bool) -> bool {
        self.filter.takes(why.state())
            && self.maintenance.takes(self.filter, maintained)
            && (self.whys.is_empty() || self.whys.contains(&why))
            && self
                .labels
                .iter()
                .all(|(k, v)| labels.is_some_and(|l| l.get(k).is_some_and(|x| x == v)))
    }

    /// The reasons whose agents this selector may take, in [`Why::ALL`]
    /// order.
    pub(super) fn whys(&self) -> Vec<Why> {
        Why::ALL
            .into_iter()
            .filter(|r| self.filter.takes(r.state()))
            .filter(|r| self.whys.is_empty() || self.whys.contains(r))
            .collect()
    }
}

/// The order of a list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Order {
    /// By ID.
    #[default]
    Id,
    /// Longest in its current state first: by the time the agent entered
    /// that state, earliest first; ties by ID.
    LongestFirst,
    /// Newest in its current state first: by the time the agent entered
    /// that state, latest first; ties by ID.
    NewestFirst,
}

/// Where a page of a list sorted by time in state ends: the next page starts
/// strictly after this place in the list's order. It holds values, not a
/// reference to the agent, so it still works after that agent is forgotten
/// or changes state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SortCursor {
    /// The time the last agent of the page entered its state, as listed.
    pub since: Time,
    /// The ID of the last agent of the page.
    pub id: String,
}

impl SortCursor {
    /// The place just after this agent, as listed.
    pub fn after(view: &AgentView) -> SortCursor {
        SortCursor {
            since: view.since,
            id: view.id.to_string(),
        }
    }
}

/// One page of a list.
#[derive(Clone, Debug)]
pub struct Page {
    /// The agents, in the list's order (by ID unless sorted otherwise).
    pub agents: Vec<AgentView>,
    /// Whether more follow the last one.
    pub more: bool,
    /// The storm guard at the evaluated time.
    pub storm: StormView,
    /// The time the page was evaluated at (now, or the as-of time).
    pub evaluated_at: Time,
}

/// Counts of the fleet.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Agents by reason.
    pub by_why: ByWhy<u64>,
    /// Agents with an open stream.
    pub connected: u64,
    /// The storm guard at the evaluated time.
    pub storm: StormView,
    /// The time the counts were evaluated at (now, or the as-of time).
    pub evaluated_at: Time,
    /// `not reporting` is held back until then, if that is later.
    pub grace_until: Option<Time>,
    /// Agents under maintenance by reason.
    pub maintained: ByWhy<u64>,
    /// Agents a remediator gave up on.
    pub given_up: u64,
    /// Agents claimed by a remediator now.
    pub claimed: u64,
}

impl Summary {
    /// Agents in a state.
    pub fn count(&self, s: State) -> u64 {
        self.by_why.in_state(s)
    }

    /// Every agent.
    pub fn total(&self) -> u64 {
        self.by_why.total()
    }
}

/// An open agent stream, as the registry knows it.
#[derive(Clone, Debug)]
pub struct Session {
    /// The agent.
    pub id: AgentId,
    /// The reporter's incarnation.
    pub incarnation: u64,
    /// This stream's token: tells it from a stream that took over.
    pub(super) token: StreamToken,
}

impl Session {
    /// This stream's token: it tells the stream from an older or newer one
    /// of the same agent (see [`Registry::is_open`](super::Registry::is_open)).
    pub fn token(&self) -> u32 {
        self.token.get()
    }
}

/// The token of one agent stream; an agent's record holds the token of its
/// open stream, if any.
pub(super) type StreamToken = NonZeroU32;

/// The outcome of a batch of events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Every event up to this sequence number is applied.
    pub applied_through: u64,
    /// Events applied now.
    pub applied: u32,
    /// Events skipped as re-sends.
    pub duplicates: u32,
    /// Events whose time was clamped.
    pub clamped: u32,
    /// The commit that makes this durable (0: nothing to wait for).
    pub commit: u64,
}

/// The outcome of a Hello.
#[derive(Clone, Debug)]
pub struct Connected {
    /// The stream's session.
    pub session: Session,
    /// The last sequence number applied for this incarnation.
    pub last_applied_seq: u64,
    /// The commit that makes this durable (0: nothing to wait for).
    pub commit: u64,
}
