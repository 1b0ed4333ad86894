//! The load generator against the floor and the real server, in process, on
//! ephemeral loopback ports.

use std::sync::Arc;
use std::time::Duration;

use fleet_health_load::{LoadConfig, LoadError, LoadReport, run};
use fleet_health_server::Transport;
use fleet_health_server::agent_service::StreamLimits;
use fleet_health_server::clock::SystemClock;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Long enough for any run here on a loaded machine; a hang fails the test.
const LIMIT: Duration = Duration::from_secs(60);

/// A server task on an ephemeral port, stopped and awaited by [`Running::stop`].
struct Running {
    url: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Running {
    async fn floor() -> Running {
        Running::start(|listener, stopped| {
            tokio::spawn(async move {
                fleet_health_floor::serve(
                    listener,
                    &Transport::default(),
                    fleet_health_floor::FloorService::default(),
                    stopped,
                )
                .await
                .expect("the floor serves");
            })
        })
        .await
    }

    async fn server(streams: StreamLimits) -> Running {
        Running::server_with(fleet_health_server::Config {
            streams,
            ..Default::default()
        })
        .await
    }

    async fn server_with(config: fleet_health_server::Config) -> Running {
        Running::start(|listener, stopped| {
            let server = fleet_health_server::Server::in_memory(config, Arc::new(SystemClock));
            tokio::spawn(async move {
                server
                    .run(listener, None, stopped)
                    .await
                    .expect("the server serves");
            })
        })
        .await
    }

    async fn start(
        spawn: impl FnOnce(
            TcpListener,
            std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
        ) -> JoinHandle<()>,
    ) -> Running {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = spawn(
            listener,
            Box::pin(async {
                let _ = stopped.await;
            }),
        );
        Running { url, stop, task }
    }

    fn config(&self) -> LoadConfig {
        LoadConfig {
            server: self.url.clone(),
            warmup: Duration::ZERO,
            duration: LIMIT,
            ..LoadConfig::default()
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(LIMIT, self.task)
            .await
            .expect("the server stops")
            .expect("the server task");
    }
}

async fn load(config: LoadConfig) -> Result<LoadReport, LoadError> {
    tokio::time::timeout(LIMIT, run(config))
        .await
        .expect("the load ends in time")
}

#[tokio::test]
async fn a_budget_against_the_floor_is_sent_and_acknowledged_in_full() {
    let floor = Running::floor().await;
    let report = load(LoadConfig {
        streams: 4,
        connections: 2,
        in_flight: 4,
        events_per_message: 3,
        messages: Some(200),
        ..floor.config()
    })
    .await
    .expect("the run succeeds");
    assert_eq!(report.first_error, None);
    assert_eq!(report.streams_failed, 0);
    assert_eq!(report.messages_sent, 200);
    assert_eq!(report.messages_acked_total, 200);
    assert_eq!(report.messages_acked, 200, "no warm-up: every ack counts");
    assert_eq!(report.events_acked, 600);
    assert_eq!(report.unacked_at_end, 0);
    assert!(
        report.seconds < LIMIT.as_secs_f64(),
        "the budget ends the run"
    );
    let (p50, p99) = (
        report.ack_latency_p50_ms.unwrap(),
        report.ack_latency_p99_ms.unwrap(),
    );
    assert!(0.0 < p50 && p50 <= p99, "p50 {p50} ms, p99 {p99} ms");
    floor.stop().await;
}

#[tokio::test]
async fn a_timed_run_counts_only_its_window() {
    let floor = Running::floor().await;
    let report = load(LoadConfig {
        streams: 2,
        in_flight: 2,
        warmup: Duration::from_millis(100),
        duration: Duration::from_millis(300),
        ..floor.config()
    })
    .await
    .expect("the run succeeds");
    assert_eq!(report.first_error, None);
    assert!(report.seconds >= 0.3, "{report:?}");
    assert!(report.messages_acked > 0, "{report:?}");
    assert!(
        report.messages_acked < report.messages_acked_total,
        "warm-up acks are not counted: {report:?}"
    );
    assert_eq!(report.messages_acked_total, report.messages_sent);
    floor.stop().await;
}

#[tokio::test]
async fn the_real_server_acknowledges_every_message() {
    let server = Running::server(StreamLimits {
        max_events_per_sec: 0,
        ..StreamLimits::default()
    })
    .await;
    let report = load(LoadConfig {
        streams: 3,
        in_flight: 8,
        events_per_message: 10,
        messages: Some(90),
        ..server.config()
    })
    .await
    .expect("the run succeeds");
    assert_eq!(report.first_error, None);
    assert_eq!(report.messages_acked_total, 90);
    assert_eq!(report.events_acked, 900);
    server.stop().await;
}

#[tokio::test]
async fn a_stream_the_server_refuses_fails_the_set_up() {
    let server = Running::server(StreamLimits {
        max_streams: 1,
        ..StreamLimits::default()
    })
    .await;
    let err = load(LoadConfig {
        streams: 2,
        ..server.config()
    })
    .await
    .expect_err("the second stream is refused");
    match err {
        LoadError::Setup {
            ready: 1,
            streams: 2,
            first_error,
            ..
        } => assert!(first_error.contains("ResourceExhausted"), "{first_error}"),
        other => panic!("a set-up error, not {other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn no_server_is_a_connect_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let err = load(LoadConfig {
        server: url,
        setup_timeout: Duration::from_secs(5),
        ..LoadConfig::default()
    })
    .await
    .expect_err("nothing listens");
    assert!(matches!(err, LoadError::Connect { .. }), "{err:?}");
}

#[tokio::test]
async fn registration_makes_every_agent_known_once() {
    use fleet_health_load::{RegisterConfig, register};
    use fleet_health_proto::v1::GetSummaryRequest;
    use fleet_health_proto::v1::fleet_service_client::FleetServiceClient;

    let server = Running::server(StreamLimits::default()).await;
    let config = RegisterConfig {
        server: server.url.clone(),
        agents: 250,
        concurrency: 16,
        connections: 2,
        agent_prefix: "reg".into(),
        timeout: LIMIT,
        credentials: Default::default(),
    };
    let report = tokio::time::timeout(LIMIT, register(config))
        .await
        .expect("the registration ends in time")
        .expect("the registration succeeds");
    assert_eq!(report.registered, 250);
    assert!(report.agents_per_second > 0.0, "{report:?}");

    let mut fleet = FleetServiceClient::connect(server.url.clone())
        .await
        .unwrap();
    let summary = fleet
        .get_summary(GetSummaryRequest { at: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(summary.total, 250, "{summary:?}");
    assert_eq!(summary.connected, 0, "every stream was closed: {summary:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_refused_agent_stops_the_registration_and_is_named() {
    use fleet_health_load::{RegisterConfig, register};
    use fleet_health_server::registry::Limits;

    let server = Running::server_with(fleet_health_server::Config {
        limits: Limits {
            max_agents: 5,
            ..Limits::default()
        },
        ..Default::default()
    })
    .await;
    let err = tokio::time::timeout(
        LIMIT,
        register(RegisterConfig {
            server: server.url.clone(),
            agents: 8,
            concurrency: 1,
            connections: 1,
            agent_prefix: "reg".into(),
            timeout: LIMIT,
            credentials: Default::default(),
        }),
    )
    .await
    .expect("the registration ends in time")
    .expect_err("the sixth agent is one too many");
    match err {
        LoadError::Register {
            registered: 5,
            agents: 8,
            first_error,
        } => {
            assert!(first_error.contains("agent reg-5"), "{first_error}");
            assert!(first_error.contains("ResourceExhausted"), "{first_error}");
        }
        other => panic!("a registration error after five agents, not {other:?}"),
    }
    server.stop().await;
}
