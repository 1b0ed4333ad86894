//! Memory per known agent, and start-up time, for a fleet of N agents.
//!
//! ```text
//! cargo run --release -p fleet-health-server --example footprint -- 1000000
//! ```
//!
//! Builds an in-memory registry of N agents (each said hello and started,
//! one in a hundred faulty) and reports the resident memory it added, per
//! agent. Then writes the same fleet to a durable store in a temporary
//! directory and times a start-up: opening the store, reading every record
//! and rebuilding the registry. Prints one JSON line.

#[path = "support/fleet.rs"]
mod fleet;

use std::sync::Arc;
use std::time::Instant;

use fleet_health_sensor::Time;
use fleet_health_server::clock::ManualClock;
use fleet_health_server::metrics::Metrics;
use fleet_health_server::model::FleetRules;
use fleet_health_server::registry::{Limits, Registry};
use fleet_health_server::store::{AgentStore, RedbStore};

const T0: i64 = 1_700_000_000;

fn t(s: i64) -> Time {
    Time::from_micros(s * 1_000_000).expect("in range")
}

/// Resident set size in bytes, from /proc/self/statm.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn registry(durable: bool, n: usize, capacity: usize) -> Registry {
    let limits = Limits {
        max_agents: n + 1,
        ..Limits::default()
    };
    let clock = Arc::new(ManualClock::new(t(T0)));
    let metrics = Arc::new(Metrics::default());
    if durable {
        // Sized as a restart sizes it for what it loads.
        Registry::durable_with_capacity(FleetRules::default(), limits, clock, metrics, capacity)
    } else {
        Registry::new(FleetRules::default(), limits, clock, metrics)
    }
}

fn fill(reg: &Registry, n: usize) {
    for i in 0..n {
        let sent = if i % 100 == 0 { T0 - 7 * 3600 } else { T0 };
        let session = fleet::add_agent(reg, i, t(T0 - 7 * 3600), t(sent));
        reg.disconnect(&session);
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args().nth(1).map_or(Ok(100_000), |a| a.parse())?;

    let before = rss();
    let reg = registry(false, n, 0);
    fill(&reg, n);
    let after = rss();
    let per_agent = (after.saturating_sub(before)) as f64 / n as f64;
    drop(reg);

    let dir = std::env::temp_dir().join(format!("fleet-health-footprint-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let fill_started = Instant::now();
    {
        let store = RedbStore::open(&dir)?;
        let reg = registry(true, n, 0);
        fill(&reg, n);
        let batch = reg.take_dirty();
        store.commit(&batch.upserts, &batch.deletes)?;
    }
    let written = fill_started.elapsed();
    let db_bytes = std::fs::metadata(dir.join(fleet_health_server::store::DB_FILE))?.len();

    let started = Instant::now();
    let store = RedbStore::open(&dir)?;
    let records = store.load()?;
    let loaded = started.elapsed();
    let reg = registry(true, n, records.len());
    reg.restore(records)?;
    let startup = started.elapsed();
    assert_eq!(reg.len(), n);
    std::fs::remove_dir_all(&dir)?;

    println!(
        "{{\"agents\": {n}, \"rss_bytes_per_agent\": {per_agent:.1}, \"store_bytes_per_agent\": {:.1}, \"store_fill_s\": {:.2}, \"startup_load_s\": {:.3}, \"startup_total_s\": {:.3}}}",
        db_bytes as f64 / n as f64,
        written.as_secs_f64(),
        loaded.as_secs_f64(),
        startup.as_secs_f64()
    );
    Ok(())
}
