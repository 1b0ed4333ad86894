//! `simulate`: a fleet of agents, each with its own `Report` stream, with a
//! mix of behaviours; and the load generator for benchmarks.
//!
//! Every behaviour that the rules know shows at once, thanks to backdated
//! event times (a "stops sending data" agent started 7 h ago and last sent
//! 7 h ago), except "crash", which shows after the server's silence window.
//! Healthy agents (and the faulty ones that still move some data) send data
//! events at the rate asked for; the reporter heartbeats when they are idle.
//! Acknowledged batches feed a latency histogram (HdrHistogram).
//!
//! The simulator knows nothing of flags or output: it takes [`Settings`],
//! tells how it is doing through [`Note`]s, and returns a [`SimReport`]; the
//! `render` module words both.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_health_client::{
    AgentId, BackoffConfig, Bearer, Credentials, EventKind, Reporter, ReporterConfig, Stats, Time,
    endpoint_with, now,
};
use hdrhistogram::Histogram;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::error::Failure;

/// One way a simulated agent behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Behaviour {
    /// Starts, registers, and keeps sending and receiving data.
    Healthy,
    /// Started 7 h ago and has sent nothing since: "no data sent to server".
    NoDataSent,
    /// Started 19 h ago and has received nothing since: "no data received
    /// from server".
    NoDataReceived,
    /// Began shutting down 11 minutes ago and is still there: "stuck at
    /// shutdown".
    StuckAtShutdown,
    /// Reports `unregistered`: healthy, "not registered".
    Unregistered,
    /// Starts, then drops its stream without a word and never comes back:
    /// "not reporting" after the server's silence window.
    Crash,
    /// Starts, works a while, shuts down and says `stopped`: "stopped".
    Stop,
}

impl Behaviour {
    /// Every behaviour, in the order of the default mix.
    pub const ALL: [Behaviour; 7] = [
        Behaviour::Healthy,
        Behaviour::NoDataSent,
        Behaviour::NoDataReceived,
        Behaviour::StuckAtShutdown,
        Behaviour::Unregistered,
        Behaviour::Crash,
        Behaviour::Stop,
    ];

    /// Its name in `--mix` and in agent IDs.
    pub const fn name(self) -> &'static str {
        match self {
            Behaviour::Healthy => "healthy",
            Behaviour::NoDataSent => "no-data-sent",
            Behaviour::NoDataReceived => "no-data-received",
            Behaviour::StuckAtShutdown => "stuck-at-shutdown",
            Behaviour::Unregistered => "unregistered",
            Behaviour::Crash => "crash",
            Behaviour::Stop => "stop",
        }
    }

    /// The data event it keeps sending, if any.
    const fn data(self) -> &'static [EventKind] {
        match self {
            Behaviour::Healthy => &[EventKind::ServerDataSent, EventKind::ServerDataReceived],
            Behaviour::NoDataSent => &[EventKind::ServerDataReceived],
            Behaviour::NoDataReceived => &[EventKind::ServerDataSent],
            _ => &[],
        }
    }
}

/// How many agents of each behaviour, as weights.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mix(Vec<(Behaviour, u32)>);

impl Mix {
    /// The default: mostly healthy, a few of every kind of trouble.
    pub const DEFAULT: &'static str = "healthy=70,no-data-sent=5,no-data-received=5,stuck-at-shutdown=5,unregistered=5,crash=5,stop=5";

