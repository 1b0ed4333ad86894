//! The cluster's shard ownership against a real PostgreSQL (started by the
//! test in a temporary directory, on a loopback port): fencing, hand-over,
//! takeover after a node's death, and a node cut off from the database
//! stopping before its lease can end.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_health_e2e::postgres::Postgres;
use fleet_health_e2e::{Proxy, eventually};
use fleet_health_server::cluster::db::{CommitError, Db, Held};
use fleet_health_server::cluster::membership::{self, Event, Ownership, Settings};
use tokio::sync::mpsc;

const SHARDS: u32 = 16;

async fn db(pg: &Postgres) -> Db {
    let mut db = Db::connect(&pg.url()).await.expect("connects");
    assert_eq!(db.migrate(SHARDS).await.expect("migrates"), SHARDS);
    db
}

fn shards(held: &[Held]) -> BTreeSet<u32> {
    held.iter().map(|h| h.shard).collect()
}

#[tokio::test]
async fn the_shard_count_is_fixed_at_the_first_migration() {
    let pg = Postgres::start();
    let mut a = db(&pg).await;
    // A node configured otherwise gets the cluster's count.
    let mut b = Db::connect(&pg.url()).await.expect("connects");
    assert_eq!(b.migrate(1024).await.expect("migrates"), SHARDS);
    assert_eq!(a.migrate(SHARDS).await.expect("again"), SHARDS);
    assert_eq!(a.shards().await.expect("rows").len(), SHARDS as usize);
}

#[tokio::test]
async fn a_stale_owners_write_is_refused_and_writes_nothing() {
    let pg = Postgres::start();
    let mut a = db(&pg).await;
    let mut b = db(&pg).await;
    let lease = Duration::from_secs(30);

    let held = a.acquire("a", &[1, 2], lease).await.expect("takes");
    assert_eq!(shards(&held), BTreeSet::from([1, 2]));
    // Held shards cannot be taken by another node while the lease runs.
    assert!(
        b.acquire("b", &[1, 2], lease)
            .await
            .expect("asks")
            .is_empty()
    );
    a.commit(
        "a",
        &held,
        &[(1, "web-1", b"one"), (2, "web-2", b"two")],
        &[],
    )
    .await
    .expect("the owner writes");

    // Shard 1's lease runs out (by the database's clock) and b takes it.
    pg_expire(&pg, 1).await;
    let taken = b.acquire("b", &[1], lease).await.expect("takes");
    assert_eq!(taken.len(), 1);
    assert!(taken[0].epoch > held[0].epoch, "the epoch went up");

    // a's write for shards 1 and 2 is refused whole: nothing of it lands.
    let stale = a
        .commit(
            "a",
            &held,
            &[(1, "web-1", b"stale"), (2, "web-2", b"stale")],
            &[],
        )
        .await;
    assert!(
        matches!(&stale, Err(CommitError::Lost(l)) if l == &[1]),
        "{stale:?}"
    );
    let rows = a.load(&[1, 2]).await.expect("loads");
    assert!(rows.iter().all(|r| r.2 != b"stale"), "{rows:?}");
    // ...and it never writes for shard 1 again, nor renews it.
    assert!(
        a.commit("a", &held, &[(1, "web-1", b"x")], &[])
            .await
            .is_err()
    );
    let renewed = a.renew("a", &held, lease).await.expect("renews");
    assert_eq!(renewed, [2].into_iter().collect());
    // A write for a shard it never held is refused before the database.
    assert!(matches!(
        a.commit("a", &held, &[(3, "web-3", b"x")], &[]).await,
        Err(CommitError::Lost(l)) if l == [3]
    ));
    // The new owner writes and deletes.
    b.commit("b", &taken, &[(1, "web-9", b"nine")], &[(1, "web-1")])
        .await
        .expect("b writes");
    let rows = b.load(&[1]).await.expect("loads");
    assert_eq!(rows, vec![(1, "web-9".to_owned(), b"nine".to_vec())]);
}

