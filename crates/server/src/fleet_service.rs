//! `fleethealth.v1.FleetService`: what operators and orchestrators ask.
//! Each method checks its request, asks the [`Registry`], and encodes.
//!
//! A watch sends its snapshot in pages read from the registry's index as it
//! goes (a cursor: the last agent ID sent), never a copy of the whole
//! matching set, so what a watcher holds is bounded by one page and its
//! outgoing queue ([`WATCH_QUEUE`] messages) however large the fleet; changes
//! it has not read wait in the registry's shared change feed, a ring of
//! fixed size (a watcher that falls out of it gets `resync` and a fresh
//! snapshot). A watcher that takes nothing for
//! [`WatchLimits::stall_timeout`], or falls out of the feed again after
//! staying behind that long, is ended with ABORTED (watch again: a fresh
//! snapshot follows). The server holds at most [`WatchLimits::max_watchers`]
//! watches, and each identity its own limit ([`FleetService::admit_watcher`]).

mod cluster;
mod ops;

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use fleet_health_proto::v1 as pb;
use fleet_health_proto::v1::fleet_service_server::FleetService as FleetServiceApi;
use futures_util::Stream;
use pb::watch_agents_response::Event as W;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::cluster::node::ClusterNode;
use crate::metrics::{Metrics, Rejected};
use crate::model::{AgentId, MaintenanceFilter, State, StateFilter, Why};
use crate::open_streams::{self, OpenStreams};
use crate::registry::{Change, Order, Registry, Selector, SortCursor};
use crate::security::limits::Permit;
use crate::security::sessions::SessionGuard;
use crate::security::{AuditEvent, Caller, Place, Security};
use fleet_health_types::wire;

/// Agents in a page when the request does not say.
pub const DEFAULT_PAGE_SIZE: usize = 1000;
/// The largest page.
pub const MAX_PAGE_SIZE: usize = 10_000;

/// Agents in one page of a watch's snapshot.
const SNAPSHOT_PAGE: usize = 256;
/// Messages queued for one watcher, at most.
pub const WATCH_QUEUE: usize = 64;

/// How watches are bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchLimits {
    /// Watches open at once, in all; more: RESOURCE_EXHAUSTED.
    pub max_watchers: usize,
    /// How long a watcher may take nothing of what is sent to it, or stay
    /// behind the changes (falling out of the change feed again), before it
    /// is ended with ABORTED, to watch again.
    pub stall_timeout: Duration,
}

impl Default for WatchLimits {
    fn default() -> WatchLimits {
        WatchLimits {
            max_watchers: 10_000,
            stall_timeout: Duration::from_secs(30),
        }
    }
}

/// On a cluster node: passes a call about one agent (`request.agent_id`)
/// on to the node that serves it, and returns that node's answer, unless
/// this node serves the agent.
macro_rules! pass_to_owner {
    ($self:ident, $request:ident, $method:ident) => {
        if let Some((node, owner)) =
            $self.owner_for($request.metadata(), &$request.get_ref().agent_id)?
        {
            let caller = $request.extensions().get::<Caller>().cloned();
            return cluster::pass(
                &node,
                caller.as_ref(),
                &owner,
                $request.into_inner(),
                |mut c, r| async move { c.$method(r).await },
            )
            .await;
        }
    };
}

/// A cluster's node, and the address of the node that serves an agent.
type Owner = (Arc<ClusterNode>, Arc<str>);

/// The `fleethealth.v1.FleetService`: what operators and orchestrators ask
/// (and the web view, in the server's own process).
#[derive(Clone)]
pub struct FleetService {
    registry: Registry,
    streams: OpenStreams,
    shutdown: watch::Receiver<bool>,
    security: Arc<Security>,
    watch: WatchLimits,
    watchers: Arc<AtomicUsize>,
    started_at: fleet_health_sensor::Time,
    cluster: Option<Arc<ClusterNode>>,
}

impl FleetService {
    /// This service on a cluster node: answers cover the whole cluster (see
    /// [`cluster`]).
    pub fn in_cluster(mut self, node: Arc<ClusterNode>) -> FleetService {
        self.cluster = Some(node);
        self
    }

