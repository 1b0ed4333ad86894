//! Agent-ID patterns: what a relay may report for.
//!
//! A pattern is an agent ID in which `*` stands for any run of characters
//! (none included): `site-a-*`, `*.eu-west.example.com`, `*`. Every other
//! character stands for itself.

use std::fmt;

use fleet_health_types::AgentId;

/// A checked agent-ID pattern.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AgentPattern(String);

/// Why a string is not an agent-ID pattern.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "agent pattern {pattern:?} is not valid: {why} (a pattern is an agent ID in which * stands for any run of characters)"
)]
pub struct PatternError {
    pattern: String,
    why: String,
}

impl AgentPattern {
    /// Parses `s`: an agent ID, with `*` allowed anywhere.
    pub fn parse(s: &str) -> Result<AgentPattern, PatternError> {
        let bad = |why: String| PatternError {
            pattern: s.to_string(),
            why,
        };
        if s.is_empty() {
            return Err(bad("it is empty".into()));
        }
        // What is left once the stars are out must be made of agent-ID
        // characters; check each literal run with the agent ID's own rule.
        for part in s.split('*').filter(|p| !p.is_empty()) {
            AgentId::parse(part).map_err(|e| bad(e.to_string()))?;
        }
        if s.len() > fleet_health_types::MAX_AGENT_ID_LEN {
            return Err(bad("it is longer than any agent ID".into()));
        }
        Ok(AgentPattern(s.to_string()))
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `id` matches.
    pub fn matches(&self, id: &str) -> bool {
        glob(self.0.as_bytes(), id.as_bytes())
    }
}

/// `*`-only glob matching, iterative with one backtrack point: linear in
/// practice and never exponential.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

impl fmt::Display for AgentPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for AgentPattern {
    type Err = PatternError;

    fn from_str(s: &str) -> Result<AgentPattern, PatternError> {
        AgentPattern::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> AgentPattern {
        AgentPattern::parse(s).expect("a pattern")
    }

    #[test]
    fn stars_match_any_run() {
        assert!(p("*").matches("anything"));
        assert!(p("site-a-*").matches("site-a-"));
        assert!(p("site-a-*").matches("site-a-web-1"));
        assert!(!p("site-a-*").matches("site-b-web-1"));
        assert!(p("*.eu.example").matches("h1.eu.example"));
        assert!(!p("*.eu.example").matches("h1.eu.example.org"));
        assert!(p("a*b*c").matches("aXbYc"));
        assert!(p("a*b*c").matches("abc"));
        assert!(!p("a*b*c").matches("acb"));
        assert!(p("exact").matches("exact"));
        assert!(!p("exact").matches("exact2"));
        assert!(!p("exact").matches("exac"));
        assert!(p("a**").matches("a"));
    }

    #[test]
    fn bad_patterns_say_why() {
        assert!(AgentPattern::parse("").is_err());
        let err = AgentPattern::parse("site a*").unwrap_err().to_string();
        assert!(
            err.contains("' '") && err.contains("stands for any run"),
            "{err}"
        );
        assert!(AgentPattern::parse(&"x".repeat(254)).is_err());
    }

    #[test]
    fn long_texts_do_not_blow_up() {
        let text = "a".repeat(253);
        assert!(!p("*a*a*a*a*a*a*a*a*b").matches(&text));
    }
}
