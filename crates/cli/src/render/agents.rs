//! One agent or a list of them: a table and a detail view for people, the
//! agent JSON shape, NDJSON, and IDs one a line.

use std::collections::BTreeMap;
use std::io::{self, Write};

use fleet_health_client::{AgentList, AgentView, SensorView, State, Time};

use crate::config::SortBy;
use serde::Serialize;

use super::ops::{
    ClaimJson, GivenUpJson, MaintenanceJson, claim_words, given_up_words, maintenance_words,
};
use super::time::{format_time, human_duration, relative};
use super::{Cell, Style, state_name, why_name, write_json, write_ndjson, write_table};

/// One agent, as JSON.
#[derive(Debug, Serialize)]
pub struct AgentJson {
    agent_id: String,
    healthy: bool,
    state: &'static str,
    why: String,
    why_name: &'static str,
    since: Option<String>,
    last_heard: Option<String>,
    connected: bool,
    labels: BTreeMap<String, String>,
    incarnation: String,
    last_seq: u64,
    next_change: Option<String>,
    stopped_at: Option<String>,
    first_seen: Option<String>,
    evaluated_at: Option<String>,
    sensor: Option<SensorJson>,
    maintenance: Option<MaintenanceJson>,
    claim: Option<ClaimJson>,
    given_up: Option<GivenUpJson>,
}

/// The sensor's recorded times, as JSON.
#[derive(Debug, Serialize)]
struct SensorJson {
    started_at: Option<String>,
    shutdown_at: Option<String>,
    last_received: Option<String>,
    last_sent: Option<String>,
    registered: bool,
}

/// An optional time as RFC 3339.
pub(super) fn ts(t: Option<Time>) -> Option<String> {
    t.map(format_time)
}

impl From<&AgentView> for AgentJson {
    fn from(a: &AgentView) -> AgentJson {
        AgentJson {
            agent_id: a.agent_id.clone(),
            healthy: a.healthy,
            state: state_name(a.state),
            why: a.why_text.clone(),
            why_name: why_name(a.why),
            since: ts(a.since),
            last_heard: ts(a.last_heard),
            connected: a.connected,
            labels: a.labels.clone(),
            incarnation: a.incarnation.to_string(),
            last_seq: a.last_seq,
            next_change: ts(a.next_change),
            stopped_at: ts(a.stopped_at),
            first_seen: ts(a.first_seen),
            evaluated_at: ts(a.evaluated_at),
            sensor: a.sensor.as_ref().map(|s: &SensorView| SensorJson {
                started_at: ts(s.started_at),
                shutdown_at: ts(s.shutdown_at),
                last_received: ts(s.last_received),
                last_sent: ts(s.last_sent),
                registered: s.registered,
            }),
            maintenance: a.maintenance.as_ref().map(MaintenanceJson::from),
            claim: a.claim.as_ref().map(ClaimJson::from),
            given_up: a.given_up.as_ref().map(GivenUpJson::from),
        }
    }
}

/// The reference time for durations: the evaluation time, else now.
pub(super) fn reference(evaluated_at: Option<Time>) -> Time {
    evaluated_at.unwrap_or_else(fleet_health_client::now)
}

/// How long since `since`, for people: `2h13m`, or `-` if unknown.
fn for_how_long(since: Option<Time>, now: Time) -> String {
    since.map_or_else(|| "-".to_owned(), |t| human_duration(now.since(t)))
}

/// `12s ago`, or `never`.
fn heard(last_heard: Option<Time>, now: Time) -> String {
    last_heard.map_or_else(|| "never".into(), |t| relative(t, now))
}

fn labels_text(labels: &BTreeMap<String, String>) -> String {
    let parts: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(",")
    }
}

/// Sorts agents as `--sort-by` says (stable: agents that compare equal
/// keep their ID order).
pub fn sort(agents: &mut [AgentView], by: SortBy) {
    let state_rank = |a: &AgentView| match a.state {
        Some(State::Faulty) => 0,
        Some(State::Healthy) => 1,
        Some(State::Inactive) => 2,
        None => 3,
    };
    match by {
        SortBy::Id => {}
        SortBy::State => agents.sort_by_key(state_rank),
        SortBy::Why => agents.sort_by(|a, b| a.why_text.cmp(&b.why_text)),
        SortBy::Since => agents.sort_by_key(|a| a.since.unwrap_or(Time::MAX)),
        SortBy::LastHeard => agents.sort_by_key(|a| a.last_heard.unwrap_or(Time::MAX)),
    }
}

