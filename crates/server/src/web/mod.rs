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
//! The view reads the fleet as any client does, through the fleet service
//! (called in the process, as the viewer): on a cluster's node the service
//! answers for the whole cluster, so every node shows the same fleet, and
//! an answer missing part of it (shards changing hands) says so on the
//! page. Live updates come from the registry's change feed on a single
//! server; on a cluster's node, which sees only its own shards' changes,
//! an open overview instead compares what it shows with the cluster's
//! answer once a second (one summary and one short list per open page).
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
use futures_util::{Stream, StreamExt};
use serde::Deserialize;

use fleet_health_proto::v1 as pb;
use fleet_health_proto::v1::fleet_service_server::FleetService as FleetServiceApi;
use fleet_health_types::wire;
use tonic::{Code, Request, Status};

use crate::fleet_service::FleetService;
use crate::model::{AgentId, Labels, StateFilter, Why};
use crate::registry::Registry;
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

/// Where the view reads the fleet.
#[derive(Clone)]
pub struct Source {
    /// The fleet service, answering for the whole cluster on a node.
    service: FleetService,
    /// This server's registry: its clock, and its change feed.
    registry: Registry,
    /// Whether this server is a cluster's node (its feed shows only its
    /// own shards).
    cluster: bool,
}

impl Source {
    /// The fleet as `service` answers for it, on the server of `registry`;
    /// `cluster`: a cluster's node.
    pub fn new(service: FleetService, registry: Registry, cluster: bool) -> Source {
        Source {
            service,
            registry,
            cluster,
        }
    }

    /// The view of a registry on its own, with security off and no agent
    /// streams (for tests and measurements of the view).
    pub fn of_registry(registry: Registry) -> Source {
        let (_, shutdown) = tokio::sync::watch::channel(false);
        let security =
            crate::security::Security::off(registry.metrics().clone(), registry.clock().clone());
        let service = FleetService::new(
            registry.clone(),
            crate::open_streams::OpenStreams::new(),
            shutdown,
            Arc::new(security),
            crate::fleet_service::WatchLimits::default(),
        );
        Source::new(service, registry, false)
    }
}

/// What the handlers share.
#[derive(Clone)]
struct Web {
    source: Source,
    gate: Gate,
    stop: Stop,
}

