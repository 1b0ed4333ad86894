//! `kill -9` at random moments while agents stream, then a restart: every
//! acknowledged event is there and none is applied twice. Runs the real
//! server binary on a real data directory.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_health_e2e::Server;
use fleet_health_proto::v1 as pb;
use fleet_health_proto::v1::agent_service_client::AgentServiceClient;
use fleet_health_proto::v1::fleet_service_client::FleetServiceClient;
use pb::report_request::Body as In;
use pb::report_response::Body as Out;
use tokio_stream::wrappers::ReceiverStream;

const BASE: i64 = 1_700_000_000;
const AGENTS: u64 = 4;
const EVENTS: u64 = 1500;

/// One agent: sends server_data_sent events whose time encodes their sequence
/// number, re-sends what was not acknowledged after every reconnect, and
/// records the highest acknowledged sequence number.
async fn agent(n: u64, addr: Arc<Mutex<SocketAddr>>, acked: Arc<Mutex<Vec<u64>>>) {
    let id = format!("agent-{n}");
    let mut next_unacked = 1;
    while next_unacked <= EVENTS {
        let target = *addr.lock().expect("lock");
        let Ok(mut client) = AgentServiceClient::connect(format!("http://{target}")).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let hello = pb::ReportRequest {
            body: Some(In::Hello(pb::Hello {
                agent_id: id.clone(),
                incarnation: 1000 + n,
                labels: Default::default(),
            })),
        };
        if tx.send(hello).await.is_err() {
            continue;
        }
        let Ok(resp) = client.report(ReceiverStream::new(rx)).await else {
            continue;
        };
        let mut inbound = resp.into_inner();
        let Ok(Some(pb::ReportResponse {
            body: Some(Out::Welcome(w)),
        })) = inbound.message().await
        else {
            continue;
        };
        next_unacked = next_unacked.max(w.last_applied_seq + 1);
        loop {
            if next_unacked > EVENTS {
                return;
            }
            // Batches of 1 to 5 events.
            let last = (next_unacked + fastrand_u64(n, next_unacked) % 5).min(EVENTS);
            let events = (next_unacked..=last)
                .map(|seq| pb::Event {
                    seq,
                    kind: pb::EventKind::ServerDataSent as i32,
                    time: Some(prost_types::Timestamp {
                        seconds: BASE + seq as i64,
                        nanos: 0,
                    }),
                })
                .collect();
            let msg = pb::ReportRequest {
                body: Some(In::Events(pb::EventBatch { events })),
            };
            if tx.send(msg).await.is_err() {
                break;
            }
            match inbound.message().await {
                Ok(Some(pb::ReportResponse {
                    body: Some(Out::Ack(a)),
                })) => {
                    let mut acked = acked.lock().expect("lock");
                    acked[n as usize] = acked[n as usize].max(a.applied_through);
                    next_unacked = a.applied_through + 1;
                }
                _ => break,
            }
        }
    }
}

/// A cheap deterministic spread of batch sizes.
fn fastrand_u64(a: u64, b: u64) -> u64 {
    (a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F)).rotate_left(17)
}

async fn statuses(addr: SocketAddr) -> Vec<pb::AgentStatus> {
    let mut fleet = FleetServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connects");
    let mut out = Vec::new();
    for n in 0..AGENTS {
        let r = fleet
            .get_agent(pb::GetAgentRequest {
                agent_id: format!("agent-{n}"),
                at: None,
            })
            .await
            .map(|r| r.into_inner().agent.expect("agent"));
        match r {
            Ok(a) => out.push(a),
            Err(s) if s.code() == tonic::Code::NotFound => out.push(pb::AgentStatus::default()),
            Err(s) => panic!("{s:?}"),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_event_and_applies_none_twice() {
    let mut server = Server::start(&[]).await;
    let addr = Arc::new(Mutex::new(server.addr()));
    let acked = Arc::new(Mutex::new(vec![0u64; AGENTS as usize]));
    let agents: Vec<_> = (0..AGENTS)
        .map(|n| tokio::spawn(agent(n, addr.clone(), acked.clone())))
        .collect();
    let mut kills = 0;
    let mut pause = 37u64;
    while !agents.iter().all(|a| a.is_finished()) && kills < 8 {
        // A moment that differs from kill to kill.
        pause = (pause * 7919 + 13) % 250 + 20;
        tokio::time::sleep(Duration::from_millis(pause)).await;
        server.kill9().await;
        kills += 1;
        let before = acked.lock().expect("lock").clone();
        server.restart().await;
        let at = server.addr();
        // Every event acknowledged before the kill is there after it.
        for (n, st) in statuses(at).await.iter().enumerate() {
            assert!(
                st.last_seq >= before[n],
                "agent-{n}: acked {} but stored {}",
                before[n],
                st.last_seq
            );
            if st.last_seq > 0 {
                let sent = st.sensor.as_ref().and_then(|s| s.last_sent).expect("times");
                assert_eq!(
                    sent.seconds,
                    BASE + st.last_seq as i64,
                    "agent-{n}: last event applied out of order"
                );
            }
        }
        *addr.lock().expect("lock") = at;
    }
    for a in agents {
        tokio::time::timeout(Duration::from_secs(120), a)
            .await
            .expect("agents finish")
            .expect("agent task");
    }
    let acked_total: u64 = acked.lock().expect("lock").iter().sum();
    eprintln!(
        "{kills} kills while {AGENTS} agents sent {EVENTS} events each ({acked_total} acknowledged)"
    );
    assert!(
        kills >= 2,
        "the agents finished before the server was killed twice"
    );
    // One last kill after everything was acknowledged.
    server.kill9().await;
    server.restart().await;
    for (n, st) in statuses(server.addr()).await.iter().enumerate() {
        assert_eq!(st.last_seq, EVENTS, "agent-{n}");
        // Had a re-sent event been applied again after a later one, the last
        // sent time would be older than the last event's.
        let sent = st.sensor.as_ref().and_then(|s| s.last_sent).expect("times");
        assert_eq!(sent.seconds, BASE + EVENTS as i64, "agent-{n}");
    }
}
