//! The HTTP endpoint for monitoring: `/metrics` (Prometheus text format),
//! `/healthz` (a cheap liveness answer that needs no gRPC client) and
//! `/readyz` (200 when ready for traffic, 503 with the reasons when not:
//! starting, draining, or a store that cannot commit).

use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::get;

use crate::metrics::{CONTENT_TYPE, FleetGauges};
use crate::net::HttpAcceptor;
use crate::readiness::Readiness;
use crate::registry::Registry;
use crate::shutdown::Stop;
use crate::web::{Gate, Source};

/// The endpoint's routes over `registry`, answering readiness from
/// `readiness`, with the web view of `source` behind `gate` (see
/// [`crate::web`]).
pub fn router(
    registry: Registry,
    readiness: Arc<Readiness>,
    source: Source,
    gate: Gate,
    stop: Stop,
) -> axum::Router {
    let web = crate::web::router(source, gate, stop);
    axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    let summary = registry.summary(None);
                    let gauges = FleetGauges {
                        by_why: summary.by_why,
                        connected: summary.connected,
                        maintenance: summary.maintained.total(),
                        given_up: summary.given_up,
                    };
                    (
                        [(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)],
                        registry.metrics().render(&gauges),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let readiness = readiness.clone();
                async move {
                    match readiness.check() {
                        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
                        Err(why) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: {}\n", why.join("; ")),
                        ),
                    }
                }
            }),
        )
        .merge(web)
}

/// Serves the endpoint on `acceptor` until `stop` is given and the requests
/// in flight are answered.
pub async fn serve(
    acceptor: HttpAcceptor,
    registry: Registry,
    readiness: Arc<Readiness>,
    source: Source,
    gate: Gate,
    stop: Stop,
) -> std::io::Result<()> {
    let app = router(registry, readiness, source, gate, stop.clone())
        .into_make_service_with_connect_info::<crate::net::ConnInfo>();
    axum::serve(acceptor, app)
        .with_graceful_shutdown(async move { stop.given().await })
        .await
}

/// Serves the web view alone (and `/healthz`, for load balancers) on its
/// own port, `--web-listen`: over TLS behind [`Gate::Signed`] with security
/// on, plaintext and open without.
pub async fn serve_web(
    acceptor: WebAcceptor,
    source: Source,
    gate: Gate,
    stop: Stop,
) -> std::io::Result<()> {
    let app = crate::web::router(source, gate, stop.clone())
        .route("/healthz", get(|| async { "ok\n" }))
        .into_make_service_with_connect_info::<crate::net::ConnInfo>();
    let stopped = async move { stop.given().await };
    match acceptor {
        WebAcceptor::Plain(a) => axum::serve(a, app).with_graceful_shutdown(stopped).await,
        WebAcceptor::Tls(a) => axum::serve(a, app).with_graceful_shutdown(stopped).await,
    }
}

/// The web port's listener: TLS with security on, plaintext without.
pub enum WebAcceptor {
    /// Plaintext (security off).
    Plain(HttpAcceptor),
    /// TLS (security on).
    Tls(crate::net::TlsHttpAcceptor),
}

#[cfg(test)]
mod tests {
    use fleet_health_sensor::Time;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::clock::ManualClock;
    use crate::net::{Acceptor, ConnLimits, Connections};
    use crate::{Config, Server};
    use std::time::Duration;

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

    /// The endpoint of a server in memory on a loopback port (the web view
    /// off when `secured`), with its stop signal and task.
    async fn serving(
        secured: bool,
    ) -> (
        std::net::SocketAddr,
        Stop,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        let clock = ManualClock::new(Time::from_micros(1_700_000_000_000_000).expect("in range"));
        let server = Server::in_memory(Config::default(), Arc::new(clock));
        let listener = crate::bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("binds");
        let addr = listener.local_addr().expect("addr");
        let stop = Stop::new();
        let task = tokio::spawn(serve(
            Acceptor::new(listener, Connections::new()).http(Duration::from_secs(10)),
            server.registry().clone(),
            Arc::new(Readiness::new()),
            Source::of_registry(server.registry().clone()),
            Gate::http_port(secured, None),
            stop.clone(),
        ));
        (addr, stop, task)
    }

    #[tokio::test]
    async fn serves_metrics_and_healthz_until_stopped() {
        let (addr, stop, task) = serving(false).await;

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

    #[tokio::test]
    async fn with_security_on_the_web_view_is_not_served_and_metrics_are() {
        let (addr, stop, task) = serving(true).await;
        for path in ["/", "/agents", "/agents/web-1", "/events", "/?part=main"] {
            let answer = get(addr, path).await;
            assert!(answer.starts_with("HTTP/1.1 403"), "{path}: {answer}");
            assert!(answer.contains("security is on"), "{path}: {answer}");
            assert!(answer.contains("--web-listen"), "{path}: {answer}");
        }
        assert!(get(addr, "/metrics").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        stop.begin();
        task.await.expect("ends").expect("serves cleanly");
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_and_counted_and_capped_with_the_rest() {
        let clock = ManualClock::new(Time::from_micros(1_700_000_000_000_000).expect("in range"));
        let server = Server::in_memory(Config::default(), Arc::new(clock));
        let metrics = server.registry().metrics().clone();
        let limits = ConnLimits {
            total: 2,
            per_peer: 2,
        };
        let connections = Connections::with_limits(limits, metrics);
        let listener = crate::bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("binds");
        let addr = listener.local_addr().expect("addr");
        let stop = Stop::new();
        let task = tokio::spawn(serve(
            Acceptor::new(listener, connections.clone()).http(Duration::from_millis(200)),
            server.registry().clone(),
            Arc::new(Readiness::new()),
            Source::of_registry(server.registry().clone()),
            Gate::Open,
            stop.clone(),
        ));

        // Silent: closed once the timeout has passed, and counted.
        let mut silent = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connects");
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf))
            .await
            .expect("the server closes it");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        let text = get(addr, "/metrics").await;
        assert!(
            text.contains("\nfleet_health_connections_rejected_total{reason=\"timeout\"} 1\n"),
            "{text}"
        );

        // A request sent in pieces, each within the timeout, is answered.
        let mut slow = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connects");
        for part in [
            "GET /hea",
            "lthz HTTP/1.1\r\nHost: x\r\n",
            "Connection: close\r\n\r\n",
        ] {
            slow.write_all(part.as_bytes()).await.expect("writes");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut out = String::new();
        slow.read_to_string(&mut out).await.expect("reads");
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");

        // The caps hold here too: two held, a third closed at once.
        tokio::time::timeout(Duration::from_secs(10), async {
            while !connections.is_empty() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the closed connections leave");
        let _a = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connects");
        let _b = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connects");
        let mut c = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connects");
        let read = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
            .await
            .expect("the server closes it");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

        stop.begin();
        task.await.expect("ends").expect("serves cleanly");
    }
}
