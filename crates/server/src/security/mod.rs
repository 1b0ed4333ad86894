//! Who is calling, and whether they may: the server's security layer.
//!
//! Authentication happens at the connection (the rustls verifier in
//! [`crate::tls`] checks a client certificate against the trust bundle and
//! CRLs) or per request (a bearer token, checked against the tokens file).
//! Authorization is one table ([`fleet_health_auth::policy`]), checked for
//! every call in one tower layer ([`layer::AuthLayer`]); services stay
//! unaware of who calls them, except the agent service, which checks that an
//! agent speaks only for itself ([`Security::check_report`]).
//!
//! - [`audit`]: the audit log, one JSON line per denial, admin action,
//!   reload and revocation.
//! - [`sessions`]: the open streams and watches by credential, which a
//!   reload or an expiry ends within a second.
//!
//! Security is on when the server has TLS or a tokens file; when it is off
//! (plaintext on loopback, the quick start), every call is let through and
//! carries no [`Caller`].

pub mod audit;
pub mod layer;
pub mod limits;
pub mod sessions;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fleet_health_auth::identity::identity_from_uris;
use fleet_health_auth::{Identity, TokenFile, TokenMatch, TrustDomain};
use tonic::Status;

use crate::clock::Clock;
use crate::metrics::{Denial, Metrics};
use crate::net::{ConnInfo, PeerCertificate};
use crate::reload::Reloadable;
use crate::tls::TlsMaterial;

pub use audit::{Audit, AuditEvent};
pub use limits::{IdentityLimits, Place};
pub use sessions::Sessions;

/// A caller the security layer let through: in the extensions of every
/// request when security is on.
#[derive(Clone, Debug)]
pub struct Caller {
    /// Who.
    pub identity: Arc<Identity>,
    /// With what.
    pub credential: Credential,
    /// From where.
    pub peer: Option<SocketAddr>,
}

/// What a caller proved who they are with.
#[derive(Clone, Debug)]
pub enum Credential {
    /// A client certificate (checked again after each reload).
    Certificate(Arc<PeerCertificate>),
    /// A bearer token, by its hash (looked up again after each reload).
    Token {
        /// The token's name.
        name: String,
        /// The SHA-256 of its secret.
        sha256: [u8; 32],
        /// When it expires, if it does.
        expires: Option<SystemTime>,
    },
    /// Another server of the cluster passed the call on, saying whom it is
    /// from; that server checked the caller's own credential, and ends what
    /// it passed on when that credential no longer holds.
    Passed,
}

impl Credential {
    /// A word for the audit log.
    pub fn kind(&self) -> &'static str {
        match self {
            Credential::Certificate(_) => "certificate",
            Credential::Token { .. } => "token",
            Credential::Passed => "passed on by a server of the cluster",
        }
    }
}

/// The security settings in force and what enforces them. Cheap to share
/// behind an `Arc`.
pub struct Security {
    /// The secret the servers of a cluster show each other, when this
    /// server is one of them.
    cluster_secret: std::sync::OnceLock<Arc<str>>,
    tls: Option<Arc<Reloadable<TlsMaterial>>>,
    tokens: Option<Arc<Reloadable<TokenFile>>>,
    trust_domain: Option<TrustDomain>,
    audit: Audit,
    metrics: Arc<Metrics>,
    sessions: Sessions,
    usage: Arc<limits::Usage>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("tls", &self.tls.is_some())
            .field("tokens", &self.tokens.is_some())
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

/// A refused call: the status for the caller and the reason for metrics and
/// the audit log.
#[derive(Debug)]
pub struct Refusal {
    /// Why, as counted.
    pub denial: Denial,
    /// What the caller is told.
    pub status: Status,
    /// Who it was, as far as known.
    pub identity: Option<String>,
}

impl Security {
    /// Security from its parts; `tls` and `tokens` absent both: off.
    pub fn new(
        tls: Option<Arc<Reloadable<TlsMaterial>>>,
        tokens: Option<Arc<Reloadable<TokenFile>>>,
        trust_domain: Option<TrustDomain>,
        audit: Audit,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
        limits: IdentityLimits,
    ) -> Security {
        Security {
            cluster_secret: std::sync::OnceLock::new(),
            tls,
            tokens,
            trust_domain,
            audit,
            metrics,
            sessions: Sessions::default(),
            usage: Arc::new(limits::Usage::new(limits)),
            clock,
        }
    }

