//! Maintenance marks, claims, "given up" and activity: their JSON shapes,
//! their words for people, and the output of `maintenance set|clear|list`.

use std::io::{self, Write};

use fleet_health_client::{
    Activity, ActivityKind, AgentList, AgentView, Claim, GivenUp, Maintenance, MaintenanceSet,
    Remediation, Time,
};
use serde::Serialize;

use super::agents::{reference, ts};
use super::time::relative;
use super::{Cell, Style, why_name, write_json, write_table};

/// A maintenance mark, as JSON.
#[derive(Debug, Serialize)]
pub struct MaintenanceJson {
    reason: String,
    by: String,
    since: Option<String>,
    until: Option<String>,
}

impl From<&Maintenance> for MaintenanceJson {
    fn from(m: &Maintenance) -> MaintenanceJson {
        MaintenanceJson {
            reason: m.reason.clone(),
            by: m.by.clone(),
            since: ts(m.since),
            until: ts(m.until),
        }
    }
}

/// A claim, as JSON.
#[derive(Debug, Serialize)]
pub struct ClaimJson {
    holder: String,
    by: String,
    since: Option<String>,
    until: Option<String>,
}

impl From<&Claim> for ClaimJson {
    fn from(c: &Claim) -> ClaimJson {
        ClaimJson {
            holder: c.holder.clone(),
            by: c.by.clone(),
            since: ts(c.since),
            until: ts(c.until),
        }
    }
}

/// "Given up", as JSON.
#[derive(Debug, Serialize)]
pub struct GivenUpJson {
    holder: String,
    by: String,
    at: Option<String>,
    reason: String,
}

impl From<&GivenUp> for GivenUpJson {
    fn from(g: &GivenUp) -> GivenUpJson {
        GivenUpJson {
            holder: g.holder.clone(),
            by: g.by.clone(),
            at: ts(g.at),
            reason: g.reason.clone(),
        }
    }
}

/// A remediation, as JSON.
#[derive(Debug, Serialize)]
pub struct RemediationJson {
    started: Option<String>,
    finished: Option<String>,
    program: String,
    result: &'static str,
    exit_code: Option<i32>,
    signal: Option<i32>,
    output: String,
    why_name: &'static str,
}

impl From<&Remediation> for RemediationJson {
    fn from(r: &Remediation) -> RemediationJson {
        RemediationJson {
            started: ts(r.started),
            finished: ts(r.finished),
            program: r.program.clone(),
            result: r.result.map_or("unspecified", |r| r.as_str()),
            exit_code: r.exit_code,
            signal: r.signal,
            output: r.output.clone(),
            why_name: why_name(r.why),
        }
    }
}

/// One activity entry, as JSON.
#[derive(Debug, Serialize)]
pub struct ActivityJson {
    at: Option<String>,
    kind: &'static str,
    by: String,
    holder: String,
    reason: String,
    until: Option<String>,
    remediation: Option<RemediationJson>,
}

impl From<&Activity> for ActivityJson {
    fn from(a: &Activity) -> ActivityJson {
        ActivityJson {
            at: ts(a.at),
            kind: a.kind.map_or("unspecified", ActivityKind::as_str),
            by: a.by.clone(),
            holder: a.holder.clone(),
            reason: a.reason.clone(),
            until: ts(a.until),
            remediation: a.remediation.as_ref().map(RemediationJson::from),
        }
    }
}

/// `(by X)`, or nothing when the server records no identity.
fn by(who: &str) -> String {
    if who.is_empty() {
        String::new()
    } else {
        format!(" by {who}")
    }
}

/// A mark in words: `kernel upgrade (by admin/ana, ends in 2h)`.
pub fn maintenance_words(m: &Maintenance, now: Time) -> String {
    let ends = m
        .until
        .map_or_else(String::new, |t| format!(", ends {}", relative(t, now)));
    format!("{}{}{ends}", m.reason, by(&m.by))
}

/// A claim in words: `r1 (until in 9m)`.
pub fn claim_words(c: &Claim, now: Time) -> String {
    let until = c.until.map_or_else(String::new, |t| {
        format!(", lease ends {}", relative(t, now))
    });
    format!("held by {}{}{until}", c.holder, by(&c.by))
}

/// "Given up" in words.
pub fn given_up_words(g: &GivenUp, now: Time) -> String {
    let at =
        g.at.map_or_else(String::new, |t| format!(", {}", relative(t, now)));
    format!(
        "{} (by remediator {}{at}; `fleet-health remediate clear` to act again)",
        g.reason, g.holder
    )
}

/// What an activity entry says, for people.
pub fn activity_words(a: &Activity) -> String {
    let what = a.kind.map_or("unspecified", ActivityKind::as_str);
    let who = if a.holder.is_empty() {
        by(&a.by)
    } else {
        format!(
            " by remediator {}{}",
            a.holder,
            by(&a.by).replacen(" by", ",", 1)
        )
    };
    let detail = match (&a.remediation, a.kind) {
        (Some(r), _) => {
            let how = match (r.exit_code, r.signal) {
                (Some(c), _) => format!("exit {c}"),
                (None, Some(s)) => format!("signal {s}"),
                _ => String::new(),
            };
            let took = match (r.started, r.finished) {
                (Some(s), Some(f)) => format!(
                    " in {}",
                    super::time::human_duration(f.since(s).max(std::time::Duration::ZERO))
                ),
                _ => String::new(),
            };
            format!(
                ": {} ({}{}{took})",
                r.program,
                r.result.map_or("unspecified", |r| r.as_str()),
                if how.is_empty() {
                    String::new()
                } else {
                    format!(", {how}")
                }
            )
        }
        (None, Some(ActivityKind::MaintenanceSet)) => {
            let until = ts(a.until).map_or_else(String::new, |u| format!(" until {u}"));
            format!(": {}{until}", a.reason)
        }
        _ if !a.reason.is_empty() => format!(": {}", a.reason),
        _ => String::new(),
    };
    format!("{what}{who}{detail}")
}

