//! `ResumingWatch` against an in-process fake `FleetService` on 127.0.0.1:0
//! that ends the first watch as a server ends one that fell behind
//! (ABORTED): the watch starts over with a fresh snapshot, it does not give
//! up.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fleet_health_client::proto::fleet_service_server::{FleetService, FleetServiceServer};
use fleet_health_client::proto::{self as pb, watch_agents_response::Event as W};
use fleet_health_client::{
    AgentQuery, BackoffConfig, FleetClient, ReconnectPolicy, ResumingWatch, ResyncCause,
    WatchChange,
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

/// Answers watches only: the first ends with ABORTED after its snapshot,
/// later ones stay open after theirs.
#[derive(Clone, Default)]
struct Fake {
    watches: Arc<AtomicUsize>,
}

type Items = Pin<Box<dyn Stream<Item = Result<pb::WatchAgentsResponse, Status>> + Send>>;

fn synced() -> Result<pb::WatchAgentsResponse, Status> {
    Ok(pb::WatchAgentsResponse {
        event: Some(W::Synced(pb::Synced {
            count: 0,
            storm: None,
            at: None,
        })),
    })
}

#[tonic::async_trait]
impl FleetService for Fake {
    async fn get_agent(
        &self,
        _: Request<pb::GetAgentRequest>,
    ) -> Result<Response<pb::GetAgentResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn list_agents(
        &self,
        _: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    type WatchAgentsStream = Items;

    async fn watch_agents(
        &self,
        _: Request<pb::WatchAgentsRequest>,
    ) -> Result<Response<Items>, Status> {
        let first = self.watches.fetch_add(1, Ordering::SeqCst) == 0;
        let items: Items = if first {
            Box::pin(tokio_stream::iter([
                synced(),
                Err(Status::aborted(
                    "this watch took nothing for 30s and fell behind; watch again (a fresh snapshot follows)",
                )),
            ]))
        } else {
            Box::pin(tokio_stream::iter([synced()]).chain(tokio_stream::pending()))
        };
        Ok(Response::new(items))
    }

    async fn get_summary(
        &self,
        _: Request<pb::GetSummaryRequest>,
    ) -> Result<Response<pb::GetSummaryResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn get_history(
        &self,
        _: Request<pb::GetHistoryRequest>,
    ) -> Result<Response<pb::GetHistoryResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn forget_agent(
        &self,
        _: Request<pb::ForgetAgentRequest>,
    ) -> Result<Response<pb::ForgetAgentResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn set_maintenance(
        &self,
        _: Request<pb::SetMaintenanceRequest>,
    ) -> Result<Response<pb::SetMaintenanceResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn clear_maintenance(
        &self,
        _: Request<pb::ClearMaintenanceRequest>,
    ) -> Result<Response<pb::ClearMaintenanceResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn claim_agent(
        &self,
        _: Request<pb::ClaimAgentRequest>,
    ) -> Result<Response<pb::ClaimAgentResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn release_agent(
        &self,
        _: Request<pb::ReleaseAgentRequest>,
    ) -> Result<Response<pb::ReleaseAgentResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn record_remediation(
        &self,
        _: Request<pb::RecordRemediationRequest>,
    ) -> Result<Response<pb::RecordRemediationResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn get_server_info(
        &self,
        _: Request<pb::GetServerInfoRequest>,
    ) -> Result<Response<pb::GetServerInfoResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn get_cluster_status(
        &self,
        _: Request<pb::GetClusterStatusRequest>,
    ) -> Result<Response<pb::GetClusterStatusResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn clear_given_up(
        &self,
        _: Request<pb::ClearGivenUpRequest>,
    ) -> Result<Response<pb::ClearGivenUpResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

/// The watch's next change, in time.
async fn next(w: &mut ResumingWatch) -> WatchChange {
    tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .expect("in time")
        .expect("the watch goes on")
}

#[tokio::test]
async fn a_watch_ended_for_falling_behind_starts_over() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let fake = Fake::default();
    let served = fake.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(FleetServiceServer::new(served))
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    let client = FleetClient::connect_lazy(&url, Duration::from_secs(5)).unwrap();
    let policy = ReconnectPolicy {
        backoff: BackoffConfig {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(50),
        },
        give_up_after: Duration::from_secs(10),
    };
    let lost = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let told = lost.clone();
    let mut watch = ResumingWatch::start(client, AgentQuery::default(), policy)
        .await
        .unwrap()
        .on_lost(Box::new(move |cause| {
            told.lock().unwrap().push(cause.to_owned())
        }));
    assert!(matches!(next(&mut watch).await, WatchChange::Synced { .. }));
    match next(&mut watch).await {
        WatchChange::Resync {
            cause: ResyncCause::Reconnected { after },
        } => assert_eq!(after, "this watch fell behind and the server ended it"),
        other => panic!("expected a resync, got {other:?}"),
    }
    assert!(matches!(next(&mut watch).await, WatchChange::Synced { .. }));
    assert_eq!(fake.watches.load(Ordering::SeqCst), 2);
    assert_eq!(
        *lost.lock().unwrap(),
        ["this watch fell behind and the server ended it"]
    );
}
