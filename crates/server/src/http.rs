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
                        by_why: registry.counts(),
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use fleet_health_sensor::Time;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::clock::ManualClock;
    use crate::net::Connections;
    use crate::{Config, Server};

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connects");
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("writes");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("reads");
        out
    }

    #[tokio::test]
    async fn serves_metrics_and_healthz_until_stopped() {
        let clock = ManualClock::new(Time::from_micros(1_700_000_000_000_000).expect("in range"));
        let server = Server::in_memory(Config::default(), Arc::new(clock));
        let listener = crate::bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("binds");
        let addr = listener.local_addr().expect("addr");
        let stop = Stop::new();
        let task = tokio::spawn(serve(
            Acceptor::new(listener, Connections::new()),
            server.registry().clone(),
            stop.clone(),
        ));

        let health = get(addr, "/healthz").await;
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        assert!(health.ends_with("\r\n\r\nok\n"), "{health}");

        let metrics = get(addr, "/metrics").await;
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        assert!(
            metrics
                .to_ascii_lowercase()
                .contains("\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8\r\n"),
            "{metrics}"
        );
        assert!(
            metrics.contains("\nfleet_health_agents_connected 0\n"),
            "{metrics}"
        );

        let missing = get(addr, "/nope").await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");

        stop.begin();
        task.await.expect("ends").expect("serves cleanly");
    }
}
