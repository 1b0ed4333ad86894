//! Several servers over one real PostgreSQL (started by the test in a
//! temporary directory), as the README's "Running several servers" walks
//! it: a single server's data moved in with `import`, two servers with
//! `--cluster`, agents reporting to either, the same answers from both,
//! `cluster status`, and a server's death handing its agents over.

use std::time::Duration;

use fleet_health_e2e::ledger::{assert_applied_through, queue, report_and_wait, reporter};
use fleet_health_e2e::postgres::Postgres;
use fleet_health_e2e::{Proxy, Server, binary, eventually, free_port, http_get, serving};
use tokio::io::AsyncBufReadExt;

/// Waits until `s` says two nodes serve every shard.
async fn until_two_serve(s: &Server) {
    s.until_serving(2).await;
}

async fn node(pg: &Postgres, name: &str) -> Server {
    Server::start_node(&pg.url(), name, "2s").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_moves_into_a_cluster_and_is_served_by_any_node() {
    let pg = Postgres::start();

    // A single server's fleet, moved in.
    let mut single = Server::start(&[]).await;
    single
        .report_all(&[
            ("web-1", &["heartbeat --label site=eu"]),
            (
                "web-2",
                &["starting", "server_data_sent", "server_data_received"],
            ),
        ])
        .await;
    single.kill9().await;
    let import = tokio::process::Command::new(binary("fleet-health-server"))
        .arg("import")
        .arg(single.data_dir())
        .args(["--cluster", &pg.url(), "--shards", "16"])
        .output()
        .await
        .expect("runs");
    assert!(
        import.status.success(),
        "{}",
        String::from_utf8_lossy(&import.stderr)
    );
    assert!(String::from_utf8_lossy(&import.stdout).contains("imported 2 agents"));

    let a = node(&pg, "a").await;
    let b = node(&pg, "b").await;
    for s in [&a, &b] {
        until_two_serve(s).await;
    }

    // Agents report to either node; each answer covers the whole fleet.
    for i in 0..20 {
        let via = if i % 2 == 0 { &a } else { &b };
        via.report(&format!("host-{i:02}"), "heartbeat", &[]).await;
    }
    let from_a = a.cli(&["list", "--all", "-o", "ids"]).await;
    from_a.expect_code(0);
    let from_b = b.cli(&["list", "--all", "-o", "ids"]).await;
    assert_eq!(from_a.stdout, from_b.stdout, "the same answer from both");
    assert_eq!(from_a.stdout.lines().count(), 22, "{}", from_a.stdout);
    assert!(from_a.stdout.contains("web-1\n") && from_a.stdout.contains("web-2\n"));
    let summary = b.cli(&["summary", "-o", "json"]).await.json();
    assert_eq!(summary["total"], 22, "{summary}");
    let web1 = a.cli(&["status", "web-1", "-o", "json"]).await.json();
    assert_eq!(web1["labels"]["site"], "eu", "{web1}");

    // The web view of either node shows the whole fleet.
    for s in [&a, &b] {
        let page = http_get(&s.http_addr(), "/?part=main").await;
        assert!(page.starts_with("HTTP/1.1 200"), "{page}");
        assert!(page.contains(r#"id="count-total">22<"#), "{page}");
    }
    let metrics = http_get(&a.http_addr(), "/metrics").await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");

    let status = a.cli(&["cluster", "status"]).await;
    status.expect_code(0);
    assert!(
        status.stdout.contains("cluster of 2 live nodes"),
        "{}",
        status.stdout
    );
    assert!(
        status.stdout.contains("0 shards changing hands"),
        "{}",
        status.stdout
    );

    // b dies: its shards come to a within two leases, and every agent is
    // still there.
    let mut b = b;
    b.kill9().await;
    eventually("a serves every shard", Duration::from_secs(20), || async {
        let v = a.cli(&["cluster", "status", "-o", "json"]).await.json();
        let nodes = v["nodes"].as_array()?.clone();
        let held: u64 = nodes
            .iter()
            .filter(|n| n["node"] == "a")
            .filter_map(|n| n["shards"].as_u64())
            .sum();
        (held == 16).then_some(())
    })
    .await;
    let after = a.cli(&["list", "--all", "-o", "ids"]).await;
    assert_eq!(after.stdout, from_a.stdout, "nothing lost");
}

/// The longest a round of events may take to be acknowledged.
const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_die_pause_and_return_and_every_acknowledged_event_is_applied_once() {
    let pg = Postgres::start();
    let a = node(&pg, "a").await;
    let mut b = node(&pg, "b").await;
    for s in [&a, &b] {
        until_two_serve(s).await;
    }
    // The agents reach the cluster through one address, as through a load
    // balancer: node a, which passes b's agents on to b.
    let balancer = Proxy::start(a.addr()).await;
    let base = fleet_health_client::now().as_micros() - 3600 * 1_000_000;
    let reporters: Vec<_> = (0..12)
        .map(|i| reporter(&balancer.url(), &format!("chaos-{i:02}")))
        .collect();
    report_and_wait(&reporters, base, 1, 10, LIMIT).await;

    // b dies: its agents' streams break; they come back through a, which
    // takes b's shards when their leases end.
    b.kill9().await;
    let again = report_and_wait(&reporters, base, 11, 20, LIMIT).await;
    eprintln!("kill -9 of an owner: every agent acknowledged again within {again:?}");

    // b returns and takes its share back: a hands it over, the moved
    // agents reconnect and are passed on to b.
    b.restart().await;
    eventually("b serves shards again", Duration::from_secs(20), || async {
        let v = a.cli(&["cluster", "status", "-o", "json"]).await.json();
        v["nodes"]
            .as_array()?
            .iter()
            .any(|n| n["node"] == "b" && n["shards"].as_u64() > Some(0))
            .then_some(())
    })
    .await;
    report_and_wait(&reporters, base, 21, 30, LIMIT).await;

    // b is paused past its lease: a takes its shards; when b goes on, its
    // writes are refused by the fence, and it lets the shards go.
    let pid = b.pid().to_string();
    let stop = tokio::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .await;
    assert!(stop.expect("kill runs").success());
    for r in &reporters {
        for seq in 31..=35 {
            queue(r, base, seq);
        }
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let cont = tokio::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .await;
    assert!(cont.expect("kill runs").success());
    report_and_wait(&reporters, base, 36, 40, LIMIT).await;

    // The ledger: every agent's events 1 to 40, each applied once, in order,
    // whichever node is asked.
    // (A shard may still be changing hands back to b: asked then, a node
    // says so, and the question is asked again.)
    for r in &reporters {
        for s in [&a, &b] {
            let status = eventually("the agent's status", Duration::from_secs(20), || async {
                let run = s.cli(&["status", r.agent_id(), "-o", "json"]).await;
                (run.code == Some(0)).then(|| run.json())
            })
            .await;
            assert_applied_through(&status, r, base, 40);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_remediators_on_two_nodes_act_once_per_faulty_agent() {
    use crate::remediate::{
        Remediator, activity, faulty, logging_program, read_log, scratch, starts, strs,
    };

    let pg = Postgres::start();
    let a = node(&pg, "a").await;
    let b = node(&pg, "b").await;
    until_two_serve(&a).await;
    // Settle two rounds, so that each node knows where every shard is.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let agents: Vec<String> = (0..8).map(|i| format!("f-{i}")).collect();
    let ids: Vec<&str> = agents.iter().map(String::as_str).collect();
    faulty(&a, &ids[..4]).await;
    faulty(&b, &ids[4..]).await;

    // One remediator on each node: each sees every faulty agent (the watch
    // is merged), and the claims (on each agent's own node) let only one
    // act on each.
    let (_dir, log) = scratch();
    let program = logging_program(&log, "0", 0);
    let args = ["--settle", "0s", "--cooldown", "1h", "--rate", "100/s"];
    let mut r1 = Remediator::start(&a.url(), &args, &strs(&program));
    let mut r2 = Remediator::start(&b.url(), &args, &strs(&program));
    assert_eq!(r1.next().await["type"], "ready");
    assert_eq!(r2.next().await["type"], "ready");
    eventually("every agent acted on", Duration::from_secs(30), || async {
        (starts(&read_log(&log)).len() == agents.len()).then_some(())
    })
    .await;
    // Give a second action, were there one, the time to show.
    tokio::time::sleep(Duration::from_secs(2)).await;
    r1.kill().await;
    r2.kill().await;
    let started = starts(&read_log(&log));
    assert!(started.values().all(|n| *n == 1), "{started:?}");
    for id in &ids {
        for s in [&a, &b] {
            let act = activity(s, id).await;
            assert_eq!(act.len(), 1, "{id}: {act:?}");
            assert_eq!(act[0]["kind"], "remediated");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secured_cluster_checks_every_caller_on_every_node() {
    use fleet_health_e2e::cli;

    let pg = Postgres::start();
    let pki = tempfile::tempdir().expect("dir");
    let d = pki.path();
    let dir = d.display().to_string();
    let p = |name: &str| d.join(name).display().to_string();
    cli(&["pki", "init", &dir]).await.expect_code(0);
    for args in [
        &[
            "pki", "issue", "operator", "alice", "--role", "reader", "--dir", &dir,
        ][..],
        &[
            "pki", "issue", "operator", "root", "--role", "admin", "--dir", &dir,
        ][..],
    ] {
        cli(args).await.expect_code(0);
    }
    let tokens = p("tokens.toml");
    let made = cli(&[
        "token",
        "create",
        "ci",
        "--role",
        "reader",
        "--tokens-file",
        &tokens,
    ])
    .await;
    made.expect_code(0);
    let token_file = p("ci.token");
    std::fs::write(&token_file, made.stdout.trim()).expect("token written");
    let relay = cli(&[
        "token",
        "create",
        "edge",
        "--role",
        "relay",
        "--agents",
        "s-*",
        "--tokens-file",
        &tokens,
    ])
    .await;
    relay.expect_code(0);
    let relay_token = relay.stdout.trim().to_owned();
    let secret = p("cluster.secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef0123456789abcdef").expect("secret");

    let secured_node = |name: &'static str| {
        let (pg_url, cert, key, ca, tokens, secret) = (
            pg.url(),
            p("server.pem"),
            p("server.key"),
            p("ca.pem"),
            tokens.clone(),
            secret.clone(),
        );
        async move {
            let addr = format!("127.0.0.1:{}", free_port());
            Server::start(&[
                "--cluster",
                &pg_url,
                "--node-id",
                name,
                "--listen",
                &addr,
                "--advertise",
                &addr,
                "--cluster-lease",
                "2s",
                "--tls-cert",
                &cert,
                "--tls-key",
                &key,
                "--client-ca",
                &ca,
                "--tokens",
                &tokens,
                "--cluster-secret-file",
                &secret,
                // Peers' certificates are checked for this name, not the address.
                "--cluster-server-name",
                "localhost",
            ])
            .await
        }
    };
    let a = secured_node("a").await;
    let b = secured_node("b").await;
    let as_who = |s: &Server, who: &str, args: &[&str]| -> Vec<String> {
        let mut all: Vec<String> = vec![
            "--server".into(),
            s.https_url(),
            "--ca".into(),
            p("ca.pem"),
            "--cert".into(),
            p(&format!("{who}.pem")),
            "--key".into(),
            p(&format!("{who}.key")),
        ];
        all.extend(args.iter().map(|a| a.to_string()));
        all
    };
    let run = |args: Vec<String>| async move {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        cli(&refs).await
    };
    for s in [&a, &b] {
        eventually(
            "both nodes serve shards",
            Duration::from_secs(20),
            || async {
                let v = run(as_who(
                    s,
                    "reader-alice",
                    &["cluster", "status", "-o", "json"],
                ))
                .await
                .json();
                serving(&v, 2).then_some(())
            },
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // An admin reports for ten agents through b: about half are a's, passed
    // on with the admin's identity.
    let ids: Vec<String> = (0..10).map(|i| format!("s-{i}")).collect();
    for id in &ids {
        run(as_who(
            &b,
            "admin-root",
            &["report", "--agent", id, "heartbeat"],
        ))
        .await
        .expect_code(0);
    }
    // A reader (certificate or token) sees them all from either node; it
    // may not forget on either, whichever node holds the agent.
    for s in [&a, &b] {
        let list = run(as_who(s, "reader-alice", &["list", "--all", "-o", "ids"])).await;
        list.expect_code(0);
        assert_eq!(list.stdout.lines().count(), 10, "{}", list.stdout);
        let by_token = cli(&[
            "--server",
            &s.https_url(),
            "--ca",
            &p("ca.pem"),
            "--token-file",
            &token_file,
            "summary",
            "-o",
            "json",
        ])
        .await;
        // Exit 5: every agent is faulty (heard once), a storm.
        by_token.expect_code(5);
        assert_eq!(by_token.json()["total"], 10);
        for id in &ids[..4] {
            let forget = run(as_who(s, "reader-alice", &["forget", id])).await;
            forget.expect_code(7);
            assert!(forget.stderr.contains("admin"), "{}", forget.stderr);
        }
    }
    // An admin may, through either node.
    run(as_who(&a, "admin-root", &["forget", &ids[0]]))
        .await
        .expect_code(0);
    run(as_who(&b, "admin-root", &["forget", &ids[1]]))
        .await
        .expect_code(0);

    // A caller cannot pose as another by the header the servers use: without
    // the cluster's secret it is not believed, with a wrong one refused.
    let endpoint = fleet_health_client::endpoint_with(
        &a.https_url(),
        Duration::from_secs(5),
        &fleet_health_client::Credentials {
            ca: Some(d.join("ca.pem")),
            cert: Some(d.join("reader-alice.pem")),
            key: Some(d.join("reader-alice.key")),
            token: None,
        },
    )
    .expect("endpoint");
    let mut client = fleet_health_proto::v1::fleet_service_client::FleetServiceClient::new(
        endpoint.connect().await.expect("connects"),
    );
    let forged = |secret: Option<&str>| {
        let mut r = tonic::Request::new(fleet_health_proto::v1::ForgetAgentRequest {
            agent_id: ids[2].clone(),
        });
        r.metadata_mut()
            .insert("fleet-health-caller", "admin/evil".parse().expect("ascii"));
        if let Some(s) = secret {
            r.metadata_mut()
                .insert("fleet-health-node-secret", s.parse().expect("ascii"));
        }
        r
    };
    let posed = client
        .forget_agent(forged(None))
        .await
        .expect_err("refused");
    assert_eq!(posed.code(), tonic::Code::PermissionDenied, "{posed:?}");
    let wrong = client
        .forget_agent(forged(Some("not-the-secret-not-the-secret-00")))
        .await
        .expect_err("refused");
    assert_eq!(wrong.code(), tonic::Code::Unauthenticated, "{wrong:?}");
    let left = run(as_who(&a, "reader-alice", &["list", "--all", "-o", "ids"])).await;
    assert_eq!(left.stdout.lines().count(), 8, "{}", left.stdout);

    // A relay's streams for ten agents, opened through b (about half of
    // them passed on to a): when its token is revoked, b ends every one
    // (where the relay connected), and with them what it passed on; the
    // reporters' next hellos are refused.
    let reporters: Vec<_> = (20..30)
        .map(|i| {
            fleet_health_client::Reporter::connect_with(
                &b.https_url(),
                &fleet_health_client::Credentials {
                    ca: Some(d.join("ca.pem")),
                    token: Some(relay_token.clone()),
                    ..Default::default()
                },
                fleet_health_client::ReporterConfig::new(format!("s-{i}")),
            )
            .expect("a reporter")
        })
        .collect();
    for r in &reporters {
        let seq = r
            .report(fleet_health_client::EventKind::Starting, None)
            .expect("queued");
        tokio::time::timeout(Duration::from_secs(20), r.wait_acked(seq))
            .await
            .expect("acknowledged in time")
            .expect("acknowledged");
    }
    // A reader's watch through a (merged over both nodes), with a token.
    let mut watch = fleet_health_e2e::cli_command(&[
        "--server",
        &a.https_url(),
        "--ca",
        &p("ca.pem"),
        "--token-file",
        &token_file,
        "watch",
        "--all",
        "-o",
        "ndjson",
    ])
    .spawn()
    .expect("a watch");
    let mut lines = tokio::io::BufReader::new(watch.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("the watch says something")
        .expect("reads");
    assert!(first.is_some(), "the watch's snapshot");
    cli(&["token", "revoke", "edge", "--tokens-file", &tokens])
        .await
        .expect_code(0);
    cli(&["token", "revoke", "ci", "--tokens-file", &tokens])
        .await
        .expect_code(0);
    // The watch ends where the reader connected: revoked.
    let status = tokio::time::timeout(Duration::from_secs(20), watch.wait())
        .await
        .expect("the watch ends")
        .expect("waits");
    assert!(!status.success(), "{status:?}");
    for r in &reporters {
        eventually(
            "the relay's stream ends",
            Duration::from_secs(15),
            || async {
                let stats = r.stats();
                (!stats.connected
                    && stats
                        .last_error
                        .as_deref()
                        .is_some_and(|e| e.contains("token") || e.contains("revoked")))
                .then_some(())
            },
        )
        .await;
    }
}
