//! What each subcommand does.

use std::io::{self, IsTerminal, Write};
use std::time::Duration;

use anyhow::anyhow;
use fleet_health_client::names::event_name;
use fleet_health_client::proto::StateFilter;
use fleet_health_client::{
    AgentQuery, BackoffConfig, FleetClient, Reporter, ReporterConfig, ReporterError,
};
use serde::Serialize;

use crate::cli::{
    AgentArgs, Cli, Command, Filter, ListArgs, Output, ReportArgs, StatusArgs, SummaryArgs,
    WatchArgs,
};
use crate::output::{self, Style};
use crate::{ExitCode, Failure};

/// What a command needs besides its own arguments.
pub struct Context {
    /// The server's address.
    pub server: String,
    /// How long to wait for the server.
    pub timeout: Duration,
    /// The format asked for, if any.
    pub output: Option<Output>,
    /// Colours or not.
    pub style: Style,
}

impl Context {
    /// The format to use: the one asked for, if this command has it, else
    /// the first (the default).
    fn format(&self, command: &str, formats: &[Output]) -> Result<Output, Failure> {
        match self.output {
            None => Ok(formats[0]),
            Some(f) if formats.contains(&f) => Ok(f),
            Some(f) => {
                let names: Vec<String> = formats
                    .iter()
                    .map(|f| format!("{f:?}").to_lowercase())
                    .collect();
                Err(Failure::usage(format!(
                    "`{command}` has no {} output; it has: {}",
                    format!("{f:?}").to_lowercase(),
                    names.join(", ")
                )))
            }
        }
    }

    fn fleet(&self) -> Result<FleetClient, Failure> {
        Ok(FleetClient::connect_lazy(&self.server, self.timeout)?)
    }
}

/// Runs a parsed command line; returns the exit code, or the failure.
pub async fn run(cli: Cli) -> Result<ExitCode, Failure> {
    let stdout = io::stdout();
    let ctx = Context {
        server: cli.server,
        timeout: cli.timeout,
        output: cli.output,
        style: Style::detect(cli.color, stdout.is_terminal()),
    };
    let mut out = io::BufWriter::new(stdout.lock());
    let code = execute(&ctx, &mut out, cli.command)
        .await
        .map_err(|mut f| {
            if f.code == ExitCode::Unreachable {
                f.error = f.error.context(ctx.server.clone());
            }
            f
        })?;
    out.flush()?;
    Ok(code)
}

async fn execute(
    ctx: &Context,
    out: &mut dyn Write,
    command: Command,
) -> Result<ExitCode, Failure> {
    let code = match command {
        Command::List(args) => list(ctx, out, args).await?,
        Command::Status(args) => status(ctx, out, args).await?,
        Command::Watch(args) => watch(ctx, out, args).await?,
        Command::Summary(args) => summary(ctx, out, args).await?,
        Command::History(args) => history(ctx, out, args).await?,
        Command::Forget(args) => forget(ctx, out, args).await?,
        Command::Report(args) => report(ctx, out, args).await?,
        Command::Simulate(args) => crate::simulate::run(ctx, out, args).await?,
    };
    Ok(code)
}

fn query(filter: &Filter, at: Option<fleet_health_client::Time>) -> AgentQuery {
    AgentQuery {
        filter: filter.state(),
        why: filter.why.clone(),
        labels: filter.labels(),
        at,
    }
}

async fn list(ctx: &Context, out: &mut dyn Write, args: ListArgs) -> Result<ExitCode, Failure> {
    let format = ctx.format(
        "list",
        &[Output::Table, Output::Json, Output::Ndjson, Output::Ids],
    )?;
    let query = query(&args.filter, args.at);
    let list = ctx.fleet()?.list(&query).await?;
    match format {
        Output::Table => output::list_table(out, ctx.style, &list)?,
        Output::Json => output::list_json(out, &list)?,
        Output::Ndjson => output::list_ndjson(out, &list)?,
        Output::Ids => output::ids(out, &list.agents)?,
    }
    let storm = list.storm.as_ref().filter(|s| s.active);
    match storm {
        Some(storm) if query.filter == StateFilter::Faulty => {
            out.flush()?;
            eprintln!("{}", ctx.style.warn(&output::storm_warning(storm)));
            Ok(ExitCode::Storm)
        }
        _ => Ok(ExitCode::Success),
    }
}

async fn status(ctx: &Context, out: &mut dyn Write, args: StatusArgs) -> Result<ExitCode, Failure> {
    let format = ctx.format(
        "status",
        &[Output::Table, Output::Json, Output::Ndjson, Output::Ids],
    )?;
    let agent = ctx.fleet()?.get_agent(&args.agent, args.at).await?;
    match format {
        Output::Table => output::status_table(out, ctx.style, &agent)?,
        Output::Json => output::agent_json(out, &agent, true)?,
        Output::Ndjson => output::agent_json(out, &agent, false)?,
        Output::Ids => output::ids(out, std::slice::from_ref(&agent))?,
    }
    Ok(ExitCode::Success)
}

