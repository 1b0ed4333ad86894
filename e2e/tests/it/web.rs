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
use fleet_health_e2e::postgres::Postgres;
use fleet_health_e2e::{Server, eventually, http_get};
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
                // The secured test's server has a certificate from its own CA.
                "--ignore-certificate-errors",
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

/// The agent IDs in the agents table of the page `c` shows.
async fn agent_ids(c: &Client) -> Vec<String> {
    let mut ids = Vec::new();
    for a in c
        .find_all(Locator::Css("#agents tbody tr td:first-child a"))
        .await
        .expect("rows")
    {
        ids.push(a.text().await.expect("text"));
    }
    ids
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
    let shown = agent_ids(&c).await;
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

    // A simulate-made fleet of 260 more: every page of the agents view,
    // followed by its "Next page" links, gives what `list` gives; so do a
    // search in the IDs and the order by time in state.
    let sim = server
        .cli(&[
            "simulate",
            "--agents",
            "260",
            "--duration",
            "2s",
            "--ramp-up",
            "1s",
            "-o",
            "json",
        ])
        .await;
    sim.expect_code(0);
    for (query, cli_args) in [
        ("state=all", vec!["list", "--all", "-o", "ids"]),
        (
            "state=all&q=sim-healthy-01",
            vec![
                "list",
                "--all",
                "--id-contains",
                "sim-healthy-01",
                "-o",
                "ids",
            ],
        ),
        (
            "state=active&sort=longest",
            vec!["list", "--sort-by", "since", "-o", "ids"],
        ),
        (
            "state=all&q=healthy&sort=newest",
            vec![
                "list",
                "--all",
                "--id-contains",
                "healthy",
                "--sort-by",
                "since",
                "-o",
                "ids",
            ],
        ),
    ] {
        let mut shown = Vec::new();
        let mut next = Some(format!("{base}/agents?{query}"));
        let mut pages = 0;
        while let Some(url) = next.take() {
            c.goto(&url).await.expect("opens");
            pages += 1;
            shown.extend(agent_ids(&c).await);
            if let Ok(link) = c.find(Locator::Id("next-page")).await {
                next = link
                    .attr("href")
                    .await
                    .expect("href")
                    .map(|h| format!("{base}{h}"));
            }
        }
        let listed = server.cli(&cli_args).await;
        listed.expect_code(0);
        let expected: Vec<String> = listed.stdout.lines().map(str::to_owned).collect();
        if query.ends_with("sort=newest") {
            // The same agents, latest change first (`list` has no such
            // order: its times, to the second, never go up down the page).
            let (mut a, mut b) = (shown.clone(), expected.clone());
            a.sort();
            b.sort();
            assert_eq!(a, b, "{query}");
            let times = since_of(&server, &shown).await;
            assert!(times.windows(2).all(|w| w[0] >= w[1]), "{query}: {times:?}");
        } else {
            assert_eq!(shown, expected, "{query}");
        }
        if query == "state=all" {
            assert!(pages >= 3, "{pages} pages");
        }
    }
    no_script_errors(&c).await;

    c.close().await.expect("closes");
}

