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

mod process;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
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
    watch_stalled: Counter,
    watch_queued: Gauge,
    watchers_rejected: Counter,
    rejected: [Counter; Rejected::ALL.len()],
    commits: Counter,
    commit_failures: Counter,
    committed_records: Counter,
    commit_seconds: Counter<f64, AtomicU64>,
    ack_latency: Histogram,
    remediation: Remediation,
    security: Security,
    cluster: ClusterMetrics,
    registry: Registry,
}

/// A cluster node's figures (all zero on a single server).
#[derive(Debug, Default)]
struct ClusterMetrics {
    /// Shards this node serves now.
    shards: Count,
    /// Rounds with the cluster's database: succeeded, failed.
    rounds: [Counter; 2],
    /// Shards lost (taken by another node, or run out on this node's
    /// clock), not handed over.
    lost: Counter,
    /// Agent streams and calls passed on to other nodes.
    passed_on: [Counter; 2],
    /// Answers that missed part of the fleet.
    incomplete: Counter,
}

/// Maintenance and remediation.
#[derive(Debug, Default)]
struct Remediation {
    /// Agents under maintenance, and given up on, set on each scrape.
    maintenance: Count,
    given_up: Count,
    /// Remediations by result (succeeded, failed, timed out, not started).
    results: [Counter; 4],
    gave_up: Counter,
    /// Claims by outcome (granted, then each refusal).
    claims: [Counter; 5],
}

/// The words of remediation results, in `fleethealth.v1.RemediationResult`
/// order from 1.
const RESULTS: [&str; 4] = ["succeeded", "failed", "timed_out", "not_started"];
/// The words of claim outcomes.
const CLAIMS: [&str; 5] = ["granted", "held", "maintenance", "given_up", "not_faulty"];

/// The transport's and the security layer's metrics.
#[derive(Debug, Default)]
struct Security {
    insecure: Gauge,
    connections: Gauge,
    handshakes: Gauge,
    connections_rejected: [Counter; ConnRejected::ALL.len()],
    denials: [Counter; Denial::ALL.len()],
    reloads: [[Counter; 2]; 2],
    revoked: Counter,
    audit_dropped: Counter,
    cert_not_after: Arc<AtomicI64>,
}

/// What a reload was of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reloaded {
    /// The server's certificate and key, the client trust bundle, the CRLs.
    Tls,
    /// The tokens file.
    Tokens,
}

impl Reloaded {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reloaded::Tls => "tls",
            Reloaded::Tokens => "tokens",
        }
    }
}

/// How a reload went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReloadResult {
    /// The new files are in force.
    Ok,
    /// They did not parse; the old ones stay.
    Failed,
}

/// Why a request or stream was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejected {
    /// Bad input (INVALID_ARGUMENT): a malformed message, a bad ID, an
    /// event out of order.
    Invalid,
    /// A stream that sent faster than `--max-stream-events-per-sec`.
    Rate,
    /// No hello, or nothing at all, for the hello or idle timeout.
    Timeout,
    /// `--max-streams` reached.
    MaxStreams,
    /// `--max-watchers` reached.
    MaxWatchers,
    /// Any other refusal.
    Other,
}

impl Rejected {
    const ALL: [Rejected; 6] = [
        Rejected::Invalid,
        Rejected::Rate,
        Rejected::Timeout,
        Rejected::MaxStreams,
        Rejected::MaxWatchers,
        Rejected::Other,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejected::Invalid => "invalid",
            Rejected::Rate => "rate",
            Rejected::Timeout => "timeout",
            Rejected::MaxStreams => "max_streams",
            Rejected::MaxWatchers => "max_watchers",
            Rejected::Other => "other",
        }
    }

    /// The reason an agent stream ending with `code` was refused.
    pub fn of_stream(code: tonic::Code) -> Rejected {
        match code {
            tonic::Code::InvalidArgument => Rejected::Invalid,
            tonic::Code::ResourceExhausted => Rejected::Rate,
            tonic::Code::DeadlineExceeded => Rejected::Timeout,
            _ => Rejected::Other,
        }
    }
}

