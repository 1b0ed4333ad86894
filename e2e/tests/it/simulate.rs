//! `fleet-health simulate` against the real server: every behaviour of the
//! mix shows the reason that the CLI's documentation promises for it, while
//! the simulation runs (the at-once ones) and after it ends (`crash`: not
//! reporting after the silence window; `stop`: stopped).

use std::collections::BTreeMap;
use std::time::Duration;

use fleet_health_e2e::{Server, eventually};
use serde_json::{Value, json};

/// The mix: 12 healthy agents and 3 of each other behaviour.
const MIX: &str =
    "healthy=4,no-data-sent=1,no-data-received=1,stuck-at-shutdown=1,unregistered=1,crash=1,stop=1";

/// `behaviour -> (why -> count)` of the simulated agents (by their `sim` label).
async fn whys_by_behaviour(server: &Server) -> BTreeMap<String, BTreeMap<String, u64>> {
    let run = server.cli(&["list", "--all", "-o", "json"]).await;
    run.expect_code(0);
    let mut out: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for agent in run.json().as_array().expect("an array") {
        let behaviour = agent["labels"]["sim"].as_str().expect("a sim label");
        let id = agent["agent_id"].as_str().unwrap();
        assert!(
            id.starts_with(&format!("sim-{behaviour}-")),
            "{id} is not named after its behaviour {behaviour}"
        );
        *out.entry(behaviour.to_owned())
            .or_default()
            .entry(agent["why"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    out
}

fn expect(pairs: &[(&str, &str, u64)]) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut out: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for (behaviour, why, n) in pairs {
        out.entry((*behaviour).to_owned())
            .or_default()
            .insert((*why).to_owned(), *n);
    }
    out
}

/// `why -> count` of `summary -o json`.
fn summary_whys(summary: &Value) -> BTreeMap<String, u64> {
    summary["by_why"]
        .as_array()
        .expect("by_why")
        .iter()
        .map(|w| {
            (
                w["why"].as_str().unwrap().to_owned(),
                w["count"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_simulated_behaviour_shows_its_documented_reason() {
    let server = Server::start(&["--silence-window", "2s", "--heartbeat-interval", "300ms"]).await;
    let sim = server
        .cli_command(&[
            "simulate",
            "--agents",
            "30",
            "--mix",
            MIX,
            "--duration",
            "4s",
            "--ramp-up",
            "500ms",
            "-o",
            "json",
        ])
        .spawn()
        .expect("start simulate");

    // While it runs: the behaviours that show at once.
    let at_once = [
        ("healthy", "all is ok", 12),
        ("no-data-sent", "no data sent to server", 3),
        ("no-data-received", "no data received from server", 3),
        ("stuck-at-shutdown", "stuck at shutdown", 3),
        ("unregistered", "not registered", 3),
    ];
    let running = eventually(
        "every simulated agent to show its behaviour",
        Duration::from_secs(15),
        || async {
            let whys = whys_by_behaviour(&server).await;
            at_once
                .iter()
                .all(|(b, why, n)| whys.get(*b) == Some(&expect(&[(b, why, *n)])[*b]))
                .then_some(whys)
        },
    )
    .await;
    // crash and stop agents work normally for a few seconds first.
    for behaviour in ["crash", "stop"] {
        let counts = &running[behaviour];
        assert_eq!(counts.values().sum::<u64>(), 3, "{behaviour}: {counts:?}");
        assert!(counts.contains_key("all is ok"), "{behaviour}: {counts:?}");
    }
    assert_eq!(running.len(), 7, "{running:?}");

    // When it ends: every agent stops cleanly (says `stopped`) except the
    // crashed and the stuck ones, which fall silent: `not reporting`.
    let output = tokio::time::timeout(Duration::from_secs(40), sim.wait_with_output())
        .await
        .expect("simulate ends after its --duration")
        .expect("simulate ran");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let report: Value = serde_json::from_slice(&output.stdout).expect("simulate -o json");
    assert_eq!(report["agents"], json!(30), "{report}");
    assert_eq!(report["agents_failed"], json!(0), "{report}");
    assert_eq!(report["events_dropped"], json!(0), "{report}");
    assert_eq!(report["connections"], json!(1), "{report}");
    assert!(
        report["events_acked"].as_u64().unwrap() >= 30 * 2,
        "{report}"
    );
    assert!(report["seconds"].as_f64().unwrap() >= 4.0, "{report}");

    let finished = expect(&[
        ("healthy", "stopped", 12),
        ("no-data-sent", "stopped", 3),
        ("no-data-received", "stopped", 3),
        ("stuck-at-shutdown", "not reporting", 3),
        ("unregistered", "stopped", 3),
        ("crash", "not reporting", 3),
        ("stop", "stopped", 3),
    ]);
    eventually(
        "the crashed and stuck agents to be not reporting",
        Duration::from_secs(15),
        || async { (whys_by_behaviour(&server).await == finished).then_some(()) },
    )
    .await;
    let run = server.cli(&["summary", "-o", "json"]).await;
    run.expect_code(0);
    let summary = run.json();
    assert_eq!(
        summary_whys(&summary),
        BTreeMap::from([("stopped".to_owned(), 24), ("not reporting".to_owned(), 6)])
    );
    assert_eq!(
        (
            &summary["total"],
            &summary["healthy"],
            &summary["faulty"],
            &summary["connected"]
        ),
        (&json!(30), &json!(24), &json!(6), &json!(0))
    );
    assert_eq!(summary["storm"]["active"], json!(false));
    let run = server
        .cli(&["list", "--faulty", "--label", "sim=crash", "-o", "ids"])
        .await;
    run.expect_code(0);
    assert_eq!(run.lines().len(), 3, "{}", run.stdout);
}
