//! The fleet: one record per agent in a [`DashMap`], the time-driven
//! transitions, the faulty index, the counts, and the change feed for watchers.
//!
//! - Events are applied under the agent's own map entry; no guard escapes and
//!   none is held across an `.await` (nothing here is async).
//! - Each agent has at most one live entry in a timer heap, at the time its
//!   verdict would next change if nothing were heard. An event that moves that
//!   time earlier pushes a new entry; one that moves it later leaves the old
//!   entry, which re-evaluates and re-schedules when it comes due. So the
//!   server never polls every agent, and a heartbeating fleet costs one heap
//!   operation per agent per silence window.
//! - Lock order: an agent's map shard, then the faulty index or the timer heap.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use fleet_health_sensor::{Sensor, Time};
use tokio::sync::{Notify, broadcast};

use crate::clock::Clock;
use crate::commit_gate::CommitGate;
use crate::metrics::Metrics;
use crate::model::{
    AgentEvent, AgentId, Eval, EventKind, Facts, FleetRules, LabelSet, Labels, Reason, State,
};
use crate::store::{AgentRecord, StoreError, TransitionRecord};

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
    /// When.
    pub at: Time,
    /// The reason before (`None` for the agent's first status).
    pub from: Option<Reason>,
    /// The reason after.
    pub to: Reason,
}

/// Everything known of one agent, evaluated at one time.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentView {
    /// The agent.
    pub id: AgentId,
    /// Why it is in its state.
    pub reason: Reason,
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
    /// Its sensor.
    pub sensor: Sensor,
    /// When its status will next change if nothing is heard.
    pub next_change: Option<Time>,
    /// Whether a stream from it is open.
    pub connected: bool,
    /// When it said "stopped", if it is stopped.
    pub stopped_at: Option<Time>,
    /// The time of the evaluation.
    pub evaluated_at: Time,
}

impl AgentView {
    /// The agent's state.
    pub fn state(&self) -> State {
        self.reason.state()
    }
}

/// The storm guard's reading.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StormView {
    /// The flag.
    pub active: bool,
    /// Faulty agents.
    pub faulty: u64,
    /// Healthy and faulty agents.
    pub active_agents: u64,
    /// The configured share.
    pub threshold: f64,
    /// The configured minimum fleet.
    pub min_agents: u64,
    /// The reason more than half the faulty agents share, and how many.
    pub dominant: Option<(Reason, u64)>,
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
        before: Option<Reason>,
    },
    /// An agent was forgotten.
    Forgotten {
        /// Its status just before.
        last: Arc<AgentView>,
    },
    /// The storm flag changed.
    Storm(StormView),
}

/// Which states a query takes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StateFilter {
    /// Healthy and faulty.
    #[default]
    Active,
    /// Faulty only.
    Faulty,
    /// Healthy only.
    Healthy,
    /// Inactive only.
    Inactive,
    /// Everything.
    All,
}

impl StateFilter {
    fn takes(self, s: State) -> bool {
        match self {
            StateFilter::Active => s != State::Inactive,
            StateFilter::Faulty => s == State::Faulty,
            StateFilter::Healthy => s == State::Healthy,
            StateFilter::Inactive => s == State::Inactive,
            StateFilter::All => true,
        }
    }
}

/// Which agents a list or watch takes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Selector {
    /// States.
    pub filter: StateFilter,
    /// Any of these reasons; empty: any.
    pub reasons: Vec<Reason>,
    /// All of these labels.
    pub labels: Labels,
}

impl Selector {
    /// Whether an agent with this reason and these labels is selected.
    pub fn matches(&self, reason: Reason, labels: Option<&LabelSet>) -> bool {
        self.filter.takes(reason.state())
            && (self.reasons.is_empty() || self.reasons.contains(&reason))
            && self
                .labels
                .iter()
                .all(|(k, v)| labels.is_some_and(|l| l.get(k).is_some_and(|x| x == v)))
    }
}

/// One page of a list.
#[derive(Clone, Debug)]
pub struct Page {
    /// The agents, by ID.
    pub agents: Vec<AgentView>,
    /// Whether more follow the last one.
    pub more: bool,
    /// The storm guard at the evaluated time.
    pub storm: StormView,
    /// The evaluated time.
    pub evaluated_at: Time,
}

/// Counts of the fleet.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Agents by reason, in [`Reason::ALL`] order.
    pub by_reason: [u64; 9],
    /// Agents with an open stream.
    pub connected: u64,
    /// The storm guard.
    pub storm: StormView,
    /// The evaluated time.
    pub evaluated_at: Time,
    /// `not reporting` is held back until then, if that is later.
    pub grace_until: Option<Time>,
}

impl Summary {
    /// Agents in a state.
    pub fn count(&self, s: State) -> u64 {
        in_state(&self.by_reason, s)
    }

    /// Every agent.
    pub fn total(&self) -> u64 {
        self.by_reason.iter().sum()
    }
}

/// How many of `counts` (by reason) are in state `s`.
fn in_state(counts: &[u64; 9], s: State) -> u64 {
    Reason::ALL
        .iter()
        .filter(|r| r.state() == s)
        .map(|r| counts[r.index()])
        .sum()
}

/// An open agent stream, as the registry knows it.
#[derive(Clone, Debug)]
pub struct Session {
    /// The agent.
    pub id: AgentId,
    /// The reporter's incarnation.
    pub incarnation: u64,
    /// This stream's token.
    token: u32,
}

impl Session {
    /// This stream's token: it tells the stream from an older or newer one
    /// of the same agent (see [`Registry::is_open`]).
    pub fn token(&self) -> u32 {
        self.token
    }
}

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

/// What the committer writes: the latest record of each changed agent.
#[derive(Debug, Default)]
pub struct DirtyBatch {
    /// The commit these belong to.
    pub epoch: u64,
    /// Encoded records of agents that exist.
    pub upserts: Vec<(Arc<str>, Vec<u8>)>,
    /// Agents forgotten.
    pub deletes: Vec<Arc<str>>,
}

/// Changed agents waiting for the committer.
#[derive(Debug)]
struct Pending {
    keys: Vec<Arc<str>>,
    epoch: u64,
}

