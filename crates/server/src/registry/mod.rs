//! The fleet: one record per agent, the time-driven transitions, the tally
//! (counts, per-reason index, storm guard), the journal of changes for the
//! store, and the change feed for watchers.
//!
//! Rooms, each with its lock stated in its own docs:
//! - [`types`]: the value types callers see (views, selectors, pages, summary);
//! - `agent`: one agent's record and its history;
//! - [`record`]: the stored form of an agent, and its typed error;
//! - `labels`: the interner that keeps each label set once;
//! - `tally`: counts by reason, the per-reason index, the storm guard;
//! - `timers`: the timer queue and the task that settles what time changes;
//! - [`journal`]: changes waiting for the committer;
//! - `update`: what agents and operators change (hello, events, goodbye,
//!   forget, restore);
//! - `queries`: what is read (get, list, sorted lists, as-of, summary,
//!   history); reads do not write, and a read at time T evaluates T;
//! - [`ops`]: what operators and remediators set on agents (maintenance
//!   marks, claims, "given up") and each agent's activity, beside the
//!   records.
//!
//! This module holds the handle and the one place where a transition fans
//! out (history, tally, journal, metrics, change feed, storm guard).
//!
//! Lock order: an agent's map entry (a `DashMap` shard), then at most one of
//! the leaf locks (tally, timers, journal, labels, ops). No leaf lock is held while
//! another lock is taken, no map guard escapes this module, and nothing here
//! is async except the timer task's wait.

mod agent;
pub mod journal;
mod labels;
pub mod ops;
mod queries;
pub mod record;
mod tally;
mod timers;
pub mod types;
mod update;

use crate::model::ArcStr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize};
use std::sync::{Arc, Mutex, MutexGuard};

use dashmap::DashMap;
use fleet_health_sensor::Time;
use tokio::sync::broadcast;

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::model::{Eval, FleetRules, Why};

use self::agent::{Agent, Tokens};
use self::journal::Journal;
use self::labels::LabelInterner;
use self::ops::Ops;
use self::tally::Tally;
use self::timers::Timers;

pub use self::journal::DirtyBatch;
pub use self::ops::{Claimed, Marked, Refusal, Targets};
pub use self::record::{
    ActivityRecord, AgentRecord, ClaimRecord, GivenUpRecord, MarkRecord, OpsRecord, RecordError,
    RecordProblem, RemediationRecord, TransitionRecord,
};
pub use self::types::{
    AgentView, Applied, Change, Connected, Limits, Order, Page, RegistryError, Selector, Session,
    SortCursor, StateFilter, StormView, Summary, Transition,
};

/// The fleet registry: a cheap, cloneable handle.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

/// What the handle shares.
struct Inner {
    /// The agents, by ID. The ID is an [`ArcStr`] (one pointer, shared with
    /// the timer queue and the tally's index) and the record is boxed: the
    /// map's table then holds 16 bytes a slot, and its spare capacity (up to
    /// half of it) costs little. Hashed with foldhash, seeded at random per
    /// map: every event is one lookup, and SipHash (the standard library's
    /// default) cost more than the rest of the lookup.
    agents: DashMap<ArcStr, Box<Agent>, foldhash::fast::RandomState>,
    /// How many agents are known, and how many have a stream open.
    population: Population,
    /// Rules, limits, clock and the grace after a restart.
    settings: Settings,
    labels: Mutex<LabelInterner>,
    tally: Tally,
    timers: Timers,
    journal: Journal,
    ops: Ops,
    changes: broadcast::Sender<Change>,
    metrics: Arc<Metrics>,
}

/// Atomic counters of the fleet's size (no lock).
struct Population {
    known: AtomicUsize,
    connected: AtomicI64,
    tokens: Tokens,
}

/// What the registry is told at its start.
struct Settings {
    rules: FleetRules,
    limits: Limits,
    clock: Arc<dyn Clock>,
    /// The server's start: `not reporting` counts silence from no earlier.
    grace_from: Time,
    /// Agents were loaded from a store: the grace after a restart applies.
    restored: AtomicBool,
    /// The latest time this node took shards (many servers), in
    /// microseconds; 0: never. The grace of the agents of those shards.
    taken_from: AtomicI64,
}

