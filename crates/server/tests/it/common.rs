//! A real server on an ephemeral port with a manual clock, and helpers to
//! talk to it with the generated tonic clients.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fleet_health_proto::v1 as pb;
use fleet_health_proto::v1::agent_service_client::AgentServiceClient;
use fleet_health_proto::v1::fleet_service_client::FleetServiceClient;
use fleet_health_sensor::Time;
use fleet_health_server::clock::ManualClock;
use fleet_health_server::{Config, Server};
use pb::report_request::Body as In;
use pb::report_response::Body as Out;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

/// 2023-11-14T22:13:20Z.
pub const T0: i64 = 1_700_000_000;

pub fn t(secs: i64) -> Time {
    Time::from_micros(secs * 1_000_000).expect("in range")
}

pub fn ts(secs: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: secs,
        nanos: 0,
    }
}

/// Fails a test that waits too long for something that should come.
pub async fn soon<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("timed out waiting for the server")
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub clock: ManualClock,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    pub channel: Channel,
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::with_config(Config::default()).await
    }

    pub async fn with_config(config: Config) -> TestServer {
        TestServer::start_with(config, ManualClock::new(t(T0)), None).await
    }

    /// A server on a durable store in `dir`, on `clock`.
    pub async fn durable(dir: &std::path::Path, clock: ManualClock) -> TestServer {
        TestServer::start_with(Config::default(), clock, Some(dir)).await
    }

    pub async fn start_with(
        config: Config,
        clock: ManualClock,
        dir: Option<&std::path::Path>,
    ) -> TestServer {
        TestServer::start_on(config, clock, dir, |addr| {
            Channel::from_shared(format!("http://{addr}")).expect("uri")
        })
        .await
    }

    /// A server whose harness channel is made by `endpoint` (TLS settings,
    /// a client certificate).
    pub async fn start_on(
        config: Config,
        clock: ManualClock,
        dir: Option<&std::path::Path>,
        endpoint: impl FnOnce(SocketAddr) -> tonic::transport::Endpoint,
    ) -> TestServer {
        let server = match dir {
            Some(dir) => Server::durable(
                config,
                Arc::new(clock.clone()),
                fleet_health_server::store::RedbStore::open(dir).expect("store opens"),
            )
            .expect("state loads"),
            None => Server::in_memory(config, Arc::new(clock.clone())),
        };
        TestServer::serve(server, clock, endpoint).await
    }

    /// Serves `server` (made on `clock`) on ephemeral ports.
    pub async fn serve(
        server: Server,
        clock: ManualClock,
        endpoint: impl FnOnce(SocketAddr) -> tonic::transport::Endpoint,
    ) -> TestServer {
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        TestServer::serve_on(server, clock, grpc, endpoint).await
    }

    /// [`TestServer::serve`] with gRPC on `grpc`, bound already.
    pub async fn serve_on(
        server: Server,
        clock: ManualClock,
        grpc: tokio::net::TcpListener,
        endpoint: impl FnOnce(SocketAddr) -> tonic::transport::Endpoint,
    ) -> TestServer {
        let metrics = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = grpc.local_addr().expect("addr");
        let metrics_addr = metrics.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .run(grpc, Some(metrics), async move {
                    let _ = stopped.await;
                })
                .await
                .expect("server runs");
        });
        let channel = endpoint(addr).connect().await.expect("connects");
        TestServer {
            addr,
            metrics_addr,
            clock,
            stop: Some(stop),
            task: Some(task),
            channel,
        }
    }

    pub fn fleet(&self) -> FleetServiceClient<Channel> {
        FleetServiceClient::new(self.channel.clone())
    }

    pub fn agents(&self) -> AgentServiceClient<Channel> {
        AgentServiceClient::new(self.channel.clone())
    }

    pub fn advance(&self, secs: u64) {
        self.clock.advance(Duration::from_secs(secs));
    }

    /// Opens a Report stream and says hello.
    pub async fn agent(&self, id: &str, incarnation: u64) -> Agent {
        self.agent_labelled(id, incarnation, &[]).await
    }

    /// Opens a Report stream and says hello with labels.
    pub async fn agent_labelled(
        &self,
        id: &str,
        incarnation: u64,
        labels: &[(&str, &str)],
    ) -> Agent {
        let mut a = self.open().await;
        let welcome = a
            .hello_with(id, incarnation, labels)
            .await
            .expect("welcomed");
        a.welcome = welcome;
        a
    }

    /// Opens a Report stream without saying anything.
    pub async fn open(&self) -> Agent {
        Agent::open(&self.channel).await.expect("stream opens")
    }
}

impl Agent {
    /// Opens a Report stream on `channel` without saying anything.
    pub async fn open(channel: &Channel) -> Result<Agent, Status> {
        let (tx, rx) = mpsc::channel(64);
        let resp = AgentServiceClient::new(channel.clone())
            .report(ReceiverStream::new(rx))
            .await?;
        Ok(Agent {
            tx,
            rx: resp.into_inner(),
            welcome: pb::Welcome::default(),
        })
    }
}

