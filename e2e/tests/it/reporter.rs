//! The client crate's `Reporter`, embedded in a test "agent", against the
//! real server binary with its durable store: across a dropped connection
//! (whose acknowledgements were lost) and across a `kill -9` and restart of
//! the server, every event is applied exactly once and in order.
//!
//! The agent reports `server_data_sent` events whose times encode their
//! sequence numbers, so the sensor's `last_sent` tells which event was
//! applied last: a re-send applied twice, or an event lost, would show.
//! The agent talks to the server through a [`Proxy`], which cuts
//! connections, holds back acknowledgements and follows the server to its
//! new port after a restart.

use std::time::Duration;

use fleet_health_client::{Reporter, now};
use fleet_health_e2e::ledger::{SECOND, assert_applied_through, event_time, queue, reporter};
use fleet_health_e2e::{Proxy, Server, eventually, time_field};
use serde_json::{Value, json};

async fn status(server: &Server, agent: &str) -> Value {
    let run = server.cli(&["status", agent, "-o", "json"]).await;
    run.expect_code(0);
    run.json()
}

async fn shutdown_and_check_stopped(server: &Server, reporter: &Reporter, agent: &str, n: u64) {
    tokio::time::timeout(
        Duration::from_secs(20),
        reporter.shutdown(Duration::from_secs(10)),
    )
    .await
    .expect("shutdown in time")
    .expect("a clean shutdown");
    let stopped = eventually(
        "the agent to be stopped",
        Duration::from_secs(10),
        || async {
            let a = status(server, agent).await;
            (a["connected"] == json!(false)).then_some(a)
        },
    )
    .await;
    assert_eq!(stopped["why"], json!("stopped"), "{stopped}");
    assert_eq!(stopped["healthy"], json!(true));
    // `stopped` is the one event after the N.
    assert_eq!(stopped["last_seq"], json!(n + 1), "{stopped}");
    assert!(!stopped["stopped_at"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_acknowledgements_and_a_dropped_connection_lose_and_repeat_nothing() {
    const N: u64 = 1000;
    const BEFORE: u64 = 400;
    let server = Server::start(&[]).await;
    let proxy = Proxy::start(server.addr()).await;
    let base = now().as_micros() - 3600 * SECOND;
    let reporter = reporter(&proxy.url(), "agent-drop");

    for seq in 1..=BEFORE {
        queue(&reporter, base, seq);
    }
    tokio::time::timeout(Duration::from_secs(20), reporter.flush())
        .await
        .expect("acknowledged in time")
        .expect("acknowledged");

    // The server applies the rest, but its acknowledgements never arrive.
    proxy.hold_replies(true);
    for seq in BEFORE + 1..=N {
        queue(&reporter, base, seq);
    }
    let applied = eventually(
        "the server to apply every event",
        Duration::from_secs(20),
        || async {
            let a = status(&server, "agent-drop").await;
            (a["last_seq"] == json!(N)).then_some(a)
        },
    )
    .await;
    assert_applied_through(&applied, &reporter, base, N);
    let stats = reporter.stats();
    assert_eq!(stats.acked_through, BEFORE, "{stats:?}");
    assert_eq!(stats.pending, usize::try_from(N - BEFORE).unwrap());

    // The connection breaks; the reporter reconnects and learns what was
    // applied.
    proxy.cut();
    proxy.hold_replies(false);
    tokio::time::timeout(Duration::from_secs(20), reporter.flush())
        .await
        .expect("acknowledged after the reconnect in time")
        .expect("acknowledged");
    let stats = reporter.stats();
    assert_eq!(
        (
            stats.last_seq,
            stats.acked_through,
            stats.pending,
            stats.dropped
        ),
        (N, N, 0, 0),
        "{stats:?}"
    );
    assert!(stats.connects >= 2, "{stats:?}");
    let agent = status(&server, "agent-drop").await;
    assert_applied_through(&agent, &reporter, base, N);
    assert_eq!(agent["why"], json!("all is ok"), "{agent}");
    assert_eq!(agent["connected"], json!(true), "{agent}");

    shutdown_and_check_stopped(&server, &reporter, "agent-drop", N).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_of_the_server_lose_and_repeat_nothing() {
    const N: u64 = 3000;
    let mut server = Server::start(&[]).await;
    let proxy = Proxy::start(server.addr()).await;
    let base = now().as_micros() - 3600 * SECOND;
    let reporter = std::sync::Arc::new(reporter(&proxy.url(), "agent-crash"));

    // The agent keeps reporting, 10 events every 5 ms, whatever happens to
    // the server.
    let producer = {
        let reporter = std::sync::Arc::clone(&reporter);
        tokio::spawn(async move {
            for seq in 1..=N {
                queue(&reporter, base, seq);
                if seq % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
    };

    // Mid-stream: some events acknowledged, more queued and in flight.
    tokio::time::timeout(Duration::from_secs(20), reporter.wait_acked(N / 5))
        .await
        .expect("acknowledgements in time")
        .expect("acknowledged");
    server.kill9().await;
    let acked_before_kill = reporter.stats().acked_through;
    assert!(
        (N / 5..N).contains(&acked_before_kill),
        "killed mid-stream: {acked_before_kill} of {N} acknowledged"
    );

    // The agent cannot reach any server while we look at the restarted one.
    proxy.set_target(None);
    proxy.cut();
    server.restart().await;
    let restarted = status(&server, "agent-crash").await;
    let kept = restarted["last_seq"].as_u64().expect("last_seq");
    assert!(
        kept >= acked_before_kill,
        "an acknowledged event was lost: {kept} < {acked_before_kill}"
    );
    assert_applied_through(&restarted, &reporter, base, kept);
    assert_eq!(restarted["why"], json!("all is ok"), "{restarted}");
    assert_eq!(restarted["connected"], json!(false), "{restarted}");
    // After a restart, `not reporting` waits one silence window (5 min).
    let run = server.cli(&["summary", "-o", "json"]).await;
    run.expect_code(0);
    let summary = run.json();
    let grace = time_field(&summary, "grace_until");
    let evaluated = time_field(&summary, "evaluated_at");
    assert!(
        (evaluated..=evaluated + 300 * SECOND).contains(&grace),
        "{summary}"
    );

    // The agent finds the server again and sends what was not acknowledged.
    proxy.set_target(Some(server.addr()));
    producer.await.expect("the producer");
    tokio::time::timeout(Duration::from_secs(30), reporter.flush())
        .await
        .expect("acknowledged after the restart in time")
        .expect("acknowledged");
    let stats = reporter.stats();
    assert_eq!(
        (
            stats.last_seq,
            stats.acked_through,
            stats.pending,
            stats.dropped
        ),
        (N, N, 0, 0),
        "{stats:?}"
    );
    assert!(stats.connects >= 2, "{stats:?}");
    let agent = status(&server, "agent-crash").await;
    assert_applied_through(&agent, &reporter, base, N);
    assert_eq!(agent["why"], json!("all is ok"), "{agent}");

    shutdown_and_check_stopped(&server, &reporter, "agent-crash", N).await;
    // Kept across one more crash.
    server.kill9().await;
    server.restart().await;
    let after = status(&server, "agent-crash").await;
    assert_eq!(after["why"], json!("stopped"), "{after}");
    assert_eq!(after["last_seq"], json!(N + 1), "{after}");
    assert_eq!(
        time_field(&after["sensor"], "last_sent"),
        event_time(base, N).as_micros()
    );
}
