//! The server binary as an operator's tools see it: systemd's notifications
//! (`Type=notify` with a watchdog) and `fleet-health-server probe` against
//! `/readyz` and `/healthz`.

use std::time::Duration;

use fleet_health_e2e::{Server, binary};
use tokio::net::UnixDatagram;

/// The metrics address the server logged at start.
fn metrics_addr(server: &Server) -> String {
    server
        .logs()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v["fields"]["metrics"].as_str().map(str::to_owned))
        .expect("the server logs its metrics address")
}

async fn probe(url: &str) -> std::process::Output {
    tokio::process::Command::new(binary("fleet-health-server"))
        .args(["probe", url])
        .output()
        .await
        .expect("runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_watchdog_pings_and_stopping_and_the_probe_answers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("binds");
    let path = socket_path.to_str().expect("utf-8");
    let server = Server::start_with_env(
        &["--metrics-listen", "127.0.0.1:0"],
        &[("NOTIFY_SOCKET", path), ("WATCHDOG_USEC", "200000")],
    )
    .await;
    let mut buf = [0u8; 256];
    let mut heard = Vec::new();
    // READY=1, then pings at half the watchdog interval (100 ms).
    while heard
        .iter()
        .filter(|m: &&String| *m == "WATCHDOG=1")
        .count()
        < 3
    {
        let n = tokio::time::timeout(Duration::from_secs(10), socket.recv(&mut buf))
            .await
            .expect("systemd hears from the server in time")
            .expect("receives");
        heard.push(String::from_utf8_lossy(&buf[..n]).trim().to_owned());
    }
    assert_eq!(heard[0], "READY=1", "{heard:?}");

    let metrics = metrics_addr(&server);
    let ready = probe(&format!("http://{metrics}/readyz")).await;
    assert!(ready.status.success(), "{ready:?}");
    assert_eq!(String::from_utf8_lossy(&ready.stdout), "ready\n");
    let live = probe(&format!("http://{metrics}/healthz")).await;
    assert!(live.status.success(), "{live:?}");
    let missing = probe(&format!("http://{metrics}/nothing-here")).await;
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("answered 404"),
        "{missing:?}"
    );

    // SIGTERM: STOPPING=1 before the process ends.
    let pid = server.pid().to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .expect("kill runs");
    assert!(killed.success());
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), socket.recv(&mut buf))
            .await
            .expect("systemd hears that the server stops")
            .expect("receives");
        if String::from_utf8_lossy(&buf[..n]).trim() == "STOPPING=1" {
            break;
        }
    }
    drop(server);
    let down = probe(&format!("http://{metrics}/readyz")).await;
    assert!(!down.status.success(), "nothing listens any more");
}