    /// Security off: everything let through.
    pub fn off(metrics: Arc<Metrics>, clock: Arc<dyn Clock>) -> Security {
        Security::new(
            None,
            None,
            None,
            Audit::off(),
            metrics,
            clock,
            IdentityLimits::default(),
        )
    }

    /// Takes calls passed on by the servers of a cluster that show `secret`.
    pub fn set_cluster_secret(&self, secret: Arc<str>) {
        let _ = self.cluster_secret.set(secret);
    }

    /// A call another server of the cluster passed on: `shown` is the
    /// secret it showed, `caller` whom it says the call is from.
    pub fn identify_passed(
        &self,
        shown: &[u8],
        caller: Option<&[u8]>,
        peer: Option<SocketAddr>,
    ) -> Result<Caller, Refusal> {
        use subtle::ConstantTimeEq;
        let refuse = |message: &str| Refusal {
            denial: Denial::BadCredentials,
            status: Status::unauthenticated(message.to_owned()),
            identity: None,
        };
        let Some(secret) = self.cluster_secret.get() else {
            return Err(refuse("this server is not one of a cluster's"));
        };
        if !bool::from(secret.as_bytes().ct_eq(shown)) {
            return Err(refuse(
                "a call passed on by a server that is not of this cluster (its secret differs)",
            ));
        }
        let who = caller
            .and_then(|c| std::str::from_utf8(c).ok())
            .ok_or_else(|| refuse("a call passed on without saying whom it is from"))?;
        let identity = Identity::from_wire(who).map_err(|e| refuse(&e))?;
        Ok(Caller {
            identity: Arc::new(identity),
            credential: Credential::Passed,
            peer,
        })
    }

    /// What each identity holds, against the limits per identity.
    pub fn usage(&self) -> &Arc<limits::Usage> {
        &self.usage
    }

    /// Whether calls are checked.
    pub fn enabled(&self) -> bool {
        self.tls.is_some() || self.tokens.is_some()
    }

    /// The TLS material, when the server speaks TLS.
    pub fn tls(&self) -> Option<&Arc<Reloadable<TlsMaterial>>> {
        self.tls.as_ref()
    }

    /// The tokens file, when there is one.
    pub fn tokens(&self) -> Option<&Arc<Reloadable<TokenFile>>> {
        self.tokens.as_ref()
    }

    /// The audit log.
    pub fn audit(&self) -> &Audit {
        &self.audit
    }

    /// The open streams by credential.
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The wall-clock time now, from the server's clock.
    pub fn now(&self) -> SystemTime {
        let micros = self.clock.now().as_micros();
        SystemTime::UNIX_EPOCH + Duration::from_micros(u64::try_from(micros).unwrap_or(0))
    }

    /// Who is calling: from the bearer token if one is presented (it is the
    /// more specific choice of the caller), else from the client
    /// certificate; `Ok(None)` for no credentials at all.
    pub fn identify(
        &self,
        authorization: Option<&[u8]>,
        conn: Option<&ConnInfo>,
    ) -> Result<Option<Caller>, Refusal> {
        let peer = conn.map(|c| c.remote);
        if let Some(header) = authorization {
            return self.identify_token(header, peer).map(Some);
        }
        let Some(cert) = conn.and_then(|c| c.certificate.clone()) else {
            return Ok(None);
        };
        let identity = cert
            .identity
            .get_or_init(|| {
                let uris = crate::tls::uri_sans(&cert.chain[0])?;
                identity_from_uris(uris.iter().map(String::as_str), self.trust_domain.as_ref())
                    .map_err(|e| e.to_string())
            })
            .clone();
        match identity {
            Ok(identity) => Ok(Some(Caller {
                identity: Arc::new(identity),
                credential: Credential::Certificate(cert),
                peer,
            })),
            Err(why) => Err(Refusal {
                denial: Denial::BadCredentials,
                status: Status::unauthenticated(format!(
                    "{why}; the certificate cannot be used with this server"
                )),
                identity: None,
            }),
        }
    }

