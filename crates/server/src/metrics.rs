//! Prometheus metrics, kept and encoded by `prometheus-client`.
//!
//! The hot path touches only atomics: every labelled series is made when
//! [`Metrics`] is, so counting an event is an index and an add, with no lock
//! and no lookup. The fleet's gauges (agents by why, connected agents) are
//! not kept here: the registry knows them, and [`Metrics::render`] takes them
//! for the scrape at hand.
//!
//! The exposition is the Prometheus text format, version 0.0.4
//! ([`CONTENT_TYPE`]); counters carry the `_total` suffix in their `# HELP`
//! and `# TYPE` lines as in their samples.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::model::{ByKind, ByWhy, Why};

/// The `Content-Type` of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds of the acknowledgement latency histogram, in seconds.
const ACK_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// A gauge of whole numbers that are never negative.
type Count = Gauge<u64, AtomicU64>;

/// The server's counters, gauges and histogram, and the registry that
/// encodes them.
#[derive(Debug)]
pub struct Metrics {
    /// The fleet, set from [`FleetGauges`] on each scrape.
    agents: ByWhy<Count>,
    connected: Count,
    streams: Gauge,
    storm: Gauge,
    events: ByKind<Counter>,
    duplicates: Counter,
    clamped: Counter,
    transitions: ByWhy<Counter>,
    watchers: Gauge,
    resyncs: Counter,
    rejected: Counter,
    commits: Counter,
    committed_records: Counter,
    commit_seconds: Counter<f64, AtomicU64>,
    ack_latency: Histogram,
    registry: Registry,
}

/// What a scrape shows of the fleet besides the counters.
#[derive(Debug, Clone, Copy)]
pub struct FleetGauges {
    /// Agents by reason.
    pub by_why: ByWhy<u64>,
    /// Agents with an open stream.
    pub connected: u64,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let agents = ByWhy::<Count>::default();
        let events = ByKind::<Counter>::default();
        let transitions = ByWhy::<Counter>::default();
        let m = Metrics {
            agents,
            connected: Count::default(),
            streams: Gauge::default(),
            storm: Gauge::default(),
            events,
            duplicates: Counter::default(),
            clamped: Counter::default(),
            transitions,
            watchers: Gauge::default(),
            resyncs: Counter::default(),
            rejected: Counter::default(),
            commits: Counter::default(),
            committed_records: Counter::default(),
            commit_seconds: Counter::default(),
            ack_latency: Histogram::new(ACK_BUCKETS),
            registry: Registry::default(),
        };
        m.registered()
    }
}

impl Metrics {
    /// Registers every metric, in the order of the exposition. The library
    /// adds the full stop to each help text, and `_total` to each counter.
    fn registered(mut self) -> Metrics {
        let r = &mut self.registry;
        r.register(
            "fleet_health_agents",
            "Known agents by state and reason",
            Series::new(self.agents.iter().map(|(why, g)| {
                (
                    vec![("state", why.state().as_str()), ("why", why.as_str())],
                    g.clone(),
                )
            })),
        );
        r.register(
            "fleet_health_agents_connected",
            "Agents with an open report stream",
            self.connected.clone(),
        );
        r.register(
            "fleet_health_streams",
            "Open agent report streams, before and after their hello",
            self.streams.clone(),
        );
        r.register(
            "fleet_health_storm",
            "1 while the storm guard is raised: a large share of the fleet is faulty at once",
            self.storm.clone(),
        );
        r.register(
            "fleet_health_events",
            "Events applied, by kind",
            Series::new(
                self.events
                    .iter()
                    .map(|(k, c)| (vec![("kind", k.as_str())], c.clone())),
            ),
        );
        r.register(
            "fleet_health_events_duplicate",
            "Re-sent events acknowledged but not applied again",
            self.duplicates.clone(),
        );
        r.register(
            "fleet_health_event_times_clamped",
            "Event times beyond the skew allowance, clamped to the server's clock",
            self.clamped.clone(),
        );
        r.register(
            "fleet_health_transitions",
            "Changes of agent status, by the reason changed to",
            Series::new(
                self.transitions
                    .iter()
                    .map(|(why, c)| (vec![("to", why.as_str())], c.clone())),
            ),
        );
        r.register(
            "fleet_health_watchers",
            "Open watch streams",
            self.watchers.clone(),
        );
        r.register(
            "fleet_health_watch_resyncs",
            "Watchers that fell behind and were sent a fresh snapshot",
            self.resyncs.clone(),
        );
        r.register(
            "fleet_health_rejected",
            "Requests and streams refused for bad input or a limit",
            self.rejected.clone(),
        );
        r.register(
            "fleet_health_store_commits",
            "Group commits to the durable store",
            self.commits.clone(),
        );
        r.register(
            "fleet_health_store_records",
            "Agent records written or removed by group commits",
            self.committed_records.clone(),
        );
        r.register(
            "fleet_health_store_commit_seconds",
            "Time spent in group commits",
            self.commit_seconds.clone(),
        );
        r.register(
            "fleet_health_ack_latency_seconds",
            "Time from receiving an event message to acknowledging it",
            self.ack_latency.clone(),
        );
        self
    }

