//! Bearer tokens and the tokens file.
//!
//! A token is a secret of 32 random bytes, written `fht_` and 64 hex digits.
//! The tokens file (TOML, `--tokens FILE` on the server) holds, for each
//! token, its name, role, agent patterns (for a relay), times, and the
//! SHA-256 of the secret, never the secret itself:
//!
//! ```toml
//! [[token]]
//! name = "ci-reader"
//! role = "reader"
//! sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! created = "2026-11-25T04:00:00Z"
//! expires = "2026-12-25T04:00:00Z"   # optional
//! # agents = ["site-a-*"]            # a relay's patterns
//! ```
//!
//! A secret is long and random, so one SHA-256 is enough to store it (no
//! slow hash is needed against guessing); a presented secret is compared
//! with every entry in constant time.

use std::fmt::Write as _;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::identity::Identity;
use crate::pattern::AgentPattern;
use crate::role::Role;

/// The prefix of every secret: it tells a reader of a log or a config what
/// the string is.
pub const SECRET_PREFIX: &str = "fht_";

/// One token as the file holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenEntry {
    /// The token's name, unique in the file.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// For a relay: the agent IDs it may report for.
    pub agents: Vec<AgentPattern>,
    /// SHA-256 of the secret.
    pub sha256: [u8; 32],
    /// When it was made.
    pub created: SystemTime,
    /// When it stops working, if ever.
    pub expires: Option<SystemTime>,
}

impl TokenEntry {
    /// The identity the token gives.
    pub fn identity(&self) -> Identity {
        Identity::Holder {
            role: self.role,
            name: self.name.clone(),
            agents: self.agents.clone(),
        }
    }

    /// Whether it has expired at `now`.
    pub fn expired_at(&self, now: SystemTime) -> bool {
        self.expires.is_some_and(|e| e <= now)
    }
}

/// The parsed tokens file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenFile {
    entries: Vec<TokenEntry>,
}

/// What a presented secret is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenMatch<'a> {
    /// A token in the file, not expired.
    Valid(&'a TokenEntry),
    /// A token in the file whose expiry has passed.
    Expired(&'a TokenEntry),
    /// No token in the file has this secret.
    Unknown,
}

/// Why a tokens file or a new token is refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file is not valid TOML of the tokens file's shape.
    #[error("tokens file: {0}")]
    Syntax(String),
    /// An entry breaks a rule.
    #[error("tokens file{}: token {name:?}: {why}", at_line(*.line))]
    Entry {
        /// The line of the entry's `[[token]]` header (none for a token
        /// being made).
        line: Option<usize>,
        /// The token's name.
        name: String,
        /// Why.
        why: String,
    },
    /// A token of this name is already in the file (when adding one).
    #[error("tokens file: there is already a token named {0:?}")]
    DuplicateName(String),
    /// Two entries of the file have the same name.
    #[error(
        "tokens file line {line}: a token named {name:?} is already on line {first}; names must be unique"
    )]
    SameName {
        /// The name.
        name: String,
        /// The line of the first entry.
        first: usize,
        /// The line of the second.
        line: usize,
    },
    /// Two entries have the same secret.
    #[error(
        "tokens file line {line}: token {name:?} has the same secret as token {first_name:?} on line {first}"
    )]
    DuplicateSecret {
        /// The first entry's name.
        first_name: String,
        /// Its line.
        first: usize,
        /// The second entry's name.
        name: String,
        /// Its line.
        line: usize,
    },
    /// The system could not make a random secret.
    #[error("cannot make a random secret: {0}")]
    Random(String),
}

fn at_line(line: Option<usize>) -> String {
    line.map_or_else(String::new, |l| format!(" line {l}"))
}

/// The file's shape, as TOML (written).
#[derive(Debug, Default, Serialize)]
struct Raw {
    token: Vec<RawEntry>,
}

/// The file's shape, as TOML (read): each entry with where it is.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIn {
    #[serde(default)]
    token: Vec<toml::Spanned<RawEntry>>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    name: String,
    role: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    agents: Vec<String>,
    sha256: String,
    created: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires: Option<String>,
}

