//! A load generator for fleet-health's `AgentService`.
//!
//! [`run`] opens [`LoadConfig::streams`] Report streams over
//! [`LoadConfig::connections`] HTTP/2 connections. Each stream says Hello
//! (agent `PREFIX-N`, a random incarnation), waits for its Welcome, and once
//! every stream is welcomed all of them send event batches of
//! [`LoadConfig::events_per_message`] events with increasing sequence
//! numbers, keeping up to [`LoadConfig::in_flight`] messages unacknowledged
//! (pipelined: a stream does not wait for each ack before the next message).
//! After a warm-up, acknowledgements are counted for the measured window;
//! each acknowledged message's latency (send to ack) goes into one
//! HdrHistogram (each stream hands its samples over in small batches). Then every stream stops sending, waits (bounded) for its
//! outstanding acks, half-closes, and waits (bounded) for the server to end
//! the stream. The result is a [`LoadReport`].
//!
//! Acks are cumulative (one ack may cover several messages, as the durable
//! server's do after a group commit); [`Inflight`] keeps the send time of
//! each unacknowledged message and settles all that an ack covers.
//!
//! Every phase is bounded: the set-up by [`LoadConfig::setup_timeout`], the
//! run by [`LoadConfig::warmup`] + [`LoadConfig::duration`] (or earlier, when
//! a [`LoadConfig::messages`] budget is spent), the end by
//! [`LoadConfig::drain_timeout`].

use std::collections::VecDeque;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fleet_health_proto::v1 as pb;
use fleet_health_proto::v1::agent_service_client::AgentServiceClient;
use hdrhistogram::Histogram;
use pb::report_request::Body as In;
use pb::report_response::Body as Out;
use serde::Serialize;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// What to run.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// The server's URL (`http://127.0.0.1:PORT`).
    pub server: String,
    /// Report streams, one per simulated agent.
    pub streams: u32,
    /// HTTP/2 connections the streams are spread over (round robin).
    pub connections: u32,
    /// Messages each stream may have sent but not yet seen acknowledged.
    pub in_flight: u32,
    /// Events in each message.
    pub events_per_message: u32,
    /// The measured window, after the warm-up.
    pub duration: Duration,
    /// Load before the measured window, not counted.
    pub warmup: Duration,
    /// At most this many messages over all streams (warm-up included); the
    /// run ends early once they are all acknowledged. `None`: no budget.
    pub messages: Option<u64>,
    /// How long connecting and every stream's Hello may take.
    pub setup_timeout: Duration,
    /// How long, at the end, a stream waits for its outstanding acks, and
    /// then for the server to end the stream.
    pub drain_timeout: Duration,
    /// Give every event the time of its message (as an agent does); `false`
    /// leaves times unset (the server's receive time).
    pub event_times: bool,
    /// Agent IDs are `PREFIX-N`.
    pub agent_prefix: String,
}

impl Default for LoadConfig {
    fn default() -> LoadConfig {
        LoadConfig {
            server: "http://127.0.0.1:50051".into(),
            streams: 16,
            connections: 1,
            in_flight: 16,
            events_per_message: 1,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            messages: None,
            setup_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(5),
            event_times: true,
            agent_prefix: "load".into(),
        }
    }
}

/// Upper bounds that keep a run's memory and time in check.
const MAX_STREAMS: u32 = 100_000;
const MAX_IN_FLIGHT: u32 = 4096;
/// The server's default cap on events in one message.
const MAX_EVENTS_PER_MESSAGE: u32 = 4096;
const MAX_PHASE: Duration = Duration::from_secs(3600);