async fn summary(
    ctx: &Context,
    out: &mut dyn Write,
    args: SummaryArgs,
) -> Result<ExitCode, Failure> {
    let format = ctx.format("summary", &[Output::Table, Output::Json])?;
    let summary = ctx.fleet()?.summary(args.at).await?;
    match format {
        Output::Json => output::summary_json(out, &summary)?,
        _ => output::summary_table(out, ctx.style, &summary)?,
    }
    match summary.storm.as_ref().filter(|s| s.active) {
        Some(storm) => {
            out.flush()?;
            eprintln!("{}", ctx.style.warn(&output::storm_warning(storm)));
            Ok(ExitCode::Storm)
        }
        None => Ok(ExitCode::Success),
    }
}

async fn history(ctx: &Context, out: &mut dyn Write, args: AgentArgs) -> Result<ExitCode, Failure> {
    let format = ctx.format("history", &[Output::Table, Output::Json, Output::Ndjson])?;
    let history = ctx.fleet()?.history(&args.agent).await?;
    match format {
        Output::Json => output::history_json(out, &history)?,
        Output::Ndjson => output::history_ndjson(out, &history)?,
        _ => output::history_table(out, ctx.style, &history)?,
    }
    Ok(ExitCode::Success)
}

async fn forget(ctx: &Context, out: &mut dyn Write, args: AgentArgs) -> Result<ExitCode, Failure> {
    let format = ctx.format("forget", &[Output::Table, Output::Json, Output::Ids])?;
    let last = ctx.fleet()?.forget(&args.agent).await?;
    match (format, &last) {
        (Output::Json, Some(a)) => output::agent_json(out, a, true)?,
        (Output::Json, None) => writeln!(out, "null")?,
        (Output::Ids, _) => writeln!(out, "{}", args.agent)?,
        (_, Some(a)) => writeln!(
            out,
            "forgot {} (it was {}: {})",
            a.agent_id,
            fleet_health_client::names::state_name(a.state()),
            a.why_text
        )?,
        (_, None) => writeln!(out, "forgot {}", args.agent)?,
    }
    Ok(ExitCode::Success)
}

/// What `report -o json` prints.
#[derive(Serialize)]
struct ReportJson<'a> {
    agent_id: &'a str,
    event: &'static str,
    incarnation: String,
    seq: u64,
    acknowledged: bool,
}

async fn report(ctx: &Context, out: &mut dyn Write, args: ReportArgs) -> Result<ExitCode, Failure> {
    let format = ctx.format("report", &[Output::Table, Output::Json])?;
    let deadline = tokio::time::Instant::now() + ctx.timeout;
    let mut config = ReporterConfig::new(&args.agent);
    config.labels = args.label.into_iter().collect();
    config.max_pending = 16;
    config.connect_timeout = ctx.timeout;
    config.backoff = BackoffConfig {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(1),
    };
    // A fresh reporter: its own random incarnation, so that this event is
    // never taken for a re-send of an earlier run's.
    let reporter = Reporter::connect(&ctx.server, config)?;
    let seq = reporter.report(args.event, args.at)?;
    match tokio::time::timeout_at(deadline, reporter.wait_acked(seq)).await {
        Ok(result) => result?,
        Err(_) => {
            let why = reporter
                .stats()
                .last_error
                .map_or_else(String::new, |e| format!(" (last error: {e})"));
            return Err(Failure::new(
                ExitCode::Unreachable,
                anyhow!(
                    "the event was not acknowledged within {:?}{why}",
                    ctx.timeout
                ),
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
    if format == Output::Json {
        let json = ReportJson {
            agent_id: reporter.agent_id(),
            event: event_name(args.event),
            incarnation: reporter.incarnation().to_string(),
            seq,
            acknowledged: true,
        };
        serde_json::to_writer(&mut *out, &json).map_err(io::Error::from)?;
        writeln!(out)?;
    }
    Ok(ExitCode::Success)
}

async fn watch(ctx: &Context, out: &mut dyn Write, args: WatchArgs) -> Result<ExitCode, Failure> {
    let format = ctx.format("watch", &[Output::Table, Output::Ndjson])?;
    let query = query(&args.filter, None);
    let mut watch = ctx.fleet()?.watch(&query).await?;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let event = tokio::select! {
            _ = &mut interrupted => return Ok(ExitCode::Success),
            event = watch.next() => event?,
        };
        let Some(event) = event else {
            return Err(Failure::new(
                ExitCode::Unreachable,
                anyhow!("the server ended the watch"),
            ));
        };
        match format {
            Output::Ndjson => output::watch_ndjson(out, &event)?,
            _ => {
                if let Some(line) = output::watch_line(ctx.style, &event) {
                    writeln!(out, "{line}")?;
                }
            }
        }
        // One message at a time reaches a reader of the pipe.
        out.flush()?;
    }
}
