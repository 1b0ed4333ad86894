//! What operators and remediators set on agents: maintenance marks,
//! remediation claims, "given up", and each agent's activity (what was done
//! to it, by whom, when).
//!
//! - Kept beside the agents, not in their records: most agents never have
//!   any, so the memory per agent does not grow. One table keyed by agent ID
//!   holds the stored form ([`OpsRecord`]); the committer writes it into the
//!   agent's record, so marks, claims and activity are as durable as the
//!   agent, and a forget removes them with it.
//! - A maintenance mark ends by itself at its `until`: the expiry task
//!   ([`Registry::run_maintenance_expiry`]) ends it then and tells watchers;
//!   a read at time T takes a mark as in force when `since <= T < until`. A
//!   claim's lease is checked where it is read: one that ran out counts as
//!   none. A claim also ends when its agent turns healthy.
//! - An agent under maintenance keeps its real status. The tally counts it
//!   apart (the storm guard leaves it out), faulty lists leave it out unless
//!   asked, and claims of it are refused.
//! - Lock: one mutex over the table and the expiry heap, a leaf lock taken
//!   under an agent's map entry, never while the tally's lock is held (and
//!   the other way round).

use crate::model::ArcStr;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fleet_health_proto::v1 as pb;
use fleet_health_sensor::Time;
use tokio::sync::Notify;

use crate::model::{AgentId, Labels, State, Why};

use super::agent::Agent;
use super::record::{
    ActivityRecord, ClaimRecord, GivenUpRecord, MarkRecord, OpsRecord, RemediationRecord,
};
use super::types::{Change, RegistryError};
use super::{Registry, lock};

/// Activity entries kept per agent (older ones are dropped).
pub const ACTIVITY_KEPT: usize = 32;
/// Remediations per agent whose output is kept (older ones keep the rest).
const OUTPUTS_KEPT: usize = 3;
/// The most bytes of a remediation's output kept (its end).
pub const OUTPUT_KEPT: usize = 4096;
/// The most bytes of a reason, a holder's name, a program.
pub const TEXT_MAX: usize = 512;

/// The agents an operator names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Targets {
    /// These agents (each must be known).
    Ids(Vec<AgentId>),
    /// The agents that carry all these labels.
    Labels(Labels),
    /// Every agent.
    All,
}

/// What [`Registry::set_maintenance`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marked {
    /// The agents marked, by ID.
    pub agents: Vec<ArcStr>,
    /// When the marks end.
    pub until: Time,
    /// The commit that makes them durable (0: nothing to wait for).
    pub commit: u64,
}

/// Why a claim was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Another holder's claim holds.
    Held,
    /// The agent is under maintenance.
    Maintenance,
    /// A remediator gave up on the agent.
    GivenUp,
    /// The agent is not faulty.
    NotFaulty,
}

impl Refusal {
    /// The word for metrics: `held`, `maintenance`, `given_up`, `not_faulty`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Refusal::Held => "held",
            Refusal::Maintenance => "maintenance",
            Refusal::GivenUp => "given_up",
            Refusal::NotFaulty => "not_faulty",
        }
    }
}

/// The answer to a claim.
#[derive(Clone, Debug)]
pub struct Claimed {
    /// `None`: granted.
    pub refusal: Option<Refusal>,
    /// The claim in force (the caller's, or the other holder's).
    pub claim: Option<ClaimRecord>,
    /// The agent now.
    pub view: super::AgentView,
    /// Its recent remediations, oldest first.
    pub recent: Vec<RemediationRecord>,
    /// The commit that makes a granted claim durable (0: nothing to wait for).
    pub commit: u64,
}

/// The table of what is set on agents, and when marks end.
#[derive(Debug, Default)]
struct Table {
    agents: HashMap<ArcStr, OpsRecord>,
    /// `(until, agent)` of every mark set (stale entries are skipped).
    expiries: BinaryHeap<Reverse<(i64, ArcStr)>>,
}

/// Marks, claims, "given up" and activity of the agents that have any.
#[derive(Debug, Default)]
pub(super) struct Ops {
    table: Mutex<Table>,
    /// Agents with a maintenance mark: read without the lock, so that lists
    /// and views of a fleet with none cost nothing more.
    marks: AtomicUsize,
    /// Entries in the table, read without the lock.
    entries: AtomicUsize,
    /// Wakes the expiry task when a mark is set.
    wake: Notify,
}

fn micros(t: Time) -> i64 {
    t.as_micros()
}

