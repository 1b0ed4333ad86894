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
use std::pin::Pin;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_stream::Stream;
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
    limits: Arc<StreamLimits>,
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
            limits: Arc::new(limits),
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

/// An agent's stream as the registry knows it: disconnected when dropped,
/// however the stream ends.
struct Connection {
    registry: Registry,
    session: Session,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.registry.disconnect(&self.session);
    }
}

type Reply = Result<pb::ReportResponse, Status>;

#[tonic::async_trait]
impl AgentService for AgentSvc {
    type ReportStream = Pin<Box<dyn Stream<Item = Reply> + Send>>;

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
        let stream = ReportStream {
            slot: Some(StreamSlot {
                open: self.open.clone(),
                registry: self.registry.clone(),
            }),
            registry: self.registry.clone(),
            bucket: TokenBucket::new(self.limits.max_events_per_sec),
            limits: self.limits.clone(),
            inbound: request.into_inner(),
            shutdown: self.shutdown.clone(),
            commits: self.registry.commits(),
            connection: None,
            waiting: VecDeque::new(),
            done: false,
        };
        // The stream is driven by the task that sends the response (one per
        // HTTP/2 stream): no task or channel of our own, and an agent that
        // stops reading its acks stops being read.
        let replies = futures_util::stream::unfold(stream, |mut s| async move {
            let reply = s.step().await?;
            Some((reply, s))
        });
        Ok(Response::new(Box::pin(replies)))
    }
}

/// One agent's stream: a Hello, then events.
struct ReportStream {
    /// Freed before the final status goes out, so that an agent told of the
    /// end may open a new stream at once.
    slot: Option<StreamSlot>,
    registry: Registry,
    /// Shared by every stream: one pointer each.
    limits: Arc<StreamLimits>,
    bucket: TokenBucket,
    inbound: Streaming<pb::ReportRequest>,
    shutdown: watch::Receiver<bool>,
    commits: Option<watch::Receiver<u64>>,
    connection: Option<Connection>,
    /// Acks whose events are applied but not yet committed, oldest first.
    waiting: VecDeque<(u64, pb::Ack, Instant)>,
    done: bool,
}

/// What ended a stream.
enum End {
    /// The agent closed it, or went away.
    Closed,
    /// A status to send the agent.
    Status(Status),
}

/// Messages applied but not yet committed that one stream may have; past
/// this, the stream is not read until commits catch up.
const MAX_UNCOMMITTED_MESSAGES: usize = 64;

impl ReportStream {
    /// The next message for the agent, or `None` when the stream is over.
    async fn step(&mut self) -> Option<Reply> {
        if self.done {
            return None;
        }
        let next = match &self.connection {
            // Boxed: the hello's state is large and needed once; the stream
            // keeps only the (smaller) state of the event loop.
            None => Box::pin(self.hello()).await,
            Some(_) => self.next_ack().await,
        };
        match next {
            Ok(msg) => Some(Ok(msg)),
            Err(end) => {
                self.done = true;
                // Taking the connection disconnects the agent (on drop).
                if let Some(c) = self.connection.take()
                    && let End::Status(status) = &end
                {
                    tracing::debug!(agent_id = %c.session.id, code = ?status.code(), message = status.message(), "agent stream ended");
                }
                self.slot = None;
                match end {
                    End::Closed => None,
                    End::Status(status) => {
                        if !matches!(
                            status.code(),
                            tonic::Code::Unavailable | tonic::Code::Aborted
                        ) {
                            self.registry.metrics().count_rejected();
                        }
                        Some(Err(status))
                    }
                }
            }
        }
    }

