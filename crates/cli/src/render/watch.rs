//! The messages of a watch: a line each for people, an NDJSON object each for
//! scripts, and the note on stderr when the watch loses the server.

use std::io::{self, Write};
use std::time::Duration;

use fleet_health_client::{AgentView, ResyncCause, WatchChange};
use serde::Serialize;

use super::agents::{AgentJson, ts};
use super::summary::{StormJson, storm_line};
use super::time::format_time;
use super::{Style, write_ndjson};

/// One message of a watch, as NDJSON.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum WatchJson {
    Snapshot {
        agent: AgentJson,
    },
    Synced {
        count: u64,
        storm: Option<StormJson>,
        at: Option<String>,
    },
    Changed {
        agent: AgentJson,
    },
    Left {
        agent_id: String,
        forgotten: bool,
        agent: Option<AgentJson>,
    },
    /// `missed` is `null` after a reconnect, which also says
    /// `"reconnected": true`.
    Resync {
        missed: Option<u64>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        reconnected: bool,
    },
    Storm {
        storm: StormJson,
    },
}

/// A watch message as one NDJSON line.
pub fn watch_ndjson(out: &mut dyn Write, change: &WatchChange) -> io::Result<()> {
    let json = match change {
        WatchChange::Snapshot(a) => WatchJson::Snapshot { agent: a.into() },
        WatchChange::Synced { count, storm, at } => WatchJson::Synced {
            count: *count,
            storm: storm.as_ref().map(StormJson::from),
            at: ts(*at),
        },
        WatchChange::Changed(a) => WatchJson::Changed { agent: a.into() },
        WatchChange::Left {
            agent_id,
            status,
            forgotten,
        } => WatchJson::Left {
            agent_id: agent_id.clone(),
            forgotten: *forgotten,
            agent: status.as_ref().map(AgentJson::from),
        },
        WatchChange::Resync {
            cause: ResyncCause::FellBehind { missed },
        } => WatchJson::Resync {
            missed: Some(*missed),
            reconnected: false,
        },
        WatchChange::Resync {
            cause: ResyncCause::Reconnected { .. },
        } => WatchJson::Resync {
            missed: None,
            reconnected: true,
        },
        WatchChange::Storm(s) => WatchJson::Storm { storm: s.into() },
    };
    write_ndjson(out, &json)
}

/// A watch message as a line for people.
pub fn watch_line(style: Style, change: &WatchChange) -> String {
    let agent_line = |mark: &str, a: &AgentView| {
        let when = ts(a.since).unwrap_or_else(|| "-".into());
        let marked = if a.maintenance.is_some() {
            "  [maintenance]"
        } else {
            ""
        };
        format!(
            "{when}  {mark} {}  {}  {}{marked}",
            a.agent_id,
            style.state(a.state),
            a.why_text
        )
    };
    match change {
        WatchChange::Snapshot(a) => agent_line("=", a),
        WatchChange::Synced { count, storm, .. } => {
            let mut line = format!("-- {count} agent(s) now; watching for changes");
            if let Some(storm) = storm.as_ref().filter(|s| s.active) {
                line.push_str(&format!("\n{}", style.warn(&storm_line(storm))));
            }
            line
        }
        WatchChange::Changed(a) => agent_line("~", a),
        WatchChange::Left {
            agent_id,
            status,
            forgotten,
        } => match (status, forgotten) {
            (_, true) => format!(
                "{}  - {agent_id}  forgotten",
                format_time(fleet_health_client::now()),
            ),
            (Some(a), false) => agent_line("-", a),
            (None, false) => format!(
                "{}  - {agent_id}  left",
                format_time(fleet_health_client::now()),
            ),
        },
        WatchChange::Resync {
            cause: ResyncCause::FellBehind { missed },
        } => format!("-- fell behind ({missed} change(s) missed); a fresh snapshot follows"),
        WatchChange::Resync {
            cause: ResyncCause::Reconnected { .. },
        } => "-- reconnected to the server; a fresh snapshot follows".to_owned(),
        WatchChange::Storm(s) => {
            if s.active {
                style.warn(&storm_line(s))
            } else {
                storm_line(s)
            }
        }
    }
}

/// The note (for stderr) when a watch loses the server and starts trying to
/// reconnect.
pub fn lost_note(cause: &str, budget: Duration) -> String {
    format!(
        "fleet-health: lost the server ({cause}); reconnecting for up to {}",
        humantime::format_duration(budget)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::fixtures::{NOW, PLAIN, agent, render, storm, t};
    use fleet_health_client::{State, Why};

    #[test]
    fn watch_messages_are_tagged_ndjson() {
        let a = agent("db-7", State::Faulty, Why::NoDataSent, NOW);
        let changes = [
            WatchChange::Snapshot(a.clone()),
            WatchChange::Synced {
                count: 1,
                storm: Some(storm(false)),
                at: t(NOW),
            },
            WatchChange::Changed(a),
            WatchChange::Left {
                agent_id: "db-7".into(),
                status: None,
                forgotten: true,
            },
            WatchChange::Resync {
                cause: ResyncCause::FellBehind { missed: 3 },
            },
            WatchChange::Storm(storm(true)),
        ];
        let types: Vec<String> = changes
            .iter()
            .map(|e| {
                let v: serde_json::Value =
                    serde_json::from_str(&render(|o| watch_ndjson(o, e))).unwrap();
                v["type"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(
            types,
            ["snapshot", "synced", "changed", "left", "resync", "storm"]
        );
        let line = watch_line(PLAIN, &changes[2]);
        assert!(
            line.ends_with("~ db-7  faulty  no data sent to server"),
            "{line}"
        );
        assert_eq!(
            render(|o| watch_ndjson(o, &changes[4])),
            "{\"type\":\"resync\",\"missed\":3}\n"
        );
    }

    #[test]
    fn a_reconnect_is_a_resync_that_says_so() {
        let change = WatchChange::Resync {
            cause: ResyncCause::Reconnected {
                after: "the server ended the watch".into(),
            },
        };
        assert_eq!(
            render(|o| watch_ndjson(o, &change)),
            "{\"type\":\"resync\",\"missed\":null,\"reconnected\":true}\n"
        );
        assert_eq!(
            watch_line(PLAIN, &change),
            "-- reconnected to the server; a fresh snapshot follows"
        );
        assert_eq!(
            lost_note("the server ended the watch", Duration::from_secs(120)),
            "fleet-health: lost the server (the server ended the watch); reconnecting for up to 2m"
        );
        assert!(
            lost_note("x", Duration::from_millis(1500)).ends_with("for up to 1s 500ms"),
            "{}",
            lost_note("x", Duration::from_millis(1500))
        );
    }
}