/// Ends shard `shard`'s lease now, as time passing would.
async fn pg_expire(pg: &Postgres, shard: i32) {
    let (client, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .expect("connects");
    tokio::spawn(conn);
    client
        .execute(
            "UPDATE fh_shards SET lease_until = now() - interval '1 second' WHERE shard = $1",
            &[&shard],
        )
        .await
        .expect("expires");
}

/// One node's loop, answering its events at once and keeping them.
struct Node {
    ownership: Arc<Ownership>,
    events: Arc<Mutex<Vec<String>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Node {
    async fn start(url: String, name: &str, lease: Duration) -> Node {
        let mut db = Db::connect(&url).await.expect("connects");
        db.migrate(SHARDS).await.expect("migrates");
        let ownership = Arc::new(Ownership::default());
        let (tx, mut rx) = mpsc::channel(16);
        let events = Arc::new(Mutex::new(Vec::new()));
        let kept = events.clone();
        tokio::spawn(async move {
            while let Some(e) = rx.recv().await {
                let line = match e {
                    Event::Taken { shards, done } => {
                        let _ = done.send(());
                        format!("taken {}", shards.len())
                    }
                    Event::HandOver { shards, done } => {
                        let _ = done.send(());
                        format!("handed over {}", shards.len())
                    }
                    Event::Lost { shards } => format!("lost {}", shards.len()),
                };
                kept.lock().expect("lock").push(line);
            }
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let settings = Settings {
            tick: Duration::from_millis(100),
            ..Settings::new(url, name, format!("{name}:50051"), lease)
        };
        let task = tokio::spawn(membership::run(
            db,
            settings,
            SHARDS,
            ownership.clone(),
            tx,
            async move {
                let _ = stopped.await;
            },
            |_| {},
        ));
        Node {
            ownership,
            events,
            stop: Some(stop),
            task,
        }
    }

    fn held(&self) -> BTreeSet<u32> {
        shards(&self.ownership.held())
    }

    fn said(&self, what: &str) -> bool {
        self.events
            .lock()
            .expect("lock")
            .iter()
            .any(|e| e.starts_with(what))
    }

    /// Stops gracefully: hands everything over and leaves.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.expect("ends");
    }
}

/// Waits until `a` and `b` hold every shard between them, each some.
async fn shared(a: &Node, b: &Node) {
    eventually(
        "a and b share the shards",
        Duration::from_secs(10),
        || async {
            let (ha, hb) = (a.held(), b.held());
            (ha.len() + hb.len() == SHARDS as usize && !ha.is_empty() && !hb.is_empty())
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn nodes_share_the_shards_and_hand_them_over_when_one_stops() {
    let pg = Postgres::start();
    let lease = Duration::from_secs(3);
    let a = Node::start(pg.url(), "a", lease).await;
    eventually("a holds every shard", Duration::from_secs(10), || async {
        (a.held().len() == SHARDS as usize).then_some(())
    })
    .await;

    // b joins: a hands b its share, and the two never overlap.
    let b = Node::start(pg.url(), "b", lease).await;
    shared(&a, &b).await;
    assert!(a.held().is_disjoint(&b.held()));
    assert!(a.said("handed over"));

    // b stops: its shards come back to a at once, not after a lease.
    let started = std::time::Instant::now();
    b.stop().await;
    eventually(
        "a holds every shard again",
        Duration::from_secs(10),
        || async { (a.held().len() == SHARDS as usize).then_some(()) },
    )
    .await;
    assert!(started.elapsed() < lease, "{:?}", started.elapsed());
    let db = db(&pg).await;
    let nodes = db.nodes().await.expect("nodes");
    assert_eq!(nodes.len(), 1, "b left: {nodes:?}");
    a.stop().await;
    assert!(
        db.shards()
            .await
            .expect("rows")
            .iter()
            .all(|s| s.owner.is_none()),
        "everything released"
    );
}

#[tokio::test]
async fn a_dead_nodes_shards_are_taken_when_its_lease_ends() {
    let pg = Postgres::start();
    let lease = Duration::from_secs(2);
    let a = Node::start(pg.url(), "a", lease).await;
    let b = Node::start(pg.url(), "b", lease).await;
    shared(&a, &b).await;
    // a dies without a word.
    a.task.abort();
    let died = std::time::Instant::now();
    eventually("b holds every shard", Duration::from_secs(15), || async {
        (b.held().len() == SHARDS as usize).then_some(())
    })
    .await;
    // Not before the lease could end, and not long after: a is judged
    // dead after one lease without a heartbeat, its leases end within one
    // more.
    let took = died.elapsed();
    assert!(took < lease * 3, "{took:?}");
    b.stop().await;
}

#[tokio::test]
async fn a_node_cut_off_from_the_database_stops_serving_before_its_lease_ends() {
    let pg = Postgres::start();
    let proxy = Proxy::start(format!("127.0.0.1:{}", pg.port()).parse().expect("addr")).await;
    let through = format!(
        "postgres://fleet@{}/postgres",
        proxy.url().trim_start_matches("http://")
    );
    let lease = Duration::from_secs(3);
    let a = Node::start(through, "a", lease).await;
    eventually("a holds every shard", Duration::from_secs(10), || async {
        (a.held().len() == SHARDS as usize).then_some(())
    })
    .await;

    proxy.set_target(None);
    proxy.cut();
    eventually("a stops serving", Duration::from_secs(10), || async {
        a.held().is_empty().then_some(())
    })
    .await;
    // The database still has a's leases running: a stopped first.
    let db = db(&pg).await;
    let rows = db.shards().await.expect("rows");
    assert!(
        rows.iter()
            .all(|s| s.owner.as_deref() == Some("a") && !s.expired),
        "{rows:?}"
    );
    eventually("a says so", Duration::from_secs(5), || async {
        a.said("lost").then_some(())
    })
    .await;
}

mod nodes {
    //! Server nodes over the same database: acknowledgements after
    //! PostgreSQL's commit, a restart that resumes, shards handed over with
    //! their agents.

    use std::sync::Arc;
    use std::time::Duration;

    use fleet_health_e2e::eventually;
    use fleet_health_e2e::postgres::Postgres;
    use fleet_health_proto::v1 as pb;
    use fleet_health_server::clock::ManualClock;
    use fleet_health_server::cluster::db::Db;
    use fleet_health_server::cluster::shard::shard_of;
    use fleet_health_server::config::{ClusterConfig, Storage};
    use fleet_health_server::{Config, Server};
    use tonic::Code;
    use tonic::transport::Channel;

    use super::SHARDS;
    use crate::common::{Agent, T0, TestServer, t};

    async fn node(pg: &Postgres, name: &str, clock: &ManualClock) -> TestServer {
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let config = Config {
            storage: Storage::Cluster(ClusterConfig {
                url: pg.url(),
                node: name.into(),
                address: grpc.local_addr().expect("addr").to_string(),
                lease: Duration::from_secs(2),
                shards: SHARDS,
                peers: None,
            }),
            ..Config::default()
        };
        let server = Server::cluster(config, Arc::new(clock.clone()))
            .await
            .expect("joins");
        TestServer::serve_on(server, clock.clone(), grpc, |addr| {
            Channel::from_shared(format!("http://{addr}")).expect("uri")
        })
        .await
    }

    /// The shards `name` holds, as the database says.
    async fn held(pg: &Postgres, name: &str) -> usize {
        let db = Db::connect(&pg.url()).await.expect("connects");
        db.shards()
            .await
            .expect("rows")
            .iter()
            .filter(|s| s.owner.as_deref() == Some(name))
            .count()
    }

    /// An agent stream on `s` for `id`, once `s` serves the agent's shard.
    async fn agent(s: &TestServer, id: &str, incarnation: u64) -> Agent {
        eventually(
            "the node serves the agent",
            Duration::from_secs(15),
            || async {
                let mut a = Agent::open(&s.channel).await.ok()?;
                let welcome = a.hello_with(id, incarnation, &[]).await.ok()?;
                a.welcome = welcome;
                Some(a)
            },
        )
        .await
    }

    #[tokio::test]
    async fn a_node_acknowledges_after_postgres_commits_and_a_restart_resumes() {
        let pg = Postgres::start();
        let clock = ManualClock::new(t(T0));
        let a = node(&pg, "a", &clock).await;
        let mut web = agent(&a, "web-1", 7).await;
        assert_eq!(web.welcome.last_applied_seq, 0);
        let ack = web.start_healthy(1).await;
        assert_eq!(ack.applied_through, 3);
        // Acknowledged: in PostgreSQL.
        let db = Db::connect(&pg.url()).await.expect("connects");
        let rows = db.load(&[shard_of("web-1", SHARDS)]).await.expect("loads");
        assert!(rows.iter().any(|r| r.1 == "web-1"), "{rows:?}");
        drop(web);
        a.stop().await;
        assert_eq!(
            held(&pg, "a").await,
            0,
            "a released its shards as it stopped"
        );

        // A new node on the same database resumes: the agent's status, and
        // its sequence numbers (nothing applied twice).
        let b = node(&pg, "b", &clock).await;
        let mut web = agent(&b, "web-1", 7).await;
        assert_eq!(web.welcome.last_applied_seq, 3);
        assert_eq!(b.get("web-1").await.why, pb::Why::AllIsOk as i32);
        let ack = web
            .events(vec![crate::common::event(
                4,
                pb::EventKind::ServerDataSent,
                None,
            )])
            .await
            .expect("applied");
        assert_eq!(ack.applied_through, 4);
        b.stop().await;
    }

    #[tokio::test]
    async fn a_node_joining_takes_its_shards_with_their_agents() {
        let pg = Postgres::start();
        let clock = ManualClock::new(t(T0));
        let a = node(&pg, "a", &clock).await;
        let ids: Vec<String> = (0..24).map(|i| format!("host-{i:02}")).collect();
        let mut streams = Vec::new();
        for id in &ids {
            let mut s = agent(&a, id, 1).await;
            s.start_healthy(1).await;
            streams.push(s);
        }
        eventually("a holds every shard", Duration::from_secs(10), || async {
            (held(&pg, "a").await == SHARDS as usize).then_some(())
        })
        .await;

        // b joins: a hands b its share. The agents of the moved shards see
        // their streams end (UNAVAILABLE: reconnect); the others stay.
        let b = node(&pg, "b", &clock).await;
        eventually("b holds its share", Duration::from_secs(15), || async {
            let (ha, hb) = (held(&pg, "a").await, held(&pg, "b").await);
            (hb > 0 && ha + hb == SHARDS as usize).then_some(())
        })
        .await;
        let mut moved_ids = Vec::new();
        for (id, mut s) in ids.iter().zip(streams) {
            let sent =
                s.tx.send(pb::ReportRequest {
                    body: Some(pb::report_request::Body::Events(pb::EventBatch {
                        events: vec![crate::common::event(4, pb::EventKind::Heartbeat, None)],
                    })),
                })
                .await;
            let on_a = match sent {
                Ok(()) => tokio::time::timeout(Duration::from_secs(5), s.ack()).await,
                // The stream has ended already: its status says why.
                Err(_) => Ok(Err(s.end().await)),
            };
            match on_a {
                Ok(Ok(ack)) => assert_eq!(ack.applied_through, 4, "{id} stays on a"),
                Ok(Err(status)) => {
                    assert_eq!(status.code(), Code::Unavailable, "{id}: {status:?}");
                    assert!(status.message().contains("another server"), "{status:?}");
                    // On b: the agent resumes after what a acknowledged.
                    let mut again = agent(&b, id, 1).await;
                    assert_eq!(again.welcome.last_applied_seq, 3, "{id}");
                    assert_eq!(b.get(id).await.why, pb::Why::AllIsOk as i32);
                    again
                        .events(vec![crate::common::event(
                            4,
                            pb::EventKind::Heartbeat,
                            None,
                        )])
                        .await
                        .expect("b applies");
                    moved_ids.push(id.clone());
                }
                Err(_) => panic!("{id}: no answer from a"),
            }
        }
        let moved = moved_ids.len();
        assert!(
            moved > 0 && moved < ids.len(),
            "{moved} of {} moved",
            ids.len()
        );
        // An agent of b's that reaches a is passed on to b: same stream,
        // same sequence numbers, applied on b.
        let first = &moved_ids[0];
        let mut via_a = agent(&a, first, 1).await;
        assert_eq!(via_a.welcome.last_applied_seq, 4, "b's, through a");
        let ack = via_a
            .events(vec![crate::common::event(
                5,
                pb::EventKind::Heartbeat,
                None,
            )])
            .await
            .expect("b applies, through a");
        assert_eq!(ack.applied_through, 5);
        let on_b = b.get(first).await;
        assert_eq!(on_b.last_seq, 5, "{on_b:?}");
        drop(via_a);

        // Lists, summaries and single agents: the same answer whichever node
        // is asked, covering both nodes' shards, in pages by ID.
        for s in [&a, &b] {
            let mut seen = Vec::new();
            let mut token = String::new();
            loop {
                let page = s
                    .fleet()
                    .list_agents(pb::ListAgentsRequest {
                        filter: pb::StateFilter::All as i32,
                        page_size: 5,
                        page_token: token.clone(),
                        ..Default::default()
                    })
                    .await
                    .expect("lists")
                    .into_inner();
                assert!(!page.incomplete, "every shard is served");
                seen.extend(page.agents.iter().map(|a| a.agent_id.clone()));
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
            assert_eq!(seen, ids, "pages by ID over both nodes");
            let summary = s
                .fleet()
                .get_summary(pb::GetSummaryRequest::default())
                .await
                .expect("sums")
                .into_inner();
            assert!(!summary.incomplete);
            assert_eq!(summary.total, ids.len() as u64);
            assert_eq!(summary.healthy, ids.len() as u64);
            let storm = summary.storm.expect("storm");
            assert_eq!(storm.active_agents, ids.len() as u64);
            assert!(!storm.active);
            for id in [first, &ids[0]] {
                assert_eq!(s.get(id).await.agent_id, *id);
                let history = s
                    .fleet()
                    .get_history(pb::GetHistoryRequest {
                        agent_id: id.clone(),
                    })
                    .await
                    .expect("history")
                    .into_inner();
                assert!(!history.transitions.is_empty());
            }
        }

        // A watch on a sees every node's agents, then a change on b.
        let mut w = a
            .fleet()
            .watch_agents(pb::WatchAgentsRequest {
                filter: pb::StateFilter::All as i32,
                ..Default::default()
            })
            .await
            .expect("watches")
            .into_inner();
        let (snapshot, synced) = crate::common::snapshot(&mut w).await;
        let mut snapshot_ids: Vec<String> = snapshot.iter().map(|a| a.agent_id.clone()).collect();
        snapshot_ids.sort();
        assert_eq!(snapshot_ids, ids, "one snapshot over both nodes");
        assert_eq!(synced.count, ids.len() as u64);
        let mut on_b = agent(&b, first, 1).await;
        on_b.stop_cleanly(6).await;
        let change = crate::common::next_change(&mut w).await;
        match change {
            pb::watch_agents_response::Event::Changed(status) => {
                assert_eq!(status.agent_id, *first);
                assert_eq!(status.why, pb::Why::Stopped as i32);
            }
            other => panic!("expected {first}'s change, got {other:?}"),
        }
        drop(on_b);

        // Marks over the whole cluster, and a claim passed on to the owner.
        let stayed = ids
            .iter()
            .find(|id| !moved_ids.contains(id))
            .expect("an agent stayed on a");
        let marked = a
            .fleet()
            .set_maintenance(pb::SetMaintenanceRequest {
                all: true,
                reason: "patching".into(),
                duration: Some(prost_types::Duration {
                    seconds: 3600,
                    nanos: 0,
                }),
                ..Default::default()
            })
            .await
            .expect("marks")
            .into_inner();
        assert_eq!(marked.marked, ids.len() as u64);
        assert!(b.get(first).await.maintenance.is_some(), "marked on b");
        let cleared = b
            .fleet()
            .clear_maintenance(pb::ClearMaintenanceRequest {
                agent_ids: vec![stayed.clone(), first.clone()],
                ..Default::default()
            })
            .await
            .expect("clears")
            .into_inner();
        assert_eq!(cleared.cleared, 2);
        let claim = a
            .fleet()
            .claim_agent(pb::ClaimAgentRequest {
                agent_id: first.clone(),
                holder: "ops-1".into(),
                lease: Some(prost_types::Duration {
                    seconds: 60,
                    nanos: 0,
                }),
            })
            .await
            .expect("answers")
            .into_inner();
        assert!(!claim.granted, "{first} is not faulty");
        assert_eq!(claim.agent.expect("its status").agent_id, *first);

        b.stop().await;
        a.stop().await;
    }
}

mod incomplete {
    //! Answers that miss shards say so, and never raise the storm flag.

    use std::sync::Arc;
    use std::time::Duration;

    use fleet_health_e2e::eventually;
    use fleet_health_e2e::postgres::Postgres;
    use fleet_health_proto::v1 as pb;
    use fleet_health_server::clock::ManualClock;
    use fleet_health_server::cluster::db::Db;
    use fleet_health_server::config::{ClusterConfig, Storage};
    use fleet_health_server::{Config, Server};
    use tonic::transport::Channel;

    use super::SHARDS;
    use crate::common::{Agent, T0, TestServer, t};

    #[tokio::test]
    async fn a_list_and_a_summary_missing_shards_say_so_and_raise_no_storm() {
        let pg = Postgres::start();
        // A node that died holding four shards, whose leases run for an hour
        // yet, and that no one can reach.
        let mut db = Db::connect(&pg.url()).await.expect("connects");
        db.migrate(SHARDS).await.expect("migrates");
        db.heartbeat("ghost", "127.0.0.1:1", false)
            .await
            .expect("joins");
        let held = db
            .acquire("ghost", &[0, 1, 2, 3], Duration::from_secs(3600))
            .await
            .expect("takes");
        assert_eq!(held.len(), 4);

        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let config = Config {
            storage: Storage::Cluster(ClusterConfig {
                url: pg.url(),
                node: "a".into(),
                address: grpc.local_addr().expect("addr").to_string(),
                lease: Duration::from_secs(2),
                shards: SHARDS,
                peers: None,
            }),
            ..Config::default()
        };
        let clock = ManualClock::new(t(T0));
        let server = Server::cluster(config, Arc::new(clock.clone()))
            .await
            .expect("joins");
        let a = TestServer::serve_on(server, clock, grpc, |addr| {
            Channel::from_shared(format!("http://{addr}")).expect("uri")
        })
        .await;

        // Every agent a takes is faulty (a hello and nothing else): a whole
        // fleet in a storm, as far as a can see.
        let mut faulty = Vec::new();
        for i in 0..40 {
            let id = format!("f-{i:02}");
            if let Ok(mut s) = Agent::open(&a.channel).await
                && let Ok(w) = s.hello_with(&id, 1, &[]).await
            {
                s.welcome = w;
                faulty.push(s);
            }
            if faulty.len() == 12 {
                break;
            }
        }
        assert_eq!(faulty.len(), 12, "a serves most shards");
        let page = eventually(
            "a list over the cluster",
            Duration::from_secs(10),
            || async {
                a.fleet()
                    .list_agents(pb::ListAgentsRequest {
                        filter: pb::StateFilter::Faulty as i32,
                        ..Default::default()
                    })
                    .await
                    .ok()
                    .map(|r| r.into_inner())
            },
        )
        .await;
        assert!(page.incomplete, "the ghost's shards are missing");
        assert_eq!(page.agents.len(), 12);
        let storm = page.storm.expect("storm");
        assert_eq!(storm.faulty, 12);
        assert!(!storm.active, "no storm on part of the fleet: {storm:?}");
        let summary = a
            .fleet()
            .get_summary(pb::GetSummaryRequest::default())
            .await
            .expect("sums")
            .into_inner();
        assert!(summary.incomplete);
        assert!(!summary.storm.expect("storm").active);
        // And the metrics say so.
        let metrics = a.metrics().await;
        let value = |name: &str| -> f64 {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
                .unwrap_or_else(|| panic!("{name} in {metrics}"))
        };
        assert!(value("fleet_health_cluster_incomplete_answers_total ") >= 2.0);
        assert!(value("fleet_health_cluster_shards ") >= 1.0);
        assert!(value("fleet_health_cluster_rounds_total{result=\"ok\"} ") >= 1.0);
        assert!(value("fleet_health_cluster_passed_on_total{kind=\"call\"} ") >= 2.0);
        drop(faulty);
        a.stop().await;
    }
}