    /// Parses `NAME=WEIGHT,...`.
    pub fn parse(s: &str) -> Result<Mix, String> {
        let mut weights = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("invalid mix entry {part:?}: expected NAME=WEIGHT"))?;
            let behaviour = Behaviour::ALL
                .into_iter()
                .find(|b| b.name() == name.trim())
                .ok_or_else(|| {
                    let names: Vec<&str> = Behaviour::ALL.iter().map(|b| b.name()).collect();
                    format!("unknown behaviour {name:?}: one of {}", names.join(", "))
                })?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("invalid weight in {part:?}: a whole number"))?;
            weights.retain(|(b, _)| *b != behaviour);
            weights.push((behaviour, weight));
        }
        if weights.iter().all(|(_, w)| *w == 0) {
            return Err("the mix needs at least one behaviour with a weight above 0".into());
        }
        Ok(Mix(weights))
    }

    /// The behaviour of each of `n` agents: counts in proportion to the
    /// weights (largest remainder), interleaved so that every behaviour shows
    /// early during the ramp-up.
    pub fn assign(&self, n: u32) -> Vec<Behaviour> {
        let total: u64 = self.0.iter().map(|(_, w)| u64::from(*w)).sum();
        let n64 = u64::from(n);
        let mut counts: Vec<(Behaviour, u64, u64)> = self
            .0
            .iter()
            .map(|(b, w)| {
                let exact = n64 * u64::from(*w);
                (*b, exact / total, exact % total)
            })
            .collect();
        let assigned: u64 = counts.iter().map(|c| c.1).sum();
        let mut by_remainder: Vec<usize> = (0..counts.len()).collect();
        by_remainder.sort_by_key(|&i| std::cmp::Reverse(counts[i].2));
        for &i in by_remainder.iter().take((n64 - assigned) as usize) {
            counts[i].1 += 1;
        }
        // Spread each behaviour evenly: its k-th agent sits at (k + 0.5) / count.
        let mut slots: Vec<(f64, Behaviour)> = Vec::with_capacity(n as usize);
        for (b, count, _) in counts {
            for k in 0..count {
                slots.push(((k as f64 + 0.5) / count as f64, b));
            }
        }
        slots.sort_by(|a, b| a.0.total_cmp(&b.0));
        slots.into_iter().map(|(_, b)| b).collect()
    }
}

impl FromStr for Mix {
    type Err = String;
    fn from_str(s: &str) -> Result<Mix, String> {
        Mix::parse(s)
    }
}

/// Acknowledgement latencies, in microseconds, recorded by many tasks at
/// once: a few HdrHistograms (two significant digits, 1 µs to 1 h), each
/// behind its own lock, so that agents on different shards never contend.
pub struct Latency {
    shards: Vec<Mutex<Histogram<u64>>>,
}

/// How many histograms the agents' latencies are spread over.
const LATENCY_SHARDS: usize = 16;
/// The largest latency recorded as itself (longer ones count as this): 1 h.
const MAX_LATENCY_MICROS: u64 = 3_600_000_000;

impl Default for Latency {
    fn default() -> Latency {
        Latency {
            shards: (0..LATENCY_SHARDS)
                .map(|_| {
                    Mutex::new(
                        Histogram::new_with_bounds(1, MAX_LATENCY_MICROS, 2)
                            .expect("constant bounds are valid"),
                    )
                })
                .collect(),
        }
    }
}

impl Latency {
    /// Records `count` samples of `latency` into the shard of agent `agent`.
    pub fn record(&self, agent: usize, latency: Duration, count: u64) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let mut shard = self.shards[agent % LATENCY_SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        shard.saturating_record_n(micros.min(MAX_LATENCY_MICROS), count);
    }

    /// Every shard in one histogram.
    fn merged(&self) -> Histogram<u64> {
        let mut all = Histogram::new_with_bounds(1, MAX_LATENCY_MICROS, 2)
            .expect("constant bounds are valid");
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            // Same bounds: adding cannot fail.
            let _ = all.add(&*shard);
        }
        all
    }

    /// The `q` quantile (0 to 1; 1 is the maximum) within 1 %; `None`
    /// without samples.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let all = self.merged();
        (!all.is_empty()).then(|| Duration::from_micros(all.value_at_quantile(q.clamp(0.0, 1.0))))
    }
}

/// Counters shared by all simulated agents.
#[derive(Default)]
struct Counters {
    acked_events: AtomicU64,
    acked_messages: AtomicU64,
    latency: Latency,
    agents_started: AtomicU64,
    agents_failed: AtomicU64,
    reconnects: AtomicU64,
    dropped: AtomicU64,
    /// The first reason an agent could not start, for the final error.
    first_failure: Mutex<Option<String>>,
}

