//! What each task does: ask the server through the client crate, print with
//! `render`, and decide the exit code. Commands see the settled [`Config`],
//! never the flags.

use std::io::{self, Write};
use std::time::Duration;

use anyhow::anyhow;
use fleet_health_client::{
    AgentQuery, BackoffConfig, FleetClient, MaintenanceFilter, ReconnectPolicy, Reporter,
    ReporterConfig, ReporterError, ResumingWatch, StateFilter, Storm, Time,
};

use crate::config::{Config, ContextTask, MaintenanceTask, ReportTask, SortBy, Task};
use crate::error::Failure;
use crate::exit_codes::ExitCode;
use crate::render::report::ReportJson;
use crate::render::{self, Format, Style, agents, history, ops, report, summary, watch};
use crate::simulate::{self, Settings};

/// Carries out a settled configuration; returns the exit code, or the
/// failure. Everything goes to stdout through one buffer, flushed at the end
/// (and after each watch message); warnings and notes go to stderr.
pub async fn run(config: Config) -> Result<ExitCode, Failure> {
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let code = execute(&config, &mut out).await.map_err(|mut f| {
        if refused_certificate(&f, &config) {
            f = Failure::new(
                ExitCode::Tls,
                anyhow!(
                    "TLS: the server closed the connection at the first call: it most likely refused this client's certificate (revoked, expired, or not signed by a CA it trusts; its audit log and fleet_health_connections_rejected_total say which)"
                ),
            );
        }
        if f.code == ExitCode::Unreachable {
            f.error = f.error.context(config.server.clone());
        }
        f
    })?;
    out.flush()?;
    Ok(code)
}

/// A broken connection at the first call over https:// with a client
/// certificate: the server refusing the certificate after the handshake.
fn refused_certificate(f: &Failure, config: &Config) -> bool {
    f.error.chain().any(|e| {
        matches!(
            e.downcast_ref::<fleet_health_client::ClientError>(),
            Some(fleet_health_client::ClientError::Status(status))
                if fleet_health_client::maybe_refused_certificate(status, &config.server, &config.credentials)
        )
    })
}

async fn execute(config: &Config, out: &mut dyn Write) -> Result<ExitCode, Failure> {
    let style = config.style;
    let fleet = || FleetClient::connect_with(&config.server, &config.credentials, config.timeout);
    match &config.task {
        Task::List {
            query,
            format,
            sort,
        } => list(&fleet()?, out, style, query, *format, *sort).await,
        Task::Status { agent, at, format } => {
            status(&fleet()?, out, style, agent.as_str(), *at, *format).await
        }
        Task::Watch {
            query,
            format,
            reconnect,
        } => watch(fleet()?, out, style, query, *format, *reconnect).await,
        Task::Summary { at, format } => summary(&fleet()?, out, style, *at, *format).await,
        Task::History { agent, format } => {
            history(&fleet()?, out, style, agent.as_str(), *format).await
        }
        Task::Forget { agent, format } => forget(&fleet()?, out, agent.as_str(), *format).await,
        Task::Report(task) => report(config, out, task).await,
        Task::Simulate { settings, format } => simulate(settings, out, *format).await,
        Task::Remediate { settings, format } => {
            remediate(fleet()?, out, style, settings, *format).await
        }
        Task::ClearGivenUp { agent, format } => {
            let cleared = fleet()?.clear_given_up(agent.as_str()).await?;
            match format {
                Format::Json => render::remediate::cleared_json(out, agent.as_str(), cleared)?,
                _ => render::remediate::cleared_line(out, agent.as_str(), cleared)?,
            }
            Ok(ExitCode::Success)
        }
        Task::Pki(task) => {
            let said = crate::pki::run(task).map_err(Failure::usage)?;
            out.write_all(said.as_bytes())?;
            Ok(ExitCode::Success)
        }
        Task::Token(task) => {
            let said = crate::tokens::run(task).map_err(Failure::usage)?;
            out.write_all(said.out.as_bytes())?;
            eprint!("{}", said.note);
            Ok(ExitCode::Success)
        }
        Task::Maintenance { task, format } => {
            maintenance(&fleet()?, out, style, task, *format).await
        }
        Task::Context { task, path } => context(config, path, task, out),
        Task::Version { format } => version(&fleet()?, out, *format).await,
        Task::ClusterStatus { format } => cluster_status(&fleet()?, out, *format).await,
        Task::Print(bytes) => {
            out.write_all(bytes)?;
            Ok(ExitCode::Success)
        }
        Task::WriteFiles { dir, files } => {
            std::fs::create_dir_all(dir)?;
            for (name, contents) in files {
                std::fs::write(dir.join(name), contents)?;
            }
            eprintln!("wrote {} man pages into {}", files.len(), dir.display());
            Ok(ExitCode::Success)
        }
    }
}