impl TokenFile {
    /// Parses the file's text. An empty file holds no tokens.
    pub fn parse(text: &str) -> Result<TokenFile, TokenError> {
        let raw: RawIn = toml::from_str(text).map_err(|e| TokenError::Syntax(e.to_string()))?;
        let line_of = |at: usize| 1 + text.get(..at).map_or(0, |t| t.matches('\n').count());
        let mut entries: Vec<(usize, TokenEntry)> = Vec::with_capacity(raw.token.len());
        for r in raw.token {
            let line = line_of(r.span().start);
            let entry = r.into_inner().check(Some(line))?;
            if let Some((first, _)) = entries.iter().find(|(_, e)| e.name == entry.name) {
                return Err(TokenError::SameName {
                    name: entry.name,
                    first: *first,
                    line,
                });
            }
            if let Some((first, twin)) = entries.iter().find(|(_, e)| e.sha256 == entry.sha256) {
                return Err(TokenError::DuplicateSecret {
                    first_name: twin.name.clone(),
                    first: *first,
                    name: entry.name,
                    line,
                });
            }
            entries.push((line, entry));
        }
        Ok(TokenFile {
            entries: entries.into_iter().map(|(_, e)| e).collect(),
        })
    }

    /// The tokens, in file order.
    pub fn entries(&self) -> &[TokenEntry] {
        &self.entries
    }

    /// The entry named `name`.
    pub fn get(&self, name: &str) -> Option<&TokenEntry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// What `secret` is at `now`. Every entry is compared, in constant time
    /// each, whether or not an earlier one matched.
    pub fn verify(&self, secret: &str, now: SystemTime) -> TokenMatch<'_> {
        self.lookup(&hash_secret(secret), now)
    }

    /// What the token whose secret hashes to `sha256` is at `now` (used to
    /// check the token of an open stream again after a reload: it may have
    /// been removed, have expired, or now give another role). Every entry
    /// is compared, in constant time each.
    pub fn lookup(&self, sha256: &[u8; 32], now: SystemTime) -> TokenMatch<'_> {
        let mut found = None;
        for entry in &self.entries {
            if bool::from(entry.sha256.ct_eq(sha256)) {
                found = Some(entry);
            }
        }
        match found {
            Some(e) if e.expired_at(now) => TokenMatch::Expired(e),
            Some(e) => TokenMatch::Valid(e),
            None => TokenMatch::Unknown,
        }
    }

    /// Whether an entry with exactly this hash is in the file and valid at
    /// `now`.
    pub fn still_valid(&self, sha256: &[u8; 32], now: SystemTime) -> bool {
        matches!(self.lookup(sha256, now), TokenMatch::Valid(_))
    }
}

/// The SHA-256 of a presented secret, as the file stores it.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// A new token: the secret (to print once) and the entry to store.
pub fn new_token(
    name: &str,
    role: Role,
    agents: Vec<AgentPattern>,
    expires: Option<SystemTime>,
    now: SystemTime,
) -> Result<(String, TokenEntry), TokenError> {
    let entry_err = |why: String| TokenError::Entry {
        line: None,
        name: name.to_string(),
        why,
    };
    check_token_name(name).map_err(entry_err)?;
    check_agents(role, &agents).map_err(entry_err)?;
    if expires.is_some_and(|e| e <= now) {
        return Err(entry_err("its expiry is not in the future".into()));
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| TokenError::Random(e.to_string()))?;
    let secret = format!("{SECRET_PREFIX}{}", hex(&bytes));
    let entry = TokenEntry {
        name: name.to_string(),
        role,
        agents,
        sha256: hash_secret(&secret),
        created: now,
        expires,
    };
    Ok((secret, entry))
}

/// The tokens file's text with `entry` added at the end (comments and the
/// other entries kept as written). With `replace`, an entry of the same
/// name is taken out first; without it, a name already used is refused.
pub fn add_to_file(text: &str, entry: &TokenEntry, replace: bool) -> Result<String, TokenError> {
    let file = TokenFile::parse(text)?;
    let mut out = if file.get(&entry.name).is_some() {
        if !replace {
            return Err(TokenError::DuplicateName(entry.name.clone()));
        }
        let kept = TokenFile {
            entries: file
                .entries
                .into_iter()
                .filter(|e| e.name != entry.name)
                .collect(),
        };
        kept.to_text()
    } else {
        text.to_string()
    };
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    if !out.is_empty() {
        out.push('\n');
    }
    out.push_str(&entry_text(entry));
    // What was written must read back.
    TokenFile::parse(&out)?;
    Ok(out)
}

/// The text of the tokens file without the entry named `name`, and whether
/// one was there.
pub fn remove_from_file(text: &str, name: &str) -> Result<(String, bool), TokenError> {
    let file = TokenFile::parse(text)?;
    let before = file.entries.len();
    let kept = TokenFile {
        entries: file
            .entries
            .into_iter()
            .filter(|e| e.name != name)
            .collect(),
    };
    let removed = kept.entries.len() != before;
    Ok((kept.to_text(), removed))
}