/// `list -o wide`: the table with the connection, incarnation, next change,
/// first sighting and what is set on the agent.
pub fn list_wide(out: &mut dyn Write, style: Style, list: &AgentList) -> io::Result<()> {
    let now = reference(list.evaluated_at);
    if list.agents.is_empty() {
        return writeln!(out, "no agents match");
    }
    let rows: Vec<Vec<Cell>> = list
        .agents
        .iter()
        .map(|a| {
            let mut cells = first_cells(a, now);
            cells.extend([
                Cell::plain(if a.connected { "yes" } else { "no" }.to_owned()),
                Cell::plain(
                    a.next_change
                        .map_or_else(|| "-".to_owned(), |t| relative(t, now)),
                ),
                Cell::plain(a.incarnation.to_string()),
                Cell::plain(a.first_seen.map_or_else(|| "-".to_owned(), format_time)),
                Cell::plain(labels_text(&a.labels)),
            ]);
            cells
        })
        .collect();
    write_table(
        out,
        style,
        &[
            "AGENT",
            "STATE",
            "WHY",
            "FOR",
            "LAST HEARD",
            "CONNECTED",
            "NEXT CHANGE",
            "INCARNATION",
            "FIRST SEEN",
            "LABELS",
        ],
        &rows,
    )?;
    summary_line(out, style, list)
}

/// `list` as a table, with a summary line.
pub fn list_table(out: &mut dyn Write, style: Style, list: &AgentList) -> io::Result<()> {
    let now = reference(list.evaluated_at);
    if list.agents.is_empty() {
        return writeln!(out, "no agents match");
    }
    let rows: Vec<Vec<Cell>> = list
        .agents
        .iter()
        .map(|a| {
            let mut cells = first_cells(a, now);
            cells.push(Cell::plain(labels_text(&a.labels)));
            cells
        })
        .collect();
    write_table(
        out,
        style,
        &["AGENT", "STATE", "WHY", "FOR", "LAST HEARD", "LABELS"],
        &rows,
    )?;
    summary_line(out, style, list)
}

/// The line under a list: how many, by state (none with `--no-headers`).
fn summary_line(out: &mut dyn Write, style: Style, list: &AgentList) -> io::Result<()> {
    if !style.headers {
        return Ok(());
    }
    let mut parts = Vec::new();
    for state in [State::Faulty, State::Healthy, State::Inactive] {
        let n = list
            .agents
            .iter()
            .filter(|a| a.state == Some(state))
            .count();
        if n > 0 {
            parts.push(style.paint(
                Style::state_code(state),
                &format!("{n} {}", state_name(state)),
            ));
        }
    }
    let n = list.agents.len();
    let marked = list
        .agents
        .iter()
        .filter(|a| a.maintenance.is_some())
        .count();
    let marked = if marked > 0 {
        format!("; {marked} under maintenance")
    } else {
        String::new()
    };
    writeln!(
        out,
        "{n} agent{}: {}{marked}",
        if n == 1 { "" } else { "s" },
        parts.join(", ")
    )
}

/// The columns every agent table begins with: AGENT, STATE, WHY, FOR, LAST
/// HEARD.
fn first_cells(a: &AgentView, now: Time) -> Vec<Cell> {
    vec![
        Cell::plain(a.agent_id.clone()),
        Cell::state(a.state),
        Cell::plain(why_with_marks(a)),
        Cell::plain(for_how_long(a.since, now)),
        Cell::plain(heard(a.last_heard, now)),
    ]
}

/// The why, with what is set on the agent: `no data sent to server
/// [maintenance]`, `[given up]`, `[claimed]`.
fn why_with_marks(a: &AgentView) -> String {
    let mut why = a.why_text.clone();
    for (set, word) in [
        (a.maintenance.is_some(), "maintenance"),
        (a.given_up.is_some(), "given up"),
        (a.claim.is_some(), "claimed"),
    ] {
        if set {
            why.push_str(&format!(" [{word}]"));
        }
    }
    why
}

/// The line under a faulty list that leaves agents under maintenance out.
pub fn left_out_note(storm: Option<&fleet_health_client::Storm>) -> Option<String> {
    let n = storm.map_or(0, |s| s.maintenance);
    (n > 0).then(|| {
        format!(
            "({n} agent{} under maintenance {} left out; --maintenance include shows them)",
            if n == 1 { "" } else { "s" },
            if n == 1 { "is" } else { "are" }
        )
    })
}

