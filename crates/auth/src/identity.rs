//! Who a caller is, and how that is read off a certificate.
//!
//! Certificates name their holder with a SPIFFE-shaped URI SAN:
//! `spiffe://TRUST-DOMAIN/agent/AGENT-ID` for an agent (the rest of the path
//! is the agent ID, slashes included), `spiffe://TRUST-DOMAIN/ROLE/NAME` for
//! everyone else. A relay's certificate also carries the agent IDs it may
//! report for, one URI SAN `urn:fleet-health:agents:PATTERN` each: the CA
//! that signs it vouches for what it may do, and a CRL takes it back.

use std::fmt;

use fleet_health_types::AgentId;

use crate::pattern::AgentPattern;
use crate::role::Role;

/// The URI scheme of SPIFFE IDs.
const SCHEME: &str = "spiffe://";
/// The prefix of a relay's agent-pattern URI SANs.
pub const AGENTS_URN_PREFIX: &str = "urn:fleet-health:agents:";

/// A caller the server knows.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Identity {
    /// An agent, which may report for itself only.
    Agent(AgentId),
    /// An operator or a program, with a role.
    Holder {
        /// The role.
        role: Role,
        /// The holder's name (a certificate's last path part, a token's name).
        name: String,
        /// For a relay: the agent IDs it may report for.
        agents: Vec<AgentPattern>,
    },
}

impl Identity {
    /// The role, for a holder of one.
    pub fn role(&self) -> Option<Role> {
        match self {
            Identity::Agent(_) => None,
            Identity::Holder { role, .. } => Some(*role),
        }
    }

    /// Whether this caller may report for agent `id`: an agent for itself, a
    /// relay for the IDs its patterns match, an admin for any.
    pub fn may_report_for(&self, id: &str) -> bool {
        match self {
            Identity::Agent(own) => own.as_str() == id,
            Identity::Holder {
                role: Role::Admin, ..
            } => true,
            Identity::Holder {
                role: Role::Relay,
                agents,
                ..
            } => agents.iter().any(|p| p.matches(id)),
            Identity::Holder { .. } => false,
        }
    }
}

impl Identity {
    /// The identity as one line, for one server of a cluster to tell
    /// another whom a call it passes on is from: `agent/ID`, `ROLE/NAME`,
    /// or `relay/NAME PATTERN...` (the relay's patterns, space-separated).
    pub fn to_wire(&self) -> String {
        match self {
            Identity::Holder { agents, .. } if !agents.is_empty() => {
                let mut s = self.to_string();
                for p in agents {
                    s.push(' ');
                    s.push_str(p.as_str());
                }
                s
            }
            other => other.to_string(),
        }
    }

    /// The identity [`Identity::to_wire`] wrote.
    pub fn from_wire(s: &str) -> Result<Identity, String> {
        let mut words = s.split(' ');
        let head = words.next().unwrap_or("");
        let (kind, name) = head
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not agent/ID or ROLE/NAME"))?;
        if kind == "agent" {
            if words.next().is_some() {
                return Err(format!("{s:?}: an agent has no patterns"));
            }
            return AgentId::parse(name)
                .map(Identity::Agent)
                .map_err(|e| format!("{s:?}: {e}"));
        }
        let role = Role::parse(kind).ok_or_else(|| format!("{s:?}: no role {kind:?}"))?;
        if name.is_empty() {
            return Err(format!("{s:?}: no name"));
        }
        let agents = words
            .map(|p| AgentPattern::parse(p).map_err(|e| format!("{s:?}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Identity::Holder {
            role,
            name: name.to_owned(),
            agents,
        })
    }
}

impl fmt::Display for Identity {
    /// `agent/ID` or `ROLE/NAME`, as in the SPIFFE ID's path.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Agent(id) => write!(f, "agent/{id}"),
            Identity::Holder { role, name, .. } => write!(f, "{role}/{name}"),
        }
    }
}

