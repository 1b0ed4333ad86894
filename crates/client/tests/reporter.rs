//! The reporter against an in-process fake `AgentService` on 127.0.0.1:0.
//!
//! The fake follows the protocol (Welcome with `last_applied_seq`, cumulative
//! acks, re-sends acknowledged and not applied again) and can be told to
//! misbehave: refuse streams, break a stream after applying events but before
//! acknowledging them, refuse an event kind, or never acknowledge.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_health_client::proto::agent_service_server::{AgentService, AgentServiceServer};
use fleet_health_client::proto::{
    Ack, EventKind, Hello, ReportRequest, ReportResponse, Welcome, report_request, report_response,
};
use fleet_health_client::{
    BackoffConfig, Reporter, ReporterConfig, ReporterError, Time, lazy_channel,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Code, Request, Response, Status, Streaming};

#[derive(Default)]
struct FakeState {
    /// Last applied seq per incarnation.
    last_applied: HashMap<u64, u64>,
    /// Every applied event: (incarnation, seq, kind).
    applied: Vec<(u64, u64, EventKind)>,
    /// Events received again after they were applied.
    resent: u64,
    hellos: Vec<Hello>,
    /// Sizes of the event batches received.
    batches: Vec<usize>,
    /// Streams the client half-closed.
    clean_ends: u64,
    /// Streams that ended with an error (the connection broke).
    broken_ends: u64,
    /// Refuse this many stream attempts with this code.
    refuse: Vec<Code>,
    /// After applying this seq for the first time, break the stream without
    /// acknowledging.
    break_after: Option<u64>,
    /// Refuse events of this kind with INVALID_ARGUMENT.
    reject_kind: Option<EventKind>,
    /// Do not acknowledge anything.
    silent: bool,
    heartbeat: Duration,
}

#[derive(Clone)]
struct Fake(Arc<Mutex<FakeState>>, watch::Sender<u64>);

impl Fake {
    fn new(heartbeat: Duration) -> Fake {
        let state = FakeState {
            heartbeat,
            ..FakeState::default()
        };
        Fake(Arc::new(Mutex::new(state)), watch::Sender::new(0))
    }

    fn with<R>(&self, f: impl FnOnce(&mut FakeState) -> R) -> R {
        f(&mut self.0.lock().unwrap())
    }

    /// Ends every open stream with UNAVAILABLE, as a server shutting down does.
    fn go_away(&self) {
        self.1.send_modify(|n| *n += 1);
    }

    fn kinds(&self) -> Vec<EventKind> {
        self.with(|s| s.applied.iter().map(|a| a.2).collect())
    }

    fn seqs(&self) -> Vec<u64> {
        self.with(|s| s.applied.iter().map(|a| a.1).collect())
    }
}

fn msg(body: report_response::Body) -> Result<ReportResponse, Status> {
    Ok(ReportResponse { body: Some(body) })
}

#[tonic::async_trait]
impl AgentService for Fake {
    type ReportStream = ReceiverStream<Result<ReportResponse, Status>>;