impl LoadConfig {
    /// Checks that every setting is in range.
    pub fn validate(&self) -> Result<(), LoadError> {
        let bad = |what: String| Err(LoadError::Config(what));
        if self.streams == 0 || self.streams > MAX_STREAMS {
            return bad(format!("streams must be 1 to {MAX_STREAMS}"));
        }
        if self.connections == 0 || self.connections > self.streams {
            return bad("connections must be 1 to the number of streams".into());
        }
        if self.in_flight == 0 || self.in_flight > MAX_IN_FLIGHT {
            return bad(format!("in-flight must be 1 to {MAX_IN_FLIGHT}"));
        }
        if self.events_per_message == 0 || self.events_per_message > MAX_EVENTS_PER_MESSAGE {
            return bad(format!(
                "events per message must be 1 to {MAX_EVENTS_PER_MESSAGE}"
            ));
        }
        if self.duration.is_zero() {
            return bad("the duration must be above 0".into());
        }
        for (name, d) in [
            ("duration", self.duration),
            ("warm-up", self.warmup),
            ("set-up timeout", self.setup_timeout),
            ("drain timeout", self.drain_timeout),
        ] {
            if d > MAX_PHASE {
                return bad(format!("the {name} must be at most 1h"));
            }
        }
        if self.setup_timeout.is_zero() || self.drain_timeout.is_zero() {
            return bad("the set-up and drain timeouts must be above 0".into());
        }
        if self.messages == Some(0) {
            return bad("a message budget must be at least 1".into());
        }
        Ok(())
    }
}

/// What a run achieved. Rates are over the measured window.
#[derive(Clone, Debug, Serialize)]
pub struct LoadReport {
    /// The server's URL.
    pub server: String,
    /// Report streams.
    pub streams: u32,
    /// HTTP/2 connections.
    pub connections: u32,
    /// Messages in flight per stream, at most.
    pub in_flight: u32,
    /// Events per message.
    pub events_per_message: u32,
    /// The measured window, in seconds.
    pub seconds: f64,
    /// Messages acknowledged in the window.
    pub messages_acked: u64,
    /// Events acknowledged in the window.
    pub events_acked: u64,
    /// `messages_acked / seconds`.
    pub messages_per_second: f64,
    /// `events_acked / seconds`.
    pub events_per_second: f64,
    /// Median send-to-ack latency of the messages acknowledged in the window.
    pub ack_latency_p50_ms: Option<f64>,
    /// 99th percentile of that latency.
    pub ack_latency_p99_ms: Option<f64>,
    /// The largest latency seen.
    pub ack_latency_max_ms: Option<f64>,
    /// CPU time this process (the generator) used in the window, in seconds
    /// (Linux only): near `seconds` × its worker threads, the generator, not
    /// the server, was the limit.
    pub generator_cpu_seconds: Option<f64>,
    /// Messages sent over the whole run (warm-up and drain included).
    pub messages_sent: u64,
    /// Messages acknowledged over the whole run.
    pub messages_acked_total: u64,
    /// Messages still unacknowledged when the streams ended.
    pub unacked_at_end: u64,
    /// Streams that ended with an error.
    pub streams_failed: u64,
    /// The first of those errors.
    pub first_error: Option<String>,
}

/// Why a run could not take place.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A setting is out of range.
    #[error("invalid load settings: {0}")]
    Config(String),
    /// The server address is not a usable URL.
    #[error(transparent)]
    Endpoint(#[from] fleet_health_client::InvalidEndpoint),
    /// A connection could not be made.
    #[error("cannot connect to {server}: {reason}")]
    Connect {
        /// The server's URL.
        server: String,
        /// What went wrong.
        reason: String,
    },
    /// Not every stream was welcomed within the set-up timeout.
    #[error("only {ready} of {streams} streams were welcomed within {timeout:?}: {first_error}")]
    Setup {
        /// Streams welcomed.
        ready: u32,
        /// Streams asked for.
        streams: u32,
        /// The set-up timeout.
        timeout: Duration,
        /// The first failure seen (or the timeout).
        first_error: String,
    },
}

/// An ack above the last sequence number sent: the server acknowledged
/// events it cannot have received.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the server acknowledged sequence number {through}, above the last one sent ({last_sent})")]
pub struct AckBeyondSent {
    /// The ack's `applied_through`.
    pub through: u64,
    /// The last sequence number sent on the stream.
    pub last_sent: u64,
}

