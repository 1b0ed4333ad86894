//! Watches over a fleet larger than one snapshot page: the snapshot sent as
//! a cursor over the index, changes made while it goes out, a watcher that
//! stops reading, and the cap on watches.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fleet_health_proto::v1 as pb;
use fleet_health_server::Config;
use fleet_health_server::config::{Limits, WatchLimits};
use fleet_health_server::fleet_service::WATCH_QUEUE;
use pb::watch_agents_response::Event as W;
use tonic::Code;

use crate::common::*;

/// Makes `n` agents known (`w-0000`...) with `labels`, each healthy;
/// returns their streams.
async fn fleet_labelled(server: &TestServer, n: usize, labels: &[(&str, &str)]) -> Vec<Agent> {
    let mut agents = Vec::with_capacity(n);
    for i in 0..n {
        let mut a = server.agent_labelled(&format!("w-{i:04}"), 1, labels).await;
        a.start_healthy(1).await;
        agents.push(a);
    }
    agents
}

/// A watch of the whole fleet.
async fn watch_all(server: &TestServer) -> tonic::Streaming<pb::WatchAgentsResponse> {
    server
        .fleet()
        .watch_agents(pb::WatchAgentsRequest {
            filter: pb::StateFilter::All as i32,
            ..Default::default()
        })
        .await
        .expect("watch opens")
        .into_inner()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name}"))
}