/// Locks `m`, ignoring poisoning: a panic elsewhere while holding the lock
/// leaves plain data that is still consistent enough to serve; do not spread
/// the panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Registry {
    /// An empty registry that keeps its state in memory only: every change is
    /// final at once, and no committer runs. The clock's time now is the
    /// server's start: `not reporting` counts silence from no earlier.
    pub fn new(
        rules: FleetRules,
        limits: Limits,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Registry {
        Registry::build(rules, limits, clock, metrics, Journal::new(false), 0)
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
        Registry::durable_with_capacity(rules, limits, clock, metrics, 0)
    }

    /// As [`Registry::durable`], with room for `agents` agents from the
    /// start: a restart that loads a million agents then does not grow the
    /// map (and rehash every agent) twenty times on the way.
    pub fn durable_with_capacity(
        rules: FleetRules,
        limits: Limits,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        agents: usize,
    ) -> Registry {
        Registry::build(rules, limits, clock, metrics, Journal::new(true), agents)
    }

    fn build(
        rules: FleetRules,
        limits: Limits,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        journal: Journal,
        capacity: usize,
    ) -> Registry {
        let grace_from = clock.now();
        let (changes, _) = broadcast::channel(limits.watch_buffer.max(16));
        Registry {
            inner: Arc::new(Inner {
                agents: DashMap::with_capacity_and_hasher(capacity, Default::default()),
                population: Population {
                    known: AtomicUsize::new(0),
                    connected: AtomicI64::new(0),
                    tokens: Tokens::new(),
                },
                tally: Tally::new(&rules),
                settings: Settings {
                    rules,
                    limits,
                    clock,
                    grace_from,
                    restored: AtomicBool::new(false),
                    taken_from: AtomicI64::new(0),
                },
                labels: Mutex::new(LabelInterner::default()),
                timers: Timers::new(),
                journal,
                ops: Ops::default(),
                changes,
                metrics,
            }),
        }
    }

    /// The rules in force.
    pub fn rules(&self) -> &FleetRules {
        &self.inner.settings.rules
    }

    /// The clock every verdict is taken on.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.settings.clock
    }

    /// The counters the registry feeds (events, transitions, storm).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Subscribes to the change feed.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.inner.changes.subscribe()
    }

    fn eval(&self, forecast: bool) -> Eval<'_> {
        Eval {
            rules: &self.inner.settings.rules,
            grace_from: self.inner.settings.grace_from,
            taken_from: Time::from_micros(
                self.inner
                    .settings
                    .taken_from
                    .load(std::sync::atomic::Ordering::Relaxed),
            )
            .unwrap_or(Time::ZERO),
            forecast,
        }
    }

    /// Settles the agent's verdict at `at`, recording a transition if it
    /// changed. Called under the agent's entry.
    fn settle(&self, key: &ArcStr, a: &mut Agent, at: Time) {
        let new = a.facts().why_at(at, &self.eval(false));
        a.evaluated = at;
        if new != a.why() {
            self.transition(key, a, Some(a.why()), new, at);
        }
    }

    /// The one place a transition fans out: the agent's reason becomes `to`
    /// at `at` (`before` is `None` for a new agent). Updates its record and
    /// history, the tally, the journal and the metrics, tells watchers, and
    /// checks the storm guard. Called under the agent's entry.
    fn transition(&self, key: &ArcStr, a: &mut Agent, before: Option<Why>, to: Why, at: Time) {
        a.moved(before, to, at, self.inner.settings.rules.history);
        self.inner.tally.moved(key, before, Some(to));
        if to.state() == crate::model::State::Healthy {
            self.ops_turned_healthy(key);
        }
        self.inner.journal.changed(key, a);
        if let Some(from) = before {
            self.inner.metrics.count_transition(to);
            if crate::log_limit::TRANSITIONS.allow() {
                tracing::info!(agent_id = %key, from = from.as_str(), to = to.as_str(), "agent transition");
            }
        }
        if self.inner.changes.receiver_count() > 0 {
            let view = Arc::new(self.view_of(key, a, at, false));
            let was_maintained = view.maintenance.is_some();
            let _ = self.inner.changes.send(Change::Status {
                view,
                before,
                was_maintained,
            });
        }
        self.check_storm();
    }

    /// The fan-out of an agent forgotten: the tally, the journal, watchers and
    /// the storm guard. `settled` is its reason in the tally, `last` its
    /// status just before.
    fn forgotten(&self, key: &ArcStr, settled: Why, last: Arc<AgentView>) {
        self.inner.tally.moved(key, Some(settled), None);
        self.ops_forgotten(key);
        self.inner.journal.removed(key);
        let _ = self.inner.changes.send(Change::Forgotten { last });
        self.check_storm();
    }

    /// Raises or lowers the storm flag to match the tally, and says so.
    fn check_storm(&self) {
        let Some(storm) = self.inner.tally.check_storm() else {
            return;
        };
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

#[cfg(test)]
mod tests;