/// The unacknowledged messages of one stream, oldest first: the last
/// sequence number of each and when it was sent.
#[derive(Debug, Default)]
pub struct Inflight {
    sent: VecDeque<(u64, Instant)>,
    last_sent: u64,
}

impl Inflight {
    /// A message whose last event has sequence number `last_seq` went out at
    /// `at`. Sequence numbers must increase from message to message.
    pub fn push(&mut self, last_seq: u64, at: Instant) {
        debug_assert!(last_seq > self.last_sent, "sequence numbers increase");
        self.sent.push_back((last_seq, at));
        self.last_sent = last_seq;
    }

    /// Messages not yet acknowledged.
    pub fn len(&self) -> usize {
        self.sent.len()
    }

    /// Whether every message sent is acknowledged.
    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }

    /// Settles the messages an ack of `through` covers (every one whose last
    /// sequence number is at most `through`), calling `each` with the send
    /// time of each; returns how many.
    pub fn ack(
        &mut self,
        through: u64,
        mut each: impl FnMut(Instant),
    ) -> Result<u64, AckBeyondSent> {
        if through > self.last_sent {
            return Err(AckBeyondSent {
                through,
                last_sent: self.last_sent,
            });
        }
        let mut settled = 0;
        while let Some(&(seq, at)) = self.sent.front()
            && seq <= through
        {
            self.sent.pop_front();
            each(at);
            settled += 1;
        }
        Ok(settled)
    }
}

/// Where the run is; every stream follows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Streams are saying Hello.
    Setup,
    /// Streams send.
    Run,
    /// Streams stop sending, drain and close.
    Stop,
}

/// State all streams share.
struct Shared {
    /// Acks count (and latencies are recorded) while this is set.
    measuring: AtomicBool,
    /// Messages left to send, if there is a budget.
    budget: Option<AtomicU64>,
    /// Streams whose sending is over (budget spent, stopped, or failed).
    finished: AtomicUsize,
    /// Told once every stream's sending is over.
    all_finished: Notify,
    streams: usize,
    /// Send-to-ack latencies of the window, in microseconds.
    latency: Mutex<Histogram<u64>>,
}

impl Shared {
    /// Takes one message from the budget; `false` once it is spent.
    fn claim(&self) -> bool {
        self.budget.as_ref().is_none_or(|b| {
            b.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(1)
            })
            .is_ok()
        })
    }
}

/// Counts a stream as finished when dropped, however its sending ends.
struct Finished<'a>(&'a Shared);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        if self.0.finished.fetch_add(1, Ordering::AcqRel) + 1 == self.0.streams {
            self.0.all_finished.notify_one();
        }
    }
}

/// What one stream did.
#[derive(Default)]
struct Outcome {
    sent: u64,
    acked_total: u64,
    measured_messages: u64,
    unacked: u64,
}

/// Latencies are recorded in microseconds, from 1 µs to 60 s, to three
/// significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Samples a stream keeps before handing them to the shared histogram: a
/// lock taken once per this many acks, and a little memory per stream.
const LATENCY_BATCH: usize = 256;

/// One stream's latency samples on their way to the shared histogram;
/// whatever is left is handed over on drop.
struct Latencies<'a> {
    batch: Vec<u64>,
    into: &'a Mutex<Histogram<u64>>,
}

impl Latencies<'_> {
    fn record(&mut self, micros: u64) {
        if self.batch.capacity() == 0 {
            self.batch.reserve_exact(LATENCY_BATCH);
        }
        self.batch.push(micros);
        if self.batch.len() == LATENCY_BATCH {
            self.flush();
        }
    }

    fn flush(&mut self) {
        let mut histogram = self.into.lock().unwrap_or_else(|e| e.into_inner());
        for micros in self.batch.drain(..) {
            histogram.saturating_record(micros);
        }
    }
}

