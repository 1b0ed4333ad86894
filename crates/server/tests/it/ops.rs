//! Maintenance marks and remediation claims through the gRPC API: what the
//! calls refuse, what watches and lists see, and that a durable server
//! keeps marks, claims and activity across a restart.

use std::time::Duration;

use fleet_health_proto::v1 as pb;
use fleet_health_server::clock::ManualClock;
use pb::watch_agents_response::Event as W;
use tonic::Code;

use crate::common::*;

fn secs(s: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: s,
        nanos: 0,
    })
}

fn mark(ids: &[&str], reason: &str, seconds: i64) -> pb::SetMaintenanceRequest {
    pb::SetMaintenanceRequest {
        agent_ids: ids.iter().map(|s| s.to_string()).collect(),
        reason: reason.into(),
        duration: secs(seconds),
        ..Default::default()
    }
}

fn claim(id: &str, holder: &str, lease: i64) -> pb::ClaimAgentRequest {
    pb::ClaimAgentRequest {
        agent_id: id.into(),
        holder: holder.into(),
        lease: secs(lease),
    }
}

/// Agents that said hello and nothing more: faulty ("no data received from
/// server"), streams kept open.
async fn faulty(s: &TestServer, ids: &[&str]) -> Vec<Agent> {
    let mut open = Vec::new();
    for id in ids {
        open.push(s.agent(id, 1).await);
    }
    open
}

