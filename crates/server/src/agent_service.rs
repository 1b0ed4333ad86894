//! `fleethealth.v1.AgentService`: one Report stream per agent process.
//!
//! The service is thin: it checks each message, hands it to the
//! [`Registry`], and answers. One task per stream reads the agent's messages in
//! order; acknowledgements go out through a small bounded channel, so an agent
//! that stops reading its acks stops being read (it cannot grow the server's
//! memory).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fleet_health_proto::v1 as pb;
use fleet_health_proto::v1::agent_service_server::AgentService;
use pb::report_request::Body as In;
use pb::report_response::Body as Out;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::convert;
use crate::registry::{Registry, Session};

/// Limits on agent streams.
#[derive(Clone, Debug)]
pub struct StreamLimits {
    /// The most Report streams open at once.
    pub max_streams: usize,
    /// The most events in one message.
    pub max_batch: usize,
    /// Sustained events per second one stream may send (0: no limit); it may
    /// burst to twice that.
    pub max_events_per_sec: u32,
    /// How long a new stream may take to say hello.
    pub hello_timeout: Duration,
    /// A stream with no message for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for StreamLimits {
    fn default() -> StreamLimits {
        StreamLimits {
            max_streams: 200_000,
            max_batch: 4096,
            max_events_per_sec: 10_000,
            hello_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
        }
    }
}

/// The AgentService implementation.
pub struct AgentSvc {
    registry: Registry,
    limits: StreamLimits,
    open: Arc<AtomicUsize>,
    shutdown: watch::Receiver<bool>,
}

impl AgentSvc {
    /// A service over `registry` that ends its streams when `shutdown` turns true.
    pub fn new(
        registry: Registry,
        limits: StreamLimits,
        shutdown: watch::Receiver<bool>,
    ) -> AgentSvc {
        AgentSvc {
            registry,
            limits,
            open: Arc::new(AtomicUsize::new(0)),
            shutdown,
        }
    }
}

/// Counts an open stream for as long as it lives.
struct StreamSlot {
    open: Arc<AtomicUsize>,
    registry: Registry,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.registry.metrics().streams(-1);
    }
}

type Reply = Result<pb::ReportResponse, Status>;

#[tonic::async_trait]
impl AgentService for AgentSvc {
    type ReportStream = ReceiverStream<Reply>;

    async fn report(
        &self,
        request: Request<Streaming<pb::ReportRequest>>,
    ) -> Result<Response<Self::ReportStream>, Status> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.limits.max_streams {
            self.open.fetch_sub(1, Ordering::AcqRel);
            self.registry.metrics().count_rejected();
            return Err(Status::resource_exhausted(format!(
                "the server already holds {} agent streams, its limit (--max-streams)",
                self.limits.max_streams
            )));
        }
        self.registry.metrics().streams(1);
        let slot = StreamSlot {
            open: self.open.clone(),
            registry: self.registry.clone(),
        };
        let (tx, rx) = mpsc::channel(16);
        let stream = ReportStream {
            registry: self.registry.clone(),
            limits: self.limits.clone(),
            inbound: request.into_inner(),
            tx,
            shutdown: self.shutdown.clone(),
        };
        tokio::spawn(stream.run(slot));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// One agent's stream.
struct ReportStream {
    registry: Registry,
    limits: StreamLimits,
    inbound: Streaming<pb::ReportRequest>,
    tx: mpsc::Sender<Reply>,
    shutdown: watch::Receiver<bool>,
}

/// What ended a stream.
enum End {
    /// The agent closed it, or went away.
    Closed,
    /// A status to send the agent.
    Status(Status),
}

impl ReportStream {
    /// Serves the stream; its slot is freed before the final status goes
    /// out, so an agent told of the end may open a new stream at once.
    async fn run(mut self, slot: StreamSlot) {
        let end = match self.hello().await {
            Ok(session) => {
                let end = self.events(&session).await;
                self.registry.disconnect(&session);
                if let End::Status(status) = &end {
                    tracing::debug!(agent_id = %session.id, code = ?status.code(), message = status.message(), "agent stream ended");
                }
                end
            }
            Err(end) => end,
        };
        drop(slot);
        if let End::Status(status) = end {
            self.fail(status).await;
        }
    }

