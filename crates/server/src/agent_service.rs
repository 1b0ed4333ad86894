//! `fleethealth.v1.AgentService`: one Report stream per agent process.
//!
//! The service is thin: it checks each message, hands it to the
//! [`Registry`], and answers. One task per stream reads the agent's messages in
//! order; acknowledgements go out through a small bounded channel, so an agent
//! that stops reading its acks stops being read (it cannot grow the server's
//! memory).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use fleet_health_proto::v1 as pb;
use fleet_health_proto::v1::agent_service_server::AgentService as AgentServiceApi;
use pb::report_request::Body as In;
use pb::report_response::Body as Out;
use tokio::sync::futures::OwnedNotified;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tokio_stream::Stream;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::cluster::node::ClusterNode;
use crate::commit_gate::CommitGate;
use crate::convert;
use crate::metrics::{EventCounts, Rejected};
use crate::model::AgentId;
use crate::open_streams::{self, EndSignal, OpenStreams, shutting_down};
use crate::registry::{Registry, Session};
use crate::security::limits::Permit;
use crate::security::sessions::SessionGuard;
use crate::security::{Caller, Place, REPORT, Security};
use fleet_health_sensor::Time;
use fleet_health_types::wire;

/// Limits on agent streams.
#[derive(Clone, Debug)]
pub struct StreamLimits {
    /// The most Report streams open at once.
    pub max_streams: usize,
    /// The most events in one message.
    pub max_batch: usize,
    /// Sustained events per second one stream may send (0: no limit); it may
    /// burst to twice that. A stream over it ends with RESOURCE_EXHAUSTED.
    ///
    /// The default, 100,000, is there to stop a runaway sender, not to slow a
    /// real one: an agent reports a few events a second, and one replaying a
    /// backlog after an outage sends it as fast as it can, in batches. The
    /// burst (200,000 events) takes twenty times the reporter's default
    /// backlog (10,000 events) at once, and the sustained rate lets hundreds
    /// of agents replay at the same time on one server. A sender that needs
    /// more raises it (`--max-stream-events-per-sec`) or lifts it (0).
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
            max_events_per_sec: 100_000,
            hello_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
        }
    }
}

/// The `fleethealth.v1.AgentService`: takes each agent's Report stream.
pub struct AgentService {
    registry: Registry,
    limits: Arc<StreamLimits>,
    open: Arc<AtomicUsize>,
    streams: OpenStreams,
    shutdown: watch::Receiver<bool>,
    security: Arc<Security>,
    cluster: Option<Arc<ClusterNode>>,
}

impl AgentService {
    /// This service on a cluster node: a stream is served only for an agent
    /// whose shard the node holds.
    pub fn in_cluster(mut self, node: Arc<ClusterNode>) -> AgentService {
        self.cluster = Some(node);
        self
    }

