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
//!
//! Then the live updates' lag: while a background task makes 10 000
//! transitions a minute, it holds `/events` open and, 50 times, makes one
//! more agent turn faulty and times until the next "change" event arrives
//! (what an open page waits before it fetches its new counts).

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
            // Room for the live-update run's new agents.
            max_agents: n + 100_000,
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
    let app = fleet_health_server::http::router(
        reg.clone(),
        Arc::new(Readiness::new()),
        fleet_health_server::web::Source::of_registry(reg.clone()),
        fleet_health_server::web::Gate::Open,
        Stop::new(),
    );
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
        "/agents?state=all&sort=longest",
        "/agents?state=faulty&sort=newest",
        "/agents?state=all&q=00100",
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
    live_lag(&reg, addr, n).await?;
    Ok(())
}

/// Times from an agent turning faulty to the next "change" event, under a
/// background of 10 000 transitions a minute.
async fn live_lag(
    reg: &Registry,
    addr: std::net::SocketAddr,
    n: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    use http_body_util::BodyExt;
    // The background: every 12 ms a new agent says hello and starts, long
    // ago, never having sent: 2 transitions (new, then "no data sent to
    // server"), so 10 000 a minute.
    let background = reg.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(12));
        let mut i = 0usize;
        loop {
            tick.tick().await;
            let s = fleet::add_agent(
                &background,
                n + 1000 + i,
                t(T0 - 7 * 3600),
                t(T0 - 7 * 3600),
            );
            background.disconnect(&s);
            i += 1;
        }
    });
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let request = hyper::Request::get("/events")
        .header(hyper::header::HOST, addr.to_string())
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())?;
    let mut body = sender.send_request(request).await?.into_body();
    let mut lags = Vec::with_capacity(50);
    for k in 0..50 {
        // Let a window pass, so that the next event is this change's.
        tokio::time::sleep(Duration::from_millis(700)).await;
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(1), body.frame()).await {
        }
        let started = Instant::now();
        let s = fleet::add_agent(reg, n + 10 + k, t(T0 - 7 * 3600), t(T0 - 7 * 3600));
        reg.disconnect(&s);
        loop {
            let frame = body.frame().await.ok_or("the stream ended")??;
            if frame
                .data_ref()
                .is_some_and(|d| d.windows(12).any(|w| w == b"event: chang"))
            {
                break;
            }
        }
        lags.push(started.elapsed());
    }
    lags.sort_unstable();
    println!(
        "{{\"agents\": {n}, \"live_update_lag_p50_ms\": {:.1}, \"live_update_lag_p99_ms\": {:.1}, \"background_transitions_per_min\": 10000}}",
        percentile(&lags, 0.5),
        percentile(&lags, 0.99),
    );
    Ok(())
}
