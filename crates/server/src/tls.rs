//! TLS 1.3 for gRPC: the server's certificate and key, and the trust bundle
//! and CRLs that client certificates are checked against.
//!
//! [`TlsFiles::load`] reads them into a [`TlsMaterial`]: a rustls
//! `ServerConfig` (TLS 1.3 only, ALPN `h2`, the ring provider) and the
//! client-certificate verifier in it. A client certificate is optional at
//! the handshake (callers with a token have none) but, when presented, must
//! chain to the trust bundle, be within its validity and not be revoked by a
//! CRL; the authorization layer decides what a caller without one may do.
//! The same verifier checks the certificates of open connections again
//! after a reload, which is how a newly revoked certificate loses its open
//! streams.
//!
//! CRLs are checked for the client's own certificate, not for the
//! intermediates above it, and a certificate whose issuer has no CRL among
//! the files is accepted (a CRL is a list of what is revoked, not of what
//! is allowed).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};

/// The files TLS is made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate chain (PEM), its own certificate first.
    pub cert: PathBuf,
    /// The server's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The trust bundle for client certificates (PEM); without it, clients
    /// present no certificate and identify with tokens only.
    pub client_ca: Option<PathBuf>,
    /// Certificate revocation lists (PEM or DER), for client certificates.
    pub crls: Vec<PathBuf>,
}

/// TLS as loaded from [`TlsFiles`].
pub struct TlsMaterial {
    /// For new handshakes on the gRPC port (ALPN: h2).
    pub server_config: Arc<rustls::ServerConfig>,
    /// For new handshakes on the web port (ALPN: h2, http/1.1).
    pub web_config: Arc<rustls::ServerConfig>,
    /// The client-certificate verifier, when there is a trust bundle.
    pub verifier: Option<Arc<dyn ClientCertVerifier>>,
    /// When the server's certificate expires.
    pub not_after: SystemTime,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("client_certificates", &self.verifier.is_some())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl TlsMaterial {
    /// Checks a client's certificate chain (its own first) again, at `now`,
    /// against the trust bundle and CRLs in force: `Err` says why it no
    /// longer holds (revoked, expired, no longer trusted).
    pub fn recheck(
        &self,
        chain: &[CertificateDer<'static>],
        now: SystemTime,
    ) -> Result<(), String> {
        let Some(verifier) = &self.verifier else {
            return Err("the server no longer accepts client certificates".into());
        };
        let Some((end, intermediates)) = chain.split_first() else {
            return Err("no certificate".into());
        };
        let now = UnixTime::since_unix_epoch(
            now.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default(),
        );
        verifier
            .verify_client_cert(end, intermediates, now)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

impl TlsFiles {
    /// Every file, for the reloader to watch.
    pub fn all(&self) -> Vec<PathBuf> {
        let mut files = vec![self.cert.clone(), self.key.clone()];
        files.extend(self.client_ca.iter().cloned());
        files.extend(self.crls.iter().cloned());
        files
    }

    /// Reads every file and builds the material; the error names the file
    /// and says what is wrong with it.
    pub fn load(&self) -> Result<TlsMaterial, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = certificates(&self.cert, "--tls-cert")?;
        let not_after =
            not_after(&chain[0]).map_err(|e| format!("--tls-cert {}: {e}", self.cert.display()))?;
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| {
            format!(
                "--tls-key {}: no private key could be read ({e}); it must be a PEM file with a PKCS#8, PKCS#1 or SEC1 key",
                self.key.display()
            )
        })?;
        let verifier = match &self.client_ca {
            None => None,
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in certificates(ca, "--client-ca")? {
                    roots.add(cert).map_err(|e| {
                        format!(
                            "--client-ca {}: a certificate is not a usable CA: {e}",
                            ca.display()
                        )
                    })?;
                }
                let mut crls = Vec::new();
                for path in &self.crls {
                    crls.extend(revocation_lists(path)?);
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .with_crls(crls)
                        .only_check_end_entity_revocation()
                        .allow_unknown_revocation_status()
                        .allow_unauthenticated()
                        .build()
                        .map_err(|e| format!("--client-ca {} / --crl: {e}", ca.display()))?;
                Some(verifier)
            }
        };
        if verifier.is_none() && !self.crls.is_empty() {
            return Err("--crl needs --client-ca: CRLs revoke client certificates".into());
        }
        let builder = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| format!("TLS 1.3: {e}"))?;
        let builder = match &verifier {
            Some(v) => builder.with_client_cert_verifier(v.clone()),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, key).map_err(|e| {
            format!(
                "--tls-cert {} and --tls-key {}: {e} (is the key the certificate's?)",
                self.cert.display(),
                self.key.display()
            )
        })?;
        let mut web = config.clone();
        web.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(TlsMaterial {
            server_config: Arc::new(config),
            web_config: Arc::new(web),
            verifier,
            not_after,
        })
    }
}

fn certificates(path: &Path, flag: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{flag} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{flag} {}: no certificate in it (a PEM file with BEGIN CERTIFICATE blocks is needed)",
            path.display()
        ));
    }
    Ok(certs)
}

fn revocation_lists(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("--crl {}: {e}", path.display()))?;
    let crls = if bytes.starts_with(b"-----") {
        let crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("--crl {}: {e}", path.display()))?;
        if crls.is_empty() {
            return Err(format!("--crl {}: no X509 CRL block in it", path.display()));
        }
        crls
    } else {
        vec![CertificateRevocationListDer::from(bytes)]
    };
    // Each is read here, so that a broken one is named by its file (the
    // verifier would only say that some CRL is broken).
    for crl in &crls {
        match x509_parser::parse_x509_crl(crl) {
            Ok(([], _)) => {}
            Ok(_) => {
                return Err(format!(
                    "--crl {}: bytes after the CRL (neither one DER CRL nor PEM)",
                    path.display()
                ));
            }
            Err(e) => {
                return Err(format!(
                    "--crl {}: not a valid CRL (PEM or DER): {e}",
                    path.display()
                ));
            }
        }
    }
    Ok(crls)
}