    /// Counts applied events, by kind.
    pub fn count_events(&self, by_kind: &ByKind<u32>) {
        for (kind, counter) in self.events.iter() {
            let n = &by_kind[kind];
            if *n > 0 {
                counter.inc_by(u64::from(*n));
            }
        }
    }

    /// Counts re-sent and clamped events of a batch.
    pub fn count_batch(&self, duplicates: u32, clamped: u32) {
        if duplicates > 0 {
            self.duplicates.inc_by(u64::from(duplicates));
        }
        if clamped > 0 {
            self.clamped.inc_by(u64::from(clamped));
        }
    }

    /// Counts a transition into `to`.
    pub fn count_transition(&self, to: Why) {
        self.transitions[to].inc();
    }

    /// Sets the storm flag.
    pub fn set_storm(&self, on: bool) {
        self.storm.set(i64::from(on));
    }

    /// A stream opened (`1`) or closed (`-1`).
    pub fn streams(&self, delta: i64) {
        self.streams.inc_by(delta);
    }

    /// A watcher came (`1`) or went (`-1`).
    pub fn watchers(&self, delta: i64) {
        self.watchers.inc_by(delta);
    }

    /// A watcher fell behind and resynced.
    pub fn count_resync(&self) {
        self.resyncs.inc();
    }

    /// A request or stream was refused for bad input or a limit.
    pub fn count_rejected(&self) {
        self.rejected.inc();
    }

    /// Records the time from receiving a batch to acknowledging it.
    pub fn observe_ack(&self, d: Duration) {
        self.ack_latency.observe(d.as_secs_f64());
    }

    /// Records one group commit of `records` records.
    pub fn observe_commit(&self, records: usize, d: Duration) {
        self.commits.inc();
        self.committed_records
            .inc_by(u64::try_from(records).unwrap_or(u64::MAX));
        self.commit_seconds.inc_by(d.as_secs_f64());
    }