/// Group-commit bookkeeping, present when a durable store is in use.
struct Persist {
    pending: Mutex<Pending>,
    wake: Notify,
    committed: Arc<CommitGate>,
}

/// The label sets in use, each kept once however many agents carry it (a
/// fleet has few distinct sets: site, version). Sets no agent uses any more
/// are dropped whenever the table has doubled since the last sweep.
#[derive(Debug, Default)]
struct LabelInterner {
    sets: HashSet<Arc<LabelSet>>,
    sweep_at: usize,
}

impl LabelInterner {
    fn intern(&mut self, set: Arc<LabelSet>) -> Arc<LabelSet> {
        if let Some(existing) = self.sets.get(&*set) {
            return existing.clone();
        }
        if self.sets.len() >= self.sweep_at {
            self.sets.retain(|s| Arc::strong_count(s) > 1);
            self.sweep_at = (self.sets.len() * 2).max(1024);
        }
        self.sets.insert(set.clone());
        set
    }
}

/// `Agent::stopped_at` when the agent is not stopped.
const NOT_STOPPED: Time = Time::MIN;

/// An agent's recent transitions, oldest first: a boxed slice, rebuilt at
/// each transition (transitions are rare next to events, and a slice costs
/// no spare capacity).
#[derive(Debug, Default)]
struct History(Option<Box<[Transition]>>);

impl History {
    fn as_slice(&self) -> &[Transition] {
        self.0.as_deref().unwrap_or(&[])
    }

    fn push(&mut self, t: Transition, cap: usize) {
        let old = self.as_slice();
        let keep = old.len().min(cap - 1);
        let mut v = Vec::with_capacity(keep + 1);
        v.extend_from_slice(&old[old.len() - keep..]);
        v.push(t);
        self.0 = Some(v.into_boxed_slice());
    }
}

/// The timer heap: each agent's next due time, earliest first.
type Timers = BinaryHeap<Reverse<(Time, Arc<str>)>>;

/// An agent's record.
#[derive(Debug)]
struct Agent {
    sensor: Sensor,
    last_heard: Time,
    first_seen: Time,
    since: Time,
    /// When the verdict was last settled.
    evaluated: Time,
    /// The time of this agent's live timer entry (`Time::MAX`: none).
    queued: Time,
    /// When it said "stopped" ([`NOT_STOPPED`]: it has not, or started since).
    stopped_at: Time,
    incarnation: u64,
    last_seq: u64,
    /// The open stream's token (0: none).
    stream: u32,
    reason: Reason,
    labels: Option<Arc<LabelSet>>,
    history: History,
    /// Queued for the committer.
    dirty: bool,
    /// Was already not reporting when the server restarted.
    no_grace: bool,
}

impl Agent {
    fn new(now: Time) -> Agent {
        Agent {
            sensor: Sensor::new(),
            last_heard: now,
            first_seen: now,
            since: now,
            evaluated: now,
            queued: Time::MAX,
            stopped_at: NOT_STOPPED,
            incarnation: 0,
            last_seq: 0,
            stream: 0,
            reason: Reason::AllIsOk,
            labels: None,
            history: History::default(),
            dirty: false,
            no_grace: false,
        }
    }

    fn to_record(&self) -> AgentRecord {
        let s = &self.sensor;
        AgentRecord {
            started_at: s.started_at().as_micros(),
            shutdown_at: s.shutdown_at().as_micros(),
            last_received: s.last_received().as_micros(),
            last_sent: s.last_sent().as_micros(),
            unregistered: !s.is_registered(),
            last_heard: self.last_heard.as_micros(),
            first_seen: self.first_seen.as_micros(),
            since: self.since.as_micros(),
            evaluated: self.evaluated.as_micros(),
            stopped_at: self.stopped().map(Time::as_micros),
            incarnation: self.incarnation,
            last_seq: self.last_seq,
            reason: self.reason.code(),
            labels: self
                .labels
                .as_deref()
                .map(LabelSet::to_map)
                .unwrap_or_default(),
            history: self
                .history
                .as_slice()
                .iter()
                .map(|t| TransitionRecord {
                    at: t.at.as_micros(),
                    from: t.from.map_or(0, Reason::code),
                    to: t.to.code(),
                })
                .collect(),
        }
    }

    fn from_record(r: AgentRecord) -> Result<Agent, String> {
        let time = |micros: i64, field: &str| {
            Time::from_micros(micros).map_err(|e| format!("{field}: {e}"))
        };
        let reason =
            |code: u32| Reason::from_code(code).ok_or_else(|| format!("unknown reason {code}"));
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
                    from: if t.from == 0 {
                        None
                    } else {
                        Some(reason(t.from)?)
                    },
                    to: reason(t.to)?,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let reason = reason(r.reason)?;
        Ok(Agent {
            sensor,
            last_heard: time(r.last_heard, "last_heard")?,
            first_seen: time(r.first_seen, "first_seen")?,
            since: time(r.since, "since")?,
            evaluated: time(r.evaluated, "evaluated")?,
            queued: Time::MAX,
            stopped_at: r
                .stopped_at
                .map(|t| time(t, "stopped_at"))
                .transpose()?
                .unwrap_or(NOT_STOPPED),
            incarnation: r.incarnation,
            last_seq: r.last_seq,
            stream: 0,
            reason,
            labels: (!r.labels.is_empty()).then(|| Arc::new(LabelSet::from(&r.labels))),
            history: History(Some(history.into_boxed_slice())),
            dirty: false,
            no_grace: reason == Reason::NotReporting,
        })
    }

    fn stopped(&self) -> Option<Time> {
        (self.stopped_at != NOT_STOPPED).then_some(self.stopped_at)
    }

    fn facts(&self) -> Facts {
        Facts {
            sensor: self.sensor,
            last_heard: self.last_heard,
            stopped_at: self.stopped(),
            connected: self.stream != 0,
            no_grace: self.no_grace,
        }
    }

