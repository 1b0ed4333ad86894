//! The HTTP endpoint for monitoring: `/metrics` (Prometheus text format) and
//! `/healthz` (a liveness answer that needs no gRPC client).

use axum::routing::get;

use crate::metrics::{CONTENT_TYPE, FleetGauges};
use crate::net::Acceptor;
use crate::registry::Registry;
use crate::shutdown::Stop;

/// The endpoint's routes over `registry`.
pub fn router(registry: Registry) -> axum::Router {
    axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    let gauges = FleetGauges {
                        by_reason: registry.counts(),
                        connected: registry.connected(),
                    };
                    (
                        [(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)],
                        registry.metrics().render(&gauges),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
}

/// Serves the endpoint on `acceptor` until `stop` is given and the requests
/// in flight are answered.
pub async fn serve(acceptor: Acceptor, registry: Registry, stop: Stop) -> std::io::Result<()> {
    axum::serve(acceptor, router(registry))
        .with_graceful_shutdown(async move { stop.given().await })
        .await
}
