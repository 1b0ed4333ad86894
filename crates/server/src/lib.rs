//! fleet-health-server: the fleet health aggregator.
//!
//! Agents stream their lifecycle events over gRPC; the server keeps one
//! health sensor per agent (the reference's rules, in `fleet-health-sensor`),
//! adds the fleet's rules (not reporting, stopped, inactive, storm guard), and
//! answers operators, orchestrators and monitoring.
//!
//! Layout:
//! - [`model`]: agent IDs, reasons, states, the fleet rules;
//! - [`registry`]: the fleet, time-driven transitions, the change feed;
//! - [`agent_service`] and [`fleet_service`]: the two gRPC services, thin;
//! - [`convert`]: wire ⇄ domain;
//! - [`metrics`]: Prometheus counters;
//! - [`clock`]: where "now" comes from (injected, so tests need not wait);
//! - [`run`]: binds it all together until a shutdown future resolves.

pub mod agent_service;
pub mod clock;
pub mod convert;
pub mod fleet_service;
pub mod metrics;
pub mod model;
pub mod registry;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fleet_health_proto::v1::agent_service_server::AgentServiceServer;
use fleet_health_proto::v1::fleet_service_server::FleetServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

use crate::agent_service::{AgentSvc, StreamLimits};
use crate::clock::Clock;
use crate::fleet_service::FleetSvc;
use crate::metrics::{FleetGauges, Metrics};
use crate::model::FleetRules;
use crate::registry::{Limits, Registry};
use crate::store::{AgentStore, StoreError};

/// Everything the server can be told.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// The fleet's rules: windows and thresholds.
    pub rules: FleetRules,
    /// Registry limits.
    pub limits: Limits,
    /// Agent stream limits.
    pub streams: StreamLimits,
    /// Transport settings.
    pub transport: Transport,
}

/// HTTP/2 and message settings.
#[derive(Clone, Debug)]
pub struct Transport {
    /// The largest message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// HTTP/2 window of each stream, in bytes.
    pub stream_window: u32,
    /// HTTP/2 window of each connection, in bytes.
    pub connection_window: u32,
    /// How often to ping an idle connection to see that it is alive.
    pub keepalive_interval: Duration,
    /// How long to wait for the ping's answer before closing the connection.
    pub keepalive_timeout: Duration,
}

impl Default for Transport {
    fn default() -> Transport {
        Transport {
            max_message_bytes: 256 * 1024,
            max_concurrent_streams: 1024,
            stream_window: 64 * 1024,
            connection_window: 1024 * 1024,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(20),
        }
    }
}

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
}

/// A server: its registry, its store (if durable) and its settings.
pub struct Server {
    registry: Registry,
    store: Option<Arc<dyn AgentStore>>,
    config: Config,
}

