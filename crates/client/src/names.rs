//! The names people and scripts use: agent IDs, label keys, event names and
//! reasons, checked and translated in one place. Every part of the client
//! crate (the reporter, the fleet client) and the CLI checks names here and
//! nowhere else.
//!
//! Lengths: agent IDs and label keys allow only ASCII characters, so their
//! limits in characters and in bytes are the same; a label value may hold
//! any text and its limit is in bytes, as the server counts it.

use std::fmt;

use crate::proto::{EventKind, State, StateFilter, Why};

/// The longest agent ID, in characters (the longest DNS name).
pub const MAX_AGENT_ID_LEN: usize = 253;
/// The most labels a Hello may carry.
pub const MAX_LABELS: usize = 32;
/// The longest label key, in characters.
pub const MAX_LABEL_KEY_LEN: usize = 63;
/// The longest label value, in bytes.
pub const MAX_LABEL_VALUE_LEN: usize = 255;

/// A name that breaks the rules of agent IDs or labels.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The agent ID is empty, too long, or holds a character outside the set.
    #[error(
        "invalid agent ID {id:?}: an agent ID is 1 to 253 characters of A-Z, a-z, 0-9 and . _ : @ / -"
    )]
    AgentId {
        /// The refused ID.
        id: String,
    },
    /// A label key is empty, too long, or holds a character outside the set.
    #[error(
        "invalid label key {key:?}: a label key is 1 to 63 characters of A-Z, a-z, 0-9 and . _ / -"
    )]
    LabelKey {
        /// The refused key.
        key: String,
    },
    /// A label value is longer than 255 bytes.
    #[error("label {key:?}: the value is longer than 255 bytes")]
    LabelValue {
        /// The key whose value was refused.
        key: String,
    },
    /// More than 32 labels.
    #[error("too many labels ({count}): at most 32")]
    TooManyLabels {
        /// How many were given.
        count: usize,
    },
}

/// Checks an agent ID: 1 to 253 characters of `[A-Za-z0-9._:@/-]`, the rule
/// the server enforces.
pub fn validate_agent_id(id: &str) -> Result<(), NameError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_AGENT_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:@/-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(NameError::AgentId { id: id.to_owned() })
    }
}

/// Checks one label: a key of 1 to 63 characters of `[A-Za-z0-9._/-]` and a
/// value of at most 255 bytes.
pub fn validate_label(key: &str, value: &str) -> Result<(), NameError> {
    let key_ok = !key.is_empty()
        && key.len() <= MAX_LABEL_KEY_LEN
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b));
    if !key_ok {
        return Err(NameError::LabelKey {
            key: key.to_owned(),
        });
    }
    if value.len() > MAX_LABEL_VALUE_LEN {
        return Err(NameError::LabelValue {
            key: key.to_owned(),
        });
    }
    Ok(())
}

/// Every event kind with its name as the reference sensor spells it (its
/// method names), and the fleet's two.
pub const EVENT_NAMES: [(EventKind, &str); 8] = [
    (EventKind::Starting, "starting"),
    (EventKind::ShuttingDown, "shutting_down"),
    (EventKind::ServerDataReceived, "server_data_received"),
    (EventKind::ServerDataSent, "server_data_sent"),
    (EventKind::Registered, "registered"),
    (EventKind::Unregistered, "unregistered"),
    (EventKind::Heartbeat, "heartbeat"),
    (EventKind::Stopped, "stopped"),
];

/// The name of an event kind (`"server_data_sent"`), or `"unspecified"`.
pub fn event_name(kind: EventKind) -> &'static str {
    EVENT_NAMES
        .iter()
        .find(|(k, _)| *k == kind)
        .map_or("unspecified", |(_, name)| name)
}

/// The event kind of a name as the reference spells it (`"shutting_down"`).
pub fn event_kind(name: &str) -> Option<EventKind> {
    EVENT_NAMES
        .iter()
        .find(|(_, n)| *n == name)
        .map(|(k, _)| *k)
}

/// Every reason with its short name (for flags) and its exact text.
pub const WHY_NAMES: [(Why, &str, &str); 9] = [
    (Why::AllIsOk, "all-is-ok", "all is ok"),
    (
        Why::ShutdownInProgress,
        "shutdown-in-progress",
        "shutdown is in progress",
    ),
    (Why::NotRegistered, "not-registered", "not registered"),
    (Why::NoDataSent, "no-data-sent", "no data sent to server"),
    (
        Why::NoDataReceived,
        "no-data-received",
        "no data received from server",
    ),
    (
        Why::StuckAtShutdown,
        "stuck-at-shutdown",
        "stuck at shutdown",
    ),
    (Why::NotReporting, "not-reporting", "not reporting"),
    (Why::Stopped, "stopped", "stopped"),
    (Why::Inactive, "inactive", "inactive"),
];

