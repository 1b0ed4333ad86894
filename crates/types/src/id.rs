//! Agent IDs: 1 to 253 characters of `[A-Za-z0-9._:@/-]` (the length of the
//! longest DNS name; every allowed character is one byte, so characters and
//! bytes count the same).

use std::fmt;

pub use arcstr::ArcStr;

/// The longest agent ID accepted, in characters.
pub const MAX_AGENT_ID_LEN: usize = 253;

/// The characters an agent ID may hold besides ASCII letters and digits.
const PUNCTUATION: &[u8] = b"._:@/-";

/// A checked agent ID. Cloning it shares the text.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AgentId(ArcStr);

/// Why a string is not an agent ID.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AgentIdError {
    /// The string is empty.
    #[error("agent ID is empty (an agent ID is 1 to 253 characters of [A-Za-z0-9._:@/-])")]
    Empty,
    /// The string is longer than [`MAX_AGENT_ID_LEN`] characters.
    #[error(
        "agent ID is {0} characters long (an agent ID is 1 to 253 characters of [A-Za-z0-9._:@/-])"
    )]
    TooLong(usize),
    /// The string holds a character outside the set.
    #[error("agent ID contains {0:?} (an agent ID is 1 to 253 characters of [A-Za-z0-9._:@/-])")]
    BadChar(char),
}

impl AgentId {
    /// Checks `s` against the rule: 1 to 253 characters of `[A-Za-z0-9._:@/-]`.
    pub fn parse(s: &str) -> Result<AgentId, AgentIdError> {
        check(s)?;
        Ok(AgentId(ArcStr::from(s)))
    }

    /// Checks shared text against the rule, keeping it without a copy.
    pub fn from_arc(s: ArcStr) -> Result<AgentId, AgentIdError> {
        check(&s)?;
        Ok(AgentId(s))
    }

    /// Shared text that was checked when it entered the process (the key of
    /// a registry that admits only checked IDs): kept as it is, not checked
    /// again. Text from outside goes through [`AgentId::parse`].
    pub fn from_checked(s: ArcStr) -> AgentId {
        debug_assert!(check(&s).is_ok(), "{s:?} is not an agent ID");
        AgentId(s)
    }

    /// The ID as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shared text, for keys that must not copy it.
    pub fn as_arc(&self) -> &ArcStr {
        &self.0
    }
}

fn check(s: &str) -> Result<(), AgentIdError> {
    if s.is_empty() {
        return Err(AgentIdError::Empty);
    }
    if let Some(c) = s.chars().find(|c| {
        !(c.is_ascii_alphanumeric() || (c.is_ascii() && PUNCTUATION.contains(&(*c as u8))))
    }) {
        return Err(AgentIdError::BadChar(c));
    }
    // Every character left is ASCII: the byte length is the character count.
    if s.len() > MAX_AGENT_ID_LEN {
        return Err(AgentIdError::TooLong(s.len()));
    }
    Ok(())
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for AgentId {
    type Err = AgentIdError;

    fn from_str(s: &str) -> Result<AgentId, AgentIdError> {
        AgentId::parse(s)
    }
}

impl AsRef<str> for AgentId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_ids_follow_the_rule() {
        for ok in ["a", "web-1", "site/host.example.com", "u@h:9", "A_b.C"] {
            assert_eq!(AgentId::parse(ok).unwrap().as_str(), ok);
        }
        assert!(AgentId::parse(&"x".repeat(253)).is_ok());
        assert_eq!(AgentId::parse(""), Err(AgentIdError::Empty));
        assert_eq!(
            AgentId::parse(&"x".repeat(254)),
            Err(AgentIdError::TooLong(254))
        );
        assert_eq!(AgentId::parse("has space"), Err(AgentIdError::BadChar(' ')));
        assert_eq!(AgentId::parse("é"), Err(AgentIdError::BadChar('é')));
        assert_eq!(AgentId::parse("a\n"), Err(AgentIdError::BadChar('\n')));
        // A multi-byte character is refused for what it is, never counted as
        // several characters.
        assert_eq!(
            AgentId::parse(&"é".repeat(200)),
            Err(AgentIdError::BadChar('é'))
        );
        for bad in ["", "semi;colon", &"x".repeat(254)] {
            let err = AgentId::parse(bad).unwrap_err().to_string();
            assert!(err.contains("1 to 253 characters"), "{err}");
        }
    }
}