/// A SPIFFE trust domain: lower-case letters, digits, `.`, `-` and `_`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a trust domain name.
    pub fn parse(s: &str) -> Result<TrustDomain, IdentityError> {
        let ok = !s.is_empty()
            && s.len() <= 255
            && s.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b".-_".contains(&c));
        if ok {
            Ok(TrustDomain(s.to_string()))
        } else {
            Err(IdentityError::BadTrustDomain(s.to_string()))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A parsed SPIFFE ID of this product's shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpiffeId {
    /// The trust domain.
    pub trust_domain: TrustDomain,
    /// Who it names (a relay's patterns are not part of the ID).
    pub subject: Subject,
}

/// What a SPIFFE ID names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    /// `agent/AGENT-ID`.
    Agent(AgentId),
    /// `ROLE/NAME`.
    Holder {
        /// The role.
        role: Role,
        /// The name.
        name: String,
    },
}

impl SpiffeId {
    /// The ID of agent `id` in `trust_domain`.
    pub fn agent(trust_domain: TrustDomain, id: AgentId) -> SpiffeId {
        SpiffeId {
            trust_domain,
            subject: Subject::Agent(id),
        }
    }

    /// The ID of `name` holding `role` in `trust_domain`. The name follows
    /// the agent-ID rule, without slashes.
    pub fn holder(
        trust_domain: TrustDomain,
        role: Role,
        name: &str,
    ) -> Result<SpiffeId, IdentityError> {
        check_name(name)?;
        Ok(SpiffeId {
            trust_domain,
            subject: Subject::Holder {
                role,
                name: name.to_string(),
            },
        })
    }

    /// Parses `uri`: `spiffe://TRUST-DOMAIN/agent/AGENT-ID` or
    /// `spiffe://TRUST-DOMAIN/ROLE/NAME`.
    pub fn parse(uri: &str) -> Result<SpiffeId, IdentityError> {
        let bad = |why: &str| IdentityError::BadSpiffeId {
            uri: uri.to_string(),
            why: why.to_string(),
        };
        let rest = uri
            .strip_prefix(SCHEME)
            .ok_or_else(|| bad("it does not start with spiffe://"))?;
        let (domain, path) = rest
            .split_once('/')
            .ok_or_else(|| bad("it has no path after the trust domain"))?;
        let trust_domain = TrustDomain::parse(domain)?;
        let (kind, name) = path
            .split_once('/')
            .ok_or_else(|| bad("its path is not KIND/NAME (agent/AGENT-ID or ROLE/NAME)"))?;
        if path.contains(['?', '#']) {
            return Err(bad("it has a query or a fragment"));
        }
        let subject = if kind == "agent" {
            Subject::Agent(AgentId::parse(name).map_err(|e| bad(&e.to_string()))?)
        } else {
            let role = Role::parse(kind).ok_or_else(|| {
                bad("its path starts with neither agent/ nor a role (reader, orchestrator, admin, relay)")
            })?;
            check_name(name).map_err(|e| bad(&e.to_string()))?;
            Subject::Holder {
                role,
                name: name.to_string(),
            }
        };
        Ok(SpiffeId {
            trust_domain,
            subject,
        })
    }
}

fn check_name(name: &str) -> Result<(), IdentityError> {
    match AgentId::parse(name) {
        Ok(_) if !name.contains('/') => Ok(()),
        Ok(_) => Err(IdentityError::BadName(
            name.to_string(),
            "it contains '/'".into(),
        )),
        Err(e) => Err(IdentityError::BadName(name.to_string(), e.to_string())),
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.subject {
            Subject::Agent(id) => write!(f, "{SCHEME}{}/agent/{id}", self.trust_domain),
            Subject::Holder { role, name } => {
                write!(f, "{SCHEME}{}/{role}/{name}", self.trust_domain)
            }
        }
    }
}

/// The URI SAN that lets a relay report for agents matching `pattern`.
pub fn agents_uri(pattern: &AgentPattern) -> String {
    format!("{AGENTS_URN_PREFIX}{pattern}")
}