/// Why a connection was closed before it carried a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnRejected {
    /// It did not send a TLS hello or the HTTP/2 preface in time, or did not
    /// finish the handshake in time.
    Timeout,
    /// The TLS handshake failed (a certificate the trust bundle does not
    /// sign, expired or revoked; no TLS at all), or a plaintext connection
    /// did not open with the HTTP/2 preface.
    HandshakeError,
    /// The server holds as many connections as it may.
    CapTotal,
    /// This peer address holds as many connections as it may.
    CapPeer,
    /// As many handshakes as allowed were in progress.
    HandshakesBusy,
}

impl ConnRejected {
    const ALL: [ConnRejected; 5] = [
        ConnRejected::Timeout,
        ConnRejected::HandshakeError,
        ConnRejected::CapTotal,
        ConnRejected::CapPeer,
        ConnRejected::HandshakesBusy,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnRejected::Timeout => "timeout",
            ConnRejected::HandshakeError => "handshake_error",
            ConnRejected::CapTotal => "cap_total",
            ConnRejected::CapPeer => "cap_peer",
            ConnRejected::HandshakesBusy => "handshakes_busy",
        }
    }
}

/// Why a call was refused by the security layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denial {
    /// No certificate and no token, for an RPC that needs one.
    NoCredentials,
    /// A token the server does not know, or a certificate without a valid identity.
    BadCredentials,
    /// A token past its expiry.
    Expired,
    /// The identity's role does not admit the RPC.
    Role,
    /// An agent or relay reporting for an agent ID it may not speak for.
    WrongAgent,
    /// An RPC missing from the access table.
    UnknownRpc,
    /// A per-identity limit.
    Limit,
}

impl Denial {
    const ALL: [Denial; 7] = [
        Denial::NoCredentials,
        Denial::BadCredentials,
        Denial::Expired,
        Denial::Role,
        Denial::WrongAgent,
        Denial::UnknownRpc,
        Denial::Limit,
    ];

    /// The label value (also the audit log's `reason`).
    pub fn as_str(self) -> &'static str {
        match self {
            Denial::NoCredentials => "no_credentials",
            Denial::BadCredentials => "bad_credentials",
            Denial::Expired => "expired",
            Denial::Role => "role",
            Denial::WrongAgent => "wrong_agent",
            Denial::UnknownRpc => "unknown_rpc",
            Denial::Limit => "limit",
        }
    }
}

/// Seconds until the server certificate expires, computed at each scrape;
/// no sample while TLS is off.
#[derive(Debug)]
struct ExpiresIn(Arc<AtomicI64>);

impl ExpiresIn {
    const NONE: i64 = i64::MIN;
}

impl TypedMetric for ExpiresIn {
    const TYPE: MetricType = MetricType::Gauge;
}

impl EncodeMetric for ExpiresIn {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let not_after = self.0.load(Ordering::Relaxed);
        if not_after == ExpiresIn::NONE {
            return Ok(());
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        encoder.encode_gauge(&(not_after.saturating_sub(now)))
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

/// What a scrape shows of the fleet besides the counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct FleetGauges {
    /// Agents by reason.
    pub by_why: ByWhy<u64>,
    /// Agents with an open stream.
    pub connected: u64,
    /// Agents under maintenance.
    pub maintenance: u64,
    /// Agents a remediator gave up on.
    pub given_up: u64,
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
            watch_stalled: Counter::default(),
            watch_queued: Gauge::default(),
            watchers_rejected: Counter::default(),
            rejected: Default::default(),
            commits: Counter::default(),
            commit_failures: Counter::default(),
            committed_records: Counter::default(),
            commit_seconds: Counter::default(),
            ack_latency: Histogram::new(ACK_BUCKETS),
            remediation: Remediation::default(),
            cluster: ClusterMetrics::default(),
            security: Security {
                cert_not_after: Arc::new(AtomicI64::new(ExpiresIn::NONE)),
                ..Security::default()
            },
            registry: Registry::default(),
        };
        m.registered()
    }
}

/// Events counted where they are applied, then added to the shared
/// counters in one go ([`Metrics::count`]): a stream counts the messages of
/// a burst here, and the shared counters (written by every core, so their
/// cache lines move between cores) are touched once per ack rather than once
/// per message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventCounts {
    /// Applied events, by kind.
    pub applied: ByKind<u64>,
    /// Events sent again (sequence numbers already applied).
    pub duplicates: u64,
    /// Events whose time was clamped.
    pub clamped: u64,
}

