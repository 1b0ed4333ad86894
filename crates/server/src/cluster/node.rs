//! What a cluster node does when its shards change hands: the server's
//! side of the [`membership`](super::membership) loop's events, and of a
//! write refused by the fence.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::db::Db;
use super::membership::{Event, Ownership};
use super::shard::shard_of;
use crate::open_streams::OpenStreams;
use crate::registry::Registry;

/// The header a server of a cluster shows the others, with the cluster's
/// secret, on every call it passes on (over TLS).
pub const NODE_SECRET: &str = "fleet-health-node-secret";
/// The header that says whom a call passed on is from
/// ([`fleet_health_auth::Identity::to_wire`]).
pub const CALLER: &str = "fleet-health-caller";

/// How a node reaches the others when security is on.
#[derive(Clone, PartialEq, Eq)]
pub struct PeerSecurity {
    /// The trust bundle for the other nodes' server certificates.
    pub ca: std::path::PathBuf,
    /// The cluster's shared secret.
    pub secret: Arc<str>,
    /// The name the other servers' certificates are checked for; `None`:
    /// the host of the address each advertises.
    pub server_name: Option<String>,
}

impl std::fmt::Debug for PeerSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerSecurity")
            .field("ca", &self.ca)
            .field("server_name", &self.server_name)
            .field("secret", &"<secret>")
            .finish()
    }
}

/// The longest a hand-over waits for its last writes.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the connection to another node is pinged: four times a lease,
/// and not more than every 100 ms.
fn peer_ping_interval(lease: Duration) -> Duration {
    (lease / 4).max(Duration::from_millis(100))
}

/// A node's registry, streams and shards, as the cluster moves them.
pub struct ClusterNode {
    id: String,
    address: Arc<str>,
    /// The database (for status answers: a connection each).
    url: String,
    lease: Duration,
    registry: Registry,
    streams: OpenStreams,
    ownership: Arc<Ownership>,
    shards: u32,
    /// One HTTP/2 connection to each other node, made on first use: the
    /// streams and calls passed on share it.
    channels: dashmap::DashMap<Arc<str>, tonic::transport::Channel>,
    /// With security on: TLS to the others, and the secret shown to them.
    peer_security: Option<PeerSecurity>,
}

impl std::fmt::Debug for ClusterNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterNode")
            .field("shards", &self.shards)
            .finish_non_exhaustive()
    }
}