    /// The cluster node, when a call is to be answered for the whole
    /// cluster (not a node's own part, asked by another node).
    fn whole(&self, metadata: &tonic::metadata::MetadataMap) -> Option<&Arc<ClusterNode>> {
        self.cluster.as_ref().filter(|_| !cluster::here(metadata))
    }

    /// Where a call about agent `id` is answered: `None` here (no cluster,
    /// or this node serves the agent), or the node that serves it. A call
    /// another node passed on for an agent this node does not serve (its
    /// route was stale: the shard is changing hands) is UNAVAILABLE, never
    /// "not known".
    fn owner_for(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        id: &str,
    ) -> Result<Option<Owner>, Status> {
        let Some(node) = &self.cluster else {
            return Ok(None);
        };
        if cluster::here(metadata) {
            return if node.serves(id) {
                Ok(None)
            } else {
                Err(cluster::changing_hands(node, id))
            };
        }
        Ok(cluster::owner_of(node, id)?.map(|owner| (node.clone(), owner)))
    }

    /// This node's own answer, marked with the shards it covers when it is
    /// a cluster node.
    fn own<T>(&self, message: T) -> Response<T> {
        match &self.cluster {
            Some(node) => cluster::mark(Response::new(message), node),
            None => Response::new(message),
        }
    }

    /// A service over `registry`; a forget ends the agent's stream in
    /// `streams` (the table the agent service keeps); watches end when
    /// `shutdown` turns true, or when `security` finds their credential
    /// revoked. Forgets go to `security`'s audit log.
    pub fn new(
        registry: Registry,
        streams: OpenStreams,
        shutdown: watch::Receiver<bool>,
        security: Arc<Security>,
        watch: WatchLimits,
    ) -> FleetService {
        FleetService {
            started_at: registry.clock().now(),
            registry,
            streams,
            shutdown,
            security,
            watch,
            watchers: Arc::new(AtomicUsize::new(0)),
            cluster: None,
        }
    }
}

/// Counts a watch for as long as it lives.
struct WatchSlot {
    watchers: Arc<AtomicUsize>,
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        self.watchers.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What lets a watch in: its place among all watches and among its
/// identity's.
struct Admission {
    _slot: WatchSlot,
    _permit: Option<Permit>,
}

/// The messages queued for one watcher, shared by the watcher (which empties
/// it when it ends the watch: a stalled connection may not take the status
/// for a long time, and nothing queued ahead of it is of use any more) and
/// the stream the transport reads. Lock: held only to take or drop messages.
/// Messages leave `fleet_health_watch_queued` when taken or dropped.
struct Queue {
    rx: Mutex<mpsc::Receiver<WatchItem>>,
    metrics: Arc<Metrics>,
}

impl Queue {
    fn rx(&self) -> std::sync::MutexGuard<'_, mpsc::Receiver<WatchItem>> {
        // A receiver stays consistent whatever panicked while holding it.
        self.rx.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<WatchItem>> {
        let next = self.rx().poll_recv(cx);
        if let Poll::Ready(Some(_)) = next {
            self.metrics.watch_queued(-1);
        }
        next
    }

    /// Closes the queue (nothing more can be queued) and drops what it holds.
    fn drain(&self) {
        let mut rx = self.rx();
        rx.close();
        let mut left = 0;
        while rx.try_recv().is_ok() {
            left += 1;
        }
        self.metrics.watch_queued(-left);
    }
}

/// A watch's answer: what the watcher queues, unless it was ended, in which
/// case the status that ended it goes first (whatever was still queued is
/// dropped: the client starts over with a fresh snapshot).
pub struct WatchStream {
    queue: Arc<Queue>,
    end: Option<oneshot::Receiver<Status>>,
    done: bool,
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.queue.drain();
    }
}

impl Stream for WatchStream {
    type Item = WatchItem;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<WatchItem>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(end) = self.end.as_mut() {
            match Pin::new(end).poll(cx) {
                Poll::Ready(Ok(status)) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(status)));
                }
                Poll::Ready(Err(_)) => self.end = None,
                Poll::Pending => {}
            }
        }
        match self.queue.poll_recv(cx) {
            Poll::Ready(None) => {
                self.done = true;
                // The watcher sends its status before it closes the queue:
                // a queue closed just now may have a status behind it.
                match self.end.as_mut().map(oneshot::Receiver::try_recv) {
                    Some(Ok(status)) => Poll::Ready(Some(Err(status))),
                    _ => Poll::Ready(None),
                }
            }
            other => other,
        }
    }
}

