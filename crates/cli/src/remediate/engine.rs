//! The remediator's decisions, pure and clock-injected: which faulty agents
//! to act on, when, and which to leave alone and why.
//!
//! The engine is fed the messages of a watch of the faulty agents
//! ([`Engine::observe`]) and the answers to its claims
//! ([`Engine::claimed`]); asked at any time what to do now
//! ([`Engine::poll`]) and when to ask next ([`Engine::next_wake`]). It does
//! no I/O and reads no clock: every call takes `now`, so the tests run
//! hours of policy in microseconds.
//!
//! The decisions, in the order they are checked:
//! 1. Nothing before the watch's first snapshot is complete, nor while a
//!    resync is under way (the picture is partial).
//! 2. The storm stop: nothing while the server's storm flag is up, or while
//!    at least `storm_min` agents are faulty and more than half of them give
//!    one why that points away from the agents (`outside_whys`), unless
//!    `allow_mass_restart`.
//! 3. Filters: the `--why` and `--label` filters; agents under maintenance or
//!    given up are left alone.
//! 4. Settle: an agent is acted on once it has been faulty for `settle`
//!    (from the `since` the server gives; kept while the agent stays faulty
//!    even if its why changes).
//! 5. Concurrency and the global rate: a slot and a start are reserved for
//!    each claim.
//! 6. Then the claim on the server, whose answer brings the agent's recent
//!    remediations by anyone: within `cooldown` of the last one, skip (and
//!    try again when it has passed); `max_restarts` or more started within
//!    `restart_window`, give up.
//!
//! Agents are taken oldest fault first. Every agent acted on is left alone
//! for `cooldown` after its program ends.

use std::collections::BTreeMap;
use std::time::Duration;

use fleet_health_client::{
    AgentView, ClaimOutcome, ClaimRefusal, Labels, RemediationResult, State, Storm, Time,
    WatchChange, Why,
};

use super::rate::{Rate, RateLimiter};

/// How long to wait before claiming again an agent whose claim failed (the
/// server unreachable, an error).
pub const RETRY_AFTER_ERROR: Duration = Duration::from_secs(5);

/// How long to wait before claiming again an agent refused as under
/// maintenance or not faulty (the watch usually says so first).
pub const RETRY_AFTER_REFUSAL: Duration = Duration::from_secs(30);

/// The policy: every decision's setting.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// How long an agent must have been faulty before it is acted on.
    pub settle: Duration,
    /// Only agents with one of these whys; empty: any.
    pub whys: Vec<Why>,
    /// Only agents that carry all these labels.
    pub labels: Labels,
    /// Programs running (or claims under way) at once, at most.
    pub concurrency: usize,
    /// Program starts per window, at most.
    pub rate: Rate,
    /// No action on an agent within this of its last remediation, by anyone.
    pub cooldown: Duration,
    /// Give up on an agent remediated this many times within
    /// `restart_window`.
    pub max_restarts: u32,
    /// The crash-loop window.
    pub restart_window: Duration,
    /// The outside-why storm stop needs at least this many faulty agents.
    pub storm_min: usize,
    /// Whys that point away from the agents (at the data server, the
    /// network): when most faulty agents share one, nothing is restarted.
    pub outside_whys: Vec<Why>,
    /// Act even during a storm.
    pub allow_mass_restart: bool,
    /// Act on the agents faulty at the first snapshot only, once each; every
    /// skip is final.
    pub once: bool,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            settle: Duration::from_secs(60),
            whys: Vec::new(),
            labels: Labels::new(),
            concurrency: 4,
            rate: Rate {
                count: 10,
                per: Duration::from_secs(60),
            },
            cooldown: Duration::from_secs(600),
            max_restarts: 3,
            restart_window: Duration::from_secs(3600),
            storm_min: 10,
            outside_whys: vec![Why::NoDataReceived],
            allow_mass_restart: false,
            once: false,
        }
    }
}

/// Why the storm stop holds every action.
#[derive(Clone, Debug, PartialEq)]
pub enum StormCause {
    /// The server's storm flag is up.
    Server {
        /// Faulty agents, as the server counts them.
        faulty: u64,
        /// Active agents.
        active: u64,
    },
    /// Most faulty agents share a why that points away from the agents.
    Outside {
        /// The why.
        why: Why,
        /// How many faulty agents give it.
        count: usize,
        /// How many agents are faulty.
        faulty: usize,
    },
}

/// Why an agent was not acted on (this time).
#[derive(Clone, Debug, PartialEq)]
pub enum Skip {
    /// The server refused the claim.
    Refused {
        /// Why.
        refusal: ClaimRefusal,
        /// The other holder, when another remediator holds it.
        holder: Option<String>,
        /// When that claim runs out.
        until: Option<Time>,
    },
    /// The agent was remediated within the cooldown.
    Cooldown {
        /// When the last remediation ended (or started).
        last: Time,
        /// When the cooldown ends.
        until: Time,
    },
    /// The storm stop holds every action.
    Storm,
    /// (`--once`) The agent has not been faulty for the settle time yet.
    NotSettled {
        /// How long it has been faulty.
        faulty_for: Duration,
    },
    /// Under maintenance (seen in its status).
    Maintenance,
    /// A remediator gave up on it and no operator has cleared that.
    GivenUp {
        /// Why, as that remediator said.
        reason: String,
    },
    /// It turned healthy (or left the watch) while being claimed.
    NoLongerFaulty,
    /// The claim failed (the server unreachable, an error).
    ClaimFailed(String),
}

impl Skip {
    /// A key that is the same for the same reason, to say each reason once.
    fn key(&self) -> &'static str {
        match self {
            Skip::Refused { refusal, .. } => refusal.as_str(),
            Skip::Cooldown { .. } => "cooldown",
            Skip::Storm => "storm",
            Skip::NotSettled { .. } => "not settled",
            Skip::Maintenance => "maintenance",
            Skip::GivenUp { .. } => "given up",
            Skip::NoLongerFaulty => "no longer faulty",
            Skip::ClaimFailed(_) => "claim failed",
        }
    }
}

