//! The server binary as an operator's tools see it: systemd's notifications
//! (`Type=notify` with a watchdog) and `fleet-health-server probe` against
//! `/readyz` and `/healthz`.

use std::time::Duration;

use fleet_health_e2e::{Server, binary};
use tokio::net::UnixDatagram;

async fn probe(url: &str) -> std::process::Output {
    tokio::process::Command::new(binary("fleet-health-server"))
        .args(["probe", url])
        .output()
        .await
        .expect("runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_watchdog_pings_and_stopping_and_the_probe_answers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("binds");
    let path = socket_path.to_str().expect("utf-8");
    let server = Server::start_with_env(
        &["--metrics-listen", "127.0.0.1:0"],
        &[("NOTIFY_SOCKET", path), ("WATCHDOG_USEC", "200000")],
    )
    .await;
    let mut buf = [0u8; 256];
    let mut heard = Vec::new();
    // READY=1, then pings at half the watchdog interval (100 ms).
    while heard
        .iter()
        .filter(|m: &&String| *m == "WATCHDOG=1")
        .count()
        < 3
    {
        let n = tokio::time::timeout(Duration::from_secs(10), socket.recv(&mut buf))
            .await
            .expect("systemd hears from the server in time")
            .expect("receives");
        heard.push(String::from_utf8_lossy(&buf[..n]).trim().to_owned());
    }
    assert_eq!(heard[0], "READY=1", "{heard:?}");

    let metrics = server.http_addr();
    let ready = probe(&format!("http://{metrics}/readyz")).await;
    assert!(ready.status.success(), "{ready:?}");
    assert_eq!(String::from_utf8_lossy(&ready.stdout), "ready\n");
    let live = probe(&format!("http://{metrics}/healthz")).await;
    assert!(live.status.success(), "{live:?}");
    let missing = probe(&format!("http://{metrics}/nothing-here")).await;
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("answered 404"),
        "{missing:?}"
    );

    // SIGTERM: STOPPING=1 before the process ends.
    let pid = server.pid().to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .expect("kill runs");
    assert!(killed.success());
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), socket.recv(&mut buf))
            .await
            .expect("systemd hears that the server stops")
            .expect("receives");
        if String::from_utf8_lossy(&buf[..n]).trim() == "STOPPING=1" {
            break;
        }
    }
    drop(server);
    let down = probe(&format!("http://{metrics}/readyz")).await;
    assert!(!down.status.success(), "nothing listens any more");
}

/// A stand-in OpenTelemetry collector: the names of the spans it receives,
/// and the service names they come from.
struct Collector {
    tx: tokio::sync::mpsc::UnboundedSender<(String, String)>,
}

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService
    for Collector
{
    async fn export(
        &self,
        request: tonic::Request<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
        >,
    ) -> Result<
        tonic::Response<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse,
        >,
        tonic::Status,
    > {
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    let _ = self.tx.send((service.clone(), span.name));
                }
            }
        }
        Ok(tonic::Response::new(Default::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_go_to_an_otlp_collector_when_asked() {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let addr = listener.local_addr().expect("addr");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector { tx }))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let endpoint = format!("http://{addr}");
    let server = Server::start_with_env(
        &["--otlp-endpoint", &endpoint],
        &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
    )
    .await;
    server.cli(&["status", "web-1"]).await.expect_code(4);
    let (service, _) = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let (service, name) = rx.recv().await.expect("the collector runs");
            if name == "get_agent" {
                return (service, name);
            }
        }
    })
    .await
    .expect("the call's span reaches the collector");
    assert!(service.contains("fleet-health-server"), "{service}");
}