const WATCH: &str = "/fleethealth.v1.FleetService/WatchAgents";
/// The longest text a list may look for in IDs.
const MAX_ID_CONTAINS: usize = 256;
const FORGET: &str = "/fleethealth.v1.FleetService/ForgetAgent";

fn selector(
    filter: i32,
    why: &[i32],
    labels: &std::collections::HashMap<String, String>,
    maintenance: i32,
) -> Result<Selector, Status> {
    Ok(Selector {
        filter: StateFilter::try_from(filter)?,
        maintenance: MaintenanceFilter::try_from(maintenance)?,
        whys: why
            .iter()
            .map(|w| Why::try_from(*w))
            .collect::<Result<_, _>>()?,
        labels: wire::labels(labels)?,
        id_contains: None,
    })
}

/// The registry's order for a list's `order`.
fn list_order(order: i32) -> Result<Order, Status> {
    match pb::ListOrder::try_from(order) {
        Ok(pb::ListOrder::Unspecified) => Ok(Order::Id),
        Ok(pb::ListOrder::LongestFirst) => Ok(Order::LongestFirst),
        Ok(pb::ListOrder::NewestFirst) => Ok(Order::NewestFirst),
        Err(_) => Err(Status::invalid_argument(format!(
            "order {order} is not one of the list orders"
        ))),
    }
}

/// Page tokens: where the previous page of a list ended. By ID, the last
/// agent's ID (as the API has always given); by time in state, the order's
/// name, that agent's time (microseconds) and ID, separated by spaces, which
/// no agent ID holds: a token is refused in another order than the one it
/// was given for.
pub(crate) mod page_token {
    use tonic::Status;

    use crate::registry::{Order, SortCursor};
    use fleet_health_sensor::Time;
    use fleet_health_types::wire;

    const LONGEST: &str = "longest ";
    const NEWEST: &str = "newest ";

    /// The token that continues after `cursor`.
    pub(crate) fn after(cursor: &SortCursor, order: Order) -> String {
        match order {
            Order::Id => cursor.id.clone(),
            Order::LongestFirst => format!("{LONGEST}{} {}", cursor.since.as_micros(), cursor.id),
            Order::NewestFirst => format!("{NEWEST}{} {}", cursor.since.as_micros(), cursor.id),
        }
    }

    /// Where a page given `token` starts; `None` for the first page.
    pub(crate) fn parse(token: &str, order: Order) -> Result<Option<SortCursor>, Status> {
        if token.is_empty() {
            return Ok(None);
        }
        let refused =
            || Status::invalid_argument("page_token is not one this server gave for this order");
        let (since, id) = match order {
            Order::Id => (Time::ZERO, token),
            Order::LongestFirst | Order::NewestFirst => {
                let prefix = if order == Order::LongestFirst {
                    LONGEST
                } else {
                    NEWEST
                };
                let rest = token.strip_prefix(prefix).ok_or_else(refused)?;
                let (micros, id) = rest.split_once(' ').ok_or_else(refused)?;
                let micros: i64 = micros.parse().map_err(|_| refused())?;
                (Time::from_micros(micros).map_err(|_| refused())?, id)
            }
        };
        let id = wire::agent_id(id).map_err(|_| refused())?;
        Ok(Some(SortCursor {
            since,
            id: id.to_string(),
        }))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_token_continues_only_in_its_own_order() {
            let c = SortCursor {
                since: Time::from_micros(1_700_000_000_000_000).unwrap(),
                id: "web:1".into(),
            };
            for order in [Order::Id, Order::LongestFirst, Order::NewestFirst] {
                let token = after(&c, order);
                let back = parse(&token, order).unwrap().unwrap();
                assert_eq!(back.id, "web:1");
                if order != Order::Id {
                    assert_eq!(back.since, c.since);
                }
            }
            assert!(parse(&after(&c, Order::LongestFirst), Order::NewestFirst).is_err());
            assert!(parse(&after(&c, Order::NewestFirst), Order::Id).is_err());
            assert!(parse("longest x web-1", Order::LongestFirst).is_err());
            assert!(parse("longest 12", Order::LongestFirst).is_err());
            assert!(parse("", Order::NewestFirst).unwrap().is_none());
        }
    }
}

