//! Security end to end through the library's server: TLS with client
//! certificates made here (never committed), tokens, the access table,
//! revocation of open streams, reloads, the audit log and the metrics.
//!
//! Each refusal checks the status code, the audit line, the metric, and
//! that nothing else changed.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use fleet_health_auth::pki::{Ca, Issued, Validity};
use fleet_health_auth::{AgentPattern, Role, SpiffeId, TrustDomain};
use fleet_health_proto::v1 as pb;
use fleet_health_proto::v1::fleet_service_client::FleetServiceClient;
use fleet_health_server::Config;
use fleet_health_server::clock::ManualClock;
use fleet_health_server::config::{SecurityConfig, TlsFiles};
use prost::Message;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request};

use crate::common::*;

/// A CA, the server's certificate, and the files the server reads.
struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
    td: TrustDomain,
}

impl Pki {
    fn new() -> Pki {
        let dir = scratch();
        let ca = Ca::new("test CA", Validity::days(1)).expect("ca");
        let server = ca
            .server(&["localhost".into(), "127.0.0.1".into()], Validity::days(1))
            .expect("server cert");
        std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).expect("writes");
        std::fs::write(dir.path().join("server.pem"), &server.cert_pem).expect("writes");
        std::fs::write(dir.path().join("server.key"), &server.key_pem).expect("writes");
        std::fs::write(dir.path().join("crl.pem"), ca.crl(&[], 1).expect("crl")).expect("writes");
        std::fs::write(dir.path().join("tokens.toml"), "").expect("writes");
        Pki {
            dir,
            ca,
            td: TrustDomain::parse("fleet.test").expect("td"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn config(&self) -> Config {
        Config {
            security: SecurityConfig {
                tls: Some(TlsFiles {
                    cert: self.path("server.pem"),
                    key: self.path("server.key"),
                    client_ca: Some(self.path("ca.pem")),
                    crls: vec![self.path("crl.pem")],
                }),
                tokens: Some(self.path("tokens.toml")),
                trust_domain: Some(self.td.clone()),
                audit_log: Some(self.path("audit.log")),
                insecure: false,
                identity_limits: Default::default(),
            },
            ..Config::default()
        }
    }

    fn agent(&self, id: &str) -> Issued {
        let id = SpiffeId::agent(self.td.clone(), id.parse().expect("id"));
        self.ca.client(&id, &[], Validity::days(1)).expect("cert")
    }

    fn holder(&self, role: Role, name: &str, agents: &[&str]) -> Issued {
        let id = SpiffeId::holder(self.td.clone(), role, name).expect("id");
        let agents: Vec<AgentPattern> =
            agents.iter().map(|p| p.parse().expect("pattern")).collect();
        self.ca
            .client(&id, &agents, Validity::days(1))
            .expect("cert")
    }

    fn tls(&self, who: Option<&Issued>) -> ClientTlsConfig {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.ca.cert_pem()))
            .domain_name("localhost");
        match who {
            Some(i) => tls.identity(Identity::from_pem(&i.cert_pem, &i.key_pem)),
            None => tls,
        }
    }

    /// Adds a token to the tokens file; returns its secret.
    fn token(&self, name: &str, role: Role, expires: Option<SystemTime>) -> String {
        let (secret, entry) = fleet_health_auth::tokens::new_token(
            name,
            role,
            vec![],
            expires,
            SystemTime::UNIX_EPOCH + Duration::from_secs(T0 as u64),
        )
        .expect("token");
        let path = self.path("tokens.toml");
        let text = std::fs::read_to_string(&path).expect("reads");
        let text = fleet_health_auth::tokens::add_to_file(&text, &entry, false).expect("adds");
        write_atomically(&path, &text);
        secret
    }

    fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.path("audit.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect()
    }

