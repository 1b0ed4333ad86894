//! Time-driven transitions: each agent's next due time in a binary heap,
//! and the task that settles agents when their time comes.
//!
//! - Each agent has at most one live entry, at or before the time its
//!   verdict would next change if nothing were heard (`Agent::queued`). An
//!   event that moves that time earlier adds a new entry; one that moves it
//!   later leaves the old entry, which re-evaluates and re-schedules when it
//!   comes due. So the server never polls every agent, and a heartbeating
//!   fleet costs one heap operation per agent per silence window.
//! - Only [`Registry::process_due`] (run by the timer task) settles what time
//!   changes; queries read the queue to learn which agents may differ from
//!   their settled verdict at a given time, and evaluate those.
//! - Lock: one mutex over the heap, a leaf lock (taken under an agent's map
//!   entry, never the other way round). Due entries are copied out and the
//!   lock released before agents are touched.

use crate::model::ArcStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

use fleet_health_sensor::Time;
use tokio::sync::Notify;

use super::agent::Agent;
use super::{Registry, lock};

/// The most entries settled per turn of the queue lock.
const BATCH: usize = 1024;

/// A binary min-heap of `(due time, agent)` entries in one vector (16 bytes
/// an entry, half the cost of an ordered tree), whose layout is known, so
/// that the entries due by a time can be found without visiting the rest.
#[derive(Debug, Default)]
struct Heap(Vec<(Time, ArcStr)>);

impl Heap {
    fn push(&mut self, entry: (Time, ArcStr)) {
        let v = &mut self.0;
        v.push(entry);
        let mut i = v.len() - 1;
        while i > 0 {
            let parent = (i - 1) / 2;
            if v[parent] <= v[i] {
                break;
            }
            v.swap(parent, i);
            i = parent;
        }
    }

    fn first(&self) -> Option<&(Time, ArcStr)> {
        self.0.first()
    }

    fn pop_first(&mut self) -> Option<(Time, ArcStr)> {
        let v = &mut self.0;
        let last = v.pop()?;
        if v.is_empty() {
            return Some(last);
        }
        let top = std::mem::replace(&mut v[0], last);
        let mut i = 0;
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut least = i;
            if l < v.len() && v[l] < v[least] {
                least = l;
            }
            if r < v.len() && v[r] < v[least] {
                least = r;
            }
            if least == i {
                break;
            }
            v.swap(i, least);
            i = least;
        }
        Some(top)
    }

    /// The agents of every entry due at or before `at`, in no order: a
    /// walk from the root that stops below any entry due later (its
    /// children are due no earlier).
    fn due_by(&self, at: Time) -> Vec<ArcStr> {
        let v = &self.0;
        let mut out = Vec::new();
        let mut stack = vec![0usize];
        while let Some(i) = stack.pop() {
            if let Some((t, key)) = v.get(i)
                && *t <= at
            {
                out.push(key.clone());
                stack.extend([2 * i + 1, 2 * i + 2]);
            }
        }
        out
    }
}

/// The timer queue.
#[derive(Debug)]
pub(super) struct Timers {
    /// Entries by due time, earliest first.
    queue: Mutex<Heap>,
    /// Wakes the timer task when an entry earlier than its sleep is added.
    wake: Notify,
    /// The time the timer task sleeps until (micros; `i64::MAX`: indefinitely).
    sleeping_until: AtomicI64,
}

impl Timers {
    pub(super) fn new() -> Timers {
        Timers {
            queue: Mutex::new(Heap::default()),
            wake: Notify::new(),
            sleeping_until: AtomicI64::new(i64::MAX),
        }
    }

    /// Adds an entry for agent `key` at `at`.
    fn push(&self, at: Time, key: &ArcStr) {
        lock(&self.queue).push((at, key.clone()));
        if at.as_micros() < self.sleeping_until.load(Ordering::Acquire) {
            self.wake.notify_one();
        }
    }

    /// Takes up to [`BATCH`] entries due at or before `now`; if none is due,
    /// returns the time of the next one instead.
    fn take_due(&self, now: Time) -> Result<Vec<(Time, ArcStr)>, Option<Time>> {
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
    pub(super) fn due_by(&self, at: Time) -> Vec<ArcStr> {
        let mut keys = lock(&self.queue).due_by(at);
        keys.sort_unstable();
        keys.dedup();
        keys
    }
}

impl Registry {
    /// Puts the agent's next change on the timer queue if it is earlier than
    /// its live entry (or it has none). Called under the agent's entry.
    pub(super) fn schedule(&self, key: &ArcStr, a: &mut Agent) {
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

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::t;

    #[test]
    fn the_heap_pops_in_order_and_finds_what_is_due() {
        let mut heap = Heap::default();
        // A fixed shuffle of 0..200, some times twice.
        let times: Vec<i64> = (0..200).map(|i| (i * 73) % 200).chain([5, 150]).collect();
        for (n, s) in times.iter().enumerate() {
            heap.push((t(*s), ArcStr::from(format!("agent-{n:03}"))));
        }
        for at in [-1, 0, 5, 57, 150, 199, 500] {
            let mut due = heap.due_by(t(at));
            due.sort_unstable();
            let mut expected: Vec<ArcStr> = times
                .iter()
                .enumerate()
                .filter(|(_, s)| **s <= at)
                .map(|(n, _)| ArcStr::from(format!("agent-{n:03}")))
                .collect();
            expected.sort_unstable();
            assert_eq!(due, expected, "due by {at}");
        }
        let mut popped = Vec::new();
        while let Some(e) = heap.pop_first() {
            popped.push(e);
        }
        assert_eq!(popped.len(), times.len());
        assert!(popped.windows(2).all(|w| w[0] <= w[1]), "in order");
        assert_eq!(heap.first(), None);
    }
}