type WatchItem = Result<pb::WatchAgentsResponse, Status>;

#[tonic::async_trait]
impl FleetServiceApi for FleetService {
    #[tracing::instrument(level = "debug", skip_all, fields(agent_id = %request.get_ref().agent_id))]
    async fn get_agent(
        &self,
        request: Request<pb::GetAgentRequest>,
    ) -> Result<Response<pb::GetAgentResponse>, Status> {
        let routed = self.owner_for(request.metadata(), &request.get_ref().agent_id)?;
        let caller = request.extensions().get::<Caller>().cloned();
        let req = request.into_inner();
        let id = wire::agent_id(&req.agent_id)?;
        let at = wire::opt_time(req.at.as_ref(), "at")?;
        if let Some((node, owner)) = routed {
            return cluster::get(&node, caller.as_ref(), &owner, req).await;
        }
        let view = self.registry.get(&id, at)?;
        Ok(Response::new(pb::GetAgentResponse {
            agent: Some((&view).into()),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let whole = self.whole(request.metadata()).cloned();
        let caller = request.extensions().get::<Caller>().cloned();
        let req = request.into_inner();
        // A page may walk the whole fleet (sorted by time in state, or as of
        // another time): off the async workers.
        let own = {
            let (this, req) = (self.clone(), req.clone());
            tokio::task::spawn_blocking(move || this.list_here(req))
                .await
                .map_err(|e| Status::internal(format!("the list failed: {e}")))??
        };
        match whole {
            Some(node) => {
                let size = match req.page_size as usize {
                    0 => DEFAULT_PAGE_SIZE,
                    n => n.min(MAX_PAGE_SIZE),
                };
                Ok(Response::new(
                    cluster::list(&node, caller.as_ref(), self.own(own), req, size).await,
                ))
            }
            None => Ok(self.own(own)),
        }
    }

    type WatchAgentsStream = Pin<Box<dyn Stream<Item = WatchItem> + Send>>;

    #[tracing::instrument(level = "debug", skip_all)]
    async fn watch_agents(
        &self,
        request: Request<pb::WatchAgentsRequest>,
    ) -> Result<Response<Self::WatchAgentsStream>, Status> {
        match self.whole(request.metadata()).cloned() {
            Some(node) => {
                let req = request.get_ref().clone();
                selector(req.filter, &req.why, &req.labels, req.maintenance)?;
                let caller = request.extensions().get::<Caller>().cloned();
                let admission = self.admit_watcher(caller.as_ref())?;
                // Revocation is watched here, where the caller connected.
                let session = caller
                    .as_ref()
                    .map(|c| self.security.sessions().open(c, WATCH));
                Ok(Response::new(Box::pin(cluster::watch(
                    node,
                    self.registry.clone(),
                    req,
                    caller,
                    (admission, session),
                    self.shutdown.clone(),
                ))))
            }
            None => Ok(Response::new(Box::pin(
                self.watch_here(request)?.into_inner(),
            ))),
        }
    }

    async fn get_summary(
        &self,
        request: Request<pb::GetSummaryRequest>,
    ) -> Result<Response<pb::GetSummaryResponse>, Status> {
        let whole = self.whole(request.metadata()).cloned();
        let caller = request.extensions().get::<Caller>().cloned();
        let req = request.into_inner();
        let own = self.summary_here(&req)?;
        match whole {
            Some(node) => Ok(Response::new(
                cluster::summary(&node, caller.as_ref(), self.own(own), req).await,
            )),
            None => Ok(self.own(own)),
        }
    }
    #[tracing::instrument(level = "debug", skip_all, fields(agent_id = %request.get_ref().agent_id))]
    async fn get_history(
        &self,
        request: Request<pb::GetHistoryRequest>,
    ) -> Result<Response<pb::GetHistoryResponse>, Status> {
        let routed = self.owner_for(request.metadata(), &request.get_ref().agent_id)?;
        let caller = request.extensions().get::<Caller>().cloned();
        let req = request.into_inner();
        let id = wire::agent_id(&req.agent_id)?;
        if let Some((node, owner)) = routed {
            return cluster::history(&node, caller.as_ref(), &owner, req).await;
        }
        let transitions = self.registry.history(&id)?;
        let activity = self.registry.activity(&id)?;
        Ok(Response::new(pb::GetHistoryResponse {
            agent_id: id.to_string(),
            transitions: transitions.into_iter().map(Into::into).collect(),
            activity: activity.iter().map(Into::into).collect(),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(agent_id = %request.get_ref().agent_id))]
    async fn forget_agent(
        &self,
        request: Request<pb::ForgetAgentRequest>,
    ) -> Result<Response<pb::ForgetAgentResponse>, Status> {
        let caller = request.extensions().get::<Caller>().cloned();
        let routed = self.owner_for(request.metadata(), &request.get_ref().agent_id)?;
        let req = request.into_inner();
        let id = wire::agent_id(&req.agent_id)?;
        if let Some((node, owner)) = routed {
            // The owner forgets it (and audits it as a call from this node;
            // this node audits the caller's).
            let answer = cluster::forget(&node, caller.as_ref(), &owner, req).await;
            self.audit_forget(
                caller.as_ref(),
                &id,
                answer.as_ref().err().map(|s| s.message().to_owned()),
            );
            return answer;
        }
        let forgotten = self.registry.forget(&id);
        self.audit_forget(
            caller.as_ref(),
            &id,
            forgotten.as_ref().err().map(ToString::to_string),
        );
        let last = forgotten?;
        self.streams.forgotten(&self.registry, &id);
        Ok(Response::new(pb::ForgetAgentResponse {
            last: Some((&last).into()),
        }))
    }

    async fn get_server_info(
        &self,
        _: Request<pb::GetServerInfoRequest>,
    ) -> Result<Response<pb::GetServerInfoResponse>, Status> {
        let rules = self.registry.rules();
        Ok(Response::new(pb::GetServerInfoResponse {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: Some(wire::timestamp(self.started_at)),
            durable: self.registry.commits().is_some(),
            secured: self.security.enabled(),
            heartbeat_interval: Some(wire::duration(rules.heartbeat)),
            silence_window: Some(wire::duration(rules.silence)),
        }))
    }

    async fn get_cluster_status(
        &self,
        _: Request<pb::GetClusterStatusRequest>,
    ) -> Result<Response<pb::GetClusterStatusResponse>, Status> {
        match &self.cluster {
            Some(node) => cluster::status(node).await.map(Response::new),
            None => Ok(Response::new(pb::GetClusterStatusResponse::default())),
        }
    }

    async fn set_maintenance(
        &self,
        request: Request<pb::SetMaintenanceRequest>,
    ) -> Result<Response<pb::SetMaintenanceResponse>, Status> {
        if let Some(node) = self.whole(request.metadata()).cloned() {
            let caller = request.extensions().get::<Caller>().cloned();
            return cluster::set_maintenance(&node, caller.as_ref(), request.into_inner()).await;
        }
        self.set_maintenance_(request).await
    }

    async fn clear_maintenance(
        &self,
        request: Request<pb::ClearMaintenanceRequest>,
    ) -> Result<Response<pb::ClearMaintenanceResponse>, Status> {
        if let Some(node) = self.whole(request.metadata()).cloned() {
            let caller = request.extensions().get::<Caller>().cloned();
            return cluster::clear_maintenance(&node, caller.as_ref(), request.into_inner()).await;
        }
        self.clear_maintenance_(request).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(agent_id = %request.get_ref().agent_id))]
    async fn claim_agent(
        &self,
        request: Request<pb::ClaimAgentRequest>,
    ) -> Result<Response<pb::ClaimAgentResponse>, Status> {
        pass_to_owner!(self, request, claim_agent);
        self.claim_agent_(request).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(agent_id = %request.get_ref().agent_id))]
    async fn release_agent(
        &self,
        request: Request<pb::ReleaseAgentRequest>,
    ) -> Result<Response<pb::ReleaseAgentResponse>, Status> {
        pass_to_owner!(self, request, release_agent);
        self.release_agent_(request).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(agent_id = %request.get_ref().agent_id))]
    async fn record_remediation(
        &self,
        request: Request<pb::RecordRemediationRequest>,
    ) -> Result<Response<pb::RecordRemediationResponse>, Status> {
        pass_to_owner!(self, request, record_remediation);
        self.record_remediation_(request).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(agent_id = %request.get_ref().agent_id))]
    async fn clear_given_up(
        &self,
        request: Request<pb::ClearGivenUpRequest>,
    ) -> Result<Response<pb::ClearGivenUpResponse>, Status> {
        pass_to_owner!(self, request, clear_given_up);
        self.clear_given_up_(request).await
    }
}

impl FleetService {
    /// Audits a forget of `id` by `caller`, which failed with `error` if
    /// one is given.
    fn audit_forget(&self, caller: Option<&Caller>, id: &AgentId, error: Option<String>) {
        if let Some(caller) = caller {
            self.security.audit().record(AuditEvent {
                event: "admin",
                identity: Some(caller.identity.to_string()),
                credential: Some(caller.credential.kind()),
                peer: caller.peer,
                rpc: Some(FORGET),
                agent_id: Some(id.to_string()),
                result: if error.is_none() { "ok" } else { "failed" },
                reason: None,
                detail: error,
            });
        }
    }

