//! `fleet-health watch` when the server goes away: it reconnects and resumes
//! after a restart, and exits 3 with a clear message when the server does not
//! come back within `--reconnect-for`.

use std::time::Duration;

use fleet_health_e2e::{Proxy, Server, cli_command};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

/// The longest a watch may take to print its next line.
const LINE_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `fleet-health watch -o ndjson`.
struct Watching {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Watching {
    fn start(url: &str, extra: &[&str]) -> Watching {
        let mut args = vec!["watch", "-o", "ndjson", "--server", url];
        args.extend_from_slice(extra);
        let mut child = cli_command(&args).spawn().expect("start watch");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Watching { child, lines }
    }

    /// The next message; panics if the watch ends or is silent too long.
    async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(LINE_TIMEOUT, self.lines.next_line())
            .await
            .expect("watch prints in time")
            .expect("read watch")
            .expect("watch still running");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// The agents' reasons of a snapshot, up to its `synced`.
    async fn snapshot(&mut self) -> Vec<(String, Value)> {
        let mut agents = Vec::new();
        loop {
            let msg = self.next().await;
            match msg["type"].as_str() {
                Some("snapshot") => agents.push((
                    msg["agent"]["agent_id"].as_str().unwrap().to_owned(),
                    msg["agent"]["why"].clone(),
                )),
                Some("synced") => return agents,
                _ => panic!("in a snapshot: {msg}"),
            }
        }
    }

    /// Waits for the watch to exit; its exit code and stderr.
    async fn exit(mut self) -> (Option<i32>, String) {
        let status = tokio::time::timeout(LINE_TIMEOUT, self.child.wait())
            .await
            .expect("watch exits in time")
            .expect("wait for watch");
        let mut stderr = String::new();
        self.child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut stderr)
            .await
            .expect("read stderr");
        (status.code(), stderr)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_after_the_server_is_killed_and_restarted() {
    let mut server = Server::start(&[]).await;
    server.report("r-1", "starting", &[]).await;
    // The watch reaches the server through a relay that keeps its address
    // when the server restarts on a new port: to the watch it is the same
    // server at the same address.
    let proxy = Proxy::start(server.addr()).await;
    let mut watch = Watching::start(&proxy.url(), &[]);
    assert_eq!(watch.snapshot().await, [("r-1".into(), json!("all is ok"))]);

    // Killed: nothing answers at the address for a while.
    proxy.set_target(None);
    server.kill9().await;
    proxy.cut();
    server.restart().await;
    proxy.set_target(Some(server.addr()));

    // The watch says it starts over, then shows the state after the restart.
    let resync = watch.next().await;
    assert_eq!(
        resync,
        json!({"type": "resync", "missed": null, "reconnected": true})
    );
    assert_eq!(watch.snapshot().await, [("r-1".into(), json!("all is ok"))]);

    // And goes on with the agent's later change.
    server.report("r-1", "shutting_down", &[]).await;
    let changed = loop {
        let msg = watch.next().await;
        assert_eq!(msg["type"], json!("changed"), "{msg}");
        assert_eq!(msg["agent"]["agent_id"], json!("r-1"), "{msg}");
        if msg["agent"]["why"] != json!("all is ok") {
            break msg;
        }
    };
    assert_eq!(changed["agent"]["why"], json!("shutdown is in progress"));

    watch.child.start_kill().expect("stop watch");
    let (_, stderr) = watch.exit().await;
    assert!(stderr.contains("lost the server"), "{stderr}");
    assert!(stderr.contains("reconnecting for up to 2m"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_exits_3_when_the_server_is_gone_for_good() {
    let mut server = Server::start(&[]).await;
    server.report("g-1", "starting", &[]).await;
    let mut watch = Watching::start(&server.url(), &["--reconnect-for", "2s"]);
    assert_eq!(watch.snapshot().await, [("g-1".into(), json!("all is ok"))]);

    server.kill9().await;
    let (code, stderr) = watch.exit().await;
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains("fleet-health: lost the server (the connection to the server broke)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("the server did not come back within 2s"),
        "{stderr}"
    );
    assert!(!stderr.contains("h2 protocol error"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_that_cannot_start_exits_3_at_once() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    drop(listener);
    let watch = Watching::start(&url, &["--timeout", "2s"]);
    let (code, stderr) = watch.exit().await;
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("unreachable"), "{stderr}");
    assert!(!stderr.contains("reconnecting"), "{stderr}");
}
