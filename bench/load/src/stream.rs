//! One Report stream: Hello, then pipelined batches until the run stops,
//! then drain and close; and the state every stream shares.

use std::pin::pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::SystemTime;

use fleet_health_proto::v1 as pb;
use fleet_health_proto::v1::agent_service_client::AgentServiceClient;
use hdrhistogram::Histogram;
use pb::report_request::Body as In;
use pb::report_response::Body as Out;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::config::{LoadConfig, MAX_PHASE};
use crate::inflight::Inflight;
use crate::report::Latencies;

/// Where the run is; every stream follows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Streams are saying Hello.
    Setup,
    /// Streams send.
    Run,
    /// Streams stop sending, drain and close.
    Stop,
}

/// State all streams share.
pub(crate) struct Shared {
    /// Acks count (and latencies are recorded) while this is set.
    pub(crate) measuring: AtomicBool,
    /// Messages left to send, if there is a budget.
    pub(crate) budget: Option<AtomicU64>,
    /// Streams whose sending is over (budget spent, stopped, or failed).
    pub(crate) finished: AtomicUsize,
    /// Told once every stream's sending is over.
    pub(crate) all_finished: Notify,
    pub(crate) streams: usize,
    /// Send-to-ack latencies of the window, in microseconds.
    pub(crate) latency: Mutex<Histogram<u64>>,
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
pub(crate) struct Outcome {
    pub(crate) sent: u64,
    pub(crate) acked_total: u64,
    pub(crate) measured_messages: u64,
    /// Acks received in the measured window (an ack may settle several
    /// messages: acks are cumulative).
    pub(crate) measured_acks: u64,
    pub(crate) unacked: u64,
}

/// One stream: Hello, then pipelined batches until told to stop, then drain
/// and close. An `Err` is what ended the stream.
pub(crate) async fn drive(
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
    let mut latencies = Latencies::new(&shared.latency);
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
                    outcome.measured_acks += 1;
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

/// A status as `Code: message`.
pub(crate) fn status_text(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
