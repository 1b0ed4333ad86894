//! The web view in a real browser: headless Chromium driven over WebDriver
//! (Debian's `chromium` and `chromium-driver`; CI installs them) against the
//! real server binary. The overview's counts are `summary`'s; an agent
//! turning faulty appears on the open page without a reload; the agents
//! page's filters give what `list` gives; an agent's page shows its
//! history; the storm banner shows in a storm; no script error. Each page
//! is saved as a screenshot in target/web-screenshots/.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use fleet_health_e2e::{Server, eventually};
use serde_json::json;

/// chromedriver on a free loopback port, killed when dropped.
async fn chromedriver() -> (tokio::process::Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = tokio::process::Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect(
            "chromedriver must be installed for the browser tests \
             (Debian: apt-get install chromium chromium-driver)",
        );
    let url = format!("http://127.0.0.1:{port}");
    eventually("chromedriver listens", Duration::from_secs(20), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    (child, url)
}

async fn browser(driver: &str, profile: &std::path::Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                "--window-size=1200,900",
                format!("--user-data-dir={}", profile.display()),
            ]
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(driver)
        .await
        .expect("a browser session")
}

fn shots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/web-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot folder");
    dir
}

async fn text(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css))
        .await
        .expect(css)
        .text()
        .await
        .expect("text")
}

async fn no_script_errors(c: &Client) {
    let errors = c
        .execute("return window.__errors;", vec![])
        .await
        .expect("runs");
    assert_eq!(errors, json!([]), "script errors on the page");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_view_in_a_real_browser() {
    let server = Server::start(&["--metrics-listen", "127.0.0.1:0"]).await;
    server
        .report_all(&[
            (
                "web-1",
                &[
                    "starting --at -2h --label site=eu",
                    "server_data_sent --at -1h",
                    "server_data_received --at -1h",
                ],
            ),
            (
                "web-2",
                &[
                    "starting --at -9h --label site=eu",
                    "server_data_received --at -1h",
                ],
            ),
            ("db-1", &["heartbeat --label site=us"]),
        ])
        .await;
    let base = format!("http://{}", server.http_addr());
    let (_driver, driver_url) = chromedriver().await;
    let profile = tempfile::tempdir().expect("profile");
    let c = browser(&driver_url, profile.path()).await;

    // The overview's counts are the summary's.
    c.goto(&format!("{base}/")).await.expect("opens");
    let summary = server.cli(&["summary", "-o", "json"]).await.json();
    assert_eq!(text(&c, "#count-total").await, summary["total"].to_string());
    assert_eq!(
        text(&c, "#count-faulty").await,
        summary["faulty"].to_string()
    );
    assert_eq!(
        text(&c, "#count-healthy").await,
        summary["healthy"].to_string()
    );
    std::fs::write(
        shots().join("overview.png"),
        c.screenshot().await.expect("png"),
    )
    .expect("saved");
    no_script_errors(&c).await;

    // An agent turning faulty appears without a reload.
    c.execute("window.__stayed = true;", vec![])
        .await
        .expect("marks the page");
    server.report("cache-9", "heartbeat", &[]).await;
    let appeared = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            if let Ok(e) = c
                .find(Locator::Css("#faulty-agents a[href='/agents/cache-9']"))
                .await
            {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(appeared.is_ok(), "cache-9 appeared within 2 s");
    assert_eq!(
        c.execute("return window.__stayed === true;", vec![])
            .await
            .expect("runs"),
        json!(true),
        "the page was not reloaded"
    );

    // The agents page's filters give what `list` gives.
    c.goto(&format!("{base}/agents?state=faulty&label=site%3Dus"))
        .await
        .expect("opens");
    let shown: Vec<String> = {
        let mut ids = Vec::new();
        for a in c
            .find_all(Locator::Css("#agents tbody tr td:first-child a"))
            .await
            .expect("rows")
        {
            ids.push(a.text().await.expect("text"));
        }
        ids
    };
    let listed = server
        .cli(&["list", "--faulty", "--label", "site=us", "-o", "ids"])
        .await;
    assert_eq!(shown.join("\n") + "\n", listed.stdout);
    std::fs::write(
        shots().join("agents.png"),
        c.screenshot().await.expect("png"),
    )
    .expect("saved");
    no_script_errors(&c).await;

    // One agent's page: its history.
    c.goto(&format!("{base}/agents/web-2"))
        .await
        .expect("opens");
    assert_eq!(text(&c, "#why").await, "no data sent to server");
    let rows = c
        .find_all(Locator::Css("#history tbody tr"))
        .await
        .expect("history");
    assert!(rows.len() >= 2, "its transitions");
    std::fs::write(
        shots().join("agent.png"),
        c.screenshot().await.expect("png"),
    )
    .expect("saved");
    no_script_errors(&c).await;

    // A storm: ten more agents heard once, all faulty.
    let more: Vec<String> = (0..10).map(|i| format!("edge-{i}")).collect();
    let events: &[&str] = &["heartbeat"];
    let agents: Vec<(&str, &[&str])> = more.iter().map(|a| (a.as_str(), events)).collect();
    server.report_all(&agents).await;
    c.goto(&format!("{base}/")).await.expect("opens");
    assert!(text(&c, "#storm").await.starts_with("STORM:"));
    c.close().await.expect("closes");
}
