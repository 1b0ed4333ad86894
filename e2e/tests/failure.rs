//! The cluster's failure tier: etcd and three Patroni-managed PostgreSQL
//! servers (synchronous mode: every commit is on a synchronous standby,
//! which is the one Patroni promotes), three fleet-health nodes on the
//! database's multi-host URL (`target_session_attrs=read-write`: a node
//! finds the primary, whichever it is), agents reporting through one address
//! (a proxy, as a load balancer), and a `fleet-health watch` through the same
//! address. Each test breaks something, then checks the ledger of
//! acknowledged events: every agent's events 1 to N applied once, in order,
//! asked of every node (nothing acknowledged lost, nothing applied twice),
//! and the watch, which started again after a `resync` as often as it had
//! to, ends equal to the fleet as listed.
//!
//! The tests need etcd and Patroni (Debian's `etcd-server` and `patroni`):
//! they are ignored by `cargo test --workspace` and run by
//! `bash scripts/failure-tier.sh`, which installs them. Each prints what it
//! measured on one line starting with `measured:`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet_health_client::Reporter;
use fleet_health_e2e::ledger::{SECOND, assert_applied_through, queue, reporter, wait_acked};
use fleet_health_e2e::patroni::Patroni;
use fleet_health_e2e::{Proxy, Server, cli_command, eventually, serving};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The lease a node holds its shards with.
const LEASE: &str = "2s";
/// How many agents report.
const AGENTS: usize = 16;
/// Events each agent reports per round.
const ROUND: u64 = 10;
/// The longest a round may take to be acknowledged, a failover included.
const ACK_LIMIT: Duration = Duration::from_secs(90);
/// The longest the nodes may take to share the shards out again.
const SETTLE: Duration = Duration::from_secs(60);

/// What a `fleet-health watch --all -o ndjson` has shown so far.
#[derive(Debug, Default)]
struct Seen {
    /// Each agent as the watch knows it now.
    agents: BTreeMap<String, Value>,
    /// A snapshot being received (after a `resync`, or the first one).
    pending: Option<BTreeMap<String, Value>>,
    /// How many `resync` messages came.
    resyncs: u64,
    /// How many snapshots completed (`synced`).
    snapshots: u64,
    /// Whether the watch has ended.
    ended: bool,
    /// Every message, with when it came (for failure messages).
    log: Vec<String>,
}

/// A running watch of every agent, read as it goes.
struct Watch {
    seen: Arc<Mutex<Seen>>,
    _child: tokio::process::Child,
}

impl Watch {
    fn start(url: &str) -> Watch {
        let mut child = cli_command(&[
            "--server",
            url,
            "watch",
            "--all",
            "-o",
            "ndjson",
            "--reconnect-for",
            "5m",
        ])
        .spawn()
        .expect("start a watch");
        let mut lines = BufReader::new(child.stdout.take().expect("its stdout")).lines();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let into = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let msg: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("the watch printed no JSON ({e}): {line}"));
                let mut seen = into.lock().unwrap_or_else(|e| e.into_inner());
                let when = humantime::format_rfc3339_millis(std::time::SystemTime::now());
                seen.log.push(format!("{when} {line}"));
                let id = |a: &Value| a["agent_id"].as_str().unwrap_or_default().to_owned();
                match msg["type"].as_str() {
                    Some("snapshot") => {
                        let agent = msg["agent"].clone();
                        seen.pending
                            .get_or_insert_default()
                            .insert(id(&agent), agent);
                    }
                    Some("synced") => {
                        seen.agents = seen.pending.take().unwrap_or_default();
                        seen.snapshots += 1;
                    }
                    Some("changed") => {
                        let agent = msg["agent"].clone();
                        seen.agents.insert(id(&agent), agent);
                    }
                    Some("left") => {
                        let gone = msg["agent_id"].as_str().unwrap_or_default().to_owned();
                        seen.agents.remove(&gone);
                    }
                    Some("resync") => {
                        seen.pending = Some(BTreeMap::new());
                        seen.resyncs += 1;
                    }
                    _ => {}
                }
            }
            into.lock().unwrap_or_else(|e| e.into_inner()).ended = true;
        });
        Watch {
            seen,
            _child: child,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.seen.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// What must agree between a watch and a list: each agent's state, reason
/// and since when.
fn verdicts<'a>(
    agents: impl Iterator<Item = &'a Value>,
) -> BTreeMap<String, (Value, Value, Value)> {
    agents
        .map(|a| {
            (
                a["agent_id"].as_str().unwrap_or_default().to_owned(),
                (a["state"].clone(), a["why"].clone(), a["since"].clone()),
            )
        })
        .collect()
}