impl ClusterNode {
    /// The node over `registry` and `streams`, holding what `ownership`
    /// says, in a cluster of `shards` shards.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: String,
        address: &str,
        url: String,
        lease: Duration,
        registry: Registry,
        streams: OpenStreams,
        ownership: Arc<Ownership>,
        shards: u32,
    ) -> ClusterNode {
        ClusterNode {
            id,
            address: Arc::from(address),
            url,
            lease,
            registry,
            streams,
            ownership,
            shards,
            channels: dashmap::DashMap::new(),
            peer_security: None,
        }
    }

    /// This node with security on: TLS to the others, and `security`'s
    /// secret on every call passed on.
    pub fn with_peer_security(mut self, security: Option<PeerSecurity>) -> ClusterNode {
        self.peer_security = security;
        self
    }

    /// Marks `request`, passed on to another node, with the cluster's
    /// secret and whom it is from (with security on; nothing without).
    pub fn stamp<T>(
        &self,
        request: &mut tonic::Request<T>,
        caller: Option<&crate::security::Caller>,
    ) {
        let Some(security) = &self.peer_security else {
            return;
        };
        if let Ok(v) = security.secret.parse() {
            request.metadata_mut().insert(NODE_SECRET, v);
        }
        if let Some(c) = caller
            && let Ok(v) = c.identity.to_wire().parse()
        {
            request.metadata_mut().insert(CALLER, v);
        }
    }

    /// This node's ID.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The address other nodes reach this node on.
    pub fn address(&self) -> &Arc<str> {
        &self.address
    }

    /// The cluster's database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The lease shards are held with.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// The cluster's shard count.
    pub fn shard_count(&self) -> u32 {
        self.shards
    }

    /// The other nodes that serve shards now (node ID, address), as last
    /// read.
    pub fn peers(&self) -> Vec<(Arc<str>, Arc<str>)> {
        let mut peers: Vec<(Arc<str>, Arc<str>)> = (0..self.shards)
            .filter_map(|s| self.ownership.route(s))
            .filter(|(node, _)| **node != *self.id)
            .collect();
        peers.sort();
        peers.dedup();
        peers
    }

    /// The address of the node that serves agent `id` now, if another live
    /// node does.
    pub fn route_of(&self, id: &str) -> Option<Arc<str>> {
        self.ownership
            .route(self.shard_of(id))
            .filter(|(node, _)| **node != *self.id)
            .map(|(_, address)| address)
    }

    /// The connection to the node at `address` (made lazily, reconnecting
    /// by itself).
    pub fn channel(&self, address: &str) -> tonic::transport::Channel {
        if let Some(c) = self.channels.get(address) {
            return c.clone();
        }
        let plain = || {
            tonic::transport::Endpoint::from_shared(format!("http://{address}")).unwrap_or_else(
                |_| tonic::transport::Endpoint::from_static("http://invalid.invalid"),
            )
        };
        let endpoint = match &self.peer_security {
            None => plain(),
            Some(security) => {
                let credentials = fleet_health_client::Credentials {
                    ca: Some(security.ca.clone()),
                    ..Default::default()
                };
                let endpoint = fleet_health_client::endpoint_with(
                    &format!("https://{address}"),
                    Duration::from_secs(5),
                    &credentials,
                );
                let endpoint = match (endpoint, &security.server_name) {
                    (Ok(e), Some(name)) => std::fs::read(&security.ca)
                        .map_err(|e| e.to_string())
                        .and_then(|ca| {
                            e.tls_config(
                                tonic::transport::ClientTlsConfig::new()
                                    .ca_certificate(tonic::transport::Certificate::from_pem(ca))
                                    .domain_name(name.clone()),
                            )
                            .map_err(|e| e.to_string())
                        }),
                    (e, _) => e.map_err(|e| e.to_string()),
                };
                endpoint.unwrap_or_else(|e| {
                    tracing::error!(error = %e, "cannot set up TLS to the other servers");
                    plain()
                })
            }
        };
        // A peer that stops answering (paused, or cut off without its
        // connections closing) must not hold the streams passed on to it:
        // their agents wait for acknowledgements that cannot come. It is
        // pinged four times a lease, and dropped when a ping goes a lease
        // without an answer, which ends every stream passed on to it (the
        // agents reconnect, and reach the shard's next owner). By then the
        // peer has stopped serving on its own clock anyway.
        let endpoint = endpoint
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(peer_ping_interval(self.lease))
            .keep_alive_timeout(self.lease)
            .keep_alive_while_idle(true);
        let channel = endpoint.connect_lazy();
        self.channels.insert(Arc::from(address), channel.clone());
        channel
    }

    /// The shard of agent `id`.
    pub fn shard_of(&self, id: &str) -> u32 {
        shard_of(id, self.shards)
    }

    /// Whether this node serves agent `id` now.
    pub fn serves(&self, id: &str) -> bool {
        self.ownership.serves(self.shard_of(id))
    }

    /// What this node holds.
    pub fn ownership(&self) -> &Arc<Ownership> {
        &self.ownership
    }

    /// Ends the streams of the agents of `shards` and lets them go from the
    /// registry (their changes not yet written are dropped: they were not
    /// acknowledged, and the agents send them again to the new owner).
    pub fn let_go(&self, shards: &[u32]) {
        let n = self.shards;
        let gone = |k: &str| shards.contains(&shard_of(k, n));
        self.streams.moved(gone);
        let left = self.registry.let_go(&gone);
        // A stream that registered meanwhile ends too.
        self.streams.moved(gone);
        tracing::info!(shards = shards.len(), agents = left, "shards let go");
    }

    /// A write was refused because `shards` are now another node's.
    pub fn lost(&self, shards: &[u32]) {
        self.ownership.give_up(shards);
        self.registry.metrics().cluster_lost(shards.len());
        self.let_go(shards);
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        self.registry.metrics()
    }

    /// Whether agent `key` belongs to one of `shards`.
    pub fn in_shards(&self, key: &str, shards: &[u32]) -> bool {
        shards.contains(&shard_of(key, self.shards))
    }

    /// Answers the membership loop's events until it ends: loads the agents
    /// of shards taken (from `db`), hands shards over after their last
    /// writes, lets lost shards go.
    pub async fn run(self: Arc<Self>, db: Db, url: String, mut events: mpsc::Receiver<Event>) {
        let mut db = db;
        while let Some(event) = events.recv().await {
            match event {
                Event::Taken { shards, done } => {
                    let numbers: Vec<u32> = shards.iter().map(|h| h.shard).collect();
                    loop {
                        if db.is_closed() {
                            match Db::connect(&url).await {
                                Ok(fresh) => db = fresh,
                                Err(e) => {
                                    tracing::warn!(error = %e, "cannot reach the cluster database to load shards");
                                    tokio::time::sleep(Duration::from_millis(500)).await;
                                    continue;
                                }
                            }
                        }
                        match db.load(&numbers).await {
                            Ok(rows) => {
                                let records = rows.into_iter().map(|(_, id, r)| (id, r)).collect();
                                let now = self.registry.clock().now();
                                match self.registry.restore_taken(records, now) {
                                    Ok(n) => tracing::info!(
                                        shards = numbers.len(),
                                        agents = n,
                                        "shards loaded"
                                    ),
                                    Err(e) => {
                                        tracing::error!(error = %e, "a stored record of a taken shard is damaged")
                                    }
                                }
                                break;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "loading taken shards failed; retrying");
                                tokio::time::sleep(Duration::from_millis(500)).await;
                            }
                        }
                    }
                    let _ = done.send(());
                }
                Event::HandOver { shards, done } => {
                    let numbers: Vec<u32> = shards.iter().map(|h| h.shard).collect();
                    let n = self.shards;
                    // No more events for them here, then their last writes.
                    self.streams.moved(|k| numbers.contains(&shard_of(k, n)));
                    if let Some(gate) = self.registry.commits() {
                        let epoch = self.registry.flush();
                        if tokio::time::timeout(FLUSH_TIMEOUT, gate.committed_through(epoch))
                            .await
                            .is_err()
                        {
                            tracing::warn!(
                                "the last writes of shards handed over did not finish in time; their agents send again what was not acknowledged"
                            );
                        }
                    }
                    self.let_go(&numbers);
                    let _ = done.send(());
                }
                Event::Lost { shards } => {
                    self.registry.metrics().cluster_lost(shards.len());
                    self.let_go(&shards);
                }
            }
        }
    }
}

impl crate::committer::Fenced for ClusterNode {
    fn lost(&self, shards: &[u32]) {
        ClusterNode::lost(self, shards);
    }

    fn in_shards(&self, key: &str, shards: &[u32]) -> bool {
        ClusterNode::in_shards(self, key, shards)
    }
}
