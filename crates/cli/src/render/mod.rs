//! Every output format of `fleet-health`, in one place: tables and lines for
//! people, the JSON and NDJSON shapes for scripts (stable and documented in
//! the crate's README), agent IDs one a line, and how times and durations
//! read. Printers take the client's plain values ([`fleet_health_client::view`])
//! and a writer; they decode nothing and decide no exit code.
//!
//! - [`agents`]: one agent or a list of them (table, JSON, NDJSON, IDs).
//! - [`summary`]: the summary and the storm guard.
//! - [`history`]: one agent's transitions.
//! - [`watch`]: the messages of a watch.
//! - [`remediate`]: what `remediate` decides, and `remediate clear`.
//! - [`report`]: what `report` and `simulate` print.
//! - [`time`]: times and durations.

pub mod agents;
pub mod history;
pub mod ops;
pub mod remediate;
pub mod report;
pub mod summary;
pub mod time;
pub mod watch;

use std::io::{self, Write};

use fleet_health_types::{State, Why};
use serde::Serialize;

/// An output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns and a summary line, for people.
    Table,
    /// One JSON document.
    Json,
    /// One JSON object a line.
    Ndjson,
    /// One agent ID a line.
    Ids,
    /// One YAML document (the JSON shape, as YAML).
    Yaml,
    /// The table with more columns.
    Wide,
}

impl Format {
    /// Its name as `-o` takes it.
    pub const fn name(self) -> &'static str {
        match self {
            Format::Table => "table",
            Format::Json => "json",
            Format::Ndjson => "ndjson",
            Format::Ids => "ids",
            Format::Yaml => "yaml",
            Format::Wide => "wide",
        }
    }
}

/// When to colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Colour {
    /// On a terminal, unless `NO_COLOR` is set.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// Colours, or none; table headers, or none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Style {
    /// Whether to emit ANSI colours.
    pub color: bool,
    /// Whether tables have their header line (and lists their summary
    /// line): `--no-headers` turns both off.
    pub headers: bool,
}

impl Style {
    /// Decides from the flag, whether stdout is a terminal, and `NO_COLOR`.
    pub fn detect(when: Colour, is_terminal: bool) -> Style {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let color = match when {
            Colour::Always => true,
            Colour::Never => false,
            Colour::Auto => is_terminal && !no_color,
        };
        Style {
            color,
            headers: true,
        }
    }

    /// The same, without table headers.
    #[must_use]
    pub fn without_headers(self) -> Style {
        Style {
            headers: false,
            ..self
        }
    }

    /// `text` in `ansi` (through `anstyle`), when colours are on.
    fn paint(self, ansi: anstyle::Style, text: &str) -> String {
        if self.color && ansi != anstyle::Style::new() {
            format!("{ansi}{text}{ansi:#}")
        } else {
            text.to_owned()
        }
    }

    fn state_code(state: impl Into<Option<State>>) -> anstyle::Style {
        use anstyle::{AnsiColor, Effects};
        match state.into() {
            Some(State::Healthy) => AnsiColor::Green.on_default(),
            Some(State::Faulty) => AnsiColor::Red.on_default().effects(Effects::BOLD),
            Some(State::Inactive) => anstyle::Style::new().effects(anstyle::Effects::DIMMED),
            None => anstyle::Style::new(),
        }
    }

    /// A state's word, in its colour.
    fn state(self, state: impl Into<Option<State>>) -> String {
        let state = state.into();
        self.paint(Style::state_code(state), state_name(state))
    }

    /// Bold, for headers.
    fn bold(self, text: &str) -> String {
        self.paint(anstyle::Style::new().bold(), text)
    }

    /// A warning's colour.
    pub fn warn(self, text: &str) -> String {
        self.paint(
            anstyle::AnsiColor::Yellow
                .on_default()
                .effects(anstyle::Effects::BOLD),
            text,
        )
    }
}

/// The word for a state; `unspecified` for one this version does not know.
fn state_name(state: impl Into<Option<State>>) -> &'static str {
    state.into().map_or("unspecified", State::as_str)
}