/// Waits until the metric `name` satisfies `ok`; its value then.
async fn metric_until(server: &TestServer, name: &str, ok: impl Fn(f64) -> bool) -> f64 {
    soon(async {
        loop {
            let v = metric(&server.metrics().await, name);
            if ok(v) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// A server whose clients have a small HTTP/2 window (as one that stopped
/// reading soon has), with these watch limits and change feed.
async fn narrow_server(watch: WatchLimits, watch_buffer: usize) -> TestServer {
    let config = Config {
        watch,
        limits: Limits {
            watch_buffer,
            ..Limits::default()
        },
        ..Config::default()
    };
    TestServer::start_on(
        config,
        fleet_health_server::clock::ManualClock::new(t(T0)),
        None,
        |addr| {
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .expect("uri")
                .initial_stream_window_size(1024)
        },
    )
    .await
}

/// Twenty labels of 250 bytes: about 5 KiB an agent, so that a snapshot of a
/// few hundred outgrows what the transport buffers for a client that reads
/// nothing.
fn heavy_labels() -> Vec<(String, String)> {
    (0..20)
        .map(|i| (format!("label-{i:02}"), "v".repeat(250)))
        .collect()
}

#[tokio::test]
async fn changes_made_while_the_snapshot_goes_out_are_never_lost() {
    // A client with a small HTTP/2 window, and agents of about 1 KiB each:
    // the transport cannot take the whole snapshot at once, so the watcher
    // is held inside it while the fleet changes.
    let server = TestServer::start().await;
    let value = "v".repeat(250);
    let keys: Vec<String> = (0..4).map(|i| format!("label-{i}")).collect();
    let labels: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), value.as_str())).collect();
    let mut agents = fleet_labelled(&server, 700, &labels).await;
    let narrow = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .expect("uri")
        .initial_stream_window_size(1024)
        .connect()
        .await
        .expect("connects");
    let mut watch = fleet_health_proto::v1::fleet_service_client::FleetServiceClient::new(narrow)
        .watch_agents(pb::WatchAgentsRequest {
            filter: pb::StateFilter::All as i32,
            ..Default::default()
        })
        .await
        .expect("watch opens")
        .into_inner();
    // The first message is out: the watcher is inside the snapshot, the
    // rest of the fleet not yet read.
    let first = soon(watch.message())
        .await
        .expect("open")
        .expect("a message");
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut in_snapshot: Vec<String> = Vec::new();
    let W::Snapshot(a) = first.event.expect("an event") else {
        panic!("the snapshot comes first")
    };
    in_snapshot.push(a.agent_id.clone());
    seen.insert(a.agent_id.clone(), a.why_text.clone());
    // Change agents before, inside and after the cursor: one sent already,
    // one in a later page; and forget one not yet sent.
    for i in [3usize, 350, 650] {
        agents[i].stop_cleanly(3).await;
    }
    server
        .fleet()
        .forget_agent(pb::ForgetAgentRequest {
            agent_id: "w-0500".into(),
        })
        .await
        .expect("forgets");
    // Read the rest of the snapshot, then the changes until the feed is quiet.
    loop {
        let msg = soon(watch.message())
            .await
            .expect("open")
            .expect("a message");
        match msg.event.expect("an event") {
            W::Snapshot(a) => {
                in_snapshot.push(a.agent_id.clone());
                seen.insert(a.agent_id.clone(), a.why_text.clone());
            }
            W::Synced(s) => {
                assert_eq!(s.count as usize, in_snapshot.len());
                break;
            }
            other => panic!("unexpected {other:?} inside the snapshot"),
        }
    }
    // The snapshot read the fleet as it went: the agent changed before its
    // page went out is in it as it is now, and the forgotten one is not
    // (a copy taken when the watch began would hold both as they were).
    assert_eq!(seen.get("w-0650").map(String::as_str), Some("stopped"));
    assert!(!in_snapshot.iter().any(|id| id == "w-0500"));
    let mut sorted = in_snapshot.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        in_snapshot.len(),
        "no agent twice in one snapshot"
    );
    assert_eq!(in_snapshot, sorted, "the snapshot goes out in ID order");
    // The changes after it: apply them as a watcher does.
    let list = server.list(pb::StateFilter::All).await;
    let truth: BTreeMap<String, String> = list
        .agents
        .iter()
        .map(|a| (a.agent_id.clone(), a.why_text.clone()))
        .collect();
    let applied = soon(async {
        loop {
            if seen == truth {
                return;
            }
            let msg = watch.message().await.expect("open").expect("a message");
            match msg.event.expect("an event") {
                W::Changed(a) => {
                    seen.insert(a.agent_id.clone(), a.why_text.clone());
                }
                W::Left(l) => {
                    seen.remove(&l.agent_id);
                }
                W::Storm(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    });
    applied.await;
    assert_eq!(seen.get("w-0350").map(String::as_str), Some("stopped"));
    assert!(!seen.contains_key("w-0500"));
    // Gone, so that stopping the server waits for no unread stream.
    drop(watch);
    server.stop().await;
}

#[tokio::test]
async fn a_watcher_that_stops_reading_is_ended_and_told_to_watch_again() {
    let config = Config {
        watch: WatchLimits {
            max_watchers: 10,
            stall_timeout: Duration::from_millis(300),
        },
        ..Config::default()
    };
    // A client with a small HTTP/2 window, as one that has stopped reading
    // soon has.
    let server = TestServer::start_on(
        config,
        fleet_health_server::clock::ManualClock::new(t(T0)),
        None,
        |addr| {
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .expect("uri")
                .initial_stream_window_size(1024)
        },
    )
    .await;
    // Large enough (about 5 KiB an agent) that the snapshot outgrows what
    // the transport buffers for a client that reads nothing.
    let value = "v".repeat(250);
    let keys: Vec<String> = (0..20).map(|i| format!("label-{i:02}")).collect();
    let labels: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), value.as_str())).collect();
    let _agents = fleet_labelled(&server, 300, &labels).await;
    let mut stalled = watch_all(&server).await;
    // It reads nothing: within the stall timeout its watcher is ended, and
    // holds no page of the fleet any more.
    soon(async {
        while metric(&server.metrics().await, "fleet_health_watch_stalled_total") < 1.0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(
        metric(&server.metrics().await, "fleet_health_watchers"),
        0.0
    );
    // What was queued for it is dropped now, not when its connection takes
    // the status.
    metric_until(&server, "fleet_health_watch_queued", |v| v == 0.0).await;
    // When it reads again, it gets what the transport already held, then
    // why it was ended: not the rest of the snapshot.
    let mut got = 0;
    let status = soon(async {
        loop {
            match stalled.message().await {
                Ok(Some(_)) => got += 1,
                Ok(None) => panic!("the watch ended without a status"),
                Err(status) => return status,
            }
        }
    })
    .await;
    assert!(got < 300, "the whole snapshot went out ({got} messages)");
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert!(
        status.message().contains("watch again"),
        "{}",
        status.message()
    );
    // A watcher that reads is not ended.
    let mut reading = watch_all(&server).await;
    let (agents, _) = snapshot(&mut reading).await;
    assert_eq!(agents.len(), 300);
    server.stop().await;
}

#[tokio::test]
async fn watches_are_capped_in_total() {
    let config = Config {
        watch: WatchLimits {
            max_watchers: 2,
            ..WatchLimits::default()
        },
        ..Config::default()
    };
    let server = TestServer::with_config(config).await;
    let open = || async {
        server
            .fleet()
            .watch_agents(pb::WatchAgentsRequest::default())
            .await
    };
    let a = open().await.expect("first");
    let _b = open().await.expect("second");
    let err = open().await.expect_err("third");
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        err.message().contains("--max-watchers") && err.message().contains('2'),
        "{}",
        err.message()
    );
    let text = server.metrics().await;
    assert_eq!(metric(&text, "fleet_health_watchers_rejected_total"), 1.0);
    assert_eq!(metric(&text, "fleet_health_watchers"), 2.0);
    drop(a);
    soon(async {
        loop {
            if open().await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn a_watcher_that_never_reads_holds_one_queue_not_the_fleet() {
    let server = narrow_server(
        WatchLimits {
            max_watchers: 10,
            stall_timeout: Duration::from_secs(600),
        },
        Limits::default().watch_buffer,
    )
    .await;
    let labels = heavy_labels();
    let labels: Vec<(&str, &str)> = labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut agents = fleet_labelled(&server, 300, &labels).await;
    let stalled = watch_all(&server).await;
    // It reads nothing: its queue fills, and the snapshot's cursor waits
    // there instead of reading the rest of the fleet into memory.
    let queued = metric_until(&server, "fleet_health_watch_queued", |v| {
        v > WATCH_QUEUE as f64
    })
    .await;
    // The queue, and the one message waiting for room in it.
    assert_eq!(queued, (WATCH_QUEUE + 1) as f64);
    // Changes meanwhile wait in the shared change feed, not in its queue.
    for (i, a) in agents.iter_mut().take(20).enumerate() {
        a.stop_cleanly(4).await;
        assert_eq!(
            metric(&server.metrics().await, "fleet_health_watch_queued"),
            (WATCH_QUEUE + 1) as f64,
            "after {} changes",
            i + 1
        );
    }
    let text = server.metrics().await;
    assert_eq!(metric(&text, "fleet_health_watchers"), 1.0);
    assert_eq!(metric(&text, "fleet_health_watch_stalled_total"), 0.0);
    // Gone, it leaves nothing queued.
    drop(stalled);
    metric_until(&server, "fleet_health_watch_queued", |v| v == 0.0).await;
    metric_until(&server, "fleet_health_watchers", |v| v == 0.0).await;
    server.stop().await;
}

#[tokio::test]
async fn a_watcher_that_reads_but_stays_behind_the_changes_is_ended() {
    // Reading one message every few milliseconds never stalls for the
    // timeout, but the fleet changes faster than that, so the watcher keeps
    // falling out of the (small) change feed; once it has been falling out
    // of it for the timeout it is ended rather than sent snapshot after
    // snapshot.
    let stall = Duration::from_secs(1);
    let server = narrow_server(
        WatchLimits {
            max_watchers: 10,
            stall_timeout: stall,
        },
        16,
    )
    .await;
    let mut agents = fleet_labelled(&server, 20, &[]).await;
    let mut watch = watch_all(&server).await;
    let (snap, _) = snapshot(&mut watch).await;
    assert_eq!(snap.len(), 20);
    let churning = Arc::new(AtomicBool::new(true));
    let mut flapper = agents.pop().expect("an agent");
    let churn = tokio::spawn({
        let churning = churning.clone();
        async move {
            let mut seq = 4;
            while churning.load(Ordering::Relaxed) {
                let kind = match seq % 2 {
                    0 => pb::EventKind::Unregistered,
                    _ => pb::EventKind::Registered,
                };
                if flapper.events(vec![event(seq, kind, None)]).await.is_err() {
                    return;
                }
                seq += 1;
            }
        }
    });
    let started = tokio::time::Instant::now();
    let mut got = 0u64;
    let mut resyncs = 0u64;
    let status = soon(async {
        loop {
            match watch.message().await {
                Ok(Some(m)) => {
                    got += 1;
                    if let Some(W::Resync(_)) = m.event {
                        resyncs += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Ok(None) => panic!("the watch ended without a status"),
                Err(status) => return status,
            }
        }
    })
    .await;
    churning.store(false, Ordering::Relaxed);
    churn.await.expect("churn");
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert!(
        status.message().contains("stayed behind") && status.message().contains("watch again"),
        "{}",
        status.message()
    );
    assert!(
        resyncs >= 1,
        "it fell behind and resynced first ({got} messages)"
    );
    assert!(started.elapsed() >= stall, "{:?}", started.elapsed());
    let text = server.metrics().await;
    assert_eq!(metric(&text, "fleet_health_watch_stalled_total"), 1.0);
    assert!(metric(&text, "fleet_health_watch_resyncs_total") >= 1.0);
    server.stop().await;
}
