//! The ledger of acknowledged events: a test "agent" (the client crate's
//! `Reporter`) reports `starting`, then `server_data_sent` events whose
//! times encode their sequence numbers (event `seq` happens `seq` seconds
//! after a base time), so the sensor's `last_sent` tells which event was
//! applied last. Asked afterwards, the server must have applied events 1 to
//! N each once and in order: a lost event, or a re-send applied twice,
//! would show.

use std::time::Duration;

use fleet_health_client::{BackoffConfig, EventKind, Reporter, ReporterConfig, Time};
use serde_json::{Value, json};

use crate::time_field;

/// One second, in microseconds.
pub const SECOND: i64 = 1_000_000;

/// The time that event `seq` carries: `base` plus `seq` seconds.
pub fn event_time(base: i64, seq: u64) -> Time {
    Time::from_micros(base + i64::try_from(seq).expect("in range") * SECOND).expect("in range")
}

/// A reporter for `agent` through `url`, quick to reconnect (a test's
/// servers come and go).
pub fn reporter(url: &str, agent: &str) -> Reporter {
    let mut config = ReporterConfig::new(agent);
    config.connect_timeout = Duration::from_secs(5);
    config.backoff = BackoffConfig {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(500),
    };
    Reporter::connect(url, config).expect("a reporter")
}

/// Queues event `seq`: `starting` for 1, `server_data_sent` after.
pub fn queue(reporter: &Reporter, base: i64, seq: u64) {
    let kind = if seq == 1 {
        EventKind::Starting
    } else {
        EventKind::ServerDataSent
    };
    let assigned = reporter
        .report(kind, Some(event_time(base, seq)))
        .expect("queued");
    assert_eq!(assigned, seq, "sequence numbers count from 1");
}

/// Queues events `from..=to` on every reporter, and waits until each is
/// acknowledged (at most `limit`); returns how long that took.
pub async fn report_and_wait(
    reporters: &[Reporter],
    base: i64,
    from: u64,
    to: u64,
    limit: Duration,
) -> Duration {
    let started = std::time::Instant::now();
    for r in reporters {
        for seq in from..=to {
            queue(r, base, seq);
        }
    }
    wait_acked(reporters, to, limit).await;
    started.elapsed()
}

/// Waits until every reporter's events through `seq` are acknowledged (at
/// most `limit` in all).
pub async fn wait_acked(reporters: &[Reporter], seq: u64, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    for r in reporters {
        tokio::time::timeout_at(deadline, r.wait_acked(seq))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{}: events through {seq} not acknowledged within {limit:?}: {:?}",
                    r.agent_id(),
                    r.stats()
                )
            })
            .expect("acknowledged");
    }
}

/// The server applied events 1 to `seq` of this reporter and nothing after
/// (`agent` is `fleet-health status -o json`'s answer).
#[track_caller]
pub fn assert_applied_through(agent: &Value, reporter: &Reporter, base: i64, seq: u64) {
    assert_eq!(
        agent["incarnation"],
        json!(reporter.incarnation().to_string()),
        "{agent}"
    );
    assert_eq!(agent["last_seq"], json!(seq), "{agent}");
    assert_eq!(
        time_field(&agent["sensor"], "last_sent"),
        event_time(base, seq).as_micros(),
        "last_sent is not event {seq}'s time: {agent}"
    );
    assert_eq!(
        time_field(&agent["sensor"], "started_at"),
        event_time(base, 1).as_micros(),
        "{agent}"
    );
}