impl Metrics {
    /// Registers every metric, in the order of the exposition. The library
    /// adds the full stop to each help text, and `_total` to each counter.
    fn registered(mut self) -> Metrics {
        let r = &mut self.registry;
        r.register(
            "fleet_health_build",
            "The server's version",
            prometheus_client::metrics::info::Info::new(vec![(
                "version",
                env!("CARGO_PKG_VERSION"),
            )]),
        );
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
            "fleet_health_watch_stalled",
            "Watchers that took nothing, or stayed behind, for the stall timeout and were ended (ABORTED: watch again)",
            self.watch_stalled.clone(),
        );
        r.register(
            "fleet_health_watch_queued",
            "Messages queued for watchers and not yet taken by their connections",
            self.watch_queued.clone(),
        );
        r.register(
            "fleet_health_watchers_rejected",
            "Watches refused because the server already held --max-watchers",
            self.watchers_rejected.clone(),
        );
        r.register(
            "fleet_health_rejected",
            "Requests and streams refused for bad input or a limit, by reason",
            Series::new(
                Rejected::ALL
                    .iter()
                    .zip(&self.rejected)
                    .map(|(why, c)| (vec![("reason", why.as_str())], c.clone())),
            ),
        );
        r.register(
            "fleet_health_store_commits",
            "Group commits to the durable store",
            self.commits.clone(),
        );
        r.register(
            "fleet_health_store_commit_failures",
            "Group commits that failed (retried with backoff; acknowledgements wait meanwhile)",
            self.commit_failures.clone(),
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
        let rem = &self.remediation;
        r.register(
            "fleet_health_maintenance_agents",
            "Agents under maintenance (left out of faulty lists and the storm guard)",
            rem.maintenance.clone(),
        );
        r.register(
            "fleet_health_given_up_agents",
            "Agents a remediator gave up on, left alone until an operator clears it",
            rem.given_up.clone(),
        );
        r.register(
            "fleet_health_remediations",
            "Remediations recorded by remediators, by result",
            Series::new(
                RESULTS
                    .iter()
                    .zip(&rem.results)
                    .map(|(r, c)| (vec![("result", *r)], c.clone())),
            ),
        );
        r.register(
            "fleet_health_remediation_gave_up",
            "Times a remediator gave up on an agent (crash-loop limit reached)",
            rem.gave_up.clone(),
        );
        r.register(
            "fleet_health_claims",
            "Remediation claims, by outcome",
            Series::new(
                CLAIMS
                    .iter()
                    .zip(&rem.claims)
                    .map(|(o, c)| (vec![("outcome", *o)], c.clone())),
            ),
        );
        let cl = &self.cluster;
        r.register(
            "fleet_health_cluster_shards",
            "Shards this cluster node serves now (0 on a single server)",
            cl.shards.clone(),
        );
        r.register(
            "fleet_health_cluster_rounds",
            "Rounds with the cluster's database, by result",
            Series::new(
                ["ok", "failed"]
                    .iter()
                    .zip(&cl.rounds)
                    .map(|(o, c)| (vec![("result", *o)], c.clone())),
            ),
        );
        r.register(
            "fleet_health_cluster_shards_lost",
            "Shards this node lost (taken by another node, or its lease ran out on its own clock), not handed over",
            cl.lost.clone(),
        );
        r.register(
            "fleet_health_cluster_passed_on",
            "Agent streams and calls passed on to the node that serves the agent or the shard",
            Series::new(
                ["stream", "call"]
                    .iter()
                    .zip(&cl.passed_on)
                    .map(|(k, c)| (vec![("kind", *k)], c.clone())),
            ),
        );
        r.register(
            "fleet_health_cluster_incomplete_answers",
            "Lists, summaries and watches that missed part of the fleet (shards changing hands, a node that did not answer)",
            cl.incomplete.clone(),
        );
        let sec = &self.security;
        r.register(
            "fleet_health_insecure",
            "1 when gRPC is served in plaintext on a non-loopback address (--insecure)",
            sec.insecure.clone(),
        );
        r.register(
            "fleet_health_connections",
            "Open connections (gRPC and HTTP) that have proved themselves",
            sec.connections.clone(),
        );
        r.register(
            "fleet_health_handshakes",
            "Connections still proving themselves (TLS handshake or HTTP/2 preface)",
            sec.handshakes.clone(),
        );
        r.register(
            "fleet_health_connections_rejected",
            "Connections closed before carrying a request, by reason",
            Series::new(
                ConnRejected::ALL
                    .iter()
                    .zip(&sec.connections_rejected)
                    .map(|(why, c)| (vec![("reason", why.as_str())], c.clone())),
            ),
        );
        r.register(
            "fleet_health_denials",
            "Calls refused by the security layer, by reason",
            Series::new(
                Denial::ALL
                    .iter()
                    .zip(&sec.denials)
                    .map(|(why, c)| (vec![("reason", why.as_str())], c.clone())),
            ),
        );
        r.register(
            "fleet_health_reloads",
            "Reloads of certificates and tokens, by what and result",
            Series::new(
                [Reloaded::Tls, Reloaded::Tokens]
                    .into_iter()
                    .flat_map(|what| {
                        [ReloadResult::Ok, ReloadResult::Failed]
                            .into_iter()
                            .map(move |result| {
                                (
                                    vec![
                                        ("what", what.as_str()),
                                        (
                                            "result",
                                            match result {
                                                ReloadResult::Ok => "ok",
                                                ReloadResult::Failed => "failed",
                                            },
                                        ),
                                    ],
                                    sec.reloads[what as usize][result as usize].clone(),
                                )
                            })
                    }),
            ),
        );
        r.register(
            "fleet_health_streams_revoked",
            "Open streams and watches ended because their credential was revoked, removed or expired",
            sec.revoked.clone(),
        );
        r.register(
            "fleet_health_audit_dropped",
            "Audit lines dropped because the audit writer fell behind",
            sec.audit_dropped.clone(),
        );
        r.register(
            "fleet_health_tls_cert_expiry_seconds",
            "Seconds until the server's TLS certificate expires (no sample without TLS)",
            ExpiresIn(sec.cert_not_after.clone()),
        );
        r.register_collector(Box::new(process::ProcessCollector));
        self
    }

