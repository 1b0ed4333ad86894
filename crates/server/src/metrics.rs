//! Prometheus metrics: counters kept in atomics on the hot path, rendered in
//! the text exposition format on each scrape.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use crate::model::{EventKind, Reason};

/// Upper bounds of the acknowledgement latency histogram, in seconds.
const ACK_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// The server's counters and gauges.
#[derive(Debug, Default)]
pub struct Metrics {
    events: [AtomicU64; 8],
    duplicates: AtomicU64,
    clamped: AtomicU64,
    transitions: [AtomicU64; 9],
    storm: AtomicBool,
    streams: AtomicI64,
    watchers: AtomicI64,
    resyncs: AtomicU64,
    rejected: AtomicU64,
    ack_buckets: [AtomicU64; 12],
    ack_count: AtomicU64,
    ack_sum_nanos: AtomicU64,
    commits: AtomicU64,
    committed_records: AtomicU64,
    commit_nanos: AtomicU64,
}

/// What a scrape shows of the fleet besides the counters.
#[derive(Debug, Clone, Copy)]
pub struct FleetGauges {
    /// Agents by reason, in [`Reason::ALL`] order.
    pub by_reason: [u64; 9],
    /// Agents with an open stream.
    pub connected: u64,
}

impl Metrics {
    /// Counts applied events, by [`EventKind::index`].
    pub fn count_events(&self, by_kind: &[u32; 8]) {
        for (counter, n) in self.events.iter().zip(by_kind) {
            if *n > 0 {
                counter.fetch_add(u64::from(*n), Ordering::Relaxed);
            }
        }
    }

    /// Counts re-sent and clamped events of a batch.
    pub fn count_batch(&self, duplicates: u32, clamped: u32) {
        if duplicates > 0 {
            self.duplicates
                .fetch_add(u64::from(duplicates), Ordering::Relaxed);
        }
        if clamped > 0 {
            self.clamped
                .fetch_add(u64::from(clamped), Ordering::Relaxed);
        }
    }

