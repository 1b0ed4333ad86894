//! What is read: one agent, a page of agents, counts and the storm guard, an
//! agent's history; now, or as of another time.
//!
//! Reads do not write: a read at time T evaluates T. The tally holds every
//! agent's settled verdict; the only agents whose verdict at T (now or
//! later) may differ from it are those with a timer due by T (and, for a
//! forecast, which takes connected agents as heard, connected agents settled
//! as not reporting or inactive). A query evaluates those few and takes the
//! rest from the tally's index. A query about the past evaluates every agent.
//!
//! A list sorted by time in state (rather than by ID) evaluates every agent
//! once and keeps only the best of a page in a bounded heap: the fleet is
//! never collected or sorted whole.
//!
//! Locks: a query copies keys out of the tally or the timer queue, releases
//! that lock, then reads agents one map entry at a time.

use crate::model::ArcStr;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::Ordering;

use fleet_health_sensor::Time;

use crate::model::{AgentId, ByWhy, Eval, MaintenanceFilter, Why};

use super::Registry;
use super::agent::Agent;
use super::types::{
    AgentView, Order, Page, RegistryError, Selector, SortCursor, StormView, Summary, Transition,
};

/// How many keys a list takes from the index at a time.
#[cfg(not(test))]
const INDEX_CHUNK: usize = 1024;
/// Small in tests, so that they walk several chunks.
#[cfg(test)]
const INDEX_CHUNK: usize = 3;

/// Where a query's time lies, from the clock's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum When {
    /// Before now: every agent is evaluated then.
    Past,
    /// Now.
    Now,
    /// A forecast: connected agents are taken as heard until then.
    Future,
}

impl When {
    fn forecast(self) -> bool {
        self == When::Future
    }
}

/// An agent whose verdict at the queried time differs from its settled one.
struct Unsettled {
    key: ArcStr,
    settled: Why,
    at: Why,
}

/// Counts by reason at one time: of all agents, and of those under
/// maintenance.
struct Counts {
    all: ByWhy<u64>,
    maintained: ByWhy<u64>,
}

/// The agent's reason at `at`, and since when it has had it, without the
/// rest of its view. Called under the agent's entry.
fn status_at(a: &Agent, at: Time, e: &Eval<'_>) -> (Why, Time) {
    let why = if at == a.evaluated {
        a.why()
    } else {
        a.facts().why_at(at, e)
    };
    (why, since_at(a, why, at, e))
}

/// Since when the agent has had `why`, its reason at `at`. Called under the
/// agent's entry.
fn since_at(a: &Agent, why: Why, at: Time, e: &Eval<'_>) -> Time {
    if at == a.evaluated || (why == a.why() && at >= a.since()) {
        a.since()
    } else if at > a.evaluated {
        // Walk the changes between the last settlement and `at`.
        let facts = a.facts();
        let mut t = a.evaluated;
        let mut since = at;
        while let Some(c) = facts.next_change(t, e) {
            if c > at {
                break;
            }
            since = c;
            t = c;
        }
        since
    } else {
        // Before its last settlement, and in another state than then: the
        // record keeps no earlier start.
        at
    }
}

/// The best `keep` agents of a list sorted by `rank` (smallest first),
/// gathered one at a time: the heap holds at most `keep`, its worst on top.
struct Best<K> {
    keep: usize,
    heap: BinaryHeap<(K, ArcStr)>,
}

impl<K: Ord> Best<K> {
    fn new(keep: usize) -> Best<K> {
        Best {
            keep,
            heap: BinaryHeap::with_capacity(keep.min(1024)),
        }
    }

    /// Takes the agent `key` ranked `rank` if it is among the best so far.
    fn offer(&mut self, rank: K, key: &ArcStr) {
        if self.keep == 0 {
            return;
        }
        if self.heap.len() == self.keep {
            match self.heap.peek() {
                // Ties of rank go by ID: compare both.
                Some((worst, worst_key)) if (&rank, key) >= (worst, worst_key) => return,
                _ => {
                    self.heap.pop();
                }
            }
        }
        self.heap.push((rank, key.clone()));
    }

    /// The agents kept, best first.
    fn into_keys(self) -> Vec<ArcStr> {
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|(_, k)| k)
            .collect()
    }
}