    async fn fail(&self, status: Status) {
        if !matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::Aborted
        ) {
            self.registry.metrics().count_rejected();
        }
        // If the agent has gone, there is nobody to tell.
        let _ = self.tx.send(Err(status)).await;
    }

    /// Waits for the next message, the idle timeout, or shutdown.
    async fn next(&mut self, wait: Duration) -> Result<pb::ReportRequest, End> {
        tokio::select! {
            msg = tokio::time::timeout(wait, self.inbound.message()) => match msg {
                Ok(Ok(Some(m))) => Ok(m),
                Ok(Ok(None)) => Err(End::Closed),
                Ok(Err(status)) => {
                    // A message over the size limit, or a broken connection.
                    if status.code() == tonic::Code::OutOfRange || status.code() == tonic::Code::ResourceExhausted {
                        Err(End::Status(status))
                    } else {
                        Err(End::Closed)
                    }
                }
                Err(_) => Err(End::Status(Status::deadline_exceeded(format!(
                    "no message for {}s: closing the stream (send heartbeats)",
                    wait.as_secs()
                )))),
            },
            () = crate::stopped(&mut self.shutdown) => {
                Err(End::Status(Status::unavailable("the server is shutting down; reconnect")))
            }
        }
    }

    async fn hello(&mut self) -> Result<Session, End> {
        let first = self.next(self.limits.hello_timeout).await?;
        let hello = match first.body {
            Some(In::Hello(h)) => h,
            _ => {
                return Err(End::Status(Status::invalid_argument(
                    "the first message of a Report stream must be a Hello naming the agent",
                )));
            }
        };
        let id = convert::agent_id(&hello.agent_id).map_err(End::Status)?;
        if hello.incarnation == 0 {
            return Err(End::Status(Status::invalid_argument(
                "incarnation must be non-zero (a random number picked once per process life)",
            )));
        }
        let labels = convert::labels(&hello.labels).map_err(End::Status)?;
        let connected = self
            .registry
            .connect(&id, hello.incarnation, labels)
            .map_err(|e| End::Status(e.into()))?;
        let (session, last_applied_seq) = (connected.session, connected.last_applied_seq);
        // The welcome tells the agent what it may drop: only what is committed.
        if let Some(mut commits) = self.registry.commits() {
            let committed = tokio::select! {
                r = commits.wait_for(|c| *c >= connected.commit) => r.is_ok(),
                () = crate::stopped(&mut self.shutdown) => false,
            };
            if !committed {
                self.registry.disconnect(&session);
                return Err(End::Status(Status::unavailable(
                    "the server is shutting down; reconnect",
                )));
            }
        }
        tracing::debug!(agent_id = %id, incarnation = hello.incarnation, last_applied_seq, "agent connected");
        let welcome = pb::ReportResponse {
            body: Some(Out::Welcome(pb::Welcome {
                heartbeat_interval: prost_types::Duration::try_from(
                    self.registry.rules().heartbeat,
                )
                .ok(),
                last_applied_seq,
                server_time: Some(convert::timestamp(self.registry.clock().now())),
            })),
        };
        if self.tx.send(Ok(welcome)).await.is_err() {
            self.registry.disconnect(&session);
            return Err(End::Closed);
        }
        Ok(session)
    }

