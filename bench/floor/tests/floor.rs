//! The floor on a real socket: its socket options and its answers.

use std::time::Duration;

use fleet_health_floor::{FloorService, HEARTBEAT_INTERVAL, incoming, serve};
use fleet_health_proto::v1 as pb;
use fleet_health_proto::v1::agent_service_client::AgentServiceClient;
use fleet_health_server::Transport;
use pb::report_request::Body as In;
use pb::report_response::Body as Out;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

/// Long enough for any step on a loaded machine; a hang fails the test.
const STEP: Duration = Duration::from_secs(10);

#[tokio::test]
async fn accepted_sockets_have_nodelay() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut accepted = std::pin::pin!(incoming(listener));
    let client = TcpStream::connect(addr).await.unwrap();
    let server_side = tokio::time::timeout(STEP, accepted.next())
        .await
        .expect("a connection is accepted")
        .expect("the listener is open")
        .expect("accept succeeds");
    assert!(
        server_side.socket().nodelay().unwrap(),
        "TCP_NODELAY on the accepted socket"
    );
    assert_eq!(
        server_side.socket().peer_addr().unwrap(),
        client.local_addr().unwrap()
    );
}

/// A floor on an ephemeral port; stopped and awaited by [`Floor::stop`].
struct Floor {
    url: String,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Floor {
    async fn start() -> Floor {
        Floor::serving(FloorService::default()).await
    }

    async fn serving(floor: FloorService) -> Floor {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            serve(listener, &Transport::default(), floor, async {
                let _ = stopped.await;
            })
            .await
        });
        Floor { url, stop, task }
    }

    async fn client(&self) -> AgentServiceClient<tonic::transport::Channel> {
        AgentServiceClient::connect(self.url.clone()).await.unwrap()
    }

    /// Opens a Report stream whose first messages are `first`, queued
    /// before it opens (so they arrive together); the sender sends more.
    async fn open(
        &self,
        first: Vec<pb::ReportRequest>,
    ) -> (
        mpsc::Sender<pb::ReportRequest>,
        tonic::Streaming<pb::ReportResponse>,
    ) {
        let (tx, rx) = mpsc::channel(first.len().max(8));
        for m in first {
            tx.send(m).await.unwrap();
        }
        let inbound = self
            .client()
            .await
            .report(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        (tx, inbound)
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(STEP, self.task)
            .await
            .expect("the floor stops")
            .expect("the floor task")
            .expect("the floor served without error");
    }
}

fn batch(seqs: &[u64]) -> pb::ReportRequest {
    pb::ReportRequest {
        body: Some(In::Events(pb::EventBatch {
            events: seqs
                .iter()
                .map(|&seq| pb::Event {
                    seq,
                    kind: pb::EventKind::ServerDataSent.into(),
                    time: None,
                })
                .collect(),
        })),
    }
}

fn hello() -> pb::ReportRequest {
    pb::ReportRequest {
        body: Some(In::Hello(pb::Hello {
            agent_id: "floor-test".into(),
            incarnation: 7,
            labels: Default::default(),
        })),
    }
}

async fn next(inbound: &mut tonic::Streaming<pb::ReportResponse>) -> Option<Out> {
    tokio::time::timeout(STEP, inbound.message())
        .await
        .expect("an answer in time")
        .expect("no error")
        .map(|r| r.body.expect("a body"))
}

#[tokio::test]
async fn welcomes_then_acks_every_batch_and_ends_when_the_agent_does() {
    let floor = Floor::start().await;
    let (tx, mut inbound) = floor.open(vec![hello()]).await;
    let Some(Out::Welcome(welcome)) = next(&mut inbound).await else {
        panic!("a Welcome first");
    };
    assert_eq!(welcome.last_applied_seq, 0);
    assert_eq!(
        welcome.heartbeat_interval,
        prost_types::Duration::try_from(HEARTBEAT_INTERVAL).ok()
    );
    assert!(welcome.server_time.is_some());

    tx.send(batch(&[1, 2, 3])).await.unwrap();
    tx.send(batch(&[4])).await.unwrap();
    // An empty batch acknowledges what was acknowledged before.
    tx.send(batch(&[])).await.unwrap();
    for through in [3, 4, 4] {
        match next(&mut inbound).await {
            Some(Out::Ack(ack)) => assert_eq!(ack.applied_through, through),
            other => panic!("an Ack through {through}, not {other:?}"),
        }
    }
    drop(tx);
    assert!(
        next(&mut inbound).await.is_none(),
        "the stream ends with OK"
    );
    floor.stop().await;
}

#[tokio::test]
async fn an_empty_message_is_refused() {
    let floor = Floor::start().await;
    let (tx, mut inbound) = floor
        .open(vec![hello(), pb::ReportRequest { body: None }])
        .await;
    assert!(matches!(next(&mut inbound).await, Some(Out::Welcome(_))));
    let status = tokio::time::timeout(STEP, inbound.message())
        .await
        .expect("an answer in time")
        .expect_err("the stream ends with an error");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    drop(tx);
    floor.stop().await;
}

#[tokio::test]
async fn folding_acks_answers_batches_that_came_together_with_one_cumulative_ack() {
    let floor = Floor::serving(FloorService { fold_acks: true }).await;
    let mut first = vec![hello()];
    first.extend((1..=6).map(|seq| batch(&[seq])));
    first.push(pb::ReportRequest { body: None });
    let (tx, mut inbound) = floor.open(first).await;
    assert!(matches!(next(&mut inbound).await, Some(Out::Welcome(_))));
    let mut acked = Vec::new();
    let status = loop {
        match tokio::time::timeout(STEP, inbound.message())
            .await
            .expect("an answer in time")
        {
            Ok(Some(pb::ReportResponse {
                body: Some(Out::Ack(ack)),
            })) => acked.push(ack.applied_through),
            Ok(other) => panic!("an Ack or the end, not {other:?}"),
            Err(status) => break status,
        }
    };
    assert_eq!(acked.last(), Some(&6), "{acked:?}");
    assert!(acked.windows(2).all(|w| w[0] < w[1]), "{acked:?}");
    // The empty message read while folding still ends the stream, after
    // the Ack.
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    drop(tx);
    floor.stop().await;
}
