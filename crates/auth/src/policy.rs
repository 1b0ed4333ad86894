//! The one table of who may call what: every RPC the server serves, with
//! the callers it admits. The server's authorization layer looks every call
//! up here; a test in the server fails when a served RPC has no row.
//!
//! The rows, by service:
//! - health (`grpc.health.v1.Health`): open to all, so that probes need no
//!   credentials.
//! - `AgentService/Report`: agents (for their own ID), relays (for the IDs
//!   their patterns match) and admins; the agent service checks the ID
//!   named in the stream's hello ([`Identity::may_report_for`]).
//! - the reads of `FleetService` (get, list, watch, summary, history,
//!   server info, cluster status) and
//!   server reflection: readers, orchestrators and admins.
//! - `FleetService/ForgetAgent` and `AdminService/Backup`: admins only.
//! - maintenance marks (`SetMaintenance`, `ClearMaintenance`) and clearing a
//!   remediator's "given up" (`ClearGivenUp`): orchestrators and admins.
//! - remediation claims and records (`ClaimAgent`, `ReleaseAgent`,
//!   `RecordRemediation`): orchestrators only, so that what acts on agents
//!   is always a remediator's identity, never a person's.
//!
//! An orchestrator also holds the reader's rights. A relay only
//! reports: it reads nothing. An agent certificate grants `Report` for its
//! own ID and nothing else.

use std::fmt;

use crate::identity::Identity;
use crate::role::Role;

/// Who may call one RPC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Everyone, with or without credentials.
    Open,
    /// Agents (for themselves), and holders of these roles.
    Callers {
        /// Whether agent certificates may call it.
        agents: bool,
        /// The roles that may call it.
        roles: &'static [Role],
    },
}

const READERS: &[Role] = &[Role::Reader, Role::Orchestrator, Role::Admin];
const OPERATORS: &[Role] = &[Role::Orchestrator, Role::Admin];
const REMEDIATORS: &[Role] = &[Role::Orchestrator];

/// Every RPC the server serves, by gRPC path, and who may call it.
pub const TABLE: &[(&str, Access)] = &[
    ("/grpc.health.v1.Health/Check", Access::Open),
    ("/grpc.health.v1.Health/Watch", Access::Open),
    (
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        Access::Callers {
            agents: false,
            roles: READERS,
        },
    ),
    (
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        Access::Callers {
            agents: false,
            roles: READERS,
        },
    ),
    (
        "/fleethealth.v1.AgentService/Report",
        Access::Callers {
            agents: true,
            roles: &[Role::Relay, Role::Admin],
        },
    ),
    (
        "/fleethealth.v1.FleetService/GetAgent",
        Access::Callers {
            agents: false,
            roles: READERS,
        },
    ),
    (
        "/fleethealth.v1.FleetService/ListAgents",
        Access::Callers {
            agents: false,
            roles: READERS,
        },
    ),
    (
        "/fleethealth.v1.FleetService/WatchAgents",
        Access::Callers {
            agents: false,
            roles: READERS,
        },
    ),
    (
        "/fleethealth.v1.FleetService/GetSummary",
        Access::Callers {
            agents: false,
            roles: READERS,
        },
    ),
    (
        "/fleethealth.v1.FleetService/GetHistory",
        Access::Callers {
            agents: false,
            roles: READERS,
        },
    ),
    (
        "/fleethealth.v1.FleetService/GetServerInfo",
        Access::Callers {
            agents: false,
            roles: READERS,
        },
    ),
    (
        "/fleethealth.v1.FleetService/GetClusterStatus",
        Access::Callers {
            agents: false,
            roles: READERS,
        },
    ),
    (
        "/fleethealth.v1.FleetService/ForgetAgent",
        Access::Callers {
            agents: false,
            roles: &[Role::Admin],
        },
    ),
    (
        "/fleethealth.v1.AdminService/Backup",
        Access::Callers {
            agents: false,
            roles: &[Role::Admin],
        },
    ),
    (
        "/fleethealth.v1.FleetService/SetMaintenance",
        Access::Callers {
            agents: false,
            roles: OPERATORS,
        },
    ),
    (
        "/fleethealth.v1.FleetService/ClearMaintenance",
        Access::Callers {
            agents: false,
            roles: OPERATORS,
        },
    ),
    (
        "/fleethealth.v1.FleetService/ClearGivenUp",
        Access::Callers {
            agents: false,
            roles: OPERATORS,
        },
    ),
    (
        "/fleethealth.v1.FleetService/ClaimAgent",
        Access::Callers {
            agents: false,
            roles: REMEDIATORS,
        },
    ),
    (
        "/fleethealth.v1.FleetService/ReleaseAgent",
        Access::Callers {
            agents: false,
            roles: REMEDIATORS,
        },
    ),
    (
        "/fleethealth.v1.FleetService/RecordRemediation",
        Access::Callers {
            agents: false,
            roles: REMEDIATORS,
        },
    ),
];