fn in_force_mark(m: &MarkRecord, at: i64) -> bool {
    m.since <= at && at < m.until
}

fn is_empty(r: &OpsRecord) -> bool {
    r.maintenance.is_none() && r.claim.is_none() && r.given_up.is_none() && r.activity.is_empty()
}

/// `s` cut to at most `max` bytes, at a character boundary, keeping its end.
pub fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

impl Ops {
    /// Changes the record of `key` with `f` (a record is made if there is
    /// none, and dropped once empty); returns what `f` returns.
    fn update<R>(&self, key: &ArcStr, f: impl FnOnce(&mut OpsRecord, &mut Table) -> R) -> R {
        let mut table = lock(&self.table);
        let mut r = table.agents.remove(key).unwrap_or_default();
        let had_mark = r.maintenance.is_some();
        let had = !is_empty(&r);
        let out = f(&mut r, &mut table);
        let has_mark = r.maintenance.is_some();
        let has = !is_empty(&r);
        if has {
            table.agents.insert(key.clone(), r);
        }
        drop(table);
        match (had_mark, has_mark) {
            (false, true) => {
                self.marks.fetch_add(1, Ordering::Relaxed);
            }
            (true, false) => {
                self.marks.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
        match (had, has) {
            (false, true) => {
                self.entries.fetch_add(1, Ordering::Relaxed);
            }
            (true, false) => {
                self.entries.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
        out
    }

    /// A copy of the record of `key`, if it has one.
    fn get(&self, key: &str) -> Option<OpsRecord> {
        if self.entries.load(Ordering::Relaxed) == 0 {
            return None;
        }
        lock(&self.table).agents.get(key).cloned()
    }

    /// The mark, claim and "given up" of `key` in force at `at` (copies of
    /// those only: the activity stays in the table).
    fn set_at(
        &self,
        key: &str,
        at: i64,
    ) -> (
        Option<MarkRecord>,
        Option<ClaimRecord>,
        Option<GivenUpRecord>,
    ) {
        if self.entries.load(Ordering::Relaxed) == 0 {
            return (None, None, None);
        }
        let table = lock(&self.table);
        let Some(r) = table.agents.get(key) else {
            return (None, None, None);
        };
        (
            r.maintenance
                .as_ref()
                .filter(|m| in_force_mark(m, at))
                .cloned(),
            r.claim
                .as_ref()
                .filter(|c| c.since <= at && at < c.until)
                .cloned(),
            r.given_up.clone(),
        )
    }

    /// The mark of `key` in force at `at`, if any.
    fn mark_at(&self, key: &str, at: Time) -> Option<MarkRecord> {
        if self.marks.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let table = lock(&self.table);
        let m = table.agents.get(key)?.maintenance.as_ref()?;
        in_force_mark(m, micros(at)).then(|| m.clone())
    }
}

/// Appends `entry` to an activity log, keeping it bounded (and the output of
/// only the newest few remediations).
fn log(activity: &mut Vec<ActivityRecord>, entry: ActivityRecord) {
    activity.push(entry);
    if activity.len() > ACTIVITY_KEPT {
        activity.drain(..activity.len() - ACTIVITY_KEPT);
    }
    let mut outputs = 0;
    for a in activity.iter_mut().rev() {
        if let Some(r) = a.remediation.as_mut()
            && !r.output.is_empty()
        {
            outputs += 1;
            if outputs > OUTPUTS_KEPT {
                r.output.clear();
            }
        }
    }
}

fn kind(k: pb::ActivityKind) -> i32 {
    k as i32
}

impl Registry {
    /// Agent `id`'s map entry, held for a change.
    fn agent_mut(
        &self,
        id: &AgentId,
    ) -> Result<dashmap::mapref::one::RefMut<'_, ArcStr, Box<Agent>>, RegistryError> {
        self.inner
            .agents
            .get_mut(id.as_arc())
            .ok_or_else(|| RegistryError::NotFound(id.to_string()))
    }

    /// The agents `targets` names, sorted; every named ID must be known.
    fn resolve(&self, targets: &Targets) -> Result<Vec<ArcStr>, RegistryError> {
        let mut keys: Vec<ArcStr> = match targets {
            Targets::Ids(ids) => {
                for id in ids {
                    if !self.inner.agents.contains_key(id.as_arc()) {
                        return Err(RegistryError::NotFound(id.to_string()));
                    }
                }
                ids.iter().map(|id| id.as_arc().clone()).collect()
            }
            Targets::Labels(labels) => self
                .inner
                .agents
                .iter()
                .filter(|e| {
                    let l = e.value().labels.as_deref();
                    labels
                        .iter()
                        .all(|(k, v)| l.is_some_and(|l| l.get(k).is_some_and(|x| x == v)))
                })
                .map(|e| e.key().clone())
                .collect(),
            Targets::All => self.inner.agents.iter().map(|e| e.key().clone()).collect(),
        };
        keys.sort_unstable();
        keys.dedup();
        Ok(keys)
    }

    /// Tells watchers that what is shown of agent `key` changed (a claim
    /// granted or ended, "given up" set or cleared): its reason and its mark
    /// are as they were. Called under the agent's entry.
    fn ops_shown(&self, key: &ArcStr, a: &Agent) {
        if self.inner.changes.receiver_count() == 0 {
            return;
        }
        let at = self.inner.settings.clock.now().max(a.evaluated);
        let view = Arc::new(self.view_of(key, a, at, false));
        let was_maintained = view.maintenance.is_some();
        let _ = self.inner.changes.send(Change::Status {
            view,
            before: Some(a.why()),
            was_maintained,
        });
    }

    /// The fan-out of a mark set or ended on agent `key`: the tally, the
    /// journal, watchers, the storm guard. Called under the agent's entry;
    /// returns the commit that holds the change.
    fn mark_changed(&self, key: &ArcStr, a: &mut Agent, was: bool, is: bool) -> u64 {
        let at = self.inner.settings.clock.now().max(a.evaluated);
        self.inner.tally.set_maintained(key, a.why(), is);
        let commit = self.inner.journal.changed(key, a);
        if self.inner.changes.receiver_count() > 0 {
            let view = Arc::new(self.view_of(key, a, at, false));
            let _ = self.inner.changes.send(Change::Status {
                view,
                before: Some(a.why()),
                was_maintained: was,
            });
        }
        commit
    }

    /// Marks the agents `targets` names as under maintenance for `duration`
    /// (replacing marks they have), with `reason`, set by `by`. Unknown IDs:
    /// nothing is marked.
    pub fn set_maintenance(
        &self,
        targets: &Targets,
        reason: &str,
        duration: Duration,
        by: &str,
    ) -> Result<Marked, RegistryError> {
        let keys = self.resolve(targets)?;
        let now = self.inner.settings.clock.now();
        let until = now.saturating_add(duration);
        let mark = MarkRecord {
            reason: reason.to_owned(),
            by: by.to_owned(),
            since: micros(now),
            until: micros(until),
        };
        let mut marked = Vec::with_capacity(keys.len());
        let mut commit = 0;
        for key in keys {
            let Some(mut a) = self.inner.agents.get_mut(&key) else {
                continue; // forgotten meanwhile
            };
            let was = self.inner.ops.update(&key, |r, table| {
                let was = r.maintenance.replace(mark.clone()).is_some();
                table.expiries.push(Reverse((mark.until, key.clone())));
                log(
                    &mut r.activity,
                    ActivityRecord {
                        at: mark.since,
                        kind: kind(pb::ActivityKind::MaintenanceSet),
                        by: by.to_owned(),
                        reason: reason.to_owned(),
                        until: mark.until,
                        ..ActivityRecord::default()
                    },
                );
                was
            });
            commit = commit.max(self.mark_changed(&key, &mut a, was, true));
            drop(a);
            marked.push(key);
        }
        self.inner.ops.wake.notify_one();
        self.check_storm();
        tracing::info!(agents = marked.len(), %reason, by, "maintenance set");
        Ok(Marked {
            agents: marked,
            until,
            commit,
        })
    }

    /// Ends the maintenance marks of the agents `targets` names (for labels
    /// or all: those under maintenance); returns how many were ended and the
    /// commit that holds the change.
    pub fn clear_maintenance(
        &self,
        targets: &Targets,
        by: &str,
    ) -> Result<(u64, u64), RegistryError> {
        let keys = match targets {
            Targets::Ids(_) => self.resolve(targets)?,
            _ => {
                let all = self.inner.tally.maintained_keys(None, usize::MAX);
                match targets {
                    Targets::Labels(labels) => all
                        .into_iter()
                        .filter(|k| {
                            self.inner.agents.get(k).is_some_and(|a| {
                                let l = a.labels.as_deref();
                                labels.iter().all(|(k, v)| {
                                    l.is_some_and(|l| l.get(k).is_some_and(|x| x == v))
                                })
                            })
                        })
                        .collect(),
                    _ => all,
                }
            }
        };
        let now = micros(self.inner.settings.clock.now());
        let (mut cleared, mut commit) = (0, 0);
        for key in keys {
            if let Some(c) =
                self.end_mark(&key, now, by, pb::ActivityKind::MaintenanceCleared, None)
            {
                cleared += 1;
                commit = commit.max(c);
            }
        }
        self.check_storm();
        if cleared > 0 {
            tracing::info!(agents = cleared, by, "maintenance cleared");
        }
        Ok((cleared, commit))
    }

    /// Ends the mark of `key` (only the one ending at `only_until`, when
    /// given: the expiry of a mark since replaced ends nothing); returns
    /// the commit that holds the change if one was ended.
    fn end_mark(
        &self,
        key: &ArcStr,
        at: i64,
        by: &str,
        why: pb::ActivityKind,
        only_until: Option<i64>,
    ) -> Option<u64> {
        let mut a = self.inner.agents.get_mut(key)?;
        let ended = self.inner.ops.update(key, |r, _| {
            let Some(m) = r.maintenance.as_ref() else {
                return false;
            };
            if only_until.is_some_and(|u| u != m.until) {
                return false;
            }
            r.maintenance = None;
            log(
                &mut r.activity,
                ActivityRecord {
                    at,
                    kind: kind(why),
                    by: by.to_owned(),
                    ..ActivityRecord::default()
                },
            );
            true
        });
        ended.then(|| self.mark_changed(key, &mut a, true, false))
    }

    /// Ends every mark whose time has come; returns when the next one ends.
    pub fn expire_maintenance(&self) -> Option<Time> {
        let now = micros(self.inner.settings.clock.now());
        let mut ended = 0;
        loop {
            let due = {
                let mut table = lock(&self.inner.ops.table);
                match table.expiries.peek() {
                    Some(Reverse((t, _))) if *t <= now => table.expiries.pop().map(|r| r.0),
                    Some(Reverse((t, _))) => {
                        let next = Time::from_micros(*t).ok();
                        drop(table);
                        if ended > 0 {
                            self.check_storm();
                        }
                        return next;
                    }
                    None => None,
                }
            };
            let Some((until, key)) = due else {
                if ended > 0 {
                    self.check_storm();
                }
                return None;
            };
            let expired = pb::ActivityKind::MaintenanceExpired;
            if self
                .end_mark(&key, until, "", expired, Some(until))
                .is_some()
            {
                ended += 1;
                tracing::info!(agent_id = %key, "maintenance ended by itself");
            }
        }
    }

    /// Ends maintenance marks at their time until `shutdown` resolves.
    pub async fn run_maintenance_expiry(&self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let notified = self.inner.ops.wake.notified();
            let next = self.expire_maintenance();
            let clock = self.inner.settings.clock.clone();
            let sleep = async move {
                match next {
                    Some(t) => clock.sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = &mut shutdown => return,
                () = sleep => {}
                () = notified => {}
            }
        }
    }

    /// Claims agent `id` for `holder` (identity `by`) for `lease`, unless
    /// another holder's claim holds, or the agent is under maintenance,
    /// given up, or not faulty.
    pub fn claim(
        &self,
        id: &AgentId,
        holder: &str,
        lease: Duration,
        by: &str,
    ) -> Result<Claimed, RegistryError> {
        let key = id.as_arc();
        let now = self.inner.settings.clock.now();
        let mut a = self.agent_mut(id)?;
        let view = self.view_of(key, &a, now, false);
        let until = micros(now.saturating_add(lease));
        let faulty = view.why.state() == State::Faulty;
        let (refusal, claim, recent) = self.inner.ops.update(key, |r, _| {
            let t = micros(now);
            let held = r.claim.as_ref().filter(|c| c.until > t);
            let refusal = if r.maintenance.as_ref().is_some_and(|m| in_force_mark(m, t)) {
                Some(Refusal::Maintenance)
            } else if r.given_up.is_some() {
                Some(Refusal::GivenUp)
            } else if held.is_some_and(|c| c.holder != holder) {
                Some(Refusal::Held)
            } else if !faulty {
                Some(Refusal::NotFaulty)
            } else {
                None
            };
            if refusal.is_none() {
                let since = held.map_or(t, |c| c.since);
                r.claim = Some(ClaimRecord {
                    holder: holder.to_owned(),
                    by: by.to_owned(),
                    since,
                    until,
                });
            } else if r.claim.as_ref().is_some_and(|c| c.until <= t) {
                r.claim = None; // ran out: tidy
            }
            let claim = r.claim.clone().filter(|c| c.until > t);
            let recent = r
                .activity
                .iter()
                .filter_map(|e| e.remediation.clone())
                .collect();
            (refusal, claim, recent)
        });
        let commit = if refusal.is_none() {
            self.ops_shown(key, &a);
            self.inner.journal.changed(key, &mut a)
        } else {
            0
        };
        drop(a);
        self.inner
            .metrics
            .count_claim(refusal.map_or("granted", Refusal::as_str));
        let view = super::AgentView {
            claim: claim.clone(),
            ..view
        };
        Ok(Claimed {
            refusal,
            claim,
            view,
            recent,
            commit,
        })
    }

    /// Ends `holder`'s claim on agent `id`; returns whether it held one, and
    /// the commit that holds the change.
    pub fn release(&self, id: &AgentId, holder: &str) -> Result<(bool, u64), RegistryError> {
        let key = id.as_arc();
        let now = micros(self.inner.settings.clock.now());
        let mut a = self.agent_mut(id)?;
        let released = self.inner.ops.update(key, |r, _| {
            let mine = r
                .claim
                .as_ref()
                .is_some_and(|c| c.holder == holder && c.until > now);
            if mine || r.claim.as_ref().is_some_and(|c| c.until <= now) {
                r.claim = None;
            }
            mine
        });
        let commit = if released {
            self.ops_shown(key, &a);
            self.inner.journal.changed(key, &mut a)
        } else {
            0
        };
        Ok((released, commit))
    }

    /// Records what `holder` (identity `by`) did to agent `id`, and whether
    /// it gives up on it (`give_up`: why). Giving up ends the claim.
    pub fn record_remediation(
        &self,
        id: &AgentId,
        holder: &str,
        by: &str,
        remediation: Option<RemediationRecord>,
        give_up: Option<&str>,
    ) -> Result<u64, RegistryError> {
        let key = id.as_arc();
        let now = micros(self.inner.settings.clock.now());
        let mut a = self.agent_mut(id)?;
        if let Some(r) = &remediation {
            self.inner.metrics.count_remediation(r.result);
        }
        self.inner.ops.update(key, |r, _| {
            if let Some(mut rem) = remediation {
                rem.output = tail(&rem.output, OUTPUT_KEPT).to_owned();
                log(
                    &mut r.activity,
                    ActivityRecord {
                        at: rem.finished.max(rem.started),
                        kind: kind(pb::ActivityKind::Remediated),
                        by: by.to_owned(),
                        holder: holder.to_owned(),
                        remediation: Some(rem),
                        ..ActivityRecord::default()
                    },
                );
            }
            if let Some(reason) = give_up {
                r.given_up = Some(GivenUpRecord {
                    holder: holder.to_owned(),
                    by: by.to_owned(),
                    at: now,
                    reason: reason.to_owned(),
                });
                r.claim = None;
                log(
                    &mut r.activity,
                    ActivityRecord {
                        at: now,
                        kind: kind(pb::ActivityKind::GaveUp),
                        by: by.to_owned(),
                        holder: holder.to_owned(),
                        reason: reason.to_owned(),
                        ..ActivityRecord::default()
                    },
                );
            }
        });
        if give_up.is_some() {
            self.ops_shown(key, &a);
            self.inner.metrics.count_gave_up();
            tracing::warn!(agent_id = %id, holder, reason = give_up, "a remediator gave up on the agent");
        }
        Ok(self.inner.journal.changed(key, &mut a))
    }

    /// Clears a remediator's "given up" from agent `id` (by `by`); returns
    /// whether there was one, and the commit that holds the change.
    pub fn clear_given_up(&self, id: &AgentId, by: &str) -> Result<(bool, u64), RegistryError> {
        let key = id.as_arc();
        let now = micros(self.inner.settings.clock.now());
        let mut a = self.agent_mut(id)?;
        let cleared = self.inner.ops.update(key, |r, _| {
            let had = r.given_up.take().is_some();
            if had {
                log(
                    &mut r.activity,
                    ActivityRecord {
                        at: now,
                        kind: kind(pb::ActivityKind::GivenUpCleared),
                        by: by.to_owned(),
                        ..ActivityRecord::default()
                    },
                );
            }
            had
        });
        let commit = if cleared {
            self.ops_shown(key, &a);
            self.inner.journal.changed(key, &mut a)
        } else {
            0
        };
        Ok((cleared, commit))
    }

    /// What operators and remediators did to agent `id`, oldest first.
    pub fn activity(&self, id: &AgentId) -> Result<Vec<ActivityRecord>, RegistryError> {
        if !self.inner.agents.contains_key(id.as_arc()) {
            return Err(RegistryError::NotFound(id.to_string()));
        }
        Ok(self
            .inner
            .ops
            .get(id.as_str())
            .map(|r| r.activity)
            .unwrap_or_default())
    }

    /// The mark, claim and "given up" of agent `key` in force at `at`.
    pub(super) fn ops_at(
        &self,
        key: &str,
        at: Time,
    ) -> (
        Option<MarkRecord>,
        Option<ClaimRecord>,
        Option<GivenUpRecord>,
    ) {
        self.inner.ops.set_at(key, micros(at))
    }

    /// Whether agent `key` is under maintenance at `at`.
    pub(super) fn maintained_at(&self, key: &str, at: Time) -> bool {
        self.inner.ops.mark_at(key, at).is_some()
    }

    /// The stored form of what is set on agent `key`, for its record.
    pub(super) fn ops_record(&self, key: &str) -> Option<OpsRecord> {
        self.inner.ops.get(key)
    }

    /// Agent `key` turned healthy: its claim ends (the remediation worked,
    /// or was not needed). Called under the agent's entry.
    pub(super) fn ops_turned_healthy(&self, key: &ArcStr) {
        if self.inner.ops.entries.load(Ordering::Relaxed) == 0 {
            return;
        }
        self.inner.ops.update(key, |r, _| r.claim = None);
    }

    /// Agent `key` was forgotten: what was set on it goes with it.
    pub(super) fn ops_forgotten(&self, key: &ArcStr) {
        if self.inner.ops.entries.load(Ordering::Relaxed) == 0 {
            return;
        }
        self.inner.ops.update(key, |r, _| *r = OpsRecord::default());
    }

    /// Agent `key` (settled as `why`) was loaded with `ops` from its record.
    pub(super) fn ops_restored(&self, key: &ArcStr, why: Why, ops: OpsRecord) {
        if let Some(m) = &ops.maintenance {
            self.inner.tally.set_maintained(key, why, true);
            lock(&self.inner.ops.table)
                .expiries
                .push(Reverse((m.until, key.clone())));
        }
        self.inner.ops.update(key, |r, _| *r = ops);
    }

    /// How many agents are given up on, and how many claimed at `at`.
    pub(super) fn ops_counts(&self, at: Time) -> (u64, u64) {
        if self.inner.ops.entries.load(Ordering::Relaxed) == 0 {
            return (0, 0);
        }
        let t = micros(at);
        let table = lock(&self.inner.ops.table);
        table.agents.values().fold((0, 0), |(g, c), r| {
            (
                g + u64::from(r.given_up.is_some()),
                c + u64::from(
                    r.claim
                        .as_ref()
                        .is_some_and(|c| c.since <= t && t < c.until),
                ),
            )
        })
    }

    /// The marks in force at `at`, for a query about the past.
    pub(super) fn marks_at(&self, at: Time) -> std::collections::HashSet<ArcStr> {
        if self.inner.ops.marks.load(Ordering::Relaxed) == 0 {
            return Default::default();
        }
        let t = micros(at);
        lock(&self.inner.ops.table)
            .agents
            .iter()
            .filter(|(_, r)| r.maintenance.as_ref().is_some_and(|m| in_force_mark(m, t)))
            .map(|(k, _)| k.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tail_keeps_the_end_at_a_character_boundary() {
        assert_eq!(tail("abc", 5), "abc");
        assert_eq!(tail("abcdef", 3), "def");
        assert_eq!(tail("aé", 1), "");
        assert_eq!(tail("aéb", 2), "b");
    }

    #[test]
    fn the_activity_log_is_bounded_and_keeps_the_newest_outputs() {
        let mut log_ = Vec::new();
        for i in 0..40 {
            log(
                &mut log_,
                ActivityRecord {
                    at: i,
                    remediation: Some(RemediationRecord {
                        output: format!("run {i}"),
                        ..RemediationRecord::default()
                    }),
                    ..ActivityRecord::default()
                },
            );
        }
        assert_eq!(log_.len(), ACTIVITY_KEPT);
        assert_eq!(log_[0].at, 8);
        let outputs: Vec<&str> = log_
            .iter()
            .filter_map(|a| a.remediation.as_ref())
            .map(|r| r.output.as_str())
            .filter(|o| !o.is_empty())
            .collect();
        assert_eq!(outputs, ["run 37", "run 38", "run 39"]);
    }
}
