//! `fleet-health maintenance` against the real server: marks by label and
//! by ID, what faulty lists, status, summary and history show of them,
//! clearing, a mark that ends by itself, and the refusals.

use std::time::Duration;

use fleet_health_e2e::{Server, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marks_leave_faulty_lists_show_everywhere_and_end_by_themselves() {
    let server = Server::start(&[]).await;
    // Three agents heard once: faulty ("no data received from server").
    for (agent, rack) in [("web-1", "r1"), ("web-2", "r1"), ("db-1", "r2")] {
        let label = format!("rack={rack}");
        server
            .report(agent, "heartbeat", &["--label", &label])
            .await;
    }
    let set = server
        .cli(&[
            "maintenance",
            "set",
            "--label",
            "rack=r1",
            "--reason",
            "kernel upgrade",
            "--for",
            "1h",
        ])
        .await;
    set.expect_code(0);
    assert!(
        set.stdout.starts_with("2 agents under maintenance until "),
        "{}",
        set.stdout
    );
    assert!(
        set.stdout.contains("\n  web-1\n  web-2\n"),
        "{}",
        set.stdout
    );

    let faulty = server.cli(&["list", "--faulty", "-o", "ids"]).await;
    faulty.expect_code(0);
    assert_eq!(faulty.stdout, "db-1\n");
    assert!(
        faulty
            .stderr
            .contains("2 agents under maintenance are left out"),
        "{}",
        faulty.stderr
    );
    let all = server
        .cli(&["list", "--faulty", "--maintenance", "include", "-o", "json"])
        .await;
    let all = all.expect_code(0).json();
    let web1 = all
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["agent_id"] == "web-1")
        .expect("web-1 listed");
    assert_eq!(web1["maintenance"]["reason"], "kernel upgrade");
    assert_eq!(web1["state"], "faulty", "it keeps its real status");
    let table = server
        .cli(&["list", "--faulty", "--maintenance", "include"])
        .await;
    assert!(
        table
            .stdout
            .contains("no data received from server [maintenance]"),
        "{}",
        table.stdout
    );
    let listed = server.cli(&["maintenance", "list", "-o", "ids"]).await;
    assert_eq!(listed.expect_code(0).stdout, "web-1\nweb-2\n");
    let people = server.cli(&["maintenance", "list"]).await;
    assert!(
        people.stdout.contains("kernel upgrade"),
        "{}",
        people.stdout
    );
    assert!(
        people.stdout.contains("2 agents under maintenance"),
        "{}",
        people.stdout
    );

    let status = server.cli(&["status", "web-1"]).await;
    assert!(
        status
            .stdout
            .contains("maintenance    kernel upgrade, ends in 59m")
            || status
                .stdout
                .contains("maintenance    kernel upgrade, ends in 1h"),
        "{}",
        status.stdout
    );
    let summary = server.cli(&["summary", "-o", "json"]).await.json();
    assert_eq!(summary["maintenance"], 2);
    assert_eq!(summary["maintenance_faulty"], 2);
    assert_eq!(
        summary["storm"]["faulty"], 1,
        "the storm guard leaves them out"
    );
    assert_eq!(summary["storm"]["maintenance"], 2);
    let summary = server.cli(&["summary"]).await;
    assert!(
        summary
            .stdout
            .contains("2 under maintenance (2 of them faulty)"),
        "{}",
        summary.stdout
    );

    let cleared = server.cli(&["maintenance", "clear", "web-1"]).await;
    assert_eq!(cleared.expect_code(0).stdout, "1 maintenance mark ended\n");
    let history = server.cli(&["history", "web-1", "-o", "json"]).await.json();
    let kinds: Vec<&str> = history["activity"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["maintenance set", "maintenance cleared"]);
    let history = server.cli(&["history", "web-1"]).await;
    assert!(
        history
            .stdout
            .contains("maintenance set: kernel upgrade until "),
        "{}",
        history.stdout
    );

    // Refused: an unknown agent (nothing marked), no reason, no targets.
    let unknown = server
        .cli(&[
            "maintenance",
            "set",
            "db-1",
            "nobody",
            "--reason",
            "x",
            "--for",
            "1m",
        ])
        .await;
    unknown.expect_code(4);
    assert!(unknown.stderr.contains("nobody"), "{}", unknown.stderr);
    let listed = server.cli(&["maintenance", "list", "-o", "ids"]).await;
    assert_eq!(listed.stdout, "web-2\n", "db-1 was not marked");
    server
        .cli(&["maintenance", "set", "db-1", "--for", "1m"])
        .await
        .expect_code(2);
    server
        .cli(&["maintenance", "set", "--reason", "x", "--for", "1m"])
        .await
        .expect_code(2);
    server
        .cli(&["maintenance", "set", "db-1", "--reason", "x", "--for", "0s"])
        .await
        .expect_code(2);

    // A short mark ends by itself, and db-1 is back in the faulty list.
    server
        .cli(&[
            "maintenance",
            "set",
            "db-1",
            "--reason",
            "reboot",
            "--for",
            "1s",
        ])
        .await
        .expect_code(0);
    eventually(
        "the mark ends by itself",
        Duration::from_secs(10),
        || async {
            let ids = server.cli(&["list", "--faulty", "-o", "ids"]).await;
            (ids.stdout == "db-1\nweb-1\n").then_some(())
        },
    )
    .await;
    let history = server.cli(&["history", "db-1", "-o", "json"]).await.json();
    assert_eq!(history["activity"][1]["kind"], "maintenance expired");
}
