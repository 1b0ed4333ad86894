//! `fleet-health remediate`: acts on faulty agents by running a program for
//! each, within a policy, safely next to other remediators.
//!
//! - [`engine`]: the decisions (settle, filters, storm stop, concurrency,
//!   rate, then cooldown and crash-loop limit from the claim's answer), pure
//!   and clock-injected.
//! - [`rate`]: the sliding window of program starts.
//! - [`runner`]: one program run: its own process group, the timeout
//!   (SIGTERM, then SIGKILL), the last lines of its output.
//! - this module: the loop that wires them to the server: a
//!   [`ResumingWatch`] of the faulty agents feeds the engine; each agent the
//!   engine picks is claimed on the server first (refused when another
//!   remediator holds it, when it is under maintenance or given up); the
//!   program runs; its result is recorded on the server (retried while the
//!   server is away), and the claim is kept until its lease ends or the
//!   agent turns healthy. A claim not acted on is released at once.
//!
//! Everything it decides is told as an [`Event`] to a printer (one line per
//! decision, or NDJSON).

pub mod engine;
pub mod rate;
pub mod runner;

use std::time::Duration;

use fleet_health_client::{
    ActivityKind, AgentQuery, ClaimOutcome, ClientError, FleetClient, ReconnectPolicy, Remediation,
    RemediationResult, ResumingWatch, StateFilter, Time, Why,
};

use crate::error::Failure;
use crate::exit_codes::ExitCode;
use tokio::task::JoinSet;

use engine::{AfterClaim, Engine, Note, Policy, Skip, StormCause};
use runner::{Job, Program, Ran};

/// How long after SIGTERM a program that timed out gets SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(5);

/// How long the remediator keeps trying to record a remediation while the
/// server is away.
const RECORD_FOR: Duration = Duration::from_secs(120);

/// The settled arguments of `remediate`.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// The decisions' settings.
    pub policy: Policy,
    /// What to run for each agent.
    pub program: Program,
    /// How long a program may run.
    pub timeout: Duration,
    /// How long each claim lasts.
    pub lease: Duration,
    /// This remediator's name on the server.
    pub holder: String,
    /// Print the plan only: no claim, no program, nothing recorded.
    pub dry_run: bool,
    /// How to resume the watch when the server goes away.
    pub reconnect: ReconnectPolicy,
}

/// What the remediator tells, one per decision.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The watch is synced: the remediator is at work.
    Ready {
        /// How many agents are faulty.
        faulty: u64,
        /// This remediator's name.
        holder: String,
    },
    /// A program starts for an agent (with `--dry-run`: would start).
    Acting {
        /// The agent.
        agent: String,
        /// Its why, as the server words it.
        why: String,
        /// The command line.
        program: String,
        /// Since when the agent has been faulty.
        faulty_since: Time,
        /// Only a plan.
        dry_run: bool,
    },
    /// A program ended.
    Acted {
        /// The agent.
        agent: String,
        /// Its why.
        why: String,
        /// The command line.
        program: String,
        /// How it went.
        ran: Ran,
        /// Whether the server recorded it (`Err`: why not).
        recorded: Result<(), String>,
    },
    /// An agent was left alone this time.
    Skipped {
        /// The agent.
        agent: String,
        /// Its why.
        why: Option<Why>,
        /// Why it was skipped.
        skip: Skip,
    },
    /// The crash-loop limit was reached: the agent is marked given up.
    GaveUp {
        /// The agent.
        agent: String,
        /// Its why.
        why: Option<Why>,
        /// The reason recorded.
        reason: String,
        /// Whether the server recorded it.
        recorded: Result<(), String>,
    },
    /// The storm stop holds every action.
    StormHeld(StormCause),
    /// The storm stop ended.
    StormCleared,
    /// Asked to stop: no new action; the programs running are waited for.
    Stopping {
        /// How many are running.
        running: usize,
    },
}

/// What a run of the remediator did, for its exit code.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Programs that succeeded.
    pub succeeded: u64,
    /// Programs that failed, timed out or could not start.
    pub failed: u64,
    /// Agents given up on.
    pub gave_up: u64,
    /// Whether the storm stop held anything back.
    pub storm: bool,
}