#[tokio::test]
async fn bad_maintenance_and_claim_requests_are_refused_and_change_nothing() {
    let s = TestServer::start().await;
    let _agents = faulty(&s, &["a", "b"]).await;
    let mut fleet = s.fleet();
    let cases = [
        (mark(&[], "r", 60), "exactly one"),
        (
            pb::SetMaintenanceRequest {
                all: true,
                ..mark(&["a"], "r", 60)
            },
            "exactly one",
        ),
        (mark(&["a"], "", 60), "reason is required"),
        (mark(&["a"], "r", 0), "duration must be"),
        (mark(&["a"], "r", 400 * 86_400), "duration must be"),
        (
            pb::SetMaintenanceRequest {
                duration: None,
                ..mark(&["a"], "r", 60)
            },
            "duration is required",
        ),
        (mark(&["a b"], "r", 60), "agent ID"),
        (mark(&["a"], "line\nbreak", 60), "control character"),
    ];
    for (req, says) in cases {
        let e = fleet.set_maintenance(req.clone()).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{req:?}: {e:?}");
        assert!(e.message().contains(says), "{req:?}: {}", e.message());
    }
    let e = fleet
        .set_maintenance(mark(&["a", "nobody"], "r", 60))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(s.get("a").await.maintenance.is_none(), "nothing marked");
    for (req, says) in [
        (claim("a", "", 60), "holder is required"),
        (claim("a", "r1", 0), "lease must be"),
        (claim("a", "r1", 2 * 86_400), "lease must be"),
    ] {
        let e = fleet.claim_agent(req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains(says), "{}", e.message());
    }
    let e = fleet
        .claim_agent(claim("nobody", "r1", 60))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = fleet
        .record_remediation(pb::RecordRemediationRequest {
            agent_id: "a".into(),
            holder: "r1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("nothing to record"), "{}", e.message());
    let e = fleet
        .record_remediation(pb::RecordRemediationRequest {
            agent_id: "a".into(),
            holder: "r1".into(),
            remediation: Some(pb::Remediation {
                started: Some(ts(T0 + 10)),
                finished: Some(ts(T0)),
                result: pb::RemediationResult::Succeeded as i32,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("before"), "{}", e.message());
    assert!(s.get("a").await.claim.is_none());
}

#[tokio::test]
async fn a_faulty_watch_loses_an_agent_under_maintenance_and_gets_it_back() {
    let s = TestServer::start().await;
    let _agents = faulty(&s, &["a", "b"]).await;
    let mut fleet = s.fleet();
    let mut w = fleet
        .watch_agents(pb::WatchAgentsRequest {
            filter: pb::StateFilter::Faulty as i32,
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    let (agents, _) = snapshot(&mut w).await;
    assert_eq!(agents.len(), 2);
    let r = fleet
        .set_maintenance(mark(&["b"], "disk swap", 60))
        .await
        .expect("marks")
        .into_inner();
    assert_eq!((r.marked, r.agent_ids), (1, vec!["b".to_string()]));
    match next_change(&mut w).await {
        W::Left(l) => {
            assert_eq!(l.agent_id, "b");
            let m = l.status.unwrap().maintenance.expect("marked");
            assert_eq!(m.reason, "disk swap");
        }
        other => panic!("unexpected {other:?}"),
    }
    // Faulty lists leave it out unless asked; the summary counts it apart.
    assert_eq!(s.list(pb::StateFilter::Faulty).await.agents.len(), 1);
    let with = fleet
        .list_agents(pb::ListAgentsRequest {
            filter: pb::StateFilter::Faulty as i32,
            maintenance: pb::MaintenanceFilter::Include as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(with.agents.len(), 2);
    assert_eq!(with.storm.unwrap().maintenance, 1);
    let sum = fleet
        .get_summary(pb::GetSummaryRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (sum.faulty, sum.maintenance, sum.maintenance_faulty),
        (2, 1, 1)
    );
    let e = fleet
        .list_agents(pb::ListAgentsRequest {
            maintenance: 9,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // The mark ends by itself: the agent is back in the watch.
    s.advance(60);
    match next_change(&mut w).await {
        W::Changed(a) => {
            assert_eq!(a.agent_id, "b");
            assert!(a.maintenance.is_none());
        }
        other => panic!("unexpected {other:?}"),
    }
    let h = fleet
        .get_history(pb::GetHistoryRequest {
            agent_id: "b".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let kinds: Vec<i32> = h.activity.iter().map(|a| a.kind).collect();
    assert_eq!(
        kinds,
        [
            pb::ActivityKind::MaintenanceSet as i32,
            pb::ActivityKind::MaintenanceExpired as i32
        ]
    );
    assert_eq!(h.activity[1].at, Some(ts(T0 + 60)));
    assert!(
        s.metrics()
            .await
            .contains("fleet_health_maintenance_agents 0")
    );
}

#[tokio::test]
async fn a_durable_server_keeps_claims_marks_and_activity_across_a_restart() {
    let dir = scratch();
    let clock = ManualClock::new(t(T0));
    let s = TestServer::durable(dir.path(), clock.clone()).await;
    let agents = faulty(&s, &["a", "b"]).await;
    let mut fleet = s.fleet();
    let c = fleet
        .claim_agent(claim("a", "r1", 600))
        .await
        .unwrap()
        .into_inner();
    assert!(c.granted);
    assert_eq!(c.claim.unwrap().until, Some(ts(T0 + 600)));
    fleet
        .record_remediation(pb::RecordRemediationRequest {
            agent_id: "a".into(),
            holder: "r1".into(),
            remediation: Some(pb::Remediation {
                started: Some(ts(T0)),
                finished: Some(ts(T0 + 2)),
                program: "systemctl restart agent@a".into(),
                result: pb::RemediationResult::Succeeded as i32,
                exit_code: Some(0),
                output: "x".repeat(10_000),
                why: pb::Why::NoDataReceived as i32,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    fleet
        .set_maintenance(mark(&["b"], "rack move", 3600))
        .await
        .unwrap();
    let scraped = s.metrics().await;
    assert!(scraped.contains("fleet_health_claims_total{outcome=\"granted\"} 1"));
    assert!(scraped.contains("fleet_health_remediations_total{result=\"succeeded\"} 1"));
    drop(agents);
    s.stop().await;
    clock.advance(Duration::from_secs(30));
    let s = TestServer::durable(dir.path(), clock.clone()).await;
    let mut fleet = s.fleet();
    // The claim holds across the restart: another holder is refused.
    let other = fleet
        .claim_agent(claim("a", "r2", 600))
        .await
        .unwrap()
        .into_inner();
    assert!(!other.granted);
    assert_eq!(other.refusal, pb::ClaimRefusal::Held as i32);
    assert_eq!(other.claim.unwrap().holder, "r1");
    assert_eq!(other.recent.len(), 1);
    assert_eq!(
        other.recent[0].output.len(),
        4096,
        "the output's end is kept"
    );
    assert_eq!(s.get("b").await.maintenance.unwrap().reason, "rack move");
    assert_eq!(
        fleet
            .claim_agent(claim("b", "r2", 60))
            .await
            .unwrap()
            .into_inner()
            .refusal,
        pb::ClaimRefusal::Maintenance as i32
    );
    // Given up, then cleared by an operator.
    fleet
        .record_remediation(pb::RecordRemediationRequest {
            agent_id: "a".into(),
            holder: "r1".into(),
            give_up: true,
            give_up_reason: "3 restarts within 1h".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let a = s.get("a").await;
    assert_eq!(a.given_up.unwrap().reason, "3 restarts within 1h");
    assert!(a.claim.is_none(), "giving up ends the claim");
    let cleared = fleet
        .clear_given_up(pb::ClearGivenUpRequest {
            agent_id: "a".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(cleared.cleared);
    let granted = fleet
        .claim_agent(claim("a", "r2", 60))
        .await
        .unwrap()
        .into_inner();
    assert!(granted.granted);
    assert!(
        fleet
            .release_agent(pb::ReleaseAgentRequest {
                agent_id: "a".into(),
                holder: "r2".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .released
    );
    let cleared = fleet
        .clear_maintenance(pb::ClearMaintenanceRequest {
            all: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cleared.cleared, 1);
}