    fn apply(&mut self, kind: EventKind, t: Time) {
        match kind {
            EventKind::Starting => {
                // A new life: a fresh sensor, as the original agent built one
                // at every process start.
                self.sensor = Sensor::new();
                self.sensor.starting(t);
                self.stopped_at = NOT_STOPPED;
            }
            EventKind::ShuttingDown => self.sensor.shutting_down(t),
            EventKind::ServerDataReceived => self.sensor.server_data_received(t),
            EventKind::ServerDataSent => self.sensor.server_data_sent(t),
            EventKind::Registered => self.sensor.registered(),
            EventKind::Unregistered => self.sensor.unregistered(),
            EventKind::Heartbeat => {}
            EventKind::Stopped => self.stopped_at = t,
        }
    }
}

/// The fleet registry: a cheap, cloneable handle.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    /// Boxed: the map's table then holds 24 bytes a slot, and its spare
    /// capacity (up to half of it) costs little.
    agents: DashMap<Arc<str>, Box<Agent>>,
    agent_count: AtomicUsize,
    connected: AtomicI64,
    rules: FleetRules,
    limits: Limits,
    clock: Arc<dyn Clock>,
    grace_from: Time,
    /// Agents were loaded from a store: the grace after a restart applies.
    restored: AtomicBool,
    faulty: Mutex<BTreeSet<Arc<str>>>,
    labels: Mutex<LabelInterner>,
    counts: [AtomicU64; 9],
    timers: Mutex<Timers>,
    wake: Notify,
    /// The time the scheduler sleeps until (micros; i64::MAX: indefinitely).
    sleeping_until: AtomicI64,
    changes: broadcast::Sender<Change>,
    storm: AtomicBool,
    next_token: AtomicU32,
    metrics: Arc<Metrics>,
    persist: Option<Persist>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves plain data that is
    // still consistent enough to serve; do not spread the panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Registry {
    /// An empty registry. `grace_from` is the server's start: `not reporting`
    /// counts silence from no earlier than it.
    pub fn new(
        rules: FleetRules,
        limits: Limits,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Registry {
        Registry::build(rules, limits, clock, metrics, false)
    }

    /// An empty registry whose changes are committed by a durable store: the
    /// caller runs a committer ([`Registry::take_dirty`], then
    /// [`Registry::mark_committed`]) and acknowledges only committed changes.
    pub fn durable(
        rules: FleetRules,
        limits: Limits,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Registry {
        Registry::build(rules, limits, clock, metrics, true)
    }

    fn build(
        rules: FleetRules,
        limits: Limits,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        durable: bool,
    ) -> Registry {
        let grace_from = clock.now();
        let (changes, _) = broadcast::channel(limits.watch_buffer.max(16));
        Registry {
            inner: Arc::new(Inner {
                agents: DashMap::new(),
                agent_count: AtomicUsize::new(0),
                connected: AtomicI64::new(0),
                rules,
                limits,
                clock,
                grace_from,
                restored: AtomicBool::new(false),
                faulty: Mutex::new(BTreeSet::new()),
                labels: Mutex::new(LabelInterner::default()),
                counts: Default::default(),
                timers: Mutex::new(BinaryHeap::new()),
                wake: Notify::new(),
                sleeping_until: AtomicI64::new(i64::MAX),
                changes,
                storm: AtomicBool::new(false),
                next_token: AtomicU32::new(1),
                metrics,
                persist: durable.then(|| Persist {
                    pending: Mutex::new(Pending {
                        keys: Vec::new(),
                        epoch: 1,
                    }),
                    wake: Notify::new(),
                    committed: Arc::new(CommitGate::new()),
                }),
            }),
        }
    }

    /// The rules in force.
    pub fn rules(&self) -> &FleetRules {
        &self.inner.rules
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// How many agents are known.
    pub fn len(&self) -> usize {
        self.inner.agent_count.load(Ordering::Relaxed)
    }

    /// Whether no agent is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn eval(&self, forecast: bool) -> Eval<'_> {
        Eval {
            rules: &self.inner.rules,
            grace_from: self.inner.grace_from,
            forecast,
        }
    }

    /// An agent stream said hello: create the agent if new, take over its
    /// stream, start counting sequence numbers afresh for a new incarnation.
    pub fn connect(
        &self,
        id: &AgentId,
        incarnation: u64,
        labels: Labels,
    ) -> Result<Connected, RegistryError> {
        let now = self.inner.clock.now();
        // Tokens tell a stream from the one that replaced it; 0 is "none".
        let mut token = self.inner.next_token.fetch_add(1, Ordering::Relaxed);
        if token == 0 {
            token = self.inner.next_token.fetch_add(1, Ordering::Relaxed);
        }
        let labels = (!labels.is_empty())
            .then(|| lock(&self.inner.labels).intern(Arc::new(LabelSet::from(&labels))));
        let key = id.as_arc().clone();
        let (last_seq, commit) = match self.inner.agents.entry(key.clone()) {
            Entry::Occupied(mut e) => {
                let a = e.get_mut();
                if a.incarnation != incarnation {
                    a.incarnation = incarnation;
                    a.last_seq = 0;
                }
                if a.stream == 0 {
                    self.inner.connected.fetch_add(1, Ordering::Relaxed);
                }
                a.stream = token;
                if labels.is_some() {
                    a.labels = labels;
                }
                a.last_heard = a.last_heard.max(now);
                self.settle(&key, a, now.max(a.evaluated));
                self.schedule(&key, a);
                (a.last_seq, self.mark(&key, a))
            }
            Entry::Vacant(e) => {
                let count = self.inner.agent_count.fetch_add(1, Ordering::Relaxed);
                if count >= self.inner.limits.max_agents {
                    self.inner.agent_count.fetch_sub(1, Ordering::Relaxed);
                    return Err(RegistryError::TooManyAgents(self.inner.limits.max_agents));
                }
                let mut a = Agent::new(now);
                a.incarnation = incarnation;
                a.stream = token;
                a.labels = labels;
                self.inner.connected.fetch_add(1, Ordering::Relaxed);
                let mut entry = e.insert(Box::new(a));
                let a = entry.value_mut();
                let first = a.facts().reason_at(now, &self.eval(false));
                a.reason = first;
                self.record(&key, a, None, now);
                self.schedule(&key, a);
                (0, self.mark(&key, a))
            }
        };
        Ok(Connected {
            session: Session {
                id: id.clone(),
                incarnation,
                token,
            },
            last_applied_seq: last_seq,
            commit,
        })
    }

    /// Applies a batch of events from an open stream, in order, skipping those
    /// already applied for this incarnation.
    pub fn apply(
        &self,
        session: &Session,
        events: &[AgentEvent],
    ) -> Result<Applied, RegistryError> {
        let now = self.inner.clock.now();
        let key = session.id.as_arc();
        let mut a = self
            .inner
            .agents
            .get_mut(key)
            .ok_or_else(|| RegistryError::Forgotten(session.id.to_string()))?;
        if a.stream != session.token {
            return Err(RegistryError::Superseded(session.id.to_string()));
        }
        let latest = now.saturating_add(self.inner.rules.skew);
        let mut out = Applied::default();
        // Counted once per batch: a shared counter per event would bounce
        // its cache line between cores.
        let mut kinds = [0u32; 8];
        for ev in events {
            if ev.seq <= a.last_seq {
                out.duplicates += 1;
                continue;
            }
            let mut t = ev.time.unwrap_or(now);
            if t > latest {
                t = now;
                out.clamped += 1;
            }
            a.apply(ev.kind, t);
            a.last_seq = ev.seq;
            out.applied += 1;
            kinds[ev.kind.index()] += 1;
        }
        a.last_heard = a.last_heard.max(now);
        out.applied_through = a.last_seq;
        let at = now.max(a.evaluated);
        self.settle(key, &mut a, at);
        self.schedule(key, &mut a);
        out.commit = self.mark(key, &mut a);
        self.inner.metrics.count_events(&kinds);
        self.inner.metrics.count_batch(out.duplicates, out.clamped);
        Ok(out)
    }

    /// Whether the stream with `token` is the agent's open stream: `false`
    /// once a newer stream took over or the agent was forgotten.
    pub fn is_open(&self, id: &AgentId, token: u32) -> bool {
        self.inner
            .agents
            .get(id.as_arc())
            .is_some_and(|a| a.stream == token)
    }

    /// A stream ended. The agent stays; it is no longer connected.
    pub fn disconnect(&self, session: &Session) {
        if let Some(mut a) = self.inner.agents.get_mut(session.id.as_arc())
            && a.stream == session.token
        {
            a.stream = 0;
            self.inner.connected.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Settles the agent's verdict at `at`, recording a transition if it changed.
    fn settle(&self, key: &Arc<str>, a: &mut Agent, at: Time) {
        let new = a.facts().reason_at(at, &self.eval(false));
        a.evaluated = at;
        if new != a.reason {
            let old = a.reason;
            a.reason = new;
            self.record(key, a, Some(old), at);
        }
    }

    /// Records that the agent's reason became `a.reason` at `at`.
    fn record(&self, key: &Arc<str>, a: &mut Agent, before: Option<Reason>, at: Time) {
        a.since = at;
        a.evaluated = at;
        a.history.push(
            Transition {
                at,
                from: before,
                to: a.reason,
            },
            self.inner.rules.history.max(1),
        );
        self.count_move(key, before, Some(a.reason));
        self.mark(key, a);
        if before.is_some() {
            self.inner.metrics.count_transition(a.reason);
        }
        if self.inner.changes.receiver_count() > 0 {
            let view = Arc::new(self.view_of(key, a, at, false));
            let _ = self.inner.changes.send(Change::Status { view, before });
        }
        self.check_storm();
    }

    /// Moves an agent between counts and in or out of the faulty index.
    fn count_move(&self, key: &Arc<str>, from: Option<Reason>, to: Option<Reason>) {
        if let Some(r) = from {
            self.inner.counts[r.index()].fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(r) = to {
            self.inner.counts[r.index()].fetch_add(1, Ordering::Relaxed);
        }
        let was = from.is_some_and(|r| r.state() == State::Faulty);
        let is = to.is_some_and(|r| r.state() == State::Faulty);
        if was != is {
            let mut faulty = lock(&self.inner.faulty);
            if is {
                faulty.insert(key.clone());
            } else {
                faulty.remove(key);
            }
        }
    }

    /// Puts the agent's next change on the timer heap if it is earlier than
    /// its live entry (or it has none).
    fn schedule(&self, key: &Arc<str>, a: &mut Agent) {
        let Some(next) = a.facts().next_change(a.evaluated, &self.eval(false)) else {
            return;
        };
        if next >= a.queued && a.queued > a.evaluated {
            // The live entry comes first; it will re-schedule when it is due.
            return;
        }
        a.queued = next;
        lock(&self.inner.timers).push(Reverse((next, key.clone())));
        if next.as_micros() < self.inner.sleeping_until.load(Ordering::Acquire) {
            self.inner.wake.notify_one();
        }
    }

    /// Applies every time-driven change that is due, and returns when the
    /// next one will be.
    pub fn process_due(&self) -> Option<Time> {
        let now = self.inner.clock.now();
        loop {
            let batch: Vec<(Time, Arc<str>)> = {
                let mut timers = lock(&self.inner.timers);
                let mut batch = Vec::new();
                while batch.len() < 1024 {
                    match timers.peek() {
                        Some(Reverse((t, _))) if *t <= now => {}
                        _ => break,
                    }
                    if let Some(Reverse(entry)) = timers.pop() {
                        batch.push(entry);
                    }
                }
                if batch.is_empty() {
                    return timers.peek().map(|Reverse((t, _))| *t);
                }
                batch
            };
            for (t, key) in batch {
                let Some(mut a) = self.inner.agents.get_mut(&key) else {
                    continue;
                };
                if a.queued != t {
                    continue;
                }
                a.queued = Time::MAX;
                let at = t.max(a.evaluated);
                self.settle(&key, &mut a, at);
                self.schedule(&key, &mut a);
            }
        }
    }

    /// Runs the time-driven transitions until `shutdown` resolves.
    pub async fn run_scheduler(&self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let next = self.process_due();
            let until = next.map_or(i64::MAX, Time::as_micros);
            self.inner.sleeping_until.store(until, Ordering::Release);
            // An entry pushed between process_due and the store above would
            // not have woken us: look once more before sleeping.
            let again = lock(&self.inner.timers).peek().map(|Reverse((t, _))| *t);
            if again.is_some_and(|t| t.as_micros() < until) {
                continue;
            }
            let clock = self.inner.clock.clone();
            let sleep = async move {
                match next {
                    Some(t) => clock.sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = sleep => {}
                () = self.inner.wake.notified() => {}
                () = &mut shutdown => return,
            }
        }
    }

    /// The storm guard from the live counts.
    fn storm_now(&self) -> StormView {
        self.storm_of(&self.live_counts())
    }

    /// The live counts by reason, as they stand.
    fn live_counts(&self) -> [u64; 9] {
        std::array::from_fn(|i| self.inner.counts[i].load(Ordering::Relaxed))
    }

    fn storm_of(&self, counts: &[u64; 9]) -> StormView {
        let faulty = in_state(counts, State::Faulty);
        let active_agents = faulty + in_state(counts, State::Healthy);
        let rules = &self.inner.rules;
        let dominant = Reason::ALL
            .iter()
            .filter(|r| r.state() == State::Faulty)
            .map(|r| (*r, counts[r.index()]))
            .find(|(_, n)| *n * 2 > faulty);
        StormView {
            active: active_agents >= rules.storm_min_agents
                && active_agents > 0
                && faulty as f64 >= rules.storm_share * active_agents as f64,
            faulty,
            active_agents,
            threshold: rules.storm_share,
            min_agents: rules.storm_min_agents,
            dominant,
        }
    }

    fn check_storm(&self) {
        let storm = self.storm_now();
        let was = self.inner.storm.swap(storm.active, Ordering::AcqRel);
        if was != storm.active {
            self.inner.metrics.set_storm(storm.active);
            if storm.active {
                tracing::warn!(
                    faulty = storm.faulty,
                    active = storm.active_agents,
                    "storm: a large share of the fleet is faulty at once"
                );
            } else {
                tracing::info!(faulty = storm.faulty, "storm over");
            }
            let _ = self.inner.changes.send(Change::Storm(storm));
        }
    }

    /// The storm guard now.
    pub fn storm(&self) -> StormView {
        self.process_due();
        self.storm_now()
    }

    /// Resolves the time of a query: `None` is now. Returns the time and
    /// whether it is a forecast (later than now).
    fn query_time(&self, at: Option<Time>) -> (Time, bool) {
        self.process_due();
        let now = self.inner.clock.now();
        match at {
            Some(t) if t != now => (t, t > now),
            _ => (now, false),
        }
    }

    fn view_of(&self, key: &Arc<str>, a: &Agent, at: Time, forecast: bool) -> AgentView {
        let facts = a.facts();
        let e = self.eval(forecast);
        let (reason, since) = if at == a.evaluated {
            (a.reason, a.since)
        } else {
            let reason = facts.reason_at(at, &e);
            let since = if reason == a.reason && at >= a.since {
                a.since
            } else if at > a.evaluated {
                // Walk the changes between the last settlement and `at`.
                let mut t = a.evaluated;
                let mut since = at;
                while let Some(c) = facts.next_change(t, &e) {
                    if c > at {
                        break;
                    }
                    since = c;
                    t = c;
                }
                since
            } else {
                at
            };
            (reason, since)
        };
        AgentView {
            id: AgentId::from_arc(key.clone()),
            reason,
            since,
            last_heard: a.last_heard,
            first_seen: a.first_seen,
            incarnation: a.incarnation,
            last_seq: a.last_seq,
            labels: a.labels.clone(),
            sensor: a.sensor,
            next_change: facts.next_change(at, &e),
            connected: a.stream != 0,
            stopped_at: a.stopped(),
            evaluated_at: at,
        }
    }

    /// One agent, now or at another time.
    pub fn get(&self, id: &AgentId, at: Option<Time>) -> Result<AgentView, RegistryError> {
        let (at, forecast) = self.query_time(at);
        let a = self
            .inner
            .agents
            .get(id.as_arc())
            .ok_or_else(|| RegistryError::NotFound(id.to_string()))?;
        Ok(self.view_of(id.as_arc(), &a, at, forecast))
    }

    /// The agents that `sel` selects, ordered by ID, after `after`, at most
    /// `limit`, evaluated now or at another time.
    pub fn list(
        &self,
        sel: &Selector,
        at: Option<Time>,
        after: Option<&str>,
        limit: usize,
    ) -> Page {
        let (at, forecast) = self.query_time(at);
        let live = !forecast && at == self.inner.clock.now();
        let mut agents = Vec::with_capacity(limit.min(1024));
        let mut more = false;
        if live && sel.filter == StateFilter::Faulty {
            // The faulty index, in ID order: no scan of the fleet.
            let keys: Vec<Arc<str>> = {
                let faulty = lock(&self.inner.faulty);
                let range = match after {
                    Some(a) => faulty.range::<str, _>((
                        std::ops::Bound::Excluded(a),
                        std::ops::Bound::Unbounded,
                    )),
                    None => faulty.range::<str, _>(..),
                };
                if sel.reasons.is_empty() && sel.labels.is_empty() {
                    range.take(limit + 1).cloned().collect()
                } else {
                    range.cloned().collect()
                }
            };
            for key in keys {
                let Some(a) = self.inner.agents.get(&key) else {
                    continue;
                };
                if !sel.matches(a.reason, a.labels.as_deref()) {
                    continue;
                }
                if agents.len() == limit {
                    more = true;
                    break;
                }
                agents.push(self.view_of(&key, &a, at, false));
            }
            return Page {
                agents,
                more,
                storm: self.storm_now(),
                evaluated_at: at,
            };
        }
        // Everything else scans the fleet once.
        let e = self.eval(forecast);
        let mut counts = [0u64; 9];
        let mut keys: Vec<Arc<str>> = Vec::new();
        for entry in self.inner.agents.iter() {
            let a = entry.value();
            let reason = if live {
                a.reason
            } else {
                a.facts().reason_at(at, &e)
            };
            counts[reason.index()] += 1;
            if after.is_some_and(|x| &**entry.key() <= x) {
                continue;
            }
            if sel.matches(reason, a.labels.as_deref()) {
                keys.push(entry.key().clone());
            }
        }
        keys.sort_unstable();
        more = keys.len() > limit;
        keys.truncate(limit);
        for key in keys {
            if let Some(a) = self.inner.agents.get(&key) {
                agents.push(self.view_of(&key, &a, at, forecast));
            }
        }
        let storm = if live {
            self.storm_now()
        } else {
            self.storm_of(&counts)
        };
        Page {
            agents,
            more,
            storm,
            evaluated_at: at,
        }
    }

    /// Every agent that `sel` selects now, ordered by ID (a watch's snapshot).
    pub fn snapshot(&self, sel: &Selector) -> Vec<AgentView> {
        let (at, _) = self.query_time(None);
        let mut out = Vec::new();
        for entry in self.inner.agents.iter() {
            let a = entry.value();
            if sel.matches(a.reason, a.labels.as_deref()) {
                out.push(self.view_of(entry.key(), a, at, false));
            }
        }
        out.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Counts by reason, now or at another time.
    pub fn summary(&self, at: Option<Time>) -> Summary {
        let (at, forecast) = self.query_time(at);
        let live = !forecast && at == self.inner.clock.now();
        let by_reason: [u64; 9] = if live {
            self.live_counts()
        } else {
            let e = self.eval(forecast);
            let mut counts = [0u64; 9];
            for entry in self.inner.agents.iter() {
                counts[entry.value().facts().reason_at(at, &e).index()] += 1;
            }
            counts
        };
        let restored = self.inner.restored.load(Ordering::Relaxed);
        let grace_end = if self.inner.rules.silence.is_zero() || !restored {
            None
        } else {
            self.inner.grace_from.checked_add(self.inner.rules.silence)
        };
        Summary {
            storm: self.storm_of(&by_reason),
            by_reason,
            connected: self.inner.connected.load(Ordering::Relaxed).max(0) as u64,
            evaluated_at: at,
            grace_until: grace_end.filter(|g| *g > at),
        }
    }

    /// The recent transitions of one agent, oldest first.
    pub fn history(&self, id: &AgentId) -> Result<Vec<Transition>, RegistryError> {
        let a = self
            .inner
            .agents
            .get(id.as_arc())
            .ok_or_else(|| RegistryError::NotFound(id.to_string()))?;
        Ok(a.history.as_slice().to_vec())
    }

    /// Removes an agent and all that is known of it; returns its last status.
    pub fn forget(&self, id: &AgentId) -> Result<AgentView, RegistryError> {
        let (at, _) = self.query_time(None);
        let (key, a) = self
            .inner
            .agents
            .remove(id.as_arc())
            .ok_or_else(|| RegistryError::NotFound(id.to_string()))?;
        self.inner.agent_count.fetch_sub(1, Ordering::Relaxed);
        self.mark_removed(&key);
        if a.stream != 0 {
            self.inner.connected.fetch_sub(1, Ordering::Relaxed);
        }
        self.count_move(&key, Some(a.reason), None);
        let last = Arc::new(self.view_of(&key, &a, at, false));
        let _ = self
            .inner
            .changes
            .send(Change::Forgotten { last: last.clone() });
        self.check_storm();
        tracing::info!(agent_id = %id, "agent forgotten");
        Ok(Arc::unwrap_or_clone(last))
    }

    /// Queues a changed agent for the committer; returns the commit that will
    /// hold the change (0 without a store). Called under the agent's entry.
    fn mark(&self, key: &Arc<str>, a: &mut Agent) -> u64 {
        let Some(p) = &self.inner.persist else {
            return 0;
        };
        let mut pending = lock(&p.pending);
        if !a.dirty {
            a.dirty = true;
            pending.keys.push(key.clone());
        }
        // If the agent was already queued, its entry is in this batch or in
        // one being written now (which may or may not hold this change): this
        // batch is the latest that may be needed.
        let epoch = pending.epoch;
        drop(pending);
        p.wake.notify_one();
        epoch
    }

    fn mark_removed(&self, key: &Arc<str>) {
        if let Some(p) = &self.inner.persist {
            lock(&p.pending).keys.push(key.clone());
            p.wake.notify_one();
        }
    }

    /// Waits until something is queued for the committer.
    pub async fn dirty(&self) {
        match &self.inner.persist {
            Some(p) => p.wake.notified().await,
            None => std::future::pending().await,
        }
    }

    /// Takes what is queued for the committer: the latest record of each
    /// changed agent, and the forgotten ones.
    pub fn take_dirty(&self) -> DirtyBatch {
        let Some(p) = &self.inner.persist else {
            return DirtyBatch::default();
        };
        let (keys, epoch) = {
            let mut pending = lock(&p.pending);
            let keys = std::mem::take(&mut pending.keys);
            let epoch = pending.epoch;
            pending.epoch += 1;
            (keys, epoch)
        };
        let mut batch = DirtyBatch {
            epoch,
            ..DirtyBatch::default()
        };
        for key in keys {
            match self.inner.agents.get_mut(&key) {
                Some(mut a) => {
                    if a.dirty {
                        a.dirty = false;
                        let record = prost::Message::encode_to_vec(&a.to_record());
                        batch.upserts.push((key, record));
                    }
                }
                None => batch.deletes.push(key),
            }
        }
        batch
    }

    /// Records that every batch up to `epoch` is committed.
    pub fn mark_committed(&self, epoch: u64) {
        if let Some(p) = &self.inner.persist {
            p.committed.mark_committed(epoch);
        }
    }

    /// Where streams wait for their commits (`None` without a store).
    pub fn commits(&self) -> Option<Arc<CommitGate>> {
        self.inner.persist.as_ref().map(|p| p.committed.clone())
    }

    /// Loads agents from their stored records (at start-up, into an empty
    /// registry). Agents are not connected; changes that fell due while the
    /// server was down are applied at their due times by the scheduler.
    pub fn restore(&self, records: Vec<(String, AgentRecord)>) -> Result<usize, StoreError> {
        let n = records.len();
        for (id, record) in records {
            let corrupt = |reason: String| StoreError::Corrupt {
                path: std::path::PathBuf::from(crate::store::DB_FILE),
                agent: id.clone(),
                reason,
            };
            let agent_id = AgentId::parse(&id).map_err(|e| corrupt(e.to_string()))?;
            let mut a = Agent::from_record(record).map_err(corrupt)?;
            if let Some(l) = a.labels.take() {
                a.labels = Some(lock(&self.inner.labels).intern(l));
            }
            let key = agent_id.as_arc().clone();
            self.count_move(&key, None, Some(a.reason));
            self.schedule(&key, &mut a);
            self.inner.agents.insert(key, Box::new(a));
            self.inner.agent_count.fetch_add(1, Ordering::Relaxed);
        }
        if n > 0 {
            self.inner.restored.store(true, Ordering::Relaxed);
        }
        self.check_storm();
        Ok(n)
    }

    /// Subscribes to the change feed.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.inner.changes.subscribe()
    }

    /// Agents by reason, now (for metrics; settles what is due first).
    pub fn counts(&self) -> [u64; 9] {
        self.process_due();
        self.live_counts()
    }

    /// Agents with an open stream.
    pub fn connected(&self) -> u64 {
        self.inner.connected.load(Ordering::Relaxed).max(0) as u64
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::clock::ManualClock;

    const T0: i64 = 1_700_000_000;

    fn t(s: i64) -> Time {
        Time::from_micros(s * 1_000_000).expect("in range")
    }

    fn setup() -> (Registry, ManualClock) {
        let clock = ManualClock::new(t(T0));
        let reg = Registry::new(
            FleetRules::default(),
            Limits::default(),
            Arc::new(clock.clone()),
            Arc::new(Metrics::default()),
        );
        (reg, clock)
    }

    fn id(s: &str) -> AgentId {
        AgentId::parse(s).expect("valid id")
    }

    fn ev(seq: u64, kind: EventKind, at: Option<i64>) -> AgentEvent {
        AgentEvent {
            seq,
            kind,
            time: at.map(t),
        }
    }

    fn healthy_start(reg: &Registry, name: &str) -> Session {
        let Connected {
            session: s,
            last_applied_seq: _,
            ..
        } = reg.connect(&id(name), 7, Labels::new()).expect("connects");
        let applied = reg
            .apply(
                &s,
                &[
                    ev(1, EventKind::Starting, None),
                    ev(2, EventKind::ServerDataSent, None),
                    ev(3, EventKind::ServerDataReceived, None),
                ],
            )
            .expect("applies");
        assert_eq!(applied.applied_through, 3);
        s
    }

    #[test]
    fn a_new_agent_is_faulty_until_it_starts() {
        let (reg, _) = setup();
        let Connected {
            session: s,
            last_applied_seq: last,
            ..
        } = reg.connect(&id("a"), 1, Labels::new()).expect("connects");
        assert_eq!(last, 0);
        assert_eq!(
            reg.get(&id("a"), None).expect("known").reason,
            Reason::NoDataReceived
        );
        reg.apply(&s, &[ev(1, EventKind::Starting, None)])
            .expect("applies");
        assert_eq!(
            reg.get(&id("a"), None).expect("known").reason,
            Reason::AllIsOk
        );
        let h = reg.history(&id("a")).expect("known");
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].from, None);
        assert_eq!(h[1].to, Reason::AllIsOk);
    }

    #[test]
    fn resent_events_are_applied_once() {
        let (reg, _) = setup();
        let s = healthy_start(&reg, "a");
        let again = reg
            .apply(
                &s,
                &[
                    ev(2, EventKind::Unregistered, None),
                    ev(4, EventKind::Heartbeat, None),
                ],
            )
            .expect("applies");
        assert_eq!(again.duplicates, 1);
        assert_eq!(again.applied, 1);
        assert_eq!(again.applied_through, 4);
        assert_eq!(
            reg.get(&id("a"), None).expect("known").reason,
            Reason::AllIsOk
        );
        // A reconnect with the same incarnation resumes; a new one starts over.
        let Connected {
            session: _,
            last_applied_seq: last,
            ..
        } = reg.connect(&id("a"), 7, Labels::new()).expect("connects");
        assert_eq!(last, 4);
        let Connected {
            session: s2,
            last_applied_seq: last,
            ..
        } = reg.connect(&id("a"), 8, Labels::new()).expect("connects");
        assert_eq!(last, 0);
        let fresh = reg
            .apply(&s2, &[ev(1, EventKind::Unregistered, None)])
            .expect("applies");
        assert_eq!(fresh.applied, 1);
        assert_eq!(
            reg.get(&id("a"), None).expect("known").reason,
            Reason::NotRegistered
        );
    }

    #[test]
    fn a_newer_stream_supersedes_the_older() {
        let (reg, _) = setup();
        let old = healthy_start(&reg, "a");
        let Connected {
            session: _new,
            last_applied_seq: _,
            ..
        } = reg.connect(&id("a"), 7, Labels::new()).expect("connects");
        assert!(matches!(
            reg.apply(&old, &[ev(9, EventKind::Heartbeat, None)]),
            Err(RegistryError::Superseded(_))
        ));
        reg.disconnect(&old);
        assert_eq!(reg.connected(), 1);
    }

    #[test]
    fn time_driven_transitions_happen_at_their_due_time() {
        let (reg, clock) = setup();
        let s = healthy_start(&reg, "a");
        let mut feed = reg.subscribe();
        // Heard every 4 minutes for almost 6 hours: the send window runs out.
        for i in 1..=89 {
            clock.advance(Duration::from_secs(240));
            reg.apply(&s, &[ev(3 + i, EventKind::ServerDataReceived, None)])
                .expect("applies");
        }
        // The heap wakes the agent lazily, at or before its real next change.
        assert!(reg.process_due().is_some_and(|due| due <= t(T0 + 21_600)));
        let v = reg.get(&id("a"), None).expect("known");
        assert_eq!(
            (v.reason, v.next_change),
            (Reason::AllIsOk, Some(t(T0 + 21_600)))
        );
        clock.set(t(T0 + 21_599));
        assert_eq!(
            reg.get(&id("a"), None).expect("known").reason,
            Reason::AllIsOk
        );
        clock.set(t(T0 + 21_600));
        reg.process_due();
        let v = reg.get(&id("a"), None).expect("known");
        assert_eq!((v.reason, v.since), (Reason::NoDataSent, t(T0 + 21_600)));
        match feed.try_recv().expect("a change was sent") {
            Change::Status { view, before } => {
                assert_eq!(before, Some(Reason::AllIsOk));
                assert_eq!(view.reason, Reason::NoDataSent);
            }
            other => panic!("unexpected {other:?}"),
        }
        // Then silence: not reporting at last_heard + 5 min.
        clock.set(t(T0 + 21_360 + 400));
        let v = reg.get(&id("a"), None).expect("known");
        assert_eq!(
            (v.reason, v.since),
            (Reason::NotReporting, t(T0 + 21_360 + 300))
        );
        assert_eq!(reg.history(&id("a")).expect("known").len(), 4);
    }

    #[test]
    fn faulty_list_uses_the_index_and_pages() {
        let (reg, clock) = setup();
        for i in 0..30 {
            let name = format!("agent-{i:02}");
            if i % 3 == 0 {
                healthy_start(&reg, &name);
            } else {
                reg.connect(&id(&name), 1, Labels::new()).expect("connects");
            }
        }
        let sel = Selector {
            filter: StateFilter::Faulty,
            ..Selector::default()
        };
        let p1 = reg.list(&sel, None, None, 15);
        assert_eq!(p1.agents.len(), 15);
        assert!(p1.more);
        assert!(p1.storm.active);
        assert_eq!(p1.storm.dominant, Some((Reason::NoDataReceived, 20)));
        let last = p1.agents.last().expect("non-empty").id.to_string();
        let p2 = reg.list(&sel, None, Some(&last), 15);
        assert_eq!(p2.agents.len(), 5);
        assert!(!p2.more);
        assert_eq!(p2.agents[0].id.as_str(), "agent-23");
        let healthy = reg.list(
            &Selector {
                filter: StateFilter::Healthy,
                ..Selector::default()
            },
            None,
            None,
            100,
        );
        assert_eq!(healthy.agents.len(), 10);
        // Forecast: in 6 hours the healthy ones (connected) miss their sends.
        let later = reg.list(&sel, Some(t(T0 + 21_600)), None, 100);
        assert_eq!(later.agents.len(), 30);
        assert_eq!(later.agents[0].reason, Reason::NoDataSent);
        assert_eq!(later.agents[0].since, t(T0 + 21_600));
        // Nothing was changed by the forecast.
        assert_eq!(reg.list(&sel, None, None, 100).agents.len(), 20);
        let _ = clock;
    }

    #[test]
    fn stopped_agents_are_healthy_until_they_start_again() {
        let (reg, clock) = setup();
        let s = healthy_start(&reg, "a");
        reg.apply(
            &s,
            &[
                ev(4, EventKind::ShuttingDown, None),
                ev(5, EventKind::Stopped, None),
            ],
        )
        .expect("applies");
        reg.disconnect(&s);
        clock.advance(Duration::from_secs(8 * 86_400));
        let v = reg.get(&id("a"), None).expect("known");
        assert_eq!(v.reason, Reason::Stopped);
        assert_eq!(v.next_change, None);
    }

    #[test]
    fn forgetting_removes_everything() {
        let (reg, _) = setup();
        healthy_start(&reg, "a");
        let last = reg.forget(&id("a")).expect("known");
        assert_eq!(last.reason, Reason::AllIsOk);
        assert!(reg.is_empty());
        assert_eq!(reg.counts().iter().sum::<u64>(), 0);
        assert!(matches!(
            reg.get(&id("a"), None),
            Err(RegistryError::NotFound(_))
        ));
        assert!(matches!(
            reg.forget(&id("a")),
            Err(RegistryError::NotFound(_))
        ));
    }

    #[test]
    fn the_agent_cap_is_enforced() {
        let clock = ManualClock::new(t(T0));
        let reg = Registry::new(
            FleetRules::default(),
            Limits {
                max_agents: 2,
                ..Limits::default()
            },
            Arc::new(clock),
            Arc::new(Metrics::default()),
        );
        reg.connect(&id("a"), 1, Labels::new()).expect("first");
        reg.connect(&id("b"), 1, Labels::new()).expect("second");
        assert_eq!(
            reg.connect(&id("c"), 1, Labels::new()).map(|_| ()),
            Err(RegistryError::TooManyAgents(2))
        );
        reg.connect(&id("a"), 2, Labels::new())
            .expect("a known agent reconnects");
        assert_eq!(reg.len(), 2);
    }

    #[test]
    fn future_times_are_clamped() {
        let (reg, _) = setup();
        let Connected {
            session: s,
            last_applied_seq: _,
            ..
        } = reg.connect(&id("a"), 1, Labels::new()).expect("connects");
        let out = reg
            .apply(
                &s,
                &[
                    ev(1, EventKind::Starting, Some(T0 + 3600)),
                    ev(2, EventKind::ServerDataSent, Some(T0 + 60)),
                ],
            )
            .expect("applies");
        assert_eq!(out.clamped, 1);
        let v = reg.get(&id("a"), None).expect("known");
        assert_eq!(v.sensor.started_at(), t(T0));
        assert_eq!(v.sensor.last_sent(), t(T0 + 60));
    }
}

#[cfg(test)]
mod interner_tests {
    use super::*;

    fn set(v: &str) -> Arc<LabelSet> {
        let map: Labels = [("site".to_string(), v.to_string())].into();
        Arc::new(LabelSet::from(&map))
    }

    #[test]
    fn equal_label_sets_are_shared_and_unused_ones_swept() {
        let mut i = LabelInterner::default();
        let a = i.intern(set("eu"));
        let b = i.intern(set("eu"));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &i.intern(set("us"))));
        // 1024 sets nobody keeps: when the table reaches its sweep size,
        // those no agent holds are dropped, so it stays small.
        for n in 0..1024 {
            i.intern(set(&format!("tmp-{n}")));
        }
        assert!(i.sets.len() < 16, "{} sets kept", i.sets.len());
        assert!(Arc::ptr_eq(&a, &i.intern(set("eu"))));
    }
}