    /// Counts a failed group commit.
    pub fn count_commit_failure(&self) {
        self.commit_failures.inc();
    }

    /// Counts a remediation recorded with this `fleethealth.v1` result number.
    pub fn count_remediation(&self, result: i32) {
        if let Some(c) = usize::try_from(result - 1)
            .ok()
            .and_then(|i| self.remediation.results.get(i))
        {
            c.inc();
        }
    }

    /// Counts a remediator giving up on an agent.
    pub fn count_gave_up(&self) {
        self.remediation.gave_up.inc();
    }

    /// A cluster round with the database succeeded or failed; the node
    /// serves `shards` now.
    pub fn cluster_round(&self, ok: bool, shards: usize) {
        self.cluster.rounds[usize::from(!ok)].inc();
        self.cluster.shards.set(shards as u64);
    }

    /// Counts shards lost (not handed over).
    pub fn cluster_lost(&self, n: usize) {
        self.cluster.lost.inc_by(n as u64);
    }

    /// Counts an agent stream (`stream`) or a call passed on.
    pub fn passed_on(&self, stream: bool) {
        self.cluster.passed_on[usize::from(!stream)].inc();
    }

    /// Counts an answer that missed part of the fleet.
    pub fn incomplete_answer(&self) {
        self.cluster.incomplete.inc();
    }

    /// Counts a claim: `granted` or the refusal's word.
    pub fn count_claim(&self, outcome: &str) {
        if let Some(i) = CLAIMS.iter().position(|o| *o == outcome) {
            self.remediation.claims[i].inc();
        }
    }

    /// Sets whether gRPC is served in plaintext on a non-loopback address.
    pub fn set_insecure(&self, on: bool) {
        self.security.insecure.set(i64::from(on));
    }

    /// A connection proved itself (`1`) or closed (`-1`).
    pub fn connections(&self, delta: i64) {
        self.security.connections.inc_by(delta);
    }

    /// A handshake began (`1`) or ended (`-1`).
    pub fn handshakes(&self, delta: i64) {
        self.security.handshakes.inc_by(delta);
    }

    /// A connection was closed before carrying a request.
    pub fn count_conn_rejected(&self, why: ConnRejected) {
        self.security.connections_rejected[why as usize].inc();
    }

