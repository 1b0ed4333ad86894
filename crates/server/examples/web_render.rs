//! What the web view costs the server at fleet scale: the time to answer
//! the overview and the first agents pages, and the bytes of a first load.
//!
//! ```text
//! cargo run --release -p fleet-health-server --example web_render -- 1000000
//! ```
//!
//! Builds an in-memory registry of N agents (one in a hundred faulty), serves
//! the HTTP endpoint on a loopback port, and asks each page 100 times (after
//! 5 unmeasured) with the server's own probe client, one request at a time:
//! the time measured is the whole request on loopback, an upper bound of the
//! server's. Prints one JSON line per page: p50 and p99 in milliseconds and
//! the body's bytes, and the bytes of a first load of the overview (the page
//! and its script: the styles are inline, there is nothing else).

#[path = "support/fleet.rs"]
mod fleet;

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_health_sensor::Time;
use fleet_health_server::clock::ManualClock;
use fleet_health_server::metrics::Metrics;
use fleet_health_server::model::FleetRules;
use fleet_health_server::readiness::Readiness;
use fleet_health_server::registry::{Limits, Registry};
use fleet_health_server::shutdown::Stop;

const T0: i64 = 1_700_000_000;

fn t(s: i64) -> Time {
    Time::from_micros(s * 1_000_000).expect("in range")
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args().nth(1).map_or(Ok(100_000), |a| a.parse())?;
    let reg = Registry::new(
        FleetRules::default(),
        Limits {
            max_agents: n + 1,
            ..Limits::default()
        },
        Arc::new(ManualClock::new(t(T0))),
        Arc::new(Metrics::default()),
    );
    for i in 0..n {
        let sent = if i % 100 == 0 { T0 - 7 * 3600 } else { T0 };
        let session = fleet::add_agent(&reg, i, t(T0 - 7 * 3600), t(sent));
        reg.disconnect(&session);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app =
        fleet_health_server::http::router(reg, Arc::new(Readiness::new()), false, Stop::new());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let get = |path: &str| {
        let url = format!("http://{addr}{path}");
        async move {
            fleet_health_server::probe::probe(&url, Duration::from_secs(30))
                .await
                .expect("answers 200")
        }
    };
    let mut first_load = 0;
    for path in [
        "/",
        "/agents?state=faulty",
        "/agents?state=all",
        "/agents/host-0000100.example.com",
    ] {
        for _ in 0..5 {
            get(path).await;
        }
        let mut times = Vec::with_capacity(100);
        let mut bytes = 0;
        for _ in 0..100 {
            let started = Instant::now();
            bytes = get(path).await.len();
            times.push(started.elapsed());
        }
        times.sort_unstable();
        if path == "/" {
            first_load = bytes + get("/static/live.js").await.len();
        }
        println!(
            "{{\"agents\": {n}, \"page\": \"{path}\", \"p50_ms\": {:.2}, \"p99_ms\": {:.2}, \"bytes\": {bytes}}}",
            percentile(&times, 0.5),
            percentile(&times, 0.99),
        );
    }
    println!("{{\"agents\": {n}, \"first_load_bytes\": {first_load}}}");
    Ok(())
}