/// Waits until `n` live nodes serve every shard, as `node` says; returns how
/// long that took.
async fn until_serving(node: &Server, n: usize) -> Duration {
    let since = Instant::now();
    eventually(
        &format!("{n} nodes serving every shard"),
        SETTLE,
        || async {
            serving(
                &node.cli(&["cluster", "status", "-o", "json"]).await.json(),
                n,
            )
            .then_some(())
        },
    )
    .await;
    since.elapsed()
}

/// The database, the nodes, the agents and the watch of one test.
struct Tier {
    db: Patroni,
    /// Node `b`'s way to the database, when the test cuts it.
    link: Option<DbLink>,
    nodes: Vec<Server>,
    /// Which node the load balancer sends new connections to.
    balanced_to: usize,
    balancer: Proxy,
    reporters: Vec<Reporter>,
    /// Event `seq` happens `seq` seconds after this time.
    base: i64,
    /// The last event every agent reported.
    last: u64,
    watch: Watch,
    started: Instant,
}

impl Tier {
    /// The database, three nodes on it (`a`, `b`, `c`) serving every shard,
    /// the agents' first round acknowledged, and the watch synced.
    async fn start() -> Tier {
        Tier::start_linked(false).await
    }

    /// [`Tier::start`]; with `link_b`, node `b` reaches the database through
    /// a [`DbLink`] the test can cut.
    async fn start_linked(link_b: bool) -> Tier {
        let started = Instant::now();
        let db = Patroni::start().await;
        let url = db.url();
        let link = if link_b {
            Some(DbLink::start(&db.addrs()).await)
        } else {
            None
        };
        let b_url = link.as_ref().map_or_else(|| url.clone(), DbLink::url);
        let nodes = vec![
            Server::start_node(&url, "a", LEASE).await,
            Server::start_node(&b_url, "b", LEASE).await,
            Server::start_node(&url, "c", LEASE).await,
        ];
        until_serving(&nodes[0], 3).await;
        let balancer = Proxy::start(nodes[0].addr()).await;
        let watch = Watch::start(&balancer.url());
        let mut tier = Tier {
            db,
            link,
            nodes,
            balanced_to: 0,
            balancer,
            reporters: Vec::new(),
            base: fleet_health_client::now().as_micros() - 3600 * SECOND,
            last: 0,
            watch,
            started,
        };
        tier.reporters = (0..AGENTS)
            .map(|i| reporter(&tier.balancer.url(), &format!("ledger-{i:02}")))
            .collect();
        tier.round().await;
        eventually("the watch's first snapshot", SETTLE, || async {
            tier.watch.with(|s| (s.snapshots > 0).then_some(()))
        })
        .await;
        tier
    }

    /// Waits until `n` live nodes serve every shard (as the balanced-to node
    /// says); returns how long that took.
    async fn until_serving(&self, n: usize) -> Duration {
        until_serving(&self.nodes[self.balanced_to], n).await
    }

    /// Queues the next round of events on every agent; returns its last
    /// sequence number.
    fn queue_round(&mut self) -> u64 {
        let (from, to) = (self.last + 1, self.last + ROUND);
        for r in &self.reporters {
            for seq in from..=to {
                queue(r, self.base, seq);
            }
        }
        self.last = to;
        to
    }

    /// A round of events, acknowledged; returns how long that took.
    async fn round(&mut self) -> Duration {
        let since = Instant::now();
        let to = self.queue_round();
        wait_acked(&self.reporters, to, ACK_LIMIT).await;
        since.elapsed()
    }