    async fn events(&mut self, session: &Session) -> End {
        let mut bucket = TokenBucket::new(self.limits.max_events_per_sec);
        let mut commits = self.registry.commits();
        // Acks whose events are applied but not yet committed, oldest first.
        let mut waiting: VecDeque<(u64, pb::Ack, Instant)> = VecDeque::new();
        loop {
            if let Some(rx) = &commits {
                let done = *rx.borrow();
                let mut ready: Option<(pb::Ack, Instant)> = None;
                while waiting.front().is_some_and(|(epoch, _, _)| *epoch <= done) {
                    if let Some((_, ack, at)) = waiting.pop_front() {
                        // Acks are cumulative: the newest ready one says it all.
                        let clamped = ready.as_ref().map_or(0, |(a, _)| a.clamped);
                        ready = Some((
                            pb::Ack {
                                clamped: ack.clamped + clamped,
                                ..ack
                            },
                            at,
                        ));
                    }
                }
                if let Some((ack, received)) = ready
                    && let Err(end) = self.ack(ack, received).await
                {
                    return end;
                }
            }
            let read = waiting.len() < MAX_UNCOMMITTED_MESSAGES;
            tokio::select! {
                msg = self.next(self.limits.idle_timeout), if read => {
                    let msg = match msg {
                        Ok(m) => m,
                        Err(end) => return end,
                    };
                    let received = Instant::now();
                    let (ack, commit) = match self.apply(session, msg, &mut bucket, received) {
                        Ok(x) => x,
                        Err(status) => return End::Status(status),
                    };
                    if commit == 0 {
                        if let Err(end) = self.ack(ack, received).await {
                            return end;
                        }
                    } else {
                        waiting.push_back((commit, ack, received));
                    }
                }
                changed = wait_changed(&mut commits), if !waiting.is_empty() => {
                    if !changed {
                        return End::Status(Status::unavailable("the store stopped; reconnect"));
                    }
                }
            }
        }
    }

    /// Checks and applies one message; returns its ack and the commit to
    /// wait for.
    fn apply(
        &self,
        session: &Session,
        msg: pb::ReportRequest,
        bucket: &mut TokenBucket,
        received: Instant,
    ) -> Result<(pb::Ack, u64), Status> {
        let batch = match msg.body {
            Some(In::Events(b)) => b,
            Some(In::Hello(_)) => {
                return Err(Status::invalid_argument(
                    "a Hello may only be the first message of a stream",
                ));
            }
            None => return Err(Status::invalid_argument("an empty message")),
        };
        let events = convert::events(&batch, self.limits.max_batch)?;
        if !bucket.take(events.len() as u32, received) {
            return Err(Status::resource_exhausted(format!(
                "this stream sends more than {} events/s (--max-stream-events-per-sec); slow down",
                self.limits.max_events_per_sec
            )));
        }
        let applied = self.registry.apply(session, &events)?;
        let ack = pb::Ack {
            applied_through: applied.applied_through,
            clamped: applied.clamped,
        };
        Ok((ack, applied.commit))
    }

    async fn ack(&self, ack: pb::Ack, received: Instant) -> Result<(), End> {
        let msg = pb::ReportResponse {
            body: Some(Out::Ack(ack)),
        };
        self.tx.send(Ok(msg)).await.map_err(|_| End::Closed)?;
        self.registry.metrics().observe_ack(received.elapsed());
        Ok(())
    }
}

/// Messages applied but not yet committed that one stream may have; past
/// this, the stream is not read until commits catch up.
const MAX_UNCOMMITTED_MESSAGES: usize = 64;

/// Waits for the next commit; `false` if the committer is gone.
async fn wait_changed(commits: &mut Option<watch::Receiver<u64>>) -> bool {
    match commits {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

/// A token bucket of events per second, with a burst of two seconds' worth.
struct TokenBucket {
    rate: f64,
    tokens: f64,
    at: Option<Instant>,
}

impl TokenBucket {
    fn new(per_sec: u32) -> TokenBucket {
        TokenBucket {
            rate: f64::from(per_sec),
            tokens: 2.0 * f64::from(per_sec),
            at: None,
        }
    }

    fn take(&mut self, n: u32, now: Instant) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        if let Some(then) = self.at {
            let refill = now.duration_since(then).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + refill).min(2.0 * self.rate);
        }
        self.at = Some(now);
        if self.tokens >= f64::from(n) {
            self.tokens -= f64::from(n);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_allows_bursts_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100);
        assert!(b.take(200, t0));
        assert!(!b.take(1, t0));
        assert!(b.take(50, t0 + Duration::from_millis(500)));
        assert!(!b.take(1, t0 + Duration::from_millis(500)));
        let mut unlimited = TokenBucket::new(0);
        assert!(unlimited.take(u32::MAX, t0));
    }
}