    /// Waits for an audit line with `event` and `reason` or `result`.
    async fn audited(&self, event: &str, key: &str, value: &str) -> serde_json::Value {
        soon(async {
            loop {
                if let Some(line) = self
                    .audit()
                    .into_iter()
                    .find(|l| l["event"] == event && l[key] == value)
                {
                    return line;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("writes");
    std::fs::rename(&tmp, path).expect("renames");
}

async fn start(pki: &Pki) -> TestServer {
    let admin = pki.holder(Role::Admin, "root", &[]);
    let tls = pki.tls(Some(&admin));
    TestServer::start_on(pki.config(), ManualClock::new(t(T0)), None, move |addr| {
        Endpoint::from_shared(format!("https://{addr}"))
            .expect("uri")
            .tls_config(tls)
            .expect("tls")
    })
    .await
}

async fn channel(
    server: &TestServer,
    tls: ClientTlsConfig,
) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(format!("https://{}", server.addr))
        .expect("uri")
        .tls_config(tls)
        .expect("tls")
        .connect()
        .await
}

fn with_token<T>(msg: T, secret: &str) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {secret}").parse().expect("ascii"),
    );
    req
}

/// Waits until `secret` lets a reader list agents: the server reloads the
/// tokens file within a second or two of a change.
async fn until_token_works(fleet: &mut FleetServiceClient<Channel>, secret: &str) {
    soon(async {
        while fleet
            .list_agents(with_token(pb::ListAgentsRequest::default(), secret))
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .parse()
        .expect("a number")
}

async fn known(server: &TestServer) -> Vec<String> {
    server
        .list(pb::StateFilter::All)
        .await
        .agents
        .into_iter()
        .map(|a| a.agent_id)
        .collect()
}

#[test]
fn every_served_rpc_has_a_row_in_the_access_table() {
    let sets = [
        fleet_health_proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ];
    let mut served = Vec::new();
    for set in sets {
        let set = prost_types::FileDescriptorSet::decode(set).expect("descriptor set");
        for file in set.file {
            for service in &file.service {
                for method in &service.method {
                    served.push(format!(
                        "/{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
    }
    assert!(served.len() >= 10, "{served:?}");
    let missing: Vec<&String> = served
        .iter()
        .filter(|p| fleet_health_auth::policy::access(p).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "RPCs with no row in the access table: {missing:?}"
    );
}

#[tokio::test]
async fn an_agent_reports_for_itself_and_only_for_itself() {
    let pki = Pki::new();
    let server = start(&pki).await;
    let ch = channel(&server, pki.tls(Some(&pki.agent("web-1"))))
        .await
        .expect("connects");

    let mut own = Agent::open(&ch).await.expect("opens");
    own.hello_with("web-1", 1, &[])
        .await
        .expect("its own ID is welcome");

    let mut other = Agent::open(&ch).await.expect("opens");
    let err = other
        .hello_with("web-2", 1, &[])
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("may report only for web-1"),
        "{}",
        err.message()
    );

    let line = pki.audited("denied", "reason", "wrong_agent").await;
    assert_eq!(line["identity"], "agent/web-1");
    assert_eq!(line["agent_id"], "web-2");
    assert_eq!(line["rpc"], "/fleethealth.v1.AgentService/Report");
    assert!(
        line["peer"]
            .as_str()
            .expect("peer")
            .starts_with("127.0.0.1:")
    );
    let m = server.metrics().await;
    assert_eq!(
        metric(&m, "fleet_health_denials_total{reason=\"wrong_agent\"}"),
        1.0
    );
    assert_eq!(
        known(&server).await,
        vec!["web-1".to_string()],
        "nothing applied for web-2"
    );

    // An agent certificate grants nothing but its own reports.
    let err = FleetServiceClient::new(ch)
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .expect_err("an agent may not read the fleet");
    assert_eq!(err.code(), Code::PermissionDenied);
    server.stop().await;
}

#[tokio::test]
async fn no_client_certificate_and_no_token_is_unauthenticated() {
    let pki = Pki::new();
    let server = start(&pki).await;
    let ch = channel(&server, pki.tls(None))
        .await
        .expect("TLS without a client certificate");
    let err = FleetServiceClient::new(ch.clone())
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.message().contains("no credentials"),
        "{}",
        err.message()
    );
    let line = pki.audited("denied", "reason", "no_credentials").await;
    assert_eq!(line["rpc"], "/fleethealth.v1.FleetService/ListAgents");
    assert_eq!(
        metric(
            &server.metrics().await,
            "fleet_health_denials_total{reason=\"no_credentials\"}"
        ),
        1.0
    );
    // Health checks stay open: probes need no credentials.
    let health = tonic_health::pb::health_client::HealthClient::new(ch)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health is open to all");
    assert_eq!(health.into_inner().status, 1);
    server.stop().await;
}

#[tokio::test]
async fn certificates_from_another_ca_or_expired_fail_the_handshake() {
    let pki = Pki::new();
    let server = start(&pki).await;
    let stranger = Ca::new("another CA", Validity::days(1)).expect("ca");
    let id = SpiffeId::holder(pki.td.clone(), Role::Admin, "mallory").expect("id");
    let foreign = stranger.client(&id, &[], Validity::days(1)).expect("cert");
    let now = SystemTime::now();
    let expired = pki
        .ca
        .client(
            &id,
            &[],
            Validity {
                not_before: now - Duration::from_secs(7200),
                not_after: now - Duration::from_secs(3600),
            },
        )
        .expect("cert");
    for who in [&foreign, &expired] {
        let refused = async {
            let ch = channel(&server, pki.tls(Some(who))).await?;
            FleetServiceClient::new(ch)
                .forget_agent(pb::ForgetAgentRequest {
                    agent_id: "x".into(),
                })
                .await
                .map(|_| ())
                .map_err(|s| s.into())
        };
        let err: Box<dyn std::error::Error> = refused.await.expect_err("refused at the handshake");
        drop(err);
    }
    let m = server.metrics().await;
    assert!(
        metric(
            &m,
            "fleet_health_connections_rejected_total{reason=\"handshake_error\"}"
        ) >= 2.0,
        "{m}"
    );
    let line = pki.audited("denied", "result", "handshake_failed").await;
    assert!(
        line["peer"]
            .as_str()
            .expect("peer")
            .starts_with("127.0.0.1:"),
        "{line}"
    );
    assert!(
        line["detail"]
            .as_str()
            .expect("detail")
            .contains("certificate"),
        "{line}"
    );
    // Nothing else changed: no agent, no denial of a call.
    assert!(known(&server).await.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn a_reader_may_not_forget_and_a_relay_only_reports_within_its_patterns() {
    let pki = Pki::new();
    let server = start(&pki).await;
    server.agent("site-a-1", 1).await; // reported by the harness's admin
    let reader = channel(
        &server,
        pki.tls(Some(&pki.holder(Role::Reader, "alice", &[]))),
    )
    .await
    .expect("connects");
    let err = FleetServiceClient::new(reader.clone())
        .forget_agent(pb::ForgetAgentRequest {
            agent_id: "site-a-1".into(),
        })
        .await
        .expect_err("a reader may not forget");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("reader/alice") && err.message().contains("admin"),
        "{}",
        err.message()
    );
    let line = pki.audited("denied", "reason", "role").await;
    assert_eq!(line["identity"], "reader/alice");
    assert_eq!(line["rpc"], "/fleethealth.v1.FleetService/ForgetAgent");
    // ...but may read.
    FleetServiceClient::new(reader)
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .expect("a reader reads");

    let relay = channel(
        &server,
        pki.tls(Some(&pki.holder(Role::Relay, "gw-a", &["site-a-*"]))),
    )
    .await
    .expect("connects");
    let mut inside = Agent::open(&relay).await.expect("opens");
    inside
        .hello_with("site-a-2", 1, &[])
        .await
        .expect("within its patterns");
    let mut outside = Agent::open(&relay).await.expect("opens");
    let err = outside
        .hello_with("site-b-1", 1, &[])
        .await
        .expect_err("outside its patterns");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("site-a-*"), "{}", err.message());
    let line = pki.audited("denied", "agent_id", "site-b-1").await;
    assert_eq!(line["identity"], "relay/gw-a");

    let m = server.metrics().await;
    assert_eq!(
        metric(&m, "fleet_health_denials_total{reason=\"role\"}"),
        1.0
    );
    assert_eq!(
        metric(&m, "fleet_health_denials_total{reason=\"wrong_agent\"}"),
        1.0
    );
    let mut ids = known(&server).await;
    ids.sort();
    assert_eq!(ids, vec!["site-a-1".to_string(), "site-a-2".to_string()]);

    // The admin's forget is audited.
    server
        .fleet()
        .forget_agent(pb::ForgetAgentRequest {
            agent_id: "site-a-1".into(),
        })
        .await
        .expect("an admin forgets");
    let line = pki.audited("admin", "agent_id", "site-a-1").await;
    assert_eq!(line["identity"], "admin/root");
    assert_eq!(line["result"], "ok");
    server.stop().await;
}

#[tokio::test]
async fn tokens_wrong_expired_and_removed_while_a_watch_is_open() {
    let pki = Pki::new();
    let server = start(&pki).await;
    let reader = pki.token("ci", Role::Reader, None);
    let short = pki.token(
        "short",
        Role::Reader,
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(T0 as u64 + 60)),
    );
    // The server reloads the tokens file within a second or two.
    let ch = channel(&server, pki.tls(None)).await.expect("connects");
    let mut fleet = FleetServiceClient::new(ch);
    until_token_works(&mut fleet, &reader).await;

    let err = fleet
        .list_agents(with_token(pb::ListAgentsRequest::default(), "fht_wrong"))
        .await
        .expect_err("a wrong token");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("not known"), "{}", err.message());
    pki.audited("denied", "reason", "bad_credentials").await;

    fleet
        .list_agents(with_token(pb::ListAgentsRequest::default(), &short))
        .await
        .expect("valid until T0+60");
    // A watch open with it ends when it expires (the per-second check).
    let mut expiring = fleet
        .watch_agents(with_token(pb::WatchAgentsRequest::default(), &short))
        .await
        .expect("watch opens")
        .into_inner();
    server.advance(120);
    let ended = soon(async {
        loop {
            match expiring.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the watch ended without a status"),
                Err(status) => break status,
            }
        }
    })
    .await;
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    let line = pki.audited("revoked", "identity", "reader/short").await;
    assert!(
        line["detail"].as_str().expect("detail").contains("expired"),
        "{line}"
    );
    let err = fleet
        .list_agents(with_token(pb::ListAgentsRequest::default(), &short))
        .await
        .expect_err("expired");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("expired"), "{}", err.message());
    let line = pki.audited("denied", "reason", "expired").await;
    assert_eq!(line["identity"], "token:short");

    // A watch open with the token, then the token is removed.
    let mut watch = fleet
        .watch_agents(with_token(pb::WatchAgentsRequest::default(), &reader))
        .await
        .expect("watch opens")
        .into_inner();
    while let Some(msg) = soon(watch.message()).await.expect("snapshot") {
        if matches!(msg.event, Some(pb::watch_agents_response::Event::Synced(_))) {
            break;
        }
    }
    let path = pki.path("tokens.toml");
    let (text, removed) = fleet_health_auth::tokens::remove_from_file(
        &std::fs::read_to_string(&path).expect("reads"),
        "ci",
    )
    .expect("removes");
    assert!(removed);
    write_atomically(&path, &text);
    let ended = soon(async {
        loop {
            match watch.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the watch ended without a status"),
                Err(status) => break status,
            }
        }
    })
    .await;
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    let line = pki.audited("revoked", "identity", "reader/ci").await;
    assert_eq!(line["credential"], "token");
    let m = server.metrics().await;
    assert!(metric(&m, "fleet_health_streams_revoked_total") >= 1.0);
    assert_eq!(
        metric(&m, "fleet_health_denials_total{reason=\"expired\"}"),
        1.0
    );
    let err = fleet
        .list_agents(with_token(pb::ListAgentsRequest::default(), &reader))
        .await
        .expect_err("a removed token");
    assert_eq!(err.code(), Code::Unauthenticated);
    server.stop().await;
}

#[tokio::test]
async fn a_token_whose_role_is_edited_loses_its_open_watch_and_keeps_the_new_role() {
    let pki = Pki::new();
    let server = start(&pki).await;
    server.agent("web-1", 1).await;
    let ops = pki.token("ops", Role::Admin, None);
    let ch = channel(&server, pki.tls(None)).await.expect("connects");
    let mut fleet = FleetServiceClient::new(ch);
    until_token_works(&mut fleet, &ops).await;
    let mut watch = fleet
        .watch_agents(with_token(pb::WatchAgentsRequest::default(), &ops))
        .await
        .expect("watch opens")
        .into_inner();
    while let Some(msg) = soon(watch.message()).await.expect("snapshot") {
        if matches!(msg.event, Some(pb::watch_agents_response::Event::Synced(_))) {
            break;
        }
    }

    // The same secret, made a reader's by editing the file.
    let path = pki.path("tokens.toml");
    let text = std::fs::read_to_string(&path).expect("reads");
    assert_eq!(text.matches("role = \"admin\"").count(), 1, "{text}");
    write_atomically(
        &path,
        &text.replace("role = \"admin\"", "role = \"reader\""),
    );
    let ended = soon(async {
        loop {
            match watch.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the watch ended without a status"),
                Err(status) => break status,
            }
        }
    })
    .await;
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    let line = pki.audited("revoked", "identity", "admin/ops").await;
    assert_eq!(line["credential"], "token");
    assert!(
        line["detail"]
            .as_str()
            .expect("detail")
            .contains("now gives reader/ops"),
        "{line}"
    );
    let m = server.metrics().await;
    assert_eq!(metric(&m, "fleet_health_streams_revoked_total"), 1.0);

    // From now on it has the reader's rights: it reads, it may not forget.
    fleet
        .list_agents(with_token(pb::ListAgentsRequest::default(), &ops))
        .await
        .expect("a reader reads");
    let err = fleet
        .forget_agent(with_token(
            pb::ForgetAgentRequest {
                agent_id: "web-1".into(),
            },
            &ops,
        ))
        .await
        .expect_err("a reader may not forget");
    assert_eq!(err.code(), Code::PermissionDenied);
    let line = pki.audited("denied", "identity", "reader/ops").await;
    assert_eq!(line["reason"], "role");
    assert_eq!(known(&server).await, vec!["web-1".to_string()]);
    server.stop().await;
}

#[tokio::test]
async fn a_certificate_revoked_while_its_stream_is_open_loses_the_stream() {
    let pki = Pki::new();
    let server = start(&pki).await;
    let cert = pki.agent("web-9");
    let ch = channel(&server, pki.tls(Some(&cert)))
        .await
        .expect("connects");
    let mut agent = Agent::open(&ch).await.expect("opens");
    agent.hello_with("web-9", 1, &[]).await.expect("welcome");

    write_atomically(
        &pki.path("crl.pem"),
        &pki.ca
            .crl(std::slice::from_ref(&cert.serial), 2)
            .expect("crl"),
    );
    let ended = soon(agent.end()).await;
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    let line = pki.audited("revoked", "identity", "agent/web-9").await;
    assert_eq!(line["agent_id"], "web-9");
    assert_eq!(line["credential"], "certificate");
    let m = server.metrics().await;
    assert_eq!(
        metric(&m, "fleet_health_reloads_total{what=\"tls\",result=\"ok\"}"),
        1.0
    );
    assert_eq!(metric(&m, "fleet_health_streams_revoked_total"), 1.0);
    // A new connection with it fails at the handshake.
    let again = async {
        let ch = channel(&server, pki.tls(Some(&cert))).await?;
        Agent::open(&ch).await.map(|_| ()).map_err(Into::into)
    };
    let refused: Result<(), Box<dyn std::error::Error>> = again.await;
    assert!(refused.is_err(), "a revoked certificate connects no more");
    // The agent is still known: revocation ends the stream, it forgets nothing.
    assert_eq!(known(&server).await, vec!["web-9".to_string()]);
    server.stop().await;
}

#[tokio::test]
async fn a_broken_file_on_reload_keeps_the_old_configuration() {
    let pki = Pki::new();
    let server = start(&pki).await;
    let secret = pki.token("ops", Role::Reader, None);
    let ch = channel(&server, pki.tls(None)).await.expect("connects");
    let mut fleet = FleetServiceClient::new(ch);
    until_token_works(&mut fleet, &secret).await;
    write_atomically(&pki.path("tokens.toml"), "[[token]]\nname = broken");
    write_atomically(&pki.path("server.pem"), "not a certificate");
    let line = pki.audited("reload", "result", "failed").await;
    assert!(
        line["detail"].as_str().expect("detail").contains("--"),
        "{line}"
    );
    soon(async {
        loop {
            let m = server.metrics().await;
            if metric(
                &m,
                "fleet_health_reloads_total{what=\"tokens\",result=\"failed\"}",
            ) >= 1.0
                && metric(
                    &m,
                    "fleet_health_reloads_total{what=\"tls\",result=\"failed\"}",
                ) >= 1.0
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    // The old token and the old certificate still work.
    fleet
        .list_agents(with_token(pb::ListAgentsRequest::default(), &secret))
        .await
        .expect("the old tokens stay");
    let fresh = channel(&server, pki.tls(None))
        .await
        .expect("the old certificate is served");
    FleetServiceClient::new(fresh)
        .list_agents(with_token(pb::ListAgentsRequest::default(), &secret))
        .await
        .expect("reads");
    server.stop().await;
}

#[tokio::test]
async fn limits_per_identity_refuse_the_greedy_one_only() {
    let pki = Pki::new();
    let mut config = pki.config();
    config.security.identity_limits = fleet_health_server::config::IdentityLimits {
        max_streams: 1,
        max_events_per_sec: 1000,
        max_watches: 1,
    };
    let admin = pki.holder(Role::Admin, "root", &[]);
    let tls = pki.tls(Some(&admin));
    let server = TestServer::start_on(config, ManualClock::new(t(T0)), None, move |addr| {
        Endpoint::from_shared(format!("https://{addr}"))
            .expect("uri")
            .tls_config(tls)
            .expect("tls")
    })
    .await;
    let greedy = channel(
        &server,
        pki.tls(Some(&pki.holder(Role::Relay, "gw", &["*"]))),
    )
    .await
    .expect("connects");
    let mut first = Agent::open(&greedy).await.expect("opens");
    first
        .hello_with("a-1", 1, &[])
        .await
        .expect("the first stream");
    let second = async {
        let mut a = Agent::open(&greedy).await?;
        a.hello_with("a-2", 1, &[]).await.map(|_| ())
    };
    let err = second.await.expect_err("a second stream is one too many");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("--max-streams-per-identity"),
        "{}",
        err.message()
    );
    let line = pki.audited("denied", "reason", "limit").await;
    assert_eq!(line["identity"], "relay/gw");

    // Another identity is not held up by the greedy one.
    let other = channel(&server, pki.tls(Some(&pki.agent("b-1"))))
        .await
        .expect("connects");
    let mut b = Agent::open(&other).await.expect("opens");
    b.hello_with("b-1", 1, &[])
        .await
        .expect("another identity's stream");

    // Over its event rate (bursts of 2000), the greedy stream is ended.
    let batch: Vec<pb::Event> = (1..=2500)
        .map(|seq| event(seq, pb::EventKind::Heartbeat, None))
        .collect();
    let err = first.events(batch).await.expect_err("over the rate");
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        err.message().contains("--max-events-per-sec-per-identity"),
        "{}",
        err.message()
    );
    b.events(vec![event(1, pb::EventKind::Heartbeat, None)])
        .await
        .expect("the other identity reports on");

    let reader = channel(&server, pki.tls(Some(&pki.holder(Role::Reader, "r", &[]))))
        .await
        .expect("connects");
    let mut fleet = FleetServiceClient::new(reader);
    let _w = fleet
        .watch_agents(pb::WatchAgentsRequest::default())
        .await
        .expect("one watch");
    let err = fleet
        .watch_agents(pb::WatchAgentsRequest::default())
        .await
        .expect_err("a second watch");
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        err.message().contains("--max-watches-per-identity"),
        "{}",
        err.message()
    );
    let m = server.metrics().await;
    assert_eq!(
        metric(&m, "fleet_health_denials_total{reason=\"limit\"}"),
        3.0
    );
    server.stop().await;
}

#[tokio::test]
async fn only_orchestrators_claim_and_operators_mark_with_their_names_recorded() {
    let pki = Pki::new();
    let server = start(&pki).await;
    let reader = pki.token("dash", Role::Reader, None);
    let orchestrator = pki.token("remediate-1", Role::Orchestrator, None);
    let admin = pki.token("ana", Role::Admin, None);
    let ch = channel(&server, pki.tls(None)).await.expect("connects");
    let mut fleet = FleetServiceClient::new(ch);
    until_token_works(&mut fleet, &admin).await;
    let _agent = server.agent("web-1", 1).await; // faulty until it starts
    let claim = || pb::ClaimAgentRequest {
        agent_id: "web-1".into(),
        holder: "r1".into(),
        lease: Some(prost_types::Duration {
            seconds: 60,
            nanos: 0,
        }),
    };
    for secret in [&reader, &admin] {
        let e = fleet
            .claim_agent(with_token(claim(), secret))
            .await
            .expect_err("not an orchestrator");
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    }
    let c = fleet
        .claim_agent(with_token(claim(), &orchestrator))
        .await
        .expect("an orchestrator claims")
        .into_inner();
    assert!(c.granted);
    let by = c.claim.expect("claim").by;
    assert!(by.contains("remediate-1"), "{by}");
    let mark = || pb::SetMaintenanceRequest {
        agent_ids: vec!["web-1".into()],
        reason: "patching".into(),
        duration: Some(prost_types::Duration {
            seconds: 600,
            nanos: 0,
        }),
        ..Default::default()
    };
    let e = fleet
        .set_maintenance(with_token(mark(), &reader))
        .await
        .expect_err("a reader marks nothing");
    assert_eq!(e.code(), Code::PermissionDenied);
    fleet
        .set_maintenance(with_token(mark(), &admin))
        .await
        .expect("an admin marks");
    let line = pki
        .audited(
            "admin",
            "rpc",
            "/fleethealth.v1.FleetService/SetMaintenance",
        )
        .await;
    assert_eq!(line["result"], "ok");
    let status = fleet
        .get_agent(with_token(
            pb::GetAgentRequest {
                agent_id: "web-1".into(),
                at: None,
            },
            &reader,
        ))
        .await
        .expect("a reader reads")
        .into_inner()
        .agent
        .expect("agent");
    let m = status.maintenance.expect("marked");
    assert!(m.by.contains("ana"), "{}", m.by);
    server.stop().await;
}