/// `fleet-health maintenance ...`.
async fn maintenance(
    fleet: &FleetClient,
    out: &mut dyn Write,
    style: Style,
    task: &MaintenanceTask,
    format: Format,
) -> Result<ExitCode, Failure> {
    match task {
        MaintenanceTask::Set {
            targets,
            reason,
            duration,
        } => {
            let marked = fleet.set_maintenance(targets, reason, *duration).await?;
            match format {
                Format::Json => ops::marked_json(out, &marked, reason)?,
                _ => ops::marked_line(out, &marked, reason)?,
            }
        }
        MaintenanceTask::List { labels } => {
            let query = AgentQuery {
                filter: StateFilter::All,
                labels: labels.clone(),
                maintenance: MaintenanceFilter::Only,
                ..AgentQuery::default()
            };
            let list = fleet.list(&query).await?;
            match format {
                Format::Table | Format::Wide => ops::maintenance_table(out, style, &list)?,
                Format::Json => agents::list_json(out, &list)?,
                Format::Yaml => render::yaml(out, |o| agents::list_json(o, &list))?,
                Format::Ndjson => agents::list_ndjson(out, &list)?,
                Format::Ids => agents::ids(out, list.agents.iter().map(|a| a.agent_id.as_str()))?,
            }
        }
        MaintenanceTask::Clear { targets } => {
            let cleared = fleet.clear_maintenance(targets).await?;
            match format {
                Format::Json => {
                    render::write_json(out, &serde_json::json!({ "cleared": cleared }))?
                }
                _ => writeln!(
                    out,
                    "{cleared} maintenance mark{} ended",
                    if cleared == 1 { "" } else { "s" }
                )?,
            }
        }
    }
    Ok(ExitCode::Success)
}