    fn identify_token(&self, header: &[u8], peer: Option<SocketAddr>) -> Result<Caller, Refusal> {
        let refuse = |denial, message: String| Refusal {
            denial,
            status: Status::unauthenticated(message),
            identity: None,
        };
        let secret = std::str::from_utf8(header)
            .ok()
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| {
                refuse(
                    Denial::BadCredentials,
                    "the authorization header is not \"Bearer TOKEN\"".into(),
                )
            })?;
        let Some(tokens) = &self.tokens else {
            return Err(refuse(
                Denial::BadCredentials,
                "this server takes no tokens (it has no --tokens file); use a client certificate"
                    .into(),
            ));
        };
        let file = tokens.current();
        match file.verify(secret, self.now()) {
            TokenMatch::Valid(entry) => Ok(Caller {
                identity: Arc::new(entry.identity()),
                credential: Credential::Token {
                    name: entry.name.clone(),
                    sha256: entry.sha256,
                    expires: entry.expires,
                },
                peer,
            }),
            TokenMatch::Expired(entry) => Err(Refusal {
                denial: Denial::Expired,
                status: Status::unauthenticated(format!(
                    "token {:?} expired at {}; ask an admin for a new one (fleet-health token create)",
                    entry.name,
                    entry
                        .expires
                        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
                        .unwrap_or_default()
                )),
                identity: Some(format!("token:{}", entry.name)),
            }),
            TokenMatch::Unknown => Err(refuse(
                Denial::BadCredentials,
                "the token is not known to this server (mistyped, removed, or made for another server)"
                    .into(),
            )),
        }
    }

    /// Whether `caller` may report for agent `agent_id` (the hello of a
    /// Report stream). A refusal is counted and audited here.
    pub fn check_report(&self, caller: Option<&Caller>, agent_id: &str) -> Result<(), Status> {
        let Some(caller) = caller else {
            return Ok(());
        };
        if caller.identity.may_report_for(agent_id) {
            return Ok(());
        }
        let message = match &*caller.identity {
            Identity::Agent(own) => format!(
                "this certificate is agent {own}'s; it may report only for {own}, not for {agent_id}"
            ),
            Identity::Holder { role, name, agents } if *role == fleet_health_auth::Role::Relay => {
                let patterns: Vec<&str> = agents.iter().map(|p| p.as_str()).collect();
                format!(
                    "relay {name} may report only for agent IDs matching {patterns:?}, not for {agent_id}"
                )
            }
            other => format!("{other} may not report for agents"),
        };
        self.metrics.count_denial(Denial::WrongAgent);
        self.audit.record(AuditEvent {
            event: "denied",
            identity: Some(caller.identity.to_string()),
            credential: Some(caller.credential.kind()),
            peer: caller.peer,
            rpc: Some(REPORT),
            agent_id: Some(agent_id.to_string()),
            result: "permission_denied",
            reason: Some(Denial::WrongAgent.as_str()),
            detail: Some(message.clone()),
        });
        Err(Status::permission_denied(message))
    }

    /// Whether `credential` has expired by now: a cheap check (no
    /// signature), run every second for every open stream.
    pub fn expired(&self, credential: &Credential) -> Option<String> {
        let now = self.now();
        let (what, expires) = match credential {
            Credential::Certificate(cert) => ("the client certificate", cert.expires()),
            Credential::Token { expires, .. } => ("the token", *expires),
            Credential::Passed => return None,
        };
        expires
            .filter(|e| *e <= now)
            .map(|e| format!("{what} expired at {}", humantime::format_rfc3339_seconds(e)))
    }

    /// Whether a stream's credential still holds now, for the `identity`
    /// it was opened as: the certificate against the trust bundle and CRLs
    /// in force; the token in the tokens file in force, not expired, and
    /// giving the same identity (an entry whose role or agent patterns were
    /// edited ends the streams opened under the old ones).
    pub fn still_valid(&self, credential: &Credential, identity: &Identity) -> Result<(), String> {
        match credential {
            Credential::Passed => Ok(()),
            Credential::Certificate(cert) => match &self.tls {
                Some(tls) => tls.current().recheck(&cert.chain, self.now()),
                None => Err("the server no longer speaks TLS".into()),
            },
            Credential::Token { name, sha256, .. } => match &self.tokens {
                Some(tokens) => match tokens.current().lookup(sha256, self.now()) {
                    TokenMatch::Valid(entry) if entry.identity() == *identity => Ok(()),
                    TokenMatch::Valid(entry) => Err(format!(
                        "token {name:?} was changed in the tokens file (it now gives {}); reconnect to use it as it is now",
                        describe(&entry.identity())
                    )),
                    TokenMatch::Expired(_) => Err(format!("token {name:?} has expired")),
                    TokenMatch::Unknown => Err(format!("token {name:?} was removed")),
                },
                None => Err("the server no longer takes tokens".into()),
            },
        }
    }
}

