//! The gRPC floor: what this machine can do with HTTP/2 and gRPC at all.
//!
//! [`FloorService`] implements `fleethealth.v1.AgentService` with the same
//! generated code and codec as `fleet-health-server`, and [`serve`] runs it
//! with the server's transport settings (HTTP/2 windows, concurrent streams,
//! keep-alive, message size, `TCP_NODELAY` on every accepted socket). It
//! answers a Hello with a Welcome and every event batch with an Ack of the
//! highest sequence number seen, and does nothing else: no registry, no store,
//! no clock per message, no timers. A benchmark of the real server divided by
//! the same benchmark of the floor, measured in the same run, says how much of
//! the machine's gRPC capacity the server keeps.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use fleet_health_proto::v1 as pb;
use fleet_health_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
use fleet_health_server::Transport;
use fleet_health_server::net::{Acceptor, Conn, Connections};
use pb::report_request::Body as In;
use pb::report_response::Body as Out;
use tokio::net::TcpListener;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// The heartbeat interval the floor's Welcome asks for (the server's default,
/// so that a load generator sees the same answer from both).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);

/// `AgentService` reduced to its answers: a Welcome for a Hello, an Ack for
/// every event batch, or, with `fold_acks`, one cumulative Ack for the event
/// batches that had already arrived together (as the server without a store
/// answers them).
#[derive(Clone, Copy, Debug, Default)]
pub struct FloorService {
    /// Answer the batches that arrived together with one Ack.
    pub fold_acks: bool,
}

type Reply = Result<pb::ReportResponse, Status>;

/// The most batches one folded Ack answers (the server's bound).
const MAX_FOLDED_MESSAGES: usize = 64;

/// One Report stream: the messages read so far and the highest sequence
/// number seen.
struct FloorStream {
    inbound: Streaming<pb::ReportRequest>,
    applied_through: u64,
    fold_acks: bool,
    /// A message read while folding that is not an event batch: the next
    /// step's.
    held: Option<Result<Option<pb::ReportRequest>, Status>>,
}

impl FloorStream {
    /// The answer to the next message, or `None` when the agent has closed
    /// the stream (or it broke).
    async fn step(&mut self) -> Option<Reply> {
        let next = match self.held.take() {
            Some(held) => held,
            None => self.inbound.message().await,
        };
        let body = match next {
            Ok(Some(msg)) => msg.body,
            Ok(None) => return None,
            Err(status) => return Some(Err(status)),
        };
        Some(match body {
            Some(In::Hello(_)) => Ok(welcome()),
            Some(In::Events(batch)) => {
                self.saw(&batch);
                if self.fold_acks {
                    self.fold();
                }
                Ok(pb::ReportResponse {
                    body: Some(Out::Ack(pb::Ack {
                        applied_through: self.applied_through,
                        clamped: 0,
                    })),
                })
            }
            None => Err(Status::invalid_argument("an empty message")),
        })
    }

    /// Notes the highest sequence number of `batch`.
    fn saw(&mut self, batch: &pb::EventBatch) {
        if let Some(last) = batch.events.iter().map(|e| e.seq).max() {
            self.applied_through = self.applied_through.max(last);
        }
    }

    /// Takes the event batches that have already arrived, without waiting.
    fn fold(&mut self) {
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 1..MAX_FOLDED_MESSAGES {
            match Pin::new(&mut self.inbound).poll_next(&mut cx) {
                Poll::Ready(Some(Ok(pb::ReportRequest {
                    body: Some(In::Events(batch)),
                }))) => self.saw(&batch),
                Poll::Ready(Some(other)) => {
                    self.held = Some(other.map(Some));
                    return;
                }
                Poll::Ready(None) => {
                    self.held = Some(Ok(None));
                    return;
                }
                Poll::Pending => return,
            }
        }
    }
}

/// The Welcome of a new stream: nothing applied yet.
fn welcome() -> pb::ReportResponse {
    pb::ReportResponse {
        body: Some(Out::Welcome(pb::Welcome {
            heartbeat_interval: prost_types::Duration::try_from(HEARTBEAT_INTERVAL).ok(),
            last_applied_seq: 0,
            server_time: Some(SystemTime::now().into()),
        })),
    }
}

#[tonic::async_trait]
impl AgentService for FloorService {
    type ReportStream = Pin<Box<dyn Stream<Item = Reply> + Send>>;

    async fn report(
        &self,
        request: Request<Streaming<pb::ReportRequest>>,
    ) -> Result<Response<Self::ReportStream>, Status> {
        let stream = FloorStream {
            inbound: request.into_inner(),
            applied_through: 0,
            fold_acks: self.fold_acks,
            held: None,
        };
        // Driven by the task that sends the response, as in the server: no
        // task or channel per stream. An error is the stream's last item.
        let replies = futures_util::stream::unfold(Some(stream), |s| async move {
            let mut s = s?;
            match s.step().await? {
                Ok(reply) => Some((Ok(reply), Some(s))),
                Err(status) => Some((Err(status), None)),
            }
        });
        Ok(Response::new(Box::pin(replies)))
    }
}

/// The accepted connections of `listener`, as the server accepts them
/// (`fleet_health_server::net::Acceptor`): each with `TCP_NODELAY` set, since
/// without it Nagle's algorithm holds back small answers until the peer's
/// delayed acknowledgement.
pub fn incoming(listener: TcpListener) -> impl Stream<Item = io::Result<Conn>> + Send + 'static {
    Acceptor::new(listener, Connections::new()).into_stream()
}

/// Serves `floor` on `listener` with `transport`'s HTTP/2 and message
/// settings (the server's own builder) until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    transport: &Transport,
    floor: FloorService,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let agents =
        AgentServiceServer::new(floor).max_decoding_message_size(transport.max_message_bytes);
    transport
        .server_builder()
        .add_service(agents)
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await
}