    /// Counts a transition into `to`.
    pub fn count_transition(&self, to: Reason) {
        self.transitions[to.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Sets the storm flag.
    pub fn set_storm(&self, on: bool) {
        self.storm.store(on, Ordering::Relaxed);
    }

    /// A stream opened (`1`) or closed (`-1`).
    pub fn streams(&self, delta: i64) {
        self.streams.fetch_add(delta, Ordering::Relaxed);
    }

    /// A watcher came (`1`) or went (`-1`).
    pub fn watchers(&self, delta: i64) {
        self.watchers.fetch_add(delta, Ordering::Relaxed);
    }

    /// A watcher fell behind and resynced.
    pub fn count_resync(&self) {
        self.resyncs.fetch_add(1, Ordering::Relaxed);
    }

    /// A request or stream was refused for bad input or a limit.
    pub fn count_rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// Records the time from receiving a batch to acknowledging it.
    pub fn observe_ack(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (i, bound) in ACK_BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.ack_buckets[i].fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
        self.ack_count.fetch_add(1, Ordering::Relaxed);
        self.ack_sum_nanos.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Records one group commit of `records` records.
    pub fn observe_commit(&self, records: usize, d: Duration) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.committed_records
            .fetch_add(records as u64, Ordering::Relaxed);
        self.commit_nanos.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Renders everything in the Prometheus text format (version 0.0.4).
    pub fn render(&self, fleet: &FleetGauges) -> String {
        let mut out = String::with_capacity(4096);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);

        header(
            &mut out,
            "fleet_health_agents",
            "gauge",
            "Known agents by state and reason.",
        );
        for r in Reason::ALL {
            let _ = writeln!(
                out,
                "fleet_health_agents{{state=\"{}\",why=\"{}\"}} {}",
                r.state().as_str(),
                r.as_str(),
                fleet.by_reason[r.index()]
            );
        }
        header(
            &mut out,
            "fleet_health_agents_connected",
            "gauge",
            "Agents with an open report stream.",
        );
        let _ = writeln!(out, "fleet_health_agents_connected {}", fleet.connected);
        header(
            &mut out,
            "fleet_health_streams",
            "gauge",
            "Open agent report streams, before and after their hello.",
        );
        let _ = writeln!(
            out,
            "fleet_health_streams {}",
            self.streams.load(Ordering::Relaxed).max(0)
        );
        header(
            &mut out,
            "fleet_health_storm",
            "gauge",
            "1 while the storm guard is raised: a large share of the fleet is faulty at once.",
        );
        let _ = writeln!(
            out,
            "fleet_health_storm {}",
            u8::from(self.storm.load(Ordering::Relaxed))
        );

        header(
            &mut out,
            "fleet_health_events_total",
            "counter",
            "Events applied, by kind.",
        );
        for k in EventKind::ALL {
            let _ = writeln!(
                out,
                "fleet_health_events_total{{kind=\"{}\"}} {}",
                k.as_str(),
                load(&self.events[k.index()])
            );
        }
        header(
            &mut out,
            "fleet_health_events_duplicate_total",
            "counter",
            "Re-sent events acknowledged but not applied again.",
        );
        let _ = writeln!(
            out,
            "fleet_health_events_duplicate_total {}",
            load(&self.duplicates)
        );
        header(
            &mut out,
            "fleet_health_event_times_clamped_total",
            "counter",
            "Event times beyond the skew allowance, clamped to the server's clock.",
        );
        let _ = writeln!(
            out,
            "fleet_health_event_times_clamped_total {}",
            load(&self.clamped)
        );
        header(
            &mut out,
            "fleet_health_transitions_total",
            "counter",
            "Changes of agent status, by the reason changed to.",
        );
        for r in Reason::ALL {
            let _ = writeln!(
                out,
                "fleet_health_transitions_total{{to=\"{}\"}} {}",
                r.as_str(),
                load(&self.transitions[r.index()])
            );
        }
        header(
            &mut out,
            "fleet_health_watchers",
            "gauge",
            "Open watch streams.",
        );
        let _ = writeln!(
            out,
            "fleet_health_watchers {}",
            self.watchers.load(Ordering::Relaxed).max(0)
        );
        header(
            &mut out,
            "fleet_health_watch_resyncs_total",
            "counter",
            "Watchers that fell behind and were sent a fresh snapshot.",
        );
        let _ = writeln!(
            out,
            "fleet_health_watch_resyncs_total {}",
            load(&self.resyncs)
        );
        header(
            &mut out,
            "fleet_health_rejected_total",
            "counter",
            "Requests and streams refused for bad input or a limit.",
        );
        let _ = writeln!(out, "fleet_health_rejected_total {}", load(&self.rejected));

        header(
            &mut out,
            "fleet_health_store_commits_total",
            "counter",
            "Group commits to the durable store.",
        );
        let _ = writeln!(
            out,
            "fleet_health_store_commits_total {}",
            load(&self.commits)
        );
        header(
            &mut out,
            "fleet_health_store_records_total",
            "counter",
            "Agent records written or removed by group commits.",
        );
        let _ = writeln!(
            out,
            "fleet_health_store_records_total {}",
            load(&self.committed_records)
        );
        header(
            &mut out,
            "fleet_health_store_commit_seconds_total",
            "counter",
            "Time spent in group commits.",
        );
        let _ = writeln!(
            out,
            "fleet_health_store_commit_seconds_total {}",
            load(&self.commit_nanos) as f64 / 1e9
        );

        header(
            &mut out,
            "fleet_health_ack_latency_seconds",
            "histogram",
            "Time from receiving an event message to acknowledging it.",
        );
        let mut cumulative = 0;
        for (i, bound) in ACK_BUCKETS.iter().enumerate() {
            cumulative += load(&self.ack_buckets[i]);
            let _ = writeln!(
                out,
                "fleet_health_ack_latency_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = load(&self.ack_count);
        let _ = writeln!(
            out,
            "fleet_health_ack_latency_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "fleet_health_ack_latency_seconds_sum {}",
            load(&self.ack_sum_nanos) as f64 / 1e9
        );
        let _ = writeln!(out, "fleet_health_ack_latency_seconds_count {count}");
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_help_and_type() {
        let m = Metrics::default();
        let mut kinds = [0; 8];
        kinds[EventKind::Heartbeat.index()] = 1;
        m.count_events(&kinds);
        m.observe_ack(Duration::from_micros(300));
        m.observe_ack(Duration::from_secs(2));
        let text = m.render(&FleetGauges {
            by_reason: [1, 0, 0, 0, 2, 0, 0, 0, 0],
            connected: 3,
        });
        assert!(text.contains("fleet_health_events_total{kind=\"heartbeat\"} 1\n"));
        assert!(text.contains(
            "fleet_health_agents{state=\"faulty\",why=\"no data received from server\"} 2\n"
        ));
        assert!(text.contains("fleet_health_ack_latency_seconds_bucket{le=\"0.0005\"} 1\n"));
        assert!(text.contains("fleet_health_ack_latency_seconds_bucket{le=\"+Inf\"} 2\n"));
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let name = line.split(' ').nth(2).expect("a name");
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
        }
    }
}
