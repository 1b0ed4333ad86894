//! Wiring: builds the server from a [`Config`] and serves gRPC (and the
//! HTTP endpoint) until a shutdown future resolves.

use std::sync::Arc;
use std::time::Instant;

use fleet_health_proto::v1::admin_service_server::AdminServiceServer;
use fleet_health_proto::v1::agent_service_server::AgentServiceServer;
use fleet_health_proto::v1::fleet_service_server::FleetServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin_service::AdminService;
use crate::agent_service::AgentService;
use crate::clock::Clock;
use crate::cluster::db::Db;
use crate::cluster::membership::Ownership;
use crate::cluster::node::ClusterNode;
use crate::cluster::store::ClusterStore;
use crate::config::{ClusterConfig, Config, Storage};
use crate::fleet_service::FleetService;
use crate::metrics::Metrics;
use crate::net::{Acceptor, Admission, Connections};
use crate::open_streams::OpenStreams;
use crate::readiness::Readiness;
use crate::registry::Registry;
use crate::security::Security;
use crate::security::layer::AuthLayer;
use crate::shutdown::{Stop, enforce_deadline};
use crate::store::{AgentStore, RedbStore, StoreError, StoreOptions};
use crate::web::Gate;
use crate::{committer, http};

/// The largest message the fleet service sends (a page of agents).
pub(crate) const MAX_ENCODED_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The gRPC transport failed.
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Reflection could not read the descriptors.
    #[error("server reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The durable store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The metrics listener failed.
    #[error("metrics endpoint: {0}")]
    Metrics(#[from] std::io::Error),
    /// TLS, the tokens file or the audit log could not be set up.
    #[error("{0}")]
    Security(String),
}

/// Where a server listens.
#[derive(Debug)]
pub struct Listeners {
    /// gRPC: agents, the CLI, orchestrators.
    pub grpc: TcpListener,
    /// `/metrics`, `/healthz`, `/readyz`, and the web view without security.
    pub metrics: Option<TcpListener>,
    /// The web view on its own port (`--web-listen`): over TLS, with
    /// sign-in, when security is on.
    pub web: Option<TcpListener>,
}

/// A server: its registry, its store (if durable) and its settings.
pub struct Server {
    registry: Registry,
    store: Option<Arc<dyn AgentStore>>,
    config: Config,
    cluster: Option<ClusterParts>,
}

/// What a cluster node brings to [`Server::run_all`].
struct ClusterParts {
    config: ClusterConfig,
    shards: u32,
    ownership: Arc<Ownership>,
    /// For the membership loop.
    rounds: Db,
    /// For loading the shards taken.
    loads: Db,
}

impl Server {
    /// The server that `config.storage` asks for: in memory, or on the
    /// durable store in its directory (loading every agent from it).
    pub fn open(config: Config, clock: Arc<dyn Clock>) -> Result<Server, StoreError> {
        match config.storage.clone() {
            Storage::InMemory => {
                tracing::warn!(
                    "IN-MEMORY: no state is kept on disk; a restart forgets the whole fleet"
                );
                Ok(Server::in_memory(config, clock))
            }
            Storage::Durable { dir, cache_bytes } => {
                let options = StoreOptions {
                    cache_bytes,
                    ..StoreOptions::default()
                };
                let store = RedbStore::open_with(&dir, options)?;
                Server::durable(config, clock, store)
            }
            Storage::Cluster(_) => Err(StoreError::Db(
                "a cluster node is opened with Server::cluster".into(),
            )),
        }
    }