/// The web view's routes over `source`, behind `gate`.
pub fn router(source: Source, gate: Gate, stop: Stop) -> axum::Router {
    let web = Web { source, gate, stop };
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

/// `message` as a call of the viewer's.
fn ask<T>(message: T, caller: Option<&Caller>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(c) = caller {
        request.extensions_mut().insert(c.clone());
    }
    request
}

/// The page for a call the fleet service refused or could not answer.
fn failed(status: &Status) -> Response {
    let code = match status.code() {
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::Unavailable | Code::DeadlineExceeded => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (code, format!("{}\n", status.message())).into_response()
}

/// The caller in a request's extensions, with security on.
fn of(caller: &Option<Extension<Caller>>) -> Option<&Caller> {
    caller.as_ref().map(|Extension(c)| c)
}

async fn overview(
    State(web): State<Web>,
    Extension(viewer): Extension<Viewer>,
    caller: Option<Extension<Caller>>,
    Query(part): Query<Part>,
) -> Response {
    let main = match overview_data(&web.source, of(&caller)).await {
        Ok((summary, faulty)) => overview_main(&summary, &faulty),
        Err(status) => return failed(&status),
    };
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

/// What the overview shows: the summary, and the first [`FAULTY_SHOWN`]
/// faulty agents, longest first (a page token says there are more). The two
/// are asked at once: on a cluster's node each gathers every node's part.
async fn overview_data(
    source: &Source,
    caller: Option<&Caller>,
) -> Result<(pb::GetSummaryResponse, pb::ListAgentsResponse), Status> {
    let summary = source
        .service
        .get_summary(ask(pb::GetSummaryRequest::default(), caller));
    let faulty = source.service.list_agents(ask(
        pb::ListAgentsRequest {
            filter: pb::StateFilter::Faulty as i32,
            order: pb::ListOrder::LongestFirst as i32,
            page_size: FAULTY_SHOWN as u32,
            ..pb::ListAgentsRequest::default()
        },
        caller,
    ));
    let (summary, faulty) = tokio::try_join!(summary, faulty)?;
    Ok((summary.into_inner(), faulty.into_inner()))
}

fn overview_main(s: &pb::GetSummaryResponse, faulty: &pb::ListAgentsResponse) -> OverviewMain {
    let now = views::time(s.evaluated_at.as_ref()).unwrap_or(Time::ZERO);
    let total = s.total;
    let percent = |n: u64| {
        if total == 0 {
            0.0
        } else {
            n as f64 * 100.0 / total as f64
        }
    };
    let mut by_why: Vec<views::WhyRow> = s
        .by_why
        .iter()
        .filter(|w| w.count > 0)
        .filter_map(|w| Why::try_from(w.why).ok().map(|why| (why, w.count)))
        .map(|(w, count)| views::WhyRow {
            name: w.name(),
            text: w.as_str(),
            state: w.state().as_str(),
            count,
            percent: format!("{:.1}", percent(count)),
        })
        .collect();
    by_why.sort_by_key(|w| std::cmp::Reverse(w.count));
    let storm = s.storm.clone().unwrap_or_default();
    let storm_text = format!(
        "{} of {} active agents are faulty ({:.0}%){}: a shared cause is likelier than every agent failing; remediators stand still.",
        storm.faulty,
        storm.active_agents,
        storm.faulty_share * 100.0,
        Why::try_from(storm.dominant_why)
            .ok()
            .filter(|_| storm.dominant_count > 0)
            .map(|w| format!("; {} of them say \"{}\"", storm.dominant_count, w.as_str()))
            .unwrap_or_default()
    );
    OverviewMain {
        evaluated_at: views::rfc3339(now),
        incomplete: s.incomplete || faulty.incomplete,
        storm: storm.active,
        storm_text,
        total,
        faulty: s.faulty,
        healthy: s.healthy,
        inactive: s.inactive,
        connected: s.connected,
        maintenance: s.maintenance,
        state_bar: [
            ("faulty", s.faulty),
            ("healthy", s.healthy),
            ("inactive", s.inactive),
        ]
        .into_iter()
        .map(|(k, n)| (k, format!("{:.1}", percent(n))))
        .collect(),
        by_why,
        faulty_agents: faulty.agents.iter().map(|a| views::row(a, now)).collect(),
        faulty_more: !faulty.next_page_token.is_empty(),
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
    /// Where the previous page ended: the fleet service's page token.
    page: Option<String>,
}

async fn agents(
    State(web): State<Web>,
    Extension(viewer): Extension<Viewer>,
    caller: Option<Extension<Caller>>,
    Query(f): Query<Filters>,
) -> Response {
    html(&agents_page(&web.source, of(&caller), f, viewer).await)
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

async fn agents_page(
    source: &Source,
    caller: Option<&Caller>,
    f: Filters,
    viewer: Viewer,
) -> AgentsPage {
    let now = source.registry.clock().now();
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
    let (order, sort_name) = match f.sort.as_deref() {
        Some("longest") => (pb::ListOrder::LongestFirst, "longest"),
        Some("newest") => (pb::ListOrder::NewestFirst, "newest"),
        Some("id") | Some("") | None => (pb::ListOrder::Unspecified, "id"),
        Some(other) => {
            error = Some(format!("sort {other:?}: give id, longest or newest"));
            (pb::ListOrder::Unspecified, "id")
        }
    };
    let request = pb::ListAgentsRequest {
        filter: pb::StateFilter::from(state) as i32,
        why: why.map(|w| pb::Why::from(w) as i32).into_iter().collect(),
        labels: labels.into_iter().collect(),
        at: at.map(wire::timestamp),
        page_size: PAGE as u32,
        page_token: f.page.clone().unwrap_or_default(),
        maintenance: pb::MaintenanceFilter::Unspecified as i32,
        id_contains: q.clone(),
        order: order as i32,
    };
    let page = match source.service.list_agents(ask(request, caller)).await {
        Ok(page) => page.into_inner(),
        Err(status) => {
            error = Some(status.message().to_owned());
            pb::ListAgentsResponse::default()
        }
    };
    let evaluated = views::time(page.evaluated_at.as_ref()).unwrap_or(now);
    let next_page = (!page.next_page_token.is_empty()).then(|| {
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
        if order != pb::ListOrder::Unspecified {
            pairs.push(("sort", sort_name.to_owned()));
        }
        pairs.push(("page", page.next_page_token.clone()));
        format!(
            "/agents?{}",
            serde_urlencoded::to_string(&pairs).unwrap_or_default()
        )
    });
    AgentsPage {
        evaluated_at: views::rfc3339(evaluated),
        incomplete: page.incomplete,
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
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Response {
    if AgentId::parse(&id).is_err() {
        return (StatusCode::BAD_REQUEST, "not an agent ID\n").into_response();
    }
    let caller = of(&caller);
    let service = &web.source.service;
    let view = service.get_agent(ask(
        pb::GetAgentRequest {
            agent_id: id.clone(),
            at: None,
        },
        caller,
    ));
    let history = service.get_history(ask(
        pb::GetHistoryRequest {
            agent_id: id.clone(),
        },
        caller,
    ));
    match tokio::join!(view, history) {
        (Ok(view), Ok(history)) => match view.into_inner().agent {
            Some(view) => html(&AgentPage::new(&view, &history.into_inner(), viewer)),
            None => failed(&Status::internal("the answer had no agent")),
        },
        (Err(s), _) | (_, Err(s)) if s.code() == Code::NotFound => {
            (StatusCode::NOT_FOUND, format!("agent {id} is not known\n")).into_response()
        }
        (Err(s), _) | (_, Err(s)) => failed(&s),
    }
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
    let changes = if web.source.cluster {
        cluster_changes(web, holder).boxed()
    } else {
        changes(web, holder).boxed()
    };
    Sse::new(changes)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

type Changes = Result<Event, std::convert::Infallible>;

fn change() -> Changes {
    Ok(Event::default().event("change").data("fleet"))
}

/// "change" whenever the fleet changed, at most once per [`COALESCE`],
/// until the server stops or, with security on, until the credential of
/// `holder` no longer holds (checked every [`RECHECK`]).
fn changes(
    web: Web,
    holder: Option<(Arc<Security>, Caller)>,
) -> impl Stream<Item = Changes> + Send + 'static {
    let feed = web.source.registry.subscribe();
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
        Some((change(), (feed, stop, holder)))
    })
}

/// How often an open overview on a cluster's node compares what it shows
/// with the cluster's answer.
const CLUSTER_LOOK: Duration = Duration::from_secs(1);

/// What the overview shows, without the times that move by themselves
/// (evaluation times, last heard): when it differs, the page is stale.
fn shown(summary: &pb::GetSummaryResponse, faulty: &pb::ListAgentsResponse) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        summary.total,
        summary.healthy,
        summary.faulty,
        summary.inactive,
        summary.connected,
        summary.maintenance,
        summary.given_up,
        summary.claimed,
        summary.incomplete || faulty.incomplete,
    )
        .hash(&mut h);
    for w in &summary.by_why {
        (w.why, w.count).hash(&mut h);
    }
    if let Some(s) = &summary.storm {
        (s.active, s.faulty, s.active_agents, s.dominant_why).hash(&mut h);
    }
    for a in &faulty.agents {
        (
            &a.agent_id,
            a.why,
            a.since.map(|t| (t.seconds, t.nanos)),
            a.maintenance.is_some(),
            a.claim.is_some(),
            a.given_up.is_some(),
        )
            .hash(&mut h);
    }
    faulty.next_page_token.is_empty().hash(&mut h);
    h.finish()
}

/// The live updates of an overview on a cluster's node: its registry's
/// feed shows only its own shards, so once per [`CLUSTER_LOOK`] the
/// overview's data is asked of the cluster (as the viewer), and "change"
/// is said when it differs from what the page was last told. Ends as
/// [`changes`] does, and when the cluster refuses the viewer (the caller
/// of `holder`, with security on).
fn cluster_changes(
    web: Web,
    holder: Option<(Arc<Security>, Caller)>,
) -> impl Stream<Item = Changes> + Send + 'static {
    let mut look = tokio::time::interval(CLUSTER_LOOK);
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = (web, holder, look, None::<u64>);
    futures_util::stream::unfold(state, |(web, holder, mut look, mut last)| async move {
        loop {
            tokio::select! {
                () = web.stop.given() => return None,
                _ = look.tick() => {}
            }
            if let Some((security, caller)) = &holder
                && !auth::still_holds(security, caller)
            {
                return None;
            }
            let caller = holder.as_ref().map(|(_, caller)| caller);
            let now = match overview_data(&web.source, caller).await {
                Ok((summary, faulty)) => shown(&summary, &faulty),
                Err(s) if matches!(s.code(), Code::Unauthenticated | Code::PermissionDenied) => {
                    return None;
                }
                // A cluster that cannot answer now: look again later.
                Err(_) => continue,
            };
            // The first look learns what the page shows (it was
            // rendered just before it opened this stream).
            let changed = last.is_some_and(|l| l != now);
            last = Some(now);
            if changed {
                return Some((change(), (web, holder, look, last)));
            }
        }
    })
}
