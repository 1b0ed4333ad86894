//! Time-driven transitions: each agent's next due time in an ordered queue,
//! and the task that settles agents when their time comes.
//!
//! - Each agent has at most one live entry, at or before the time its
//!   verdict would next change if nothing were heard (`Agent::queued`). An
//!   event that moves that time earlier adds a new entry; one that moves it
//!   later leaves the old entry, which re-evaluates and re-schedules when it
//!   comes due. So the server never polls every agent, and a heartbeating
//!   fleet costs one queue operation per agent per silence window.
//! - Only [`Registry::process_due`] (run by the timer task) settles what time
//!   changes; queries read the queue to learn which agents may differ from
//!   their settled verdict at a given time, and evaluate those.
//! - Lock: one mutex over the queue, a leaf lock (taken under an agent's map
//!   entry, never the other way round). Due entries are copied out and the
//!   lock released before agents are touched.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use fleet_health_sensor::Time;
use tokio::sync::Notify;

use super::agent::Agent;
use super::{Registry, lock};

/// The most entries settled per turn of the queue lock.
const BATCH: usize = 1024;

/// The timer queue.
#[derive(Debug)]
pub(super) struct Timers {
    /// Entries by due time, then agent.
    queue: Mutex<BTreeSet<(Time, Arc<str>)>>,
    /// Wakes the timer task when an entry earlier than its sleep is added.
    wake: Notify,
    /// The time the timer task sleeps until (micros; `i64::MAX`: indefinitely).
    sleeping_until: AtomicI64,
}

impl Timers {
    pub(super) fn new() -> Timers {
        Timers {
            queue: Mutex::new(BTreeSet::new()),
            wake: Notify::new(),
            sleeping_until: AtomicI64::new(i64::MAX),
        }
    }

    /// Adds an entry for agent `key` at `at`.
    fn push(&self, at: Time, key: &Arc<str>) {
        lock(&self.queue).insert((at, key.clone()));
        if at.as_micros() < self.sleeping_until.load(Ordering::Acquire) {
            self.wake.notify_one();
        }
    }

    /// Takes up to [`BATCH`] entries due at or before `now`; if none is due,
    /// returns the time of the next one instead.
    fn take_due(&self, now: Time) -> Result<Vec<(Time, Arc<str>)>, Option<Time>> {
        let mut queue = lock(&self.queue);
        let mut due = Vec::new();
        while due.len() < BATCH && queue.first().is_some_and(|(t, _)| *t <= now) {
            due.extend(queue.pop_first());
        }
        if due.is_empty() {
            Err(queue.first().map(|(t, _)| *t))
        } else {
            Ok(due)
        }
    }

    /// The time of the earliest entry.
    fn next(&self) -> Option<Time> {
        lock(&self.queue).first().map(|(t, _)| *t)
    }

    /// Every agent with an entry due at or before `at`: the only agents whose
    /// verdict at `at` may differ from their settled one (without a
    /// forecast's assumptions). Sorted by ID, without repeats.
    pub(super) fn due_by(&self, at: Time) -> Vec<Arc<str>> {
        let mut keys: Vec<Arc<str>> = lock(&self.queue)
            .iter()
            .take_while(|(t, _)| *t <= at)
            .map(|(_, k)| k.clone())
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }
}

impl Registry {
    /// Puts the agent's next change on the timer queue if it is earlier than
    /// its live entry (or it has none). Called under the agent's entry.
    pub(super) fn schedule(&self, key: &Arc<str>, a: &mut Agent) {
        let Some(next) = a.facts().next_change(a.evaluated, &self.eval(false)) else {
            return;
        };
        if next >= a.queued && a.queued > a.evaluated {
            // The live entry comes first; it will re-schedule when it is due.
            return;
        }
        a.queued = next;
        self.inner.timers.push(next, key);
    }

    /// Applies every time-driven change that is due, and returns when the
    /// next one will be. The timer task's work; queries never call it.
    pub fn process_due(&self) -> Option<Time> {
        let now = self.inner.settings.clock.now();
        loop {
            let due = match self.inner.timers.take_due(now) {
                Ok(due) => due,
                Err(next) => return next,
            };
            for (t, key) in due {
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

    /// Runs the time-driven transitions until `shutdown` resolves; then
    /// settles once more what is due, so that a committer that runs after it
    /// stores every change up to the stop.
    pub async fn run_scheduler(&self, shutdown: impl Future<Output = ()>) {
        let timers = &self.inner.timers;
        tokio::pin!(shutdown);
        loop {
            let next = self.process_due();
            let until = next.map_or(i64::MAX, Time::as_micros);
            timers.sleeping_until.store(until, Ordering::Release);
            // An entry added between process_due and the store above would
            // not have woken us: look once more before sleeping.
            if timers.next().is_some_and(|t| t.as_micros() < until) {
                continue;
            }
            let clock = self.inner.settings.clock.clone();
            let sleep = async move {
                match next {
                    Some(t) => clock.sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                // A stop comes first, even when a change falls due at once.
                biased;
                () = &mut shutdown => {
                    self.process_due();
                    return;
                }
                () = sleep => {}
                () = timers.wake.notified() => {}
            }
        }
    }
}