impl Drop for Latencies<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Runs the load described by `config` and reports what it achieved.
pub async fn run(config: LoadConfig) -> Result<LoadReport, LoadError> {
    config.validate()?;
    let endpoint = fleet_health_client::endpoint(&config.server, config.setup_timeout)?;
    let mut channels = Vec::with_capacity(config.connections as usize);
    for _ in 0..config.connections {
        let channel = tokio::time::timeout(config.setup_timeout, endpoint.connect())
            .await
            .map_err(|_| format!("no connection within {:?}", config.setup_timeout))
            .and_then(|r| r.map_err(|e| error_chain(&e)))
            .map_err(|reason| LoadError::Connect {
                server: config.server.clone(),
                reason,
            })?;
        channels.push(channel);
    }

    let config = Arc::new(config);
    let shared = Arc::new(Shared {
        measuring: AtomicBool::new(false),
        budget: config.messages.map(AtomicU64::new),
        finished: AtomicUsize::new(0),
        all_finished: Notify::new(),
        streams: config.streams as usize,
        latency: Mutex::new(histogram()),
    });
    let (phase_tx, phase_rx) = watch::channel(Phase::Setup);
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<()>();
    let mut tasks = JoinSet::new();
    for index in 0..config.streams {
        let channel = channels[(index % config.connections) as usize].clone();
        tasks.spawn(drive(
            index,
            channel,
            Arc::clone(&config),
            Arc::clone(&shared),
            phase_rx.clone(),
            ready_tx.clone(),
        ));
    }
    drop((ready_tx, phase_rx, channels));

    // Every stream welcomed, or a failure, or the timeout.
    let setup_deadline = Instant::now() + config.setup_timeout;
    let mut ready = 0;
    while ready < config.streams {
        match tokio::time::timeout_at(setup_deadline, ready_rx.recv()).await {
            Ok(Some(())) => ready += 1,
            // Every stream has either reported or ended.
            Ok(None) | Err(_) => break,
        }
    }
    if ready < config.streams {
        phase_tx.send_replace(Phase::Stop);
        let outcomes = join(&mut tasks, &config).await;
        let first_error = outcomes
            .iter()
            .find_map(|o| o.as_ref().err().cloned())
            .unwrap_or_else(|| "the set-up timed out".into());
        return Err(LoadError::Setup {
            ready,
            streams: config.streams,
            timeout: config.setup_timeout,
            first_error,
        });
    }

    phase_tx.send_replace(Phase::Run);
    let mut all_finished = pin!(shared.all_finished.notified());
    let mut done_early = false;
    if !config.warmup.is_zero() {
        tokio::select! {
            () = tokio::time::sleep(config.warmup) => {}
            () = &mut all_finished => done_early = true,
        }
    }
    shared.measuring.store(true, Ordering::Relaxed);
    let window_start = Instant::now();
    let cpu_start = process_cpu_seconds();
    if !done_early {
        tokio::select! {
            () = tokio::time::sleep(config.duration) => {}
            () = &mut all_finished => {}
        }
    }
    shared.measuring.store(false, Ordering::Relaxed);
    let seconds = window_start.elapsed().as_secs_f64();
    let cpu = cpu_start
        .zip(process_cpu_seconds())
        .map(|(start, end)| end - start);
    phase_tx.send_replace(Phase::Stop);

    let outcomes = join(&mut tasks, &config).await;
    let latency = shared.latency.lock().unwrap_or_else(|e| e.into_inner());
    Ok(summarize(&config, seconds, cpu, &latency, outcomes))
}

/// Waits for every stream task, bounded: each drains within twice the drain
/// timeout; one that does not is aborted and counted as failed.
async fn join(
    tasks: &mut JoinSet<Result<Outcome, String>>,
    config: &LoadConfig,
) -> Vec<Result<Outcome, String>> {
    let deadline = Instant::now() + 2 * config.drain_timeout + Duration::from_secs(5);
    let mut outcomes = Vec::with_capacity(tasks.len());
    loop {
        match tokio::time::timeout_at(deadline, tasks.join_next()).await {
            Ok(Some(Ok(outcome))) => outcomes.push(outcome),
            Ok(Some(Err(e))) => outcomes.push(Err(format!("stream task failed: {e}"))),
            Ok(None) => break,
            Err(_) => {
                for _ in 0..tasks.len() {
                    outcomes.push(Err("the stream did not end in time".into()));
                }
                tasks.abort_all();
                break;
            }
        }
    }
    outcomes
}

