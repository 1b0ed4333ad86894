//! Lag between a time-driven transition's due time and its appearance in a
//! watch, with a large fleet; and the server's CPU while nothing is due.
//!
//! ```text
//! cargo run --release -p fleet-health-server --example transition_lag -- 1000000 10000
//! ```
//!
//! Builds a server of N agents (arg 1) in this process, on the system clock,
//! of which M (arg 2) will go faulty ("no data sent to server") at due times
//! spread over 30 seconds, starting 25 seconds after the fleet is built. The
//! first 15 of those seconds, when nothing is due, measure the idle CPU. A
//! watch client over gRPC on loopback records, for each change, its receipt
//! time minus its due time (`since`). Prints one JSON line.

#[path = "support/fleet.rs"]
mod fleet;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fleet_health_proto::v1 as pb;
use fleet_health_proto::v1::fleet_service_client::FleetServiceClient;
use fleet_health_sensor::Time;
use fleet_health_server::clock::{Clock, SystemClock};
use fleet_health_server::{Config, Server};

/// User plus system CPU seconds of this process.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<u64> = after
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // Fields 14 and 15 of stat, counted after the command name.
    (f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) as f64 / 100.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(Ok(1_000_000), |a| a.parse())?;
    let m: usize = args.next().map_or(Ok(10_000), |a| a.parse())?;
    let mut config = Config::default();
    config.limits.max_agents = n + 1;
    let clock = Arc::new(SystemClock);
    let server = Server::in_memory(config, clock.clone());
    let reg = server.registry().clone();

    let built = Instant::now();
    let start = clock.now();
    let six_hours = Duration::from_secs(6 * 3600);
    // Due times: 25 s to 55 s from the end of the build (estimated as 1 µs
    // per agent plus margin, then corrected below by reading the clock).
    let lead = Duration::from_secs(25) + Duration::from_micros(8 * n as u64);
    for i in 0..n {
        let sent = if i % (n / m.max(1)).max(1) == 0 && i / (n / m.max(1)).max(1) < m {
            let spread = Duration::from_micros((i as u64 * 30_000_000) / n as u64);
            start
                .saturating_add(lead + spread)
                .saturating_sub(six_hours)
        } else {
            start
        };
        let session = fleet::add_agent(&reg, i, start.saturating_sub(six_hours), sent);
        reg.disconnect(&session);
    }
    let build_s = built.elapsed().as_secs_f64();
    let first_due = start.saturating_add(lead);
    let now = clock.now();
    if first_due <= now.saturating_add(Duration::from_secs(16)) {
        return Err(
            "building the fleet took too long for the idle window; give fewer agents".into(),
        );
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(listener, None, async move {
        let _ = stop_rx.await;
    }));

    let mut client = FleetServiceClient::connect(format!("http://{addr}")).await?;
    let mut watch = client
        .watch_agents(pb::WatchAgentsRequest {
            filter: pb::StateFilter::Faulty as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    // The snapshot: nothing is faulty yet.
    loop {
        let msg = watch.message().await?.ok_or("watch ended")?;
        if let Some(pb::watch_agents_response::Event::Synced(_)) = msg.event {
            break;
        }
    }

    // Idle: 10 s in which nothing is due (the watch is open and idle too).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (c0, t0) = (cpu_seconds(), Instant::now());
    tokio::time::sleep(Duration::from_secs(10)).await;
    let idle_cpu = (cpu_seconds() - c0) / t0.elapsed().as_secs_f64();

    let mut lags = Vec::with_capacity(m);
    let deadline = Instant::now() + Duration::from_secs(90);
    while lags.len() < m && Instant::now() < deadline {
        let Ok(Ok(Some(msg))) =
            tokio::time::timeout(Duration::from_secs(60), watch.message()).await
        else {
            break;
        };
        let received = Time::try_from(SystemTime::now())?;
        if let Some(pb::watch_agents_response::Event::Changed(a)) = msg.event {
            let since = a.since.ok_or("a change without since")?;
            let due = Time::from_unix(since.seconds, since.nanos as u32)?;
            lags.push(received.since(due).as_secs_f64() * 1000.0);
        }
    }
    let _ = stop_tx.send(());
    let _ = task.await;
    lags.sort_by(f64::total_cmp);
    println!(
        "{{\"agents\": {n}, \"due_transitions\": {m}, \"seen\": {}, \"build_s\": {build_s:.1}, \"idle_cpu_percent\": {:.2}, \"lag_ms_p50\": {:.2}, \"lag_ms_p99\": {:.2}, \"lag_ms_max\": {:.2}}}",
        lags.len(),
        idle_cpu * 100.0,
        percentile(&lags, 0.5),
        percentile(&lags, 0.99),
        lags.last().copied().unwrap_or(f64::NAN)
    );
    Ok(())
}