    /// A call was refused.
    pub fn count_denial(&self, why: Denial) {
        self.security.denials[why as usize].inc();
    }

    /// A reload was tried.
    pub fn count_reload(&self, what: Reloaded, result: ReloadResult) {
        self.security.reloads[what as usize][result as usize].inc();
    }

    /// An open stream or watch was ended because its credential no longer holds.
    pub fn count_revoked(&self) {
        self.security.revoked.inc();
    }

    /// An audit line was dropped.
    pub fn count_audit_dropped(&self) {
        self.security.audit_dropped.inc();
    }

    /// Sets when the server certificate expires (seconds since the epoch).
    pub fn set_cert_not_after(&self, unix_secs: i64) {
        self.security
            .cert_not_after
            .store(unix_secs, Ordering::Relaxed);
    }

    /// Adds what `counts` holds (applied events by kind, re-sent and
    /// clamped events) to the shared counters, and empties it.
    pub fn count(&self, counts: &mut EventCounts) {
        let c = std::mem::take(counts);
        for (kind, counter) in self.events.iter() {
            if c.applied[kind] > 0 {
                counter.inc_by(c.applied[kind]);
            }
        }
        if c.duplicates > 0 {
            self.duplicates.inc_by(c.duplicates);
        }
        if c.clamped > 0 {
            self.clamped.inc_by(c.clamped);
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

    /// A watcher took nothing for the stall timeout and was ended.
    pub fn count_watch_stalled(&self) {
        self.watch_stalled.inc();
    }

    /// Messages were queued for a watcher (`n > 0`) or taken from its queue
    /// (`n < 0`).
    pub fn watch_queued(&self, n: i64) {
        self.watch_queued.inc_by(n);
    }

    /// A watch was refused: the server held `--max-watchers` already.
    pub fn count_watcher_rejected(&self) {
        self.watchers_rejected.inc();
    }

    /// A request or stream was refused for bad input or a limit.
    pub fn count_rejected(&self, why: Rejected) {
        self.rejected[why as usize].inc();
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
        self.remediation.maintenance.set(fleet.maintenance);
        self.remediation.given_up.set(fleet.given_up);
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
            maintenance: 0,
            given_up: 0,
            connected: 3,
        }
    }

    #[test]
    fn renders_every_family_with_help_and_type() {
        let m = Metrics::default();
        let mut counts = EventCounts::default();
        counts.applied[EventKind::Heartbeat] = 1;
        m.count(&mut counts);
        assert_eq!(counts, EventCounts::default(), "emptied");
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
        m.count(&mut EventCounts {
            duplicates: 2,
            clamped: 1,
            ..EventCounts::default()
        });
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
            "# HELP fleet_health_build_info The server's version.",
            "# TYPE fleet_health_build_info gauge",
            concat!(
                "fleet_health_build_info{version=\"",
                env!("CARGO_PKG_VERSION"),
                "\"}"
            ),
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
            "# HELP fleet_health_watch_stalled_total Watchers that took nothing, or stayed behind, for the stall timeout and were ended (ABORTED: watch again).",
            "# TYPE fleet_health_watch_stalled_total counter",
            "fleet_health_watch_stalled_total",
            "# HELP fleet_health_watch_queued Messages queued for watchers and not yet taken by their connections.",
            "# TYPE fleet_health_watch_queued gauge",
            "fleet_health_watch_queued",
            "# HELP fleet_health_watchers_rejected_total Watches refused because the server already held --max-watchers.",
            "# TYPE fleet_health_watchers_rejected_total counter",
            "fleet_health_watchers_rejected_total",
            "# HELP fleet_health_rejected_total Requests and streams refused for bad input or a limit, by reason.",
            "# TYPE fleet_health_rejected_total counter",
            "fleet_health_rejected_total{reason=\"invalid\"}",
            "fleet_health_rejected_total{reason=\"rate\"}",
            "fleet_health_rejected_total{reason=\"timeout\"}",
            "fleet_health_rejected_total{reason=\"max_streams\"}",
            "fleet_health_rejected_total{reason=\"max_watchers\"}",
            "fleet_health_rejected_total{reason=\"other\"}",
            "# HELP fleet_health_store_commits_total Group commits to the durable store.",
            "# TYPE fleet_health_store_commits_total counter",
            "fleet_health_store_commits_total",
            "# HELP fleet_health_store_commit_failures_total Group commits that failed (retried with backoff; acknowledgements wait meanwhile).",
            "# TYPE fleet_health_store_commit_failures_total counter",
            "fleet_health_store_commit_failures_total",
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
            "# HELP fleet_health_maintenance_agents Agents under maintenance (left out of faulty lists and the storm guard).",
            "# TYPE fleet_health_maintenance_agents gauge",
            "fleet_health_maintenance_agents",
            "# HELP fleet_health_given_up_agents Agents a remediator gave up on, left alone until an operator clears it.",
            "# TYPE fleet_health_given_up_agents gauge",
            "fleet_health_given_up_agents",
            "# HELP fleet_health_remediations_total Remediations recorded by remediators, by result.",
            "# TYPE fleet_health_remediations_total counter",
            "fleet_health_remediations_total{result=\"succeeded\"}",
            "fleet_health_remediations_total{result=\"failed\"}",
            "fleet_health_remediations_total{result=\"timed_out\"}",
            "fleet_health_remediations_total{result=\"not_started\"}",
            "# HELP fleet_health_remediation_gave_up_total Times a remediator gave up on an agent (crash-loop limit reached).",
            "# TYPE fleet_health_remediation_gave_up_total counter",
            "fleet_health_remediation_gave_up_total",
            "# HELP fleet_health_claims_total Remediation claims, by outcome.",
            "# TYPE fleet_health_claims_total counter",
            "fleet_health_claims_total{outcome=\"granted\"}",
            "fleet_health_claims_total{outcome=\"held\"}",
            "fleet_health_claims_total{outcome=\"maintenance\"}",
            "fleet_health_claims_total{outcome=\"given_up\"}",
            "fleet_health_claims_total{outcome=\"not_faulty\"}",
            "# HELP fleet_health_cluster_shards Shards this cluster node serves now (0 on a single server).",
            "# TYPE fleet_health_cluster_shards gauge",
            "fleet_health_cluster_shards",
            "# HELP fleet_health_cluster_rounds_total Rounds with the cluster's database, by result.",
            "# TYPE fleet_health_cluster_rounds_total counter",
            "fleet_health_cluster_rounds_total{result=\"ok\"}",
            "fleet_health_cluster_rounds_total{result=\"failed\"}",
            "# HELP fleet_health_cluster_shards_lost_total Shards this node lost (taken by another node, or its lease ran out on its own clock), not handed over.",
            "# TYPE fleet_health_cluster_shards_lost_total counter",
            "fleet_health_cluster_shards_lost_total",
            "# HELP fleet_health_cluster_passed_on_total Agent streams and calls passed on to the node that serves the agent or the shard.",
            "# TYPE fleet_health_cluster_passed_on_total counter",
            "fleet_health_cluster_passed_on_total{kind=\"stream\"}",
            "fleet_health_cluster_passed_on_total{kind=\"call\"}",
            "# HELP fleet_health_cluster_incomplete_answers_total Lists, summaries and watches that missed part of the fleet (shards changing hands, a node that did not answer).",
            "# TYPE fleet_health_cluster_incomplete_answers_total counter",
            "fleet_health_cluster_incomplete_answers_total",
            "# HELP fleet_health_insecure 1 when gRPC is served in plaintext on a non-loopback address (--insecure).",
            "# TYPE fleet_health_insecure gauge",
            "fleet_health_insecure",
            "# HELP fleet_health_connections Open connections (gRPC and HTTP) that have proved themselves.",
            "# TYPE fleet_health_connections gauge",
            "fleet_health_connections",
            "# HELP fleet_health_handshakes Connections still proving themselves (TLS handshake or HTTP/2 preface).",
            "# TYPE fleet_health_handshakes gauge",
            "fleet_health_handshakes",
            "# HELP fleet_health_connections_rejected_total Connections closed before carrying a request, by reason.",
            "# TYPE fleet_health_connections_rejected_total counter",
        ]);
        let rejected: Vec<String> = [
            "timeout",
            "handshake_error",
            "cap_total",
            "cap_peer",
            "handshakes_busy",
        ]
        .iter()
        .map(|r| format!("fleet_health_connections_rejected_total{{reason=\"{r}\"}}"))
        .collect();
        expected.extend(rejected.iter().map(String::as_str));
        expected.extend([
            "# HELP fleet_health_denials_total Calls refused by the security layer, by reason.",
            "# TYPE fleet_health_denials_total counter",
        ]);
        let denials: Vec<String> = [
            "no_credentials",
            "bad_credentials",
            "expired",
            "role",
            "wrong_agent",
            "unknown_rpc",
            "limit",
        ]
        .iter()
        .map(|r| format!("fleet_health_denials_total{{reason=\"{r}\"}}"))
        .collect();
        expected.extend(denials.iter().map(String::as_str));
        expected.extend([
            "# HELP fleet_health_reloads_total Reloads of certificates and tokens, by what and result.",
            "# TYPE fleet_health_reloads_total counter",
            "fleet_health_reloads_total{what=\"tls\",result=\"ok\"}",
            "fleet_health_reloads_total{what=\"tls\",result=\"failed\"}",
            "fleet_health_reloads_total{what=\"tokens\",result=\"ok\"}",
            "fleet_health_reloads_total{what=\"tokens\",result=\"failed\"}",
            "# HELP fleet_health_streams_revoked_total Open streams and watches ended because their credential was revoked, removed or expired.",
            "# TYPE fleet_health_streams_revoked_total counter",
            "fleet_health_streams_revoked_total",
            "# HELP fleet_health_audit_dropped_total Audit lines dropped because the audit writer fell behind.",
            "# TYPE fleet_health_audit_dropped_total counter",
            "fleet_health_audit_dropped_total",
            "# HELP fleet_health_tls_cert_expiry_seconds Seconds until the server's TLS certificate expires (no sample without TLS).",
            "# TYPE fleet_health_tls_cert_expiry_seconds gauge",
        ]);
        #[cfg(target_os = "linux")]
        expected.extend([
            "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.",
            "# TYPE process_cpu_seconds_total counter",
            "process_cpu_seconds_total",
            "# HELP process_resident_memory_bytes Resident memory size in bytes.",
            "# TYPE process_resident_memory_bytes gauge",
            "process_resident_memory_bytes",
            "# HELP process_virtual_memory_bytes Virtual memory size in bytes.",
            "# TYPE process_virtual_memory_bytes gauge",
            "process_virtual_memory_bytes",
            "# HELP process_start_time_seconds Start time of the process since the Unix epoch in seconds.",
            "# TYPE process_start_time_seconds gauge",
            "process_start_time_seconds",
            "# HELP process_threads Number of OS threads in the process.",
            "# TYPE process_threads gauge",
            "process_threads",
            "# HELP process_open_fds Number of open file descriptors.",
            "# TYPE process_open_fds gauge",
            "process_open_fds",
            "# HELP process_max_fds Maximum number of open file descriptors.",
            "# TYPE process_max_fds gauge",
            "process_max_fds",
        ]);
        assert_eq!(shape, expected);
        // With TLS, the expiry has its sample.
        m.set_cert_not_after(i64::MAX);
        assert!(
            m.render(&FleetGauges::default())
                .contains("\nfleet_health_tls_cert_expiry_seconds ")
        );
    }

    #[test]
    fn values_are_the_counts() {
        let m = Metrics::default();
        m.count_transition(Why::NotReporting);
        m.count_transition(Why::NotReporting);
        m.count(&mut EventCounts {
            duplicates: 2,
            clamped: 1,
            ..EventCounts::default()
        });
        m.observe_commit(3, Duration::from_millis(5));
        m.set_storm(true);
        m.streams(1);
        m.streams(1);
        m.streams(-1);
        m.count_rejected(Rejected::Rate);
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
            "fleet_health_rejected_total{reason=\"rate\"} 1\n",
            "fleet_health_agents_connected 3\n",
            "fleet_health_agents{state=\"healthy\",why=\"all is ok\"} 1\n",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        // A scrape shows the fleet as it is at that scrape.
        let text = m.render(&FleetGauges {
            by_why: ByWhy::default(),
            connected: 0,
            maintenance: 0,
            given_up: 0,
        });
        assert!(text.contains("fleet_health_agents_connected 0\n"));
        assert!(text.contains("fleet_health_agents{state=\"healthy\",why=\"all is ok\"} 0\n"));
    }
}
