//! Printers: one per output format. The JSON shapes here are the documented,
//! stable ones (see the crate's README); the tables are for people.

use std::collections::BTreeMap;
use std::io::{self, Write};

use fleet_health_client::convert::opt_time;
use fleet_health_client::names::{state_name, why_name, why_text};
use fleet_health_client::proto::{
    AgentLeft, AgentStatus, GetHistoryResponse, GetSummaryResponse, State, Storm, Synced, Why,
    watch_agents_response::Event as WatchEvent,
};
use fleet_health_client::{AgentList, Time};
use serde::Serialize;

use crate::timefmt::{format_time, human_duration, relative};

/// Colours, or none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Style {
    /// Whether to emit ANSI colours.
    pub color: bool,
}

impl Style {
    /// Decides from the flag, the terminal and `NO_COLOR`.
    pub fn detect(when: crate::cli::ColorWhen, is_terminal: bool) -> Style {
        use crate::cli::ColorWhen;
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let color = match when {
            ColorWhen::Always => true,
            ColorWhen::Never => false,
            ColorWhen::Auto => is_terminal && !no_color,
        };
        Style { color }
    }

    fn paint(self, code: &str, text: &str) -> String {
        if self.color && !code.is_empty() {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    fn state_code(state: State) -> &'static str {
        match state {
            State::Healthy => "32",
            State::Faulty => "1;31",
            State::Inactive => "2",
            State::Unspecified => "",
        }
    }

    /// Bold, for headers.
    fn bold(self, text: &str) -> String {
        self.paint("1", text)
    }

    /// A warning's colour.
    pub fn warn(self, text: &str) -> String {
        self.paint("1;33", text)
    }
}

/// A table cell: text, and the colour to paint it with.
struct Cell {
    text: String,
    color: &'static str,
}

impl Cell {
    fn plain(text: impl Into<String>) -> Cell {
        Cell {
            text: text.into(),
            color: "",
        }
    }
}

/// Writes rows aligned in columns (by characters), the last column unpadded.
fn write_table(
    out: &mut dyn Write,
    style: Style,
    header: &[&str],
    rows: &[Vec<Cell>],
) -> io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.text.chars().count());
        }
    }
    let last = header.len() - 1;
    let mut line = String::new();
    for (i, h) in header.iter().enumerate() {
        let pad = if i == last {
            0
        } else {
            widths[i] - h.chars().count() + 2
        };
        line.push_str(&style.bold(h));
        line.push_str(&" ".repeat(pad));
    }
    writeln!(out, "{}", line.trim_end())?;
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            let pad = if i == last {
                0
            } else {
                widths[i] - cell.text.chars().count() + 2
            };
            line.push_str(&style.paint(cell.color, &cell.text));
            line.push_str(&" ".repeat(pad));
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

fn ts(t: Option<&prost_types::Timestamp>) -> Option<String> {
    opt_time(t).map(format_time)
}

fn text_of(why: Why, text: &str) -> String {
    if text.is_empty() {
        why_text(why).to_owned()
    } else {
        text.to_owned()
    }
}

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
}

/// The sensor's recorded times, as JSON.
#[derive(Debug, Serialize)]
pub struct SensorJson {
    started_at: Option<String>,
    shutdown_at: Option<String>,
    last_received: Option<String>,
    last_sent: Option<String>,
    registered: bool,
}

impl From<&AgentStatus> for AgentJson {
    fn from(a: &AgentStatus) -> AgentJson {
        AgentJson {
            agent_id: a.agent_id.clone(),
            healthy: a.healthy,
            state: state_name(a.state()),
            why: text_of(a.why(), &a.why_text),
            why_name: why_name(a.why()),
            since: ts(a.since.as_ref()),
            last_heard: ts(a.last_heard.as_ref()),
            connected: a.connected,
            labels: a.labels.clone().into_iter().collect(),
            incarnation: a.incarnation.to_string(),
            last_seq: a.last_seq,
            next_change: ts(a.next_change.as_ref()),
            stopped_at: ts(a.stopped_at.as_ref()),
            first_seen: ts(a.first_seen.as_ref()),
            evaluated_at: ts(a.evaluated_at.as_ref()),
            sensor: a.sensor.as_ref().map(|s| SensorJson {
                started_at: ts(s.started_at.as_ref()),
                shutdown_at: ts(s.shutdown_at.as_ref()),
                last_received: ts(s.last_received.as_ref()),
                last_sent: ts(s.last_sent.as_ref()),
                registered: s.registered,
            }),
        }
    }
}

