//! The web view: the fleet at a glance on the HTTP port, with nothing else
//! to install. Server-rendered HTML from templates checked at compile time
//! (askama, in `crates/server/templates/`), styles inline, one small script
//! for live updates; everything is inside the binary.
//!
//! - `/`: counts by state and why, the storm banner, the faulty agents
//!   longest first; updated live: `/events` (server-sent events) says
//!   "change" at most twice a second while the fleet changes, and the page
//!   fetches its main part again (`?part=main`). No polling.
//! - `/agents`: the fleet with filters in the URL (state, why, label, text
//!   in the ID, as-of time), sorted by ID (pages read from the registry's
//!   index) or by time in state (one pass over the fleet per page, keeping
//!   only the page), in pages of 100 with a cursor.
//! - `/agents/{id}`: one agent: status, sensor times, labels, history,
//!   activity (maintenance marks and remediations).
//!
//! Where it is served ([`Gate`]): without security, on the HTTP port (and
//! on `--web-listen`, if given), open to all, as the rest of a loopback
//! quick start is. With security on, only on `--web-listen`, over TLS, to a
//! reader identity ([`auth`]); the plaintext HTTP port then says where the
//! view is. The view only reads: forgetting agents and marking maintenance
//! stay with the CLI, where each call is checked and audited as the
//! operator's own.

use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use fleet_health_sensor::Time;
use futures_util::Stream;
use serde::Deserialize;

use crate::model::{AgentId, Labels, MaintenanceFilter, State as AgentState, StateFilter, Why};
use crate::registry::{Order, Registry, Selector, SortCursor};
use crate::security::{Caller, Security};
use crate::shutdown::Stop;

mod auth;
mod views;

use views::{AgentPage, AgentsPage, OverviewMain, OverviewPage, Viewer};

/// Agents in one page of `/agents`.
const PAGE: usize = 100;
/// Faulty agents on the overview.
const FAULTY_SHOWN: usize = 50;
/// The shortest time between two live-update events of one page.
const COALESCE: Duration = Duration::from_millis(500);

/// How often an idle event stream says something.
const KEEP_ALIVE: Duration = Duration::from_secs(3);

/// How often an open live stream checks that its reader's credential still
/// holds.
const RECHECK: Duration = Duration::from_secs(1);

const LIVE_JS: &str = include_str!("live.js");

/// Who may see the view where it is served.
#[derive(Clone)]
pub enum Gate {
    /// Everyone: security is off.
    Open,
    /// A reader identity, from a signed-in token or a client certificate.
    Signed(Arc<Security>),
    /// Not here: every page answers 403 with this message (where the view
    /// is instead).
    Elsewhere(String),
}

impl Gate {
    /// The gate of a cluster's server: the view would show this server's
    /// shards only, so it is not served there yet.
    pub fn cluster() -> Gate {
        Gate::Elsewhere(
            "The web view is not served by a cluster's servers yet (it would show one server's part of the fleet): use `fleet-health` (list, summary, watch), which any server answers for the whole cluster.".into(),
        )
    }

    /// The gate of the plaintext HTTP port: open without security; with
    /// it, a word on where the view is (`web`: the `--web-listen` address).
    pub fn http_port(secured: bool, web: Option<std::net::SocketAddr>) -> Gate {
        match (secured, web) {
            (false, _) => Gate::Open,
            (true, Some(addr)) => Gate::Elsewhere(format!(
                "The web view is served over TLS, with sign-in, while security is on: open https://{addr}/ (--web-listen)."
            )),
            (true, None) => Gate::Elsewhere(
                "The web view is off on this plaintext port while security is on: start the server with --web-listen ADDR to serve it over TLS, with sign-in. Meanwhile use `fleet-health` (list, summary, watch).".into(),
            ),
        }
    }
}

/// What the handlers share.
#[derive(Clone)]
struct Web {
    registry: Registry,
    gate: Gate,
    stop: Stop,
}

