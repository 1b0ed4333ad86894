//! The TLS transport through the library's server: a client without a
//! certificate reaches it (what it may do is the security layer's
//! business), a new server certificate is served to new connections while
//! an open one keeps working, a broken one keeps the old, and every port
//! closes a connection that says nothing.

use std::path::Path;
use std::time::Duration;

use fleet_health_auth::pki::{Ca, Validity};
use fleet_health_server::Config;
use fleet_health_server::clock::ManualClock;
use fleet_health_server::config::{SecurityConfig, TlsFiles};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::common::*;

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("writes");
    std::fs::rename(&tmp, path).expect("renames");
}

/// A server with TLS from `ca` (client certificates optional) and a short
/// time for connections to prove themselves.
async fn start(dir: &Path, ca: &Ca) -> TestServer {
    let server = ca
        .server(&["localhost".into()], Validity::days(1))
        .expect("server cert");
    std::fs::write(dir.join("ca.pem"), ca.cert_pem()).expect("writes");
    // Certificate and key in one file, as some deployments keep them: a
    // swap is then one rename, and no poll sees one without the other.
    std::fs::write(
        dir.join("server.pem"),
        format!("{}{}", server.cert_pem, server.key_pem),
    )
    .expect("writes");
    let mut config = Config {
        security: SecurityConfig {
            tls: Some(TlsFiles {
                cert: dir.join("server.pem"),
                key: dir.join("server.pem"),
                client_ca: Some(dir.join("ca.pem")),
                crls: vec![],
            }),
            ..SecurityConfig::default()
        },
        ..Config::default()
    };
    config.transport.handshake_timeout = Duration::from_millis(200);
    let tls = trusting(ca);
    TestServer::start_on(config, ManualClock::new(t(T0)), None, move |addr| {
        endpoint(addr, tls)
    })
    .await
}

fn trusting(ca: &Ca) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.cert_pem()))
        .domain_name("localhost")
}

fn endpoint(addr: std::net::SocketAddr, tls: ClientTlsConfig) -> Endpoint {
    Endpoint::from_shared(format!("https://{addr}"))
        .expect("uri")
        .tls_config(tls)
        .expect("tls")
}

async fn healthy(ch: &Channel) -> Result<(), tonic::Status> {
    let status = HealthClient::new(ch.clone())
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await?
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    Ok(())
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.parse().expect("a number"))
}

async fn wait_for_metric(server: &TestServer, series: &str, at_least: f64) {
    soon(async {
        while metric(&server.metrics().await, series) < at_least {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_client_without_a_certificate_reaches_the_server_over_tls() {
    let dir = scratch();
    let ca = Ca::new("test CA", Validity::days(1)).expect("ca");
    let server = start(dir.path(), &ca).await;
    healthy(&server.channel)
        .await
        .expect("health is open to all");
    let m = server.metrics().await;
    let expiry = metric(&m, "fleet_health_tls_cert_expiry_seconds");
    assert!(expiry > 86_000.0 && expiry <= 86_400.0, "{m}");
    assert_eq!(metric(&m, "fleet_health_insecure"), 0.0);
    // Plaintext on the TLS port gets nowhere.
    let plain = Channel::from_shared(format!("http://{}", server.addr))
        .expect("uri")
        .connect()
        .await;
    if let Ok(ch) = plain {
        healthy(&ch)
            .await
            .expect_err("no plaintext on the TLS port");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_new_certificate_is_served_to_new_connections_while_open_ones_stay() {
    let dir = scratch();
    let ca = Ca::new("test CA", Validity::days(1)).expect("ca");
    let server = start(dir.path(), &ca).await;
    healthy(&server.channel).await.expect("serves");

    // The certificate is replaced by one from another CA: a client that
    // trusts only the new CA connects only if the new one is served.
    let next_ca = Ca::new("next CA", Validity::days(1)).expect("ca");
    let next = next_ca
        .server(&["localhost".into()], Validity::days(2))
        .expect("server cert");
    write_atomically(
        &dir.path().join("server.pem"),
        &format!("{}{}", next.cert_pem, next.key_pem),
    );
    wait_for_metric(
        &server,
        "fleet_health_reloads_total{what=\"tls\",result=\"ok\"}",
        1.0,
    )
    .await;
    let m = server.metrics().await;
    assert_eq!(
        metric(
            &m,
            "fleet_health_reloads_total{what=\"tls\",result=\"failed\"}"
        ),
        0.0
    );
    let fresh = endpoint(server.addr, trusting(&next_ca))
        .connect()
        .await
        .expect("the new certificate is served");
    healthy(&fresh).await.expect("serves");
    let stale = endpoint(server.addr, trusting(&ca)).connect().await;
    assert!(stale.is_err(), "the old certificate is no longer served");
    // The connection made before the reload still works (a new one with
    // its trust would fail, as just seen).
    healthy(&server.channel)
        .await
        .expect("the open connection stays");
    let m = server.metrics().await;
    let expiry = metric(&m, "fleet_health_tls_cert_expiry_seconds");
    assert!(expiry > 2.0 * 86_000.0, "the gauge follows: {m}");

    // A broken certificate: counted, and the last good one stays.
    write_atomically(
        &dir.path().join("server.pem"),
        "-----BEGIN CERTIFICATE-----\nbroken\n",
    );
    wait_for_metric(
        &server,
        "fleet_health_reloads_total{what=\"tls\",result=\"failed\"}",
        1.0,
    )
    .await;
    let again = endpoint(server.addr, trusting(&next_ca))
        .connect()
        .await
        .expect("the last good certificate is still served");
    healthy(&again).await.expect("serves");
    healthy(&server.channel)
        .await
        .expect("the open connection stays");
    server.stop().await;
}

#[tokio::test]
async fn connections_that_say_nothing_are_closed_on_both_ports() {
    use tokio::io::AsyncReadExt;
    let dir = scratch();
    let ca = Ca::new("test CA", Validity::days(1)).expect("ca");
    let server = start(dir.path(), &ca).await;
    for addr in [server.addr, server.metrics_addr] {
        let mut silent = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connects");
        let mut buf = [0u8; 8];
        let read = soon(silent.read(&mut buf)).await;
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    let m = server.metrics().await;
    assert_eq!(
        metric(
            &m,
            "fleet_health_connections_rejected_total{reason=\"timeout\"}"
        ),
        2.0,
        "{m}"
    );
    healthy(&server.channel)
        .await
        .expect("the server still serves");
    server.stop().await;
}