    async fn report(
        &self,
        request: Request<Streaming<ReportRequest>>,
    ) -> Result<Response<Self::ReportStream>, Status> {
        if let Some(code) = self.with(|s| (!s.refuse.is_empty()).then(|| s.refuse.remove(0))) {
            return Err(Status::new(code, "scripted refusal"));
        }
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let fake = self.clone();
        let mut going_away = self.1.subscribe();
        going_away.mark_unchanged();
        let end_tx = tx.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = fake.serve(inbound, tx) => {}
                _ = going_away.changed() => {
                    let _ = end_tx.send(Err(Status::unavailable("shutting down"))).await;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

impl Fake {
    async fn serve(
        self,
        mut inbound: Streaming<ReportRequest>,
        tx: mpsc::Sender<Result<ReportResponse, Status>>,
    ) {
        let fake = self;
        {
            let hello = match inbound.message().await {
                Ok(Some(ReportRequest {
                    body: Some(report_request::Body::Hello(h)),
                })) => h,
                _ => {
                    let _ = tx.send(Err(Status::invalid_argument("hello first"))).await;
                    return;
                }
            };
            let inc = hello.incarnation;
            assert_ne!(inc, 0, "incarnation must be non-zero");
            let (last, heartbeat) = fake.with(|s| {
                s.hellos.push(hello.clone());
                (s.last_applied.get(&inc).copied().unwrap_or(0), s.heartbeat)
            });
            let welcome = Welcome {
                heartbeat_interval: Some(heartbeat.try_into().unwrap()),
                last_applied_seq: last,
                server_time: None,
            };
            if tx
                .send(msg(report_response::Body::Welcome(welcome)))
                .await
                .is_err()
            {
                return;
            }
            loop {
                let batch = match inbound.message().await {
                    Ok(Some(ReportRequest {
                        body: Some(report_request::Body::Events(b)),
                    })) => b,
                    Ok(Some(_)) => {
                        let _ = tx.send(Err(Status::invalid_argument("hello again"))).await;
                        return;
                    }
                    Ok(None) => {
                        fake.with(|s| s.clean_ends += 1);
                        return;
                    }
                    Err(_) => {
                        fake.with(|s| s.broken_ends += 1);
                        return;
                    }
                };
                // Apply, exactly once per seq of the incarnation.
                let verdict = fake.with(|s| {
                    s.batches.push(batch.events.len());
                    if let Some(k) = s.reject_kind
                        && batch.events.iter().any(|e| e.kind() == k)
                    {
                        return Err(Status::invalid_argument("scripted: bad event"));
                    }
                    let mut broke = false;
                    for e in &batch.events {
                        assert_ne!(e.seq, 0);
                        let last = s.last_applied.entry(inc).or_insert(0);
                        if e.seq <= *last {
                            s.resent += 1;
                            continue;
                        }
                        *last = e.seq;
                        s.applied.push((inc, e.seq, e.kind()));
                        if s.break_after == Some(e.seq) {
                            s.break_after = None;
                            broke = true;
                        }
                    }
                    if broke {
                        return Err(Status::unavailable("scripted: broke before the ack"));
                    }
                    Ok((!s.silent).then(|| s.last_applied[&inc]))
                });
                match verdict {
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                    Ok(Some(through)) => {
                        let ack = Ack {
                            applied_through: through,
                            clamped: 0,
                        };
                        if tx.send(msg(report_response::Body::Ack(ack))).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => {}
                }
            }
        }
    }
}

struct Server {
    url: String,
    fake: Fake,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(fake: Fake) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Server::on(fake, listener)
    }

    fn on(fake: Fake, listener: TcpListener) -> Server {
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let served = fake.clone();
        let done = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(AgentServiceServer::new(served))
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Server {
            url,
            fake,
            stop: Some(stop),
            done,
        }
    }

    async fn stop(mut self) {
        self.fake.go_away();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(WAIT, self.done)
            .await
            .expect("the fake server stops")
            .unwrap();
    }
}

fn config(agent: &str) -> ReporterConfig {
    let mut c = ReporterConfig::new(agent);
    c.backoff = BackoffConfig {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(50),
    };
    c.connect_timeout = Duration::from_secs(2);
    c
}

fn reporter(url: &str, config: ReporterConfig) -> Reporter {
    let channel = lazy_channel(url, Duration::from_secs(2)).unwrap();
    Reporter::start(channel, config).unwrap()
}

const LONG: Duration = Duration::from_secs(3600);
const WAIT: Duration = Duration::from_secs(10);

fn t(secs: i64) -> Time {
    Time::from_unix(secs, 0).unwrap()
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn events_are_sent_in_order_acknowledged_and_closed_with_stopped() {
    let fake = Fake::new(LONG);
    let server = Server::start(fake.clone()).await;
    let r = reporter(&server.url, config("web-1").label("site", "eu"));

    r.starting(t(1_700_000_000));
    r.registered();
    r.server_data_received(t(1_700_000_001));
    r.server_data_sent(t(1_700_000_002));
    r.shutting_down(t(1_700_000_003));
    tokio::time::timeout(WAIT, r.flush())
        .await
        .unwrap()
        .unwrap();
    let stats = r.stats();
    assert_eq!(
        (stats.last_seq, stats.acked_through, stats.pending),
        (5, 5, 0)
    );
    assert!(stats.connected);

    tokio::time::timeout(WAIT, r.shutdown(WAIT))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        fake.kinds(),
        [
            EventKind::Starting,
            EventKind::Registered,
            EventKind::ServerDataReceived,
            EventKind::ServerDataSent,
            EventKind::ShuttingDown,
            EventKind::Stopped
        ]
    );
    assert_eq!(fake.seqs(), [1, 2, 3, 4, 5, 6]);
    fake.with(|s| {
        assert_eq!(s.hellos.len(), 1);
        assert_eq!(s.hellos[0].agent_id, "web-1");
        assert_eq!(s.hellos[0].incarnation, r.incarnation());
        assert_eq!(s.hellos[0].labels["site"], "eu");
        assert_eq!(s.clean_ends, 1, "the stream was half-closed");
        assert_eq!(s.broken_ends, 0);
    });
    // Closed: no more events.
    assert_eq!(
        r.report(fleet_health_client::EventKind::ServerDataSent, None),
        Err(ReporterError::Closed)
    );
    server.stop().await;
}

#[tokio::test]
async fn a_stream_broken_before_the_ack_is_resumed_without_loss_or_double_count() {
    let fake = Fake::new(LONG);
    // Applied up to seq 3 but never acknowledged, and then two refusals.
    fake.with(|s| {
        s.break_after = Some(3);
        s.refuse = vec![Code::Unavailable, Code::Aborted];
    });
    let server = Server::start(fake.clone()).await;
    let r = reporter(&server.url, config("db-7"));
    for i in 0..10 {
        r.server_data_sent(t(1_700_000_000 + i));
    }
    tokio::time::timeout(WAIT, r.flush())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fake.seqs(), (1..=10).collect::<Vec<_>>());
    fake.with(|s| {
        // One stream broke, one attempt per refusal, then the one that worked:
        // all with the same incarnation.
        assert!(s.hellos.len() >= 2, "{}", s.hellos.len());
        assert!(s.hellos.iter().all(|h| h.incarnation == r.incarnation()));
        assert_eq!(s.resent, 0, "the welcome said what was applied: no re-send");
    });
    assert!(r.stats().connects >= 2);
    server.stop().await;
}

#[tokio::test]
async fn a_backlog_made_while_the_server_is_down_is_sent_in_batches_after() {
    // Find a free port, leave it closed for now.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let mut cfg = config("edge/host-3");
    cfg.max_batch = 40;
    let r = reporter(&format!("http://{addr}"), cfg);
    for i in 0..100 {
        r.server_data_received(t(1_700_000_000 + i));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stats = r.stats();
    assert!(!stats.connected);
    assert_eq!(stats.pending, 100);
    assert!(stats.last_error.is_some());

    let fake = Fake::new(LONG);
    let server = Server::on(fake.clone(), TcpListener::bind(addr).await.unwrap());
    tokio::time::timeout(WAIT, r.flush())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fake.seqs(), (1..=100).collect::<Vec<_>>());
    fake.with(|s| {
        assert!(s.batches.iter().all(|&n| n <= 40), "{:?}", s.batches);
        assert!(
            s.batches.len() <= 5,
            "a backlog goes in few messages: {:?}",
            s.batches
        );
    });
    server.stop().await;
}

#[tokio::test]
async fn a_full_buffer_keeps_the_newest_events() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let mut cfg = config("small");
    cfg.max_pending = 3;
    let r = reporter(&format!("http://{addr}"), cfg);
    for i in 0..5 {
        r.server_data_sent(t(1_700_000_000 + i));
    }
    assert_eq!(r.stats().pending, 3);
    assert_eq!(r.stats().dropped, 2);
    let fake = Fake::new(LONG);
    let server = Server::on(fake.clone(), TcpListener::bind(addr).await.unwrap());
    tokio::time::timeout(WAIT, r.flush())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fake.seqs(), [3, 4, 5]);
    server.stop().await;
}