/// When `cert` expires.
pub fn not_after(cert: &CertificateDer<'_>) -> Result<SystemTime, String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| format!("not a valid X.509 certificate: {e}"))?;
    let secs = parsed.validity().not_after.timestamp();
    Ok(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
}

/// The URI SANs of `cert` (where a client's SPIFFE ID is).
pub fn uri_sans(cert: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| format!("the client certificate is not valid X.509: {e}"))?;
    let mut uris = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(uri) = name {
                uris.push((*uri).to_string());
            }
        }
    }
    Ok(uris)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use fleet_health_auth::pki::Validity;

    use super::*;
    use crate::testing::{TestPki, der};

    #[test]
    fn loads_tls_13_with_h2_and_the_client_verifier() {
        let pki = TestPki::new("test CA");
        let material = pki.files(true).load().expect("loads");
        assert_eq!(material.server_config.alpn_protocols, vec![b"h2".to_vec()]);
        assert!(material.verifier.is_some());
        // Not before an hour from now, not after two days.
        let now = SystemTime::now();
        assert!(material.not_after > now + Duration::from_secs(3600));
        assert!(material.not_after < now + Duration::from_secs(2 * 86_400));
        // Client certificates optional (tokens), but checked when presented.
        let verifier = material.verifier.as_ref().expect("verifier");
        assert!(verifier.offer_client_auth());
        assert!(!verifier.client_auth_mandatory());

        let without = pki.files(false).load().expect("loads");
        assert!(without.verifier.is_none());
    }

    #[test]
    fn every_broken_file_is_named() {
        let pki = TestPki::new("test CA");
        let err = |files: TlsFiles| files.load().expect_err("refused");

        let mut files = pki.files(true);
        files.key = pki.path("missing.key");
        let e = err(files);
        assert!(
            e.starts_with("--tls-key ") && e.contains("missing.key"),
            "{e}"
        );

        pki.write("junk.pem", "not a certificate");
        let mut files = pki.files(true);
        files.cert = pki.path("junk.pem");
        let e = err(files);
        assert!(
            e.starts_with("--tls-cert ") && e.contains("junk.pem"),
            "{e}"
        );

        let mut files = pki.files(true);
        files.client_ca = Some(pki.path("junk.pem"));
        let e = err(files);
        assert!(
            e.starts_with("--client-ca ") && e.contains("junk.pem"),
            "{e}"
        );

        let mut files = pki.files(true);
        files.crls = vec![pki.path("junk.pem")];
        let e = err(files);
        assert!(e.contains("--crl") && e.contains("junk.pem"), "{e}");

        // Another certificate's key.
        let other = pki
            .ca
            .server(&["localhost".into()], Validity::days(1))
            .expect("cert");
        pki.write("other.key", &other.key_pem);
        let mut files = pki.files(true);
        files.key = pki.path("other.key");
        let e = err(files);
        assert!(e.contains("is the key the certificate's?"), "{e}");

        let mut files = pki.files(false);
        files.crls = vec![pki.path("crl.pem")];
        assert!(err(files).contains("--crl needs --client-ca"));
    }

    #[test]
    fn recheck_follows_the_crls_and_the_trust_bundle() {
        let pki = TestPki::new("test CA");
        let agent = pki.agent("web-1", Validity::days(1));
        let chain = vec![der(&agent.cert_pem)];
        let now = SystemTime::now();
        let material = pki.files(true).load().expect("loads");
        assert_eq!(material.recheck(&chain, now), Ok(()));
        assert!(material.recheck(&[], now).is_err());
        let later = now + Duration::from_secs(3 * 86_400);
        let e = material
            .recheck(&chain, later)
            .expect_err("expired by then");
        assert!(e.to_lowercase().contains("expired"), "{e}");

        pki.write(
            "crl.pem",
            &pki.ca
                .crl(std::slice::from_ref(&agent.serial), 2)
                .expect("crl"),
        );
        let revoked = pki.files(true).load().expect("loads");
        let e = revoked.recheck(&chain, now).expect_err("revoked");
        assert!(e.to_lowercase().contains("revoked"), "{e}");

        let stranger = TestPki::new("another CA");
        let foreign = vec![der(&stranger.agent("web-1", Validity::days(1)).cert_pem)];
        assert!(material.recheck(&foreign, now).is_err());

        let no_ca = pki.files(false).load().expect("loads");
        assert!(no_ca.recheck(&chain, now).is_err());
    }

    #[test]
    fn reads_not_after_and_uri_sans() {
        let pki = TestPki::new("test CA");
        let agent = pki.agent("web-1", Validity::days(1));
        let cert = der(&agent.cert_pem);
        assert_eq!(
            uri_sans(&cert).expect("parses"),
            vec!["spiffe://fleet.test/agent/web-1".to_string()]
        );
        let left = not_after(&cert)
            .expect("parses")
            .duration_since(SystemTime::now())
            .expect("in the future");
        assert!(left > Duration::from_secs(86_000) && left <= Duration::from_secs(86_400));
        assert!(not_after(&CertificateDer::from(vec![1, 2, 3])).is_err());
    }
}
