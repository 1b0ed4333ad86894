//! What the templates show: plain strings made from the fleet service's
//! answers, so that the templates hold no logic beyond loops and
//! conditions.

use std::time::{Duration, SystemTime};

use askama::Template;
use fleet_health_proto::v1 as pb;
use fleet_health_sensor::Time;
use fleet_health_types::wire;
use prost_types::Timestamp;

use crate::model::Why;

/// A time of an answer; `None` when it has none.
pub(super) fn time(t: Option<&Timestamp>) -> Option<Time> {
    t.and_then(|t| wire::time(t, "time").ok())
}

/// A why of an answer, as its words.
fn why_text(w: i32) -> &'static str {
    Why::try_from(w).map_or("unknown", Why::as_str)
}

/// A why of an answer, as its state's name.
fn why_state(w: i32) -> &'static str {
    Why::try_from(w).map_or("unknown", |w| w.state().as_str())
}

/// A time as RFC 3339 in UTC, to the second.
pub(super) fn rfc3339(t: Time) -> String {
    let (secs, nanos) = t.as_unix();
    let at = if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::new(secs.unsigned_abs(), nanos)
    } else {
        SystemTime::UNIX_EPOCH - Duration::new(secs.unsigned_abs(), 0)
    };
    humantime::format_rfc3339_seconds(at).to_string()
}

/// How long from `then` to `now`, for people: `2h 13m`.
fn span(then: Time, now: Time) -> String {
    let secs = now.since(then).as_secs();
    let rounded = if secs >= 3600 { secs - secs % 60 } else { secs };
    humantime::format_duration(Duration::from_secs(rounded)).to_string()
}

/// `12s ago`, `in 3m`, or `never` for the epoch.
fn relative(t: Time, now: Time) -> String {
    if t == Time::ZERO {
        "never".into()
    } else if t <= now {
        format!("{} ago", span(t, now))
    } else {
        format!("in {}", span(now, t))
    }
}

/// A time, exact and humanised.
fn both(t: Time, now: Time) -> String {
    if t == Time::ZERO {
        "never".into()
    } else {
        format!("{} ({})", rfc3339(t), relative(t, now))
    }
}

/// One agent in a table.
pub(super) struct Row {
    pub id: String,
    pub state: &'static str,
    pub why: &'static str,
    pub for_how_long: String,
    pub last_heard: String,
    pub labels: String,
    pub marks: Vec<&'static str>,
}

fn labels(a: &pb::AgentStatus) -> String {
    if a.labels.is_empty() {
        return "-".to_owned();
    }
    let mut labels: Vec<String> = a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    labels.join(", ")
}

pub(super) fn row(a: &pb::AgentStatus, now: Time) -> Row {
    let mut marks = Vec::new();
    if a.maintenance.is_some() {
        marks.push("maintenance");
    }
    if a.given_up.is_some() {
        marks.push("given up");
    }
    if a.claim.is_some() {
        marks.push("claimed");
    }
    Row {
        id: a.agent_id.clone(),
        state: why_state(a.why),
        why: why_text(a.why),
        for_how_long: span(time(a.since.as_ref()).unwrap_or(now), now),
        last_heard: relative(time(a.last_heard.as_ref()).unwrap_or(Time::ZERO), now),
        labels: labels(a),
        marks,
    }
}

/// One reason's count.
pub(super) struct WhyRow {
    pub name: &'static str,
    pub text: &'static str,
    pub state: &'static str,
    pub count: u64,
    pub percent: String,
}

/// The overview's main part (also served alone, for live updates).
#[derive(Template)]
#[template(path = "overview_main.html")]
pub(super) struct OverviewMain {
    pub evaluated_at: String,
    /// Part of the fleet is missing from the answer (shards changing hands
    /// between a cluster's servers).
    pub incomplete: bool,
    pub storm: bool,
    pub storm_text: String,
    pub total: u64,
    pub faulty: u64,
    pub healthy: u64,
    pub inactive: u64,
    pub connected: u64,
    pub maintenance: u64,
    pub state_bar: Vec<(&'static str, String)>,
    pub by_why: Vec<WhyRow>,
    pub faulty_agents: Vec<Row>,
    pub faulty_more: bool,
}

/// Who is looking, as the page header shows it.
#[derive(Clone, Debug)]
pub(super) struct Viewer {
    /// Their identity (`reader/alice`), with security on.
    pub who: Option<String>,
    /// What they proved it with: `token` or `certificate`.
    pub by: Option<&'static str>,
    /// The CSRF value the page's forms carry.
    pub csrf: String,
    /// Whether signing out means anything (signed in with a token; a
    /// certificate is the browser's to stop presenting).
    pub sign_out: bool,
}

impl Viewer {
    /// Anyone, security off.
    pub(super) fn open() -> Viewer {
        Viewer {
            who: None,
            by: None,
            csrf: String::new(),
            sign_out: false,
        }
    }
}

/// The overview page.
#[derive(Template)]
#[template(path = "overview.html")]
pub(super) struct OverviewPage {
    /// The main part, rendered.
    pub main: String,
    pub viewer: Viewer,
}

/// The sign-in form, or the word that an identity may not read the fleet.
#[derive(Template)]
#[template(path = "login.html")]
pub(super) struct LoginPage {
    /// Where to go once signed in (a path on this server).
    pub next: String,
    pub csrf: String,
    /// Why the form is shown again (a refused token, a removed one).
    pub error: Option<String>,
    /// Whether the form is shown (not when an identity was refused).
    pub form: bool,
    pub viewer: Viewer,
}

impl LoginPage {
    pub(super) fn form(next: String, csrf: String, error: Option<String>) -> LoginPage {
        LoginPage {
            next,
            csrf,
            error,
            form: true,
            viewer: Viewer::open(),
        }
    }