impl TestServer {
    pub async fn get(&self, id: &str) -> pb::AgentStatus {
        self.fleet()
            .get_agent(pb::GetAgentRequest {
                agent_id: id.into(),
                at: None,
            })
            .await
            .expect("agent known")
            .into_inner()
            .agent
            .expect("agent in response")
    }

    pub async fn list(&self, filter: pb::StateFilter) -> pb::ListAgentsResponse {
        self.fleet()
            .list_agents(pb::ListAgentsRequest {
                filter: filter as i32,
                ..Default::default()
            })
            .await
            .expect("lists")
            .into_inner()
    }

    pub async fn metrics(&self) -> String {
        let (status, body) = self.http_get("/metrics").await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// GET `path` on the metrics port: the status code and the body.
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.metrics_addr)
            .await
            .expect("connects");
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("writes");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("reads");
        let status = out
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("a status line");
        let body = out.split("\r\n\r\n").nth(1).expect("a body").to_string();
        (status, body)
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            soon(task).await.expect("server task ends cleanly");
        }
    }
}

pub struct Agent {
    pub tx: mpsc::Sender<pb::ReportRequest>,
    pub rx: Streaming<pb::ReportResponse>,
    pub welcome: pb::Welcome,
}

pub fn event(seq: u64, kind: pb::EventKind, at: Option<i64>) -> pb::Event {
    pb::Event {
        seq,
        kind: kind as i32,
        time: at.map(ts),
    }
}

impl Agent {
    pub async fn send(&self, body: In) {
        self.tx
            .send(pb::ReportRequest { body: Some(body) })
            .await
            .expect("stream open");
    }

    pub async fn hello_with(
        &mut self,
        id: &str,
        incarnation: u64,
        labels: &[(&str, &str)],
    ) -> Result<pb::Welcome, Status> {
        self.send(In::Hello(pb::Hello {
            agent_id: id.into(),
            incarnation,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }))
        .await;
        match soon(self.rx.message()).await? {
            Some(pb::ReportResponse {
                body: Some(Out::Welcome(w)),
            }) => Ok(w),
            other => panic!("expected a welcome, got {other:?}"),
        }
    }

    /// Sends events and waits for their acknowledgement.
    pub async fn events(&mut self, events: Vec<pb::Event>) -> Result<pb::Ack, Status> {
        self.send(In::Events(pb::EventBatch { events })).await;
        self.ack().await
    }

    pub async fn ack(&mut self) -> Result<pb::Ack, Status> {
        match soon(self.rx.message()).await? {
            Some(pb::ReportResponse {
                body: Some(Out::Ack(a)),
            }) => Ok(a),
            other => panic!("expected an ack, got {other:?}"),
        }
    }

    /// Reads until the stream ends; returns its status.
    pub async fn end(&mut self) -> Status {
        loop {
            match soon(self.rx.message()).await {
                Err(status) => return status,
                Ok(None) => return Status::ok(""),
                Ok(Some(_)) => {}
            }
        }
    }

    /// Stops the agent on purpose, now: shutting_down, then stopped.
    pub async fn stop_cleanly(&mut self, first_seq: u64) -> pb::Ack {
        self.events(vec![
            event(first_seq, pb::EventKind::ShuttingDown, None),
            event(first_seq + 1, pb::EventKind::Stopped, None),
        ])
        .await
        .expect("applied")
    }

    /// Starts the agent healthily at the current time: starting, data both ways.
    pub async fn start_healthy(&mut self, first_seq: u64) -> pb::Ack {
        self.events(vec![
            event(first_seq, pb::EventKind::Starting, None),
            event(first_seq + 1, pb::EventKind::ServerDataSent, None),
            event(first_seq + 2, pb::EventKind::ServerDataReceived, None),
        ])
        .await
        .expect("applied")
    }
}

/// Reads a watch until `synced`; returns the snapshot's agents.
pub async fn snapshot(
    w: &mut Streaming<pb::WatchAgentsResponse>,
) -> (Vec<pb::AgentStatus>, pb::Synced) {
    use pb::watch_agents_response::Event as W;
    let mut agents = Vec::new();
    loop {
        let msg = soon(w.message())
            .await
            .expect("watch open")
            .expect("not ended");
        match msg.event.expect("an event") {
            W::Snapshot(a) => agents.push(a),
            W::Synced(s) => return (agents, s),
            other => panic!("unexpected {other:?} in a snapshot"),
        }
    }
}

/// The next watch event that is not a storm update.
pub async fn next_change(
    w: &mut Streaming<pb::WatchAgentsResponse>,
) -> pb::watch_agents_response::Event {
    use pb::watch_agents_response::Event as W;
    loop {
        let msg = soon(w.message())
            .await
            .expect("watch open")
            .expect("not ended");
        match msg.event.expect("an event") {
            W::Storm(_) => continue,
            other => return other,
        }
    }
}

/// A fresh, empty directory under the system's temporary directory, removed
/// on drop.
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("fleet-health-test-")
        .tempdir()
        .expect("create a temporary directory")
}