    /// A node of the cluster `config.storage` names: connects to its
    /// database, makes its tables if they are missing, and starts with no
    /// agent (it loads each shard's agents when it takes the shard, in
    /// [`Server::run_all`]).
    pub async fn cluster(config: Config, clock: Arc<dyn Clock>) -> Result<Server, StoreError> {
        let Storage::Cluster(cluster) = config.storage.clone() else {
            return Err(StoreError::Db("not a cluster's configuration".into()));
        };
        let where_ = crate::cluster::store::redact(&cluster.url);
        let fail = |e: crate::cluster::db::DbError| StoreError::Db(format!("{where_}: {e}"));
        let mut rounds = Db::connect(&cluster.url).await.map_err(fail)?;
        let shards = rounds.migrate(cluster.shards).await.map_err(fail)?;
        let loads = Db::connect(&cluster.url).await.map_err(fail)?;
        let writes = Db::connect(&cluster.url).await.map_err(fail)?;
        let ownership = Arc::new(Ownership::default());
        let store = ClusterStore::new(
            writes,
            cluster.url.clone(),
            cluster.node.clone(),
            shards,
            ownership.clone(),
            tokio::runtime::Handle::current(),
        );
        tracing::info!(node = %cluster.node, database = %where_, shards, "cluster node");
        let registry = Registry::durable(
            config.rules.clone(),
            config.limits.clone(),
            clock,
            Arc::new(Metrics::default()),
        );
        Ok(Server {
            registry,
            store: Some(Arc::new(store)),
            config,
            cluster: Some(ClusterParts {
                config: cluster,
                shards,
                ownership,
                rounds,
                loads,
            }),
        })
    }

    /// A server that keeps its state in memory only: a restart forgets the fleet.
    pub fn in_memory(config: Config, clock: Arc<dyn Clock>) -> Server {
        let registry = Registry::new(
            config.rules.clone(),
            config.limits.clone(),
            clock,
            Arc::new(Metrics::default()),
        );
        Server {
            registry,
            store: None,
            config,
            cluster: None,
        }
    }