impl Registry {
    /// How many agents are known.
    pub fn len(&self) -> usize {
        self.inner.population.known.load(Ordering::Relaxed)
    }

    /// Whether no agent is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Agents with an open stream.
    pub fn connected(&self) -> u64 {
        self.inner
            .population
            .connected
            .load(Ordering::Relaxed)
            .max(0) as u64
    }

    /// Agents by reason, now (for metrics).
    pub fn counts(&self) -> ByWhy<u64> {
        let now = self.inner.settings.clock.now();
        self.counts_at(now, false).0.all
    }

    /// Agents under maintenance by reason, now (for metrics).
    pub fn maintained_counts(&self) -> ByWhy<u64> {
        let now = self.inner.settings.clock.now();
        self.counts_at(now, false).0.maintained
    }

    /// The storm guard now.
    pub fn storm(&self) -> StormView {
        let now = self.inner.settings.clock.now();
        let (c, _) = self.counts_at(now, false);
        self.inner.tally.storm_of(&c.all, &c.maintained)
    }

    /// Resolves the time of a query (`None` is now) against one reading of
    /// the clock.
    fn query_time(&self, at: Option<Time>) -> (Time, When) {
        let now = self.inner.settings.clock.now();
        match at {
            Some(t) if t < now => (t, When::Past),
            Some(t) if t > now => (t, When::Future),
            _ => (now, When::Now),
        }
    }

    /// The agents whose verdict at `at` (not in the past) differs from their
    /// settled one, sorted by ID.
    fn unsettled(&self, at: Time, forecast: bool) -> Vec<Unsettled> {
        let mut keys = self.inner.timers.due_by(at);
        if forecast {
            let fleet = [Why::NotReporting, Why::Inactive];
            keys.extend(self.inner.tally.keys(&fleet, None, usize::MAX));
            keys.sort_unstable();
            keys.dedup();
        }
        let e = self.eval(forecast);
        keys.into_iter()
            .filter_map(|key| {
                let a = self.inner.agents.get(&key)?;
                let now = a.facts().why_at(at, &e);
                let settled = a.why();
                drop(a);
                (now != settled).then_some(Unsettled {
                    key,
                    settled,
                    at: now,
                })
            })
            .collect()
    }

    /// Counts by reason at `at` (not in the past), and the agents whose
    /// verdict then differs from their settled one.
    fn counts_at(&self, at: Time, forecast: bool) -> (Counts, Vec<Unsettled>) {
        let changed = self.unsettled(at, forecast);
        let mut all = self.inner.tally.counts();
        let mut maintained = self.inner.tally.maintained_counts();
        let any_maintained = maintained.total() > 0;
        for c in &changed {
            all[c.settled] = all[c.settled].saturating_sub(1);
            all[c.at] += 1;
            if any_maintained && self.inner.tally.is_maintained(&c.key) {
                maintained[c.settled] = maintained[c.settled].saturating_sub(1);
                maintained[c.at] += 1;
            }
        }
        (Counts { all, maintained }, changed)
    }

    /// Counts by reason at a past time: every agent evaluated then.
    fn counts_by_scan(&self, at: Time) -> Counts {
        let e = self.eval(false);
        let marks = self.marks_at(at);
        let mut counts = Counts {
            all: ByWhy::default(),
            maintained: ByWhy::default(),
        };
        for entry in self.inner.agents.iter() {
            let why = entry.value().facts().why_at(at, &e);
            counts.all[why] += 1;
            if marks.contains(entry.key()) {
                counts.maintained[why] += 1;
            }
        }
        counts
    }

    /// The agent's status at `at`. Called under the agent's entry.
    pub(super) fn view_of(&self, key: &ArcStr, a: &Agent, at: Time, forecast: bool) -> AgentView {
        let facts = a.facts();
        let e = self.eval(forecast);
        let (why, since) = status_at(a, at, &e);
        let (maintenance, claim, given_up) = self.ops_at(key, at);
        AgentView {
            maintenance,
            claim,
            given_up,
            id: AgentId::from_checked(key.clone()),
            why,
            since,
            last_heard: a.last_heard,
            first_seen: a.first_seen,
            incarnation: a.incarnation,
            last_seq: a.last_seq,
            labels: a.labels.clone(),
            sensor: a.sensor(),
            next_change: facts.next_change(at, &e),
            connected: a.connected(),
            stopped_at: a.stopped(),
            evaluated_at: at,
        }
    }

