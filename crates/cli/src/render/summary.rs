//! The summary and the storm guard: a table and lines for people, JSON for
//! scripts, and the warning printed when the storm flag is raised.

use std::io::{self, Write};

use fleet_health_client::{State, Storm, Summary, Why};
use serde::Serialize;

use super::agents::{reference, ts};
use super::time::{format_time, relative};
use super::{Cell, Style, state_name, why_name, write_json, write_table};

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
    maintenance: u64,
}

impl From<&Storm> for StormJson {
    fn from(s: &Storm) -> StormJson {
        StormJson {
            active: s.active,
            faulty: s.faulty,
            active_agents: s.active_agents,
            faulty_share: s.faulty_share,
            threshold: s.threshold,
            min_agents: s.min_agents,
            dominant_why: s.dominant.as_ref().map(|d| d.text.clone()),
            dominant_why_name: s.dominant.as_ref().map(|d| why_name(d.why)),
            dominant_count: s.dominant_count,
            maintenance: s.maintenance,
        }
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
    maintenance: u64,
    maintenance_faulty: u64,
    given_up: u64,
    claimed: u64,
    /// Several servers: the counts leave part of the fleet out.
    incomplete: bool,
}

#[derive(Debug, Serialize)]
struct WhyCountJson {
    why: String,
    why_name: &'static str,
    state: &'static str,
    count: u64,
}

/// `summary` as JSON.
pub fn summary_json(out: &mut dyn Write, s: &Summary) -> io::Result<()> {
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
                why: w.why_text.clone(),
                why_name: why_name(w.why),
                state: state_name(w.state),
                count: w.count,
            })
            .collect(),
        storm: s.storm.as_ref().map(StormJson::from),
        evaluated_at: ts(s.evaluated_at),
        grace_until: ts(s.grace_until),
        maintenance: s.maintenance,
        maintenance_faulty: s.maintenance_faulty,
        given_up: s.given_up,
        claimed: s.claimed,
        incomplete: s.incomplete,
    };
    write_json(out, &json)
}

/// `summary` for people.
pub fn summary_table(out: &mut dyn Write, style: Style, s: &Summary) -> io::Result<()> {
    let now = reference(s.evaluated_at);
    let count = |state: State, n: u64| {
        style.paint(
            Style::state_code(state),
            &format!("{n} {}", state_name(state)),
        )
    };
    writeln!(
        out,
        "{} agent{}: {}, {}, {}; {} connected",
        s.total,
        if s.total == 1 { "" } else { "s" },
        count(State::Healthy, s.healthy),
        count(State::Faulty, s.faulty),
        count(State::Inactive, s.inactive),
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
                    Cell::state(w.state),
                    Cell::plain(w.why_text.clone()),
                ]
            })
            .collect();
        write_table(out, style, &["COUNT", "STATE", "WHY"], &rows)?;
    }
    if s.maintenance + s.given_up + s.claimed > 0 {
        writeln!(out)?;
    }
    if s.maintenance > 0 {
        writeln!(
            out,
            "{} under maintenance ({} of them faulty): left out of faulty lists and the storm guard",
            s.maintenance, s.maintenance_faulty
        )?;
    }
    if s.given_up > 0 {
        writeln!(
            out,
            "{} given up on by remediators (`fleet-health list --all -o json` shows them; `fleet-health remediate clear ID`)",
            s.given_up
        )?;
    }
    if s.claimed > 0 {
        writeln!(out, "{} claimed by remediators now", s.claimed)?;
    }
    if let Some(storm) = &s.storm {
        writeln!(out)?;
        writeln!(out, "{}", storm_line(storm))?;
    }
    if let Some(grace) = s.grace_until {
        writeln!(
            out,
            "\"{}\" held back until {} ({}): the server restarted recently",
            Why::NotReporting,
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
    if storm.maintenance > 0 {
        line.push_str(&format!(
            "; {} under maintenance not counted",
            storm.maintenance
        ));
    }
    if let Some(dominant) = &storm.dominant {
        line.push_str(&format!(
            "; {} of them say \"{}\"",
            storm.dominant_count, dominant.text
        ));
    }
    line
}

/// The warning printed (on stderr) when the storm flag is raised.
pub fn storm_warning(style: Style, storm: &Storm) -> String {
    style.warn(&format!(
        "warning: {}. A shared cause (the server, the network, the data server) is more likely than every agent failing: restarting them all is rarely the fix.",
        storm_line(storm)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::fixtures::{NOW, PLAIN, render, storm, t};
    use fleet_health_client::{Why, WhyCount};

    fn summary() -> Summary {
        Summary {
            incomplete: false,
            total: 11,
            maintenance: 0,
            maintenance_faulty: 0,
            given_up: 0,
            claimed: 0,
            healthy: 4,
            faulty: 6,
            inactive: 1,
            connected: 9,
            by_why: vec![
                WhyCount {
                    why: Some(Why::NoDataReceived),
                    why_text: "no data received from server".into(),
                    state: Some(State::Faulty),
                    count: 5,
                },
                WhyCount {
                    why: Some(Why::AllIsOk),
                    why_text: "all is ok".into(),
                    state: Some(State::Healthy),
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
        assert!(storm_warning(PLAIN, &storm(true)).contains("rarely the fix"));
    }

    #[test]
    fn a_grace_period_is_told_and_a_storm_without_a_dominant_why_says_none() {
        let mut s = summary();
        s.grace_until = t(NOW + 600);
        let mut calm = storm(false);
        calm.dominant = None;
        s.storm = Some(calm);
        let text = render(|o| summary_table(o, PLAIN, &s));
        assert!(
            text.contains("\"not reporting\" held back until 2024-05-01T12:10:00Z (in 10m)"),
            "{text}"
        );
        assert!(text.contains("storm: no; 6 of 10"), "{text}");
        assert!(!text.contains("of them say"), "{text}");
        let v: serde_json::Value = serde_json::from_str(&render(|o| summary_json(o, &s))).unwrap();
        assert_eq!(v["storm"]["dominant_why"], serde_json::Value::Null);
        assert_eq!(v["grace_until"], "2024-05-01T12:10:00Z");
    }
}