    /// The agents (of ours) whose shards `node` holds, by the database.
    async fn owned_by(&self, node: &str) -> Vec<String> {
        let (client, connection) = tokio_postgres::connect(&self.db.url(), tokio_postgres::NoTls)
            .await
            .expect("connect to the primary");
        let task = tokio::spawn(connection);
        let ids: Vec<String> = self
            .reporters
            .iter()
            .map(|r| r.agent_id().to_owned())
            .collect();
        let rows = client
            .query(
                "SELECT a.agent_id FROM fh_agents AS a JOIN fh_shards AS s ON s.shard = a.shard
                 WHERE s.owner = $1 AND s.lease_until > now() AND a.agent_id = ANY($2)
                 ORDER BY a.agent_id",
                &[&node, &ids],
            )
            .await
            .expect("query the owners");
        task.abort();
        rows.iter().map(|r| r.get(0)).collect()
    }

    /// Sends new connections to node `i` (as a load balancer that took the
    /// others out).
    fn balance_to(&mut self, i: usize) {
        self.balanced_to = i;
        self.balancer.set_target(Some(self.nodes[i].addr()));
    }

    /// How many snapshots the watch has completed.
    fn snapshots(&self) -> u64 {
        self.watch.with(|s| s.snapshots)
    }

    /// Waits until the watch has completed a snapshot after the first
    /// `before`, and shows every agent (the whole fleet, from the nodes
    /// that serve it now).
    async fn until_watch_whole(&self, before: u64) {
        eventually(
            "the watch to show the whole fleet again",
            SETTLE,
            || async {
                self.watch.with(|s| {
                    (s.snapshots > before && s.pending.is_none() && s.agents.len() == AGENTS)
                        .then_some(())
                })
            },
        )
        .await;
    }

    /// How many `resync` messages the watch has had.
    fn resyncs(&self) -> u64 {
        self.watch.with(|s| s.resyncs)
    }