/// The row for `path`, if the table has one.
pub fn access(path: &str) -> Option<Access> {
    TABLE.iter().find(|(p, _)| *p == path).map(|(_, a)| *a)
}

/// What the table says of one call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead.
    Allow,
    /// Refused.
    Deny(Denied),
}

/// Why a call is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denied {
    /// The RPC has no row: nobody may call it.
    NotInTable,
    /// The RPC needs credentials and the caller has none.
    NoCredentials,
    /// The caller's identity does not admit this RPC.
    NotAllowed {
        /// Who called.
        who: String,
        /// Who may.
        allowed: String,
    },
}

impl Denied {
    /// A short word for metrics and the audit log.
    pub fn reason(&self) -> &'static str {
        match self {
            Denied::NotInTable => "unknown_rpc",
            Denied::NoCredentials => "no_credentials",
            Denied::NotAllowed { .. } => "role",
        }
    }
}

/// Whether `who` (`None`: no credentials) may call `path`.
pub fn decide(path: &str, who: Option<&Identity>) -> Decision {
    let Some(access) = access(path) else {
        return Decision::Deny(Denied::NotInTable);
    };
    let Access::Callers { agents, roles } = access else {
        return Decision::Allow;
    };
    let Some(who) = who else {
        return Decision::Deny(Denied::NoCredentials);
    };
    let admitted = match who {
        Identity::Agent(_) => agents,
        Identity::Holder { role, .. } => roles.contains(role),
    };
    if admitted {
        Decision::Allow
    } else {
        Decision::Deny(Denied::NotAllowed {
            who: who.to_string(),
            allowed: Allowed { agents, roles }.to_string(),
        })
    }
}

struct Allowed {
    agents: bool,
    roles: &'static [Role],
}

impl fmt::Display for Allowed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&str> = Vec::new();
        if self.agents {
            names.push("an agent (for itself)");
        }
        names.extend(self.roles.iter().map(|r| r.as_str()));
        match names.as_slice() {
            [] => f.write_str("nobody"),
            [one] => write!(f, "{one}"),
            [init @ .., last] => write!(f, "{} or {last}", init.join(", ")),
        }
    }
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denied::NotInTable => f.write_str("this RPC is not in the server's access table"),
            Denied::NoCredentials => f.write_str(
                "no credentials: present a client certificate signed by the server's client CA, or a token (--token, FLEET_HEALTH_TOKEN)",
            ),
            Denied::NotAllowed { who, allowed } => write!(
                f,
                "{who} may not call this RPC; it needs {allowed} (ask an admin for a certificate or token with that role)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use fleet_health_types::AgentId;

    use super::*;

    fn holder(role: Role) -> Identity {
        Identity::Holder {
            role,
            name: "n".into(),
            agents: vec![],
        }
    }

    #[test]
    fn the_table_has_one_row_per_rpc() {
        let mut paths: Vec<&str> = TABLE.iter().map(|(p, _)| *p).collect();
        paths.sort_unstable();
        paths.dedup();
        assert_eq!(paths.len(), TABLE.len(), "a path is in the table twice");
    }

    #[test]
    fn roles_get_what_the_docs_say() {
        let agent = Identity::Agent(AgentId::parse("a").unwrap());
        let forget = "/fleethealth.v1.FleetService/ForgetAgent";
        let list = "/fleethealth.v1.FleetService/ListAgents";
        let report = "/fleethealth.v1.AgentService/Report";
        let health = "/grpc.health.v1.Health/Check";
        assert_eq!(decide(health, None), Decision::Allow);
        assert_eq!(decide(list, None), Decision::Deny(Denied::NoCredentials));
        assert_eq!(decide(report, Some(&agent)), Decision::Allow);
        assert!(matches!(
            decide(list, Some(&agent)),
            Decision::Deny(Denied::NotAllowed { .. })
        ));
        for role in [Role::Reader, Role::Orchestrator, Role::Admin] {
            assert_eq!(decide(list, Some(&holder(role))), Decision::Allow);
        }
        assert!(matches!(
            decide(list, Some(&holder(Role::Relay))),
            Decision::Deny(_)
        ));
        assert_eq!(decide(report, Some(&holder(Role::Relay))), Decision::Allow);
        assert!(matches!(
            decide(report, Some(&holder(Role::Reader))),
            Decision::Deny(_)
        ));
        assert_eq!(decide(forget, Some(&holder(Role::Admin))), Decision::Allow);
        let Decision::Deny(denied) = decide(forget, Some(&holder(Role::Reader))) else {
            panic!("a reader may not forget");
        };
        assert_eq!(denied.reason(), "role");
        assert_eq!(
            denied.to_string(),
            "reader/n may not call this RPC; it needs admin (ask an admin for a certificate or token with that role)"
        );
        assert_eq!(
            decide("/x.Y/Z", Some(&holder(Role::Admin))),
            Decision::Deny(Denied::NotInTable)
        );
    }
}