/// Something to tell the operator.
#[derive(Clone, Debug, PartialEq)]
pub enum Note {
    /// An agent was left alone, and why.
    Skipped {
        /// The agent.
        agent: String,
        /// Its why.
        why: Option<Why>,
        /// Why it was skipped.
        skip: Skip,
    },
    /// The storm stop began: nothing is started until it ends.
    StormHeld(StormCause),
    /// The storm stop ended.
    StormCleared,
}

/// An action to take: run the program for this agent.
#[derive(Clone, Debug, PartialEq)]
pub struct Act {
    /// The agent.
    pub agent: String,
    /// Its why.
    pub why: Option<Why>,
    /// Its why's text, as the server words it.
    pub why_text: String,
    /// Its labels.
    pub labels: Labels,
    /// Since when it has been faulty.
    pub faulty_since: Time,
}

/// What to do with a claim's answer.
#[derive(Clone, Debug, PartialEq)]
pub enum AfterClaim {
    /// Run the program now (the start is counted at `now`).
    Run(Act),
    /// Do not act; release the claim if it was granted. The note is `None`
    /// when the same reason was already said for this agent.
    Skip(Option<Note>),
    /// The crash-loop limit is reached: record that the remediator gives up
    /// on the agent, with this reason, and release the claim.
    GiveUp {
        /// The agent.
        agent: String,
        /// Its why.
        why: Option<Why>,
        /// The reason to record.
        reason: String,
    },
}

/// What an agent is going through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// A candidate.
    Idle,
    /// Its claim is under way (a slot and a start reserved).
    Claiming,
    /// Its program runs (a slot held).
    Running,
    /// (`--once`) Decided: nothing more to do with it.
    Done,
}

#[derive(Clone, Debug)]
struct Agent {
    view: AgentView,
    faulty_since: Time,
    phase: Phase,
    /// In the watch's set now.
    present: bool,
    /// Seen in the snapshot of a resync under way.
    seen: bool,
    /// Not before this (cooldown, a refusal, an error).
    not_before: Option<Time>,
    /// The last skip said, to say each reason once.
    said: Option<&'static str>,
    /// When this remediator last gave up on it: remediations before that do
    /// not count towards the crash-loop limit once an operator has cleared it.
    gave_up_at: Option<Time>,
}

/// The remediator's decisions. See the module's docs.
#[derive(Debug)]
pub struct Engine {
    policy: Policy,
    agents: BTreeMap<String, Agent>,
    rate: RateLimiter,
    /// Claims under way and programs running.
    busy: usize,
    server_storm: Option<Storm>,
    /// The storm stop in force, if any (to say when it begins and ends).
    held: Option<StormCause>,
    /// Whether a storm ever held an action back (for `--once`'s exit code).
    storm_seen: bool,
    /// The first snapshot is complete.
    synced: bool,
    /// A resync is under way.
    resyncing: bool,
}