/// The storm guard, as JSON.
#[derive(Debug, Serialize)]
pub struct StormJson {
    active: bool,
    faulty: u64,
    active_agents: u64,
    faulty_share: f64,
    threshold: f64,
    min_agents: u64,
    dominant_why: Option<String>,
    dominant_why_name: Option<&'static str>,
    dominant_count: u64,
}

impl From<&Storm> for StormJson {
    fn from(s: &Storm) -> StormJson {
        let dominant = s.dominant_why() != Why::Unspecified;
        StormJson {
            active: s.active,
            faulty: s.faulty,
            active_agents: s.active_agents,
            faulty_share: s.faulty_share,
            threshold: s.threshold,
            min_agents: s.min_agents,
            dominant_why: dominant.then(|| text_of(s.dominant_why(), &s.dominant_why_text)),
            dominant_why_name: dominant.then(|| why_name(s.dominant_why())),
            dominant_count: s.dominant_count,
        }
    }
}

fn write_json(out: &mut dyn Write, value: &impl Serialize) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)
}

fn write_ndjson(out: &mut dyn Write, value: &impl Serialize) -> io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    writeln!(out)
}

/// The reference time for durations: the evaluation time, else now.
fn reference(evaluated_at: Option<&prost_types::Timestamp>) -> Time {
    opt_time(evaluated_at).unwrap_or_else(fleet_health_client::now)
}

/// How long since `since`, for people: `2h13m`, or `-` if unknown.
fn for_how_long(since: Option<&prost_types::Timestamp>, now: Time) -> String {
    opt_time(since).map_or_else(|| "-".to_owned(), |t| human_duration(now.since(t)))
}

fn labels_text(labels: &std::collections::HashMap<String, String>) -> String {
    let sorted: BTreeMap<_, _> = labels.iter().collect();
    let parts: Vec<String> = sorted.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(",")
    }
}