/// `list` as one JSON array.
pub fn list_json(out: &mut dyn Write, list: &AgentList) -> io::Result<()> {
    let agents: Vec<AgentJson> = list.agents.iter().map(AgentJson::from).collect();
    write_json(out, &agents)
}

/// `list` as one JSON object a line.
pub fn list_ndjson(out: &mut dyn Write, list: &AgentList) -> io::Result<()> {
    list.agents
        .iter()
        .try_for_each(|a| write_ndjson(out, &AgentJson::from(a)))
}

/// Agent IDs, one a line.
pub fn ids<'a>(out: &mut dyn Write, ids: impl IntoIterator<Item = &'a str>) -> io::Result<()> {
    ids.into_iter().try_for_each(|id| writeln!(out, "{id}"))
}

/// One agent in detail, for people.
pub fn status_table(out: &mut dyn Write, style: Style, a: &AgentView) -> io::Result<()> {
    let now = reference(a.evaluated_at);
    let when = |t: Option<Time>| {
        t.map_or_else(
            || "-".to_owned(),
            |t| format!("{} ({})", format_time(t), relative(t, now)),
        )
    };
    let mut rows: Vec<(&str, String)> = vec![
        ("agent", a.agent_id.clone()),
        (
            "state",
            format!(
                "{} for {}",
                style.state(a.state),
                for_how_long(a.since, now)
            ),
        ),
        ("why", a.why_text.clone()),
        ("since", when(a.since)),
        (
            "last heard",
            format!(
                "{}{}",
                heard(a.last_heard, now),
                if a.connected {
                    " (connected)"
                } else {
                    " (not connected)"
                }
            ),
        ),
        (
            "next change",
            a.next_change
                .map_or_else(|| "none due".into(), |t| relative(t, now)),
        ),
        ("labels", labels_text(&a.labels)),
        (
            "incarnation",
            format!("{} (last seq {})", a.incarnation, a.last_seq),
        ),
        ("first seen", when(a.first_seen)),
    ];
    if a.stopped_at.is_some() {
        rows.push(("stopped at", when(a.stopped_at)));
    }
    if let Some(m) = &a.maintenance {
        rows.push(("maintenance", maintenance_words(m, now)));
    }
    if let Some(c) = &a.claim {
        rows.push(("claim", claim_words(c, now)));
    }
    if let Some(g) = &a.given_up {
        rows.push(("given up", given_up_words(g, now)));
    }
    if let Some(s) = &a.sensor {
        let sensor_time = |t: Option<Time>| match t {
            Some(Time::ZERO) => "never".to_owned(),
            other => when(other),
        };
        rows.push(("started", sensor_time(s.started_at)));
        rows.push(("last sent", sensor_time(s.last_sent)));
        rows.push(("last received", sensor_time(s.last_received)));
        rows.push(("shutdown", sensor_time(s.shutdown_at)));
        rows.push(("registered", if s.registered { "yes" } else { "no" }.into()));
    }
    if a.evaluated_at.is_some() {
        rows.push(("evaluated at", format_time(now)));
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in rows {
        writeln!(out, "{k:<width$}  {v}")?;
    }
    Ok(())
}

/// One agent as JSON (pretty) or NDJSON (one line).
pub fn agent_json(out: &mut dyn Write, a: &AgentView, pretty: bool) -> io::Result<()> {
    if pretty {
        write_json(out, &AgentJson::from(a))
    } else {
        write_ndjson(out, &AgentJson::from(a))
    }
}

/// What `forget` says for people: what the agent was, if it was known.
pub fn forgot_line(
    out: &mut dyn Write,
    agent_id: &str,
    last: Option<&AgentView>,
) -> io::Result<()> {
    match last {
        Some(a) => writeln!(
            out,
            "forgot {} (it was {}: {})",
            a.agent_id,
            state_name(a.state),
            a.why_text
        ),
        None => writeln!(out, "forgot {agent_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::fixtures::{NOW, PLAIN, agent, fleet, render};
    use fleet_health_client::Why;

    #[test]
    fn list_table_is_aligned_with_durations_and_a_summary_line() {
        let text = render(|o| list_table(o, PLAIN, &fleet()));
        let expected = "\
AGENT  STATE    WHY                     FOR    LAST HEARD  LABELS
db-7   faulty   no data sent to server  2h13m  12s ago     site=eu
web-1  healthy  all is ok               42s    12s ago     site=eu
2 agents: 1 faulty, 1 healthy
";
        assert_eq!(text, expected);
        let empty = render(|o| list_table(o, PLAIN, &AgentList::default()));
        assert_eq!(empty, "no agents match\n");
    }

    #[test]
    fn colour_only_when_asked_and_alignment_ignores_it() {
        let coloured = render(|o| {
            list_table(
                o,
                Style {
                    color: true,
                    headers: true,
                },
                &fleet(),
            )
        });
        // Bold red for faulty, green for healthy, then a reset.
        assert!(
            coloured.contains("\x1b[1m\x1b[31mfaulty\x1b[0m"),
            "{coloured:?}"
        );
        assert!(coloured.contains("\x1b[32mhealthy\x1b[0m"), "{coloured:?}");
        // Without its escape sequences, the text is the plain one.
        let mut stripped = String::new();
        let mut chars = coloured.chars();
        while let Some(c) = chars.next() {
            if c == '\x1b' {
                for c in chars.by_ref() {
                    if c == 'm' {
                        break;
                    }
                }
            } else {
                stripped.push(c);
            }
        }
        assert_eq!(stripped, render(|o| list_table(o, PLAIN, &fleet())));
        assert!(!render(|o| list_table(o, PLAIN, &fleet())).contains('\x1b'));
    }

    #[test]
    fn list_json_has_the_documented_fields() {
        let text = render(|o| list_json(o, &fleet()));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let a = &v.as_array().unwrap()[0];
        assert_eq!(a["agent_id"], "db-7");
        assert_eq!(a["healthy"], false);
        assert_eq!(a["state"], "faulty");
        assert_eq!(a["why"], "no data sent to server");
        assert_eq!(a["why_name"], "no-data-sent");
        assert_eq!(a["since"], "2024-05-01T09:47:00Z");
        assert_eq!(a["last_heard"], "2024-05-01T11:59:48Z");
        assert_eq!(a["incarnation"], u64::MAX.to_string());
        assert_eq!(a["labels"]["site"], "eu");
        assert_eq!(a["next_change"], serde_json::Value::Null);
        assert_eq!(a["sensor"]["last_sent"], "2024-05-01T05:00:00Z");
        assert_eq!(a["sensor"]["shutdown_at"], serde_json::Value::Null);
    }

    #[test]
    fn a_why_this_version_does_not_know_shows_the_servers_text() {
        let mut list = fleet();
        let a = &mut list.agents[0];
        a.state = None;
        a.why = None;
        a.why_text = "cosmic rays".into();
        let v: serde_json::Value = serde_json::from_str(&render(|o| list_json(o, &list))).unwrap();
        assert_eq!(v[0]["state"], "unspecified");
        assert_eq!(v[0]["why"], "cosmic rays");
        assert_eq!(v[0]["why_name"], "unspecified");
        let table = render(|o| list_table(o, PLAIN, &list));
        assert!(table.contains("db-7   unspecified  cosmic rays"), "{table}");
    }

    #[test]
    fn ndjson_is_one_object_a_line_and_ids_one_id_a_line() {
        let text = render(|o| list_ndjson(o, &fleet()));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        for line in lines {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(v["agent_id"].is_string());
        }
        let list = fleet();
        let text = render(|o| ids(o, list.agents.iter().map(|a| a.agent_id.as_str())));
        assert_eq!(text, "db-7\nweb-1\n");
    }

    #[test]
    fn status_shows_how_long_in_words() {
        let mut a = agent("db-7", State::Faulty, Why::NoDataSent, NOW - 8000);
        a.sensor.as_mut().unwrap().shutdown_at = Some(Time::ZERO);
        let text = render(|o| status_table(o, PLAIN, &a));
        assert!(text.contains("state          faulty for 2h13m\n"), "{text}");
        assert!(
            text.contains("why            no data sent to server\n"),
            "{text}"
        );
        assert!(
            text.contains("last heard     12s ago (connected)\n"),
            "{text}"
        );
        assert!(
            text.contains("last sent      2024-05-01T05:00:00Z (7h ago)\n"),
            "{text}"
        );
        assert!(text.contains("shutdown       never\n"), "{text}");
        assert!(text.contains("next change    none due\n"), "{text}");
        assert!(
            text.contains("evaluated at   2024-05-01T12:00:00Z\n"),
            "{text}"
        );
    }

    #[test]
    fn forget_says_what_the_agent_was() {
        let a = agent("db-7", State::Faulty, Why::NoDataSent, NOW);
        assert_eq!(
            render(|o| forgot_line(o, "db-7", Some(&a))),
            "forgot db-7 (it was faulty: no data sent to server)\n"
        );
        assert_eq!(render(|o| forgot_line(o, "x", None)), "forgot x\n");
    }
}