impl Engine {
    /// An engine with no agents yet.
    pub fn new(policy: Policy) -> Engine {
        Engine {
            rate: RateLimiter::new(policy.rate),
            policy,
            agents: BTreeMap::new(),
            busy: 0,
            server_storm: None,
            held: None,
            storm_seen: false,
            synced: false,
            resyncing: false,
        }
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Takes one message of the watch of faulty agents.
    pub fn observe(&mut self, change: &WatchChange, now: Time) {
        match change {
            WatchChange::Snapshot(view) | WatchChange::Changed(view) => self.upsert(view, now),
            WatchChange::Left { agent_id, .. } => self.leave(agent_id),
            WatchChange::Resync { .. } => {
                self.resyncing = true;
                for a in self.agents.values_mut() {
                    a.seen = false;
                }
            }
            WatchChange::Synced { storm, .. } => {
                self.server_storm = storm.clone();
                if self.resyncing {
                    let gone: Vec<String> = self
                        .agents
                        .iter()
                        .filter(|(_, a)| !a.seen)
                        .map(|(id, _)| id.clone())
                        .collect();
                    for id in gone {
                        self.leave(&id);
                    }
                }
                self.resyncing = false;
                self.synced = true;
            }
            WatchChange::Storm(storm) => self.server_storm = Some(storm.clone()),
        }
    }

    fn upsert(&mut self, view: &AgentView, now: Time) {
        if view.state != Some(State::Faulty) {
            self.leave(&view.agent_id);
            return;
        }
        let since = view.since.unwrap_or(now);
        match self.agents.get_mut(&view.agent_id) {
            Some(a) => {
                // Faulty all along: its fault began at the earliest since.
                a.faulty_since = a.faulty_since.min(since);
                a.view = view.clone();
                a.present = true;
                a.seen = true;
            }
            // With --once, only the agents of the first snapshot.
            None if self.policy.once && self.synced => {}
            None => {
                self.agents.insert(
                    view.agent_id.clone(),
                    Agent {
                        view: view.clone(),
                        faulty_since: since,
                        phase: Phase::Idle,
                        present: true,
                        seen: true,
                        not_before: None,
                        said: None,
                        gave_up_at: None,
                    },
                );
            }
        }
    }

    fn leave(&mut self, id: &str) {
        let Some(a) = self.agents.get_mut(id) else {
            return;
        };
        match a.phase {
            // Kept until its claim or program ends: it holds a slot.
            Phase::Claiming | Phase::Running => a.present = false,
            // With --once, decided agents stay decided.
            Phase::Done => a.present = false,
            Phase::Idle => {
                self.agents.remove(id);
            }
        }
    }

    /// The storm stop that applies now, if any (before the override).
    fn storm_cause(&self) -> Option<StormCause> {
        if let Some(s) = self.server_storm.as_ref().filter(|s| s.active) {
            return Some(StormCause::Server {
                faulty: s.faulty,
                active: s.active_agents,
            });
        }
        let present = self.agents.values().filter(|a| a.present);
        let faulty = present.clone().count();
        if faulty < self.policy.storm_min.max(1) {
            return None;
        }
        let mut counts = [0usize; Why::COUNT];
        for a in present {
            if let Some(w) = a.view.why {
                counts[w.index()] += 1;
            }
        }
        self.policy
            .outside_whys
            .iter()
            .map(|&w| (w, counts[w.index()]))
            .filter(|&(_, n)| n * 2 > faulty)
            .max_by_key(|&(_, n)| n)
            .map(|(why, count)| StormCause::Outside { why, count, faulty })
    }

    /// Whether the storm stop holds actions now.
    fn storm_holds(&self) -> Option<StormCause> {
        if self.policy.allow_mass_restart {
            None
        } else {
            self.storm_cause()
        }
    }

    /// Whether an agent passes the `--why` and `--label` filters.
    fn wanted(&self, view: &AgentView) -> bool {
        let why_ok =
            self.policy.whys.is_empty() || view.why.is_some_and(|w| self.policy.whys.contains(&w));
        let labels_ok = self
            .policy
            .labels
            .iter()
            .all(|(k, v)| view.labels.get(k) == Some(v));
        why_ok && labels_ok
    }

    /// What to do now: the agents to claim (a slot and a start are reserved
    /// for each), and what to tell.
    pub fn poll(&mut self, now: Time) -> (Vec<String>, Vec<Note>) {
        let mut claims = Vec::new();
        let mut notes = Vec::new();
        if !self.synced || self.resyncing {
            return (claims, notes);
        }
        let storm = self.storm_holds();
        match (&self.held, &storm) {
            (None, Some(cause)) => {
                notes.push(Note::StormHeld(cause.clone()));
                self.storm_seen = true;
            }
            (Some(_), None) => notes.push(Note::StormCleared),
            _ => {}
        }
        self.held = storm;
        let mut order: Vec<(Time, String)> = self
            .agents
            .iter()
            .filter(|(_, a)| a.phase == Phase::Idle && a.present)
            .map(|(id, a)| (a.faulty_since, id.clone()))
            .collect();
        order.sort();
        let once = self.policy.once;
        let mut full = false;
        for (faulty_since, id) in order {
            let wanted = self.wanted(&self.agents[&id].view);
            let held = self.held.is_some();
            let settle = self.policy.settle;
            let Some(a) = self.agents.get_mut(&id) else {
                continue;
            };
            if !wanted {
                if once {
                    a.phase = Phase::Done;
                }
                continue;
            }
            let standing = if a.view.maintenance.is_some() {
                Some(Skip::Maintenance)
            } else {
                a.view.given_up.as_ref().map(|g| Skip::GivenUp {
                    reason: g.reason.clone(),
                })
            };
            // The storm stop is said once for all; with --once, each agent
            // it holds back is a decision to tell.
            let storm = (held && once).then_some(Skip::Storm);
            if held && !once && standing.is_none() {
                continue;
            }
            if let Some(skip) = standing.or(storm) {
                if once {
                    a.phase = Phase::Done;
                }
                if let Some(note) = say(a, &id, skip) {
                    notes.push(note);
                }
                continue;
            }
            let settled_at = faulty_since.saturating_add(settle);
            if now < settled_at {
                if once {
                    a.phase = Phase::Done;
                    notes.extend(say(
                        a,
                        &id,
                        Skip::NotSettled {
                            faulty_for: now.since(faulty_since),
                        },
                    ));
                }
                continue;
            }
            if a.not_before.is_some_and(|t| now < t) || full {
                continue;
            }
            if self.busy >= self.policy.concurrency || !self.rate.try_reserve(now) {
                // Older faults go first: nothing younger jumps the queue.
                full = true;
                continue;
            }
            a.phase = Phase::Claiming;
            self.busy += 1;
            claims.push(id);
        }
        (claims, notes)
    }

    /// When to poll again if no message comes: when the next agent settles
    /// or its wait ends, or when the rate has room again. `None`: only a
    /// message (a watch change, a claim's answer, a program's end) can
    /// change anything.
    pub fn next_wake(&mut self, now: Time) -> Option<Time> {
        if !self.synced || self.resyncing || self.held.is_some() {
            return None;
        }
        let due = self
            .agents
            .values()
            .filter(|a| a.phase == Phase::Idle && a.present && self.wanted(&a.view))
            .filter(|a| a.view.maintenance.is_none() && a.view.given_up.is_none())
            .map(|a| {
                let settled = a.faulty_since.saturating_add(self.policy.settle);
                a.not_before.map_or(settled, |t| t.max(settled))
            })
            .min()?;
        if due > now {
            return Some(due);
        }
        if self.busy >= self.policy.concurrency {
            return None;
        }
        self.rate.next_free(now).filter(|&t| t > now)
    }

    /// Takes the answer to a claim made by [`Engine::poll`]: `Ok` with the
    /// server's answer, `Err` with what went wrong. `cleared_at`: when an
    /// operator last cleared a "given up" on the agent, if known:
    /// remediations before it do not count towards the crash-loop limit.
    pub fn claimed(
        &mut self,
        id: &str,
        answer: Result<&ClaimOutcome, String>,
        cleared_at: Option<Time>,
        now: Time,
    ) -> AfterClaim {
        let storm = self.storm_holds();
        let cooldown = self.policy.cooldown;
        let (max_restarts, window, once) = (
            self.policy.max_restarts,
            self.policy.restart_window,
            self.policy.once,
        );
        let Some(a) = self.agents.get_mut(id) else {
            // Not ours to have claimed: give the reservation back.
            self.rate.give_back();
            self.busy = self.busy.saturating_sub(1);
            return AfterClaim::Skip(Some(Note::Skipped {
                agent: id.to_owned(),
                why: None,
                skip: Skip::NoLongerFaulty,
            }));
        };
        let why = a.view.why;
        let verdict = match answer {
            Err(e) => Err((
                Skip::ClaimFailed(e),
                Some(now.saturating_add(RETRY_AFTER_ERROR)),
            )),
            Ok(outcome) => match outcome.refusal {
                Some(refusal) => {
                    let claim = outcome.claim.as_ref();
                    let until = claim.and_then(|c| c.until);
                    let retry = match refusal {
                        // Try again when the other holder's lease runs out.
                        ClaimRefusal::Held => until.unwrap_or(now).max(now),
                        // An operator must clear it; look again after a cooldown.
                        ClaimRefusal::GivenUp => now.saturating_add(cooldown),
                        _ => now.saturating_add(RETRY_AFTER_REFUSAL),
                    };
                    Err((
                        Skip::Refused {
                            refusal,
                            holder: claim
                                .filter(|_| refusal == ClaimRefusal::Held)
                                .map(|c| c.holder.clone()),
                            until: until.filter(|_| refusal == ClaimRefusal::Held),
                        },
                        Some(retry),
                    ))
                }
                None if !a.present => Err((Skip::NoLongerFaulty, None)),
                None if storm.is_some() => Err((Skip::Storm, None)),
                None => {
                    let fresh_from = a.gave_up_at.max(cleared_at);
                    judge(outcome, fresh_from, cooldown, max_restarts, window, now)
                }
            },
        };
        match verdict {
            Ok(()) => {
                a.phase = Phase::Running;
                a.said = None;
                self.rate.started(now);
                AfterClaim::Run(Act {
                    agent: id.to_owned(),
                    why,
                    why_text: a.view.why_text.clone(),
                    labels: a.view.labels.clone(),
                    faulty_since: a.faulty_since,
                })
            }
            Err((Skip::GivenUp { reason }, _)) => {
                self.rate.give_back();
                self.busy = self.busy.saturating_sub(1);
                a.gave_up_at = Some(now);
                a.said = Some("given up");
                a.phase = if once { Phase::Done } else { Phase::Idle };
                a.not_before = Some(now.saturating_add(cooldown));
                let agent = id.to_owned();
                if !a.present && !once {
                    self.agents.remove(id);
                }
                AfterClaim::GiveUp { agent, why, reason }
            }
            Err((skip, retry)) => {
                self.rate.give_back();
                self.busy = self.busy.saturating_sub(1);
                a.phase = if once { Phase::Done } else { Phase::Idle };
                a.not_before = retry;
                let note = say(a, id, skip);
                if !a.present && !once {
                    self.agents.remove(id);
                }
                AfterClaim::Skip(note)
            }
        }
    }

    /// A program started by [`AfterClaim::Run`] has ended (and its result
    /// is recorded, or given up on): the slot is free, and the agent is left
    /// alone for the cooldown.
    pub fn finished(&mut self, id: &str, now: Time) {
        self.busy = self.busy.saturating_sub(1);
        let once = self.policy.once;
        let cooldown = self.policy.cooldown;
        let Some(a) = self.agents.get_mut(id) else {
            return;
        };
        a.phase = if once { Phase::Done } else { Phase::Idle };
        // Even a program that could not start waits out the cooldown, so
        // that a broken command does not spin.
        a.not_before = Some(now.saturating_add(cooldown));
        if !a.present && !once {
            self.agents.remove(id);
        }
    }

    /// (`--once`) Whether everything is decided: the first snapshot is
    /// complete, no claim or program is under way, and no agent waits.
    pub fn is_done(&self) -> bool {
        self.synced
            && self.busy == 0
            && self
                .agents
                .values()
                .all(|a| a.phase == Phase::Done || !a.present)
    }

    /// Whether the first snapshot is complete (nothing is decided before).
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// Whether the storm stop held anything back at some point.
    pub fn storm_seen(&self) -> bool {
        self.storm_seen
    }

    /// Whether the storm stop holds now.
    pub fn storm_held(&self) -> bool {
        self.held.is_some()
    }
}

/// The cooldown and the crash-loop limit, from the agent's recent
/// remediations by anyone: `Ok` to act.
fn judge(
    outcome: &ClaimOutcome,
    fresh_from: Option<Time>,
    cooldown: Duration,
    max_restarts: u32,
    window: Duration,
    now: Time,
) -> Result<(), (Skip, Option<Time>)> {
    let last = outcome
        .recent
        .iter()
        .filter_map(|r| r.finished.or(r.started))
        .max();
    if let Some(last) = last {
        let until = last.saturating_add(cooldown);
        if now < until {
            return Err((Skip::Cooldown { last, until }, Some(until)));
        }
    }
    let from = now.saturating_sub(window);
    let counted = outcome
        .recent
        .iter()
        .filter(|r| r.result != Some(RemediationResult::NotStarted))
        .filter_map(|r| r.started)
        .filter(|&s| s > from && fresh_from.is_none_or(|g| s > g))
        .count();
    if counted >= max_restarts as usize {
        return Err((
            Skip::GivenUp {
                reason: format!(
                    "crash loop: remediated {counted} times within {w} (limit: --max-restarts {max_restarts} --per {w})",
                    w = humantime::format_duration(window),
                ),
            },
            None,
        ));
    }
    Ok(())
}

/// A skip note, unless the same reason was said last for this agent.
fn say(a: &mut Agent, id: &str, skip: Skip) -> Option<Note> {
    let key = skip.key();
    if a.said == Some(key) {
        return None;
    }
    a.said = Some(key);
    Some(Note::Skipped {
        agent: id.to_owned(),
        why: a.view.why,
        skip,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_health_client::{Claim, GivenUp, Maintenance, Remediation};

    const T0: f64 = 1_700_000_000.0;

    fn t(secs: f64) -> Time {
        Time::from_secs_f64(T0 + secs).unwrap()
    }

    fn view(id: &str, why: Why, since: f64) -> AgentView {
        AgentView {
            agent_id: id.into(),
            healthy: false,
            state: Some(why.state()),
            why: Some(why),
            why_text: why.as_str().into(),
            since: Some(t(since)),
            last_heard: None,
            connected: false,
            labels: Labels::new(),
            incarnation: 1,
            last_seq: 1,
            next_change: None,
            stopped_at: None,
            first_seen: None,
            evaluated_at: None,
            sensor: None,
            maintenance: None,
            claim: None,
            given_up: None,
        }
    }

    fn synced(storm: bool) -> WatchChange {
        WatchChange::Synced {
            count: 0,
            storm: Some(Storm {
                active: storm,
                faulty: 0,
                active_agents: 0,
                faulty_share: 0.0,
                threshold: 0.5,
                min_agents: 10,
                dominant: None,
                dominant_count: 0,
                maintenance: 0,
            }),
            at: None,
        }
    }

    fn granted(recent: Vec<Remediation>) -> ClaimOutcome {
        ClaimOutcome {
            refusal: None,
            claim: None,
            agent: None,
            recent,
        }
    }

    fn remediation(started: f64, finished: f64) -> Remediation {
        Remediation {
            started: Some(t(started)),
            finished: Some(t(finished)),
            program: "restart".into(),
            result: Some(RemediationResult::Succeeded),
            exit_code: Some(0),
            signal: None,
            output: String::new(),
            why: Some(Why::StuckAtShutdown),
        }
    }

    fn policy() -> Policy {
        Policy {
            settle: Duration::from_secs(60),
            rate: Rate {
                count: 1000,
                per: Duration::from_secs(60),
            },
            ..Policy::default()
        }
    }

    /// An engine that has seen a snapshot of `agents` (faulty since 0) and
    /// its `Synced`.
    fn engine(policy: Policy, agents: &[&str]) -> Engine {
        let mut e = Engine::new(policy);
        for id in agents {
            e.observe(
                &WatchChange::Snapshot(view(id, Why::StuckAtShutdown, 0.0)),
                t(0.0),
            );
        }
        e.observe(&synced(false), t(0.0));
        e
    }

    fn run(after: AfterClaim) -> Act {
        match after {
            AfterClaim::Run(act) => act,
            other => panic!("not run: {other:?}"),
        }
    }

    fn skipped(after: AfterClaim) -> Skip {
        match after {
            AfterClaim::Skip(Some(Note::Skipped { skip, .. })) => skip,
            other => panic!("not a skip said: {other:?}"),
        }
    }

    #[test]
    fn an_agent_is_acted_on_only_after_settle_and_only_once() {
        let mut e = Engine::new(policy());
        e.observe(
            &WatchChange::Snapshot(view("a", Why::StuckAtShutdown, 0.0)),
            t(0.0),
        );
        // Nothing before the snapshot is complete.
        assert_eq!(e.poll(t(100.0)).0, Vec::<String>::new());
        e.observe(&synced(false), t(30.0));
        assert!(e.poll(t(30.0)).0.is_empty());
        assert_eq!(e.next_wake(t(30.0)), Some(t(60.0)));
        assert!(e.poll(t(59.9)).0.is_empty());
        assert_eq!(e.poll(t(60.0)).0, ["a"]);
        // Claimed: not claimed twice.
        assert!(e.poll(t(61.0)).0.is_empty());
        let act = run(e.claimed("a", Ok(&granted(vec![])), None, t(61.0)));
        assert_eq!(act.agent, "a");
        assert_eq!(act.why, Some(Why::StuckAtShutdown));
        assert_eq!(act.faulty_since, t(0.0));
        assert!(e.poll(t(62.0)).0.is_empty());
        // Done at 70: left alone for the cooldown (10 min).
        e.finished("a", t(70.0));
        assert!(e.poll(t(100.0)).0.is_empty());
        assert_eq!(e.next_wake(t(100.0)), Some(t(670.0)));
        assert_eq!(e.poll(t(670.0)).0, ["a"]);
    }

    #[test]
    fn a_fault_that_changes_why_keeps_its_start_and_a_new_fault_starts_over() {
        let mut e = engine(policy(), &["a"]);
        e.observe(
            &WatchChange::Changed(view("a", Why::NotReporting, 50.0)),
            t(50.0),
        );
        assert_eq!(e.next_wake(t(50.0)), Some(t(60.0)));
        // Healthy, then faulty again: settle starts over.
        e.observe(
            &WatchChange::Left {
                agent_id: "a".into(),
                status: None,
                forgotten: false,
            },
            t(55.0),
        );
        assert_eq!(e.next_wake(t(55.0)), None);
        e.observe(
            &WatchChange::Changed(view("a", Why::NotReporting, 56.0)),
            t(56.0),
        );
        assert!(e.poll(t(60.0)).0.is_empty());
        assert_eq!(e.poll(t(116.0)).0, ["a"]);
    }

    #[test]
    fn the_cooldown_counts_from_anyones_last_remediation() {
        let mut e = engine(policy(), &["a"]);
        assert_eq!(e.poll(t(60.0)).0, ["a"]);
        // Another remediator ended a restart at 30.
        let skip = skipped(e.claimed(
            "a",
            Ok(&granted(vec![remediation(20.0, 30.0)])),
            None,
            t(60.0),
        ));
        assert_eq!(
            skip,
            Skip::Cooldown {
                last: t(30.0),
                until: t(630.0)
            }
        );
        assert!(e.poll(t(629.0)).0.is_empty());
        assert_eq!(e.next_wake(t(100.0)), Some(t(630.0)));
        assert_eq!(e.poll(t(630.0)).0, ["a"]);
        run(e.claimed(
            "a",
            Ok(&granted(vec![remediation(20.0, 30.0)])),
            None,
            t(631.0),
        ));
    }

    #[test]
    fn past_the_crash_loop_limit_it_gives_up() {
        let mut e = engine(
            Policy {
                cooldown: Duration::from_secs(60),
                ..policy()
            },
            &["a"],
        );
        assert_eq!(e.poll(t(4000.0)).0, ["a"]);
        // Three restarts within the hour (one of them could not start, and
        // one is older than the hour: neither counts).
        let mut not_started = remediation(3000.0, 3000.0);
        not_started.result = Some(RemediationResult::NotStarted);
        let recent = vec![
            remediation(300.0, 310.0),
            remediation(1000.0, 1010.0),
            remediation(2000.0, 2010.0),
            not_started,
            remediation(3500.0, 3510.0),
        ];
        let two = granted(recent[..4].to_vec());
        run(e.claimed("a", Ok(&two), None, t(4000.0)));
        e.finished("a", t(4001.0));
        assert_eq!(e.poll(t(4061.0)).0, ["a"]);
        let three = granted(recent.clone());
        match e.claimed("a", Ok(&three), None, t(4061.0)) {
            AfterClaim::GiveUp { agent, reason, .. } => {
                assert_eq!(agent, "a");
                assert!(reason.contains("remediated 3 times within 1h"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        // Left alone; an operator's clear gives a fresh budget.
        assert!(e.poll(t(4100.0)).0.is_empty());
        assert_eq!(e.poll(t(4061.0 + 600.0)).0, ["a"]);
        run(e.claimed("a", Ok(&three), None, t(4661.0)));
        // A remediator with no memory of it learns of the operator's clear
        // from the server.
        let mut fresh = engine(
            Policy {
                cooldown: Duration::from_secs(60),
                ..policy()
            },
            &["a"],
        );
        assert_eq!(fresh.poll(t(4100.0)).0, ["a"]);
        assert!(matches!(
            fresh.claimed("a", Ok(&three), None, t(4100.0)),
            AfterClaim::GiveUp { .. }
        ));
        assert_eq!(fresh.poll(t(4700.0)).0, ["a"]);
        run(fresh.claimed("a", Ok(&three), Some(t(4650.0)), t(4700.0)));
    }

    #[test]
    fn concurrency_holds_slots_from_claim_to_end() {
        let mut e = engine(
            Policy {
                concurrency: 2,
                ..policy()
            },
            &["a", "b", "c", "d"],
        );
        let claims = e.poll(t(60.0)).0;
        assert_eq!(claims, ["a", "b"]);
        run(e.claimed("a", Ok(&granted(vec![])), None, t(60.0)));
        // A refused claim frees its slot at once.
        let refused = ClaimOutcome {
            refusal: Some(ClaimRefusal::NotFaulty),
            ..granted(vec![])
        };
        let skip = skipped(e.claimed("b", Ok(&refused), None, t(60.0)));
        assert!(matches!(
            skip,
            Skip::Refused {
                refusal: ClaimRefusal::NotFaulty,
                ..
            }
        ));
        assert_eq!(e.poll(t(61.0)).0, ["c"]);
        run(e.claimed("c", Ok(&granted(vec![])), None, t(61.0)));
        assert!(e.poll(t(62.0)).0.is_empty());
        assert_eq!(e.next_wake(t(62.0)), None);
        e.finished("a", t(70.0));
        assert_eq!(e.poll(t(70.0)).0, ["d"]);
    }

    #[test]
    fn the_rate_holds_across_claims_and_ends() {
        let ids: Vec<String> = (0..10).map(|i| format!("a{i}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut e = engine(
            Policy {
                concurrency: 100,
                rate: Rate {
                    count: 3,
                    per: Duration::from_secs(60),
                },
                ..policy()
            },
            &refs,
        );
        let first = e.poll(t(60.0)).0;
        assert_eq!(first, ["a0", "a1", "a2"]);
        for id in &first {
            run(e.claimed(id, Ok(&granted(vec![])), None, t(61.0)));
            e.finished(id, t(62.0));
        }
        assert!(e.poll(t(100.0)).0.is_empty());
        assert_eq!(e.next_wake(t(100.0)), Some(t(121.0)));
        assert_eq!(e.poll(t(121.0)).0, ["a3", "a4", "a5"]);
    }

    #[test]
    fn the_servers_storm_flag_holds_everything_until_it_falls() {
        let mut e = Engine::new(policy());
        e.observe(
            &WatchChange::Snapshot(view("a", Why::StuckAtShutdown, 0.0)),
            t(0.0),
        );
        e.observe(&synced(true), t(0.0));
        let (claims, notes) = e.poll(t(100.0));
        assert!(claims.is_empty());
        assert!(matches!(
            notes[..],
            [Note::StormHeld(StormCause::Server { .. })]
        ));
        // Said once.
        assert!(e.poll(t(101.0)).1.is_empty());
        assert_eq!(e.next_wake(t(101.0)), None);
        let WatchChange::Synced {
            storm: Some(mut s), ..
        } = synced(false)
        else {
            unreachable!()
        };
        s.active = false;
        e.observe(&WatchChange::Storm(s), t(102.0));
        let (claims, notes) = e.poll(t(102.0));
        assert_eq!(notes, [Note::StormCleared]);
        assert_eq!(claims, ["a"]);
        assert!(e.storm_seen());
    }

    #[test]
    fn most_agents_blaming_the_data_server_is_a_storm() {
        let mut e = Engine::new(Policy {
            storm_min: 4,
            ..policy()
        });
        for i in 0..4 {
            e.observe(
                &WatchChange::Snapshot(view(&format!("r{i}"), Why::NoDataReceived, 0.0)),
                t(0.0),
            );
        }
        e.observe(
            &WatchChange::Snapshot(view("s", Why::StuckAtShutdown, 0.0)),
            t(0.0),
        );
        e.observe(&synced(false), t(0.0));
        let (claims, notes) = e.poll(t(60.0));
        assert!(claims.is_empty());
        assert_eq!(
            notes,
            [Note::StormHeld(StormCause::Outside {
                why: Why::NoDataReceived,
                count: 4,
                faulty: 5
            })]
        );
        // Two recover: 2 of 3 is still most, but 3 is under --storm-min.
        for i in 0..2 {
            e.observe(
                &WatchChange::Left {
                    agent_id: format!("r{i}"),
                    status: None,
                    forgotten: false,
                },
                t(61.0),
            );
        }
        let (claims, notes) = e.poll(t(61.0));
        assert_eq!(notes, [Note::StormCleared]);
        assert_eq!(claims, ["r2", "r3", "s"]);
    }

    #[test]
    fn allow_mass_restart_overrides_the_storm_stop() {
        let mut e = Engine::new(Policy {
            allow_mass_restart: true,
            ..policy()
        });
        e.observe(
            &WatchChange::Snapshot(view("a", Why::StuckAtShutdown, 0.0)),
            t(0.0),
        );
        e.observe(&synced(true), t(0.0));
        assert_eq!(e.poll(t(60.0)), (vec!["a".to_owned()], vec![]));
    }

    #[test]
    fn a_storm_that_rises_while_claiming_stops_the_act() {
        let mut e = engine(policy(), &["a"]);
        assert_eq!(e.poll(t(60.0)).0, ["a"]);
        e.observe(&synced(true), t(60.5));
        assert_eq!(
            skipped(e.claimed("a", Ok(&granted(vec![])), None, t(61.0))),
            Skip::Storm
        );
    }

    #[test]
    fn filters_maintenance_and_given_up() {
        let mut e = Engine::new(Policy {
            whys: vec![Why::StuckAtShutdown],
            labels: [("site".to_owned(), "eu".to_owned())].into(),
            ..policy()
        });
        let mut eu = view("eu", Why::StuckAtShutdown, 0.0);
        eu.labels.insert("site".into(), "eu".into());
        let mut us = eu.clone();
        us.agent_id = "us".into();
        us.labels.insert("site".into(), "us".into());
        let mut other_why = eu.clone();
        other_why.agent_id = "nr".into();
        other_why.why = Some(Why::NotReporting);
        let mut maint = eu.clone();
        maint.agent_id = "m".into();
        maint.maintenance = Some(Maintenance {
            reason: "disk swap".into(),
            by: String::new(),
            since: None,
            until: None,
        });
        let mut given = eu.clone();
        given.agent_id = "g".into();
        given.given_up = Some(GivenUp {
            holder: "r1".into(),
            by: String::new(),
            at: None,
            reason: "crash loop".into(),
        });
        for v in [&eu, &us, &other_why, &maint, &given] {
            e.observe(&WatchChange::Snapshot(v.clone()), t(0.0));
        }
        e.observe(&synced(false), t(0.0));
        let (claims, notes) = e.poll(t(60.0));
        assert_eq!(claims, ["eu"]);
        let skips: Vec<(String, Skip)> = notes
            .into_iter()
            .map(|n| match n {
                Note::Skipped { agent, skip, .. } => (agent, skip),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            skips,
            [
                (
                    "g".to_owned(),
                    Skip::GivenUp {
                        reason: "crash loop".into()
                    }
                ),
                ("m".to_owned(), Skip::Maintenance),
            ]
        );
        // Said once.
        assert!(e.poll(t(61.0)).1.is_empty());
    }

    #[test]
    fn a_claim_held_by_another_is_tried_again_when_its_lease_ends() {
        let mut e = engine(policy(), &["a"]);
        assert_eq!(e.poll(t(60.0)).0, ["a"]);
        let held = ClaimOutcome {
            refusal: Some(ClaimRefusal::Held),
            claim: Some(Claim {
                holder: "other:1".into(),
                by: String::new(),
                since: Some(t(50.0)),
                until: Some(t(200.0)),
            }),
            agent: None,
            recent: vec![],
        };
        assert_eq!(
            skipped(e.claimed("a", Ok(&held), None, t(60.0))),
            Skip::Refused {
                refusal: ClaimRefusal::Held,
                holder: Some("other:1".into()),
                until: Some(t(200.0)),
            }
        );
        assert_eq!(e.next_wake(t(61.0)), Some(t(200.0)));
        assert_eq!(e.poll(t(200.0)).0, ["a"]);
        // The same refusal again is not said again.
        assert_eq!(
            e.claimed("a", Ok(&held), None, t(200.0)),
            AfterClaim::Skip(None)
        );
        // An error: tried again a little later.
        assert_eq!(e.poll(t(200.0)).0, ["a"]);
        assert!(matches!(
            skipped(e.claimed("a", Err("down".into()), None, t(200.0))),
            Skip::ClaimFailed(_)
        ));
        assert_eq!(e.next_wake(t(200.0)), Some(t(205.0)));
    }

    #[test]
    fn once_acts_on_the_first_snapshot_and_every_skip_is_final() {
        let mut e = Engine::new(Policy {
            once: true,
            ..policy()
        });
        e.observe(
            &WatchChange::Snapshot(view("old", Why::StuckAtShutdown, 0.0)),
            t(100.0),
        );
        e.observe(
            &WatchChange::Snapshot(view("new", Why::StuckAtShutdown, 90.0)),
            t(100.0),
        );
        e.observe(&synced(false), t(100.0));
        // An agent that turns faulty later is not this run's business.
        e.observe(
            &WatchChange::Changed(view("later", Why::StuckAtShutdown, 0.0)),
            t(100.0),
        );
        let (claims, notes) = e.poll(t(100.0));
        assert_eq!(claims, ["old"]);
        assert!(matches!(
            &notes[..],
            [Note::Skipped { agent, skip: Skip::NotSettled { .. }, .. }] if agent == "new"
        ));
        assert!(!e.is_done());
        run(e.claimed("old", Ok(&granted(vec![])), None, t(100.0)));
        assert!(!e.is_done());
        e.finished("old", t(101.0));
        assert!(e.is_done());
        assert!(e.poll(t(10_000.0)).0.is_empty());
    }

    /// Random fleets, answers and timings (seeded): the slots and the rate
    /// window are never exceeded, no agent is claimed while its claim or
    /// program is under way, and none is acted on within the cooldown of
    /// its last program's end.
    #[test]
    fn random_runs_never_exceed_the_policy() {
        let mut total_starts = 0;
        for seed in 0..200 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let policy = Policy {
                settle: Duration::from_secs(rng.u64(0..30)),
                concurrency: rng.usize(1..5),
                rate: Rate {
                    count: rng.u32(1..6),
                    per: Duration::from_secs(rng.u64(1..60)),
                },
                cooldown: Duration::from_secs(rng.u64(0..120)),
                max_restarts: 1000,
                storm_min: 1000,
                ..Policy::default()
            };
            let mut e = Engine::new(policy.clone());
            let ids: Vec<String> = (0..rng.usize(1..12)).map(|i| format!("a{i}")).collect();
            let mut now = 0.0;
            for id in &ids {
                e.observe(
                    &WatchChange::Snapshot(view(id, Why::StuckAtShutdown, now)),
                    t(now),
                );
            }
            e.observe(&synced(false), t(now));
            // Claims and programs under way, with when they answer or end.
            let mut claiming: Vec<(String, f64)> = Vec::new();
            let mut running: Vec<(String, f64)> = Vec::new();
            let mut starts: Vec<f64> = Vec::new();
            let mut ended: BTreeMap<String, f64> = BTreeMap::new();
            let mut began: BTreeMap<String, f64> = BTreeMap::new();
            let mut records: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
            for _ in 0..400 {
                now += rng.f64() * 5.0;
                match rng.u8(0..10) {
                    // An agent recovers, or turns faulty (again).
                    0 => {
                        let id = &ids[rng.usize(..ids.len())];
                        e.observe(
                            &WatchChange::Left {
                                agent_id: id.clone(),
                                status: None,
                                forgotten: false,
                            },
                            t(now),
                        );
                    }
                    1 => {
                        let id = &ids[rng.usize(..ids.len())];
                        e.observe(
                            &WatchChange::Changed(view(id, Why::NotReporting, now)),
                            t(now),
                        );
                    }
                    _ => {}
                }
                claiming.retain(|(id, due)| {
                    if *due > now {
                        return true;
                    }
                    // As the server answers: with every remediation
                    // recorded for the agent.
                    let recent: Vec<Remediation> = records
                        .get(id)
                        .map(|r: &Vec<(f64, f64)>| {
                            r.iter().map(|&(s, f)| remediation(s, f)).collect()
                        })
                        .unwrap_or_default();
                    let answer = match rng.u8(0..6) {
                        0 => Err("down".to_owned()),
                        1 => Ok(ClaimOutcome {
                            refusal: Some(ClaimRefusal::Held),
                            ..granted(vec![])
                        }),
                        _ => Ok(granted(recent)),
                    };
                    match e.claimed(id, answer.as_ref().map_err(Clone::clone), None, t(now)) {
                        AfterClaim::Run(act) => {
                            if let Some(end) = ended.get(&act.agent) {
                                assert!(
                                    now - end >= policy.cooldown.as_secs_f64() - 1e-6,
                                    "seed {seed}: {} acted on {}s after its last end",
                                    act.agent,
                                    now - end
                                );
                            }
                            starts.push(now);
                            began.insert(act.agent.clone(), now);
                            running.push((act.agent, now + rng.f64() * 20.0));
                        }
                        AfterClaim::GiveUp { .. } | AfterClaim::Skip(_) => {}
                    }
                    false
                });
                running.retain(|(id, due)| {
                    if *due > now {
                        return true;
                    }
                    e.finished(id, t(now));
                    ended.insert(id.clone(), now);
                    records
                        .entry(id.clone())
                        .or_default()
                        .push((began[id], now));
                    false
                });
                for id in e.poll(t(now)).0 {
                    assert!(
                        !claiming.iter().chain(&running).any(|(c, _)| *c == id),
                        "seed {seed}: {id} claimed twice"
                    );
                    claiming.push((id, now + rng.f64() * 3.0));
                }
                assert!(
                    claiming.len() + running.len() <= policy.concurrency,
                    "seed {seed}: {} claims and {} programs at once",
                    claiming.len(),
                    running.len()
                );
            }
            let per = policy.rate.per.as_secs_f64();
            for (k, &s) in starts.iter().enumerate() {
                let within = starts[k..].iter().filter(|&&x| x < s + per - 1e-6).count();
                assert!(
                    within <= policy.rate.count as usize,
                    "seed {seed}: {within} starts within {per}s from {s}"
                );
            }
            total_starts += starts.len();
        }
        // The runs did act, often enough for the checks to mean something.
        assert!(total_starts > 2000, "{total_starts}");
    }

    #[test]
    fn once_during_a_storm_tells_each_agent_held_back_and_is_done() {
        let mut e = Engine::new(Policy {
            once: true,
            ..policy()
        });
        for id in ["a", "b"] {
            e.observe(
                &WatchChange::Snapshot(view(id, Why::StuckAtShutdown, 0.0)),
                t(100.0),
            );
        }
        e.observe(&synced(true), t(100.0));
        let (claims, notes) = e.poll(t(100.0));
        assert!(claims.is_empty());
        assert!(matches!(notes[0], Note::StormHeld(_)));
        let held: Vec<&str> = notes[1..]
            .iter()
            .map(|n| match n {
                Note::Skipped {
                    agent,
                    skip: Skip::Storm,
                    ..
                } => agent.as_str(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(held, ["a", "b"]);
        assert!(e.is_done());
        assert!(e.storm_seen());
    }

    #[test]
    fn a_resync_drops_the_agents_gone_and_keeps_the_running_ones() {
        let mut e = engine(
            Policy {
                concurrency: 1,
                ..policy()
            },
            &["a", "b"],
        );
        assert_eq!(e.poll(t(60.0)).0, ["a"]);
        run(e.claimed("a", Ok(&granted(vec![])), None, t(60.0)));
        e.observe(
            &WatchChange::Resync {
                cause: fleet_health_client::ResyncCause::Reconnected {
                    after: "restart".into(),
                },
            },
            t(61.0),
        );
        // Nothing while the picture is partial.
        e.finished("a", t(62.0));
        assert!(e.poll(t(62.0)).0.is_empty());
        e.observe(
            &WatchChange::Snapshot(view("c", Why::StuckAtShutdown, 0.0)),
            t(63.0),
        );
        e.observe(&synced(false), t(63.0));
        // b is gone; a ended and left; c is new.
        assert_eq!(e.poll(t(63.0)).0, ["c"]);
        run(e.claimed("c", Ok(&granted(vec![])), None, t(63.0)));
        e.finished("c", t(64.0));
        assert!(e.poll(t(65.0)).0.is_empty());
    }
}