    fn list_here(&self, req: pb::ListAgentsRequest) -> Result<pb::ListAgentsResponse, Status> {
        let mut sel = selector(req.filter, &req.why, &req.labels, req.maintenance)?;
        if req.id_contains.len() > MAX_ID_CONTAINS {
            return Err(Status::invalid_argument(format!(
                "id_contains is {} bytes; at most {MAX_ID_CONTAINS}",
                req.id_contains.len()
            )));
        }
        sel.id_contains = (!req.id_contains.is_empty()).then_some(req.id_contains);
        let at = wire::opt_time(req.at.as_ref(), "at")?;
        let size = match req.page_size as usize {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let order = list_order(req.order)?;
        let after = page_token::parse(&req.page_token, order)?;
        let page = self
            .registry
            .list_sorted(&sel, at, order, after.as_ref(), size);
        let next_page_token = match (page.more, page.agents.last()) {
            (true, Some(last)) => page_token::after(&SortCursor::after(last), order),
            _ => String::new(),
        };
        Ok(pb::ListAgentsResponse {
            agents: page.agents.iter().map(Into::into).collect(),
            next_page_token,
            storm: Some(page.storm.into()),
            evaluated_at: Some(wire::timestamp(page.evaluated_at)),
            incomplete: false,
        })
    }

    fn watch_here(
        &self,
        request: Request<pb::WatchAgentsRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let req = request.get_ref();
        let sel = selector(req.filter, &req.why, &req.labels, req.maintenance)?;
        let caller = request.extensions().get::<Caller>();
        let admission = self.admit_watcher(caller)?;
        let session = caller.map(|c| self.security.sessions().open(c, WATCH));
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        let queue = Arc::new(Queue {
            rx: Mutex::new(rx),
            metrics: self.registry.metrics().clone(),
        });
        let (end_tx, end_rx) = oneshot::channel();
        let watcher = Watcher {
            registry: self.registry.clone(),
            sel,
            tx,
            queue: queue.clone(),
            shutdown: self.shutdown.clone(),
            stall_timeout: self.watch.stall_timeout,
            session,
            _admission: admission,
        };
        tokio::spawn(watcher.run(end_tx));
        Ok(Response::new(WatchStream {
            queue,
            end: Some(end_rx),
            done: false,
        }))
    }

    fn summary_here(&self, req: &pb::GetSummaryRequest) -> Result<pb::GetSummaryResponse, Status> {
        summary_of(&self.registry, req)
    }
}

impl FleetService {
    /// Lets a watch in, or says which limit it met: the watches the server
    /// holds in all (`--max-watchers`), then those of the caller's identity.
    /// The watch keeps the admission for as long as it lives.
    fn admit_watcher(&self, caller: Option<&Caller>) -> Result<Admission, Status> {
        let max = self.watch.max_watchers;
        if self.watchers.fetch_add(1, Ordering::AcqRel) >= max {
            self.watchers.fetch_sub(1, Ordering::AcqRel);
            let metrics = self.registry.metrics();
            metrics.count_rejected(Rejected::MaxWatchers);
            metrics.count_watcher_rejected();
            return Err(Status::resource_exhausted(format!(
                "the server already holds {max} watches, its limit (--max-watchers); try again later"
            )));
        }
        let slot = WatchSlot {
            watchers: self.watchers.clone(),
        };
        // Refused here, the slot is given back as it drops.
        let permit = self.security.admit(caller, Place::Watch, WATCH)?;
        Ok(Admission {
            _slot: slot,
            _permit: permit,
        })
    }
}

/// One watch stream: a snapshot, then changes; a fresh snapshot after falling
/// behind.
struct Watcher {
    registry: Registry,
    sel: Selector,
    tx: mpsc::Sender<WatchItem>,
    /// The other end of `tx`, to empty when the watch is ended.
    queue: Arc<Queue>,
    shutdown: watch::Receiver<bool>,
    /// How long a send may wait for the watcher to take something.
    stall_timeout: Duration,
    /// Its place among the streams a revocation can end.
    session: Option<SessionGuard>,
    /// Its place among all watches and its identity's.
    _admission: Admission,
}

/// Why a watcher ended.
enum End {
    /// The client went away.
    Gone,
    /// With this status for the client.
    Status(Status),
}

/// Resolves when the watch's credential is revoked (never without one).
async fn revoked(session: &Option<SessionGuard>) {
    match session {
        Some(s) => s.revoked().await,
        None => std::future::pending().await,
    }
}

fn msg(event: W) -> WatchItem {
    Ok(pb::WatchAgentsResponse { event: Some(event) })
}

impl Watcher {
    async fn run(mut self, end: oneshot::Sender<Status>) {
        self.registry.metrics().watchers(1);
        let session = self.session.take();
        let ended = tokio::select! {
            r = self.serve() => r,
            () = revoked(&session) => End::Status(open_streams::revoked()),
        };
        if let End::Status(status) = ended {
            // Ahead of whatever is still queued (see WatchStream), which is
            // dropped now rather than when the connection takes the status.
            let _ = end.send(status);
            self.queue.drain();
        }
        self.registry.metrics().watchers(-1);
    }