/// `fleet-health cluster status`.
async fn cluster_status(
    fleet: &FleetClient,
    out: &mut dyn Write,
    format: Format,
) -> Result<ExitCode, Failure> {
    let s = fleet.cluster_status().await?;
    let secs = |d: Option<std::time::Duration>| d.map(|d| (d.as_millis() as f64) / 1000.0);
    match format {
        Format::Json | Format::Yaml => {
            let json = |o: &mut dyn Write| {
                render::write_json(
                    o,
                    &serde_json::json!({
                        "clustered": s.clustered,
                        "answered_by": s.answered_by,
                        "database": s.database,
                        "shards": s.shards,
                        "unowned": s.unowned,
                        "lease_seconds": secs(s.lease),
                        "nodes": s.nodes.iter().map(|n| serde_json::json!({
                            "node": n.node,
                            "address": n.address,
                            "live": n.live,
                            "draining": n.draining,
                            "shards": n.shards,
                            "lease_left_seconds": secs(n.lease_left),
                            "seen_seconds_ago": secs(Some(n.seen_ago)),
                        })).collect::<Vec<_>>(),
                        "standbys": s.standbys.iter().map(|(name, state, sync, lag)| serde_json::json!({
                            "name": name, "state": state, "sync_state": sync,
                            "replay_lag_seconds": secs(*lag),
                        })).collect::<Vec<_>>(),
                    }),
                )
            };
            if format == Format::Yaml {
                render::yaml(out, json)?;
            } else {
                json(out)?;
            }
        }
        _ => {
            if !s.clustered {
                writeln!(out, "not a cluster: a single server")?;
                return Ok(ExitCode::Success);
            }
            let live = s.nodes.iter().filter(|n| n.live).count();
            writeln!(
                out,
                "cluster of {live} live node{} over {}: {} shards, lease {} (answered by {})",
                if live == 1 { "" } else { "s" },
                s.database,
                s.shards,
                s.lease
                    .map_or("-".into(), |l| format!("{:.1}s", l.as_secs_f64())),
                s.answered_by
            )?;
            let rows: Vec<Vec<String>> = s
                .nodes
                .iter()
                .map(|n| {
                    vec![
                        n.node.clone(),
                        n.address.clone(),
                        if n.draining {
                            "draining".into()
                        } else if n.live {
                            "live".into()
                        } else {
                            "gone".into()
                        },
                        n.shards.to_string(),
                        n.lease_left
                            .map_or("-".into(), |l| format!("{:.1}s", l.as_secs_f64())),
                        format!("{:.1}s ago", n.seen_ago.as_secs_f64()),
                    ]
                })
                .collect();
            render::plain_table(
                out,
                &[
                    "NODE",
                    "ADDRESS",
                    "STATE",
                    "SHARDS",
                    "LEASE LEFT",
                    "LAST HEARD",
                ],
                &rows,
            )?;
            writeln!(
                out,
                "{} shard{} changing hands",
                s.unowned,
                if s.unowned == 1 { "" } else { "s" }
            )?;
            for (name, state, sync, lag) in &s.standbys {
                writeln!(
                    out,
                    "database standby {name}: {state}, {sync}, replay lag {}",
                    lag.map_or("-".into(), |l| format!("{:.3}s", l.as_secs_f64()))
                )?;
            }
        }
    }
    Ok(ExitCode::Success)
}

/// `fleet-health version`: this client's, then the server's (exit 3 with
/// the client's printed when the server cannot be reached).
async fn version(
    fleet: &FleetClient,
    out: &mut dyn Write,
    format: Format,
) -> Result<ExitCode, Failure> {
    let client = env!("CARGO_PKG_VERSION");
    let server = fleet.server_info().await;
    match format {
        Format::Json | Format::Yaml => {
            let json = |o: &mut dyn Write| {
                render::write_json(
                    o,
                    &serde_json::json!({
                        "client": { "version": client },
                        "server": server.as_ref().ok().map(|s| serde_json::json!({
                            "version": s.version,
                            "started_at": s.started_at.map(render::time::format_time),
                            "durable": s.durable,
                            "secured": s.secured,
                        })),
                    }),
                )
            };
            if format == Format::Yaml {
                render::yaml(out, json)?;
            } else {
                json(out)?;
            }
        }
        _ => {
            writeln!(out, "client  fleet-health {client}")?;
            if let Ok(s) = &server {
                writeln!(
                    out,
                    "server  fleet-health-server {} ({}, security {}, up since {})",
                    s.version,
                    if s.durable { "durable" } else { "in memory" },
                    if s.secured { "on" } else { "off" },
                    s.started_at
                        .map_or_else(|| "-".to_owned(), render::time::format_time)
                )?;
            }
        }
    }
    server?;
    Ok(ExitCode::Success)
}