#[tokio::test]
async fn an_idle_reporter_heartbeats_at_the_servers_interval() {
    let fake = Fake::new(Duration::from_millis(100));
    let server = Server::start(fake.clone()).await;
    let r = reporter(&server.url, config("quiet"));
    r.starting(t(1_700_000_000));
    eventually("three heartbeats", || {
        fake.kinds()
            .iter()
            .filter(|k| **k == EventKind::Heartbeat)
            .count()
            >= 3
    })
    .await;
    // Heartbeats are numbered like any event and acknowledged.
    let seqs = fake.seqs();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    assert_eq!(r.stats().heartbeat_interval, Duration::from_millis(100));
    eventually("heartbeats acknowledged", || r.stats().acked_through >= 4).await;
    server.stop().await;
}

#[tokio::test]
async fn busy_reporters_do_not_heartbeat() {
    let fake = Fake::new(Duration::from_millis(200));
    let server = Server::start(fake.clone()).await;
    let r = reporter(&server.url, config("busy"));
    for i in 0..10 {
        r.server_data_sent(t(1_700_000_000 + i));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::timeout(WAIT, r.flush())
        .await
        .unwrap()
        .unwrap();
    assert!(
        !fake.kinds().contains(&EventKind::Heartbeat),
        "{:?}",
        fake.kinds()
    );
    server.stop().await;
}

#[tokio::test]
async fn invalid_argument_is_surfaced_not_retried_forever() {
    let fake = Fake::new(LONG);
    fake.with(|s| s.reject_kind = Some(EventKind::Unregistered));
    let server = Server::start(fake.clone()).await;
    let r = reporter(&server.url, config("bad"));
    r.unregistered();
    let err = tokio::time::timeout(WAIT, r.flush())
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, ReporterError::Refused { .. }), "{err:?}");
    assert!(matches!(
        r.report(fleet_health_client::EventKind::Heartbeat, None),
        Err(ReporterError::Refused { .. })
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(fake.with(|s| s.hellos.len()), 1, "no retry");
    server.stop().await;
}

#[tokio::test]
async fn close_gives_up_after_its_timeout_and_says_what_was_lost() {
    let fake = Fake::new(LONG);
    fake.with(|s| s.silent = true);
    let server = Server::start(fake.clone()).await;
    let r = reporter(&server.url, config("mute"));
    r.starting(t(1_700_000_000));
    let err = r.shutdown(Duration::from_millis(300)).await.unwrap_err();
    assert_eq!(err, ReporterError::Timeout { unacked: 2 });
    server.stop().await;
}

#[tokio::test]
async fn dropping_a_reporter_ends_its_stream_without_a_word() {
    let fake = Fake::new(LONG);
    let server = Server::start(fake.clone()).await;
    let r = reporter(&server.url, config("crashy"));
    r.starting(t(1_700_000_000));
    tokio::time::timeout(WAIT, r.flush())
        .await
        .unwrap()
        .unwrap();
    drop(r);
    // The stream ends (not leaked), and without `stopped`: to the server a
    // stream's end proves nothing, so this is a crash.
    eventually("the stream ended", || {
        fake.with(|s| s.broken_ends + s.clean_ends) == 1
    })
    .await;
    assert_eq!(fake.kinds(), [EventKind::Starting]);
    server.stop().await;
}

#[tokio::test]
async fn the_server_going_away_mid_stream_loses_nothing() {
    let fake = Fake::new(LONG);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::on(fake.clone(), listener);
    let r = reporter(&server.url, config("survivor"));
    r.starting(t(1_700_000_000));
    tokio::time::timeout(WAIT, r.flush())
        .await
        .unwrap()
        .unwrap();
    let first = r.incarnation();
    server.stop().await;
    for i in 1..=5 {
        r.server_data_sent(t(1_700_000_000 + i));
    }
    let server = Server::on(fake.clone(), TcpListener::bind(addr).await.unwrap());
    tokio::time::timeout(WAIT, r.flush())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fake.seqs(), [1, 2, 3, 4, 5, 6]);
    assert!(r.stats().connects >= 2, "it reconnected");
    assert!(fake.with(|s| s.hellos.len() >= 2 && s.hellos.iter().all(|h| h.incarnation == first)));
    tokio::time::timeout(WAIT, r.shutdown(WAIT))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fake.kinds().last(), Some(&EventKind::Stopped));
    server.stop().await;
}

