//! The fleet service on a cluster node: the same answer whichever node is
//! asked.
//!
//! - A call about one agent (get, history, forget) goes to the node that
//!   serves the agent's shard, unless this node does.
//! - A list or a summary asks every node that serves shards for its part
//!   (this node's own from its registry) and merges them: pages by agent
//!   ID, counts added up, the storm guard worked out again over the whole.
//!   An answer that misses shards (changing hands, or a node that did not
//!   answer) says so (`incomplete`), and its storm flag is left down: the
//!   storm guard never fires because part of the fleet is missing.
//!
//! A call passed on carries the `fleet-health-scope: node` header: the node
//! answers from its own registry, and says in the `fleet-health-shards`
//! header how many shards that covered.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fleet_health_proto::v1 as pb;
use fleet_health_proto::v1::fleet_service_client::FleetServiceClient;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::cluster::node::ClusterNode;
use crate::model::{State, Why};
use crate::registry::{Order, SortCursor};
use crate::security::Caller;

/// The header of a call one node passes on to another: answer from your
/// own registry.
pub(super) const SCOPE: &str = "fleet-health-scope";
/// The header of a node's own answer: how many shards it covered.
const SHARDS: &str = "fleet-health-shards";
/// How long a node waits for another's part of an answer.
const PEER_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether a call asks for this node's own part only.
pub(super) fn here(metadata: &MetadataMap) -> bool {
    metadata.get(SCOPE).is_some_and(|v| v == "node")
}

/// Marks a node's own answer with how many shards it covered.
pub(super) fn mark<T>(mut response: Response<T>, node: &ClusterNode) -> Response<T> {
    if let Ok(v) = node.ownership().len().to_string().parse() {
        response.metadata_mut().insert(SHARDS, v);
    }
    response
}