    /// Sends one message, waiting at most the stall timeout for room.
    async fn send(&self, item: WatchItem) -> Result<(), End> {
        let metrics = self.registry.metrics();
        // Counted before it is queued (the stream counts it out when taken).
        metrics.watch_queued(1);
        let sent = tokio::time::timeout(self.stall_timeout, self.tx.send(item)).await;
        if !matches!(sent, Ok(Ok(()))) {
            metrics.watch_queued(-1);
        }
        match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Gone),
            Err(_) => {
                metrics.count_watch_stalled();
                Err(End::Status(Status::aborted(format!(
                    "this watch took nothing for {:?} and fell behind; watch again (a fresh snapshot follows)",
                    self.stall_timeout
                ))))
            }
        }
    }

    /// Runs until the watcher goes away or is ended.
    async fn serve(&mut self) -> End {
        match self.serve_inner().await {
            Ok(()) => End::Gone,
            Err(end) => end,
        }
    }

    async fn serve_inner(&mut self) -> Result<(), End> {
        // Subscribe before the snapshot: nothing between the two is lost
        // (a change seen in both is sent twice, and applying it twice is harmless).
        let mut feed = self.registry.subscribe();
        self.snapshot().await?;
        // When the watcher first and last fell out of the feed, in a run of
        // falls less than the stall timeout apart: it is behind all along.
        let mut behind: Option<(Instant, Instant)> = None;
        loop {
            let change = tokio::select! {
                r = feed.recv() => r,
                () = self.tx.closed() => return Err(End::Gone),
                () = crate::stopped(&mut self.shutdown) => {
                    return Err(End::Status(Status::unavailable("the server is shutting down; watch again")));
                }
            };
            match change {
                Ok(c) => {
                    if let Some(event) = self.translate(c) {
                        self.send(msg(event)).await?;
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    let now = Instant::now();
                    let since = match behind {
                        Some((first, last)) if now - last < self.stall_timeout => first,
                        _ => now,
                    };
                    behind = Some((since, now));
                    if now - since >= self.stall_timeout {
                        // It reads, but slower than the fleet changes: each
                        // fresh snapshot would only fall behind again.
                        self.registry.metrics().count_watch_stalled();
                        return Err(End::Status(Status::aborted(format!(
                            "this watch stayed behind the changes for {:?} (it missed {missed}); watch again (a fresh snapshot follows)",
                            self.stall_timeout
                        ))));
                    }
                    self.registry.metrics().count_resync();
                    self.send(msg(W::Resync(pb::Resync { missed }))).await?;
                    // Older changes still in the feed predate the new
                    // snapshot: start from the feed's tail.
                    feed = feed.resubscribe();
                    self.snapshot().await?;
                }
                Err(RecvError::Closed) => return Err(End::Gone),
            }
        }
    }

    /// The matching agents, in pages read from the index as the watcher
    /// takes them: a cursor (the last agent ID sent), not a copy of the set.
    /// An agent that changes while the pages go out is either in a later
    /// page as it is then, or (already sent) in the change feed after them.
    async fn snapshot(&mut self) -> Result<(), End> {
        let mut count = 0u64;
        let mut after: Option<String> = None;
        loop {
            let page = self
                .registry
                .list(&self.sel, None, after.as_deref(), SNAPSHOT_PAGE);
            for v in &page.agents {
                self.send(msg(W::Snapshot(v.into()))).await?;
            }
            count += page.agents.len() as u64;
            match (page.more, page.agents.last()) {
                (true, Some(last)) => after = Some(last.id.to_string()),
                _ => break,
            }
            if *self.shutdown.borrow() {
                return Err(End::Status(Status::unavailable(
                    "the server is shutting down; watch again",
                )));
            }
        }
        let storm = self.registry.storm();
        self.send(msg(W::Synced(pb::Synced {
            count,
            storm: Some(storm.into()),
            at: Some(wire::timestamp(self.registry.clock().now())),
        })))
        .await
    }

    fn translate(&self, change: Change) -> Option<W> {
        match change {
            Change::Status {
                view,
                before,
                was_maintained,
            } => {
                let labels = view.labels.as_deref();
                if self
                    .sel
                    .matches(view.why, labels, view.maintenance.is_some())
                {
                    Some(W::Changed(view.as_ref().into()))
                } else if before.is_some_and(|b| self.sel.matches(b, labels, was_maintained)) {
                    Some(W::Left(pb::AgentLeft {
                        agent_id: view.id.to_string(),
                        status: Some(view.as_ref().into()),
                        forgotten: false,
                    }))
                } else {
                    None
                }
            }
            Change::Forgotten { last } => {
                let maintained = last.maintenance.is_some();
                let labels = last.labels.as_deref();
                self.sel.matches(last.why, labels, maintained).then(|| {
                    W::Left(pb::AgentLeft {
                        agent_id: last.id.to_string(),
                        status: None,
                        forgotten: true,
                    })
                })
            }
            Change::Storm(s) => Some(W::Storm(s.into())),
        }
    }
}

/// The summary `registry` gives for `req`.
fn summary_of(
    registry: &Registry,
    req: &pb::GetSummaryRequest,
) -> Result<pb::GetSummaryResponse, Status> {
    let at = wire::opt_time(req.at.as_ref(), "at")?;
    let s = registry.summary(at);
    let mut by_why: Vec<pb::WhyCount> = crate::model::Why::ALL
        .iter()
        .filter(|r| s.by_why[**r] > 0)
        .map(|r| pb::WhyCount {
            why: pb::Why::from(*r) as i32,
            why_text: r.as_str().to_string(),
            state: pb::State::from(r.state()) as i32,
            count: s.by_why[*r],
        })
        .collect();
    by_why.sort_by(|a, b| b.count.cmp(&a.count).then(a.why.cmp(&b.why)));
    let maintenance = s.maintained.total();
    let maintenance_faulty = s.maintained.in_state(State::Faulty);
    Ok(pb::GetSummaryResponse {
        maintenance,
        maintenance_faulty,
        given_up: s.given_up,
        claimed: s.claimed,
        total: s.total(),
        healthy: s.count(State::Healthy),
        faulty: s.count(State::Faulty),
        inactive: s.count(State::Inactive),
        connected: s.connected,
        by_why,
        storm: Some(s.storm.into()),
        evaluated_at: Some(wire::timestamp(s.evaluated_at)),
        grace_until: s.grace_until.map(wire::timestamp),
        incomplete: false,
    })
}