/// `fleet-health context ...`.
fn context(
    config: &Config,
    path: &std::path::Path,
    task: &ContextTask,
    out: &mut dyn Write,
) -> Result<ExitCode, Failure> {
    use crate::contexts::ContextsFile;
    let mut file = ContextsFile::read(path).map_err(Failure::usage)?;
    match task {
        ContextTask::List => {
            if file.contexts.is_empty() {
                eprintln!(
                    "no contexts in {}; add one with `fleet-health context set NAME --url URL ...`",
                    path.display()
                );
            }
            for (name, ctx) in &file.contexts {
                let mark = if file.current_context.as_deref() == Some(name) {
                    "*"
                } else {
                    " "
                };
                writeln!(
                    out,
                    "{mark} {name}\t{}",
                    ctx.server.as_deref().unwrap_or("-")
                )?;
            }
        }
        ContextTask::Use { name } => {
            if !file.contexts.contains_key(name) {
                return Err(Failure::usage(format!(
                    "no context named {name:?} in {}",
                    path.display()
                )));
            }
            file.current_context = Some(name.clone());
            file.write(path).map_err(Failure::usage)?;
            eprintln!("now using context {name:?}");
        }
        ContextTask::Set {
            name,
            context,
            make_current,
        } => {
            let entry = file.contexts.entry(name.clone()).or_default();
            let c = context.clone();
            if c.server.is_some() {
                entry.server = c.server;
            }
            if c.ca.is_some() {
                entry.ca = c.ca;
            }
            if c.cert.is_some() {
                entry.cert = c.cert;
            }
            if c.key.is_some() {
                entry.key = c.key;
            }
            if c.token_file.is_some() {
                entry.token_file = c.token_file;
            }
            if *make_current || file.current_context.is_none() {
                file.current_context = Some(name.clone());
            }
            file.write(path).map_err(Failure::usage)?;
            eprintln!("context {name:?} saved in {}", path.display());
        }
        ContextTask::Show => {
            let c = &config.credentials;
            let show = |p: &Option<std::path::PathBuf>| {
                p.as_ref()
                    .map_or("-".to_string(), |p| p.display().to_string())
            };
            writeln!(out, "context\t{}", config.context.as_deref().unwrap_or("-"))?;
            writeln!(out, "server\t{}", config.server)?;
            writeln!(out, "ca\t{}", show(&c.ca))?;
            writeln!(out, "cert\t{}", show(&c.cert))?;
            writeln!(out, "key\t{}", show(&c.key))?;
            writeln!(
                out,
                "token\t{}",
                if c.token.is_some() { "set" } else { "-" }
            )?;
        }
    }
    Ok(ExitCode::Success)
}

/// Exit 5 with a warning on stderr when the storm flag is raised; the
/// output, already complete, is flushed first so that it comes before.
fn storm_exit(
    out: &mut dyn Write,
    style: Style,
    storm: Option<&Storm>,
) -> Result<ExitCode, Failure> {
    match storm.filter(|s| s.active) {
        Some(storm) => {
            out.flush()?;
            eprintln!("{}", summary::storm_warning(style, storm));
            Ok(ExitCode::Storm)
        }
        None => Ok(ExitCode::Success),
    }
}

async fn list(
    fleet: &FleetClient,
    out: &mut dyn Write,
    style: Style,
    query: &AgentQuery,
    format: Format,
    sort: SortBy,
) -> Result<ExitCode, Failure> {
    let mut list = fleet.list(query).await?;
    agents::sort(&mut list.agents, sort);
    match format {
        Format::Table => agents::list_table(out, style, &list)?,
        Format::Wide => agents::list_wide(out, style, &list)?,
        Format::Json => agents::list_json(out, &list)?,
        Format::Yaml => render::yaml(out, |o| agents::list_json(o, &list))?,
        Format::Ndjson => agents::list_ndjson(out, &list)?,
        Format::Ids => agents::ids(out, list.agents.iter().map(|a| a.agent_id.as_str()))?,
    }
    if list.incomplete {
        out.flush()?;
        eprintln!("{}", style.warn(INCOMPLETE));
    }
    if query.filter == StateFilter::Faulty
        && query.maintenance == MaintenanceFilter::Default
        && let Some(note) = agents::left_out_note(list.storm.as_ref())
    {
        out.flush()?;
        eprintln!("{note}");
    }
    // Only a list of the faulty ones is a list of restart candidates, where
    // a storm must stop a script from acting.
    if query.filter == StateFilter::Faulty {
        storm_exit(out, style, list.storm.as_ref())
    } else {
        Ok(ExitCode::Success)
    }
}

