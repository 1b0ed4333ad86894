//! One agent's transitions: a table for people, JSON and NDJSON.

use std::io::{self, Write};

use fleet_health_client::{History, Transition};
use serde::Serialize;

use super::agents::ts;
use super::ops::{ActivityJson, activity_words};
use super::{Cell, Style, state_name, why_name, why_text, write_json, write_ndjson, write_table};

/// `history` for people: the transitions, then what operators and
/// remediators did, if anything.
pub fn history_table(out: &mut dyn Write, style: Style, h: &History) -> io::Result<()> {
    transitions_table(out, style, h)?;
    if !h.activity.is_empty() {
        writeln!(out)?;
        let rows: Vec<Vec<Cell>> = h
            .activity
            .iter()
            .map(|a| {
                vec![
                    Cell::plain(ts(a.at).unwrap_or_else(|| "-".into())),
                    Cell::plain(activity_words(a)),
                ]
            })
            .collect();
        write_table(out, style, &["AT", "ACTIVITY"], &rows)?;
    }
    Ok(())
}

fn transitions_table(out: &mut dyn Write, style: Style, h: &History) -> io::Result<()> {
    if h.transitions.is_empty() {
        return writeln!(out, "no transitions recorded for {}", h.agent_id);
    }
    let rows: Vec<Vec<Cell>> = h
        .transitions
        .iter()
        .map(|t| {
            let from = t.from.map_or_else(
                || "(new)".to_owned(),
                |f| format!("{} ({})", state_name(f.state), why_text(f.why)),
            );
            vec![
                Cell::plain(ts(t.at).unwrap_or_else(|| "-".into())),
                Cell::plain(from),
                Cell::state(t.to_state),
                Cell::plain(t.to_why_text.clone()),
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

impl From<&Transition> for TransitionJson {
    fn from(t: &Transition) -> TransitionJson {
        TransitionJson {
            at: ts(t.at),
            from_state: t.from.map(|f| state_name(f.state)),
            from_why: t.from.map(|f| why_text(f.why)),
            from_why_name: t.from.map(|f| why_name(f.why)),
            to_state: state_name(t.to_state),
            to_why: t.to_why_text.clone(),
            to_why_name: why_name(t.to_why),
        }
    }
}

#[derive(Debug, Serialize)]
struct HistoryJson {
    agent_id: String,
    transitions: Vec<TransitionJson>,
    activity: Vec<ActivityJson>,
}

/// `history` as JSON: one object with the transitions.
pub fn history_json(out: &mut dyn Write, h: &History) -> io::Result<()> {
    write_json(
        out,
        &HistoryJson {
            agent_id: h.agent_id.clone(),
            transitions: h.transitions.iter().map(TransitionJson::from).collect(),
            activity: h.activity.iter().map(ActivityJson::from).collect(),
        },
    )
}

/// `history` as NDJSON: one transition a line, then one activity entry a
/// line (those have a `kind`).
pub fn history_ndjson(out: &mut dyn Write, h: &History) -> io::Result<()> {
    h.transitions
        .iter()
        .try_for_each(|t| write_ndjson(out, &TransitionJson::from(t)))?;
    h.activity
        .iter()
        .try_for_each(|a| write_ndjson(out, &ActivityJson::from(a)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::fixtures::{NOW, PLAIN, render, t};
    use fleet_health_client::{State, StateAndWhy, Why};

    #[test]
    fn history_in_each_format() {
        let h = History {
            agent_id: "db-7".into(),
            activity: vec![],
            transitions: vec![
                Transition {
                    at: t(NOW - 100),
                    from: None,
                    to_state: Some(State::Healthy),
                    to_why: Some(Why::AllIsOk),
                    to_why_text: "all is ok".into(),
                },
                Transition {
                    at: t(NOW),
                    from: Some(StateAndWhy {
                        state: Some(State::Healthy),
                        why: Some(Why::AllIsOk),
                    }),
                    to_state: Some(State::Faulty),
                    to_why: Some(Why::NoDataSent),
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
        let empty = History {
            agent_id: "x".into(),
            transitions: vec![],
            activity: vec![],
        };
        assert_eq!(
            render(|o| history_table(o, PLAIN, &empty)),
            "no transitions recorded for x\n"
        );
    }
}