    /// A service over `registry`. `streams` is the table of open streams it
    /// shares with the [`FleetService`](crate::fleet_service::FleetService),
    /// whose forget ends an agent's stream; the server ends them all with
    /// [`OpenStreams::shut_down`] when it stops, and `shutdown` turning true
    /// ends the streams that have not said hello yet. `security` checks
    /// that a caller reports only for the agents it may speak for, and ends
    /// a stream whose credential is revoked.
    pub fn new(
        registry: Registry,
        limits: StreamLimits,
        streams: OpenStreams,
        shutdown: watch::Receiver<bool>,
        security: Arc<Security>,
    ) -> AgentService {
        AgentService {
            registry,
            limits: Arc::new(limits),
            open: Arc::new(AtomicUsize::new(0)),
            streams,
            shutdown,
            security,
            cluster: None,
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

/// An agent's stream as the registry and the table of open streams know it:
/// disconnected and unregistered when dropped, however the stream ends.
struct Connection {
    registry: Registry,
    streams: OpenStreams,
    session: Session,
    /// Set when a newer stream or a forget ends this one.
    ended: Arc<EndSignal>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.registry.disconnect(&self.session);
        self.streams.close(&self.session);
    }
}

type Reply = Result<pb::ReportResponse, Status>;

/// The metadata key of a Report stream one node passes on to another.
const FORWARDED: &str = "fleet-health-forwarded";

/// A stream passed on to the node that serves its agent: what the agent
/// sends goes there, what that node answers comes back.
struct Forward {
    /// Where the agent's messages go; `None` once the agent is done sending.
    to_owner: Option<tokio::sync::mpsc::Sender<pb::ReportRequest>>,
    from_owner: Streaming<pb::ReportResponse>,
}

/// A status from the node a stream was passed on to, as the agent sees it:
/// the node's own words, except that failing to reach it is UNAVAILABLE.
fn passed_on(status: Status) -> Status {
    match status.code() {
        Code::Unknown | Code::Internal if status.message().contains("transport") => {
            Status::unavailable(format!(
                "the server that serves this agent cannot be reached now: {}; reconnect",
                status.message()
            ))
        }
        _ => status,
    }
}

/// The status for an agent whose shard this node does not serve.
fn not_served(node: &ClusterNode, id: &AgentId) -> Status {
    Status::unavailable(format!(
        "agent {id} (shard {}) is served by another server of the cluster, or its shard is changing hands; reconnect",
        node.shard_of(id.as_str())
    ))
}

#[tonic::async_trait]
impl AgentServiceApi for AgentService {
    type ReportStream = Pin<Box<dyn Stream<Item = Reply> + Send>>;

    async fn report(
        &self,
        request: Request<Streaming<pb::ReportRequest>>,
    ) -> Result<Response<Self::ReportStream>, Status> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.limits.max_streams {
            self.open.fetch_sub(1, Ordering::AcqRel);
            self.registry.metrics().count_rejected(Rejected::MaxStreams);
            tracing::info!(
                max_streams = self.limits.max_streams,
                "agent stream refused: --max-streams reached"
            );
            return Err(Status::resource_exhausted(format!(
                "the server already holds {} agent streams, its limit (--max-streams)",
                self.limits.max_streams
            )));
        }
        self.registry.metrics().streams(1);
        let opened = Instant::now();
        let caller = request.extensions().get::<Caller>().cloned();
        let forwarded = request.metadata().contains_key(FORWARDED);
        let permit = match self.security.admit(caller.as_ref(), Place::Stream, REPORT) {
            Ok(p) => p,
            Err(status) => {
                self.open.fetch_sub(1, Ordering::AcqRel);
                self.registry.metrics().streams(-1);
                return Err(status);
            }
        };
        let session = caller
            .as_ref()
            .map(|c| self.security.sessions().open(c, REPORT));
        let stream = ReportStream {
            caller,
            permit,
            session,
            security: self.security.clone(),
            slot: Some(StreamSlot {
                open: self.open.clone(),
                registry: self.registry.clone(),
            }),
            registry: self.registry.clone(),
            streams: self.streams.clone(),
            cluster: self.cluster.clone(),
            forwarded,
            forward: None,
            bucket: TokenBucket::new(self.limits.max_events_per_sec),
            limits: self.limits.clone(),
            inbound: request.into_inner(),
            shutdown: self.shutdown.clone(),
            commits: self.registry.commits(),
            commit_wait: None,
            connection: None,
            waiting: VecDeque::new(),
            silence: Box::pin(tokio::time::sleep_until(opened + self.limits.hello_timeout)),
            heard: opened,
            draining: false,
            counts: EventCounts::default(),
            deferred: None,
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
    /// Who opened it (when security is on).
    caller: Option<Caller>,
    /// Its place among the identity's streams, and the identity's event rate.
    permit: Option<Permit>,
    /// Its place among the streams a revocation can end.
    session: Option<SessionGuard>,
    security: Arc<Security>,
    /// Freed before the final status goes out, so that an agent told of the
    /// end may open a new stream at once.
    slot: Option<StreamSlot>,
    registry: Registry,
    streams: OpenStreams,
    /// On a cluster node: which agents it serves.
    cluster: Option<Arc<ClusterNode>>,
    /// Whether another node passed this stream on (it is not passed on
    /// again).
    forwarded: bool,
    /// The stream passed on to the agent's owner, once the hello named an
    /// agent that another node serves.
    forward: Option<Box<Forward>>,
    /// Shared by every stream: one pointer each.
    limits: Arc<StreamLimits>,
    bucket: TokenBucket,
    inbound: Streaming<pb::ReportRequest>,
    /// Awaited until the hello; then the connection's end signal says it.
    shutdown: watch::Receiver<bool>,
    /// Where commits are awaited (`None` without a store).
    commits: Option<Arc<CommitGate>>,
    /// The wait for the commit of the oldest waiting ack, kept across
    /// messages (made once per commit awaited, not once per message).
    commit_wait: Option<Pin<Box<OwnedNotified>>>,
    connection: Option<Connection>,
    /// Acks whose events are applied but not yet committed, oldest first.
    waiting: VecDeque<(u64, pb::Ack, Instant)>,
    /// Fires when the agent may have been silent too long: the hello
    /// timeout, then the idle timeout. Moved on lazily (when it fires, from
    /// `heard`), so a message costs no timer work.
    silence: Pin<Box<Sleep>>,
    /// When the agent's last message came (or the stream opened).
    heard: Instant,
    /// The agent half-closed its side: the acks still waiting for their
    /// commit go out, then the stream ends.
    draining: bool,
    /// The events applied since the last answer, added to the shared
    /// counters once per answer (and when the stream is dropped).
    counts: EventCounts,
    /// How the stream ends once what was read before is acknowledged: a
    /// message read in a burst ([`ReportStream::take_arrived`]) was refused
    /// or could not be read.
    deferred: Option<End>,
    done: bool,
}

/// When a message arrived: on the monotonic clock (rate limits, silence,
/// ack latency) and on the registry's (the events' default time). Messages
/// that arrived together share one.
#[derive(Clone, Copy)]
struct Received {
    at: Instant,
    now: Time,
}

impl Drop for ReportStream {
    fn drop(&mut self) {
        // A stream dropped while it waited (its agent reset it, say) still
        // counts what it applied.
        self.registry.metrics().count(&mut self.counts);
    }
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

/// The most messages read in one go, without waiting: those that had
/// already arrived when the first was applied (without a store, one ack
/// answers them all).
const MAX_FOLDED_MESSAGES: usize = 64;

impl ReportStream {
    /// The next message for the agent, or `None` when the stream is over.
    async fn step(&mut self) -> Option<Reply> {
        if self.done {
            return None;
        }
        if self.forward.is_some() {
            return self.relay().await;
        }
        let next = match &self.connection {
            // Boxed: the hello's state is large and needed once; the stream
            // keeps only the (smaller) state of the event loop.
            None => Box::pin(self.hello()).await,
            Some(_) => self.next_ack().await,
        };
        self.registry.metrics().count(&mut self.counts);
        match next {
            Ok(msg) => Some(Ok(msg)),
            Err(end) => {
                self.done = true;
                // Taking the connection disconnects the agent (on drop).
                let agent = self.connection.take().map(|c| c.session.id.clone());
                self.slot = None;
                match end {
                    End::Closed => None,
                    End::Status(status) => {
                        if matches!(status.code(), Code::Unavailable | Code::Aborted) {
                            tracing::debug!(agent_id = ?agent, code = ?status.code(), message = status.message(), "agent stream ended");
                        } else {
                            let why = Rejected::of_stream(status.code());
                            self.registry.metrics().count_rejected(why);
                            if crate::log_limit::REJECTIONS.allow() {
                                tracing::info!(agent_id = ?agent, reason = why.as_str(), message = status.message(), "agent stream refused");
                            }
                        }
                        Some(Err(status))
                    }
                }
            }
        }
    }

    /// A stream passed on: the next answer of the owner, passing on what
    /// the agent sends meanwhile.
    async fn relay(&mut self) -> Option<Reply> {
        let forward = self.forward.as_mut()?;
        loop {
            tokio::select! {
                biased;
                () = crate::stopped(&mut self.shutdown) => {
                    self.done = true;
                    return Some(Err(shutting_down()));
                }
                // The caller's credential is checked here, where it
                // connected: revoked, the stream passed on ends too.
                () = revoked(&self.session) => {
                    self.done = true;
                    return Some(Err(open_streams::revoked()));
                }
                answer = forward.from_owner.message() => {
                    return match answer {
                        Ok(Some(m)) => Some(Ok(m)),
                        Ok(None) => {
                            self.done = true;
                            None
                        }
                        Err(status) => {
                            self.done = true;
                            Some(Err(status))
                        }
                    };
                }
                msg = self.inbound.message(), if forward.to_owner.is_some() => match msg {
                    Ok(Some(m)) => {
                        let gone = match &forward.to_owner {
                            Some(tx) => tx.send(m).await.is_err(),
                            None => false,
                        };
                        if gone {
                            forward.to_owner = None;
                        }
                    }
                    // The agent is done sending: so is the stream passed on.
                    Ok(None) => forward.to_owner = None,
                    Err(status) => {
                        self.done = true;
                        return match unreadable(status) {
                            End::Status(status) => Some(Err(status)),
                            End::Closed => None,
                        };
                    }
                },
            }
        }
    }

    /// Passes the stream, whose hello is `hello`, on to the node at
    /// `address` that serves its agent.
    async fn pass_on(
        &mut self,
        node: &ClusterNode,
        address: &str,
        hello: pb::Hello,
    ) -> Result<pb::ReportResponse, End> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let _ = tx
            .send(pb::ReportRequest {
                body: Some(In::Hello(hello)),
            })
            .await;
        let mut request = Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        if let Ok(value) = node.id().parse() {
            request.metadata_mut().insert(FORWARDED, value);
        }
        node.stamp(&mut request, self.caller.as_ref());
        node.metrics().passed_on(true);
        let mut client = fleet_health_proto::v1::agent_service_client::AgentServiceClient::new(
            node.channel(address),
        );
        let mut from_owner = client
            .report(request)
            .await
            .map_err(|s| End::Status(passed_on(s)))?
            .into_inner();
        // The owner's first answer (its welcome, or why not) is this
        // stream's.
        let first = match from_owner.message().await {
            Ok(Some(m)) => m,
            Ok(None) => return Err(End::Closed),
            Err(status) => return Err(End::Status(passed_on(status))),
        };
        self.forward = Some(Box::new(Forward {
            to_owner: Some(tx),
            from_owner,
        }));
        Ok(first)
    }

    /// How long the agent may be silent now.
    fn allowed_silence(&self) -> Duration {
        if self.connection.is_some() {
            self.limits.idle_timeout
        } else {
            self.limits.hello_timeout
        }
    }

    /// The silence timer fired: moves it on if the agent spoke since it was
    /// set; otherwise the stream has timed out.
    fn silence_elapsed(&mut self) -> Result<(), End> {
        let allowed = self.allowed_silence();
        let due = self.heard + allowed;
        if due > self.silence.deadline() {
            self.silence.as_mut().reset(due);
            return Ok(());
        }
        Err(End::Status(Status::deadline_exceeded(format!(
            "no message for {}s: closing the stream (send heartbeats)",
            allowed.as_secs()
        ))))
    }

    async fn hello(&mut self) -> Result<pb::ReportResponse, End> {
        let first = loop {
            tokio::select! {
                biased;
                () = crate::stopped(&mut self.shutdown) => return Err(End::Status(shutting_down())),
                () = revoked(&self.session) => return Err(End::Status(open_streams::revoked())),
                () = self.silence.as_mut() => self.silence_elapsed()?,
                msg = self.inbound.message() => match msg {
                    Ok(Some(m)) => break m,
                    Ok(None) => return Err(End::Closed),
                    Err(status) => return Err(unreadable(status)),
                },
            }
        };
        self.heard = Instant::now();
        let hello = match first.body {
            Some(In::Hello(h)) => h,
            _ => {
                return Err(End::Status(Status::invalid_argument(
                    "the first message of a Report stream must be a Hello naming the agent",
                )));
            }
        };
        let id = wire::agent_id(&hello.agent_id).map_err(|e| End::Status(e.into()))?;
        self.security
            .check_report(self.caller.as_ref(), id.as_str())
            .map_err(End::Status)?;
        if let Some(node) = self.cluster.clone()
            && !node.serves(id.as_str())
        {
            // Another node serves the agent: the stream goes there, unless
            // it came from another node already (its route was stale).
            return match node.route_of(id.as_str()) {
                Some(address) if !self.forwarded => self.pass_on(&node, &address, hello).await,
                _ => Err(End::Status(not_served(&node, &id))),
            };
        }
        if hello.incarnation == 0 {
            return Err(End::Status(Status::invalid_argument(
                "incarnation must be non-zero (a random number picked once per process life)",
            )));
        }
        let labels = wire::labels(&hello.labels).map_err(|e| End::Status(e.into()))?;
        let connected = self
            .registry
            .connect(&id, hello.incarnation, labels)
            .map_err(|e| End::Status(e.into()))?;
        let last_applied_seq = connected.last_applied_seq;
        // Ends the agent's older stream, if any, at once.
        let ended = match self.streams.open(&self.registry, &connected.session) {
            Ok(signal) => signal,
            Err(why) => {
                // A newer stream or a forget came first: nothing to keep.
                self.registry.disconnect(&connected.session);
                return Err(End::Status(why.status(&id)));
            }
        };
        // The shard may have moved while the agent connected: then the
        // stream ends here, and nothing of it is acknowledged.
        if let Some(node) = &self.cluster
            && !node.serves(id.as_str())
        {
            self.streams.close(&connected.session);
            self.registry.disconnect(&connected.session);
            return Err(End::Status(not_served(node, &id)));
        }
        let connection = Connection {
            registry: self.registry.clone(),
            streams: self.streams.clone(),
            session: connected.session,
            ended,
        };
        let ended = connection.ended.clone();
        self.connection = Some(connection);
        // The welcome tells the agent what it may drop: only what is
        // committed. (From here on, shutdown comes through `ended`.)
        if let Some(gate) = &self.commits {
            tokio::select! {
                () = gate.committed_through(connected.commit) => {}
                why = ended.ended() => return Err(End::Status(why.status(&id))),
                () = revoked(&self.session) => return Err(End::Status(open_streams::revoked())),
            }
        }
        tracing::debug!(agent_id = %id, incarnation = hello.incarnation, last_applied_seq, "agent connected");
        Ok(pb::ReportResponse {
            body: Some(Out::Welcome(pb::Welcome {
                heartbeat_interval: Some(wire::duration(self.registry.rules().heartbeat)),
                last_applied_seq,
                server_time: Some(wire::timestamp(self.registry.clock().now())),
            })),
        })
    }

    /// Reads and applies messages until an acknowledgement can go out.
    async fn next_ack(&mut self) -> Result<pb::ReportResponse, End> {
        loop {
            // An ended stream acknowledges nothing more: its agent's changes
            // may have been left out of the commit that is marked done (its
            // shard moved to another server).
            if let Some(connection) = &self.connection
                && let Some(why) = connection.ended.is_ended()
            {
                return Err(End::Status(why.status(&connection.session.id)));
            }
            if let Some((ack, received)) = self.ready_ack() {
                self.registry.metrics().observe_ack(received.elapsed());
                return Ok(pb::ReportResponse {
                    body: Some(Out::Ack(ack)),
                });
            }
            if self.waiting.is_empty() {
                // What was read before a refused message is acknowledged
                // first; then the refusal ends the stream.
                if let Some(end) = self.deferred.take() {
                    return Err(end);
                }
                if self.draining {
                    return Err(End::Closed);
                }
            }
            if self.commit_wait.is_none()
                && let (Some(gate), Some((epoch, _, _))) = (&self.commits, self.waiting.front())
            {
                match gate.wait(*epoch) {
                    Some(wait) => self.commit_wait = Some(Box::pin(wait)),
                    // Committed since `ready_ack` looked.
                    None => continue,
                }
            }
            let full = self.waiting.len() >= MAX_UNCOMMITTED_MESSAGES;
            let read = !self.draining && !full && self.deferred.is_none();
            let Some(connection) = &self.connection else {
                return Err(End::Status(Status::internal("events before a hello")));
            };
            tokio::select! {
                biased;
                why = connection.ended.ended() => {
                    return Err(End::Status(why.status(&connection.session.id)));
                }
                () = revoked(&self.session) => return Err(End::Status(open_streams::revoked())),
                () = committed(&mut self.commit_wait) => {
                    self.commit_wait = None;
                    if full {
                        // The agent was not read while commits caught up:
                        // its silence counts from now.
                        self.heard = Instant::now();
                    }
                }
                () = self.silence.as_mut(), if read => self.silence_elapsed()?,
                msg = self.inbound.message(), if read => match msg {
                    Ok(Some(m)) => {
                        let received = Received {
                            at: Instant::now(),
                            now: self.registry.clock().now(),
                        };
                        self.heard = received.at;
                        let first = self.apply(m, received).map_err(End::Status)?;
                        if let Some(ack) = self.take_arrived(first, received) {
                            self.registry.metrics().observe_ack(received.at.elapsed());
                            return Ok(pb::ReportResponse { body: Some(Out::Ack(ack)) });
                        }
                    }
                    // The agent is done sending; what it sent is still acked.
                    Ok(None) => self.draining = true,
                    Err(status) => return Err(unreadable(status)),
                },
            }
        }
    }

    /// Takes the messages that have already arrived behind the one just
    /// applied (whose ack and commit are `first`), without waiting for more:
    /// at most [`MAX_FOLDED_MESSAGES`] in all, and no more than
    /// [`MAX_UNCOMMITTED_MESSAGES`] waiting for their commit. An ack whose
    /// events need no commit (there is no store) is ready at once, and the
    /// ready ones fold into the one cumulative ack returned, so that a burst
    /// costs one answer rather than one per message; the others wait for
    /// their commit, as one read at a time would. A message that is refused or
    /// cannot be read ends the stream once what was read before it is
    /// acknowledged ([`ReportStream::deferred`]); a half-close, likewise.
    fn take_arrived(&mut self, first: (pb::Ack, u64), received: Received) -> Option<pb::Ack> {
        let mut ready: Option<pb::Ack> = None;
        let mut next = first;
        // Polled without a waker of its own: a message not there yet is
        // awaited, with the task's waker, by the next read.
        let mut cx = Context::from_waker(Waker::noop());
        for taken in 1.. {
            match next {
                (ack, 0) => {
                    let clamped = ready.map_or(0, |r| r.clamped);
                    ready = Some(pb::Ack {
                        clamped: clamped + ack.clamped,
                        ..ack
                    });
                }
                (ack, commit) => self.waiting.push_back((commit, ack, received.at)),
            }
            if taken >= MAX_FOLDED_MESSAGES || self.waiting.len() >= MAX_UNCOMMITTED_MESSAGES {
                break;
            }
            next = match Pin::new(&mut self.inbound).poll_next(&mut cx) {
                Poll::Ready(Some(Ok(m))) => match self.apply(m, received) {
                    Ok(applied) => applied,
                    Err(status) => {
                        self.deferred = Some(End::Status(status));
                        break;
                    }
                },
                Poll::Ready(Some(Err(status))) => {
                    self.deferred = Some(unreadable(status));
                    break;
                }
                Poll::Ready(None) => {
                    self.draining = true;
                    break;
                }
                Poll::Pending => break,
            };
        }
        ready
    }

    /// The newest acknowledgement whose commit is done (acks are cumulative:
    /// it says all the earlier ones too).
    fn ready_ack(&mut self) -> Option<(pb::Ack, Instant)> {
        let done = self.commits.as_ref()?.committed();
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
        if ready.is_some() {
            // The wait was for an epoch now behind.
            self.commit_wait = None;
        }
        ready
    }

    /// Checks and applies one message; returns its ack and the commit to
    /// wait for.
    fn apply(
        &mut self,
        msg: pb::ReportRequest,
        received: Received,
    ) -> Result<(pb::Ack, u64), Status> {
        let Received { at: received, now } = received;
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
            let rate = self.limits.max_events_per_sec;
            return Err(Status::resource_exhausted(format!(
                "this stream sent more than {rate} events/s (bursts up to {}), the server's \
                 limit per stream; send more slowly, or raise the limit on the server \
                 with --max-stream-events-per-sec or FLEET_HEALTH_MAX_STREAM_EVENTS_PER_SEC \
                 (0: no limit)",
                u64::from(rate) * 2
            )));
        }
        if let Some(permit) = &self.permit
            && !permit.take_events(events.len() as u32, received)
        {
            let status = permit.events_refused();
            if let Some(caller) = &self.caller {
                self.security.refuse_limit(caller, REPORT, &status);
            }
            return Err(status);
        }
        let Some(connection) = &self.connection else {
            return Err(Status::internal("events before a hello"));
        };
        let applied =
            self.registry
                .apply_at(&connection.session, &events, now, &mut self.counts)?;
        let ack = pb::Ack {
            applied_through: applied.applied_through,
            clamped: applied.clamped,
        };
        Ok((ack, applied.commit))
    }
}

/// What a failed read of the agent's next message means: a message the
/// agent got wrong (it cannot be decoded, or is too large) ends the stream
/// with that status; anything else is the connection going away.
/// Resolves when the stream's credential is revoked (never without one).
async fn revoked(session: &Option<SessionGuard>) {
    match session {
        Some(s) => s.revoked().await,
        None => std::future::pending().await,
    }
}

fn unreadable(status: Status) -> End {
    match status.code() {
        Code::InvalidArgument | Code::OutOfRange | Code::ResourceExhausted => End::Status(status),
        _ => End::Closed,
    }
}

/// Waits for the commit `wait` is for; never resolves without one.
async fn committed(wait: &mut Option<Pin<Box<OwnedNotified>>>) {
    match wait {
        Some(w) => w.as_mut().await,
        None => std::future::pending().await,
    }
}

/// A token bucket of events per second, with a burst of two seconds' worth.
/// A token bucket: `per_sec` tokens a second, bursts of twice that; 0: no limit.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    rate: f64,
    tokens: f64,
    at: Option<Instant>,
}

impl TokenBucket {
    pub(crate) fn new(per_sec: u32) -> TokenBucket {
        TokenBucket {
            rate: f64::from(per_sec),
            tokens: 2.0 * f64::from(per_sec),
            at: None,
        }
    }

    pub(crate) fn take(&mut self, n: u32, now: Instant) -> bool {
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