/// The short name of a why (`no-data-sent`); `unspecified` for one this
/// version does not know.
fn why_name(why: Option<Why>) -> &'static str {
    why.map_or("unspecified", Why::name)
}

/// The exact text of a why; empty for one this version does not know.
fn why_text(why: Option<Why>) -> &'static str {
    why.map_or("", Why::as_str)
}

/// A table cell: text, and the colour to paint it with.
struct Cell {
    text: String,
    color: anstyle::Style,
}

impl Cell {
    fn plain(text: impl Into<String>) -> Cell {
        Cell {
            text: text.into(),
            color: anstyle::Style::new(),
        }
    }

    fn state(state: impl Into<Option<State>>) -> Cell {
        let state = state.into();
        Cell {
            text: state_name(state).into(),
            color: Style::state_code(state),
        }
    }
}

/// Writes plain rows under `header`, aligned in columns, without colour.
pub fn plain_table(out: &mut dyn Write, header: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
    let rows: Vec<Vec<Cell>> = rows
        .iter()
        .map(|r| r.iter().map(Cell::plain).collect())
        .collect();
    write_table(out, Style::detect(Colour::Never, false), header, &rows)
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
    let pad = |i: usize, len: usize| if i == last { 0 } else { widths[i] - len + 2 };
    if style.headers {
        let mut line = String::new();
        for (i, h) in header.iter().enumerate() {
            line.push_str(&style.bold(h));
            line.push_str(&" ".repeat(pad(i, h.chars().count())));
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(&style.paint(cell.color, &cell.text));
            line.push_str(&" ".repeat(pad(i, cell.text.chars().count())));
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// What `json` writes, as one YAML document: every JSON shape has a YAML
/// form without a renderer of its own.
pub fn yaml(
    out: &mut dyn Write,
    json: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    let mut buf = Vec::new();
    json(&mut buf)?;
    let value: serde_json::Value = serde_json::from_slice(&buf)?;
    let text = yaml_serde::to_string(&value).map_err(io::Error::other)?;
    out.write_all(text.as_bytes())
}

/// One pretty JSON document and a newline.
pub fn write_json(out: &mut dyn Write, value: &impl Serialize) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)
}

/// One JSON object on one line.
fn write_ndjson(out: &mut dyn Write, value: &impl Serialize) -> io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    writeln!(out)
}

#[cfg(test)]
mod fixtures {
    //! The values the printers' tests print.

    use std::io;

    use fleet_health_client::{AgentList, AgentView, SensorView, Storm, Time, WhyText};
    use fleet_health_types::{State, Why};

    /// 2024-05-01T12:00:00Z.
    pub const NOW: i64 = 1_714_564_800;

    pub fn t(secs: i64) -> Option<Time> {
        Some(Time::from_unix(secs, 0).unwrap())
    }

    pub fn agent(id: &str, state: State, why: Why, since: i64) -> AgentView {
        AgentView {
            agent_id: id.into(),
            healthy: state == State::Healthy,
            state: Some(state),
            why: Some(why),
            why_text: why.as_str().into(),
            since: t(since),
            last_heard: t(NOW - 12),
            incarnation: u64::MAX,
            labels: [("site".to_string(), "eu".to_string())]
                .into_iter()
                .collect(),
            sensor: Some(SensorView {
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
            maintenance: None,
            claim: None,
            given_up: None,
        }
    }

    pub fn fleet() -> AgentList {
        AgentList {
            incomplete: false,
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

    pub fn storm(active: bool) -> Storm {
        Storm {
            active,
            faulty: 6,
            active_agents: 10,
            faulty_share: 0.6,
            threshold: 0.5,
            min_agents: 10,
            dominant: Some(WhyText {
                why: Some(Why::NoDataReceived),
                text: "no data received from server".into(),
            }),
            dominant_count: 5,
            maintenance: 0,
        }
    }

    pub fn render(f: impl FnOnce(&mut Vec<u8>) -> io::Result<()>) -> String {
        let mut buf = Vec::new();
        f(&mut buf).unwrap();
        String::from_utf8(buf).unwrap()
    }

    pub const PLAIN: super::Style = super::Style {
        color: false,
        headers: true,
    };
}
