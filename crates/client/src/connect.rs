//! How a client reaches a server: the URL, TLS (the trust bundle, a client
//! certificate) and a bearer token; and what a failure to connect means.
//!
//! `http://` is plaintext, as on a loopback quick start; `https://` is TLS
//! 1.3, checked against `ca` (a PEM bundle) or, without one, the public web
//! roots. A client certificate identifies an agent or an operator; a token
//! rides on every call as `authorization: Bearer TOKEN`.

use std::path::PathBuf;
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};

use crate::InvalidEndpoint;

/// The credentials a client presents.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// Trust bundle (PEM) for the server's certificate; `None`: the public
    /// web roots.
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM).
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub key: Option<PathBuf>,
    /// A bearer token.
    pub token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("ca", &self.ca)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("token", &self.token.as_ref().map(|_| "<secret>"))
            .finish()
    }
}

/// Credentials that cannot be used: a file that cannot be read, a
/// certificate without its key, TLS settings for a plaintext URL.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadCredentials(pub String);

/// Adds the bearer token, if any, to every call.
#[derive(Clone, Debug, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// No token.
    pub fn none() -> Bearer {
        Bearer(None)
    }

    /// `token` on every call.
    pub fn new(token: &str) -> Result<Bearer, BadCredentials> {
        let value = format!("Bearer {}", token.trim()).parse().map_err(|_| {
            BadCredentials("the token holds characters a header cannot carry".into())
        })?;
        Ok(Bearer(Some(value)))
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

/// A channel that presents the bearer token on every call.
pub type AuthChannel = InterceptedService<Channel, Bearer>;

/// What goes wrong with setting up a connection.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// The URL.
    #[error(transparent)]
    Endpoint(#[from] InvalidEndpoint),
    /// The credentials.
    #[error(transparent)]
    Credentials(#[from] BadCredentials),
}

/// The endpoint for `url` with `credentials`' TLS settings, a connect
/// timeout and keep-alive pings.
pub fn endpoint_with(
    url: &str,
    connect_timeout: Duration,
    credentials: &Credentials,
) -> Result<Endpoint, ConnectError> {
    let tls_asked = credentials.ca.is_some() || credentials.cert.is_some();
    let url = &crate::server_url(url, tls_asked);
    let endpoint = crate::endpoint(url, connect_timeout)?;
    if !url.starts_with("https://") {
        if tls_asked {
            return Err(BadCredentials(format!(
                "--ca/--cert are for TLS, but the server URL {url} is plaintext; use https://"
            ))
            .into());
        }
        return Ok(endpoint);
    }
    let mut tls = ClientTlsConfig::new();
    match &credentials.ca {
        Some(ca) => tls = tls.ca_certificate(Certificate::from_pem(read(ca, "--ca")?)),
        None => tls = tls.with_webpki_roots(),
    }
    match (&credentials.cert, &credentials.key) {
        (Some(cert), Some(key)) => {
            tls = tls.identity(Identity::from_pem(
                read(cert, "--cert")?,
                read(key, "--key")?,
            ));
        }
        (None, None) => {}
        (Some(_), None) => return Err(BadCredentials("--cert needs --key".into()).into()),
        (None, Some(_)) => return Err(BadCredentials("--key needs --cert".into()).into()),
    }
    endpoint
        .tls_config(tls)
        .map_err(|e| ConnectError::Credentials(BadCredentials(format!("TLS settings: {e}"))))
}

/// A channel to `url` with `credentials`, connecting on first use (and
/// again after a failure). Must be called within a Tokio runtime.
pub fn auth_channel(
    url: &str,
    connect_timeout: Duration,
    credentials: &Credentials,
) -> Result<AuthChannel, ConnectError> {
    let channel = endpoint_with(url, connect_timeout, credentials)?.connect_lazy();
    let bearer = match &credentials.token {
        Some(t) => Bearer::new(t)?,
        None => Bearer::none(),
    };
    Ok(InterceptedService::new(channel, bearer))
}

fn read(path: &std::path::Path, flag: &str) -> Result<Vec<u8>, BadCredentials> {
    std::fs::read(path).map_err(|e| BadCredentials(format!("{flag} {}: {e}", path.display())))
}

/// What a failed call's transport error says about TLS, in words a user can
/// act on; `None` when it was not about TLS.
///
/// HTTP/2 keeps only the text of an I/O error, not its type, so a TLS alert
/// from the server is recognised by its text (rustls' "received fatal alert:
/// NAME"); errors of the client's own TLS checks keep their type. A server
/// that refuses a client certificate after a TLS 1.3 handshake may instead
/// just close the connection, which looks like any broken connection: that
/// is not called TLS here (see [`maybe_refused_certificate`]).
pub fn tls_trouble(status: &Status) -> Option<String> {
    use std::error::Error as _;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = status.source();
    let mut closed_while_connecting = false;
    while let Some(e) = cause {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(describe_tls(tls));
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
        {
            return Some(describe_tls(tls));
        }
        let text = e.to_string();
        let debug = format!("{e:?}");
        if let Some(alert) = text.split("received fatal alert: ").nth(1) {
            return Some(describe_alert(alert.trim()));
        }
        if text.contains("InvalidContentType") || text.contains("corrupt message") {
            return Some(NOT_TLS.into());
        }
        if debug.contains("INADEQUATE_SECURITY") || debug.contains("FRAME_SIZE_ERROR") {
            return Some(
                "the server did not answer in plaintext HTTP/2: it requires TLS (use https:// and --ca)"
                    .into(),
            );
        }
        if debug.starts_with("ConnectError(")
            && (debug.contains("ConnectionReset") || debug.contains("UnexpectedEof"))
        {
            closed_while_connecting = true;
        }
        cause = e.source();
    }
    closed_while_connecting.then(|| {
        "the server closed the connection while it was being set up: with an https:// URL, the server may not speak TLS (try http://)".into()
    })
}

/// Whether a failed call may be a server refusing this client's certificate
/// without saying so (TLS 1.3: the client thinks the handshake done, the
/// server closes): a broken connection on a first call over `https://`
/// with a client certificate. For a one-shot command, where a plain broken
/// connection is unlikely, this is the better guess to tell a user.
pub fn maybe_refused_certificate(status: &Status, url: &str, credentials: &Credentials) -> bool {
    use std::error::Error as _;
    if !url.starts_with("https://") || credentials.cert.is_none() {
        return false;
    }
    let text = status
        .source()
        .map(|e| format!("{e:?}"))
        .unwrap_or_default();
    matches!(status.code(), tonic::Code::Unknown | tonic::Code::Cancelled)
        && (text.contains("BrokenPipe") || text.contains("connection closed"))
}

fn describe_alert(alert: &str) -> String {
    match alert {
        "CertificateRevoked" => "the server refused this client's certificate: it is revoked".into(),
        "CertificateExpired" => "the server refused this client's certificate: it has expired (issue a new one)".into(),
        "UnknownCA" | "BadCertificate" | "DecryptError" => "the server refused this client's certificate: it is not signed by a CA the server trusts (--client-ca on the server)".into(),
        "CertificateRequired" => "the server requires a client certificate (--cert and --key)".into(),
        other => format!("the server ended the TLS connection: {other}"),
    }
}

const NOT_TLS: &str = "the server did not answer in TLS: it may be plaintext (use http://)";

fn describe_tls(e: &rustls::Error) -> String {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    match e {
        E::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => "the server's certificate is not signed by the CA this client trusts (check --ca: it must be the CA that signed the server's certificate)".into(),
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => "the server's certificate has expired; the server needs a new one".into(),
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => "the server's certificate is not valid for the host name in the URL (use a name the certificate carries, e.g. its --san)".into(),
        E::InvalidCertificate(other) => format!("the server's certificate was refused: {other:?}"),
        E::AlertReceived(A::CertificateExpired) => "the server refused this client's certificate: it has expired (issue a new one)".into(),
        E::AlertReceived(A::CertificateRevoked) => "the server refused this client's certificate: it is revoked".into(),
        E::AlertReceived(A::UnknownCA | A::BadCertificate | A::DecryptError) => "the server refused this client's certificate: it is not signed by a CA the server trusts (--client-ca on the server)".into(),
        E::AlertReceived(A::CertificateRequired) => "the server requires a client certificate (--cert and --key)".into(),
        E::InvalidMessage(_) => NOT_TLS.into(),
        other => format!("TLS failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};

    /// A failed call whose cause is `source`.
    fn failed(source: impl std::error::Error + Send + Sync + 'static) -> Status {
        Status::from_error(Box::new(source))
    }

    fn in_io(e: E) -> std::io::Error {
        std::io::Error::other(e)
    }

    #[test]
    fn tls_errors_are_told_in_words_a_user_can_act_on() {
        let says = |status: Status| tls_trouble(&status).expect("about TLS");
        // The client's own checks of the server's certificate, as rustls
        // errors or inside an I/O error.
        let wrong_ca = says(failed(in_io(E::InvalidCertificate(C::UnknownIssuer))));
        assert!(wrong_ca.contains("check --ca"), "{wrong_ca}");
        let expired = says(failed(E::InvalidCertificate(C::Expired)));
        assert!(
            expired.contains("server's certificate has expired"),
            "{expired}"
        );
        let name = says(failed(in_io(E::InvalidCertificate(C::NotValidForName))));
        assert!(name.contains("host name"), "{name}");
        // The server's verdict on ours, as an alert.
        let ours = says(failed(in_io(E::AlertReceived(A::CertificateExpired))));
        assert!(
            ours.contains("client's certificate: it has expired"),
            "{ours}"
        );
        let needed = says(failed(E::AlertReceived(A::CertificateRequired)));
        assert!(needed.contains("--cert and --key"), "{needed}");
        // ...or only as text, as HTTP/2 keeps an I/O error.
        let revoked = says(failed(std::io::Error::other(
            "received fatal alert: CertificateRevoked",
        )));
        assert!(revoked.contains("it is revoked"), "{revoked}");
        let foreign = says(failed(std::io::Error::other(
            "received fatal alert: UnknownCA",
        )));
        assert!(foreign.contains("--client-ca"), "{foreign}");
        // A plaintext server answering a TLS hello.
        let plain = says(failed(in_io(E::InvalidMessage(
            rustls::InvalidMessage::InvalidContentType,
        ))));
        assert!(plain.contains("use http://"), "{plain}");
    }

    #[test]
    fn other_failures_are_not_called_tls() {
        assert_eq!(tls_trouble(&Status::unavailable("down")), None);
        assert_eq!(tls_trouble(&Status::permission_denied("role")), None);
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(tls_trouble(&failed(refused)), None);
    }

    #[test]
    fn a_broken_first_call_is_a_refused_certificate_only_over_https_with_one() {
        let broken = || failed(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        let with_cert = Credentials {
            cert: Some("me.pem".into()),
            key: Some("me.key".into()),
            ..Credentials::default()
        };
        assert!(maybe_refused_certificate(
            &broken(),
            "https://h:1",
            &with_cert
        ));
        assert!(!maybe_refused_certificate(
            &broken(),
            "http://h:1",
            &with_cert
        ));
        assert!(!maybe_refused_certificate(
            &broken(),
            "https://h:1",
            &Credentials::default()
        ));
    }

    #[test]
    fn the_token_rides_on_every_call_and_is_never_printed() {
        let mut bearer = Bearer::new(" fht_secret\n").expect("a token");
        let request = bearer.call(Request::new(())).expect("passes");
        assert_eq!(
            request.metadata().get("authorization").expect("set"),
            "Bearer fht_secret"
        );
        let request = Bearer::none().call(Request::new(())).expect("passes");
        assert!(request.metadata().get("authorization").is_none());
        let credentials = Credentials {
            token: Some("fht_secret".into()),
            ..Credentials::default()
        };
        assert!(!format!("{credentials:?}").contains("fht_secret"));
    }
}
