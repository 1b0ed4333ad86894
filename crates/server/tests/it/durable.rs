//! The durable store end to end: a restart changes no agent's status and
//! loses no acknowledged event; a damaged or newer data directory is refused.

use std::sync::Arc;

use fleet_health_server::model::ArcStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::common::*;
use fleet_health_proto::v1 as pb;
use fleet_health_server::clock::ManualClock;
use fleet_health_server::store::{AgentStore, DB_FILE, RedbStore, StoreError};
use fleet_health_server::{Config, Server};
use pb::EventKind as K;

#[tokio::test]
async fn a_restart_keeps_every_status_history_and_sequence_number() {
    let dir = scratch();
    let clock = ManualClock::new(t(T0));
    let s = TestServer::durable(dir.path(), clock.clone()).await;
    let mut ok = s.agent("ok", 11).await;
    ok.start_healthy(1).await;
    let mut stopped = s.agent("stopped", 12).await;
    stopped.start_healthy(1).await;
    stopped.stop_cleanly(4).await;
    let mut unreg = s.agent_labelled("eu/unreg", 13, &[("site", "eu")]).await;
    unreg
        .events(vec![event(1, K::Unregistered, None)])
        .await
        .expect("applied");
    let mut silent = s.agent("silent", 14).await;
    silent.start_healthy(1).await;
    drop(silent);
    // "silent" goes quiet; the others keep talking.
    s.advance(200);
    ok.events(vec![event(4, K::Heartbeat, None)])
        .await
        .expect("applied");
    s.advance(200);
    ok.events(vec![event(5, K::Heartbeat, None)])
        .await
        .expect("applied");
    let before: Vec<pb::AgentStatus> = s.list(pb::StateFilter::All).await.agents;
    let history_before = s
        .fleet()
        .get_history(pb::GetHistoryRequest {
            agent_id: "silent".into(),
        })
        .await
        .expect("history")
        .into_inner();
    assert_eq!(
        before
            .iter()
            .find(|a| a.agent_id == "silent")
            .expect("known")
            .why_text,
        "not reporting"
    );
    drop((ok, stopped, unreg));
    s.stop().await;

    // Down for a minute, then up again on the same data directory.
    clock.advance(Duration::from_secs(60));
    let s = TestServer::durable(dir.path(), clock.clone()).await;
    let after = s.list(pb::StateFilter::All).await.agents;
    assert_eq!(after.len(), before.len());
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(b.agent_id, a.agent_id);
        assert_eq!(
            (&b.why_text, b.since, b.last_heard),
            (&a.why_text, a.since, a.last_heard),
            "{}",
            a.agent_id
        );
        assert_eq!(
            (b.incarnation, b.last_seq, &b.labels, &b.sensor),
            (a.incarnation, a.last_seq, &a.labels, &a.sensor)
        );
        assert!(!a.connected);
    }
    let history_after = s
        .fleet()
        .get_history(pb::GetHistoryRequest {
            agent_id: "silent".into(),
        })
        .await
        .expect("history")
        .into_inner();
    assert_eq!(history_before, history_after);
    // The reporter resumes where the store says it left off.
    let mut ok = s.agent("ok", 11).await;
    assert_eq!(ok.welcome.last_applied_seq, 5);
    let ack = ok
        .events(vec![
            event(5, K::Heartbeat, None),
            event(6, K::Heartbeat, None),
        ])
        .await
        .expect("acked");
    assert_eq!(ack.applied_through, 6);

    // Grace: "ok" was not heard while the server was down, but it is not
    // "not reporting" before one silence window after the restart.
    let summary = s
        .fleet()
        .get_summary(pb::GetSummaryRequest { at: None })
        .await
        .expect("summary")
        .into_inner();
    assert_eq!(summary.grace_until, Some(ts(T0 + 460 + 300)));
    s.stop().await;
}

#[tokio::test]
async fn grace_after_a_restart_holds_back_not_reporting() {
    let dir = scratch();
    let clock = ManualClock::new(t(T0));
    let s = TestServer::durable(dir.path(), clock.clone()).await;
    let mut a = s.agent("a", 1).await;
    a.start_healthy(1).await;
    drop(a);
    s.stop().await;
    // Down for four minutes: up again, "a" has been silent for 240 s.
    clock.advance(Duration::from_secs(240));
    let s = TestServer::durable(dir.path(), clock.clone()).await;
    s.advance(200);
    // 440 s of silence, but only 200 s since the restart: still healthy.
    assert_eq!(s.get("a").await.why_text, "all is ok");
    s.advance(100);
    assert_eq!(s.get("a").await.why_text, "not reporting");
    assert_eq!(s.get("a").await.since, Some(ts(T0 + 240 + 300)));
    s.stop().await;
}

