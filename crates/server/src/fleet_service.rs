//! `fleethealth.v1.FleetService`: what operators and orchestrators ask.
//! Each method checks its request, asks the [`Registry`], and encodes.

use fleet_health_proto::v1 as pb;
use fleet_health_proto::v1::fleet_service_server::FleetService as FleetServiceApi;
use pb::watch_agents_response::Event as W;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use std::sync::Arc;

use crate::model::{StateFilter, Why};
use crate::open_streams::{self, OpenStreams};
use crate::registry::{Change, Registry, Selector};
use crate::security::limits::Permit;
use crate::security::sessions::SessionGuard;
use crate::security::{AuditEvent, Caller, Place, Security};
use fleet_health_types::wire;

/// Agents in a page when the request does not say.
pub const DEFAULT_PAGE_SIZE: usize = 1000;
/// The largest page.
pub const MAX_PAGE_SIZE: usize = 10_000;

/// The `fleethealth.v1.FleetService`: what operators and orchestrators ask.
pub struct FleetService {
    registry: Registry,
    streams: OpenStreams,
    shutdown: watch::Receiver<bool>,
    security: Arc<Security>,
}

impl FleetService {
    /// A service over `registry`; a forget ends the agent's stream in
    /// `streams` (the table the agent service keeps); watches end when
    /// `shutdown` turns true, or when `security` finds their credential
    /// revoked. Forgets go to `security`'s audit log.
    pub fn new(
        registry: Registry,
        streams: OpenStreams,
        shutdown: watch::Receiver<bool>,
        security: Arc<Security>,
    ) -> FleetService {
        FleetService {
            registry,
            streams,
            shutdown,
            security,
        }
    }
}

const WATCH: &str = "/fleethealth.v1.FleetService/WatchAgents";
const FORGET: &str = "/fleethealth.v1.FleetService/ForgetAgent";

fn selector(
    filter: i32,
    why: &[i32],
    labels: &std::collections::HashMap<String, String>,
) -> Result<Selector, Status> {
    Ok(Selector {
        filter: StateFilter::try_from(filter)?,
        whys: why
            .iter()
            .map(|w| Why::try_from(*w))
            .collect::<Result<_, _>>()?,
        labels: wire::labels(labels)?,
    })
}

type WatchItem = Result<pb::WatchAgentsResponse, Status>;

