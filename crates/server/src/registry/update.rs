//! What changes the fleet: an agent's hello, its events and its goodbye; an
//! operator forgetting an agent; the records loaded at start-up.
//!
//! Each change is made under the agent's map entry, then settled at the
//! current time, re-scheduled, and journalled; a changed verdict fans out
//! through `Registry::transition`.

use crate::model::ArcStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use dashmap::mapref::entry::Entry;
use fleet_health_sensor::Time;

use crate::metrics::EventCounts;
use crate::model::{AgentEvent, AgentId, LabelSet, Labels};

use super::agent::Agent;
use super::record::{self, RecordError};
use super::types::{Applied, Connected, RegistryError, Session};
use super::{Registry, lock};

impl Registry {
    /// An agent stream said hello: create the agent if new, take over its
    /// stream, start counting sequence numbers afresh for a new incarnation.
    pub fn connect(
        &self,
        id: &AgentId,
        incarnation: u64,
        labels: Labels,
    ) -> Result<Connected, RegistryError> {
        let inner = &*self.inner;
        let now = inner.settings.clock.now();
        let token = inner.population.tokens.next();
        let labels = (!labels.is_empty())
            .then(|| lock(&inner.labels).intern(Arc::new(LabelSet::from(&labels))));
        let key = id.as_arc().clone();
        let (last_seq, commit) = match inner.agents.entry(key.clone()) {
            Entry::Occupied(mut e) => {
                let a = e.get_mut();
                if a.incarnation != incarnation {
                    a.incarnation = incarnation;
                    a.last_seq = 0;
                }
                if a.stream.replace(token).is_none() {
                    inner.population.connected.fetch_add(1, Ordering::Relaxed);
                }
                if labels.is_some() {
                    a.labels = labels;
                }
                a.last_heard = a.last_heard.max(now);
                self.settle(&key, a, now.max(a.evaluated));
                self.schedule(&key, a);
                (a.last_seq, inner.journal.changed(&key, a))
            }
            Entry::Vacant(e) => {
                let max = inner.settings.limits.max_agents;
                if inner.population.known.fetch_add(1, Ordering::Relaxed) >= max {
                    inner.population.known.fetch_sub(1, Ordering::Relaxed);
                    return Err(RegistryError::TooManyAgents(max));
                }
                let mut a = Agent::new(now);
                a.incarnation = incarnation;
                a.stream = Some(token);
                a.labels = labels;
                inner.population.connected.fetch_add(1, Ordering::Relaxed);
                let mut entry = e.insert(Box::new(a));
                let a = entry.value_mut();
                let to = a.facts().why_at(now, &self.eval(false));
                self.transition(&key, a, None, to, now);
                self.schedule(&key, a);
                (0, inner.journal.changed(&key, a))
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
        let mut counts = EventCounts::default();
        let applied = self.apply_at(
            session,
            events,
            self.inner.settings.clock.now(),
            &mut counts,
        );
        self.inner.metrics.count(&mut counts);
        applied
    }

    /// As [`Registry::apply`], for events received at `now` (the registry's
    /// clock, read by the caller: messages that arrived together share one
    /// reading), counted into `counts`, which the caller hands to
    /// [`Metrics::count`](crate::metrics::Metrics::count) (a stream does so
    /// once per ack).
    pub fn apply_at(
        &self,
        session: &Session,
        events: &[AgentEvent],
        now: Time,
        counts: &mut EventCounts,
    ) -> Result<Applied, RegistryError> {
        let inner = &*self.inner;
        let key = session.id.as_arc();
        let mut a = inner
            .agents
            .get_mut(key)
            .ok_or_else(|| RegistryError::Forgotten(session.id.to_string()))?;
        if a.stream != Some(session.token) {
            return Err(RegistryError::Superseded(session.id.to_string()));
        }
        let latest = now.saturating_add(inner.settings.rules.skew);
        let mut out = Applied::default();
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
            counts.applied[ev.kind] += 1;
        }
        a.last_heard = a.last_heard.max(now);
        out.applied_through = a.last_seq;
        let at = now.max(a.evaluated);
        self.settle(key, &mut a, at);
        self.schedule(key, &mut a);
        out.commit = inner.journal.changed(key, &mut a);
        counts.duplicates += u64::from(out.duplicates);
        counts.clamped += u64::from(out.clamped);
        Ok(out)
    }

    /// Whether the stream with `token` is the agent's open stream: `false`
    /// once a newer stream took over or the agent was forgotten.
    pub fn is_open(&self, id: &AgentId, token: u32) -> bool {
        self.inner
            .agents
            .get(id.as_arc())
            .is_some_and(|a| a.stream.is_some_and(|t| t.get() == token))
    }

    /// A stream ended. The agent stays; it is no longer connected.
    pub fn disconnect(&self, session: &Session) {
        if let Some(mut a) = self.inner.agents.get_mut(session.id.as_arc())
            && a.stream == Some(session.token)
        {
            a.stream = None;
            self.inner
                .population
                .connected
                .fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Removes an agent and all that is known of it; returns its last status.
    pub fn forget(&self, id: &AgentId) -> Result<super::AgentView, RegistryError> {
        let inner = &*self.inner;
        let at = inner.settings.clock.now();
        let (key, a) = inner
            .agents
            .remove(id.as_arc())
            .ok_or_else(|| RegistryError::NotFound(id.to_string()))?;
        inner.population.known.fetch_sub(1, Ordering::Relaxed);
        if a.connected() {
            inner.population.connected.fetch_sub(1, Ordering::Relaxed);
        }
        let last = Arc::new(self.view_of(&key, &a, at, false));
        self.forgotten(&key, a.why(), last.clone());
        tracing::info!(agent_id = %id, "agent forgotten");
        Ok(Arc::unwrap_or_clone(last))
    }

    /// Lets go of the agents for which `gone` holds, as if they had never
    /// been here: their shard is now another server's, which loads them from
    /// the database. No delete is written and nothing is recorded in their
    /// history; their changes not yet taken by the committer are dropped.
    /// Returns how many left.
    pub fn let_go(&self, gone: &dyn Fn(&str) -> bool) -> usize {
        let inner = &*self.inner;
        let keys: Vec<ArcStr> = inner
            .agents
            .iter()
            .filter(|e| gone(e.key()))
            .map(|e| e.key().clone())
            .collect();
        for key in &keys {
            if let Some((key, a)) = inner.agents.remove(key) {
                inner.population.known.fetch_sub(1, Ordering::Relaxed);
                if a.connected() {
                    inner.population.connected.fetch_sub(1, Ordering::Relaxed);
                }
                inner.tally.moved(&key, Some(a.why()), None);
                self.ops_forgotten(&key);
            }
        }
        inner.journal.discard(gone);
        self.check_storm();
        keys.len()
    }

    /// Loads agents from their stored records (at start-up, into an empty
    /// registry): each is a key and the bytes the committer wrote. Agents are
    /// not connected; changes that fell due while the server was down are
    /// applied at their due times by the timer task.
    pub fn restore(&self, records: Vec<(String, Vec<u8>)>) -> Result<usize, RecordError> {
        self.restore_from(records, None)
    }

    /// Loads the agents of shards a cluster's node has just taken (into a
    /// registry that serves others already): as [`Registry::restore`], and
    /// each agent's silence counts from no earlier than `now`, as after a
    /// restart, unless it was already not reporting: its reporter had no
    /// server to report to while the shard changed hands. (One time for
    /// the node: a later takeover gives the agents of earlier ones its
    /// grace too, which can only hold their `not reporting` back longer,
    /// by at most one silence window.)
    pub fn restore_taken(
        &self,
        records: Vec<(String, Vec<u8>)>,
        now: Time,
    ) -> Result<usize, RecordError> {
        self.restore_from(records, Some(now))
    }

    fn restore_from(
        &self,
        records: Vec<(String, Vec<u8>)>,
        grace: Option<Time>,
    ) -> Result<usize, RecordError> {
        let inner = &*self.inner;
        let n = records.len();
        if let Some(g) = grace {
            inner
                .settings
                .taken_from
                .fetch_max(g.as_micros(), Ordering::Relaxed);
        }
        for (key, bytes) in records {
            let (id, mut a, ops) = record::decode(&key, &bytes)?;
            if grace.is_some() && a.grace != crate::model::Grace::None {
                a.grace = crate::model::Grace::Taken;
            }
            if let Some(l) = a.labels.take() {
                a.labels = Some(lock(&inner.labels).intern(l));
            }
            let key = id.as_arc().clone();
            inner.tally.moved(&key, None, Some(a.why()));
            if let Some(ops) = ops {
                self.ops_restored(&key, a.why(), ops);
            }
            self.schedule(&key, &mut a);
            if inner.agents.insert(key, Box::new(a)).is_none() {
                inner.population.known.fetch_add(1, Ordering::Relaxed);
            }
        }
        if n > 0 && grace.is_none() {
            inner.settings.restored.store(true, Ordering::Relaxed);
        }
        self.check_storm();
        Ok(n)
    }
}
