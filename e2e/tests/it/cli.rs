//! The `fleet-health` CLI against the real server: agents put in every state
//! the rules know with `report` (backdated with `--at`), then `list` (JSON,
//! IDs, reasons, labels, forecasts), `status`, `summary`, `history`,
//! `forget`, `watch`, the storm guard and every exit code, checked exactly.

use std::collections::BTreeMap;
use std::time::Duration;

use fleet_health_client::{Reporter, ReporterConfig, now};
use fleet_health_e2e::{Server, cli, eventually, micros, now_micros, time_field};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

const HOUR: i64 = 3_600_000_000;
const MINUTE: i64 = 60_000_000;
const SECOND: i64 = 1_000_000;

/// `agent_id -> agent` of a `list -o json` array.
fn by_id(list: &Value) -> BTreeMap<String, Value> {
    list.as_array()
        .expect("list -o json is an array")
        .iter()
        .map(|a| {
            (
                a["agent_id"].as_str().expect("agent_id").to_owned(),
                a.clone(),
            )
        })
        .collect()
}

/// `agent_id -> why` of a `list -o json` array.
fn whys(list: &Value) -> BTreeMap<String, String> {
    by_id(list)
        .into_iter()
        .map(|(id, a)| (id, a["why"].as_str().expect("why").to_owned()))
        .collect()
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// `(from_why, to_why)` of each transition of `history -o json`.
fn transitions(history: &Value) -> Vec<(Value, Value)> {
    history["transitions"]
        .as_array()
        .expect("transitions")
        .iter()
        .map(|t| (t["from_why"].clone(), t["to_why"].clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_state_through_report_then_every_query_and_exit_code() {
    let server = Server::start(&[]).await;
    let started = now_micros();

    // An agent that stays connected (its reporter heartbeats), for forecasts.
    let channel = fleet_health_client::lazy_channel(&server.url(), Duration::from_secs(10))
        .expect("a channel");
    let reporter = Reporter::start(
        channel,
        ReporterConfig::new("h-connected").label("site", "west"),
    )
    .expect("a reporter");
    let t = now();
    reporter.starting(t);
    reporter.server_data_sent(t);
    reporter.server_data_received(t);

    server
        .report_all(&[
            (
                "a-healthy",
                &[
                    "starting --label site=east",
                    "server_data_sent",
                    "server_data_received",
                ],
            ),
            (
                "b-no-data-sent",
                &[
                    "starting --at -7h --label site=east",
                    "server_data_received",
                ],
            ),
            (
                "c-no-data-received",
                &["starting --at -19h --label site=west", "server_data_sent"],
            ),
            ("d-shutting-down", &["starting", "shutting_down"]),
            ("e-stuck", &["starting", "shutting_down --at -11m"]),
            ("f-unregistered", &["starting", "unregistered"]),
            ("g-stopped", &["starting", "shutting_down", "stopped"]),
        ])
        .await;
    tokio::time::timeout(Duration::from_secs(10), reporter.flush())
        .await
        .expect("the reporter's events are acknowledged in time")
        .expect("acknowledged");

    // list -o json: every agent, ordered by ID, with the documented fields.
    let run = server.cli(&["list", "-o", "json"]).await;
    run.expect_code(0);
    let list = run.json();
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["agent_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "a-healthy",
            "b-no-data-sent",
            "c-no-data-received",
            "d-shutting-down",
            "e-stuck",
            "f-unregistered",
            "g-stopped",
            "h-connected"
        ]
    );
    let expected = [
        ("a-healthy", true, "healthy", "all is ok", "all-is-ok"),
        (
            "b-no-data-sent",
            false,
            "faulty",
            "no data sent to server",
            "no-data-sent",
        ),
        (
            "c-no-data-received",
            false,
            "faulty",
            "no data received from server",
            "no-data-received",
        ),
        (
            "d-shutting-down",
            true,
            "healthy",
            "shutdown is in progress",
            "shutdown-in-progress",
        ),
        (
            "e-stuck",
            false,
            "faulty",
            "stuck at shutdown",
            "stuck-at-shutdown",
        ),
        (
            "f-unregistered",
            true,
            "healthy",
            "not registered",
            "not-registered",
        ),
        ("g-stopped", true, "healthy", "stopped", "stopped"),
        ("h-connected", true, "healthy", "all is ok", "all-is-ok"),
    ];
    let agents = by_id(&list);
    let evaluated = time_field(&list[0], "evaluated_at");
    for (id, healthy, state, why, why_name) in expected {
        let a = &agents[id];
        assert_eq!(a["healthy"], json!(healthy), "{id}: {a}");
        assert_eq!(a["state"], json!(state), "{id}: {a}");
        assert_eq!(a["why"], json!(why), "{id}: {a}");
        assert_eq!(a["why_name"], json!(why_name), "{id}: {a}");
        let since = time_field(a, "since");
        assert!(
            started <= since && since <= evaluated,
            "{id}: since {since} outside the test's time ({started}..{evaluated})"
        );
        assert_eq!(time_field(a, "evaluated_at"), evaluated, "{id}");
        assert!(time_field(a, "first_seen") >= started, "{id}");
        assert!(time_field(a, "last_heard") >= started, "{id}");
        assert!(a["incarnation"].as_str().unwrap().parse::<u64>().unwrap() > 0);
        assert_eq!(a["connected"], json!(id == "h-connected"), "{id}: {a}");
        assert_eq!(a["stopped_at"].is_null(), id != "g-stopped", "{id}: {a}");
        // Each `report` is its own reporter: sequence number 1.
        let last_seq = if id == "h-connected" { 3 } else { 1 };
        assert_eq!(a["last_seq"], json!(last_seq), "{id}: {a}");
    }
    let labels = |id: &str| agents[id]["labels"].clone();
    assert_eq!(labels("a-healthy"), json!({"site": "east"}));
    assert_eq!(labels("c-no-data-received"), json!({"site": "west"}));
    assert_eq!(labels("d-shutting-down"), json!({}));
    // The sensor's inputs are the backdated times.
    let sensor = |id: &str, key: &str| time_field(&agents[id]["sensor"], key);
    let b_start = sensor("b-no-data-sent", "started_at");
    assert!((started - 7 * HOUR - SECOND..=evaluated - 7 * HOUR).contains(&b_start));
    assert_eq!(
        agents["b-no-data-sent"]["sensor"]["last_sent"],
        json!("1970-01-01T00:00:00Z")
    );
    let c_start = sensor("c-no-data-received", "started_at");
    assert!((started - 19 * HOUR - SECOND..=evaluated - 19 * HOUR).contains(&c_start));
    let e_shutdown = sensor("e-stuck", "shutdown_at");
    assert!((started - 11 * MINUTE - SECOND..=evaluated - 11 * MINUTE).contains(&e_shutdown));
    assert_eq!(agents["a-healthy"]["sensor"]["shutdown_at"], Value::Null);
    assert_eq!(
        agents["f-unregistered"]["sensor"]["registered"],
        json!(false)
    );
    assert_eq!(agents["a-healthy"]["sensor"]["registered"], json!(true));
    // A status changes when its reason does, and `since` is that moment.
    assert_eq!(
        time_field(&agents["g-stopped"], "since"),
        time_field(&agents["g-stopped"], "stopped_at")
    );
    assert_eq!(
        time_field(&agents["e-stuck"], "since"),
        time_field(&agents["e-stuck"], "last_heard")
    );
    assert_eq!(
        time_field(&agents["d-shutting-down"], "since"),
        sensor("d-shutting-down", "shutdown_at")
    );
    assert_eq!(
        time_field(&agents["a-healthy"], "since"),
        sensor("a-healthy", "started_at")
    );
    // Only the connected agent heartbeats; the next change of the others is
    // their silence (5 min after they were last heard); the stopped one has none.
    assert_eq!(agents["g-stopped"]["next_change"], Value::Null);
    assert_eq!(
        time_field(&agents["e-stuck"], "next_change"),
        time_field(&agents["e-stuck"], "last_heard") + 5 * MINUTE
    );

    // list --faulty -o ids: the restart candidates, sorted, one a line.
    let run = server.cli(&["list", "--faulty", "-o", "ids"]).await;
    run.expect_code(0);
    assert_eq!(run.stdout, "b-no-data-sent\nc-no-data-received\ne-stuck\n");
    assert_eq!(run.stderr, "");
    let run = server.cli(&["list", "--healthy", "-o", "ids"]).await;
    run.expect_code(0);
    assert_eq!(
        run.stdout,
        "a-healthy\nd-shutting-down\nf-unregistered\ng-stopped\nh-connected\n"
    );
    // By reason: the text, or the short name, repeated for any of several.
    let run = server
        .cli(&["list", "--why", "no data sent to server", "-o", "ids"])
        .await;
    run.expect_code(0);
    assert_eq!(run.stdout, "b-no-data-sent\n");
    let run = server
        .cli(&[
            "list",
            "--why",
            "stuck-at-shutdown",
            "--why",
            "stopped",
            "-o",
            "ids",
        ])
        .await;
    run.expect_code(0);
    assert_eq!(run.stdout, "e-stuck\ng-stopped\n");
    // By label, and labels with a state.
    let run = server
        .cli(&["list", "--label", "site=east", "-o", "ids"])
        .await;
    run.expect_code(0);
    assert_eq!(run.stdout, "a-healthy\nb-no-data-sent\n");
    let run = server
        .cli(&["list", "--label", "site=west", "--faulty", "-o", "ids"])
        .await;
    run.expect_code(0);
    assert_eq!(run.stdout, "c-no-data-received\n");
    let run = server
        .cli(&["list", "--label", "site=north", "-o", "json"])
        .await;
    run.expect_code(0);
    assert_eq!(run.json(), json!([]));

    // Forecasts: a connected agent is taken as heard all along, so the
    // reference's rules speak for it; the others are silent by then, unless
    // they stopped cleanly.
    let run = server.cli(&["list", "--at", "+7h", "-o", "json"]).await;
    run.expect_code(0);
    let forecast = run.json();
    let mut expected: BTreeMap<String, String> = ids
        .iter()
        .map(|id| ((*id).to_owned(), "not reporting".to_owned()))
        .collect();
    expected.insert("g-stopped".into(), "stopped".into());
    expected.insert("h-connected".into(), "no data sent to server".into());
    assert_eq!(whys(&forecast), expected);
    let at = time_field(&forecast[0], "evaluated_at");
    assert!((started + 7 * HOUR..=now_micros() + 7 * HOUR).contains(&at));
    let run = server
        .cli(&["list", "--at", "+19h", "--label", "site=west", "-o", "json"])
        .await;
    run.expect_code(0);
    assert_eq!(
        whys(&run.json()),
        map(&[
            ("c-no-data-received", "not reporting"),
            ("h-connected", "no data received from server"),
        ])
    );
    let run = server
        .cli(&["list", "--faulty", "--at", "+7h", "-o", "ids"])
        .await;
    // 7 of 8 faulty at that time, but a fleet below --storm-min-agents (10)
    // never raises the storm flag.
    run.expect_code(0);
    assert_eq!(
        run.stdout,
        "a-healthy\nb-no-data-sent\nc-no-data-received\nd-shutting-down\ne-stuck\nf-unregistered\nh-connected\n"
    );

    // status: a table that says why, and the JSON fields.
    let run = server.cli(&["status", "e-stuck"]).await;
    run.expect_code(0);
    assert!(
        run.stdout
            .lines()
            .any(|l| l.starts_with("why ") && l.ends_with(" stuck at shutdown")),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .lines()
            .any(|l| l.starts_with("state ") && l.contains("faulty for"))
    );
    let run = server
        .cli(&["status", "b-no-data-sent", "-o", "json"])
        .await;
    run.expect_code(0);
    let b = run.json();
    for key in [
        "agent_id",
        "healthy",
        "state",
        "why",
        "why_name",
        "since",
        "last_heard",
        "connected",
        "labels",
        "incarnation",
        "last_seq",
        "next_change",
        "stopped_at",
        "first_seen",
        "evaluated_at",
        "sensor",
    ] {
        assert!(b.get(key).is_some(), "status -o json lacks {key}: {b}");
    }
    assert_eq!(b["agent_id"], json!("b-no-data-sent"));
    assert_eq!(b["why"], json!("no data sent to server"));
    assert_eq!(b["labels"], json!({"site": "east"}));
    let run = server.cli(&["status", "g-stopped", "-o", "ids"]).await;
    run.expect_code(0);
    assert_eq!(run.stdout, "g-stopped\n");
    let run = server
        .cli(&["status", "a-healthy", "--at", "+7h", "-o", "json"])
        .await;
    run.expect_code(0);
    assert_eq!(run.json()["why"], json!("not reporting"));

    // summary -o json.
    let run = server.cli(&["summary", "-o", "json"]).await;
    run.expect_code(0);
    let summary = run.json();
    assert_eq!(summary["total"], json!(8));
    assert_eq!(summary["healthy"], json!(5));
    assert_eq!(summary["faulty"], json!(3));
    assert_eq!(summary["inactive"], json!(0));
    assert_eq!(summary["connected"], json!(1));
    // A first start, on an empty data directory, has no restart grace to
    // report (tests/reporter.rs checks the grace after a restart).
    assert_eq!(summary["grace_until"], json!(null), "{summary}");
    let mut by_why: Vec<(String, String, u64)> = summary["by_why"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["why"].as_str().unwrap().to_owned(),
                w["state"].as_str().unwrap().to_owned(),
                w["count"].as_u64().unwrap(),
            )
        })
        .collect();
    let first_count = by_why[0].2;
    by_why.sort();
    let mut want: Vec<(String, String, u64)> = [
        ("all is ok", "healthy", 2),
        ("no data received from server", "faulty", 1),
        ("no data sent to server", "faulty", 1),
        ("not registered", "healthy", 1),
        ("shutdown is in progress", "healthy", 1),
        ("stopped", "healthy", 1),
        ("stuck at shutdown", "faulty", 1),
    ]
    .iter()
    .map(|(w, s, c)| ((*w).to_owned(), (*s).to_owned(), *c))
    .collect();
    want.sort();
    assert_eq!(by_why, want);
    assert_eq!(first_count, 2, "by_why is most first");
    let storm = &summary["storm"];
    assert_eq!(storm["active"], json!(false));
    assert_eq!(storm["faulty"], json!(3));
    assert_eq!(storm["active_agents"], json!(8));
    assert_eq!(storm["threshold"], json!(0.5));
    assert_eq!(storm["min_agents"], json!(10));
    assert_eq!(storm["dominant_why"], Value::Null);
    let run = server.cli(&["summary"]).await;
    run.expect_code(0);
    assert!(
        run.stdout
            .starts_with("8 agents: 5 healthy, 3 faulty, 0 inactive; 1 connected\n"),
        "{}",
        run.stdout
    );

    // history: every change, oldest first; a new agent is faulty until it
    // reports `starting`.
    let run = server.cli(&["history", "g-stopped", "-o", "json"]).await;
    run.expect_code(0);
    let history = run.json();
    assert_eq!(history["agent_id"], json!("g-stopped"));
    assert_eq!(
        transitions(&history),
        [
            (Value::Null, json!("no data received from server")),
            (json!("no data received from server"), json!("all is ok")),
            (json!("all is ok"), json!("shutdown is in progress")),
            (json!("shutdown is in progress"), json!("stopped")),
        ]
    );
    let t: Vec<&Value> = history["transitions"].as_array().unwrap().iter().collect();
    assert_eq!(t[0]["from_state"], Value::Null);
    assert_eq!(t[0]["to_state"], json!("faulty"));
    assert_eq!(t[3]["from_state"], json!("healthy"));
    assert_eq!(t[3]["to_why_name"], json!("stopped"));
    let times: Vec<i64> = t.iter().map(|x| time_field(x, "at")).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert_eq!(times[0], time_field(&agents["g-stopped"], "first_seen"));
    assert_eq!(times[3], time_field(&agents["g-stopped"], "stopped_at"));
    let run = server.cli(&["history", "g-stopped", "-o", "ndjson"]).await;
    run.expect_code(0);
    assert_eq!(run.lines().len(), 4);

    // forget, then the agent is unknown: exit code 4.
    let run = server
        .cli(&["forget", "f-unregistered", "-o", "json"])
        .await;
    run.expect_code(0);
    assert_eq!(run.json()["why"], json!("not registered"));
    for args in [
        &["status", "f-unregistered"][..],
        &["history", "f-unregistered"],
        &["forget", "f-unregistered"],
    ] {
        let run = server.cli(args).await;
        run.expect_code(4);
        assert_eq!(run.stdout, "");
        assert!(run.stderr.contains("f-unregistered"), "{}", run.stderr);
    }
    let run = server.cli(&["list", "-o", "ids"]).await;
    run.expect_code(0);
    assert!(!run.stdout.contains("f-unregistered"));

    // Usage errors: exit code 2, nothing on stdout.
    for args in [
        &["list", "--why", "bogus"][..],
        &["list", "--faulty", "--healthy"],
        &["status", "bad id!"],
        &["summary", "-o", "ids"],
        &["report", "--agent", "x", "exploded"],
        &["list", "--at", "yesterday"],
        &["list", "--label", "novalue"],
        &["frobnicate"],
    ] {
        let run = server.cli(args).await;
        run.expect_code(2);
        assert_eq!(run.stdout, "", "{args:?}");
        assert!(!run.stderr.is_empty(), "{args:?}");
    }

    // An unreachable server: exit code 3, for queries and for report.
    for args in [
        &["--server", "http://127.0.0.1:1", "list"][..],
        &["--server", "http://127.0.0.1:1", "summary", "-o", "json"],
        &[
            "--server",
            "http://127.0.0.1:1",
            "--timeout",
            "2s",
            "report",
            "--agent",
            "x",
            "starting",
        ],
    ] {
        let run = cli(args).await;
        run.expect_code(3);
        assert_eq!(run.stdout, "", "{args:?}");
        assert!(
            run.stderr.contains("127.0.0.1:1"),
            "{args:?}: {}",
            run.stderr
        );
    }

    // A closed pipe (`| head`) is not an error.
    for args in [
        &["list", "-o", "ndjson"][..],
        &["history", "g-stopped"],
        &["summary"],
    ] {
        let mut child = server.cli_command(args).spawn().expect("spawn");
        drop(child.stdout.take());
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .expect("ends")
            .expect("waited");
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            use tokio::io::AsyncReadExt;
            let _ = e.read_to_string(&mut stderr).await;
        }
        assert_eq!(
            status.code(),
            Some(0),
            "{args:?} into a closed pipe: {stderr}"
        );
    }

    // Storm: 6 more agents without data received: 9 of 13 active agents
    // faulty, 7 of them for the same reason.
    let storm_agents: Vec<String> = (0..6).map(|i| format!("s-{i}")).collect();
    let events: &[&str] = &["starting --at -19h"];
    let batch: Vec<(&str, &[&str])> = storm_agents.iter().map(|a| (a.as_str(), events)).collect();
    server.report_all(&batch).await;
    let run = server.cli(&["list", "--faulty", "-o", "ids"]).await;
    run.expect_code(5);
    assert_eq!(
        run.stdout,
        "b-no-data-sent\nc-no-data-received\ne-stuck\ns-0\ns-1\ns-2\ns-3\ns-4\ns-5\n"
    );
    assert!(
        run.stderr.to_lowercase().contains("storm"),
        "{}",
        run.stderr
    );
    let run = server.cli(&["summary", "-o", "json"]).await;
    run.expect_code(5);
    let storm = &run.json()["storm"];
    assert_eq!(storm["active"], json!(true));
    assert_eq!(storm["faulty"], json!(9));
    assert_eq!(storm["active_agents"], json!(13));
    assert_eq!(storm["dominant_why"], json!("no data received from server"));
    assert_eq!(storm["dominant_why_name"], json!("no-data-received"));
    assert_eq!(storm["dominant_count"], json!(7));
    let share = storm["faulty_share"].as_f64().unwrap();
    assert!((share - 9.0 / 13.0).abs() < 1e-9, "{share}");
    // Only the faulty list and the summary raise it.
    server.cli(&["list", "-o", "ids"]).await.expect_code(0);
    server.cli(&["status", "s-0"]).await.expect_code(0);

    reporter
        .shutdown(Duration::from_secs(10))
        .await
        .expect("clean shutdown");
    let run = server.cli(&["status", "h-connected", "-o", "json"]).await;
    run.expect_code(0);
    assert_eq!(run.json()["why"], json!("stopped"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_agents_are_not_reporting_then_inactive() {
    let server = Server::start(&[
        "--silence-window",
        "1s",
        "--inactive-window",
        "3s",
        "--heartbeat-interval",
        "200ms",
    ])
    .await;
    // One agent that keeps heartbeating, one that stopped, one that goes silent.
    let channel = fleet_health_client::lazy_channel(&server.url(), Duration::from_secs(10))
        .expect("a channel");
    let reporter = Reporter::start(channel, ReporterConfig::new("alive")).expect("a reporter");
    reporter.starting(now());
    server
        .report_all(&[
            ("quiet", &["starting"]),
            ("done", &["starting", "shutting_down", "stopped"]),
        ])
        .await;
    tokio::time::timeout(Duration::from_secs(10), reporter.flush())
        .await
        .expect("acknowledged in time")
        .expect("acknowledged");

    let status = |id: &'static str| {
        let server = &server;
        async move {
            let run = server.cli(&["status", id, "-o", "json"]).await;
            run.expect_code(0);
            run.json()
        }
    };
    let not_reporting = eventually(
        "quiet to be not reporting",
        Duration::from_secs(20),
        || async {
            let a = status("quiet").await;
            (a["why"] != json!("all is ok")).then_some(a)
        },
    )
    .await;
    assert_eq!(
        not_reporting["why"],
        json!("not reporting"),
        "{not_reporting}"
    );
    assert_eq!(not_reporting["state"], json!("faulty"));
    let heard = time_field(&not_reporting, "last_heard");
    // A time-driven change happens at its due time.
    assert_eq!(time_field(&not_reporting, "since"), heard + SECOND);
    assert_eq!(
        time_field(&not_reporting, "next_change"),
        heard + 3 * SECOND
    );

    let inactive = eventually("quiet to be inactive", Duration::from_secs(20), || async {
        let a = status("quiet").await;
        (a["why"] != json!("not reporting")).then_some(a)
    })
    .await;
    assert_eq!(inactive["why"], json!("inactive"), "{inactive}");
    assert_eq!(inactive["state"], json!("inactive"));
    assert_eq!(inactive["healthy"], json!(false));
    assert_eq!(time_field(&inactive, "since"), heard + 3 * SECOND);
    assert_eq!(inactive["next_change"], Value::Null);

    // The heartbeating agent stayed healthy; the stopped one stays stopped.
    let alive = status("alive").await;
    assert_eq!(alive["why"], json!("all is ok"), "{alive}");
    assert_eq!(alive["connected"], json!(true));
    let done = status("done").await;
    assert_eq!(done["why"], json!("stopped"), "{done}");

    // Inactive agents are kept, listed with --all or --inactive, never faulty.
    let ids = |args: &'static [&'static str]| {
        let server = &server;
        async move {
            let run = server.cli(args).await;
            run.expect_code(0);
            run.stdout
        }
    };
    assert_eq!(ids(&["list", "-o", "ids"]).await, "alive\ndone\n");
    assert_eq!(
        ids(&["list", "--all", "-o", "ids"]).await,
        "alive\ndone\nquiet\n"
    );
    assert_eq!(ids(&["list", "--inactive", "-o", "ids"]).await, "quiet\n");
    assert_eq!(ids(&["list", "--faulty", "-o", "ids"]).await, "");
    let run = server.cli(&["summary", "-o", "json"]).await;
    run.expect_code(0);
    let summary = run.json();
    assert_eq!(
        (
            &summary["total"],
            &summary["healthy"],
            &summary["faulty"],
            &summary["inactive"]
        ),
        (&json!(3), &json!(2), &json!(0), &json!(1))
    );

    let run = server.cli(&["history", "quiet", "-o", "json"]).await;
    run.expect_code(0);
    let history = run.json();
    assert_eq!(
        transitions(&history),
        [
            (Value::Null, json!("no data received from server")),
            (json!("no data received from server"), json!("all is ok")),
            (json!("all is ok"), json!("not reporting")),
            (json!("not reporting"), json!("inactive")),
        ]
    );
    let last = &history["transitions"][3];
    assert_eq!(last["to_state"], json!("inactive"));
    assert_eq!(time_field(last, "at"), heard + 3 * SECOND);
    assert_eq!(time_field(&history["transitions"][2], "at"), heard + SECOND);

    // Heard again: active again.
    server.report("quiet", "heartbeat", &[]).await;
    let a = status("quiet").await;
    assert_eq!(a["why"], json!("all is ok"), "{a}");
    drop(reporter);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_the_snapshot_then_each_change() {
    let server = Server::start(&[]).await;
    server
        .report_all(&[("w-1", &["starting"]), ("w-2", &["starting --at -19h"])])
        .await;

    let mut child = server
        .cli_command(&["watch", "-o", "ndjson"])
        .spawn()
        .expect("start watch");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut next = async || -> Value {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("watch prints in time")
            .expect("read watch")
            .expect("watch still running");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    };

    let mut snapshot = BTreeMap::new();
    let synced = loop {
        let msg = next().await;
        match msg["type"].as_str() {
            Some("snapshot") => {
                let a = &msg["agent"];
                snapshot.insert(a["agent_id"].as_str().unwrap().to_owned(), a["why"].clone());
            }
            Some("synced") => break msg,
            _ => panic!("before synced: {msg}"),
        }
    };
    assert_eq!(
        snapshot,
        BTreeMap::from([
            ("w-1".to_owned(), json!("all is ok")),
            ("w-2".to_owned(), json!("no data received from server")),
        ])
    );
    assert_eq!(synced["count"], json!(2));
    assert_eq!(synced["storm"]["active"], json!(false));
    assert!(micros(synced["at"].as_str().unwrap()) > 0);

    // A change: w-1 begins shutting down.
    server.report("w-1", "shutting_down", &[]).await;
    let changed = loop {
        let msg = next().await;
        assert_eq!(msg["type"], json!("changed"), "{msg}");
        assert_eq!(msg["agent"]["agent_id"], json!("w-1"), "{msg}");
        if msg["agent"]["why"] != json!("all is ok") {
            break msg;
        }
    };
    assert_eq!(changed["agent"]["why"], json!("shutdown is in progress"));
    assert_eq!(changed["agent"]["healthy"], json!(true));

    // A new agent enters the set; a forgotten one leaves it.
    server.report("w-3", "starting", &["--at", "-7h"]).await;
    let entered = loop {
        let msg = next().await;
        assert_eq!(msg["type"], json!("changed"), "{msg}");
        assert_eq!(msg["agent"]["agent_id"], json!("w-3"), "{msg}");
        if msg["agent"]["why"] == json!("no data sent to server") {
            break msg;
        }
    };
    assert_eq!(entered["agent"]["state"], json!("faulty"));
    server.cli(&["forget", "w-2"]).await.expect_code(0);
    // (Skipping any repeat of what was already seen, such as a change of
    // `connected` alone.)
    let left = loop {
        let msg = next().await;
        if msg["type"] != json!("changed") {
            break msg;
        }
        let id = msg["agent"]["agent_id"].as_str().unwrap_or_default();
        let seen = match id {
            "w-1" => "shutdown is in progress",
            "w-3" => "no data sent to server",
            _ => panic!("unexpected change: {msg}"),
        };
        assert_eq!(msg["agent"]["why"], json!(seen), "{msg}");
    };
    assert_eq!(
        left,
        json!({"type": "left", "agent_id": "w-2", "forgotten": true, "agent": null})
    );

    child.start_kill().expect("kill watch");
    let _ = child.wait().await;
}