    /// Renders everything in the Prometheus text format (version 0.0.4),
    /// with the fleet as `fleet` says it is now.
    pub fn render(&self, fleet: &FleetGauges) -> String {
        for (why, gauge) in self.agents.iter() {
            gauge.set(fleet.by_why[why]);
        }
        self.connected.set(fleet.connected);
        let mut out = String::with_capacity(4096);
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// A family of series whose label sets are fixed when it is made: encoded in
/// the order given, reached by index rather than by a locked map lookup
/// (the library's `Family` is for label sets only known at run time).
#[derive(Debug)]
struct Series<M> {
    series: Vec<(Vec<(&'static str, &'static str)>, M)>,
}

impl<M> Series<M> {
    fn new(series: impl IntoIterator<Item = (Vec<(&'static str, &'static str)>, M)>) -> Self {
        Series {
            series: series.into_iter().collect(),
        }
    }
}

impl<M: EncodeMetric + TypedMetric> EncodeMetric for Series<M> {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        for (labels, metric) in &self.series {
            metric.encode(encoder.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        M::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EventKind;

    fn fleet() -> FleetGauges {
        let mut by_why = ByWhy::default();
        by_why[Why::AllIsOk] = 1;
        by_why[Why::NoDataReceived] = 2;
        FleetGauges {
            by_why,
            connected: 3,
        }
    }

    #[test]
    fn renders_every_family_with_help_and_type() {
        let m = Metrics::default();
        let mut kinds = ByKind::default();
        kinds[EventKind::Heartbeat] = 1;
        m.count_events(&kinds);
        m.observe_ack(Duration::from_micros(300));
        m.observe_ack(Duration::from_secs(2));
        let text = m.render(&fleet());
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

    /// The names, types, label sets, help texts and bucket bounds that
    /// dashboards and alerts rely on: the exposition's every line but the
    /// values, in order.
    #[test]
    fn the_exposition_keeps_its_names_labels_and_buckets() {
        let m = Metrics::default();
        m.count_transition(Why::NotReporting);
        m.count_batch(2, 1);
        m.observe_commit(3, Duration::from_millis(5));
        m.set_storm(true);
        m.streams(1);
        m.watchers(1);
        let text = m.render(&fleet());
        let shape: Vec<&str> = text
            .lines()
            .map(|l| match l.starts_with('#') {
                true => l,
                false => l.rsplit_once(' ').expect("name and value").0,
            })
            .collect();
        let mut expected = vec![
            "# HELP fleet_health_agents Known agents by state and reason.",
            "# TYPE fleet_health_agents gauge",
        ];
        let agents: Vec<String> = Why::ALL
            .iter()
            .map(|r| {
                format!(
                    "fleet_health_agents{{state=\"{}\",why=\"{}\"}}",
                    r.state().as_str(),
                    r.as_str()
                )
            })
            .collect();
        expected.extend(agents.iter().map(String::as_str));
        expected.extend([
            "# HELP fleet_health_agents_connected Agents with an open report stream.",
            "# TYPE fleet_health_agents_connected gauge",
            "fleet_health_agents_connected",
            "# HELP fleet_health_streams Open agent report streams, before and after their hello.",
            "# TYPE fleet_health_streams gauge",
            "fleet_health_streams",
            "# HELP fleet_health_storm 1 while the storm guard is raised: a large share of the fleet is faulty at once.",
            "# TYPE fleet_health_storm gauge",
            "fleet_health_storm",
            "# HELP fleet_health_events_total Events applied, by kind.",
            "# TYPE fleet_health_events_total counter",
        ]);
        let events: Vec<String> = EventKind::ALL
            .iter()
            .map(|k| format!("fleet_health_events_total{{kind=\"{}\"}}", k.as_str()))
            .collect();
        expected.extend(events.iter().map(String::as_str));
        expected.extend([
            "# HELP fleet_health_events_duplicate_total Re-sent events acknowledged but not applied again.",
            "# TYPE fleet_health_events_duplicate_total counter",
            "fleet_health_events_duplicate_total",
            "# HELP fleet_health_event_times_clamped_total Event times beyond the skew allowance, clamped to the server's clock.",
            "# TYPE fleet_health_event_times_clamped_total counter",
            "fleet_health_event_times_clamped_total",
            "# HELP fleet_health_transitions_total Changes of agent status, by the reason changed to.",
            "# TYPE fleet_health_transitions_total counter",
        ]);
        let transitions: Vec<String> = Why::ALL
            .iter()
            .map(|r| format!("fleet_health_transitions_total{{to=\"{}\"}}", r.as_str()))
            .collect();
        expected.extend(transitions.iter().map(String::as_str));
        expected.extend([
            "# HELP fleet_health_watchers Open watch streams.",
            "# TYPE fleet_health_watchers gauge",
            "fleet_health_watchers",
            "# HELP fleet_health_watch_resyncs_total Watchers that fell behind and were sent a fresh snapshot.",
            "# TYPE fleet_health_watch_resyncs_total counter",
            "fleet_health_watch_resyncs_total",
            "# HELP fleet_health_rejected_total Requests and streams refused for bad input or a limit.",
            "# TYPE fleet_health_rejected_total counter",
            "fleet_health_rejected_total",
            "# HELP fleet_health_store_commits_total Group commits to the durable store.",
            "# TYPE fleet_health_store_commits_total counter",
            "fleet_health_store_commits_total",
            "# HELP fleet_health_store_records_total Agent records written or removed by group commits.",
            "# TYPE fleet_health_store_records_total counter",
            "fleet_health_store_records_total",
            "# HELP fleet_health_store_commit_seconds_total Time spent in group commits.",
            "# TYPE fleet_health_store_commit_seconds_total counter",
            "fleet_health_store_commit_seconds_total",
            "# HELP fleet_health_ack_latency_seconds Time from receiving an event message to acknowledging it.",
            "# TYPE fleet_health_ack_latency_seconds histogram",
        ]);
        let buckets: Vec<String> = [
            "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05",
            "0.1", "0.25", "1", "+Inf",
        ]
        .iter()
        .map(|le| format!("fleet_health_ack_latency_seconds_bucket{{le=\"{le}\"}}"))
        .collect();
        expected.extend(buckets.iter().map(String::as_str));
        expected.extend([
            "fleet_health_ack_latency_seconds_sum",
            "fleet_health_ack_latency_seconds_count",
        ]);
        assert_eq!(shape, expected);
    }

    #[test]
    fn values_are_the_counts() {
        let m = Metrics::default();
        m.count_transition(Why::NotReporting);
        m.count_transition(Why::NotReporting);
        m.count_batch(2, 1);
        m.observe_commit(3, Duration::from_millis(5));
        m.set_storm(true);
        m.streams(1);
        m.streams(1);
        m.streams(-1);
        m.count_rejected();
        let text = m.render(&fleet());
        for line in [
            "fleet_health_transitions_total{to=\"not reporting\"} 2\n",
            "fleet_health_events_duplicate_total 2\n",
            "fleet_health_event_times_clamped_total 1\n",
            "fleet_health_store_commits_total 1\n",
            "fleet_health_store_records_total 3\n",
            "fleet_health_store_commit_seconds_total 0.005\n",
            "fleet_health_storm 1\n",
            "fleet_health_streams 1\n",
            "fleet_health_rejected_total 1\n",
            "fleet_health_agents_connected 3\n",
            "fleet_health_agents{state=\"healthy\",why=\"all is ok\"} 1\n",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        // A scrape shows the fleet as it is at that scrape.
        let text = m.render(&FleetGauges {
            by_why: ByWhy::default(),
            connected: 0,
        });
        assert!(text.contains("fleet_health_agents_connected 0\n"));
        assert!(text.contains("fleet_health_agents{state=\"healthy\",why=\"all is ok\"} 0\n"));
    }
}