impl TokenFile {
    fn to_text(&self) -> String {
        let mut out = String::from(HEADER);
        for e in &self.entries {
            out.push('\n');
            out.push_str(&entry_text(e));
        }
        out
    }
}

const HEADER: &str = "# fleet-health tokens: names, roles and SHA-256 hashes of secrets (never the secrets).\n# Made by `fleet-health token create`; the server reloads this file when it changes.\n";

fn entry_text(e: &TokenEntry) -> String {
    let raw = Raw {
        token: vec![RawEntry {
            name: e.name.clone(),
            role: e.role.to_string(),
            agents: e.agents.iter().map(|p| p.to_string()).collect(),
            sha256: hex(&e.sha256),
            created: humantime::format_rfc3339_seconds(e.created).to_string(),
            expires: e
                .expires
                .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
        }],
    };
    toml::to_string(&raw).expect("plain strings serialize")
}

impl RawEntry {
    fn check(self, line: Option<usize>) -> Result<TokenEntry, TokenError> {
        let name = self.name;
        let err = |why: String| TokenError::Entry {
            line,
            name: name.clone(),
            why,
        };
        check_token_name(&name).map_err(err)?;
        let role: Role = self.role.parse().map_err(err)?;
        let agents = self
            .agents
            .iter()
            .map(|p| AgentPattern::parse(p).map_err(|e| err(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        check_agents(role, &agents).map_err(err)?;
        let sha256 =
            unhex(&self.sha256).ok_or_else(|| err("sha256 is not 64 hex digits".to_string()))?;
        let time = |field: &str, s: &str| {
            humantime::parse_rfc3339_weak(s)
                .map_err(|e| err(format!("{field} {s:?} is not an RFC 3339 time: {e}")))
        };
        let created = time("created", &self.created)?;
        let expires = self
            .expires
            .as_deref()
            .map(|s| time("expires", s))
            .transpose()?;
        Ok(TokenEntry {
            name: name.clone(),
            role,
            agents,
            sha256,
            created,
            expires,
        })
    }
}

fn check_token_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._@:-".contains(&c));
    if ok {
        Ok(())
    } else {
        Err("a token's name is 1 to 128 characters of [A-Za-z0-9._@:-]".into())
    }
}

fn check_agents(role: Role, agents: &[AgentPattern]) -> Result<(), String> {
    match (role, agents.is_empty()) {
        (Role::Relay, true) => {
            Err("a relay needs at least one agent pattern (--agents PATTERN)".into())
        }
        (Role::Relay, false) | (_, true) => Ok(()),
        (_, false) => Err(format!(
            "agent patterns are for relays only; a {role} reads or acts on the whole fleet"
        )),
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.as_bytes().chunks(2).enumerate() {
        let pair = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    #[test]
    fn a_new_token_verifies_and_only_its_hash_is_written() {
        let (secret, entry) = new_token("ci", Role::Reader, vec![], None, at(0)).unwrap();
        assert!(secret.starts_with(SECRET_PREFIX) && secret.len() == 4 + 64);
        let text = add_to_file("", &entry, false).unwrap();
        assert!(!text.contains(&secret[4..]), "{text}");
        let file = TokenFile::parse(&text).unwrap();
        assert_eq!(file.entries(), &[entry.clone()][..]);
        assert_eq!(
            file.verify(&secret, at(5)),
            TokenMatch::Valid(&file.entries()[0])
        );
        assert_eq!(file.verify("fht_wrong", at(5)), TokenMatch::Unknown);
        assert!(file.still_valid(&entry.sha256, at(5)));
        assert_eq!(
            file.lookup(&entry.sha256, at(5)),
            TokenMatch::Valid(&file.entries()[0])
        );
        assert_eq!(file.lookup(&[0; 32], at(5)), TokenMatch::Unknown);
        // Two tokens never share a secret.
        let (other, _) = new_token("ci2", Role::Reader, vec![], None, at(0)).unwrap();
        assert_ne!(secret, other);
    }

    #[test]
    fn expiry_is_checked_at_the_time_given() {
        let (secret, entry) = new_token("short", Role::Admin, vec![], Some(at(60)), at(0)).unwrap();
        let file = TokenFile::parse(&add_to_file("", &entry, false).unwrap()).unwrap();
        assert!(matches!(file.verify(&secret, at(59)), TokenMatch::Valid(_)));
        assert!(matches!(
            file.verify(&secret, at(60)),
            TokenMatch::Expired(_)
        ));
        assert!(!file.still_valid(&entry.sha256, at(61)));
        assert!(new_token("past", Role::Admin, vec![], Some(at(0)), at(1)).is_err());
    }

    #[test]
    fn adding_keeps_what_is_there_and_refuses_a_second_name() {
        let (_, a) = new_token("a", Role::Reader, vec![], None, at(0)).unwrap();
        let (_, b) = new_token(
            "b",
            Role::Relay,
            vec![AgentPattern::parse("site-a-*").unwrap()],
            None,
            at(0),
        )
        .unwrap();
        let text = add_to_file("# mine\n", &a, false).unwrap();
        let text = add_to_file(&text, &b, false).unwrap();
        assert!(text.starts_with("# mine\n"));
        let file = TokenFile::parse(&text).unwrap();
        assert_eq!(file.entries().len(), 2);
        assert!(file.get("b").unwrap().identity().may_report_for("site-a-1"));
        assert!(matches!(
            add_to_file(&text, &a, false),
            Err(TokenError::DuplicateName(n)) if n == "a"
        ));
        let (_, a2) = new_token("a", Role::Admin, vec![], None, at(1)).unwrap();
        let replaced = TokenFile::parse(&add_to_file(&text, &a2, true).unwrap()).unwrap();
        assert_eq!(replaced.get("a").unwrap().role, Role::Admin);
        assert_eq!(replaced.entries().len(), 2);
        let (removed, was) = remove_from_file(&text, "a").unwrap();
        assert!(was);
        assert!(TokenFile::parse(&removed).unwrap().get("a").is_none());
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        assert_eq!(TokenFile::parse("").unwrap().entries().len(), 0);
        for (text, says) in [
            ("[[token]]\nname = \"x\"\n", "missing field"),
            ("not toml", "tokens file"),
            (
                "[[token]]\nname=\"x\"\nrole=\"root\"\nsha256=\"00\"\ncreated=\"2026-01-01T00:00:00Z\"\n",
                "unknown role",
            ),
            (
                "[[token]]\nname=\"x\"\nrole=\"reader\"\nsha256=\"00\"\ncreated=\"2026-01-01T00:00:00Z\"\n",
                "64 hex digits",
            ),
            (
                "[[token]]\nname=\"x\"\nrole=\"relay\"\nsha256=\"00\"\ncreated=\"2026-01-01T00:00:00Z\"\n",
                "at least one agent pattern",
            ),
        ] {
            let err = TokenFile::parse(text).unwrap_err().to_string();
            assert!(err.contains(says), "{text}: {err}");
        }
        let (_, a) = new_token("a", Role::Reader, vec![], None, at(0)).unwrap();
        let one = entry_text(&a);
        let lines = one.lines().count();
        let twice = format!("{one}\n{one}");
        let err = TokenFile::parse(&twice).unwrap_err();
        assert!(
            matches!(err, TokenError::SameName { first: 1, line, .. } if line == lines + 2),
            "{err:?}"
        );
        assert!(
            err.to_string().contains(&format!(
                "line {}: a token named \"a\" is already on line 1",
                lines + 2
            )),
            "{err}"
        );
        let renamed = one.replace("name = \"a\"", "name = \"b\"");
        let err = TokenFile::parse(&format!("{one}\n{renamed}"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!(
                "line {}: token \"b\" has the same secret as token \"a\" on line 1",
                lines + 2
            )),
            "{err}"
        );
    }

    #[test]
    fn errors_name_the_line() {
        // A rule broken in the second entry: the line of its header.
        let (_, a) = new_token("a", Role::Reader, vec![], None, at(0)).unwrap();
        let text = format!(
            "# tokens\n\n{}\n[[token]]\nname=\"x\"\nrole=\"root\"\nsha256=\"00\"\ncreated=\"2026-01-01T00:00:00Z\"\n",
            entry_text(&a)
        );
        let header = text
            .lines()
            .enumerate()
            .filter(|(_, l)| *l == "[[token]]")
            .nth(1)
            .map(|(i, _)| i + 1)
            .unwrap();
        let err = TokenFile::parse(&text).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "tokens file line {header}: token \"x\": unknown role"
            )),
            "{err}"
        );
        // Syntax errors carry toml's own position.
        let err = TokenFile::parse("[[token]]\nname = \"x\nrole = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
        // A token being made has no line.
        let err = new_token("bad name", Role::Reader, vec![], None, at(0))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("tokens file: token \"bad name\": "),
            "{err}"
        );
    }
}