/// `list` as a table, with a summary line.
pub fn list_table(out: &mut dyn Write, style: Style, list: &AgentList) -> io::Result<()> {
    let now = reference(list.evaluated_at.as_ref());
    if list.agents.is_empty() {
        return writeln!(out, "no agents match");
    }
    let rows: Vec<Vec<Cell>> = list
        .agents
        .iter()
        .map(|a| {
            let color = Style::state_code(a.state());
            vec![
                Cell::plain(a.agent_id.clone()),
                Cell {
                    text: state_name(a.state()).into(),
                    color,
                },
                Cell::plain(text_of(a.why(), &a.why_text)),
                Cell::plain(for_how_long(a.since.as_ref(), now)),
                Cell::plain(
                    opt_time(a.last_heard.as_ref())
                        .map_or_else(|| "never".into(), |t| relative(t, now)),
                ),
                Cell::plain(labels_text(&a.labels)),
            ]
        })
        .collect();
    write_table(
        out,
        style,
        &["AGENT", "STATE", "WHY", "FOR", "LAST HEARD", "LABELS"],
        &rows,
    )?;
    let count = |s: State| list.agents.iter().filter(|a| a.state() == s).count();
    let mut parts = Vec::new();
    for (state, word) in [
        (State::Faulty, "faulty"),
        (State::Healthy, "healthy"),
        (State::Inactive, "inactive"),
    ] {
        let n = count(state);
        if n > 0 {
            parts.push(style.paint(Style::state_code(state), &format!("{n} {word}")));
        }
    }
    let n = list.agents.len();
    writeln!(
        out,
        "{n} agent{}: {}",
        if n == 1 { "" } else { "s" },
        parts.join(", ")
    )
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
pub fn ids(out: &mut dyn Write, agents: &[AgentStatus]) -> io::Result<()> {
    agents
        .iter()
        .try_for_each(|a| writeln!(out, "{}", a.agent_id))
}

/// One agent in detail, for people.
pub fn status_table(out: &mut dyn Write, style: Style, a: &AgentStatus) -> io::Result<()> {
    let now = reference(a.evaluated_at.as_ref());
    let when = |t: Option<&prost_types::Timestamp>| {
        opt_time(t).map_or_else(
            || "-".to_owned(),
            |t| format!("{} ({})", format_time(t), relative(t, now)),
        )
    };
    let state = style.paint(Style::state_code(a.state()), state_name(a.state()));
    let mut rows: Vec<(&str, String)> = vec![
        ("agent", a.agent_id.clone()),
        (
            "state",
            format!("{state} for {}", for_how_long(a.since.as_ref(), now)),
        ),
        ("why", text_of(a.why(), &a.why_text)),
        ("since", when(a.since.as_ref())),
        (
            "last heard",
            format!(
                "{}{}",
                opt_time(a.last_heard.as_ref())
                    .map_or_else(|| "never".into(), |t| relative(t, now)),
                if a.connected {
                    " (connected)"
                } else {
                    " (not connected)"
                }
            ),
        ),
        (
            "next change",
            opt_time(a.next_change.as_ref())
                .map_or_else(|| "none due".into(), |t| relative(t, now)),
        ),
        ("labels", labels_text(&a.labels)),
        (
            "incarnation",
            format!("{} (last seq {})", a.incarnation, a.last_seq),
        ),
        ("first seen", when(a.first_seen.as_ref())),
    ];
    if a.stopped_at.is_some() {
        rows.push(("stopped at", when(a.stopped_at.as_ref())));
    }
    if let Some(s) = &a.sensor {
        let sensor_time = |t: Option<&prost_types::Timestamp>| match opt_time(t) {
            Some(t) if t == Time::ZERO => "never".to_owned(),
            Some(t) => format!("{} ({})", format_time(t), relative(t, now)),
            None => "-".to_owned(),
        };
        rows.push(("started", sensor_time(s.started_at.as_ref())));
        rows.push(("last sent", sensor_time(s.last_sent.as_ref())));
        rows.push(("last received", sensor_time(s.last_received.as_ref())));
        rows.push(("shutdown", sensor_time(s.shutdown_at.as_ref())));
        rows.push(("registered", if s.registered { "yes" } else { "no" }.into()));
    }
    if opt_time(a.evaluated_at.as_ref()).is_some() {
        rows.push(("evaluated at", format_time(now)));
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in rows {
        writeln!(out, "{k:<width$}  {v}")?;
    }
    Ok(())
}

/// One agent as JSON (pretty) or NDJSON (one line).
pub fn agent_json(out: &mut dyn Write, a: &AgentStatus, pretty: bool) -> io::Result<()> {
    if pretty {
        write_json(out, &AgentJson::from(a))
    } else {
        write_ndjson(out, &AgentJson::from(a))
    }
}

/// The summary, as JSON.
#[derive(Debug, Serialize)]
struct SummaryJson {
    total: u64,
    healthy: u64,
    faulty: u64,
    inactive: u64,
    connected: u64,
    by_why: Vec<WhyCountJson>,
    storm: Option<StormJson>,
    evaluated_at: Option<String>,
    grace_until: Option<String>,
}

#[derive(Debug, Serialize)]
struct WhyCountJson {
    why: String,
    why_name: &'static str,
    state: &'static str,
    count: u64,
}

/// `summary` as JSON.
pub fn summary_json(out: &mut dyn Write, s: &GetSummaryResponse) -> io::Result<()> {
    let json = SummaryJson {
        total: s.total,
        healthy: s.healthy,
        faulty: s.faulty,
        inactive: s.inactive,
        connected: s.connected,
        by_why: s
            .by_why
            .iter()
            .map(|w| WhyCountJson {
                why: text_of(w.why(), &w.why_text),
                why_name: why_name(w.why()),
                state: state_name(w.state()),
                count: w.count,
            })
            .collect(),
        storm: s.storm.as_ref().map(StormJson::from),
        evaluated_at: ts(s.evaluated_at.as_ref()),
        grace_until: ts(s.grace_until.as_ref()),
    };
    write_json(out, &json)
}

/// `summary` for people.
pub fn summary_table(out: &mut dyn Write, style: Style, s: &GetSummaryResponse) -> io::Result<()> {
    let now = reference(s.evaluated_at.as_ref());
    writeln!(
        out,
        "{} agent{}: {}, {}, {}; {} connected",
        s.total,
        if s.total == 1 { "" } else { "s" },
        style.paint(
            Style::state_code(State::Healthy),
            &format!("{} healthy", s.healthy)
        ),
        style.paint(
            Style::state_code(State::Faulty),
            &format!("{} faulty", s.faulty)
        ),
        style.paint(
            Style::state_code(State::Inactive),
            &format!("{} inactive", s.inactive)
        ),
        s.connected
    )?;
    if !s.by_why.is_empty() {
        writeln!(out)?;
        let rows: Vec<Vec<Cell>> = s
            .by_why
            .iter()
            .map(|w| {
                vec![
                    Cell::plain(w.count.to_string()),
                    Cell {
                        text: state_name(w.state()).into(),
                        color: Style::state_code(w.state()),
                    },
                    Cell::plain(text_of(w.why(), &w.why_text)),
                ]
            })
            .collect();
        write_table(out, style, &["COUNT", "STATE", "WHY"], &rows)?;
    }
    if let Some(storm) = &s.storm {
        writeln!(out)?;
        writeln!(out, "{}", storm_line(storm))?;
    }
    if let Some(grace) = opt_time(s.grace_until.as_ref()) {
        writeln!(
            out,
            "\"not reporting\" held back until {} ({}): the server restarted recently",
            format_time(grace),
            relative(grace, now)
        )?;
    }
    Ok(())
}

/// One line on the storm guard, for people.
pub fn storm_line(storm: &Storm) -> String {
    let share = format!(
        "{} of {} active agents faulty ({:.0}%; storm at {:.0}% of at least {})",
        storm.faulty,
        storm.active_agents,
        storm.faulty_share * 100.0,
        storm.threshold * 100.0,
        storm.min_agents
    );
    let mut line = if storm.active {
        format!("STORM: {share}")
    } else {
        format!("storm: no; {share}")
    };
    if storm.dominant_why() != Why::Unspecified {
        line.push_str(&format!(
            "; {} of them say \"{}\"",
            storm.dominant_count,
            text_of(storm.dominant_why(), &storm.dominant_why_text)
        ));
    }
    line
}

/// The warning printed (on stderr) when the storm flag is raised.
pub fn storm_warning(storm: &Storm) -> String {
    format!(
        "warning: {}. A shared cause (the server, the network, the data server) is more likely than every agent failing: restarting them all is rarely the fix.",
        storm_line(storm)
    )
}

/// `history` for people.
pub fn history_table(out: &mut dyn Write, style: Style, h: &GetHistoryResponse) -> io::Result<()> {
    if h.transitions.is_empty() {
        return writeln!(out, "no transitions recorded for {}", h.agent_id);
    }
    let rows: Vec<Vec<Cell>> = h
        .transitions
        .iter()
        .map(|t| {
            let from = if t.from_state() == State::Unspecified {
                "(new)".to_owned()
            } else {
                format!(
                    "{} ({})",
                    state_name(t.from_state()),
                    why_text(t.from_why())
                )
            };
            vec![
                Cell::plain(ts(t.at.as_ref()).unwrap_or_else(|| "-".into())),
                Cell::plain(from),
                Cell {
                    text: state_name(t.to_state()).into(),
                    color: Style::state_code(t.to_state()),
                },
                Cell::plain(text_of(t.to_why(), &t.to_why_text)),
            ]
        })
        .collect();
    write_table(out, style, &["AT", "FROM", "TO", "WHY"], &rows)
}

#[derive(Debug, Serialize)]
struct TransitionJson {
    at: Option<String>,
    from_state: Option<&'static str>,
    from_why: Option<&'static str>,
    from_why_name: Option<&'static str>,
    to_state: &'static str,
    to_why: String,
    to_why_name: &'static str,
}

#[derive(Debug, Serialize)]
struct HistoryJson {
    agent_id: String,
    transitions: Vec<TransitionJson>,
}

fn transitions_json(h: &GetHistoryResponse) -> Vec<TransitionJson> {
    h.transitions
        .iter()
        .map(|t| {
            let first = t.from_state() == State::Unspecified;
            TransitionJson {
                at: ts(t.at.as_ref()),
                from_state: (!first).then(|| state_name(t.from_state())),
                from_why: (!first).then(|| why_text(t.from_why())),
                from_why_name: (!first).then(|| why_name(t.from_why())),
                to_state: state_name(t.to_state()),
                to_why: text_of(t.to_why(), &t.to_why_text),
                to_why_name: why_name(t.to_why()),
            }
        })
        .collect()
}

/// `history` as JSON: one object with the transitions.
pub fn history_json(out: &mut dyn Write, h: &GetHistoryResponse) -> io::Result<()> {
    write_json(
        out,
        &HistoryJson {
            agent_id: h.agent_id.clone(),
            transitions: transitions_json(h),
        },
    )
}

/// `history` as NDJSON: one transition a line.
pub fn history_ndjson(out: &mut dyn Write, h: &GetHistoryResponse) -> io::Result<()> {
    transitions_json(h)
        .iter()
        .try_for_each(|t| write_ndjson(out, t))
}

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
    Resync {
        missed: u64,
    },
    Storm {
        storm: StormJson,
    },
}

/// A watch message as one NDJSON line.
pub fn watch_ndjson(out: &mut dyn Write, event: &WatchEvent) -> io::Result<()> {
    let json = match event {
        WatchEvent::Snapshot(a) => WatchJson::Snapshot { agent: a.into() },
        WatchEvent::Synced(Synced { count, storm, at }) => WatchJson::Synced {
            count: *count,
            storm: storm.as_ref().map(StormJson::from),
            at: ts(at.as_ref()),
        },
        WatchEvent::Changed(a) => WatchJson::Changed { agent: a.into() },
        WatchEvent::Left(AgentLeft {
            agent_id,
            status,
            forgotten,
        }) => WatchJson::Left {
            agent_id: agent_id.clone(),
            forgotten: *forgotten,
            agent: status.as_ref().map(AgentJson::from),
        },
        WatchEvent::Resync(r) => WatchJson::Resync { missed: r.missed },
        WatchEvent::Storm(s) => WatchJson::Storm { storm: s.into() },
    };
    write_ndjson(out, &json)
}

/// A watch message as a line for people (`None`: nothing to say).
pub fn watch_line(style: Style, event: &WatchEvent) -> Option<String> {
    let agent_line = |mark: &str, a: &AgentStatus| {
        let when = ts(a.since.as_ref()).unwrap_or_else(|| "-".into());
        format!(
            "{when}  {mark} {}  {}  {}",
            a.agent_id,
            style.paint(Style::state_code(a.state()), state_name(a.state())),
            text_of(a.why(), &a.why_text)
        )
    };
    match event {
        WatchEvent::Snapshot(a) => Some(agent_line("=", a)),
        WatchEvent::Synced(s) => {
            let mut line = format!("-- {} agent(s) now; watching for changes", s.count);
            if let Some(storm) = s.storm.as_ref().filter(|s| s.active) {
                line.push_str(&format!("\n{}", style.warn(&storm_line(storm))));
            }
            Some(line)
        }
        WatchEvent::Changed(a) => Some(agent_line("~", a)),
        WatchEvent::Left(l) => Some(match (&l.status, l.forgotten) {
            (_, true) => format!(
                "{}  - {}  forgotten",
                format_time(fleet_health_client::now()),
                l.agent_id
            ),
            (Some(a), false) => agent_line("-", a),
            (None, false) => format!(
                "{}  - {}  left",
                format_time(fleet_health_client::now()),
                l.agent_id
            ),
        }),
        WatchEvent::Resync(r) => Some(format!(
            "-- fell behind ({} change(s) missed); a fresh snapshot follows",
            r.missed
        )),
        WatchEvent::Storm(s) => Some(if s.active {
            style.warn(&storm_line(s))
        } else {
            storm_line(s)
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_health_client::convert::to_timestamp;
    use fleet_health_client::proto::{SensorTimes, Transition, WhyCount};

    const NOW: i64 = 1_714_564_800;

    fn t(secs: i64) -> Option<prost_types::Timestamp> {
        Some(to_timestamp(Time::from_unix(secs, 0).unwrap()))
    }

    fn agent(id: &str, state: State, why: Why, since: i64) -> AgentStatus {
        AgentStatus {
            agent_id: id.into(),
            healthy: state == State::Healthy,
            state: state as i32,
            why: why as i32,
            why_text: why_text(why).into(),
            since: t(since),
            last_heard: t(NOW - 12),
            incarnation: u64::MAX,
            labels: [("site".to_string(), "eu".to_string())]
                .into_iter()
                .collect(),
            sensor: Some(SensorTimes {
                started_at: t(NOW - 7 * 3600),
                shutdown_at: None,
                last_received: t(NOW - 60),
                last_sent: t(NOW - 7 * 3600),
                registered: true,
            }),
            next_change: None,
            connected: true,
            last_seq: 9,
            evaluated_at: t(NOW),
            stopped_at: None,
            first_seen: t(NOW - 8 * 3600),
        }
    }

    fn fleet() -> AgentList {
        AgentList {
            agents: vec![
                agent(
                    "db-7",
                    State::Faulty,
                    Why::NoDataSent,
                    NOW - (2 * 3600 + 13 * 60),
                ),
                agent("web-1", State::Healthy, Why::AllIsOk, NOW - 42),
            ],
            storm: None,
            evaluated_at: t(NOW),
        }
    }

    fn render(f: impl FnOnce(&mut Vec<u8>) -> io::Result<()>) -> String {
        let mut buf = Vec::new();
        f(&mut buf).unwrap();
        String::from_utf8(buf).unwrap()
    }

    const PLAIN: Style = Style { color: false };

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
        let coloured = render(|o| list_table(o, Style { color: true }, &fleet()));
        assert!(coloured.contains("\x1b[1;31mfaulty\x1b[0m"));
        let stripped = coloured
            .replace("\x1b[1;31m", "")
            .replace("\x1b[32m", "")
            .replace("\x1b[1m", "")
            .replace("\x1b[0m", "");
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
    fn ndjson_is_one_object_a_line_and_ids_one_id_a_line() {
        let text = render(|o| list_ndjson(o, &fleet()));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        for line in lines {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(v["agent_id"].is_string());
        }
        assert_eq!(render(|o| ids(o, &fleet().agents)), "db-7\nweb-1\n");
    }

    #[test]
    fn status_shows_how_long_in_words() {
        let a = agent("db-7", State::Faulty, Why::NoDataSent, NOW - 8000);
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
        assert!(text.contains("next change    none due\n"), "{text}");
    }

    fn storm(active: bool) -> Storm {
        Storm {
            active,
            faulty: 6,
            active_agents: 10,
            faulty_share: 0.6,
            threshold: 0.5,
            min_agents: 10,
            dominant_why: Why::NoDataReceived as i32,
            dominant_why_text: "no data received from server".into(),
            dominant_count: 5,
        }
    }

    fn summary() -> GetSummaryResponse {
        GetSummaryResponse {
            total: 11,
            healthy: 4,
            faulty: 6,
            inactive: 1,
            connected: 9,
            by_why: vec![
                WhyCount {
                    why: Why::NoDataReceived as i32,
                    why_text: "no data received from server".into(),
                    state: State::Faulty as i32,
                    count: 5,
                },
                WhyCount {
                    why: Why::AllIsOk as i32,
                    why_text: "all is ok".into(),
                    state: State::Healthy as i32,
                    count: 4,
                },
            ],
            storm: Some(storm(true)),
            evaluated_at: t(NOW),
            grace_until: None,
        }
    }

    #[test]
    fn summary_for_people_and_scripts() {
        let text = render(|o| summary_table(o, PLAIN, &summary()));
        assert!(
            text.starts_with("11 agents: 4 healthy, 6 faulty, 1 inactive; 9 connected\n"),
            "{text}"
        );
        assert!(
            text.contains("5      faulty   no data received from server\n"),
            "{text}"
        );
        assert!(
            text.contains("STORM: 6 of 10 active agents faulty (60%"),
            "{text}"
        );
        assert!(
            text.contains("5 of them say \"no data received from server\""),
            "{text}"
        );
        let v: serde_json::Value =
            serde_json::from_str(&render(|o| summary_json(o, &summary()))).unwrap();
        assert_eq!(v["faulty"], 6);
        assert_eq!(v["storm"]["active"], true);
        assert_eq!(v["storm"]["dominant_why_name"], "no-data-received");
        assert_eq!(v["by_why"][0]["why"], "no data received from server");
        assert_eq!(v["by_why"][0]["state"], "faulty");
        assert_eq!(v["grace_until"], serde_json::Value::Null);
        assert!(storm_warning(&storm(true)).contains("rarely the fix"));
    }

    #[test]
    fn history_in_each_format() {
        let h = GetHistoryResponse {
            agent_id: "db-7".into(),
            transitions: vec![
                Transition {
                    at: t(NOW - 100),
                    from_state: 0,
                    from_why: 0,
                    to_state: State::Healthy as i32,
                    to_why: Why::AllIsOk as i32,
                    to_why_text: "all is ok".into(),
                },
                Transition {
                    at: t(NOW),
                    from_state: State::Healthy as i32,
                    from_why: Why::AllIsOk as i32,
                    to_state: State::Faulty as i32,
                    to_why: Why::NoDataSent as i32,
                    to_why_text: "no data sent to server".into(),
                },
            ],
        };
        let text = render(|o| history_table(o, PLAIN, &h));
        assert!(
            text.contains(
                "2024-05-01T12:00:00Z  healthy (all is ok)  faulty   no data sent to server"
            ),
            "{text}"
        );
        assert!(text.contains("(new)"), "{text}");
        let v: serde_json::Value = serde_json::from_str(&render(|o| history_json(o, &h))).unwrap();
        assert_eq!(v["transitions"][0]["from_state"], serde_json::Value::Null);
        assert_eq!(v["transitions"][1]["from_why"], "all is ok");
        assert_eq!(v["transitions"][1]["to_why_name"], "no-data-sent");
        assert_eq!(render(|o| history_ndjson(o, &h)).lines().count(), 2);
    }

    #[test]
    fn watch_messages_are_tagged_ndjson() {
        let a = agent("db-7", State::Faulty, Why::NoDataSent, NOW);
        let events = [
            WatchEvent::Snapshot(a.clone()),
            WatchEvent::Synced(Synced {
                count: 1,
                storm: Some(storm(false)),
                at: t(NOW),
            }),
            WatchEvent::Changed(a),
            WatchEvent::Left(AgentLeft {
                agent_id: "db-7".into(),
                status: None,
                forgotten: true,
            }),
            WatchEvent::Resync(fleet_health_client::proto::Resync { missed: 3 }),
            WatchEvent::Storm(storm(true)),
        ];
        let types: Vec<String> = events
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
        let line = watch_line(PLAIN, &events[2]).unwrap();
        assert!(
            line.ends_with("~ db-7  faulty  no data sent to server"),
            "{line}"
        );
    }
}