/// An identity with a relay's patterns, for messages.
fn describe(identity: &Identity) -> String {
    match identity {
        Identity::Holder { role, name, agents } if !agents.is_empty() => {
            let patterns: Vec<&str> = agents.iter().map(|p| p.as_str()).collect();
            format!("{role}/{name} for agents {patterns:?}")
        }
        other => other.to_string(),
    }
}

/// The gRPC path of the agents' stream.
pub const REPORT: &str = "/fleethealth.v1.AgentService/Report";

impl Security {
    /// Security as `config` asks for it: loads the TLS files and the tokens
    /// file (an error names the file and says what is wrong), and starts
    /// the audit log when security is on.
    pub fn from_config(
        config: &crate::config::SecurityConfig,
        storage: &crate::config::Storage,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
    ) -> Result<Security, String> {
        use crate::metrics::Reloaded;

        metrics.set_insecure(config.insecure);
        let tls = match &config.tls {
            None => None,
            Some(files) => {
                let (f, m) = (files.clone(), metrics.clone());
                let loader: crate::reload::Loader<TlsMaterial> = Box::new(move || {
                    let material = f.load()?;
                    let secs = material
                        .not_after
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    m.set_cert_not_after(i64::try_from(secs).unwrap_or(i64::MAX));
                    Ok(material)
                });
                Some(Reloadable::load(
                    Reloaded::Tls,
                    files.all(),
                    loader,
                    metrics.clone(),
                )?)
            }
        };
        let tokens = match &config.tokens {
            None => None,
            Some(path) => {
                let p = path.clone();
                let loader: crate::reload::Loader<TokenFile> = Box::new(move || {
                    let text = std::fs::read_to_string(&p)
                        .map_err(|e| format!("--tokens {}: {e}", p.display()))?;
                    TokenFile::parse(&text).map_err(|e| format!("--tokens {}: {e}", p.display()))
                });
                Some(Reloadable::load(
                    Reloaded::Tokens,
                    vec![path.clone()],
                    loader,
                    metrics.clone(),
                )?)
            }
        };
        let audit = if config.enabled() {
            let sink = match (&config.audit_log, storage) {
                (Some(path), _) => audit::AuditSink::File(path.clone()),
                (None, crate::config::Storage::Durable { dir, .. }) => {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                    audit::AuditSink::File(dir.join("audit.log"))
                }
                (None, crate::config::Storage::InMemory | crate::config::Storage::Cluster(_)) => {
                    audit::AuditSink::Log
                }
            };
            Audit::start(sink, metrics.clone()).map_err(|e| e.to_string())?
        } else {
            Audit::off()
        };
        Ok(Security::new(
            tls,
            tokens,
            config.trust_domain.clone(),
            audit,
            metrics,
            clock,
            config.identity_limits,
        ))
    }

    /// Everything that reloads, for [`crate::reload::watch_files`].
    pub fn reloadables(&self) -> Vec<Arc<dyn crate::reload::Reload>> {
        let mut all: Vec<Arc<dyn crate::reload::Reload>> = Vec::new();
        if let Some(t) = &self.tls {
            all.push(t.clone());
        }
        if let Some(t) = &self.tokens {
            all.push(t.clone());
        }
        all
    }

    /// Audits one reload attempt.
    pub fn audit_reload(&self, what: crate::metrics::Reloaded, result: &Result<(), String>) {
        self.audit.record(AuditEvent {
            event: "reload",
            identity: None,
            credential: None,
            peer: None,
            rpc: None,
            agent_id: None,
            result: if result.is_ok() { "ok" } else { "failed" },
            reason: Some(what.as_str()),
            detail: result.as_ref().err().cloned(),
        });
    }
}