#[tokio::test]
async fn bad_names_are_refused_before_anything_is_sent() {
    let channel = lazy_channel("http://127.0.0.1:9", Duration::from_secs(1)).unwrap();
    let err = Reporter::start(channel.clone(), ReporterConfig::new("has space")).unwrap_err();
    assert!(matches!(err, ReporterError::InvalidName(_)), "{err}");
    let err =
        Reporter::start(channel, ReporterConfig::new("ok").label("bad key!", "v")).unwrap_err();
    assert!(matches!(err, ReporterError::InvalidName(_)), "{err}");
}

#[test]
fn starting_outside_a_runtime_is_an_error_not_a_panic() {
    let err = Reporter::connect("http://127.0.0.1:9", ReporterConfig::new("a")).unwrap_err();
    assert_eq!(err, ReporterError::NoRuntime);
}

#[tokio::test]
async fn two_reporters_share_one_connection_with_their_own_streams() {
    let fake = Fake::new(LONG);
    let server = Server::start(fake.clone()).await;
    let channel = lazy_channel(&server.url, Duration::from_secs(2)).unwrap();
    let a = Reporter::start(channel.clone(), config("a")).unwrap();
    let b = Reporter::start(channel, config("b")).unwrap();
    assert_ne!(a.incarnation(), b.incarnation());
    a.starting(t(1_700_000_000));
    b.starting(t(1_700_000_000));
    a.flush().await.unwrap();
    b.flush().await.unwrap();
    a.shutdown(WAIT).await.unwrap();
    b.shutdown(WAIT).await.unwrap();
    fake.with(|s| {
        assert_eq!(s.applied.len(), 4);
        assert_eq!(s.clean_ends, 2);
    });
    server.stop().await;
}

#[tokio::test]
async fn acks_report_their_latency() {
    let fake = Fake::new(LONG);
    let server = Server::start(fake.clone()).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut cfg = config("timed");
    let sink = Arc::clone(&seen);
    cfg.on_ack = Some(Arc::new(move |a| sink.lock().unwrap().push(a)));
    let r = reporter(&server.url, cfg);
    for i in 0..3 {
        r.server_data_sent(t(1_700_000_000 + i));
    }
    r.flush().await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.iter().map(|a| a.events).sum::<usize>(), 3);
    assert!(seen.iter().all(|a| a.latency < WAIT));
    server.stop().await;
}
