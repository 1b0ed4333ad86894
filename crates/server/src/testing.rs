//! Helpers the server's unit tests share.

use fleet_health_sensor::Time;

/// A moment to start tests at (2023-11-14T22:13:20Z).
pub(crate) const T0: i64 = 1_700_000_000;

/// `s` seconds after the epoch, as a [`Time`].
pub(crate) fn t(s: i64) -> Time {
    Time::from_micros(s * 1_000_000).expect("in range")
}

/// Certificates made for a test (never written anywhere but its own
/// scratch folder): a CA, a server certificate for `localhost`, and the
/// files [`crate::tls::TlsFiles`] reads.
pub(crate) struct TestPki {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) ca: fleet_health_auth::pki::Ca,
}

impl TestPki {
    /// A CA named `name`, its server certificate and an empty CRL, written
    /// to a new folder.
    pub(crate) fn new(name: &str) -> TestPki {
        use fleet_health_auth::pki::{Ca, Validity};
        let dir = tempfile::tempdir().expect("scratch folder");
        let ca = Ca::new(name, Validity::days(1)).expect("ca");
        let pki = TestPki { dir, ca };
        pki.write("ca.pem", pki.ca.cert_pem());
        pki.write("crl.pem", &pki.ca.crl(&[], 1).expect("crl"));
        pki.new_server_cert();
        pki
    }

    /// Writes `text` to the file `name` in the folder.
    pub(crate) fn write(&self, name: &str, text: &str) {
        std::fs::write(self.path(name), text).expect("writes");
    }

    /// The path of `name` in the folder.
    pub(crate) fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// A new server certificate and key in `server.pem` and `server.key`.
    pub(crate) fn new_server_cert(&self) -> fleet_health_auth::pki::Issued {
        let server = self
            .ca
            .server(
                &["localhost".into()],
                fleet_health_auth::pki::Validity::days(1),
            )
            .expect("server cert");
        self.write("server.pem", &server.cert_pem);
        self.write("server.key", &server.key_pem);
        server
    }

    /// The files, with the client CA and CRL when `mtls`.
    pub(crate) fn files(&self, mtls: bool) -> crate::tls::TlsFiles {
        crate::tls::TlsFiles {
            cert: self.path("server.pem"),
            key: self.path("server.key"),
            client_ca: mtls.then(|| self.path("ca.pem")),
            crls: if mtls {
                vec![self.path("crl.pem")]
            } else {
                vec![]
            },
        }
    }

    /// A client certificate for agent `id`, valid over `validity`.
    pub(crate) fn agent(
        &self,
        id: &str,
        validity: fleet_health_auth::pki::Validity,
    ) -> fleet_health_auth::pki::Issued {
        let td = fleet_health_auth::TrustDomain::parse("fleet.test").expect("td");
        let id = fleet_health_auth::SpiffeId::agent(td, id.parse().expect("agent id"));
        self.ca.client(&id, &[], validity).expect("client cert")
    }
}

/// The DER of the first certificate in `pem`.
pub(crate) fn der(pem: &str) -> rustls_pki_types::CertificateDer<'static> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).expect("a certificate")
}

/// A TLS client trusting `ca_pem`, presenting `client` if given.
pub(crate) fn tls_client(
    ca_pem: &str,
    client: Option<&fleet_health_auth::pki::Issued>,
) -> tokio_rustls::TlsConnector {
    use rustls_pki_types::PrivateKeyDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der(ca_pem)).expect("a CA");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots);
    let mut config = match client {
        Some(c) => builder
            .with_client_auth_cert(
                vec![der(&c.cert_pem)],
                PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).expect("a key"),
            )
            .expect("client auth"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}