    async fn hello(&mut self) -> Result<pb::ReportResponse, End> {
        let first = next(
            &mut self.inbound,
            &mut self.shutdown,
            self.limits.hello_timeout,
        )
        .await?;
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
        let last_applied_seq = connected.last_applied_seq;
        self.connection = Some(Connection {
            registry: self.registry.clone(),
            session: connected.session,
        });
        // The welcome tells the agent what it may drop: only what is committed.
        if let Some(commits) = &mut self.commits {
            let committed = tokio::select! {
                r = commits.wait_for(|c| *c >= connected.commit) => r.is_ok(),
                () = crate::stopped(&mut self.shutdown) => false,
            };
            if !committed {
                return Err(End::Status(Status::unavailable(
                    "the server is shutting down; reconnect",
                )));
            }
        }
        tracing::debug!(agent_id = %id, incarnation = hello.incarnation, last_applied_seq, "agent connected");
        Ok(pb::ReportResponse {
            body: Some(Out::Welcome(pb::Welcome {
                heartbeat_interval: prost_types::Duration::try_from(
                    self.registry.rules().heartbeat,
                )
                .ok(),
                last_applied_seq,
                server_time: Some(convert::timestamp(self.registry.clock().now())),
            })),
        })
    }

    /// Reads and applies messages until an acknowledgement can go out.
    async fn next_ack(&mut self) -> Result<pb::ReportResponse, End> {
        loop {
            if let Some((ack, received)) = self.ready_ack() {
                self.registry.metrics().observe_ack(received.elapsed());
                return Ok(pb::ReportResponse {
                    body: Some(Out::Ack(ack)),
                });
            }
            let read = self.waiting.len() < MAX_UNCOMMITTED_MESSAGES;
            tokio::select! {
                msg = next(&mut self.inbound, &mut self.shutdown, self.limits.idle_timeout), if read => {
                    let received = Instant::now();
                    let (ack, commit) = self.apply(msg?, received).map_err(End::Status)?;
                    if commit == 0 {
                        self.registry.metrics().observe_ack(received.elapsed());
                        return Ok(pb::ReportResponse { body: Some(Out::Ack(ack)) });
                    }
                    self.waiting.push_back((commit, ack, received));
                }
                changed = wait_changed(&mut self.commits), if !self.waiting.is_empty() => {
                    if !changed {
                        return Err(End::Status(Status::unavailable("the store stopped; reconnect")));
                    }
                }
            }
        }
    }

    /// The newest acknowledgement whose commit is done (acks are cumulative:
    /// it says all the earlier ones too).
    fn ready_ack(&mut self) -> Option<(pb::Ack, Instant)> {
        let done = *self.commits.as_ref()?.borrow();
        let mut ready: Option<(pb::Ack, Instant)> = None;
        while self
            .waiting
            .front()
            .is_some_and(|(epoch, _, _)| *epoch <= done)
        {
            if let Some((_, ack, at)) = self.waiting.pop_front() {
                let clamped = ready.as_ref().map_or(0, |(a, _)| a.clamped);
                ready = Some((
                    pb::Ack {
                        clamped: ack.clamped + clamped,
                        ..ack
                    },
                    ready.map_or(at, |(_, first)| first),
                ));
            }
        }
        ready
    }

    /// Checks and applies one message; returns its ack and the commit to
    /// wait for.
    fn apply(
        &mut self,
        msg: pb::ReportRequest,
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
        if !self.bucket.take(events.len() as u32, received) {
            return Err(Status::resource_exhausted(format!(
                "this stream sends more than {} events/s (--max-stream-events-per-sec); slow down",
                self.limits.max_events_per_sec
            )));
        }
        let Some(connection) = &self.connection else {
            return Err(Status::internal("events before a hello"));
        };
        let applied = self.registry.apply(&connection.session, &events)?;
        let ack = pb::Ack {
            applied_through: applied.applied_through,
            clamped: applied.clamped,
        };
        Ok((ack, applied.commit))
    }
}

/// Waits for the agent's next message, the timeout, or shutdown.
async fn next(
    inbound: &mut Streaming<pb::ReportRequest>,
    shutdown: &mut watch::Receiver<bool>,
    wait: Duration,
) -> Result<pb::ReportRequest, End> {
    tokio::select! {
        msg = tokio::time::timeout(wait, inbound.message()) => match msg {
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
        () = crate::stopped(shutdown) => {
            Err(End::Status(Status::unavailable("the server is shutting down; reconnect")))
        }
    }
}

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