#[tokio::test]
async fn changes_due_while_down_happen_at_their_due_times() {
    let dir = scratch();
    let clock = ManualClock::new(t(T0));
    let s = TestServer::durable(dir.path(), clock.clone()).await;
    let mut a = s.agent("a", 1).await;
    a.start_healthy(1).await;
    a.events(vec![event(4, K::ShuttingDown, None)])
        .await
        .expect("applied");
    drop(a);
    s.stop().await;
    clock.advance(Duration::from_secs(3600));
    let s = TestServer::durable(dir.path(), clock.clone()).await;
    let st = s.get("a").await;
    // Stuck at shutdown since T0 + 600, whatever the grace says of silence.
    assert_eq!(
        (st.why_text.as_str(), st.since),
        ("stuck at shutdown", Some(ts(T0 + 600)))
    );
    s.stop().await;
}

#[tokio::test]
async fn forgotten_agents_stay_forgotten() {
    let dir = scratch();
    let clock = ManualClock::new(t(T0));
    let s = TestServer::durable(dir.path(), clock.clone()).await;
    let mut a = s.agent("a", 1).await;
    a.start_healthy(1).await;
    drop(a);
    s.fleet()
        .forget_agent(pb::ForgetAgentRequest {
            agent_id: "a".into(),
        })
        .await
        .expect("forgotten");
    s.stop().await;
    let s = TestServer::durable(dir.path(), clock).await;
    assert!(s.list(pb::StateFilter::All).await.agents.is_empty());
    s.stop().await;
}

#[test]
fn damaged_or_newer_data_is_refused_not_reset() {
    let dir = scratch();
    std::fs::write(dir.path().join(DB_FILE), b"not a database").expect("written");
    let err = RedbStore::open(dir.path()).expect_err("refused");
    assert!(matches!(err, StoreError::Open { .. }), "{err}");

    let newer = scratch();
    RedbStore::open(newer.path())
        .expect("opens")
        .set_format_version(99)
        .expect("set");
    let err = RedbStore::open(newer.path()).expect_err("refused");
    assert!(err.to_string().contains("format version 99"), "{err}");

    let scratch = scratch();
    let file = scratch.path().join("data");
    std::fs::write(&file, b"a file, not a directory").expect("written");
    let err = RedbStore::open(&file).expect_err("refused");
    assert!(matches!(err, StoreError::Dir { .. }), "{err}");
}

#[test]
fn a_damaged_record_is_refused_with_its_agent_and_file() {
    let dir = scratch();
    let store = RedbStore::open(dir.path()).expect("opens");
    store
        .commit(&[(ArcStr::from("a"), vec![0xff, 0xff])], &[])
        .expect("written");
    let clock = std::sync::Arc::new(ManualClock::new(t(T0)));
    let Err(err) = Server::durable(Config::default(), clock, store) else {
        panic!("a damaged record was loaded");
    };
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(DB_FILE), "{msg}");
    assert!(msg.contains("agent \"a\" is damaged"), "{msg}");
}

/// A store whose commits fail while `failing` is set.
#[derive(Clone)]
struct FlakyStore {
    inner: Arc<RedbStore>,
    failing: Arc<AtomicBool>,
}

impl AgentStore for FlakyStore {
    fn location(&self) -> String {
        self.inner.location()
    }

    fn load(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.inner.load()
    }

    fn commit(&self, upserts: &[(ArcStr, Vec<u8>)], deletes: &[ArcStr]) -> Result<(), StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::Dir {
                path: "/full-disk".into(),
                source: std::io::Error::other("no space left on device"),
            });
        }
        self.inner.commit(upserts, deletes)
    }
}

#[tokio::test]
async fn not_ready_while_the_store_cannot_commit_and_nothing_is_acknowledged() {
    let dir = scratch();
    let clock = ManualClock::new(t(T0));
    let failing = Arc::new(AtomicBool::new(false));
    let store = FlakyStore {
        inner: Arc::new(RedbStore::open(dir.path()).expect("opens")),
        failing: failing.clone(),
    };
    let server = Server::durable(Config::default(), Arc::new(clock.clone()), store).expect("loads");
    let s = TestServer::serve(server, clock, |addr| {
        tonic::transport::Channel::from_shared(format!("http://{addr}")).expect("uri")
    })
    .await;
    let (status, body) = s.http_get("/readyz").await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    let mut a = s.agent("a", 1).await;
    failing.store(true, Ordering::SeqCst);
    a.send(pb::report_request::Body::Events(pb::EventBatch {
        events: vec![event(1, K::Starting, None)],
    }))
    .await;
    // Not ready once a commit has failed; liveness stays cheap and ok.
    soon(async {
        while s.http_get("/readyz").await.0 != 503 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let (_, body) = s.http_get("/readyz").await;
    assert!(body.contains("the store cannot commit"), "{body}");
    assert_eq!(s.http_get("/healthz").await.0, 200);
    let scraped = s.metrics().await;
    let failures = scraped
        .lines()
        .find_map(|l| l.strip_prefix("fleet_health_store_commit_failures_total "))
        .expect("the counter");
    assert!(failures.parse::<u64>().expect("a count") >= 1, "{failures}");
    // The disk is back: the event is committed, then acknowledged, and the
    // server is ready again.
    failing.store(false, Ordering::SeqCst);
    let ack = a.ack().await.expect("acknowledged after the commit");
    assert_eq!(ack.applied_through, 1);
    assert_eq!(s.http_get("/readyz").await.0, 200);
    s.stop().await;
}