/// Waits until `locator` is on the page `c` shows, for at most `limit`.
async fn appears(c: &Client, css: &str, limit: Duration) -> bool {
    tokio::time::timeout(limit, async {
        loop {
            if c.find(Locator::Css(css)).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .is_ok()
}

/// On a cluster, each node's view shows the whole fleet: the same counts
/// as `summary` from either node, every agent's page from either node
/// whichever node serves it, and an agent turning faulty through one node
/// appears on the other node's open overview without a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_view_of_a_cluster_shows_the_whole_fleet_from_any_node() {
    let pg = Postgres::start();
    let a = Server::start_node(&pg.url(), "a", "2s").await;
    let b = Server::start_node(&pg.url(), "b", "2s").await;
    for s in [&a, &b] {
        s.until_serving(2).await;
    }
    // Twenty agents over 1024 shards and two nodes: each node serves some.
    let ids: Vec<String> = (0..20).map(|i| format!("host-{i:02}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let via = if i % 2 == 0 { &a } else { &b };
        let labels: &[&str] = if i % 5 == 0 {
            &[]
        } else {
            &["--label", "site=eu"]
        };
        via.report(id, "heartbeat", labels).await;
    }
    let summary = a.cli(&["summary", "-o", "json"]).await.json();
    assert_eq!(summary["total"], 20, "{summary}");

    let (_driver, driver_url) = chromedriver().await;
    let profile = tempfile::tempdir().expect("profile");
    let c = browser(&driver_url, profile.path()).await;
    for node in [&b, &a] {
        c.goto(&format!("http://{}/", node.http_addr()))
            .await
            .expect("opens");
        assert_eq!(text(&c, "#count-total").await, "20");
        assert_eq!(
            text(&c, "#count-faulty").await,
            summary["faulty"].to_string()
        );
        assert!(
            c.find(Locator::Id("incomplete")).await.is_err(),
            "the whole fleet answered"
        );
    }
    std::fs::write(
        shots().join("cluster-overview.png"),
        c.screenshot().await.expect("png"),
    )
    .expect("saved");
    no_script_errors(&c).await;

    // Every agent's page, from node a, whichever node serves it.
    for id in &ids {
        let page = http_get(&a.http_addr(), &format!("/agents/{id}")).await;
        assert!(page.starts_with("HTTP/1.1 200"), "{id}: {page}");
        assert!(page.contains(id.as_str()), "{id}");
    }

    // Agents turning faulty through node b appear on a's open overview,
    // without a reload.
    c.execute("window.__stayed = true;", vec![])
        .await
        .expect("marks the page");
    let late: Vec<String> = (0..4).map(|i| format!("late-{i}")).collect();
    for id in &late {
        b.report(id, "heartbeat", &[]).await;
    }
    for id in &late {
        assert!(
            appears(
                &c,
                &format!("#faulty-agents a[href='/agents/{id}']"),
                Duration::from_secs(3)
            )
            .await,
            "{id} appeared on node a's page"
        );
    }
    assert_eq!(
        c.execute("return window.__stayed === true;", vec![])
            .await
            .expect("runs"),
        json!(true),
        "the page was not reloaded"
    );

    // The agents page, filtered, gives what `list` gives from either node.
    c.goto(&format!(
        "http://{}/agents?state=all&label=site%3Deu",
        a.http_addr()
    ))
    .await
    .expect("opens");
    let shown = agent_ids(&c).await;
    let listed = b
        .cli(&["list", "--all", "--label", "site=eu", "-o", "ids"])
        .await;
    assert_eq!(shown.join("\n") + "\n", listed.stdout);
    assert_eq!(shown.len(), 16);
    // Sorted by time in state, merged from both nodes' parts.
    c.goto(&format!(
        "http://{}/agents?state=all&sort=longest",
        a.http_addr()
    ))
    .await
    .expect("opens");
    let sorted = agent_ids(&c).await;
    assert_eq!(sorted.len(), 24);
    let times = since_of(&b, &sorted).await;
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    no_script_errors(&c).await;
    c.close().await.expect("closes");
}

/// The `since` of each of `ids` (RFC 3339, to the second), as `list`
/// gives it.
async fn since_of(server: &Server, ids: &[String]) -> Vec<String> {
    let all = server.cli(&["list", "--all", "-o", "json"]).await.json();
    let agents = all.as_array().expect("a JSON array of agents");
    ids.iter()
        .map(|id| {
            agents
                .iter()
                .find(|a| a["agent_id"] == id.as_str())
                .and_then(|a| a["since"].as_str())
                .expect("listed, with a since")
                .to_owned()
        })
        .collect()
}

/// A file in the test's CA folder.
fn p(dir: &std::path::Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

/// One HTTP/1.1 GET over TLS to `addr`, trusting the CA in `dir`, with the
/// client certificate `DIR/WHO.pem` if `who` is given: the whole answer.
async fn https_get(addr: &str, dir: &std::path::Path, who: Option<&str>, path: &str) -> String {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(dir.join("ca.pem")).expect("ca") {
        roots.add(c.expect("ca cert")).expect("a CA");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS")
        .with_root_certificates(roots);
    let config = match who {
        Some(who) => {
            let chain = CertificateDer::pem_file_iter(dir.join(format!("{who}.pem")))
                .expect("cert")
                .collect::<Result<Vec<_>, _>>()
                .expect("certs");
            let key = PrivateKeyDer::from_pem_file(dir.join(format!("{who}.key"))).expect("key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client auth")
        }
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("a TLS handshake");
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("writes");
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The browser's path now.
async fn path_now(c: &Client) -> String {
    c.current_url().await.expect("url").path().to_owned()
}

/// Clicks the button with ID `id` and waits for the page it leads to.
async fn submit(c: &Client, id: &str) {
    c.execute("window.__old = true;", vec![])
        .await
        .expect("marks the page");
    c.find(Locator::Id(id))
        .await
        .expect("the button")
        .click()
        .await
        .expect("clicks");
    eventually("the next page", Duration::from_secs(10), || async {
        let done = c
            .execute(
                "return window.__old === undefined && document.readyState === 'complete';",
                vec![],
            )
            .await
            .ok()?;
        (done == json!(true)).then_some(())
    })
    .await;
}

/// Signs in on the form in front of the browser with `token`.
async fn sign_in(c: &Client, token: &str) {
    c.find(Locator::Id("token"))
        .await
        .expect("the token field")
        .send_keys(token)
        .await
        .expect("types");
    submit(c, "sign-in").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_security_on_the_web_view_needs_a_reader() {
    use fleet_health_e2e::cli;

    let pki = tempfile::tempdir().expect("dir");
    let d = pki.path();
    let dir = d.display().to_string();
    cli(&["pki", "init", &dir]).await.expect_code(0);
    for args in [
        &[
            "pki", "issue", "operator", "alice", "--role", "reader", "--dir", &dir,
        ][..],
        &[
            "pki", "issue", "operator", "root", "--role", "admin", "--dir", &dir,
        ][..],
        &["pki", "issue", "agent", "web-1", "--dir", &dir][..],
    ] {
        cli(args).await.expect_code(0);
    }
    let tokens = p(d, "tokens.toml");
    let mut secrets = Vec::new();
    for (name, role) in [("ops", "reader"), ("night", "reader"), ("edge", "relay")] {
        let mut args = vec![
            "token",
            "create",
            name,
            "--role",
            role,
            "--tokens-file",
            &tokens,
        ];
        if role == "relay" {
            args.extend(["--agents", "edge-*"]);
        }
        let made = cli(&args).await;
        made.expect_code(0);
        secrets.push(made.stdout.trim().to_owned());
    }
    let (ops, night, edge) = (&secrets[0], &secrets[1], &secrets[2]);
    let server = Server::start(&[
        "--tls-cert",
        &p(d, "server.pem"),
        "--tls-key",
        &p(d, "server.key"),
        "--client-ca",
        &p(d, "ca.pem"),
        "--tokens",
        &tokens,
        "--metrics-listen",
        "127.0.0.1:0",
        "--web-listen",
        "127.0.0.1:0",
    ])
    .await;
    let url = server.https_url();
    let admin = |args: &[&str]| -> Vec<String> {
        let mut all: Vec<String> = [
            "--server",
            &url,
            "--ca",
            &p(d, "ca.pem"),
            "--cert",
            &p(d, "admin-root.pem"),
            "--key",
            &p(d, "admin-root.key"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        all.extend(args.iter().map(|s| s.to_string()));
        all
    };
    let run = |args: Vec<String>| async move {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        cli(&refs).await
    };
    run(admin(&["report", "--agent", "web-1", "starting"]))
        .await
        .expect_code(0);
    let web = server.web_addr();

    // Without credentials: nothing of the fleet, a way to sign in.
    let bare = https_get(&web, d, None, "/agents").await;
    assert!(bare.starts_with("HTTP/1.1 303"), "{bare}");
    assert!(
        bare.to_ascii_lowercase()
            .contains("\r\nlocation: /login?next=%2fagents\r\n"),
        "{bare}"
    );
    assert!(!bare.contains("web-1"), "{bare}");
    let events = https_get(&web, d, None, "/events").await;
    assert!(events.starts_with("HTTP/1.1 401"), "{events}");
    let live = https_get(&web, d, None, "/?part=main").await;
    assert!(live.starts_with("HTTP/1.1 401"), "{live}");
    // A reader's certificate is enough; an agent's is refused.
    let by_cert = https_get(&web, d, Some("reader-alice"), "/agents/web-1").await;
    assert!(by_cert.starts_with("HTTP/1.1 200"), "{by_cert}");
    assert!(by_cert.contains("reader/alice (certificate)"), "{by_cert}");
    assert!(
        by_cert
            .to_ascii_lowercase()
            .contains("\r\nstrict-transport-security:"),
        "{by_cert}"
    );
    let by_agent = https_get(&web, d, Some("agent-web-1"), "/").await;
    assert!(by_agent.starts_with("HTTP/1.1 403"), "{by_agent}");
    assert!(by_agent.contains("needs a reader"), "{by_agent}");
    // Plaintext: the web port says to use https, the metrics port where the
    // view is, and neither shows the fleet.
    let plain = http_get(&web, "/").await;
    assert!(plain.starts_with("HTTP/1.1 400"), "{plain}");
    assert!(plain.contains("https://"), "{plain}");
    let metrics_port = http_get(&server.http_addr(), "/agents").await;
    assert!(metrics_port.starts_with("HTTP/1.1 403"), "{metrics_port}");
    assert!(
        metrics_port.contains(&format!("https://{web}/")),
        "{metrics_port}"
    );

    // In the browser: the sign-in form, a wrong token, a relay's, a reader's.
    let (_driver, driver_url) = chromedriver().await;
    let profile = tempfile::tempdir().expect("profile");
    let c = browser(&driver_url, profile.path()).await;
    let base = format!("https://{web}");
    c.goto(&format!("{base}/agents?state=all"))
        .await
        .expect("opens");
    assert_eq!(path_now(&c).await, "/login");
    std::fs::write(
        shots().join("login.png"),
        c.screenshot().await.expect("png"),
    )
    .expect("saved");
    no_script_errors(&c).await;
    sign_in(&c, "fht_not-a-token").await;
    let refused = text(&c, "#error").await;
    assert!(refused.contains("not known"), "a wrong token: {refused}");
    sign_in(&c, edge).await;
    let refused = text(&c, "#error").await;
    assert!(refused.contains("relay/edge"), "a relay's token: {refused}");
    sign_in(&c, ops).await;
    assert_eq!(
        path_now(&c).await,
        "/agents",
        "back where the reader was going"
    );
    assert_eq!(text(&c, "#who").await, "reader/ops (token)");
    assert!(text(&c, "#agents").await.contains("web-1"));
    no_script_errors(&c).await;
    // The cookie: the token, for scripts unreadable, over TLS only, never
    // sent along by another site.
    let cookies = c.get_all_cookies().await.expect("cookies");
    let kept = cookies
        .iter()
        .find(|k| k.name() == "fleet_health_token")
        .expect("the sign-in cookie");
    assert_eq!(kept.http_only(), Some(true));
    assert_eq!(kept.secure(), Some(true));
    assert_eq!(kept.same_site(), Some(cookie::SameSite::Strict));
    let visible = c
        .execute("return document.cookie;", vec![])
        .await
        .expect("runs");
    assert!(!visible.to_string().contains("fht_"), "{visible}");

    // Live over TLS: an agent turning faulty appears without a reload.
    c.goto(&format!("{base}/")).await.expect("opens");
    run(admin(&["report", "--agent", "cache-9", "heartbeat"]))
        .await
        .expect_code(0);
    let appeared = tokio::time::timeout(Duration::from_secs(2), async {
        while c
            .find(Locator::Css("#faulty-agents a[href='/agents/cache-9']"))
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(appeared.is_ok(), "cache-9 appeared within 2 s");

    // The token revoked: the open page goes to the sign-in form by itself.
    cli(&["token", "revoke", "ops", "--tokens-file", &tokens])
        .await
        .expect_code(0);
    eventually(
        "the page leaves for sign-in",
        Duration::from_secs(10),
        || async { (path_now(&c).await == "/login").then_some(()) },
    )
    .await;
    no_script_errors(&c).await;

    // Another reader signs in, then out; the view is closed again.
    sign_in(&c, night).await;
    assert_eq!(text(&c, "#who").await, "reader/night (token)");
    submit(&c, "sign-out").await;
    assert_eq!(path_now(&c).await, "/login");
    c.goto(&format!("{base}/")).await.expect("opens");
    assert_eq!(path_now(&c).await, "/login");
    c.close().await.expect("closes");
}
