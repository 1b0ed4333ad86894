//! The CLI's habits from kubectl against the real server: `version`,
//! `-o yaml|wide`, `--no-headers`, `-l` selectors, `--sort-by`, HOST:PORT
//! addresses, connection errors with their cause, completions and man pages.

use fleet_health_e2e::{Server, cli};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_formats_selectors_and_sorting() {
    let server = Server::start(&[]).await;
    server
        .report_all(&[
            (
                "web-1",
                &["starting --at -2h --label site=eu --label role=web"],
            ),
            ("web-2", &["heartbeat --label site=us"]),
            (
                "db-1",
                &[
                    "starting --at -3h --label site=eu",
                    "server_data_sent --at -2h",
                    "server_data_received --at -2h",
                ],
            ),
        ])
        .await;

    let v = server.cli(&["version"]).await;
    v.expect_code(0);
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        v.stdout
            .contains(&format!("client  fleet-health {version}")),
        "{}",
        v.stdout
    );
    assert!(
        v.stdout.contains(&format!(
            "server  fleet-health-server {version} (durable, security off"
        )),
        "{}",
        v.stdout
    );
    let v = server.cli(&["version", "-o", "json"]).await.json();
    assert_eq!(v["server"]["version"], version);

    // -o yaml is the JSON shape as YAML.
    let yaml = server.cli(&["status", "web-1", "-o", "yaml"]).await;
    yaml.expect_code(0);
    assert!(yaml.stdout.contains("agent_id: web-1\n"), "{}", yaml.stdout);
    assert!(yaml.stdout.contains("site: eu"), "{}", yaml.stdout);

    // -l with commas: all must match; --label takes a value whole.
    let eu = server
        .cli(&["list", "--all", "-l", "site=eu,role=web", "-o", "ids"])
        .await;
    assert_eq!(eu.stdout, "web-1\n");
    let eu = server
        .cli(&["list", "--all", "-l", "site=eu", "-o", "ids"])
        .await;
    assert_eq!(eu.stdout, "db-1\nweb-1\n");

    // --sort-by state: faulty first; --no-headers: rows only.
    let rows = server
        .cli(&["list", "--all", "--sort-by", "state", "--no-headers"])
        .await;
    rows.expect_code(0);
    let first: Vec<&str> = rows
        .stdout
        .lines()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(first.len(), 3, "{}", rows.stdout);
    assert!(!rows.stdout.contains("AGENT"), "{}", rows.stdout);
    let states: Vec<&str> = rows
        .stdout
        .lines()
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    let mut sorted = states.clone();
    sorted.sort_by_key(|s| *s != "faulty");
    assert_eq!(states, sorted, "faulty first: {}", rows.stdout);

    // -o wide: more columns.
    let wide = server.cli(&["list", "--all", "-o", "wide"]).await;
    assert!(wide.stdout.starts_with("AGENT"), "{}", wide.stdout);
    for column in ["CONNECTED", "NEXT CHANGE", "INCARNATION", "FIRST SEEN"] {
        assert!(
            wide.stdout.lines().next().unwrap().contains(column),
            "{}",
            wide.stdout
        );
    }

    // HOST:PORT without a scheme.
    let bare = server.addr().to_string();
    let run = cli(&["--server", &bare, "summary", "-o", "json"]).await;
    run.expect_code(0);
    assert_eq!(run.json()["total"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_errors_say_the_cause_and_completions_and_man_pages_are_made() {
    let refused = cli(&["--server", "127.0.0.1:1", "list"]).await;
    refused.expect_code(3);
    assert!(
        refused.stderr.contains("Connection refused"),
        "{}",
        refused.stderr
    );
    assert!(
        refused
            .stderr
            .contains("is fleet-health-server running there?"),
        "{}",
        refused.stderr
    );

    for shell in ["bash", "zsh", "fish"] {
        let c = cli(&["completion", shell]).await;
        c.expect_code(0);
        assert!(c.stdout.contains("fleet-health"), "{shell}");
        assert!(
            c.stdout.contains("maintenance"),
            "{shell}: every command is in it"
        );
    }
    let page = cli(&["man"]).await;
    page.expect_code(0);
    assert!(
        page.stdout.starts_with(".ie"),
        "roff: {}",
        &page.stdout[..40.min(page.stdout.len())]
    );
    assert!(
        page.stdout.contains(".TH fleet-health 1"),
        "{}",
        page.stdout
    );
    let dir = tempfile::tempdir().expect("temp dir");
    cli(&["man", "--dir", dir.path().to_str().unwrap()])
        .await
        .expect_code(0);
    for name in [
        "fleet-health.1",
        "fleet-health-list.1",
        "fleet-health-remediate.1",
    ] {
        assert!(dir.path().join(name).is_file(), "{name}");
    }
}