    /// A server on a durable store: loads every agent from it, and from then
    /// on acknowledges events only once they are committed to it.
    pub fn durable(
        config: Config,
        clock: Arc<dyn Clock>,
        store: impl AgentStore,
    ) -> Result<Server, StoreError> {
        let started = Instant::now();
        let records = store.load()?;
        // Built once the records are read, and sized for them. (Its clock's
        // time now starts the grace after a restart: agents could not
        // report while the store loaded.)
        let registry = Registry::durable_with_capacity(
            config.rules.clone(),
            config.limits.clone(),
            clock,
            Arc::new(Metrics::default()),
            records.len(),
        );
        let n = registry
            .restore(records)
            .map_err(|e| StoreError::corrupt(store.location(), e))?;
        tracing::info!(
            agents = n,
            path = %store.location(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "state loaded"
        );
        Ok(Server {
            registry,
            store: Some(Arc::new(store)),
            config,
            cluster: None,
        })
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Serves gRPC on `grpc` (and metrics on `metrics`, if given) until
    /// `shutdown` resolves; then stops accepting, ends open streams with
    /// UNAVAILABLE, answers what is in flight, cuts what is still open after
    /// the drain timeout, writes what is left to the store, and returns.
    pub async fn run(
        self,
        grpc: TcpListener,
        metrics: Option<TcpListener>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        self.run_all(
            Listeners {
                grpc,
                metrics,
                web: None,
            },
            shutdown,
        )
        .await
    }

    /// As [`Server::run`], on every listener of `listeners` (the web view's
    /// own port too).
    pub async fn run_all(
        self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let Listeners { grpc, metrics, web } = listeners;
        let Server {
            registry,
            store,
            config,
            cluster,
        } = self;
        let stop = Stop::new();
        let readiness = Arc::new(Readiness::new());
        let counters = registry.metrics().clone();
        let connections = Connections::with_limits(config.transport.connections, counters.clone());
        let security = Arc::new(
            Security::from_config(
                &config.security,
                &config.storage,
                counters,
                registry.clock().clone(),
            )
            .map_err(ServeError::Security)?,
        );
        if web.is_some() && security.enabled() && security.tls().is_none() {
            return Err(ServeError::Security(
                "--web-listen with security on needs TLS (--tls-cert, --tls-key): the web view's sign-in is kept in a cookie sent over TLS only".into(),
            ));
        }
        if config.security.insecure {
            tracing::warn!(
                "INSECURE: gRPC is plaintext on a non-loopback address (--insecure): anyone on the network can read it and report for any agent"
            );
        } else if !security.enabled() {
            tracing::info!("security off: plaintext gRPC on loopback, every call allowed");
        }
        let reloader = {
            let (security, stop) = (security.clone(), stop.clone());
            let all = security.reloadables();
            tokio::spawn(async move {
                crate::reload::watch_files(
                    all,
                    |what, result| security.audit_reload(what, result),
                    stop.given(),
                )
                .await;
            })
        };
        let sweeper = tokio::spawn(crate::security::sessions::run(security.clone(), {
            let stop = stop.clone();
            async move { stop.given().await }
        }));

        let (health, health_svc) = tonic_health::server::health_reporter();
        health
            .set_serving::<AgentServiceServer<AgentService>>()
            .await;
        health
            .set_serving::<FleetServiceServer<FleetService>>()
            .await;
        // Reflection in both versions: v1, and v1alpha, which older grpcurl
        // and many tools still ask for.
        let reflection_builder = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(fleet_health_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection = reflection_builder().build_v1()?;
        let reflection_v1alpha = reflection_builder().build_v1alpha()?;

        let t = &config.transport;
        let open_streams = OpenStreams::new();
        // A cluster node: its membership rounds, and what it does when
        // shards change hands.
        let (node, membership_task, node_task) = match cluster {
            Some(parts) => {
                if let Some(peers) = &parts.config.peers {
                    security.set_cluster_secret(peers.secret.clone());
                }
                let node = Arc::new(
                    ClusterNode::new(
                        parts.config.node.clone(),
                        &parts.config.address,
                        parts.config.url.clone(),
                        parts.config.lease,
                        registry.clone(),
                        open_streams.clone(),
                        parts.ownership.clone(),
                        parts.shards,
                    )
                    .with_peer_security(parts.config.peers.clone()),
                );
                let (events_tx, events_rx) = tokio::sync::mpsc::channel(16);
                let node_task = tokio::spawn(node.clone().run(
                    parts.loads,
                    parts.config.url.clone(),
                    events_rx,
                ));
                let settings = crate::cluster::membership::Settings::new(
                    parts.config.url.clone(),
                    parts.config.node.clone(),
                    parts.config.address.clone(),
                    parts.config.lease,
                );
                let membership_task = tokio::spawn(crate::cluster::membership::run(
                    parts.rounds,
                    settings,
                    parts.shards,
                    parts.ownership.clone(),
                    events_tx,
                    {
                        let stop = stop.clone();
                        async move { stop.given().await }
                    },
                    {
                        let readiness = readiness.clone();
                        let metrics = registry.metrics().clone();
                        let ownership = parts.ownership.clone();
                        readiness.set_cluster_out(true);
                        move |ok: bool| {
                            readiness.set_cluster_out(!ok);
                            metrics.cluster_round(ok, ownership.len());
                        }
                    },
                ));
                (Some(node), Some(membership_task), Some(node_task))
            }
            None => (None, None, None),
        };
        let agent_service = AgentService::new(
            registry.clone(),
            config.streams.clone(),
            open_streams.clone(),
            stop.subscribe(),
            security.clone(),
        );
        let agent_service = match &node {
            Some(node) => agent_service.in_cluster(node.clone()),
            None => agent_service,
        };
        let agents =
            AgentServiceServer::new(agent_service).max_decoding_message_size(t.max_message_bytes);
        let fleet_service = FleetService::new(
            registry.clone(),
            open_streams.clone(),
            stop.subscribe(),
            security.clone(),
            config.watch,
        );
        let fleet_service = match &node {
            Some(node) => fleet_service.in_cluster(node.clone()),
            None => fleet_service,
        };
        let web_source =
            crate::web::Source::new(fleet_service.clone(), registry.clone(), node.is_some());
        let fleet = FleetServiceServer::new(fleet_service)
            .max_decoding_message_size(t.max_message_bytes)
            .max_encoding_message_size(MAX_ENCODED_MESSAGE_BYTES);
        let admin = AdminServiceServer::new(AdminService::new(store.clone()))
            .max_encoding_message_size(MAX_ENCODED_MESSAGE_BYTES);

        let scheduler = {
            let (registry, stop) = (registry.clone(), stop.clone());
            tokio::spawn(async move { registry.run_scheduler(stop.given()).await })
        };
        let expiry = {
            let (registry, stop) = (registry.clone(), stop.clone());
            tokio::spawn(async move { registry.run_maintenance_expiry(stop.given()).await })
        };

        let web_addr = web.as_ref().map(TcpListener::local_addr).transpose()?;
        let web_task = match web {
            Some(listener) => {
                let addr = listener.local_addr()?;
                let acceptor = Acceptor::new(listener, connections.clone());
                let (acceptor, gate) = match security.tls() {
                    Some(tls) => {
                        tracing::info!(%addr, "web view at https://{addr}/ (sign-in needed)");
                        let admission = Admission {
                            tls: Some(tls.clone()),
                            timeout: t.handshake_timeout,
                            max_in_progress: t.max_handshakes,
                            audit: security.audit().clone(),
                            web: true,
                        };
                        (
                            http::WebAcceptor::Tls(acceptor.https(admission, t.handshake_timeout)?),
                            Gate::Signed(security.clone()),
                        )
                    }
                    None => {
                        tracing::info!(%addr, "web view at http://{addr}/");
                        (
                            http::WebAcceptor::Plain(acceptor.http(t.handshake_timeout)),
                            Gate::Open,
                        )
                    }
                };
                Some(tokio::spawn(http::serve_web(
                    acceptor,
                    web_source.clone(),
                    gate,
                    stop.clone(),
                )))
            }
            None => None,
        };
        let metrics_task = match metrics {
            Some(listener) => {
                let addr = listener.local_addr()?;
                tracing::info!(%addr, "metrics at http://{addr}/metrics");
                if !security.enabled() {
                    tracing::info!(%addr, "web view at http://{addr}/");
                }
                Some(tokio::spawn(http::serve(
                    Acceptor::new(listener, connections.clone()).http(t.handshake_timeout),
                    registry.clone(),
                    readiness.clone(),
                    web_source,
                    Gate::http_port(security.enabled(), web_addr),
                    stop.clone(),
                )))
            }
            None => None,
        };

        // The committer stops only after the gRPC server has: streams waiting
        // for a commit are answered first.
        let (committer_stop, committer_rx) = watch::channel(false);
        let committer = store.clone().map(|store| {
            let readiness = readiness.clone();
            tokio::spawn(committer::run(
                registry.clone(),
                store,
                readiness,
                committer_rx,
                node.clone().map(|n| n as Arc<dyn committer::Fenced>),
            ))
        });

        let deadline = tokio::spawn(enforce_deadline(
            stop.clone(),
            config.shutdown.drain_timeout,
            connections.clone(),
        ));

        let stop_signal = {
            let (health, stop, readiness) = (health.clone(), stop.clone(), readiness.clone());
            async move {
                shutdown.await;
                readiness.set_draining();
                crate::systemd::stopping();
                tracing::info!("shutting down: no new connections; ending open streams");
                health
                    .set_not_serving::<AgentServiceServer<AgentService>>()
                    .await;
                health
                    .set_not_serving::<FleetServiceServer<FleetService>>()
                    .await;
                stop.begin();
                open_streams.shut_down();
            }
        };
        let incoming = Acceptor::new(grpc, connections.clone()).admit(Admission {
            tls: security.tls().cloned(),
            timeout: t.handshake_timeout,
            max_in_progress: t.max_handshakes,
            audit: security.audit().clone(),
            web: false,
        });
        readiness.set_serving();
        crate::systemd::ready();
        let watchdog = {
            let stop = stop.clone();
            tokio::spawn(async move { crate::systemd::watchdog(stop.given()).await })
        };
        let result = t
            .server_builder()
            .layer(AuthLayer::new(security.clone()))
            .add_service(health_svc)
            .add_service(reflection)
            .add_service(reflection_v1alpha)
            .add_service(agents)
            .add_service(fleet)
            .add_service(admin)
            .serve_with_incoming_shutdown(incoming, stop_signal)
            .await;
        // Also when the transport failed before any signal: every part stops.
        stop.begin();
        // A cluster node hands its shards over (their last writes go
        // through the committer, still running) before it stops.
        if let Some(task) = membership_task {
            let _ = task.await;
        }
        if let Some(task) = node_task {
            let _ = task.await;
        }
        let _ = scheduler.await;
        let _ = expiry.await;
        let _ = watchdog.await;
        let _ = reloader.await;
        let _ = sweeper.await;
        if let Some(task) = metrics_task
            && let Ok(Err(e)) = task.await
        {
            tracing::warn!(error = %e, "metrics endpoint failed");
        }
        if let Some(task) = web_task
            && let Ok(Err(e)) = task.await
        {
            tracing::warn!(error = %e, "web view endpoint failed");
        }
        deadline.abort();
        if let Some(committer) = committer {
            // Every stream has ended: write what is left, then stop.
            committer_stop.send_replace(true);
            let _ = committer.await;
        }
        drop(store);
        tracing::info!("stopped");
        Ok(result?)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use fleet_health_proto::v1 as pb;
    use fleet_health_proto::v1::agent_service_client::AgentServiceClient;
    use fleet_health_proto::v1::fleet_service_client::FleetServiceClient;
    use fleet_health_sensor::Time;
    use pb::report_request::Body as In;
    use tokio::sync::{mpsc, oneshot};
    use tokio_stream::wrappers::ReceiverStream;
    use tonic::transport::{Channel, Endpoint};

    use super::*;
    use crate::clock::ManualClock;

    /// A server on an ephemeral port with `config`; the sender stops it.
    async fn start(
        config: Config,
    ) -> (
        std::net::SocketAddr,
        oneshot::Sender<()>,
        tokio::task::JoinHandle<Result<(), ServeError>>,
    ) {
        let clock = ManualClock::new(Time::from_micros(1_700_000_000_000_000).expect("in range"));
        let server = Server::in_memory(config, Arc::new(clock));
        let grpc = crate::bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("binds");
        let addr = grpc.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(grpc, None, async move {
            let _ = stopped.await;
        }));
        (addr, stop, task)
    }

    /// Makes `n` agents known: each says hello on a stream of its own and goes.
    async fn known_agents(channel: &Channel, n: usize) {
        for i in 0..n {
            let (tx, rx) = mpsc::channel(1);
            tx.send(pb::ReportRequest {
                body: Some(In::Hello(pb::Hello {
                    agent_id: format!("agent-with-a-longish-name-{i:04}"),
                    incarnation: 1,
                    labels: [("site".to_string(), "eu-west".to_string())].into(),
                })),
            })
            .await
            .expect("queued");
            let mut replies = AgentServiceClient::new(channel.clone())
                .report(ReceiverStream::new(rx))
                .await
                .expect("stream opens")
                .into_inner();
            replies
                .message()
                .await
                .expect("welcomed")
                .expect("a welcome");
        }
    }

    #[tokio::test]
    async fn shutdown_keeps_its_deadline_when_a_client_stops_reading() {
        let drain = Duration::from_millis(300);
        let mut config = Config::default();
        config.shutdown.drain_timeout = drain;
        let (addr, stop, task) = start(config).await;
        // A client whose stream window (1 KiB) a watch's snapshot overfills:
        // the server can neither finish that stream nor end it cleanly while
        // the client does not read.
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .expect("uri")
            .initial_stream_window_size(1024)
            .connect()
            .await
            .expect("connects");
        known_agents(&channel, 64).await;
        let unread = FleetServiceClient::new(channel.clone())
            .watch_agents(pb::WatchAgentsRequest::default())
            .await
            .expect("watch opens")
            .into_inner();

        let asked = tokio::time::Instant::now();
        stop.send(()).expect("server running");
        tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("run returns once the drain deadline has passed")
            .expect("server task ends")
            .expect("server stops cleanly");
        // The watch could not end by itself: the deadline ended it.
        assert!(asked.elapsed() >= drain, "{:?}", asked.elapsed());
        drop(unread);
    }

    #[tokio::test]
    async fn shutdown_waits_for_nothing_when_nothing_is_stuck() {
        let mut config = Config::default();
        config.shutdown.drain_timeout = Duration::from_secs(3600);
        let (addr, stop, task) = start(config).await;
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
            .expect("connects");
        known_agents(&channel, 3).await;
        let mut watch = FleetServiceClient::new(channel.clone())
            .watch_agents(pb::WatchAgentsRequest::default())
            .await
            .expect("watch opens")
            .into_inner();
        stop.send(()).expect("server running");
        // A reading watcher is told to come back, and the server stops long
        // before the (hour-long) deadline.
        let ended = loop {
            match watch.message().await {
                Ok(Some(_)) => {}
                Ok(None) => panic!("the watch ended without a status"),
                Err(status) => break status,
            }
        };
        assert_eq!(ended.code(), tonic::Code::Unavailable, "{ended:?}");
        tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("run returns")
            .expect("server task ends")
            .expect("server stops cleanly");
    }
}