async fn status(
    fleet: &FleetClient,
    out: &mut dyn Write,
    style: Style,
    agent: &str,
    at: Option<Time>,
    format: Format,
) -> Result<ExitCode, Failure> {
    let agent = fleet.get_agent(agent, at).await?;
    match format {
        Format::Table | Format::Wide => agents::status_table(out, style, &agent)?,
        Format::Json => agents::agent_json(out, &agent, true)?,
        Format::Yaml => render::yaml(out, |o| agents::agent_json(o, &agent, true))?,
        Format::Ndjson => agents::agent_json(out, &agent, false)?,
        Format::Ids => agents::ids(out, [agent.agent_id.as_str()])?,
    }
    Ok(ExitCode::Success)
}

/// Said on stderr under an answer that misses part of the fleet.
const INCOMPLETE: &str = "incomplete: part of the fleet is missing from this answer (shards changing hands between servers, or a server that did not answer); ask again in a few seconds";

async fn summary(
    fleet: &FleetClient,
    out: &mut dyn Write,
    style: Style,
    at: Option<Time>,
    format: Format,
) -> Result<ExitCode, Failure> {
    let s = fleet.summary(at).await?;
    match format {
        Format::Json => summary::summary_json(out, &s)?,
        Format::Yaml => render::yaml(out, |o| summary::summary_json(o, &s))?,
        _ => summary::summary_table(out, style, &s)?,
    }
    if s.incomplete {
        out.flush()?;
        eprintln!("{}", style.warn(INCOMPLETE));
    }
    storm_exit(out, style, s.storm.as_ref())
}

async fn history(
    fleet: &FleetClient,
    out: &mut dyn Write,
    style: Style,
    agent: &str,
    format: Format,
) -> Result<ExitCode, Failure> {
    let h = fleet.history(agent).await?;
    match format {
        Format::Json => history::history_json(out, &h)?,
        Format::Yaml => render::yaml(out, |o| history::history_json(o, &h))?,
        Format::Ndjson => history::history_ndjson(out, &h)?,
        _ => history::history_table(out, style, &h)?,
    }
    Ok(ExitCode::Success)
}

async fn forget(
    fleet: &FleetClient,
    out: &mut dyn Write,
    agent: &str,
    format: Format,
) -> Result<ExitCode, Failure> {
    let last = fleet.forget(agent).await?;
    match (format, &last) {
        (Format::Json, Some(a)) => agents::agent_json(out, a, true)?,
        (Format::Json, None) => writeln!(out, "null")?,
        (Format::Ids, _) => agents::ids(out, [agent])?,
        _ => agents::forgot_line(out, agent, last.as_ref())?,
    }
    Ok(ExitCode::Success)
}