impl Counters {
    fn failed(&self, why: impl FnOnce() -> String) {
        self.agents_failed.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_failure.lock().unwrap_or_else(|e| e.into_inner());
        if first.is_none() {
            *first = Some(why());
        }
    }
}

/// What a simulation is asked to do.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// The server's address.
    pub server: String,
    /// TLS and token (an admin's or a relay's: the simulated agents are many).
    pub credentials: Credentials,
    /// How long to wait for the server to connect, and for the agents to
    /// stop at the end.
    pub timeout: Duration,
    /// How many agents (at least 1).
    pub agents: u32,
    /// The share of each behaviour.
    pub mix: Mix,
    /// Data events per second across the fleet; `Some(0.0)`: as fast as
    /// acknowledged; `None`: one data event per agent every 10 s. Finite and
    /// not negative.
    pub rate: Option<f64>,
    /// How many agent streams share one HTTP/2 connection (at least 1).
    pub streams_per_connection: u32,
    /// Events per message for the data events (at least 1).
    pub events_per_message: u32,
    /// Stop after this long; `None`: when interrupted.
    pub duration: Option<Duration>,
    /// The agents' IDs begin with this.
    pub prefix: String,
    /// At the end, drop the streams without a word instead of stopping.
    pub leave: bool,
    /// How long the agents take to connect, spread evenly.
    pub ramp_up: Duration,
    /// Whether to send a [`Note::Progress`] every 5 s.
    pub progress: bool,
}

/// What the simulator tells while it runs.
#[derive(Clone, Debug, PartialEq)]
pub enum Note {
    /// The agents are starting.
    Starting {
        /// How many agents.
        agents: u32,
        /// On how many connections.
        connections: u32,
        /// Against which server.
        server: String,
        /// For how long; `None`: until interrupted.
        duration: Option<Duration>,
    },
    /// How it is going (every 5 s, when asked for).
    Progress {
        /// Since the start.
        elapsed: Duration,
        /// Agents whose first events were acknowledged.
        agents_up: u64,
        /// Events acknowledged so far.
        acked: u64,
        /// Events acknowledged per second since the last note.
        rate: f64,
        /// The 99th percentile acknowledgement latency so far.
        p99: Option<Duration>,
    },
    /// The end: the agents stop (or, with `leave`, drop their streams).
    Stopping {
        /// Whether they leave without a word.
        leave: bool,
    },
    /// Some agents did not stop in time and were left.
    Lagging,
}

/// What the simulation achieved.
#[derive(Clone, Debug, PartialEq)]
pub struct SimReport {
    /// How many agents.
    pub agents: u32,
    /// On how many connections.
    pub connections: u32,
    /// At most this many streams each.
    pub streams_per_connection: u32,
    /// At most this many events a message.
    pub events_per_message: u32,
    /// How long it ran.
    pub seconds: f64,
    /// Events acknowledged.
    pub events_acked: u64,
    /// Messages acknowledged.
    pub messages_acked: u64,
    /// `events_acked / seconds`.
    pub events_per_second: f64,
    /// Median acknowledgement latency, in milliseconds.
    pub ack_latency_p50_ms: Option<f64>,
    /// 99th percentile acknowledgement latency, in milliseconds.
    pub ack_latency_p99_ms: Option<f64>,
    /// Largest acknowledgement latency, in milliseconds.
    pub ack_latency_max_ms: Option<f64>,
    /// Agents that never got their first events acknowledged.
    pub agents_failed: u64,
    /// Reconnections across all agents.
    pub reconnects: u64,
    /// Events dropped from full buffers.
    pub events_dropped: u64,
    /// The first reason an agent failed, if any did.
    pub first_failure: Option<String>,
}

