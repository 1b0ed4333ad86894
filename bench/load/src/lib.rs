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
//! HdrHistogram (each stream hands its samples over in small batches). Then
//! every stream stops sending, waits (bounded) for its outstanding acks,
//! half-closes, and waits (bounded) for the server to end the stream. The
//! result is a [`LoadReport`].
//!
//! Acks are cumulative (one ack may cover several messages, as the durable
//! server's do after a group commit); [`Inflight`] keeps the send time of
//! each unacknowledged message and settles all that an ack covers.
//!
//! Every phase is bounded: the set-up by [`LoadConfig::setup_timeout`], the
//! run by [`LoadConfig::warmup`] + [`LoadConfig::duration`] (or earlier, when
//! a [`LoadConfig::messages`] budget is spent), the end by
//! [`LoadConfig::drain_timeout`].
//!
//! [`register`] is the other mode: it makes many distinct agents known (one
//! short stream each: Hello, `starting`, its Ack, close), a bounded number at
//! a time, to fill a server for a memory measurement.
//!
//! Layout: `config.rs` the settings and their bounds; `inflight.rs` the
//! bookkeeping of unacknowledged messages; `stream.rs` one stream's life and
//! the state all streams share; `report.rs` latencies and the report;
//! `register.rs` the registration mode; this file the run's phases.

mod config;
mod handshakes;
mod inflight;
mod register;
mod report;
mod stream;

use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::transport::Channel;

pub use config::{LoadConfig, LoadError};
pub use handshakes::{HandshakeConfig, HandshakeReport, handshakes};
pub use inflight::{AckBeyondSent, Inflight};
pub use register::{RegisterConfig, RegisterReport, register};
pub use report::LoadReport;

use report::{histogram, process_cpu_seconds, summarize};
use stream::{Outcome, Phase, Shared, drive};

/// Runs the load described by `config` and reports what it achieved.
pub async fn run(config: LoadConfig) -> Result<LoadReport, LoadError> {
    config.validate()?;
    let channels = connect(
        &config.server,
        &config.credentials,
        config.connections,
        config.setup_timeout,
    )
    .await?;

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

/// Opens `n` HTTP/2 connections to `server`, each within `timeout`.
pub(crate) async fn connect(
    server: &str,
    credentials: &fleet_health_client::Credentials,
    n: u32,
    timeout: Duration,
) -> Result<Vec<Channel>, LoadError> {
    let endpoint = fleet_health_client::endpoint_with(server, timeout, credentials)?;
    let mut channels = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let channel = tokio::time::timeout(timeout, endpoint.connect())
            .await
            .map_err(|_| format!("no connection within {timeout:?}"))
            .and_then(|r| r.map_err(|e| error_chain(&e)))
            .map_err(|reason| LoadError::Connect {
                server: server.to_owned(),
                reason,
            })?;
        channels.push(channel);
    }
    Ok(channels)
}

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