/// `maintenance set` for people.
pub fn marked_line(out: &mut dyn Write, m: &MaintenanceSet, reason: &str) -> io::Result<()> {
    let until = ts(m.until).unwrap_or_else(|| "-".into());
    let n = m.marked;
    writeln!(
        out,
        "{n} agent{} under maintenance until {until}: {reason}",
        if n == 1 { "" } else { "s" }
    )?;
    let listed = m.agent_ids.len() as u64;
    for id in &m.agent_ids {
        writeln!(out, "  {id}")?;
    }
    if n > listed {
        writeln!(out, "  ... and {} more", n - listed)?;
    }
    Ok(())
}

/// `maintenance set` as JSON.
pub fn marked_json(out: &mut dyn Write, m: &MaintenanceSet, reason: &str) -> io::Result<()> {
    #[derive(Serialize)]
    struct Marked<'a> {
        marked: u64,
        until: Option<String>,
        reason: &'a str,
        agent_ids: &'a [String],
    }
    write_json(
        out,
        &Marked {
            marked: m.marked,
            until: ts(m.until),
            reason,
            agent_ids: &m.agent_ids,
        },
    )
}

/// `maintenance list` for people: the agents under maintenance, with their
/// real status and their marks.
pub fn maintenance_table(out: &mut dyn Write, style: Style, list: &AgentList) -> io::Result<()> {
    let now = reference(list.evaluated_at);
    if list.agents.is_empty() {
        return writeln!(out, "no agents under maintenance");
    }
    let rows: Vec<Vec<Cell>> = list
        .agents
        .iter()
        .map(|a: &AgentView| {
            let m = a.maintenance.as_ref();
            vec![
                Cell::plain(a.agent_id.clone()),
                Cell::state(a.state),
                Cell::plain(a.why_text.clone()),
                Cell::plain(m.map_or("-".into(), |m| m.reason.clone())),
                Cell::plain(m.map_or("-".into(), |m| {
                    if m.by.is_empty() {
                        "-".into()
                    } else {
                        m.by.clone()
                    }
                })),
                Cell::plain(
                    m.and_then(|m| m.until)
                        .map_or("-".into(), |t| relative(t, now)),
                ),
            ]
        })
        .collect();
    write_table(
        out,
        style,
        &["AGENT", "STATE", "WHY", "REASON", "BY", "ENDS"],
        &rows,
    )?;
    let n = list.agents.len();
    writeln!(
        out,
        "{n} agent{} under maintenance",
        if n == 1 { "" } else { "s" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::fixtures::{NOW, PLAIN, agent, render, t};
    use fleet_health_client::{RemediationResult, State, Why};

    fn mark() -> Maintenance {
        Maintenance {
            reason: "kernel upgrade".into(),
            by: "admin/ana".into(),
            since: t(NOW - 60),
            until: t(NOW + 7200),
        }
    }

    #[test]
    fn marks_and_claims_in_words() {
        let now = t(NOW).unwrap();
        assert_eq!(
            maintenance_words(&mark(), now),
            "kernel upgrade by admin/ana, ends in 2h"
        );
        let c = Claim {
            holder: "r1".into(),
            by: String::new(),
            since: t(NOW),
            until: t(NOW + 540),
        };
        assert_eq!(claim_words(&c, now), "held by r1, lease ends in 9m");
    }

    #[test]
    fn activity_in_words() {
        let ran = Activity {
            at: t(NOW),
            kind: Some(ActivityKind::Remediated),
            by: "orchestrator/remediate".into(),
            holder: "host-1:42".into(),
            reason: String::new(),
            until: None,
            remediation: Some(Remediation {
                started: t(NOW - 3),
                finished: t(NOW),
                program: "systemctl restart agent@db-7".into(),
                result: Some(RemediationResult::Failed),
                exit_code: Some(5),
                signal: None,
                output: String::new(),
                why: Some(Why::StuckAtShutdown),
            }),
        };
        assert_eq!(
            activity_words(&ran),
            "remediated by remediator host-1:42, orchestrator/remediate: systemctl restart agent@db-7 (failed, exit 5 in 3s)"
        );
        let set = Activity {
            at: t(NOW),
            kind: Some(ActivityKind::MaintenanceSet),
            by: String::new(),
            holder: String::new(),
            reason: "rack move".into(),
            until: t(NOW + 60),
            remediation: None,
        };
        assert_eq!(
            activity_words(&set),
            "maintenance set: rack move until 2024-05-01T12:01:00Z"
        );
        let v: serde_json::Value =
            serde_json::to_value(ActivityJson::from(&ran)).expect("serializes");
        assert_eq!(v["kind"], "remediated");
        assert_eq!(v["remediation"]["result"], "failed");
        assert_eq!(v["remediation"]["why_name"], "stuck-at-shutdown");
    }

    #[test]
    fn the_maintenance_list_shows_real_status_and_marks() {
        let mut a = agent("db-7", State::Faulty, Why::NoDataSent, NOW - 60);
        a.maintenance = Some(mark());
        let list = AgentList {
            agents: vec![a],
            storm: None,
            evaluated_at: t(NOW),
            incomplete: false,
        };
        let text = render(|o| maintenance_table(o, PLAIN, &list));
        assert_eq!(
            text,
            "\
AGENT  STATE   WHY                     REASON          BY         ENDS
db-7   faulty  no data sent to server  kernel upgrade  admin/ana  in 2h
1 agent under maintenance
"
        );
    }
}