#[tonic::async_trait]
impl FleetServiceApi for FleetService {
    #[tracing::instrument(level = "debug", skip_all, fields(agent_id = %request.get_ref().agent_id))]
    async fn get_agent(
        &self,
        request: Request<pb::GetAgentRequest>,
    ) -> Result<Response<pb::GetAgentResponse>, Status> {
        let req = request.into_inner();
        let id = wire::agent_id(&req.agent_id)?;
        let at = wire::opt_time(req.at.as_ref(), "at")?;
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
        let req = request.into_inner();
        let sel = selector(req.filter, &req.why, &req.labels)?;
        let at = wire::opt_time(req.at.as_ref(), "at")?;
        let size = match req.page_size as usize {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let after =
            if req.page_token.is_empty() {
                None
            } else {
                // The token is the last agent ID of the previous page.
                Some(wire::agent_id(&req.page_token).map_err(|_| {
                    Status::invalid_argument("page_token is not one this server gave")
                })?)
            };
        let page = self
            .registry
            .list(&sel, at, after.as_ref().map(|a| a.as_str()), size);
        let next_page_token = match (page.more, page.agents.last()) {
            (true, Some(last)) => last.id.to_string(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListAgentsResponse {
            agents: page.agents.iter().map(Into::into).collect(),
            next_page_token,
            storm: Some(page.storm.into()),
            evaluated_at: Some(wire::timestamp(page.evaluated_at)),
        }))
    }

    type WatchAgentsStream = ReceiverStream<WatchItem>;

    #[tracing::instrument(level = "debug", skip_all)]
    async fn watch_agents(
        &self,
        request: Request<pb::WatchAgentsRequest>,
    ) -> Result<Response<Self::WatchAgentsStream>, Status> {
        let caller = request.extensions().get::<Caller>();
        let permit = self.security.admit(caller, Place::Watch, WATCH)?;
        let session = caller.map(|c| self.security.sessions().open(c, WATCH));
        let req = request.into_inner();
        let sel = selector(req.filter, &req.why, &req.labels)?;
        let (tx, rx) = mpsc::channel(64);
        let watcher = Watcher {
            registry: self.registry.clone(),
            sel,
            tx,
            shutdown: self.shutdown.clone(),
            session,
            _permit: permit,
        };
        tokio::spawn(watcher.run());
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_summary(
        &self,
        request: Request<pb::GetSummaryRequest>,
    ) -> Result<Response<pb::GetSummaryResponse>, Status> {
        let req = request.into_inner();
        let at = wire::opt_time(req.at.as_ref(), "at")?;
        let s = self.registry.summary(at);
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
        use crate::model::State;
        Ok(Response::new(pb::GetSummaryResponse {
            total: s.total(),
            healthy: s.count(State::Healthy),
            faulty: s.count(State::Faulty),
            inactive: s.count(State::Inactive),
            connected: s.connected,
            by_why,
            storm: Some(s.storm.into()),
            evaluated_at: Some(wire::timestamp(s.evaluated_at)),
            grace_until: s.grace_until.map(wire::timestamp),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(agent_id = %request.get_ref().agent_id))]
    async fn get_history(
        &self,
        request: Request<pb::GetHistoryRequest>,
    ) -> Result<Response<pb::GetHistoryResponse>, Status> {
        let req = request.into_inner();
        let id = wire::agent_id(&req.agent_id)?;
        let transitions = self.registry.history(&id)?;
        Ok(Response::new(pb::GetHistoryResponse {
            agent_id: id.to_string(),
            transitions: transitions.into_iter().map(Into::into).collect(),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(agent_id = %request.get_ref().agent_id))]
    async fn forget_agent(
        &self,
        request: Request<pb::ForgetAgentRequest>,
    ) -> Result<Response<pb::ForgetAgentResponse>, Status> {
        let caller = request.extensions().get::<Caller>().cloned();
        let req = request.into_inner();
        let id = wire::agent_id(&req.agent_id)?;
        let forgotten = self.registry.forget(&id);
        if let Some(caller) = caller {
            self.security.audit().record(AuditEvent {
                event: "admin",
                identity: Some(caller.identity.to_string()),
                credential: Some(caller.credential.kind()),
                peer: caller.peer,
                rpc: Some(FORGET),
                agent_id: Some(id.to_string()),
                result: if forgotten.is_ok() { "ok" } else { "failed" },
                reason: None,
                detail: forgotten.as_ref().err().map(ToString::to_string),
            });
        }
        let last = forgotten?;
        self.streams.forgotten(&self.registry, &id);
        Ok(Response::new(pb::ForgetAgentResponse {
            last: Some((&last).into()),
        }))
    }
}

/// One watch stream: a snapshot, then changes; a fresh snapshot after falling
/// behind.
struct Watcher {
    registry: Registry,
    sel: Selector,
    tx: mpsc::Sender<WatchItem>,
    shutdown: watch::Receiver<bool>,
    /// Its place among the streams a revocation can end.
    session: Option<SessionGuard>,
    /// Its place among its identity's watches.
    _permit: Option<Permit>,
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
    async fn run(mut self) {
        self.registry.metrics().watchers(1);
        let session = self.session.take();
        let revoked = tokio::select! {
            _ = self.serve() => false,
            () = revoked(&session) => true,
        };
        if revoked {
            // A watcher that reads hears why; one that does not is ended
            // all the same when the channel drops.
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(1),
                self.tx.send(Err(open_streams::revoked())),
            )
            .await;
        }
        self.registry.metrics().watchers(-1);
    }

    /// Ends (with `Err`) when the watcher goes away.
    async fn serve(&mut self) -> Result<(), ()> {
        // Subscribe before the snapshot: nothing between the two is lost
        // (a change seen in both is sent twice, and applying it twice is harmless).
        let mut feed = self.registry.subscribe();
        self.snapshot().await?;
        loop {
            let change = tokio::select! {
                r = feed.recv() => r,
                () = self.tx.closed() => return Err(()),
                () = crate::stopped(&mut self.shutdown) => {
                    let _ = self.tx.send(Err(Status::unavailable("the server is shutting down; watch again"))).await;
                    return Err(());
                }
            };
            match change {
                Ok(c) => {
                    if let Some(event) = self.translate(c) {
                        self.tx.send(msg(event)).await.map_err(|_| ())?;
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    self.registry.metrics().count_resync();
                    self.tx
                        .send(msg(W::Resync(pb::Resync { missed })))
                        .await
                        .map_err(|_| ())?;
                    // Older changes still in the feed predate the new
                    // snapshot: start from the feed's tail.
                    feed = feed.resubscribe();
                    self.snapshot().await?;
                }
                Err(RecvError::Closed) => return Err(()),
            }
        }
    }

    async fn snapshot(&self) -> Result<(), ()> {
        let views = self.registry.snapshot(&self.sel);
        let count = views.len() as u64;
        for v in &views {
            self.tx
                .send(msg(W::Snapshot(v.into())))
                .await
                .map_err(|_| ())?;
        }
        let storm = self.registry.storm();
        self.tx
            .send(msg(W::Synced(pb::Synced {
                count,
                storm: Some(storm.into()),
                at: Some(wire::timestamp(self.registry.clock().now())),
            })))
            .await
            .map_err(|_| ())
    }

    fn translate(&self, change: Change) -> Option<W> {
        match change {
            Change::Status { view, before } => {
                let labels = view.labels.as_deref();
                if self.sel.matches(view.why, labels) {
                    Some(W::Changed(view.as_ref().into()))
                } else if before.is_some_and(|b| self.sel.matches(b, labels)) {
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
                self.sel.matches(last.why, last.labels.as_deref()).then(|| {
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