/// The web view's routes, behind `gate`.
pub fn router(registry: Registry, gate: Gate, stop: Stop) -> axum::Router {
    let web = Web {
        registry,
        gate,
        stop,
    };
    let pages = axum::Router::new()
        .route("/", get(overview))
        .route("/agents", get(agents))
        .route("/agents/{id}", get(agent))
        .route("/events", get(events))
        .route_layer(axum::middleware::from_fn_with_state(
            web.clone(),
            auth::gate,
        ));
    axum::Router::new()
        .merge(pages)
        .route("/login", get(auth::login_form).post(auth::login))
        .route("/logout", post(auth::logout))
        .route("/static/live.js", get(live_js))
        .with_state(web)
}

pub(crate) fn html(t: &impl Template) -> Response {
    match t.render() {
        Ok(body) => Html(body).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("rendering failed: {e}\n"),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
struct Part {
    part: Option<String>,
}

async fn overview(
    State(web): State<Web>,
    Extension(viewer): Extension<Viewer>,
    Query(part): Query<Part>,
) -> Response {
    let main = overview_main(&web.registry);
    if part.part.as_deref() == Some("main") {
        return html(&main);
    }
    match main.render() {
        Ok(main) => html(&OverviewPage { main, viewer }),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("rendering failed: {e}\n"),
        )
            .into_response(),
    }
}

fn overview_main(registry: &Registry) -> OverviewMain {
    let s = registry.summary(None);
    let now = s.evaluated_at;
    let total = s.total();
    let percent = |n: u64| {
        if total == 0 {
            0.0
        } else {
            n as f64 * 100.0 / total as f64
        }
    };
    let faulty = s.count(AgentState::Faulty);
    let healthy = s.count(AgentState::Healthy);
    let inactive = s.count(AgentState::Inactive);
    let mut by_why: Vec<views::WhyRow> = Why::ALL
        .iter()
        .filter(|w| s.by_why[**w] > 0)
        .map(|w| views::WhyRow {
            name: w.name(),
            text: w.as_str(),
            state: w.state().as_str(),
            count: s.by_why[*w],
            percent: format!("{:.1}", percent(s.by_why[*w])),
        })
        .collect();
    by_why.sort_by_key(|w| std::cmp::Reverse(w.count));
    let selector = Selector {
        filter: StateFilter::Faulty,
        ..Selector::default()
    };
    let mut faulty_agents = registry.list(&selector, None, None, usize::MAX).agents;
    faulty_agents.sort_by_key(|a| a.since);
    let faulty_more = faulty_agents.len() > FAULTY_SHOWN;
    faulty_agents.truncate(FAULTY_SHOWN);
    let storm = s.storm;
    let storm_text = format!(
        "{} of {} active agents are faulty ({:.0}%){}: a shared cause is likelier than every agent failing; remediators stand still.",
        storm.faulty,
        storm.active_agents,
        storm.share() * 100.0,
        storm
            .dominant
            .map(|(w, n)| format!("; {n} of them say \"{}\"", w.as_str()))
            .unwrap_or_default()
    );
    OverviewMain {
        evaluated_at: views::rfc3339(now),
        storm: storm.active,
        storm_text,
        total,
        faulty,
        healthy,
        inactive,
        connected: s.connected,
        maintenance: s.maintained.total(),
        state_bar: [
            ("faulty", faulty),
            ("healthy", healthy),
            ("inactive", inactive),
        ]
        .into_iter()
        .map(|(k, n)| (k, format!("{:.1}", percent(n))))
        .collect(),
        by_why,
        faulty_agents: faulty_agents.iter().map(|a| views::row(a, now)).collect(),
        faulty_more,
    }
}

#[derive(Deserialize, Default)]
struct Filters {
    state: Option<String>,
    why: Option<String>,
    label: Option<String>,
    q: Option<String>,
    at: Option<String>,
    sort: Option<String>,
    after: Option<String>,
    after_since: Option<i64>,
}

async fn agents(
    State(web): State<Web>,
    Extension(viewer): Extension<Viewer>,
    Query(f): Query<Filters>,
) -> Response {
    let registry = web.registry.clone();
    // A page may walk much of the index: off the async workers.
    match tokio::task::spawn_blocking(move || agents_page(&registry, f, viewer)).await {
        Ok(page) => html(&page),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

fn parse_state(s: &str) -> Option<StateFilter> {
    [
        StateFilter::Active,
        StateFilter::Faulty,
        StateFilter::Healthy,
        StateFilter::Inactive,
        StateFilter::All,
    ]
    .into_iter()
    .find(|f| f.as_str() == s)
}

/// A time as the CLI takes it: `now`, `+2h`/`-30m`, RFC 3339, or epoch seconds.
fn parse_at(s: &str, now: Time) -> Result<Option<Time>, String> {
    let s = s.trim();
    if s.is_empty() || s == "now" {
        return Ok(None);
    }
    if let Some(rest) = s.strip_prefix('+').or_else(|| s.strip_prefix('-')) {
        let d = humantime::parse_duration(rest).map_err(|e| format!("at: {e}"))?;
        let t = if s.starts_with('+') {
            now.checked_add(d)
        } else {
            now.checked_sub(d)
        };
        return t.map(Some).ok_or_else(|| "at: out of range".into());
    }
    if let Ok(secs) = s.parse::<i64>() {
        return Time::from_unix(secs, 0)
            .map(Some)
            .map_err(|e| format!("at: {e}"));
    }
    let t = humantime::parse_rfc3339_weak(s).map_err(|e| format!("at: {e}"))?;
    Time::try_from(t).map(Some).map_err(|e| format!("at: {e}"))
}

fn agents_page(registry: &Registry, f: Filters, viewer: Viewer) -> AgentsPage {
    let now = registry.clock().now();
    let mut error = None;
    let state = f.state.as_deref().and_then(parse_state).unwrap_or_default();
    let why = f.why.as_deref().filter(|w| !w.is_empty()).and_then(|w| {
        Why::ALL
            .into_iter()
            .find(|x| x.name() == w || x.as_str() == w)
    });
    let mut labels = Labels::new();
    if let Some(l) = f.label.as_deref().filter(|l| !l.trim().is_empty()) {
        match l.split_once('=') {
            Some((k, v))
                if crate::model::check_labels(
                    &[(k.to_owned(), v.to_owned())]
                        .into_iter()
                        .collect::<std::collections::HashMap<_, _>>(),
                )
                .is_ok() =>
            {
                labels.insert(k.to_owned(), v.to_owned());
            }
            _ => error = Some(format!("label {l:?}: give KEY=VALUE")),
        }
    }
    let at = match parse_at(f.at.as_deref().unwrap_or(""), now) {
        Ok(at) => at,
        Err(e) => {
            error = Some(e);
            None
        }
    };
    let q = f.q.clone().unwrap_or_default().trim().to_owned();
    let order = match f.sort.as_deref() {
        Some("longest") => Order::LongestFirst,
        Some("newest") => Order::NewestFirst,
        Some("id") | Some("") | None => Order::Id,
        Some(other) => {
            error = Some(format!("sort {other:?}: give id, longest or newest"));
            Order::Id
        }
    };
    let selector = Selector {
        filter: state,
        whys: why.into_iter().collect(),
        labels,
        maintenance: MaintenanceFilter::Default,
        id_contains: (!q.is_empty()).then(|| q.clone()),
    };
    // The cursor: the last agent of the previous page (and, sorted by time,
    // its time).
    let cursor = f
        .after
        .as_deref()
        .filter(|a| AgentId::parse(a).is_ok())
        .map(|id| SortCursor {
            since: f
                .after_since
                .and_then(|m| Time::from_micros(m).ok())
                .unwrap_or(Time::ZERO),
            id: id.to_owned(),
        });
    let page = registry.list_sorted(&selector, at, order, cursor.as_ref(), PAGE);
    let evaluated = page.evaluated_at;
    let sort_name = match order {
        Order::Id => "id",
        Order::LongestFirst => "longest",
        Order::NewestFirst => "newest",
    };
    let next_page = page.more.then(|| page.agents.last()).flatten().map(|last| {
        let mut pairs: Vec<(&str, String)> = vec![("state", state.as_str().to_owned())];
        if let Some(w) = why {
            pairs.push(("why", w.name().to_owned()));
        }
        if let Some(l) = &f.label {
            pairs.push(("label", l.clone()));
        }
        if !q.is_empty() {
            pairs.push(("q", q.clone()));
        }
        if let Some(a) = &f.at {
            pairs.push(("at", a.clone()));
        }
        if order != Order::Id {
            pairs.push(("sort", sort_name.to_owned()));
            pairs.push(("after_since", last.since.as_micros().to_string()));
        }
        pairs.push(("after", last.id.to_string()));
        format!(
            "/agents?{}",
            serde_urlencoded::to_string(&pairs).unwrap_or_default()
        )
    });
    AgentsPage {
        evaluated_at: views::rfc3339(evaluated),
        states: ["active", "faulty", "healthy", "inactive", "all"]
            .into_iter()
            .map(|s| (s, s == state.as_str()))
            .collect(),
        whys: Why::ALL
            .iter()
            .map(|w| (w.name(), Some(*w) == why))
            .collect(),
        label: f.label.unwrap_or_default(),
        q,
        at: f.at.unwrap_or_default(),
        sorts: [
            ("id", "ID"),
            ("longest", "longest in state first"),
            ("newest", "latest change first"),
        ]
        .into_iter()
        .map(|(v, text)| (v, text, v == sort_name))
        .collect(),
        error,
        agents: page
            .agents
            .iter()
            .map(|a| views::row(a, evaluated))
            .collect(),
        next_page,
        viewer,
    }
}

async fn agent(
    State(web): State<Web>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
) -> Response {
    let Ok(id) = AgentId::parse(&id) else {
        return (StatusCode::BAD_REQUEST, "not an agent ID\n").into_response();
    };
    let registry = &web.registry;
    let (Ok(view), Ok(history), Ok(activity)) = (
        registry.get(&id, None),
        registry.history(&id),
        registry.activity(&id),
    ) else {
        return (StatusCode::NOT_FOUND, format!("agent {id} is not known\n")).into_response();
    };
    html(&AgentPage::new(&view, &history, &activity, viewer))
}

async fn live_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        LIVE_JS,
    )
        .into_response()
}

async fn events(State(web): State<Web>, caller: Option<Extension<Caller>>) -> Response {
    let holder = match (&web.gate, caller) {
        (Gate::Signed(security), Some(Extension(caller))) => Some((security.clone(), caller)),
        _ => None,
    };
    // A comment every few seconds: the HTTP port closes connections that
    // carry nothing for --handshake-timeout (10 s by default); a browser's
    // EventSource reconnects by itself if one is closed all the same.
    Sse::new(changes(web, holder))
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

/// "change" whenever the fleet changed, at most once per [`COALESCE`],
/// until the server stops or, with security on, until the credential of
/// `holder` no longer holds (checked every [`RECHECK`]).
fn changes(
    web: Web,
    holder: Option<(Arc<Security>, Caller)>,
) -> impl Stream<Item = Result<Event, std::convert::Infallible>> {
    let feed = web.registry.subscribe();
    let state = (feed, web.stop, holder);
    futures_util::stream::unfold(state, |(mut feed, stop, holder)| async move {
        use tokio::sync::broadcast::error::RecvError;
        let mut recheck = tokio::time::interval(RECHECK);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.given() => return None,
                r = feed.recv() => {
                    if matches!(r, Err(RecvError::Closed)) { return None }
                    break;
                }
                _ = recheck.tick() => {
                    if let Some((security, caller)) = &holder
                        && !auth::still_holds(security, caller)
                    {
                        return None;
                    }
                }
            }
        }
        // Coalesce what follows within the window into this one event.
        tokio::select! {
            () = stop.given() => return None,
            () = tokio::time::sleep(COALESCE) => {}
        }
        while let Ok(_) | Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) =
            feed.try_recv()
        {}
        Some((
            Ok(Event::default().event("change").data("fleet")),
            (feed, stop, holder),
        ))
    })
}
