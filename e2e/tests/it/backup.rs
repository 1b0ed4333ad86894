//! `fleet-health-server backup` and `restore` with the real binaries: a
//! backup taken while a simulated fleet keeps the server busy, restored
//! into an empty data directory; a server started on it answers as the
//! original did for the agents that were still; the refusals.

use std::collections::BTreeMap;
use std::time::Duration;

use fleet_health_e2e::{Server, binary, data_dir};
use serde_json::Value;

async fn server_cmd(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(binary("fleet-health-server"))
        .args(args)
        .output()
        .await
        .expect("runs")
}

/// `agent_id -> agent` of `list --all -o json`, for the still agents.
async fn still(server: &Server) -> BTreeMap<String, Value> {
    let run = server.cli(&["list", "--all", "-o", "json"]).await;
    run.expect_code(0);
    run.json()
        .as_array()
        .expect("an array")
        .iter()
        .filter(|a| {
            a["agent_id"]
                .as_str()
                .is_some_and(|id| id.starts_with("still-"))
        })
        .map(|a| {
            let mut a = a.clone();
            // Evaluated at another moment, and not connected after a restart.
            for volatile in ["evaluated_at", "connected", "next_change"] {
                a.as_object_mut().expect("an object").remove(volatile);
            }
            (a["agent_id"].as_str().unwrap().to_owned(), a)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_restores_into_an_empty_data_dir_with_the_same_statuses() {
    let server = Server::start(&[]).await;
    // Agents in several states, which nothing changes after.
    server
        .report_all(&[
            (
                "still-ok",
                &[
                    "starting --at -2h",
                    "server_data_sent --at -1h",
                    "server_data_received --at -1h",
                ],
            ),
            (
                "still-unsent",
                &["starting --at -8h", "server_data_received --at -1h"],
            ),
            (
                "still-stuck",
                &["starting --at -2h", "shutting_down --at -1h"],
            ),
            ("still-stopped", &["starting --at -2h", "stopped --at -1h"]),
        ])
        .await;
    server
        .cli(&[
            "maintenance",
            "set",
            "still-unsent",
            "--reason",
            "disk swap",
            "--for",
            "1h",
        ])
        .await
        .expect_code(0);
    let before = still(&server).await;
    assert_eq!(before.len(), 4);

    // A simulated fleet keeps the server busy while the backup is taken.
    let mut load = server
        .cli_command(&[
            "simulate",
            "--agents",
            "300",
            "--rate",
            "0",
            "--prefix",
            "load-",
            "--duration",
            "20s",
            "--ramp-up",
            "0s",
        ])
        .kill_on_drop(true)
        .spawn()
        .expect("the load starts");
    // Wait until the load's agents are known (without sleeping blindly).
    fleet_health_e2e::eventually("the load is running", Duration::from_secs(20), || async {
        let s = server.cli(&["summary", "-o", "json"]).await.json();
        (s["total"].as_u64().unwrap_or(0) >= 100).then_some(())
    })
    .await;
    let backup_dir = tempfile::tempdir().expect("temp dir");
    let target = backup_dir.path().join("backup");
    let target_s = target.to_str().unwrap();
    let url = server.url();
    let out = server_cmd(&["backup", target_s, "--server", &url]).await;
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.starts_with("backed up "), "{said}");
    let copied: u64 = said
        .split_whitespace()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .expect("a count");
    assert!(copied >= 104, "{said}");
    load.kill().await.expect("the load stops");

    // A second backup into the same directory is refused.
    let again = server_cmd(&["backup", target_s, "--server", &url]).await;
    assert_eq!(again.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already holds a data directory"),
        "{again:?}"
    );

    // Restore into an empty data directory; a server on it answers the same.
    let restored = data_dir();
    let to = restored.path().to_path_buf();
    let out = server_cmd(&["restore", target_s, "--data-dir", to.to_str().unwrap()]).await;
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with(&format!("restored {copied} agents")),
        "{out:?}"
    );
    let again = server_cmd(&["restore", target_s, "--data-dir", to.to_str().unwrap()]).await;
    assert_eq!(
        again.status.code(),
        Some(1),
        "a data directory with data is refused"
    );
    let twin = Server::start_in(restored, &[], &[]).await;
    let after = still(&twin).await;
    assert_eq!(after, before);
    let summary = twin.cli(&["summary", "-o", "json"]).await.json();
    assert_eq!(summary["total"].as_u64(), Some(copied));
    assert_eq!(summary["maintenance"].as_u64(), Some(1));

    // An unfinished backup is refused.
    std::fs::write(target.join("INCOMPLETE"), "").expect("writes");
    let empty = tempfile::tempdir().expect("temp dir");
    let out = server_cmd(&[
        "restore",
        target_s,
        "--data-dir",
        empty.path().to_str().unwrap(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("did not finish"),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_in_memory_has_nothing_to_back_up() {
    let server = Server::start(&["--in-memory"]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let target = dir.path().join("b");
    let out = server_cmd(&[
        "backup",
        target.to_str().unwrap(),
        "--server",
        &server.url(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in memory only"),
        "{out:?}"
    );
}