impl SimReport {
    /// Whether every agent failed: the server could not be used at all.
    pub fn all_failed(&self) -> bool {
        self.agents_failed == u64::from(self.agents)
    }
}

/// The plan of one agent.
struct Plan {
    /// Its place in the fleet (which latency shard it records into).
    index: usize,
    id: String,
    behaviour: Behaviour,
    start_after: Duration,
    /// Data events: a message of this many, every `interval` (None: as fast
    /// as acknowledged).
    batch: u32,
    interval: Option<Duration>,
    /// At the end, drop the stream instead of saying `stopped`.
    leave: bool,
    /// The token every call carries, if any.
    bearer: Bearer,
}

/// Runs the simulation until its duration passes or Ctrl-C, then stops the
/// agents cleanly and returns what was achieved. Notes go to `note` as it
/// runs. An error only for settings that cannot run (an agent ID the prefix
/// makes invalid, a bad server address); agents that cannot reach the server
/// show in the report.
pub async fn run(settings: &Settings, note: &mut dyn FnMut(Note)) -> Result<SimReport, Failure> {
    let behaviours = settings.mix.assign(settings.agents);
    let data_agents = behaviours
        .iter()
        .filter(|b| !b.data().is_empty())
        .count()
        .max(1);
    let batch = settings.events_per_message;
    let interval = match settings.rate {
        None => Some(Duration::from_secs(10) * batch),
        Some(0.0) => None,
        Some(r) => Some(Duration::from_secs_f64(
            (data_agents as f64 * f64::from(batch) / r).min(86_400.0),
        )),
    };
    let per_conn = settings.streams_per_connection;
    let connections = settings.agents.div_ceil(per_conn);
    let mut channels = Vec::with_capacity(connections as usize);
    for _ in 0..connections {
        channels.push(
            endpoint_with(&settings.server, settings.timeout, &settings.credentials)
                .map_err(Failure::usage)?
                .connect_lazy(),
        );
    }
    let bearer = match &settings.credentials.token {
        Some(t) => Bearer::new(t).map_err(Failure::usage)?,
        None => Bearer::none(),
    };
    let width = settings.agents.to_string().len();
    let counters = Arc::new(Counters::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    for (i, behaviour) in behaviours.into_iter().enumerate() {
        let n = u32::try_from(i).unwrap_or(u32::MAX);
        let plan = Plan {
            index: i,
            id: format!("{}{}-{:0width$}", settings.prefix, behaviour.name(), n),
            behaviour,
            start_after: settings
                .ramp_up
                .mul_f64(f64::from(n) / f64::from(settings.agents)),
            batch,
            interval,
            leave: settings.leave,
            bearer: bearer.clone(),
        };
        AgentId::parse(&plan.id).map_err(|e| Failure::usage(format!("--prefix: {e}")))?;
        let channel = channels[(n / per_conn) as usize].clone();
        tasks.spawn(agent(plan, channel, Arc::clone(&counters), stop_rx.clone()));
    }
    drop(channels);
    note(Note::Starting {
        agents: settings.agents,
        connections,
        server: settings.server.clone(),
        duration: settings.duration,
    });

    let started = Instant::now();
    let ending = async {
        match settings.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(ending);
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut ticker = tokio::time::interval(Duration::from_secs(5));
    ticker.tick().await;
    let mut last = (started, 0u64);
    loop {
        tokio::select! {
            () = &mut ending => break,
            _ = &mut interrupted => break,
            _ = ticker.tick(), if settings.progress => {
                let acked = counters.acked_events.load(Ordering::Relaxed);
                let now = Instant::now();
                let rate = (acked - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
                last = (now, acked);
                note(Note::Progress {
                    elapsed: started.elapsed(),
                    agents_up: counters.agents_started.load(Ordering::Relaxed),
                    acked,
                    rate,
                    p99: counters.latency.quantile(0.99),
                });
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let events_acked = counters.acked_events.load(Ordering::Relaxed);
    let messages_acked = counters.acked_messages.load(Ordering::Relaxed);
    note(Note::Stopping {
        leave: settings.leave,
    });
    let _ = stop_tx.send(true);
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(settings.timeout + Duration::from_secs(5), drain)
        .await
        .is_err()
    {
        note(Note::Lagging);
    }
    let ms = |q: f64| counters.latency.quantile(q).map(|d| d.as_secs_f64() * 1e3);
    let first_failure = counters
        .first_failure
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    Ok(SimReport {
        agents: settings.agents,
        connections,
        streams_per_connection: per_conn,
        events_per_message: batch,
        seconds,
        events_acked,
        messages_acked,
        events_per_second: events_acked as f64 / seconds.max(1e-9),
        ack_latency_p50_ms: ms(0.5),
        ack_latency_p99_ms: ms(0.99),
        ack_latency_max_ms: ms(1.0),
        agents_failed: counters.agents_failed.load(Ordering::Relaxed),
        reconnects: counters.reconnects.load(Ordering::Relaxed),
        events_dropped: counters.dropped.load(Ordering::Relaxed),
        first_failure,
    })
}

fn ago(now: Time, d: Duration) -> Option<Time> {
    Some(now.saturating_sub(d))
}

const HOUR: Duration = Duration::from_secs(3600);
const MIN: Duration = Duration::from_secs(60);

/// The events an agent reports when it comes up.
fn opening(
    behaviour: Behaviour,
    now: Time,
    rng: &mut fastrand::Rng,
) -> Vec<(EventKind, Option<Time>)> {
    use EventKind::*;
    let up_for = Duration::from_secs(rng.u64(60..2 * 3600));
    match behaviour {
        Behaviour::Healthy | Behaviour::Crash | Behaviour::Stop => vec![
            (Starting, ago(now, up_for)),
            (Registered, Some(now)),
            (ServerDataReceived, Some(now)),
            (ServerDataSent, Some(now)),
        ],
        Behaviour::NoDataSent => vec![
            (Starting, ago(now, 7 * HOUR)),
            (Registered, Some(now)),
            (ServerDataSent, ago(now, 7 * HOUR)),
            (ServerDataReceived, Some(now)),
        ],
        Behaviour::NoDataReceived => vec![
            (Starting, ago(now, 19 * HOUR)),
            (Registered, Some(now)),
            (ServerDataReceived, ago(now, 19 * HOUR)),
            (ServerDataSent, Some(now)),
        ],
        Behaviour::StuckAtShutdown => vec![
            (Starting, ago(now, 3 * HOUR)),
            (Registered, Some(now)),
            (ServerDataReceived, ago(now, 12 * MIN)),
            (ServerDataSent, ago(now, 12 * MIN)),
            (ShuttingDown, ago(now, 11 * MIN)),
        ],
        Behaviour::Unregistered => vec![(Starting, ago(now, up_for)), (Unregistered, Some(now))],
    }
}

async fn agent(
    plan: Plan,
    channel: tonic::transport::Channel,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) {
    let stopped = |stop: &watch::Receiver<bool>| *stop.borrow();
    tokio::select! {
        () = tokio::time::sleep(plan.start_after) => {}
        _ = stop.wait_for(|s| *s) => return,
    }
    let mut config = ReporterConfig::new(plan.id.clone()).label("sim", plan.behaviour.name());
    config.max_batch = plan.batch as usize;
    config.max_pending = (plan.batch as usize * 4).max(1000);
    config.backoff = BackoffConfig {
        initial: Duration::from_millis(200),
        max: Duration::from_secs(10),
    };
    let hook_counters = Arc::clone(&counters);
    let shard = plan.index;
    config.on_ack = Some(Arc::new(move |acked| {
        let events = acked.events as u64;
        hook_counters
            .acked_events
            .fetch_add(events, Ordering::Relaxed);
        hook_counters.acked_messages.fetch_add(1, Ordering::Relaxed);
        hook_counters.latency.record(shard, acked.latency, events);
    }));
    let reporter = match Reporter::start_with(channel, plan.bearer.clone(), config) {
        Ok(r) => r,
        Err(e) => {
            counters.failed(|| format!("{}: {e}", plan.id));
            return;
        }
    };
    let mut rng = fastrand::Rng::new();
    if let Err(e) = reporter.report_many(opening(plan.behaviour, now(), &mut rng)) {
        counters.failed(|| format!("{}: {e}", plan.id));
        return;
    }
    let first = tokio::select! {
        r = reporter.flush() => r.map_err(|e| e.to_string()),
        _ = stop.wait_for(|s| *s) => Err("stopped before its first acknowledgement".into()),
    };
    match first {
        Ok(()) => {
            counters.agents_started.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) if !stopped(&stop) => counters.failed(|| {
            let last = reporter
                .stats()
                .last_error
                .map_or_else(String::new, |l| format!(" (last error: {l})"));
            format!("{}: {e}{last}", plan.id)
        }),
        Err(_) => {}
    }

    match plan.behaviour {
        Behaviour::Crash => {
            // Visible as connected for a while, then gone without a word.
            let life = Duration::from_secs(rng.u64(3..30));
            tokio::select! {
                () = tokio::time::sleep(life) => {}
                _ = stop.wait_for(|s| *s) => {}
            }
            account(&counters, &reporter.stats());
            drop(reporter);
            return;
        }
        Behaviour::Stop => {
            let life = Duration::from_secs(rng.u64(5..60));
            let lived = tokio::select! {
                () = tokio::time::sleep(life) => true,
                _ = stop.wait_for(|s| *s) => false,
            };
            if lived {
                // Its own decision: shut down, say so, and stop.
                let _ = reporter.report(EventKind::ShuttingDown, Some(now()));
                let _ = reporter.shutdown(Duration::from_secs(10)).await;
                account(&counters, &reporter.stats());
                return;
            }
        }
        b if !b.data().is_empty() => {
            let kinds = b.data();
            let mut turn = 0usize;
            let mut next = Instant::now();
            // Two messages in flight at most when going as fast as acked.
            let mut previous_last = 0u64;
            loop {
                if let Some(every) = plan.interval {
                    // A random phase, so that the fleet's messages spread out.
                    if turn == 0 {
                        next += every.mul_f64(rng.f64());
                    }
                    next += every;
                    tokio::select! {
                        () = tokio::time::sleep_until(next) => {}
                        _ = stop.wait_for(|s| *s) => break,
                    }
                }
                let when = now();
                let first = turn;
                let events = (0..plan.batch)
                    .map(move |k| (kinds[(first + k as usize) % kinds.len()], Some(when)));
                turn += plan.batch as usize;
                let Ok(last) = reporter.report_many(events) else {
                    break;
                };
                if plan.interval.is_none() {
                    let acked = tokio::select! {
                        r = reporter.wait_acked(previous_last) => r.is_ok(),
                        _ = stop.wait_for(|s| *s) => break,
                    };
                    if !acked {
                        break;
                    }
                }
                previous_last = last;
                if stopped(&stop) {
                    break;
                }
            }
        }
        _ => {
            // Idle: the reporter heartbeats.
            let _ = stop.wait_for(|s| *s).await;
        }
    }
    // A stuck agent never gets as far as saying `stopped`.
    if !plan.leave && plan.behaviour != Behaviour::StuckAtShutdown {
        let _ = reporter.shutdown(Duration::from_secs(10)).await;
    }
    account(&counters, &reporter.stats());
}

fn account(counters: &Counters, stats: &Stats) {
    counters
        .reconnects
        .fetch_add(stats.connects.saturating_sub(1), Ordering::Relaxed);
    counters.dropped.fetch_add(stats.dropped, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_mix_parses_and_has_every_behaviour() {
        let mix = Mix::parse(Mix::DEFAULT).unwrap();
        let assigned = mix.assign(20);
        assert_eq!(assigned.len(), 20);
        for b in Behaviour::ALL {
            assert!(assigned.contains(&b), "{b:?} missing");
        }
        assert_eq!(
            assigned
                .iter()
                .filter(|b| **b == Behaviour::Healthy)
                .count(),
            14
        );
    }

    #[test]
    fn assignment_follows_the_weights_exactly_in_total() {
        let mix = Mix::parse("healthy=2,crash=1").unwrap();
        for n in [1, 2, 3, 7, 100, 1001] {
            let a = mix.assign(n);
            assert_eq!(a.len(), n as usize);
            let crash = a.iter().filter(|b| **b == Behaviour::Crash).count() as f64;
            assert!((crash - f64::from(n) / 3.0).abs() <= 1.0, "{n}: {crash}");
        }
        // Interleaved: the first few already hold both.
        let a = mix.assign(300);
        assert!(a[..3].contains(&Behaviour::Crash) && a[..3].contains(&Behaviour::Healthy));
    }

    #[test]
    fn bad_mixes_are_refused() {
        assert!(Mix::parse("healthy").is_err());
        assert!(Mix::parse("happy=1").is_err());
        assert!(Mix::parse("healthy=-1").is_err());
        assert!(Mix::parse("healthy=0").is_err());
        assert_eq!(
            Mix::parse("healthy=1,healthy=3").unwrap(),
            Mix(vec![(Behaviour::Healthy, 3)])
        );
    }

    #[test]
    fn the_opening_events_make_each_rule_show_at_once() {
        use fleet_health_client::EventKind as K;
        use fleet_health_sensor::{Sensor, Why, Windows};
        let now = Time::from_unix(1_714_564_800, 0).unwrap();
        let expected = [
            (Behaviour::Healthy, Why::AllIsOk),
            (Behaviour::NoDataSent, Why::NoDataSent),
            (Behaviour::NoDataReceived, Why::NoDataReceived),
            (Behaviour::StuckAtShutdown, Why::StuckAtShutdown),
            (Behaviour::Unregistered, Why::NotRegistered),
            (Behaviour::Stop, Why::AllIsOk),
        ];
        let mut rng = fastrand::Rng::with_seed(3);
        for (behaviour, why) in expected {
            let mut sensor = Sensor::new();
            for (kind, at) in opening(behaviour, now, &mut rng) {
                let at = at.unwrap();
                match kind {
                    K::Starting => sensor.starting(at),
                    K::ShuttingDown => sensor.shutting_down(at),
                    K::ServerDataReceived => sensor.server_data_received(at),
                    K::ServerDataSent => sensor.server_data_sent(at),
                    K::Registered => sensor.registered(),
                    K::Unregistered => sensor.unregistered(),
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(
                sensor.status(now, &Windows::default()).why,
                why,
                "{behaviour:?}"
            );
        }
    }

    #[test]
    fn latency_quantiles_are_within_one_percent_across_shards() {
        let h = Latency::default();
        assert_eq!(h.quantile(0.5), None);
        for ms in 1..=100u64 {
            h.record(ms as usize, Duration::from_millis(ms), 1);
        }
        let p50 = h.quantile(0.5).unwrap().as_secs_f64() * 1e3;
        let p99 = h.quantile(0.99).unwrap().as_secs_f64() * 1e3;
        let max = h.quantile(1.0).unwrap().as_secs_f64() * 1e3;
        assert!((50.0..=50.0 * 1.01).contains(&p50), "{p50}");
        assert!((99.0..=99.0 * 1.01).contains(&p99), "{p99}");
        assert!((100.0..=100.0 * 1.01).contains(&max), "{max}");
        // Counts weigh, and what is beyond the range counts as the range's end.
        h.record(0, Duration::from_millis(1), 10_000);
        assert!(h.quantile(0.5).unwrap() <= Duration::from_micros(1010));
        h.record(3, Duration::from_secs(7200), 1);
        let top = h.quantile(1.0).unwrap();
        assert!(
            top >= Duration::from_secs(3600) && top <= Duration::from_secs(3637),
            "{top:?}"
        );
    }
}
