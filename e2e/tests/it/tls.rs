//! The secured set-up with the real binaries, as the README walks it: `pki
//! init`, a TLS server with client certificates and a tokens file, an agent
//! reporting with its certificate, a reader, an admin, tokens, contexts, and
//! the error (and exit code) for each thing a user gets wrong.

use std::path::Path;

use fleet_health_e2e::{Server, binary, cli, cli_command, eventually};

fn p(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

/// The server's TLS flags for the CA in `dir` (as `pki init` made it).
fn tls_args(dir: &Path) -> Vec<String> {
    vec![
        "--tls-cert".into(),
        p(dir, "server.pem"),
        "--tls-key".into(),
        p(dir, "server.key"),
        "--client-ca".into(),
        p(dir, "ca.pem"),
    ]
}

/// `fleet-health --server URL --ca CA --cert NAME.pem --key NAME.key ARGS`.
fn as_who<'a>(url: &'a str, dir: &Path, who: &str, args: &[&'a str]) -> Vec<String> {
    let mut all: Vec<String> = vec![
        "--server".into(),
        url.into(),
        "--ca".into(),
        p(dir, "ca.pem"),
        "--cert".into(),
        p(dir, &format!("{who}.pem")),
        "--key".into(),
        p(dir, &format!("{who}.key")),
    ];
    all.extend(args.iter().map(|s| s.to_string()));
    all
}

async fn run(args: &[String]) -> fleet_health_e2e::Run {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    cli(&refs).await
}

#[tokio::test]
async fn a_secured_fleet_from_pki_init_to_a_reader() {
    let pki = tempfile::tempdir().expect("dir");
    let d = pki.path();
    let dir = d.display().to_string();
    cli(&["pki", "init", &dir]).await.expect_code(0);
    cli(&["pki", "issue", "agent", "web-1", "--dir", &dir])
        .await
        .expect_code(0);
    cli(&[
        "pki", "issue", "operator", "alice", "--role", "reader", "--dir", &dir,
    ])
    .await
    .expect_code(0);
    cli(&[
        "pki", "issue", "operator", "root", "--role", "admin", "--dir", &dir,
    ])
    .await
    .expect_code(0);
    let tokens = p(d, "tokens.toml");
    let created = cli(&[
        "token",
        "create",
        "ci",
        "--role",
        "reader",
        "--tokens-file",
        &tokens,
    ])
    .await;
    created.expect_code(0);
    let secret = created.stdout.trim().to_string();
    assert!(secret.starts_with("fht_"), "{}", created.stdout);

    let mut args = tls_args(d);
    args.extend([
        "--crl".into(),
        p(d, "crl.pem"),
        "--trust-domain".into(),
        "fleet-health.local".into(),
        "--tokens".into(),
        tokens.clone(),
    ]);
    let server = Server::start(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let url = server.https_url();

    // The agent reports for itself.
    run(&as_who(
        &url,
        d,
        "agent-web-1",
        &["report", "--agent", "web-1", "starting"],
    ))
    .await
    .expect_code(0);
    // ...and for nobody else: exit 7, and the message says why.
    let other = run(&as_who(
        &url,
        d,
        "agent-web-1",
        &["report", "--agent", "web-2", "starting"],
    ))
    .await;
    other.expect_code(7);
    assert!(
        other.stderr.contains("may report only for web-1"),
        "{}",
        other.stderr
    );

    // The reader reads, and may not forget.
    let list = run(&as_who(
        &url,
        d,
        "reader-alice",
        &["list", "--all", "-o", "ids"],
    ))
    .await;
    list.expect_code(0);
    assert_eq!(list.stdout.trim(), "web-1");
    let forget = run(&as_who(&url, d, "reader-alice", &["forget", "web-1"])).await;
    forget.expect_code(7);
    assert!(forget.stderr.contains("admin"), "{}", forget.stderr);

    // A token reads too.
    cli(&[
        "--server",
        &url,
        "--ca",
        &p(d, "ca.pem"),
        "--token",
        &secret,
        "summary",
    ])
    .await
    .expect_code(0);
    // No credentials: exit 6.
    let anon = cli(&["--server", &url, "--ca", &p(d, "ca.pem"), "summary"]).await;
    anon.expect_code(6);
    assert!(anon.stderr.contains("no credentials"), "{}", anon.stderr);
    // A wrong token: exit 6.
    cli(&[
        "--server",
        &url,
        "--ca",
        &p(d, "ca.pem"),
        "--token",
        "fht_nope",
        "summary",
    ])
    .await
    .expect_code(6);

    // The wrong CA: exit 8, and the message says to check --ca.
    let other_pki = tempfile::tempdir().expect("dir");
    let other_dir = other_pki.path().display().to_string();
    cli(&["pki", "init", &other_dir]).await.expect_code(0);
    let wrong_ca = cli(&[
        "--server",
        &url,
        "--ca",
        &p(other_pki.path(), "ca.pem"),
        "--token",
        &secret,
        "summary",
    ])
    .await;
    wrong_ca.expect_code(8);
    assert!(wrong_ca.stderr.contains("--ca"), "{}", wrong_ca.stderr);
    // TLS settings with an http:// URL: a usage error before anything is sent.
    let plain = cli(&[
        "--server",
        &server.url(),
        "--ca",
        &p(d, "ca.pem"),
        "summary",
    ])
    .await;
    plain.expect_code(2);
    assert!(plain.stderr.contains("https://"), "{}", plain.stderr);

    // Plaintext to the TLS server, and TLS to a plaintext one: exit 8, and
    // the message says which scheme to use.
    let plain_to_tls = cli(&["--server", &server.url(), "summary"]).await;
    plain_to_tls.expect_code(8);
    assert!(
        plain_to_tls.stderr.contains("https://"),
        "{}",
        plain_to_tls.stderr
    );
    let plaintext = Server::start(&[]).await;
    let tls_to_plain = cli(&[
        "--server",
        &plaintext.https_url(),
        "--ca",
        &p(d, "ca.pem"),
        "summary",
    ])
    .await;
    tls_to_plain.expect_code(8);
    assert!(
        tls_to_plain.stderr.contains("http://"),
        "{}",
        tls_to_plain.stderr
    );

    // A revoked certificate: refused at its next connection, exit 8.
    cli(&["pki", "revoke", &p(d, "reader-alice.pem"), "--dir", &dir])
        .await
        .expect_code(0);
    let refused = eventually(
        "the revoked certificate is refused",
        std::time::Duration::from_secs(10),
        || async {
            let r = run(&as_who(&url, d, "reader-alice", &["summary"])).await;
            (r.code == Some(8)).then_some(r.stderr)
        },
    )
    .await;
    // The server's alert reaches the client: it says why.
    assert!(refused.contains("it is revoked"), "{refused}");

    // The admin forgets; the forget is in the audit log, beside the denials.
    run(&as_who(&url, d, "admin-root", &["forget", "web-1"]))
        .await
        .expect_code(0);
    let audit = std::fs::read_to_string(server.data_dir().join("audit.log")).expect("an audit log");
    let lines: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON lines"))
        .collect();
    assert!(
        lines.iter().any(|l| l["event"] == "admin"
            && l["identity"] == "admin/root"
            && l["agent_id"] == "web-1"),
        "{audit}"
    );
    assert!(
        lines.iter().any(|l| l["event"] == "denied"
            && l["reason"] == "role"
            && l["identity"] == "reader/alice"),
        "{audit}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["event"] == "denied" && l["reason"] == "wrong_agent"),
        "{audit}"
    );

    // A revoked token stops working (the server reloads the file).
    cli(&["token", "revoke", "ci", "--tokens-file", &tokens])
        .await
        .expect_code(0);
    eventually(
        "the removed token is refused",
        std::time::Duration::from_secs(10),
        || async {
            let r = cli(&[
                "--server",
                &url,
                "--ca",
                &p(d, "ca.pem"),
                "--token",
                &secret,
                "summary",
            ])
            .await;
            (r.code == Some(6)).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn contexts_save_the_flags() {
    let pki = tempfile::tempdir().expect("dir");
    let d = pki.path();
    let dir = d.display().to_string();
    cli(&["pki", "init", &dir]).await.expect_code(0);
    cli(&[
        "pki", "issue", "operator", "ops", "--role", "reader", "--dir", &dir,
    ])
    .await
    .expect_code(0);
    let args = tls_args(d);
    let server = Server::start(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let config = d.join("config.toml");
    let with_config = |args: &[&str]| {
        let mut cmd = cli_command(args);
        cmd.env("FLEET_HEALTH_CONFIG", &config);
        cmd
    };
    let out = with_config(&[
        "context",
        "set",
        "lab",
        "--server",
        &server.https_url(),
        "--ca",
        &p(d, "ca.pem"),
        "--cert",
        &p(d, "reader-ops.pem"),
        "--key",
        &p(d, "reader-ops.key"),
    ])
    .output()
    .await
    .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = with_config(&["summary", "-o", "json"])
        .output()
        .await
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = with_config(&["context", "list"])
        .output()
        .await
        .expect("runs");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>(),
        ["*", "lab"]
    );
    // A flag wins over the context.
    let out = with_config(&[
        "--server",
        "http://127.0.0.1:1",
        "--ca",
        "/nonexistent",
        "summary",
    ])
    .output()
    .await
    .expect("runs");
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn plaintext_off_loopback_is_refused_without_insecure() {
    let data = tempfile::tempdir().expect("dir");
    let out = tokio::process::Command::new(binary("fleet-health-server"))
        .args([
            "--listen",
            "0.0.0.0:0",
            "--metrics-listen",
            "off",
            "--data-dir",
        ])
        .arg(data.path())
        .output()
        .await
        .expect("runs");
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("--insecure") && said.contains("--tls-cert"),
        "{said}"
    );
}

#[tokio::test]
async fn simulate_reports_through_tls_with_an_admins_certificate() {
    let pki = tempfile::tempdir().expect("dir");
    let d = pki.path();
    let dir = d.display().to_string();
    cli(&["pki", "init", &dir]).await.expect_code(0);
    cli(&[
        "pki", "issue", "operator", "sim", "--role", "admin", "--dir", &dir,
    ])
    .await
    .expect_code(0);
    let args = tls_args(d);
    let server = Server::start(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let url = server.https_url();
    run(&as_who(
        &url,
        d,
        "admin-sim",
        &[
            "simulate",
            "--agents",
            "6",
            "--mix",
            "healthy=100",
            "--duration",
            "1s",
            "--ramp-up",
            "100ms",
            "-o",
            "json",
        ],
    ))
    .await
    .expect_code(0);
    let list = run(&as_who(
        &url,
        d,
        "admin-sim",
        &["list", "--all", "-o", "ids"],
    ))
    .await;
    list.expect_code(0);
    assert_eq!(list.stdout.lines().count(), 6, "{}", list.stdout);
}

/// Writes `issued` as `DIR/NAME.pem` and `DIR/NAME.key`.
fn write_issued(dir: &Path, name: &str, issued: &fleet_health_auth::pki::Issued) {
    std::fs::write(dir.join(format!("{name}.pem")), &issued.cert_pem).expect("write cert");
    std::fs::write(dir.join(format!("{name}.key")), &issued.key_pem).expect("write key");
}

/// A server started with the certificate `DIR/NAME.pem` (and its key),
/// trusting client certificates from the CA in `dir`.
async fn server_with(dir: &Path, name: &str) -> Server {
    let cert = p(dir, &format!("{name}.pem"));
    let key = p(dir, &format!("{name}.key"));
    let ca = p(dir, "ca.pem");
    Server::start(&["--tls-cert", &cert, "--tls-key", &key, "--client-ca", &ca]).await
}

#[tokio::test]
async fn expired_certificates_and_wrong_host_names_say_which() {
    use fleet_health_auth::identity::SpiffeId;
    use fleet_health_auth::pki::{Ca, Validity};
    use std::time::{Duration, SystemTime};

    let pki = tempfile::tempdir().expect("dir");
    let d = pki.path();
    let dir = d.display().to_string();
    cli(&["pki", "init", &dir]).await.expect_code(0);
    cli(&[
        "pki", "issue", "operator", "alice", "--role", "reader", "--dir", &dir,
    ])
    .await
    .expect_code(0);
    // Certificates `pki` will not make, signed by the same CA.
    let ca = Ca::from_pem(
        &std::fs::read_to_string(d.join("ca.pem")).expect("ca.pem"),
        &std::fs::read_to_string(d.join("ca.key")).expect("ca.key"),
    )
    .expect("the CA pki init made");
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    let expired = Validity {
        not_before: now - 10 * day,
        not_after: now - day,
    };
    let local = ["localhost".to_string(), "127.0.0.1".to_string()];
    write_issued(
        d,
        "expired-server",
        &ca.server(&local, expired).expect("server cert"),
    );
    write_issued(
        d,
        "elsewhere-server",
        &ca.server(&["elsewhere.example".to_string()], Validity::days(1))
            .expect("server cert"),
    );
    let bob = SpiffeId::parse("spiffe://fleet-health.local/reader/bob").expect("id");
    write_issued(
        d,
        "reader-bob",
        &ca.client(&bob, &[], expired).expect("client cert"),
    );

    // A valid server: the reader's certificate works, an expired one is
    // refused by the server, whose alert the client reads (exit 8: issue a
    // new one), however quickly it sent its first request.
    let server = server_with(d, "server").await;
    let url = server.https_url();
    run(&as_who(&url, d, "reader-alice", &["summary"]))
        .await
        .expect_code(0);
    let old_client = run(&as_who(&url, d, "reader-bob", &["summary"])).await;
    old_client.expect_code(8);
    assert!(
        old_client.stderr.contains("expired") && old_client.stderr.contains("issue a new one"),
        "{}",
        old_client.stderr
    );

    // The server's own certificate has expired: exit 8, and it is the
    // server that needs a new one.
    let stale = server_with(d, "expired-server").await;
    let old_server = run(&as_who(&stale.https_url(), d, "reader-alice", &["summary"])).await;
    old_server.expect_code(8);
    assert!(
        old_server
            .stderr
            .contains("server's certificate has expired"),
        "{}",
        old_server.stderr
    );

    // A certificate for another host name: exit 8, and the message says
    // to use a name the certificate carries.
    let elsewhere = server_with(d, "elsewhere-server").await;
    let wrong_name = run(&as_who(
        &elsewhere.https_url(),
        d,
        "reader-alice",
        &["summary"],
    ))
    .await;
    wrong_name.expect_code(8);
    assert!(
        wrong_name.stderr.contains("host name"),
        "{}",
        wrong_name.stderr
    );
}

#[tokio::test]
async fn sighup_reloads_the_certificates_of_a_running_server() {
    let pki = tempfile::tempdir().expect("dir");
    let d = pki.path();
    let dir = d.display().to_string();
    cli(&["pki", "init", &dir]).await.expect_code(0);
    let args = tls_args(d);
    let server = Server::start(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let reloads = |logs: &[String]| {
        logs.iter()
            .filter(|l| l.contains("reloaded") && l.contains("\"tls\""))
            .count()
    };
    assert_eq!(reloads(&server.logs()), 0);
    // Nothing changed in the files: only the signal reloads them. The
    // server listens for it a moment after it says it is listening (a
    // signal before that is ignored, never fatal): signal until it reloads.
    let pid = server.pid().to_string();
    eventually(
        "the reload after SIGHUP",
        std::time::Duration::from_secs(10),
        || {
            let (logs, pid) = (server.logs(), pid.clone());
            async move {
                if reloads(&logs) >= 1 {
                    return Some(());
                }
                let sent = tokio::process::Command::new("kill")
                    .args(["-HUP", &pid])
                    .status()
                    .await
                    .expect("kill runs");
                assert!(sent.success(), "the server is still running");
                None
            }
        },
    )
    .await;
    assert!(
        server.logs().iter().any(|l| l.contains("SIGHUP")),
        "{:?}",
        server.logs()
    );
    // Still serving, over TLS, after it.
    cli(&[
        "pki", "issue", "operator", "root", "--role", "admin", "--dir", &dir,
    ])
    .await
    .expect_code(0);
    run(&as_who(
        &server.https_url(),
        d,
        "admin-root",
        &["list", "--all", "-o", "ids"],
    ))
    .await
    .expect_code(0);
}