/// What the tasks of the loop bring back.
enum Done {
    Claimed {
        agent: String,
        answer: Result<Box<ClaimOutcome>, ClientError>,
        cleared_at: Option<Time>,
    },
    Ran {
        agent: String,
        why: String,
        program: String,
        ran: Ran,
        recorded: Result<(), String>,
    },
    GaveUp {
        agent: String,
        why: Option<Why>,
        reason: String,
        recorded: Result<(), String>,
    },
    Released,
}

/// Watches the faulty agents and acts on them until interrupted (or, with
/// `--once`, until the agents faulty at the start are all decided). Errors:
/// the watch could not start or was lost for good, or the server refuses
/// this remediator (credentials, role, an old server); the programs running
/// are waited for first.
pub async fn run(
    client: FleetClient,
    settings: &Settings,
    emit: &mut dyn FnMut(&Event) -> std::io::Result<()>,
    on_lost: fleet_health_client::LostHook,
) -> Result<Tally, Failure> {
    let query = AgentQuery {
        filter: StateFilter::Faulty,
        ..AgentQuery::default()
    };
    let mut watch = ResumingWatch::start(client.clone(), query, settings.reconnect)
        .await?
        .on_lost(on_lost);
    let mut signals = Signals::new()?;
    let mut r = Remediator {
        client,
        settings,
        engine: Engine::new(settings.policy.clone()),
        tasks: JoinSet::new(),
        tally: Tally::default(),
        running: 0,
        stopping: false,
        failure: None,
    };
    let mut ready = false;
    let mut faulty_at_start = 0u64;
    loop {
        let now = fleet_health_client::now();
        if !ready && r.engine.synced() {
            ready = true;
            emit(&Event::Ready {
                faulty: faulty_at_start,
                holder: settings.holder.clone(),
            })?;
        }
        if !r.stopping {
            r.start_claims(now, emit)?;
        }
        let once_done = settings.policy.once && r.engine.is_done();
        if r.tasks.is_empty() && (r.stopping || once_done) {
            break;
        }
        let wake = r
            .engine
            .next_wake(now)
            .map(|t| tokio::time::Instant::now() + t.since(fleet_health_client::now()));
        tokio::select! {
            change = watch.next(), if !r.stopping => match change {
                Ok(change) => {
                    if let fleet_health_client::WatchChange::Synced { count, .. } = &change
                        && !ready
                    {
                        faulty_at_start = *count;
                    }
                    r.engine.observe(&change, fleet_health_client::now());
                }
                Err(e) => r.stop(e.into(), emit)?,
            },
            Some(done) = r.tasks.join_next(), if !r.tasks.is_empty() => match done {
                Ok(done) => r.done(done, emit)?,
                Err(e) => {
                    return Err(Failure::new(ExitCode::Failure, anyhow::anyhow!("a task failed: {e}")));
                }
            },
            () = sleep_until(wake), if wake.is_some() => {}
            () = signals.recv() => {
                if r.stopping {
                    // Asked again: the programs are killed (dropping their
                    // tasks kills their process groups) and not recorded.
                    return Err(Failure::new(
                        ExitCode::Failure,
                        anyhow::anyhow!("stopped with {} program(s) killed before their end", r.running),
                    ));
                }
                r.stopping = true;
                emit(&Event::Stopping { running: r.running })?;
            }
        }
    }
    if let Some(failure) = r.failure {
        return Err(failure);
    }
    r.tally.storm = r.engine.storm_seen();
    Ok(r.tally)
}

/// The loop's state: the engine, and the claims, programs and records under
/// way as tasks.
struct Remediator<'a> {
    client: FleetClient,
    settings: &'a Settings,
    engine: Engine,
    tasks: JoinSet<Done>,
    tally: Tally,
    /// Programs running now.
    running: usize,
    /// No new action: asked to stop, or failed.
    stopping: bool,
    /// What ends the run once the programs running are done.
    failure: Option<Failure>,
}