/// Why a certificate or a name does not give an identity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// A trust domain name that is not one.
    #[error(
        "trust domain {0:?} is not valid (lower-case letters, digits, '.', '-' and '_', at most 255)"
    )]
    BadTrustDomain(String),
    /// A SPIFFE ID not of this product's shape.
    #[error("SPIFFE ID {uri:?} is not valid: {why}")]
    BadSpiffeId {
        /// The URI.
        uri: String,
        /// Why.
        why: String,
    },
    /// A holder's name that breaks the rule.
    #[error("name {0:?} is not valid: {1}")]
    BadName(String, String),
    /// The certificate carries no `spiffe://` URI SAN.
    #[error(
        "the client certificate has no spiffe:// URI SAN (it needs spiffe://TRUST-DOMAIN/agent/AGENT-ID or spiffe://TRUST-DOMAIN/ROLE/NAME)"
    )]
    NoSpiffeId,
    /// The certificate carries more than one.
    #[error("the client certificate has {0} spiffe:// URI SANs; it must have exactly one")]
    SeveralSpiffeIds(usize),
    /// The trust domain is not the one the server is pinned to.
    #[error("the certificate's trust domain is {found:?}, but this server accepts only {pinned:?}")]
    OtherTrustDomain {
        /// The certificate's.
        found: String,
        /// The server's `--trust-domain`.
        pinned: String,
    },
    /// A relay pattern URI SAN that does not parse.
    #[error("the certificate's URI SAN {0:?} is not a valid agent pattern: {1}")]
    BadAgentsUri(String, String),
    /// Agent patterns on a certificate that is not a relay's.
    #[error(
        "the certificate carries agent patterns ({AGENTS_URN_PREFIX}…) but its role is not relay"
    )]
    PatternsWithoutRelay,
}