    /// The checks every scenario ends with: one more round; every agent's
    /// events applied once, in order, asked of every node; half the agents
    /// stop (a change the watch must show); the watch equals the list, and
    /// it has had at least one `resync` since `resyncs_before`.
    async fn finish(mut self, scenario: &str, resyncs_before: u64) {
        self.round().await;
        let last = self.last;
        for s in &self.nodes {
            for r in &self.reporters {
                // A shard may still be changing hands: the node says so, and
                // the question is asked again.
                let status = eventually("the agent's status", SETTLE, || async {
                    let run = s.cli(&["status", r.agent_id(), "-o", "json"]).await;
                    (run.code == Some(0)).then(|| run.json())
                })
                .await;
                assert_applied_through(&status, r, self.base, last);
            }
        }
        for r in self.reporters.iter().step_by(2) {
            tokio::time::timeout(ACK_LIMIT, r.shutdown(Duration::from_secs(30)))
                .await
                .expect("a shutdown in time")
                .expect("a clean shutdown");
        }
        let list = eventually("the whole fleet listed", SETTLE, || async {
            let run = self.nodes[self.balanced_to]
                .cli(&["list", "--all", "-o", "json"])
                .await;
            let listed = (run.code == Some(0)).then(|| run.json())?;
            let agents = verdicts(listed.as_array()?.iter());
            let stopped = agents.values().filter(|v| v.1 == "stopped").count();
            (agents.len() == AGENTS && stopped == AGENTS / 2).then_some(agents)
        })
        .await;
        let equal = tokio::time::timeout(SETTLE, async {
            loop {
                let watched = self.watch.with(|s| {
                    assert!(!s.ended, "the watch ended");
                    s.pending.is_none().then(|| verdicts(s.agents.values()))
                });
                if let Some(watched) = watched.filter(|w| *w == list) {
                    return watched;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        let watched = equal.unwrap_or_else(|_| {
            self.watch.with(|s| {
                panic!(
                    "{scenario}: the watch does not equal the list after {SETTLE:?}\n\
                     listed: {list:#?}\nwatched: {:#?}\nin a snapshot: {:?}\n\
                     the watch printed:\n{}\nthe node it watches through logged:\n{}",
                    verdicts(s.agents.values()),
                    s.pending.as_ref().map(|p| p.keys().collect::<Vec<_>>()),
                    s.log.join("\n"),
                    self.nodes[self.balanced_to].logs().join("\n")
                )
            })
        });
        assert_eq!(watched.len(), AGENTS);
        let resyncs = self.resyncs() - resyncs_before;
        assert!(
            resyncs > 0,
            "{scenario}: shards changed hands, yet the watch never started again"
        );
        eprintln!(
            "measured: {scenario}: ledger of {AGENTS} agents x {last} events applied once each; \
             the watch resynced {resyncs} time(s) and equals the list; the test took {:.1?}",
            self.started.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "failure tier (etcd, Patroni): run bash scripts/failure-tier.sh"]
async fn kill_9_of_a_shard_owner() {
    let mut tier = Tier::start().await;
    let resyncs = tier.resyncs();
    let theirs = tier.owned_by("b").await;
    assert!(!theirs.is_empty(), "b owns none of the agents");

    // b dies; its agents' streams (passed on by a) break, and they come back
    // once a and c take b's shards, when their leases end.
    let snapshots = tier.snapshots();
    tier.nodes[1].kill9().await;
    let again = tier.round().await;
    tier.until_serving(2).await;
    tier.until_watch_whole(snapshots).await;
    eprintln!(
        "measured: owner failover (kill -9 of b, owner of {} agents): every agent acknowledged \
         again after {again:.1?}",
        theirs.len()
    );

    // b comes back and takes its share again.
    tier.nodes[1].restart().await;
    tier.until_serving(3).await;
    tier.round().await;
    tier.finish("kill -9 of a shard owner", resyncs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "failure tier (etcd, Patroni): run bash scripts/failure-tier.sh"]
async fn kill_9_of_the_database_leader() {
    let mut tier = Tier::start().await;
    let resyncs = tier.resyncs();

    // The primary's Patroni and PostgreSQL die at once. The synchronous
    // standby had every commit (so every acknowledged event); Patroni
    // promotes it when the leader key expires, and the nodes find it
    // through their multi-host URL.
    let snapshots = tier.snapshots();
    let (old, killed) = tier.db.kill_leader().await;
    let to = tier.queue_round();
    let promoted = async {
        let leader = tier.db.until_new_leader(old, ACK_LIMIT).await;
        (leader, killed.elapsed())
    };
    let acked = async {
        wait_acked(&tier.reporters, to, ACK_LIMIT).await;
        killed.elapsed()
    };
    let ((leader, promoted), again) = tokio::join!(promoted, acked);
    eprintln!(
        "measured: database failover (kill -9 of the primary pg{old}'s Patroni and PostgreSQL): \
         pg{leader} leads after {promoted:.1?}; every agent acknowledged again after {again:.1?}"
    );

    // The remaining standby becomes the new primary's synchronous one, and
    // the nodes go on over it.
    tier.db.until_synchronous(ACK_LIMIT).await;
    tier.until_serving(3).await;
    tier.until_watch_whole(snapshots).await;
    tier.round().await;
    tier.finish("kill -9 of the database leader", resyncs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "failure tier (etcd, Patroni): run bash scripts/failure-tier.sh"]
async fn sigstop_of_an_owner_past_its_lease_then_sigcont() {
    let mut tier = Tier::start().await;
    let resyncs = tier.resyncs();
    let theirs = tier.owned_by("b").await;
    assert!(!theirs.is_empty(), "b owns none of the agents");

    // b is paused: its leases end, a and c take its shards, and its agents
    // are acknowledged again by them.
    let snapshots = tier.snapshots();
    tier.nodes[1].signal("STOP").await;
    let paused = Instant::now();
    let again = tier.round().await;
    tier.until_serving(2).await;
    tier.until_watch_whole(snapshots).await;
    eprintln!(
        "measured: owner failover (SIGSTOP of b, owner of {} agents): every agent acknowledged \
         again after {again:.1?}",
        theirs.len()
    );
    // Long past its lease by its own clock too, b goes on: whatever it
    // still holds in memory, the fence refuses its writes, and it takes
    // its share back as a new owner.
    assert!(paused.elapsed() > Duration::from_secs(2));
    tier.nodes[1].signal("CONT").await;
    tier.until_serving(3).await;
    tier.round().await;
    tier.finish("SIGSTOP then SIGCONT of an owner", resyncs)
        .await;
}

/// One relay per database server, in front of a node (its URL names the
/// relays): the test cuts the node off from the database, and connects it
/// again.
struct DbLink {
    relays: Vec<(Proxy, std::net::SocketAddr)>,
}

impl DbLink {
    async fn start(to: &[std::net::SocketAddr]) -> DbLink {
        let mut relays = Vec::new();
        for addr in to {
            relays.push((Proxy::start(*addr).await, *addr));
        }
        DbLink { relays }
    }

    fn url(&self) -> String {
        let addrs: Vec<_> = self.relays.iter().map(|(p, _)| p.addr()).collect();
        Patroni::url_through(&addrs)
    }

    /// Breaks every connection, and refuses new ones.
    fn cut(&self) {
        for (p, _) in &self.relays {
            p.set_target(None);
            p.cut();
        }
    }

    /// Lets connections through again.
    fn join(&self) {
        for (p, to) in &self.relays {
            p.set_target(Some(*to));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "failure tier (etcd, Patroni): run bash scripts/failure-tier.sh"]
async fn an_owner_cut_off_from_the_database() {
    let mut tier = Tier::start_linked(true).await;
    let resyncs = tier.resyncs();
    let theirs = tier.owned_by("b").await;
    assert!(!theirs.is_empty(), "b owns none of the agents");

    // b loses the database: it stops serving before its leases end (by its
    // own clock), a and c take its shards, and its agents are acknowledged
    // again by them.
    let snapshots = tier.snapshots();
    tier.link.as_ref().expect("b's link").cut();
    let again = tier.round().await;
    tier.until_serving(2).await;
    tier.until_watch_whole(snapshots).await;
    eprintln!(
        "measured: owner failover (b, owner of {} agents, cut off from the database): every \
         agent acknowledged again after {again:.1?}",
        theirs.len()
    );
    tier.round().await;

    // The database is reachable again: b takes its share back.
    tier.link.as_ref().expect("b's link").join();
    let back = tier.until_serving(3).await;
    eprintln!("measured: b reconnected to the database serves its share again after {back:.1?}");
    tier.round().await;
    tier.finish("an owner cut off from the database", resyncs)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "failure tier (etcd, Patroni): run bash scripts/failure-tier.sh"]
async fn a_rolling_restart_of_the_three_nodes() {
    let mut tier = Tier::start().await;
    let resyncs = tier.resyncs();
    for i in 0..3 {
        // The load balancer takes the node out before it stops.
        if tier.balanced_to == i {
            tier.balance_to((i + 1) % 3);
        }
        let to = tier.queue_round();
        let since = Instant::now();
        tier.nodes[i].terminate(SETTLE).await;
        let stopped = since.elapsed();
        tier.until_serving(2).await;
        tier.nodes[i].restart().await;
        tier.until_serving(3).await;
        let back = since.elapsed();
        wait_acked(&tier.reporters, to, ACK_LIMIT).await;
        eprintln!(
            "measured: rolling restart: node {} stopped (SIGTERM) after {stopped:.1?}, serving \
             again after {back:.1?}; every agent acknowledged after {:.1?}",
            ["a", "b", "c"][i],
            since.elapsed()
        );
    }
    tier.finish("a rolling restart", resyncs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "failure tier (etcd, Patroni): run bash scripts/failure-tier.sh"]
async fn three_nodes_to_four() {
    let mut tier = Tier::start().await;
    let resyncs = tier.resyncs();
    let to = tier.queue_round();
    let since = Instant::now();
    let d = Server::start_node(&tier.db.url(), "d", LEASE).await;
    tier.nodes.push(d);
    tier.until_serving(4).await;
    let serving = since.elapsed();
    wait_acked(&tier.reporters, to, ACK_LIMIT).await;
    let acked = since.elapsed();
    tier.round().await;
    let theirs = tier.owned_by("d").await;
    assert!(!theirs.is_empty(), "d took none of the agents");
    eprintln!(
        "measured: three nodes to four: d serves its share after {serving:.1?} ({} agents moved \
         to it); every agent acknowledged after {acked:.1?}",
        theirs.len()
    );
    tier.finish("three nodes to four", resyncs).await;
}