impl Remediator<'_> {
    /// Stops starting anything; the run ends with `failure` once the
    /// programs running have ended.
    fn stop(
        &mut self,
        failure: Failure,
        emit: &mut dyn FnMut(&Event) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        self.failure.get_or_insert(failure);
        if !self.stopping {
            self.stopping = true;
            emit(&Event::Stopping {
                running: self.running,
            })?;
        }
        Ok(())
    }

    /// Claims what the engine picks now (with `--dry-run`, says what it
    /// would run instead).
    fn start_claims(
        &mut self,
        now: Time,
        emit: &mut dyn FnMut(&Event) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let (claims, notes) = self.engine.poll(now);
        for note in notes {
            emit(&note_event(note))?;
        }
        for agent in claims {
            if self.settings.dry_run {
                self.plan(&agent, now, emit)?;
                continue;
            }
            let client = self.client.clone();
            let holder = self.settings.holder.clone();
            let lease = self.settings.lease;
            let limit = self.settings.policy.max_restarts as usize;
            self.tasks.spawn(async move {
                let answer = client.claim(&agent, &holder, lease).await;
                // At the crash-loop limit: did an operator clear a "given
                // up" since? (Only then is the history needed.)
                let cleared_at = match &answer {
                    Ok(o) if o.granted() && o.recent.len() >= limit => {
                        last_cleared(&client, &agent).await
                    }
                    _ => None,
                };
                Done::Claimed {
                    agent,
                    answer: answer.map(Box::new),
                    cleared_at,
                }
            });
        }
        Ok(())
    }

    /// `--dry-run`: the engine's decision as if the claim were granted with
    /// no recent remediation; nothing is run.
    fn plan(
        &mut self,
        agent: &str,
        now: Time,
        emit: &mut dyn FnMut(&Event) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let plan = ClaimOutcome {
            refusal: None,
            claim: None,
            agent: None,
            recent: Vec::new(),
        };
        match self.engine.claimed(agent, Ok(&plan), None, now) {
            AfterClaim::Run(act) => {
                let (_, program) = self.settings.program.for_agent(&act.agent, &act.why_text);
                emit(&Event::Acting {
                    agent: act.agent.clone(),
                    why: act.why_text,
                    program,
                    faulty_since: act.faulty_since,
                    dry_run: true,
                })?;
                self.engine.finished(&act.agent, now);
                Ok(())
            }
            other => after_claim_note(other, emit),
        }
    }

    /// A task ended.
    fn done(
        &mut self,
        done: Done,
        emit: &mut dyn FnMut(&Event) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let now = fleet_health_client::now();
        match done {
            Done::Claimed {
                agent,
                answer,
                cleared_at,
            } => self.claimed(&agent, answer, cleared_at, now, emit),
            Done::Ran {
                agent,
                why,
                program,
                ran,
                recorded,
            } => {
                self.running = self.running.saturating_sub(1);
                if ran.result == RemediationResult::Succeeded {
                    self.tally.succeeded += 1;
                } else {
                    self.tally.failed += 1;
                }
                self.engine.finished(&agent, now);
                emit(&Event::Acted {
                    agent,
                    why,
                    program,
                    ran,
                    recorded,
                })
            }
            Done::GaveUp {
                agent,
                why,
                reason,
                recorded,
            } => {
                self.tally.gave_up += 1;
                emit(&Event::GaveUp {
                    agent,
                    why,
                    reason,
                    recorded,
                })
            }
            Done::Released => Ok(()),
        }
    }

    /// A claim's answer: run, give up, or skip (releasing a claim granted).
    fn claimed(
        &mut self,
        agent: &str,
        answer: Result<Box<ClaimOutcome>, ClientError>,
        cleared_at: Option<Time>,
        now: Time,
        emit: &mut dyn FnMut(&Event) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let granted = answer.as_ref().is_ok_and(|o| o.granted());
        let answer = match answer {
            Ok(outcome) => Ok(outcome),
            Err(e) if fatal(&e) => {
                // The engine gives the slot back; nothing more is started.
                self.engine.claimed(agent, Err(e.to_string()), None, now);
                return self.stop(e.into(), emit);
            }
            Err(e) => Err(e.to_string()),
        };
        let answer = match &answer {
            Ok(outcome) => Ok(&**outcome),
            Err(e) => Err(e.clone()),
        };
        match self.engine.claimed(agent, answer, cleared_at, now) {
            AfterClaim::Run(act) => self.run_program(act, emit),
            AfterClaim::GiveUp { agent, why, reason } => {
                let client = self.client.clone();
                let holder = self.settings.holder.clone();
                self.tasks.spawn(async move {
                    let recorded =
                        record_with_retries(&client, &agent, &holder, None, Some(&reason)).await;
                    // Nothing more to do with it: let others see it free.
                    let _ = client.release(&agent, &holder).await;
                    Done::GaveUp {
                        agent,
                        why,
                        reason,
                        recorded,
                    }
                });
                Ok(())
            }
            skip => {
                if granted {
                    let (client, agent) = (self.client.clone(), agent.to_owned());
                    let holder = self.settings.holder.clone();
                    self.tasks.spawn(async move {
                        // Best effort: the lease ends it anyway.
                        let _ = client.release(&agent, &holder).await;
                        Done::Released
                    });
                }
                after_claim_note(skip, emit)
            }
        }
    }

    /// Starts the program for an agent claimed; its task records the result.
    fn run_program(
        &mut self,
        act: engine::Act,
        emit: &mut dyn FnMut(&Event) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let (argv, program) = self.settings.program.for_agent(&act.agent, &act.why_text);
        emit(&Event::Acting {
            agent: act.agent.clone(),
            why: act.why_text.clone(),
            program: program.clone(),
            faulty_since: act.faulty_since,
            dry_run: false,
        })?;
        self.running += 1;
        let job = Job {
            argv,
            env: runner::agent_env(&act.agent, &act.why_text, &act.labels),
            env_remove: vec![
                "FLEET_HEALTH_TOKEN".into(),
                "FLEET_HEALTH_TOKEN_FILE".into(),
            ],
            timeout: self.settings.timeout,
            grace: KILL_GRACE.min(self.settings.timeout),
        };
        let client = self.client.clone();
        let holder = self.settings.holder.clone();
        self.tasks.spawn(async move {
            let ran = runner::run(&job).await;
            let record = Remediation {
                started: Some(ran.started),
                finished: Some(ran.finished),
                program: program.clone(),
                result: Some(ran.result),
                exit_code: ran.exit_code,
                signal: ran.signal,
                output: ran.output.clone(),
                why: act.why,
            };
            let recorded =
                record_with_retries(&client, &act.agent, &holder, Some(&record), None).await;
            Done::Ran {
                agent: act.agent,
                why: act.why_text,
                program,
                ran,
                recorded,
            }
        });
        Ok(())
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// SIGINT and SIGTERM, each time they come.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

fn note_event(note: Note) -> Event {
    match note {
        Note::Skipped { agent, why, skip } => Event::Skipped { agent, why, skip },
        Note::StormHeld(cause) => Event::StormHeld(cause),
        Note::StormCleared => Event::StormCleared,
    }
}

fn after_claim_note(
    after: AfterClaim,
    emit: &mut dyn FnMut(&Event) -> std::io::Result<()>,
) -> std::io::Result<()> {
    match after {
        AfterClaim::Skip(Some(note)) => emit(&note_event(note)),
        _ => Ok(()),
    }
}

/// When an operator last cleared a "given up" on the agent, from its
/// history (`None` if never, or if the history cannot be had).
async fn last_cleared(client: &FleetClient, agent: &str) -> Option<Time> {
    let history = client.history(agent).await.ok()?;
    history
        .activity
        .iter()
        .filter(|a| a.kind == Some(ActivityKind::GivenUpCleared))
        .filter_map(|a| a.at)
        .max()
}

/// Errors no retry mends: the remediator cannot work against this server.
fn fatal(e: &ClientError) -> bool {
    match e {
        ClientError::Unauthenticated(_)
        | ClientError::PermissionDenied(_)
        | ClientError::Tls(_)
        | ClientError::BadCredentials(_)
        | ClientError::InvalidEndpoint(_) => true,
        ClientError::Status(s) => s.code() == tonic::Code::Unimplemented,
        _ => false,
    }
}

/// Records a remediation (or a give-up), trying again while the server is
/// away, for up to [`RECORD_FOR`].
async fn record_with_retries(
    client: &FleetClient,
    agent: &str,
    holder: &str,
    remediation: Option<&Remediation>,
    give_up: Option<&str>,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + RECORD_FOR;
    let mut delay = Duration::from_millis(100);
    loop {
        match client
            .record_remediation(agent, holder, remediation, give_up)
            .await
        {
            Ok(()) => return Ok(()),
            Err(e @ (ClientError::Unreachable(_) | ClientError::Status(_)))
                if !fatal(&e) && tokio::time::Instant::now() + delay < deadline =>
            {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}