    pub(super) fn refused(why: &str) -> LoginPage {
        LoginPage {
            next: "/".into(),
            csrf: String::new(),
            error: Some(why.to_owned()),
            form: false,
            viewer: Viewer::open(),
        }
    }
}

/// The agents page.
#[derive(Template)]
#[template(path = "agents.html")]
pub(super) struct AgentsPage {
    pub evaluated_at: String,
    /// Part of the fleet is missing from the page (see [`OverviewMain`]).
    pub incomplete: bool,
    pub states: Vec<(&'static str, bool)>,
    pub whys: Vec<(&'static str, bool)>,
    pub label: String,
    pub q: String,
    pub at: String,
    /// The orders offered: value, words, chosen.
    pub sorts: Vec<(&'static str, &'static str, bool)>,
    pub error: Option<String>,
    pub agents: Vec<Row>,
    pub next_page: Option<String>,
    pub viewer: Viewer,
}

/// One transition.
pub(super) struct TransitionRow {
    pub at: String,
    pub from: String,
    pub to: String,
    pub to_state: &'static str,
}

/// One agent's page.
#[derive(Template)]
#[template(path = "agent.html")]
pub(super) struct AgentPage {
    pub id: String,
    pub state: &'static str,
    pub why: &'static str,
    pub since: String,
    pub last_heard: String,
    pub connection: &'static str,
    pub next_change: String,
    pub labels: String,
    pub incarnation: u64,
    pub last_seq: u64,
    pub first_seen: String,
    pub sensor: Vec<(&'static str, String)>,
    pub marks: Vec<(&'static str, String)>,
    pub history: Vec<TransitionRow>,
    pub activity: Vec<(String, String)>,
    pub viewer: Viewer,
}

impl AgentPage {
    pub(super) fn new(
        a: &pb::AgentStatus,
        history: &pb::GetHistoryResponse,
        viewer: Viewer,
    ) -> AgentPage {
        let now = time(a.evaluated_at.as_ref()).unwrap_or(Time::ZERO);
        let at =
            |t: Option<&Timestamp>| time(t).map_or_else(|| "never".to_owned(), |t| both(t, now));
        let exact = |t: Option<&Timestamp>| time(t).map_or_else(|| "-".to_owned(), rfc3339);
        let mut marks = Vec::new();
        if let Some(m) = &a.maintenance {
            marks.push((
                "Maintenance",
                format!(
                    "{} (by {}, until {})",
                    m.reason,
                    if m.by.is_empty() { "-" } else { &m.by },
                    at(m.until.as_ref())
                ),
            ));
        }
        if let Some(c) = &a.claim {
            marks.push((
                "Claimed",
                format!("by {} until {}", c.holder, at(c.until.as_ref())),
            ));
        }
        if let Some(g) = &a.given_up {
            marks.push((
                "Given up",
                format!("{} (by {}, {})", g.reason, g.holder, at(g.at.as_ref())),
            ));
        }
        let kind = |k: i32| {
            use pb::ActivityKind as K;
            match K::try_from(k) {
                Ok(K::MaintenanceSet) => "maintenance set",
                Ok(K::MaintenanceCleared) => "maintenance cleared",
                Ok(K::MaintenanceExpired) => "maintenance ended",
                Ok(K::Remediated) => "remediated",
                Ok(K::GaveUp) => "gave up",
                Ok(K::GivenUpCleared) => "given up cleared",
                _ => "-",
            }
        };
        let s = a.sensor.unwrap_or_default();
        AgentPage {
            id: a.agent_id.clone(),
            state: why_state(a.why),
            why: why_text(a.why),
            since: at(a.since.as_ref()),
            last_heard: at(a.last_heard.as_ref()),
            connection: if a.connected {
                "connected"
            } else {
                "not connected"
            },
            next_change: a
                .next_change
                .as_ref()
                .map_or_else(|| "none due".to_owned(), |t| at(Some(t))),
            labels: labels(a),
            incarnation: a.incarnation,
            last_seq: a.last_seq,
            first_seen: at(a.first_seen.as_ref()),
            sensor: vec![
                ("Started", at(s.started_at.as_ref())),
                ("Last sent", at(s.last_sent.as_ref())),
                ("Last received", at(s.last_received.as_ref())),
                (
                    "Shutdown",
                    if s.shutdown_at.is_some() {
                        at(s.shutdown_at.as_ref())
                    } else {
                        "none".into()
                    },
                ),
                ("Registered", if s.registered { "yes" } else { "no" }.into()),
            ],
            marks,
            history: history
                .transitions
                .iter()
                .rev()
                .map(|t| TransitionRow {
                    at: exact(t.at.as_ref()),
                    // A first status has no reason before it.
                    from: if t.from_why == pb::Why::Unspecified as i32 {
                        "(new)".to_owned()
                    } else {
                        why_text(t.from_why).to_owned()
                    },
                    to: why_text(t.to_why).to_owned(),
                    to_state: why_state(t.to_why),
                })
                .collect(),
            activity: history
                .activity
                .iter()
                .rev()
                .map(|e| {
                    let mut what = kind(e.kind).to_owned();
                    if !e.reason.is_empty() {
                        what.push_str(&format!(": {}", e.reason));
                    }
                    if let Some(r) = &e.remediation {
                        what.push_str(&format!(
                            ": {} (exit {})",
                            r.program,
                            r.exit_code.map_or("-".into(), |c| c.to_string())
                        ));
                    }
                    if !e.holder.is_empty() {
                        what.push_str(&format!(" (by {})", e.holder));
                    } else if !e.by.is_empty() {
                        what.push_str(&format!(" (by {})", e.by));
                    }
                    (exact(e.at.as_ref()), what)
                })
                .collect(),
            viewer,
        }
    }
}