impl Server {
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
        }
    }

    /// A server on a durable store: loads every agent from it, and from then
    /// on acknowledges events only once they are committed to it.
    pub fn durable(
        config: Config,
        clock: Arc<dyn Clock>,
        store: impl AgentStore,
    ) -> Result<Server, StoreError> {
        let started = std::time::Instant::now();
        let registry = Registry::durable(
            config.rules.clone(),
            config.limits.clone(),
            clock,
            Arc::new(Metrics::default()),
        );
        let records = store.load()?;
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
        })
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Serves gRPC on `grpc` (and metrics on `metrics`, if given) until
    /// `shutdown` resolves; then stops accepting, ends open streams with
    /// UNAVAILABLE, answers what is in flight, and returns.
    pub async fn run(
        self,
        grpc: TcpListener,
        metrics: Option<TcpListener>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let Server {
            registry,
            store,
            config,
        } = self;
        let (stop_tx, stop_rx) = watch::channel(false);

        let (health, health_svc) = tonic_health::server::health_reporter();
        health.set_serving::<AgentServiceServer<AgentSvc>>().await;
        health.set_serving::<FleetServiceServer<FleetSvc>>().await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(fleet_health_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;

        let t = &config.transport;
        let agents = AgentServiceServer::new(AgentSvc::new(
            registry.clone(),
            config.streams.clone(),
            stop_rx.clone(),
        ))
        .max_decoding_message_size(t.max_message_bytes);
        let fleet = FleetServiceServer::new(FleetSvc::new(registry.clone(), stop_rx.clone()))
            .max_decoding_message_size(t.max_message_bytes)
            .max_encoding_message_size(64 * 1024 * 1024);

        let scheduler = {
            let registry = registry.clone();
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                registry
                    .run_scheduler(async move { stopped(&mut stop).await })
                    .await;
            })
        };

        let metrics_task = match metrics {
            Some(listener) => {
                let addr = listener.local_addr()?;
                tracing::info!(%addr, "metrics at http://{addr}/metrics");
                Some(tokio::spawn(serve_metrics(
                    listener,
                    registry.clone(),
                    stop_rx.clone(),
                )))
            }
            None => None,
        };

        // The committer stops only after the gRPC server has: streams waiting
        // for a commit are answered first.
        let (committer_stop, committer_rx) = watch::channel(false);
        let committer = tokio::spawn(run_committer(registry.clone(), store.clone(), committer_rx));

        let incoming = TcpListenerStream::new(grpc);
        let stop_signal = {
            let health = health.clone();
            async move {
                shutdown.await;
                tracing::info!("shutting down: no new connections; ending open streams");
                health
                    .set_not_serving::<AgentServiceServer<AgentSvc>>()
                    .await;
                health
                    .set_not_serving::<FleetServiceServer<FleetSvc>>()
                    .await;
                let _ = stop_tx.send(true);
            }
        };
        let result = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(t.keepalive_interval))
            .http2_keepalive_timeout(Some(t.keepalive_timeout))
            .initial_stream_window_size(t.stream_window)
            .initial_connection_window_size(t.connection_window)
            .max_concurrent_streams(t.max_concurrent_streams)
            .add_service(health_svc)
            .add_service(reflection)
            .add_service(agents)
            .add_service(fleet)
            .serve_with_incoming_shutdown(incoming, stop_signal)
            .await;
        let _ = scheduler.await;
        if let Some(store) = store {
            // Every stream has ended: write what is left, then stop.
            committer_stop.send_replace(true);
            let _ = committer.await;
            drop(store);
        }
        if let Some(task) = metrics_task
            && let Ok(Err(e)) = task.await
        {
            tracing::warn!(error = %e, "metrics endpoint failed");
        }
        tracing::info!("stopped");
        Ok(result?)
    }
}

/// Writes what the registry marks dirty, in group commits, until stopped;
/// then writes what is left. A failed commit is retried (nothing is
/// acknowledged meanwhile): a full disk stalls acknowledgements, it loses
/// nothing.
async fn run_committer(
    registry: Registry,
    store: Option<Arc<dyn AgentStore>>,
    mut stop: watch::Receiver<bool>,
) {
    let Some(store) = store else { return };
    loop {
        let last = tokio::select! {
            () = registry.dirty() => false,
            () = stopped(&mut stop) => true,
        };
        // Shared with the blocking task: a retry writes the same batch again
        // without copying it.
        let batch = Arc::new(registry.take_dirty());
        let mut backoff = Duration::from_millis(50);
        loop {
            if batch.upserts.is_empty() && batch.deletes.is_empty() {
                break;
            }
            let started = std::time::Instant::now();
            let (store, written) = (store.clone(), batch.clone());
            let result = tokio::task::spawn_blocking(move || {
                store.commit(&written.upserts, &written.deletes)
            })
            .await;
            match result {
                Ok(Ok(())) => {
                    registry.metrics().observe_commit(
                        batch.upserts.len() + batch.deletes.len(),
                        started.elapsed(),
                    );
                    break;
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, retry_in_ms = backoff.as_millis() as u64, "commit failed")
                }
                Err(e) => tracing::error!(error = %e, "commit task failed"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        registry.mark_committed(batch.epoch);
        if last {
            tracing::info!("state committed");
            return;
        }
    }
}

/// Serves `/metrics` (Prometheus text format) and `/healthz` until stopped.
async fn serve_metrics(
    listener: TcpListener,
    registry: Registry,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    let gauges = FleetGauges {
                        by_reason: registry.counts().into_array(),
                        connected: registry.connected(),
                    };
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        registry.metrics().render(&gauges),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stopped(&mut stop).await })
        .await
}

/// Resolves once `stop` turns true (or its sender is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Binds a listener, with the address in the error.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}