fn covered(metadata: &MetadataMap) -> usize {
    metadata
        .get(SHARDS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `message` as a call to another node: its own part only, from `caller`.
fn scoped<T>(node: &ClusterNode, caller: Option<&Caller>, message: T) -> Request<T> {
    let mut request = Request::new(message);
    node.stamp(&mut request, caller);
    node.metrics().passed_on(false);
    request
        .metadata_mut()
        .insert(SCOPE, tonic::metadata::MetadataValue::from_static("node"));
    request.set_timeout(PEER_TIMEOUT);
    request
}

/// The client for the node at `address`.
fn client(node: &ClusterNode, address: &str) -> FleetServiceClient<tonic::transport::Channel> {
    FleetServiceClient::new(node.channel(address))
        .max_decoding_message_size(crate::server::MAX_ENCODED_MESSAGE_BYTES)
}

/// Where a call about agent `id` goes: `None` when this node serves it;
/// the owner's address when another node does; UNAVAILABLE when its shard
/// has no live owner now.
pub(super) fn owner_of(node: &ClusterNode, id: &str) -> Result<Option<Arc<str>>, Status> {
    if node.serves(id) {
        return Ok(None);
    }
    match node.route_of(id) {
        Some(address) => Ok(Some(address)),
        None => Err(changing_hands(node, id)),
    }
}

/// The answer about agent `id` while its shard has no node that serves it.
pub(super) fn changing_hands(node: &ClusterNode, id: &str) -> Status {
    Status::unavailable(format!(
        "agent {id}'s shard ({}) is changing hands between servers; try again in a few seconds",
        node.shard_of(id)
    ))
}

/// Passes a call about one agent on to the node at `address`.
pub(super) async fn get(
    node: &ClusterNode,
    caller: Option<&Caller>,
    address: &str,
    req: pb::GetAgentRequest,
) -> Result<Response<pb::GetAgentResponse>, Status> {
    client(node, address)
        .get_agent(scoped(node, caller, req))
        .await
}

/// Passes a history call on to the node at `address`.
pub(super) async fn history(
    node: &ClusterNode,
    caller: Option<&Caller>,
    address: &str,
    req: pb::GetHistoryRequest,
) -> Result<Response<pb::GetHistoryResponse>, Status> {
    client(node, address)
        .get_history(scoped(node, caller, req))
        .await
}

/// Passes a forget on to the node at `address`.
pub(super) async fn forget(
    node: &ClusterNode,
    caller: Option<&Caller>,
    address: &str,
    req: pb::ForgetAgentRequest,
) -> Result<Response<pb::ForgetAgentResponse>, Status> {
    client(node, address)
        .forget_agent(scoped(node, caller, req))
        .await
}

/// The cluster as its database has it: nodes, shards per node, leases,
/// standbys.
pub(super) async fn status(node: &ClusterNode) -> Result<pb::GetClusterStatusResponse, Status> {
    let unreachable = |e: crate::cluster::db::DbError| {
        Status::unavailable(format!("the cluster's database cannot be read now: {e}"))
    };
    let db = crate::cluster::db::Db::connect(node.url())
        .await
        .map_err(unreachable)?;
    let nodes = db.nodes().await.map_err(unreachable)?;
    let shards = db.shards().await.map_err(unreachable)?;
    let lease = node.lease();
    let live: HashMap<&str, bool> = nodes
        .iter()
        .map(|n| (n.node.as_str(), n.seen_ago < lease))
        .collect();
    let held_by = |name: &str| {
        shards
            .iter()
            .filter(|s| s.owner.as_deref() == Some(name) && !s.expired)
            .collect::<Vec<_>>()
    };
    let unowned = shards
        .iter()
        .filter(|s| {
            s.expired
                || s.owner
                    .as_deref()
                    .is_none_or(|o| !live.get(o).copied().unwrap_or(false))
        })
        .count();
    let standbys = db
        .standbys()
        .await
        .into_iter()
        .map(|(name, state, sync_state, lag)| pb::DatabaseStandby {
            name,
            state,
            sync_state,
            replay_lag: lag.map(proto_duration),
        })
        .collect();
    Ok(pb::GetClusterStatusResponse {
        clustered: true,
        answered_by: node.id().to_owned(),
        shards: shards.len() as u32,
        unowned: unowned as u32,
        nodes: nodes
            .iter()
            .map(|n| {
                let held = held_by(&n.node);
                pb::ClusterNode {
                    node: n.node.clone(),
                    address: n.address.clone(),
                    seen_ago: Some(proto_duration(n.seen_ago)),
                    draining: n.draining,
                    live: n.seen_ago < lease,
                    shards: held.len() as u32,
                    lease_left: held
                        .iter()
                        .filter_map(|s| s.lease_left)
                        .min()
                        .map(proto_duration),
                }
            })
            .collect(),
        lease: Some(proto_duration(lease)),
        standbys,
        database: crate::cluster::store::redact(node.url()),
    })
}

fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// Passes a call about one agent on to the node at `address`.
pub(super) async fn pass<Q, A, F, Fut>(
    node: &ClusterNode,
    caller: Option<&Caller>,
    address: &str,
    req: Q,
    call: F,
) -> Result<Response<A>, Status>
where
    F: FnOnce(FleetServiceClient<tonic::transport::Channel>, Request<Q>) -> Fut,
    Fut: std::future::Future<Output = Result<Response<A>, Status>>,
{
    call(client(node, address), scoped(node, caller, req)).await
}

/// Every node's address, this node's first.
fn everyone(node: &ClusterNode) -> Vec<Arc<str>> {
    let mut all = vec![node.address().clone()];
    all.extend(node.peers().into_iter().map(|(_, a)| a));
    all
}

/// The addresses of the nodes that serve `ids`, each with its IDs: every ID
/// must be served somewhere (else UNAVAILABLE), and known there (checked
/// first, so that one unknown ID marks nothing anywhere: NOT_FOUND).
async fn by_owner(
    node: &ClusterNode,
    caller: Option<&Caller>,
    ids: &[String],
) -> Result<Vec<(Arc<str>, Vec<String>)>, Status> {
    let mut groups: Vec<(Arc<str>, Vec<String>)> = Vec::new();
    for id in ids {
        let address = owner_of(node, id)?.unwrap_or_else(|| node.address().clone());
        get(
            node,
            caller,
            &address,
            pb::GetAgentRequest {
                agent_id: id.clone(),
                at: None,
            },
        )
        .await?;
        match groups.iter_mut().find(|(a, _)| *a == address) {
            Some((_, g)) => g.push(id.clone()),
            None => groups.push((address, vec![id.clone()])),
        }
    }
    Ok(groups)
}

/// Where a call naming agents by `ids` (or, with none, by labels or all)
/// goes: each ID's node with its own IDs (`with_ids`), or every node with
/// `req` as it is.
async fn spread<Q: Clone>(
    node: &ClusterNode,
    caller: Option<&Caller>,
    req: &Q,
    ids: &[String],
    with_ids: impl Fn(Vec<String>) -> Q,
) -> Result<Vec<(Arc<str>, Q)>, Status> {
    if ids.is_empty() {
        return Ok(everyone(node)
            .into_iter()
            .map(|a| (a, req.clone()))
            .collect());
    }
    Ok(by_owner(node, caller, ids)
        .await?
        .into_iter()
        .map(|(a, ids)| (a, with_ids(ids)))
        .collect())
}

/// Marks agents under maintenance across the cluster: by ID on each
/// agent's node, by labels or all on every node; the counts added up.
pub(super) async fn set_maintenance(
    node: &ClusterNode,
    caller: Option<&Caller>,
    req: pb::SetMaintenanceRequest,
) -> Result<Response<pb::SetMaintenanceResponse>, Status> {
    let calls = spread(node, caller, &req, &req.agent_ids, |ids| {
        pb::SetMaintenanceRequest {
            agent_ids: ids,
            ..req.clone()
        }
    })
    .await?;
    let mut total = pb::SetMaintenanceResponse::default();
    for (address, req) in calls {
        let part = client(node, &address)
            .set_maintenance(scoped(node, caller, req))
            .await?
            .into_inner();
        total.marked += part.marked;
        total.until = total.until.or(part.until);
        total.agent_ids.extend(part.agent_ids);
    }
    total.agent_ids.sort();
    total.agent_ids.truncate(1000);
    Ok(Response::new(total))
}

/// Ends maintenance marks across the cluster, as [`set_maintenance`] sets
/// them.
pub(super) async fn clear_maintenance(
    node: &ClusterNode,
    caller: Option<&Caller>,
    req: pb::ClearMaintenanceRequest,
) -> Result<Response<pb::ClearMaintenanceResponse>, Status> {
    let calls = spread(node, caller, &req, &req.agent_ids, |ids| {
        pb::ClearMaintenanceRequest {
            agent_ids: ids,
            ..req.clone()
        }
    })
    .await?;
    let mut cleared = 0;
    for (address, req) in calls {
        cleared += client(node, &address)
            .clear_maintenance(scoped(node, caller, req))
            .await?
            .into_inner()
            .cleared;
    }
    Ok(Response::new(pb::ClearMaintenanceResponse { cleared }))
}

/// The parts of an answer: this node's own, then each other node's (or
/// why it is missing), and whether every shard is covered.
struct Parts<T> {
    parts: Vec<T>,
    complete: bool,
}

/// Asks every node that serves shards for its part: `own` is this node's;
/// `ask` asks another.
async fn gather<T, F, Fut>(node: &ClusterNode, own: Response<T>, ask: F) -> Parts<T>
where
    F: Fn(FleetServiceClient<tonic::transport::Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<Response<T>, Status>>,
{
    let peers = node.peers();
    let mut covered_shards = covered(own.metadata());
    let mut parts = vec![own.into_inner()];
    let mut complete = node.ownership().unowned() == 0;
    let answers =
        futures_util::future::join_all(peers.iter().map(|(_, address)| ask(client(node, address))))
            .await;
    for ((peer, _), answer) in peers.iter().zip(answers) {
        match answer {
            Ok(response) => {
                covered_shards += covered(response.metadata());
                parts.push(response.into_inner());
            }
            Err(status) => {
                tracing::warn!(node = %peer, error = %status, "a node did not give its part of an answer");
                complete = false;
            }
        }
    }
    if covered_shards < node.shard_count() as usize {
        complete = false;
    }
    if !complete {
        node.metrics().incomplete_answer();
    }
    Parts { parts, complete }
}

/// A list over every node: pages merged by agent ID.
pub(super) async fn list(
    node: &ClusterNode,
    caller: Option<&Caller>,
    own: Response<pb::ListAgentsResponse>,
    req: pb::ListAgentsRequest,
    size: usize,
) -> pb::ListAgentsResponse {
    let Parts { parts, complete } = gather(node, own, |mut c| {
        let req = req.clone();
        async move { c.list_agents(scoped(node, caller, req)).await }
    })
    .await;
    let mut more = parts.iter().any(|p| !p.next_page_token.is_empty());
    let storms: Vec<pb::Storm> = parts.iter().filter_map(|p| p.storm.clone()).collect();
    let evaluated_at = parts.first().and_then(|p| p.evaluated_at);
    let mut agents: Vec<pb::AgentStatus> = parts.into_iter().flat_map(|p| p.agents).collect();
    // Each part is in the order asked for, after the same place: merged in
    // that order, the first `size` are the whole cluster's page.
    let order = super::list_order(req.order).unwrap_or_default();
    let since = |a: &pb::AgentStatus| {
        a.since
            .as_ref()
            .and_then(|t| fleet_health_types::wire::time(t, "since").ok())
            .unwrap_or_default()
    };
    match order {
        Order::Id => agents.sort_by(|a, b| a.agent_id.cmp(&b.agent_id)),
        Order::LongestFirst => {
            agents.sort_by(|a, b| (since(a), &a.agent_id).cmp(&(since(b), &b.agent_id)))
        }
        Order::NewestFirst => agents.sort_by(|a, b| {
            (std::cmp::Reverse(since(a)), &a.agent_id)
                .cmp(&(std::cmp::Reverse(since(b)), &b.agent_id))
        }),
    }
    // A shard that moved while the parts were read may show an agent twice.
    let mut seen = std::collections::HashSet::new();
    agents.retain(|a| seen.insert(a.agent_id.clone()));
    if agents.len() > size {
        agents.truncate(size);
        more = true;
    }
    let next_page_token = match (more, agents.last()) {
        (true, Some(last)) => super::page_token::after(
            &SortCursor {
                since: since(last),
                id: last.agent_id.clone(),
            },
            order,
        ),
        _ => String::new(),
    };
    pb::ListAgentsResponse {
        agents,
        next_page_token,
        storm: Some(merge_storms(&storms, complete)),
        evaluated_at,
        incomplete: !complete,
    }
}

/// A summary over every node: counts added up.
pub(super) async fn summary(
    node: &ClusterNode,
    caller: Option<&Caller>,
    own: Response<pb::GetSummaryResponse>,
    req: pb::GetSummaryRequest,
) -> pb::GetSummaryResponse {
    let Parts { parts, complete } = gather(node, own, |mut c| async move {
        c.get_summary(scoped(node, caller, req)).await
    })
    .await;
    let mut total = pb::GetSummaryResponse {
        evaluated_at: parts.first().and_then(|p| p.evaluated_at),
        incomplete: !complete,
        ..pb::GetSummaryResponse::default()
    };
    let mut by_why: HashMap<i32, pb::WhyCount> = HashMap::new();
    let mut storms = Vec::new();
    for p in parts {
        total.total += p.total;
        total.healthy += p.healthy;
        total.faulty += p.faulty;
        total.inactive += p.inactive;
        total.connected += p.connected;
        total.maintenance += p.maintenance;
        total.maintenance_faulty += p.maintenance_faulty;
        total.given_up += p.given_up;
        total.claimed += p.claimed;
        for w in p.by_why {
            by_why
                .entry(w.why)
                .and_modify(|x| x.count += w.count)
                .or_insert(w);
        }
        // The latest grace of any node (one that took shards lately).
        total.grace_until = match (total.grace_until, p.grace_until) {
            (Some(a), Some(b)) => Some(if (b.seconds, b.nanos) > (a.seconds, a.nanos) {
                b
            } else {
                a
            }),
            (a, b) => a.or(b),
        };
        storms.extend(p.storm);
    }
    let mut by_why: Vec<pb::WhyCount> = by_why.into_values().collect();
    by_why.sort_by(|a, b| b.count.cmp(&a.count).then(a.why.cmp(&b.why)));
    total.by_why = by_why;
    total.storm = Some(merge_storms(&storms, complete));
    total
}

/// The storm guard over the whole fleet, from each node's reading: the
/// counts added up, the flag and the dominant reason worked out again. Left
/// down when the parts do not cover the whole fleet.
fn merge_storms(storms: &[pb::Storm], complete: bool) -> pb::Storm {
    let mut merged = pb::Storm {
        threshold: storms.first().map_or(0.5, |s| s.threshold),
        min_agents: storms.first().map_or(0, |s| s.min_agents),
        ..pb::Storm::default()
    };
    let mut by_why: HashMap<i32, pb::WhyCount> = HashMap::new();
    for s in storms {
        merged.faulty += s.faulty;
        merged.active_agents += s.active_agents;
        merged.maintenance += s.maintenance;
        for w in &s.faulty_by_why {
            by_why
                .entry(w.why)
                .and_modify(|x| x.count += w.count)
                .or_insert_with(|| w.clone());
        }
    }
    merged.faulty_share = if merged.active_agents == 0 {
        0.0
    } else {
        merged.faulty as f64 / merged.active_agents as f64
    };
    merged.active = complete
        && merged.active_agents >= merged.min_agents
        && merged.active_agents > 0
        && merged.faulty as f64 >= merged.threshold * merged.active_agents as f64;
    if let Some(d) = by_why.values().find(|w| w.count * 2 > merged.faulty) {
        merged.dominant_why = d.why;
        merged.dominant_why_text = d.why_text.clone();
        merged.dominant_count = d.count;
    }
    let mut faulty_by_why: Vec<pb::WhyCount> = by_why
        .into_values()
        .filter(|w| Why::try_from(w.why).is_ok_and(|w| w.state() == State::Faulty))
        .collect();
    faulty_by_why.sort_by(|a, b| b.count.cmp(&a.count).then(a.why.cmp(&b.why)));
    merged.faulty_by_why = faulty_by_why;
    merged
}

/// One node's part of a merged watch: its events, tagged with where they
/// come from.
type Part = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = (usize, Result<pb::WatchAgentsResponse, Status>)> + Send>,
>;

/// How often a merged watch looks whether shards changed hands, and works
/// the storm guard out again over the whole fleet.
const WATCH_TICK: Duration = Duration::from_secs(1);

/// A watch over every node: each node's own watch (this node's too, asked
/// over its own address like the others'), merged. The snapshot is
/// complete when every part's is; a part that falls behind or ends, or
/// shards that change hands, restart every part after a `resync`. The storm
/// guard is worked out over the whole each second, and sent when it
/// changes. `held` (the watch's place among the caller's, and its session,
/// whose revocation ends the watch) is kept for as long as the watch lives.
pub(super) fn watch(
    node: Arc<ClusterNode>,
    registry: crate::registry::Registry,
    req: pb::WatchAgentsRequest,
    caller: Option<Caller>,
    held: (
        impl Send + 'static,
        Option<crate::security::sessions::SessionGuard>,
    ),
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> impl futures_util::Stream<Item = super::WatchItem> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<super::WatchItem>(super::WATCH_QUEUE);
    tokio::spawn(async move {
        let (_admission, session) = held;
        let stopping = tx.clone();
        let revoked = async {
            match &session {
                Some(s) => s.revoked().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = merge(node, registry, req, caller, tx) => {}
            () = crate::stopped(&mut shutdown) => {
                let _ = stopping.send(Err(crate::open_streams::shutting_down())).await;
            }
            () = revoked => {
                let _ = stopping.send(Err(crate::open_streams::revoked())).await;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The merged watch's loop (see [`watch`]), until the watcher goes away.
async fn merge(
    node: Arc<ClusterNode>,
    registry: crate::registry::Registry,
    req: pb::WatchAgentsRequest,
    caller: Option<Caller>,
    tx: tokio::sync::mpsc::Sender<super::WatchItem>,
) {
    {
        let mut missed = 0u64;
        loop {
            // Every part, from the start.
            let routes = node.peers();
            let mut addresses: Vec<Arc<str>> = vec![node.address().clone()];
            addresses.extend(routes.iter().map(|(_, a)| a.clone()));
            let mut parts: Vec<Part> = Vec::new();
            // A part that could not be opened counts as synced: the watcher
            // gets the others' snapshot (its storm flag left down), and the
            // watch starts again at the next tick to ask that node again.
            let mut synced = vec![false; addresses.len()];
            for (i, address) in addresses.iter().enumerate() {
                let mut request = Request::new(req.clone());
                request
                    .metadata_mut()
                    .insert(SCOPE, tonic::metadata::MetadataValue::from_static("node"));
                node.stamp(&mut request, caller.as_ref());
                node.metrics().passed_on(false);
                match client(&node, address).watch_agents(request).await {
                    Ok(s) => parts.push(Box::pin(futures_util::StreamExt::map(
                        s.into_inner(),
                        move |m| (i, m),
                    ))),
                    Err(status) => {
                        tracing::warn!(error = %status, "a node's part of a watch could not be opened");
                        synced[i] = true;
                    }
                }
            }
            let complete_parts = parts.len() == addresses.len();
            if !complete_parts {
                node.metrics().incomplete_answer();
            }
            let mut merged = futures_util::stream::select_all(parts);
            let mut count = 0u64;
            let mut storm: Option<pb::Storm> = None;
            let mut tick = tokio::time::interval(WATCH_TICK);
            tick.tick().await;
            let restart = loop {
                tokio::select! {
                    item = futures_util::StreamExt::next(&mut merged) => {
                        let Some((from, item)) = item else { break true };
                        let event = match item {
                            Ok(m) => m.event,
                            Err(status) => {
                                tracing::info!(error = %status, "a node's part of a watch ended");
                                break true;
                            }
                        };
                        use pb::watch_agents_response::Event as W;
                        let out = match event {
                            Some(W::Snapshot(a)) => {
                                count += 1;
                                Some(W::Snapshot(a))
                            }
                            Some(W::Synced(s)) => {
                                synced[from] = true;
                                if let Some(st) = s.storm { storm.get_or_insert(st); }
                                synced.iter().all(|s| *s).then(|| {
                                    let whole = pb::Synced { count, storm: None, at: s.at };
                                    W::Synced(whole)
                                })
                            }
                            Some(W::Resync(r)) => {
                                missed += r.missed;
                                break true;
                            }
                            // Worked out over the whole below.
                            Some(W::Storm(_)) => None,
                            other => other,
                        };
                        if let Some(event) = out
                            && tx.send(Ok(pb::WatchAgentsResponse { event: Some(event) })).await.is_err()
                        {
                            return;
                        }
                    }
                    _ = tick.tick() => {
                        if node.peers() != routes || !complete_parts {
                            break true;
                        }
                        let whole = whole_storm(&node, caller.as_ref(), &registry, complete_parts).await;
                        let changed = storm.as_ref().is_none_or(|s| {
                            s.active != whole.active || s.dominant_why != whole.dominant_why
                        });
                        if changed && synced.iter().all(|s| *s) {
                            storm = Some(whole.clone());
                            let event = pb::watch_agents_response::Event::Storm(whole);
                            if tx.send(Ok(pb::WatchAgentsResponse { event: Some(event) })).await.is_err() {
                                return;
                            }
                        } else {
                            storm = Some(whole);
                        }
                    }
                    () = tx.closed() => return,
                }
            };
            if !restart {
                return;
            }
            // Start again: the watcher drops what it holds.
            let resync = pb::watch_agents_response::Event::Resync(pb::Resync { missed });
            missed = 0;
            if tx
                .send(Ok(pb::WatchAgentsResponse {
                    event: Some(resync),
                }))
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The storm guard over the whole fleet now, from every node's summary.
async fn whole_storm(
    node: &ClusterNode,
    caller: Option<&Caller>,
    registry: &crate::registry::Registry,
    complete_parts: bool,
) -> pb::Storm {
    let Ok(own) = super::summary_of(registry, &pb::GetSummaryRequest::default()) else {
        return pb::Storm::default();
    };
    let own = mark(Response::new(own), node);
    let s = summary(node, caller, own, pb::GetSummaryRequest::default()).await;
    let mut storm = s.storm.unwrap_or_default();
    if !complete_parts || s.incomplete {
        storm.active = false;
    }
    storm
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storm(faulty: u64, healthy: u64, whys: &[(pb::Why, u64)]) -> pb::Storm {
        pb::Storm {
            faulty,
            active_agents: faulty + healthy,
            threshold: 0.5,
            min_agents: 10,
            faulty_by_why: whys
                .iter()
                .map(|(w, n)| pb::WhyCount {
                    why: *w as i32,
                    why_text: format!("{w:?}"),
                    state: pb::State::Faulty as i32,
                    count: *n,
                })
                .collect(),
            ..pb::Storm::default()
        }
    }

    #[test]
    fn the_storm_is_worked_out_over_the_whole_fleet() {
        // Neither node alone is in a storm at its own size threshold, the
        // whole is: 12 of 20 faulty, 8 of them for one reason.
        let a = storm(
            6,
            2,
            &[(pb::Why::NoDataSent, 4), (pb::Why::NotReporting, 2)],
        );
        let b = storm(
            6,
            6,
            &[(pb::Why::NoDataSent, 4), (pb::Why::NotReporting, 2)],
        );
        let merged = merge_storms(&[a.clone(), b.clone()], true);
        assert!(merged.active);
        assert_eq!((merged.faulty, merged.active_agents), (12, 20));
        assert_eq!(merged.dominant_why, pb::Why::NoDataSent as i32);
        assert_eq!(merged.dominant_count, 8);
        // Part of the fleet missing: the flag stays down.
        assert!(!merge_storms(&[a, b], false).active);
    }
}