/// The identity that a client certificate's URI SANs give, checked against
/// the pinned trust domain (`None`: any trust domain the trust bundle signs).
pub fn identity_from_uris<'a>(
    uris: impl IntoIterator<Item = &'a str>,
    pinned: Option<&TrustDomain>,
) -> Result<Identity, IdentityError> {
    let mut spiffe = Vec::new();
    let mut agents = Vec::new();
    for uri in uris {
        if uri.starts_with(SCHEME) {
            spiffe.push(uri);
        } else if let Some(p) = uri.strip_prefix(AGENTS_URN_PREFIX) {
            agents.push(
                AgentPattern::parse(p)
                    .map_err(|e| IdentityError::BadAgentsUri(uri.to_string(), e.to_string()))?,
            );
        }
    }
    let uri = match spiffe.as_slice() {
        [] => return Err(IdentityError::NoSpiffeId),
        [one] => *one,
        many => return Err(IdentityError::SeveralSpiffeIds(many.len())),
    };
    let id = SpiffeId::parse(uri)?;
    if let Some(pinned) = pinned
        && *pinned != id.trust_domain
    {
        return Err(IdentityError::OtherTrustDomain {
            found: id.trust_domain.0,
            pinned: pinned.0.clone(),
        });
    }
    match id.subject {
        Subject::Agent(id) if agents.is_empty() => Ok(Identity::Agent(id)),
        Subject::Holder { role, name } if agents.is_empty() || role == Role::Relay => {
            Ok(Identity::Holder { role, name, agents })
        }
        _ => Err(IdentityError::PatternsWithoutRelay),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td(s: &str) -> TrustDomain {
        TrustDomain::parse(s).expect("trust domain")
    }

    #[test]
    fn agent_and_holder_ids_round_trip() {
        let a = SpiffeId::agent(td("fleet.example"), AgentId::parse("site/web-1").unwrap());
        assert_eq!(a.to_string(), "spiffe://fleet.example/agent/site/web-1");
        assert_eq!(SpiffeId::parse(&a.to_string()).unwrap(), a);
        let h = SpiffeId::holder(td("fleet.example"), Role::Reader, "alice").unwrap();
        assert_eq!(h.to_string(), "spiffe://fleet.example/reader/alice");
        assert_eq!(SpiffeId::parse(&h.to_string()).unwrap(), h);
        assert!(SpiffeId::holder(td("x"), Role::Admin, "a/b").is_err());
    }

    #[test]
    fn malformed_ids_say_why() {
        for (uri, says) in [
            ("https://x/agent/a", "spiffe://"),
            ("spiffe://x", "no path"),
            ("spiffe://x/agent", "KIND/NAME"),
            ("spiffe://x/root/bob", "neither agent/ nor a role"),
            ("spiffe://x/agent/has space", "' '"),
            ("spiffe://Upper/agent/a", "trust domain"),
            ("spiffe://x/reader/a?b", "query"),
        ] {
            let err = SpiffeId::parse(uri).unwrap_err().to_string();
            assert!(err.contains(says), "{uri}: {err}");
        }
    }

    #[test]
    fn identities_from_certificate_uris() {
        let id = identity_from_uris(["spiffe://f/agent/web-1"], None).unwrap();
        assert_eq!(id, Identity::Agent(AgentId::parse("web-1").unwrap()));
        assert_eq!(id.to_string(), "agent/web-1");
        let relay = identity_from_uris(
            [
                "spiffe://f/relay/gw-a",
                "urn:fleet-health:agents:site-a-*",
                "https://ignored.example/",
            ],
            Some(&td("f")),
        )
        .unwrap();
        assert!(relay.may_report_for("site-a-1"));
        assert!(!relay.may_report_for("site-b-1"));
        assert_eq!(relay.role(), Some(Role::Relay));

        assert_eq!(
            identity_from_uris(["https://x/"], None),
            Err(IdentityError::NoSpiffeId)
        );
        assert_eq!(
            identity_from_uris(["spiffe://f/agent/a", "spiffe://f/agent/b"], None),
            Err(IdentityError::SeveralSpiffeIds(2))
        );
        assert!(matches!(
            identity_from_uris(["spiffe://other/agent/a"], Some(&td("f"))),
            Err(IdentityError::OtherTrustDomain { .. })
        ));
        assert_eq!(
            identity_from_uris(["spiffe://f/reader/r", "urn:fleet-health:agents:*"], None),
            Err(IdentityError::PatternsWithoutRelay)
        );
    }

    #[test]
    fn who_may_report_for_whom() {
        let agent = Identity::Agent(AgentId::parse("a1").unwrap());
        assert!(agent.may_report_for("a1"));
        assert!(!agent.may_report_for("a2"));
        let holder = |role| Identity::Holder {
            role,
            name: "n".into(),
            agents: vec![],
        };
        assert!(holder(Role::Admin).may_report_for("any"));
        assert!(!holder(Role::Reader).may_report_for("any"));
        assert!(!holder(Role::Orchestrator).may_report_for("any"));
        // A relay without patterns reports for nobody.
        assert!(!holder(Role::Relay).may_report_for("any"));
    }

    #[test]
    fn identities_go_between_servers_as_they_are() {
        let relay = Identity::Holder {
            role: Role::Relay,
            name: "edge".into(),
            agents: vec![
                AgentPattern::parse("edge-*").expect("pattern"),
                AgentPattern::parse("gw-1").expect("pattern"),
            ],
        };
        for who in [
            Identity::Agent(AgentId::parse("ns/web-1").expect("id")),
            Identity::Holder {
                role: Role::Reader,
                name: "alice".into(),
                agents: Vec::new(),
            },
            relay,
        ] {
            assert_eq!(
                Identity::from_wire(&who.to_wire()),
                Ok(who.clone()),
                "{who}"
            );
        }
        for bad in [
            "",
            "nobody",
            "agent/",
            "king/arthur",
            "reader/",
            "agent/a b",
        ] {
            assert!(Identity::from_wire(bad).is_err(), "{bad:?}");
        }
    }
}