fn summarize(
    config: &LoadConfig,
    seconds: f64,
    generator_cpu_seconds: Option<f64>,
    latency: &Histogram<u64>,
    outcomes: Vec<Result<Outcome, String>>,
) -> LoadReport {
    let (mut sent, mut acked_total, mut measured, mut unacked, mut failed) = (0, 0, 0, 0, 0);
    let mut first_error = None;
    for outcome in outcomes {
        match outcome {
            Ok(o) => {
                sent += o.sent;
                acked_total += o.acked_total;
                measured += o.measured_messages;
                unacked += o.unacked;
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    let ms = |micros: u64| micros as f64 / 1000.0;
    let quantile = |q: f64| (!latency.is_empty()).then(|| ms(latency.value_at_quantile(q)));
    let events = measured * u64::from(config.events_per_message);
    let per_second = |n: u64| {
        if seconds > 0.0 {
            n as f64 / seconds
        } else {
            0.0
        }
    };
    LoadReport {
        server: config.server.clone(),
        streams: config.streams,
        connections: config.connections,
        in_flight: config.in_flight,
        events_per_message: config.events_per_message,
        seconds,
        messages_acked: measured,
        events_acked: events,
        messages_per_second: per_second(measured),
        events_per_second: per_second(events),
        ack_latency_p50_ms: quantile(0.5),
        ack_latency_p99_ms: quantile(0.99),
        ack_latency_max_ms: (!latency.is_empty()).then(|| ms(latency.max())),
        generator_cpu_seconds,
        messages_sent: sent,
        messages_acked_total: acked_total,
        unacked_at_end: unacked,
        streams_failed: failed,
        first_error,
    }
}

/// One stream: Hello, then pipelined batches until told to stop, then drain
/// and close. An `Err` is what ended the stream.
async fn drive(
    index: u32,
    channel: Channel,
    config: Arc<LoadConfig>,
    shared: Arc<Shared>,
    mut phase: watch::Receiver<Phase>,
    ready: mpsc::UnboundedSender<()>,
) -> Result<Outcome, String> {
    let (tx, rx) = mpsc::channel(config.in_flight as usize + 1);
    let hello = pb::ReportRequest {
        body: Some(In::Hello(pb::Hello {
            agent_id: format!("{}-{index}", config.agent_prefix),
            incarnation: fastrand::u64(1..),
            labels: Default::default(),
        })),
    };
    tx.try_send(hello)
        .map_err(|_| "cannot queue the Hello".to_owned())?;
    let mut client = AgentServiceClient::new(channel);
    let setup = async {
        let mut inbound = client
            .report(ReceiverStream::new(rx))
            .await
            .map_err(|s| status_text(&s))?
            .into_inner();
        match inbound.message().await {
            Ok(Some(pb::ReportResponse {
                body: Some(Out::Welcome(welcome)),
            })) => Ok((inbound, welcome)),
            Ok(Some(other)) => Err(format!("expected a Welcome, got {other:?}")),
            Ok(None) => Err("the server ended the stream before its Welcome".into()),
            Err(s) => Err(status_text(&s)),
        }
    };
    let (mut inbound, welcome) = tokio::time::timeout(config.setup_timeout, setup)
        .await
        .map_err(|_| format!("no Welcome within {:?}", config.setup_timeout))??;
    let _ = ready.send(());
    drop(ready);
    let started = phase
        .wait_for(|p| *p != Phase::Setup)
        .await
        .map(|p| *p == Phase::Run)
        .unwrap_or(false);
    let mut outcome = Outcome::default();
    if !started {
        return Ok(outcome);
    }

    let finished = Finished(&shared);
    let mut latencies = Latencies {
        batch: Vec::new(),
        into: &shared.latency,
    };
    let in_flight = config.in_flight as usize;
    let mut seq = welcome.last_applied_seq;
    let mut inflight = Inflight::default();
    let (mut stopping, mut spent) = (false, false);
    let mut stop = pin!(async {
        let _ = phase.wait_for(|p| *p == Phase::Stop).await;
    });
    // Armed when stopping: how long outstanding acks may take.
    let mut drain = pin!(tokio::time::sleep(MAX_PHASE));
    loop {
        while !stopping && !spent && inflight.len() < in_flight {
            if !shared.claim() {
                spent = true;
                break;
            }
            let msg = batch(&mut seq, config.events_per_message, config.event_times);
            // The queue holds `in_flight` messages: there is room.
            tx.try_send(msg)
                .map_err(|_| "the request stream closed".to_owned())?;
            inflight.push(seq, Instant::now());
            outcome.sent += 1;
        }
        if inflight.is_empty() && (stopping || spent) {
            break;
        }
        tokio::select! {
            biased;
            msg = inbound.message() => {
                let now = Instant::now();
                let ack = expect_ack(msg)?;
                let measuring = shared.measuring.load(Ordering::Relaxed);
                let settled = inflight
                    .ack(ack.applied_through, |at| {
                        if measuring {
                            let micros = u64::try_from((now - at).as_micros()).unwrap_or(u64::MAX);
                            latencies.record(micros.max(1));
                        }
                    })
                    .map_err(|e| e.to_string())?;
                outcome.acked_total += settled;
                if measuring {
                    outcome.measured_messages += settled;
                }
            }
            () = &mut stop, if !stopping => {
                stopping = true;
                drain.as_mut().reset(Instant::now() + config.drain_timeout);
            }
            () = &mut drain => break,
        }
    }
    drop((finished, latencies));
    outcome.unacked = inflight.len() as u64;

    // Half-close, then the server ends the stream (answering anything late).
    drop(tx);
    let close = async {
        loop {
            match inbound.message().await {
                Ok(None) => return Ok(()),
                Ok(Some(_)) => {}
                Err(s) => return Err(status_text(&s)),
            }
        }
    };
    tokio::time::timeout(config.drain_timeout, close)
        .await
        .map_err(|_| {
            format!(
                "the server did not end the stream within {:?} of its half-close",
                config.drain_timeout
            )
        })??;
    if outcome.unacked > 0 {
        return Err(format!(
            "{} messages unacknowledged {:?} after the end",
            outcome.unacked, config.drain_timeout
        ));
    }
    Ok(outcome)
}

/// The Ack in a message read from the stream, or why there is none.
fn expect_ack(msg: Result<Option<pb::ReportResponse>, tonic::Status>) -> Result<pb::Ack, String> {
    match msg {
        Ok(Some(pb::ReportResponse {
            body: Some(Out::Ack(ack)),
        })) => Ok(ack),
        Ok(Some(other)) => Err(format!("expected an Ack, got {other:?}")),
        Ok(None) => Err("the server ended the stream with acks outstanding".into()),
        Err(s) => Err(status_text(&s)),
    }
}

/// The next message of a stream: `n` events after `seq` (which it advances).
/// The first event of a stream is `starting`, then data sent and received
/// alternate, as from a busy healthy agent.
fn batch(seq: &mut u64, n: u32, times: bool) -> pb::ReportRequest {
    let time: Option<prost_types::Timestamp> = times.then(|| SystemTime::now().into());
    let events = (0..n)
        .map(|_| {
            *seq += 1;
            let kind = match *seq {
                1 => pb::EventKind::Starting,
                s if s % 2 == 0 => pb::EventKind::ServerDataSent,
                _ => pb::EventKind::ServerDataReceived,
            };
            pb::Event {
                seq: *seq,
                kind: kind.into(),
                time,
            }
        })
        .collect();
    pb::ReportRequest {
        body: Some(In::Events(pb::EventBatch { events })),
    }
}

/// User and system CPU time of this process so far, from `/proc/self/stat`
/// (in USER_HZ ticks, 100 per second on Linux); `None` elsewhere.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces: count from its closing ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some((user + system) as f64 / 100.0)
}

fn status_text(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ack_settles_every_message_it_covers_and_no_more() {
        let t0 = Instant::now();
        let mut inflight = Inflight::default();
        for (i, last) in [10, 20, 30, 40].into_iter().enumerate() {
            inflight.push(last, t0 + Duration::from_millis(i as u64));
        }
        let mut seen = Vec::new();
        // Within the third message: the first two are settled.
        assert_eq!(inflight.ack(25, |at| seen.push(at)), Ok(2));
        assert_eq!(seen, [t0, t0 + Duration::from_millis(1)]);
        // A repeated (older) ack settles nothing.
        assert_eq!(inflight.ack(20, |_| panic!("nothing to settle")), Ok(0));
        assert_eq!(inflight.len(), 2);
        assert_eq!(inflight.ack(40, |_| {}), Ok(2));
        assert!(inflight.is_empty());
    }

    #[test]
    fn latencies_reach_the_shared_histogram_in_batches_and_on_drop() {
        let shared = Mutex::new(histogram());
        let count = || shared.lock().unwrap().len();
        let mut latencies = Latencies {
            batch: Vec::new(),
            into: &shared,
        };
        for micros in 1..LATENCY_BATCH as u64 {
            latencies.record(micros);
        }
        assert_eq!(count(), 0, "held until the batch is full");
        latencies.record(1000);
        latencies.record(2000);
        assert_eq!(count(), LATENCY_BATCH as u64);
        drop(latencies);
        assert_eq!(count(), LATENCY_BATCH as u64 + 1);
        assert_eq!(shared.lock().unwrap().max(), 2000);
    }

    #[test]
    fn an_ack_beyond_what_was_sent_is_an_error() {
        let mut inflight = Inflight::default();
        inflight.push(5, Instant::now());
        assert_eq!(
            inflight.ack(6, |_| {}),
            Err(AckBeyondSent {
                through: 6,
                last_sent: 5
            })
        );
        assert_eq!(inflight.len(), 1, "nothing settled");
    }

    #[test]
    fn batches_number_events_on_from_the_last() {
        let mut seq = 0;
        let first = batch(&mut seq, 3, false);
        let second = batch(&mut seq, 2, true);
        let events = |r: pb::ReportRequest| match r.body {
            Some(In::Events(b)) => b.events,
            other => panic!("a batch, not {other:?}"),
        };
        let first = events(first);
        let second = events(second);
        assert_eq!(first.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(first[0].kind(), pb::EventKind::Starting);
        assert!(first.iter().all(|e| e.time.is_none()));
        assert_eq!(second.iter().map(|e| e.seq).collect::<Vec<_>>(), [4, 5]);
        assert!(second.iter().all(|e| e.time.is_some()));
        assert_eq!(seq, 5);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn the_process_cpu_time_grows_with_work() {
        let before = process_cpu_seconds().expect("/proc/self/stat is readable");
        // Busy until it shows (bounded: 30 s of wall time on a loaded machine).
        let spin = std::time::Instant::now();
        let mut x = 0u64;
        let mut grown = 0.0;
        while grown < 0.05 && spin.elapsed() < Duration::from_secs(30) {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            grown = process_cpu_seconds().expect("/proc/self/stat is readable") - before;
        }
        assert!(grown >= 0.05, "{grown} s of CPU after {:?}", spin.elapsed());
    }

    #[test]
    fn settings_out_of_range_are_refused() {
        assert!(LoadConfig::default().validate().is_ok());
        let cases: [fn(&mut LoadConfig); 7] = [
            |c| c.streams = 0,
            |c| c.connections = c.streams + 1,
            |c| c.in_flight = 0,
            |c| c.events_per_message = MAX_EVENTS_PER_MESSAGE + 1,
            |c| c.duration = Duration::ZERO,
            |c| c.warmup = Duration::from_secs(7200),
            |c| c.messages = Some(0),
        ];
        for (i, change) in cases.into_iter().enumerate() {
            let mut config = LoadConfig::default();
            change(&mut config);
            assert!(
                matches!(config.validate(), Err(LoadError::Config(_))),
                "case {i}: {config:?}"
            );
        }
    }
}