async fn report(
    config: &Config,
    out: &mut dyn Write,
    task: &ReportTask,
) -> Result<ExitCode, Failure> {
    let timeout = config.timeout;
    let settings = config;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut config = ReporterConfig::new(task.agent.as_str());
    config.labels = task.labels.clone();
    config.max_pending = 16;
    config.connect_timeout = timeout;
    config.backoff = BackoffConfig {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(1),
    };
    // A fresh reporter: its own random incarnation, so that this event is
    // never taken for a re-send of an earlier run's.
    let reporter = Reporter::connect_with(&settings.server, &settings.credentials, config)?;
    let seq = reporter.report(task.event, task.at)?;
    match tokio::time::timeout_at(deadline, reporter.wait_acked(seq)).await {
        Ok(result) => result?,
        Err(_) => {
            let last = reporter.stats().last_error;
            // A TLS failure says more than a timeout.
            let code = if last.as_deref().is_some_and(|e| e.starts_with("TLS:")) {
                ExitCode::Tls
            } else {
                ExitCode::Unreachable
            };
            let why = last.map_or_else(String::new, |e| format!(" (last error: {e})"));
            return Err(Failure::new(
                code,
                anyhow!("the event was not acknowledged within {timeout:?}{why}"),
            ));
        }
    }
    // Acknowledged: close the stream cleanly. The event is safe whatever
    // happens now, so a slow close is not an error.
    let grace = deadline
        .saturating_duration_since(tokio::time::Instant::now())
        .max(Duration::from_millis(500));
    match reporter.close(grace).await {
        Ok(()) | Err(ReporterError::Timeout { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    if task.format == Format::Json {
        report::report_json(
            out,
            &ReportJson {
                agent_id: reporter.agent_id(),
                event: task.event.as_str(),
                incarnation: reporter.incarnation().to_string(),
                seq,
                acknowledged: true,
            },
        )?;
    }
    Ok(ExitCode::Success)
}

async fn watch(
    fleet: FleetClient,
    out: &mut dyn Write,
    style: Style,
    query: &AgentQuery,
    format: Format,
    reconnect: ReconnectPolicy,
) -> Result<ExitCode, Failure> {
    let budget = reconnect.give_up_after;
    let mut watch = ResumingWatch::start(fleet, query.clone(), reconnect)
        .await?
        .on_lost(Box::new(move |cause| {
            eprintln!("{}", watch::lost_note(cause, budget));
        }));
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let change = tokio::select! {
            _ = &mut interrupted => return Ok(ExitCode::Success),
            change = watch.next() => change?,
        };
        match format {
            Format::Ndjson => watch::watch_ndjson(out, &change)?,
            _ => writeln!(out, "{}", watch::watch_line(style, &change))?,
        }
        // One message at a time reaches a reader of the pipe.
        out.flush()?;
    }
}

async fn remediate(
    fleet: FleetClient,
    out: &mut dyn Write,
    style: Style,
    settings: &crate::remediate::Settings,
    format: Format,
) -> Result<ExitCode, Failure> {
    let budget = settings.reconnect.give_up_after;
    let mut emit = |event: &crate::remediate::Event| -> io::Result<()> {
        let now = fleet_health_client::now();
        match format {
            Format::Ndjson | Format::Json => render::remediate::event_ndjson(out, event, now)?,
            _ => writeln!(out, "{}", render::remediate::event_line(style, event, now))?,
        }
        // Each decision reaches a reader of the pipe (a log) at once.
        out.flush()
    };
    let tally = crate::remediate::run(
        fleet,
        settings,
        &mut emit,
        Box::new(move |cause| eprintln!("{}", watch::lost_note(cause, budget))),
    )
    .await?;
    if !settings.policy.once {
        return Ok(ExitCode::Success);
    }
    Ok(if tally.failed > 0 || tally.gave_up > 0 {
        ExitCode::RemediationFailed
    } else if tally.storm && tally.succeeded == 0 {
        ExitCode::Storm
    } else {
        ExitCode::Success
    })
}

async fn simulate(
    settings: &Settings,
    out: &mut dyn Write,
    format: Format,
) -> Result<ExitCode, Failure> {
    let outcome = simulate::run(settings, &mut |note| {
        eprintln!("{}", render::report::note_line(&note));
    })
    .await?;
    match format {
        Format::Json => report::simulation_json(out, &outcome)?,
        _ => report::simulation_table(out, &outcome)?,
    }
    if outcome.all_failed() {
        let why = outcome
            .first_failure
            .map_or_else(String::new, |e| format!(" (first failure: {e})"));
        return Err(Failure::new(
            ExitCode::Unreachable,
            anyhow!(
                "no simulated agent could report to {}{why}",
                settings.server
            ),
        ));
    }
    Ok(ExitCode::Success)
}