/// The short name of a reason (`"no-data-sent"`), or `"unspecified"`.
pub fn why_name(why: Why) -> &'static str {
    WHY_NAMES
        .iter()
        .find(|(w, _, _)| *w == why)
        .map_or("unspecified", |(_, name, _)| name)
}

/// The exact text of a reason (`"no data sent to server"`), or `""`.
pub fn why_text(why: Why) -> &'static str {
    WHY_NAMES
        .iter()
        .find(|(w, _, _)| *w == why)
        .map_or("", |(_, _, text)| text)
}

/// The reason named by its short name or its exact text, in any case, with
/// `_` or `-` or spaces between words (`no-data-sent`, `"no data sent to
/// server"`, `NO_DATA_SENT`, `WHY_NO_DATA_SENT`).
pub fn parse_why(input: &str) -> Option<Why> {
    let norm = normalize(input);
    let norm = norm.strip_prefix("why-").unwrap_or(&norm);
    WHY_NAMES
        .iter()
        .find(|(_, name, text)| norm == *name || norm == normalize(text))
        .map(|(w, _, _)| *w)
}

fn normalize(s: &str) -> String {
    s.trim()
        .chars()
        .map(|c| match c {
            '_' | ' ' => '-',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// The word for a state: `healthy`, `faulty`, `inactive` or `unspecified`.
pub fn state_name(state: State) -> &'static str {
    match state {
        State::Healthy => "healthy",
        State::Faulty => "faulty",
        State::Inactive => "inactive",
        State::Unspecified => "unspecified",
    }
}

/// The word for a state filter: `active`, `faulty`, `healthy`, `inactive`,
/// `all`.
pub fn state_filter_name(filter: StateFilter) -> &'static str {
    match filter {
        StateFilter::Unspecified | StateFilter::Active => "active",
        StateFilter::Faulty => "faulty",
        StateFilter::Healthy => "healthy",
        StateFilter::Inactive => "inactive",
        StateFilter::All => "all",
    }
}

/// Displays an [`EventKind`] by its reference name.
#[derive(Clone, Copy, Debug)]
pub struct EventName(pub EventKind);

impl fmt::Display for EventName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(event_name(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_ids_follow_the_rule() {
        for ok in ["a", "web-1", "site/host.example.com", "u@h:9", "A_b.C"] {
            assert_eq!(validate_agent_id(ok), Ok(()), "{ok}");
        }
        let long_ok = "x".repeat(253);
        assert_eq!(validate_agent_id(&long_ok), Ok(()));
        for bad in ["", "has space", "é", "a\n", "semi;colon", &"x".repeat(254)] {
            let err = validate_agent_id(bad).unwrap_err();
            assert!(err.to_string().contains("1 to 253 characters"), "{err}");
        }
    }

    #[test]
    fn labels_follow_the_rule() {
        assert_eq!(validate_label("site", "eu-west/1 a"), Ok(()));
        assert!(validate_label("", "v").is_err());
        assert!(validate_label("a:b", "v").is_err());
        assert!(validate_label(&"k".repeat(64), "v").is_err());
        assert!(validate_label("k", &"v".repeat(256)).is_err());
        assert_eq!(validate_label("k", &"v".repeat(255)), Ok(()));
    }

    #[test]
    fn event_names_round_trip_and_match_the_proto() {
        for (kind, name) in EVENT_NAMES {
            assert_eq!(event_kind(name), Some(kind));
            assert_eq!(event_name(kind), name);
            // The proto's names are the same words, upper case with a prefix.
            assert_eq!(
                kind.as_str_name(),
                format!("EVENT_KIND_{}", name.to_ascii_uppercase())
            );
        }
        assert_eq!(event_kind("shutting-down"), None);
        assert_eq!(event_name(EventKind::Unspecified), "unspecified");
    }

    #[test]
    fn reasons_parse_from_names_texts_and_proto_names() {
        for (why, name, text) in WHY_NAMES {
            assert_eq!(parse_why(name), Some(why));
            assert_eq!(parse_why(text), Some(why));
            assert_eq!(parse_why(why.as_str_name()), Some(why));
            assert_eq!(why_name(why), name);
            assert_eq!(why_text(why), text);
        }
        assert_eq!(parse_why("No Data Sent To Server"), Some(Why::NoDataSent));
        assert_eq!(parse_why("no_data_received"), Some(Why::NoDataReceived));
        assert_eq!(parse_why("bogus"), None);
    }

    #[test]
    fn why_texts_of_the_sensor_match_the_sensor_crate() {
        use fleet_health_sensor::Why as S;
        let pairs = [
            (S::AllIsOk, Why::AllIsOk),
            (S::ShutdownInProgress, Why::ShutdownInProgress),
            (S::NotRegistered, Why::NotRegistered),
            (S::NoDataSent, Why::NoDataSent),
            (S::NoDataReceived, Why::NoDataReceived),
            (S::StuckAtShutdown, Why::StuckAtShutdown),
        ];
        for (s, w) in pairs {
            assert_eq!(s.as_str(), why_text(w));
        }
    }
}