    /// One agent, now or at another time.
    pub fn get(&self, id: &AgentId, at: Option<Time>) -> Result<AgentView, RegistryError> {
        let (at, when) = self.query_time(at);
        let forecast = when.forecast();
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
        let (at, when) = self.query_time(at);
        if when == When::Past || sel.maintenance == MaintenanceFilter::Only {
            return self.list_by_scan(sel, at, when.forecast(), after, limit);
        }
        let forecast = when.forecast();
        let (counts, changed) = self.counts_at(at, forecast);
        let whys = sel.whys();
        // Agents whose verdict at `at` is selected although the index has
        // them under another reason, by ID.
        let mut extra = changed
            .iter()
            .filter(|c| whys.contains(&c.at) && after.is_none_or(|x| &*c.key > x))
            .map(|c| c.key.clone())
            .peekable();
        let mut agents = Vec::with_capacity(limit.min(1024));
        let mut more = false;
        // Walk the index in chunks, so that its lock is never held for long
        // and a label filter reads only as far as it must.
        let mut cursor: Option<ArcStr> = None;
        'walk: loop {
            let chunk = self
                .inner
                .tally
                .keys(&whys, cursor.as_deref().or(after), INDEX_CHUNK);
            let bound = (chunk.len() == INDEX_CHUNK).then(|| chunk[INDEX_CHUNK - 1].clone());
            let mut keys: Vec<ArcStr> = chunk
                .into_iter()
                .filter(|k| changed.binary_search_by(|c| c.key.cmp(k)).is_err())
                .collect();
            while let Some(k) = extra.next_if(|k| bound.as_ref().is_none_or(|b| k <= b)) {
                keys.push(k);
            }
            keys.sort_unstable();
            for key in keys {
                if !sel.takes_id(&key) {
                    continue;
                }
                let Some(a) = self.inner.agents.get(&key) else {
                    continue;
                };
                let why = match changed.binary_search_by(|c| c.key.cmp(&key)) {
                    Ok(i) => changed[i].at,
                    Err(_) => a.why(),
                };
                if !sel.matches(why, a.labels.as_deref(), self.maintained_at(&key, at)) {
                    continue;
                }
                if agents.len() == limit {
                    more = true;
                    break 'walk;
                }
                agents.push(self.view_of(&key, &a, at, forecast));
            }
            match bound {
                Some(b) => cursor = Some(b),
                None => break,
            }
        }
        Page {
            agents,
            more,
            storm: self.inner.tally.storm_of(&counts.all, &counts.maintained),
            evaluated_at: at,
        }
    }

    /// [`Registry::list`] by evaluating every agent at `at`: the way to
    /// answer about the past, and to list the agents under maintenance (the
    /// agents are those under maintenance only, then); in tests, the
    /// reference for the index.
    pub(super) fn list_by_scan(
        &self,
        sel: &Selector,
        at: Time,
        forecast: bool,
        after: Option<&str>,
        limit: usize,
    ) -> Page {
        let e = self.eval(forecast);
        let marks = self.marks_at(at);
        let mut keys: Vec<ArcStr> = Vec::new();
        let counts = if sel.maintenance == MaintenanceFilter::Only && at >= self.clock().now() {
            for key in &marks {
                if after.is_some_and(|x| &**key <= x) || !sel.takes_id(key) {
                    continue;
                }
                let Some(a) = self.inner.agents.get(key) else {
                    continue;
                };
                let why = a.facts().why_at(at, &e);
                if sel.matches(why, a.labels.as_deref(), true) {
                    keys.push(key.clone());
                }
            }
            self.counts_at(at, forecast).0
        } else {
            let mut counts = Counts {
                all: ByWhy::default(),
                maintained: ByWhy::default(),
            };
            for entry in self.inner.agents.iter() {
                let a = entry.value();
                let why = a.facts().why_at(at, &e);
                let maintained = marks.contains(entry.key());
                counts.all[why] += 1;
                if maintained {
                    counts.maintained[why] += 1;
                }
                if after.is_some_and(|x| &**entry.key() <= x) || !sel.takes_id(entry.key()) {
                    continue;
                }
                if sel.matches(why, a.labels.as_deref(), maintained) {
                    keys.push(entry.key().clone());
                }
            }
            counts
        };
        keys.sort_unstable();
        self.page_of(keys, limit, at, forecast, &counts)
    }

    /// The agents that `sel` selects, in `order`, strictly after `after` in
    /// that order, at most `limit`, evaluated now or at another time. By ID,
    /// this is [`Registry::list`] (after the cursor's ID); by time in state,
    /// each agent's reason and the time it entered it are those evaluated at
    /// the query's time, as its view shows them, and ties go by ID.
    ///
    /// A sorted list evaluates every agent once and keeps only the best
    /// `limit + 1` (to tell whether more follow); views are built for the
    /// page only.
    pub fn list_sorted(
        &self,
        sel: &Selector,
        at: Option<Time>,
        order: Order,
        after: Option<&SortCursor>,
        limit: usize,
    ) -> Page {
        match order {
            Order::Id => self.list(sel, at, after.map(|c| c.id.as_str()), limit),
            Order::LongestFirst => self.list_ranked(sel, at, after, limit, |since| since),
            Order::NewestFirst => self.list_ranked(sel, at, after, limit, Reverse),
        }
    }

    /// A page of the agents that `sel` selects, in the order of `rank` of
    /// the time each entered its state, then of ID: one pass over the fleet,
    /// with the best `limit + 1` kept in a bounded heap.
    fn list_ranked<K: Ord>(
        &self,
        sel: &Selector,
        at: Option<Time>,
        after: Option<&SortCursor>,
        limit: usize,
        rank: impl Fn(Time) -> K,
    ) -> Page {
        let (at, when) = self.query_time(at);
        let forecast = when.forecast();
        let past = when == When::Past;
        let e = self.eval(forecast);
        let marks = self.marks_at(at);
        let after = after.map(|c| (rank(c.since), c.id.as_str()));
        let mut best = Best::new(limit.saturating_add(1));
        // About the past, every agent is evaluated anyway: count them then.
        // Otherwise the counts come from the index, and the pass evaluates
        // only the agents whose ID may be taken.
        let mut counts = Counts {
            all: ByWhy::default(),
            maintained: ByWhy::default(),
        };
        let whys = sel.whys();
        if !past && whys.len() < Why::ALL.len() {
            // Now or ahead, for some reasons only: the index has the agents
            // by reason as settled; those whose reason at `at` differs are
            // `changed`. Only the selected reasons' agents are evaluated.
            let (now_counts, changed) = self.counts_at(at, forecast);
            counts = now_counts;
            let mut candidates: Vec<(ArcStr, Option<Why>)> = changed
                .iter()
                .filter(|c| whys.contains(&c.at))
                .map(|c| (c.key.clone(), Some(c.at)))
                .collect();
            let mut cursor: Option<ArcStr> = None;
            loop {
                let chunk = self.inner.tally.keys(&whys, cursor.as_deref(), INDEX_CHUNK);
                let next = (chunk.len() == INDEX_CHUNK).then(|| chunk[INDEX_CHUNK - 1].clone());
                candidates.extend(
                    chunk
                        .into_iter()
                        .filter(|k| changed.binary_search_by(|c| c.key.cmp(k)).is_err())
                        .map(|k| (k, None)),
                );
                match next {
                    Some(n) => cursor = Some(n),
                    None => break,
                }
            }
            for (key, why) in candidates {
                if !sel.takes_id(&key) {
                    continue;
                }
                let Some(a) = self.inner.agents.get(&key) else {
                    continue;
                };
                let why = why.unwrap_or(a.why());
                if !sel.matches(why, a.labels.as_deref(), marks.contains(&key)) {
                    continue;
                }
                let r = rank(since_at(&a, why, at, &e));
                if after
                    .as_ref()
                    .is_some_and(|(r0, id0)| (&r, &*key) <= (r0, *id0))
                {
                    continue;
                }
                best.offer(r, &key);
            }
        } else {
            // Now or ahead, each agent's reason is its settled one unless
            // `changed` says otherwise: no agent is evaluated again.
            let changed = if past {
                Vec::new()
            } else {
                let (now_counts, changed) = self.counts_at(at, forecast);
                counts = now_counts;
                changed
            };
            for entry in self.inner.agents.iter() {
                let (key, a) = (entry.key(), entry.value());
                let maintained = marks.contains(key);
                let why = if past {
                    let why = a.facts().why_at(at, &e);
                    counts.all[why] += 1;
                    if maintained {
                        counts.maintained[why] += 1;
                    }
                    Some(why)
                } else {
                    None
                };
                if !sel.takes_id(key) {
                    continue;
                }
                let why =
                    why.unwrap_or_else(|| match changed.binary_search_by(|c| c.key.cmp(key)) {
                        Ok(i) => changed[i].at,
                        Err(_) => a.why(),
                    });
                if !sel.matches(why, a.labels.as_deref(), maintained) {
                    continue;
                }
                let r = rank(since_at(a, why, at, &e));
                if after
                    .as_ref()
                    .is_some_and(|(r0, id0)| (&r, &**key) <= (r0, *id0))
                {
                    continue;
                }
                best.offer(r, key);
            }
        }
        self.page_of(best.into_keys(), limit, at, forecast, &counts)
    }

    /// The page of the first `limit` of `keys` (in their order), evaluated
    /// at `at`, with the storm guard of `counts`.
    fn page_of(
        &self,
        mut keys: Vec<ArcStr>,
        limit: usize,
        at: Time,
        forecast: bool,
        counts: &Counts,
    ) -> Page {
        let more = keys.len() > limit;
        keys.truncate(limit);
        let agents = keys
            .into_iter()
            .filter_map(|key| {
                let a = self.inner.agents.get(&key)?;
                Some(self.view_of(&key, &a, at, forecast))
            })
            .collect();
        Page {
            agents,
            more,
            storm: self.inner.tally.storm_of(&counts.all, &counts.maintained),
            evaluated_at: at,
        }
    }

    /// Every agent that `sel` selects now, ordered by ID (a watch's snapshot).
    pub fn snapshot(&self, sel: &Selector) -> Vec<AgentView> {
        self.list(sel, None, None, usize::MAX).agents
    }

    /// Counts by reason, now or at another time.
    pub fn summary(&self, at: Option<Time>) -> Summary {
        let (at, when) = self.query_time(at);
        let counts = match when {
            When::Past => self.counts_by_scan(at),
            _ => self.counts_at(at, when.forecast()).0,
        };
        let (given_up, claimed) = self.ops_counts(at);
        let settings = &self.inner.settings;
        let restored = settings.restored.load(Ordering::Relaxed);
        let grace_end = if settings.rules.silence.is_zero() || !restored {
            None
        } else {
            settings.grace_from.checked_add(settings.rules.silence)
        };
        Summary {
            storm: self.inner.tally.storm_of(&counts.all, &counts.maintained),
            by_why: counts.all,
            maintained: counts.maintained,
            given_up,
            claimed,
            connected: self.connected(),
            evaluated_at: at,
            grace_until: grace_end.filter(|g| *g > at),
        }
    }

    /// The recent transitions of one agent, oldest first, up to now: those
    /// the timer task has settled, and those due by now that it has not yet.
    pub fn history(&self, id: &AgentId) -> Result<Vec<Transition>, RegistryError> {
        let now = self.inner.settings.clock.now();
        let a = self
            .inner
            .agents
            .get(id.as_arc())
            .ok_or_else(|| RegistryError::NotFound(id.to_string()))?;
        let mut out = a.history();
        let (facts, e) = (a.facts(), self.eval(false));
        let (mut t, mut from) = (a.evaluated, a.why());
        drop(a);
        while let Some(at) = facts.next_change(t, &e).filter(|c| *c <= now) {
            let to = facts.why_at(at, &e);
            out.push(Transition {
                at,
                from: Some(from),
                to,
            });
            (t, from) = (at, to);
        }
        let cap = self.inner.settings.rules.history.max(1);
        if out.len() > cap {
            out.drain(..out.len() - cap);
        }
        Ok(out)
    }
}
