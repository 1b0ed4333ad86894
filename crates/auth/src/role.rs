//! The roles of everyone who is not an agent speaking for itself.

use std::fmt;

/// A role: what its holder may do, from the table in [`crate::policy`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Reads the fleet: get, list, watch, summary, history.
    Reader,
    /// A reader that also acts on the fleet as remediation needs.
    Orchestrator,
    /// Everything, forgetting agents included.
    Admin,
    /// Reports for agents whose IDs match its patterns: a site gateway, or
    /// scripts that run `fleet-health report`.
    Relay,
}

impl Role {
    /// Every role, in the order of the table.
    pub const ALL: [Role; 4] = [Role::Reader, Role::Orchestrator, Role::Admin, Role::Relay];

    /// The role's name, as in certificates, tokens and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Orchestrator => "orchestrator",
            Role::Admin => "admin",
            Role::Relay => "relay",
        }
    }

    /// The role named `s`.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        Role::parse(s).ok_or_else(|| {
            format!("unknown role {s:?} (roles: reader, orchestrator, admin, relay)")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
            assert_eq!(role.to_string().parse::<Role>(), Ok(role));
        }
        assert_eq!(Role::parse("root"), None);
        assert!(
            "root"
                .parse::<Role>()
                .unwrap_err()
                .contains("reader, orchestrator")
        );
    }
}
