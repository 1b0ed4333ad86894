//! The command line: flags, subcommands and the parsing of their values.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use fleet_health_client::names::{self, validate_agent_id, validate_label};
use fleet_health_client::proto::{EventKind, StateFilter, Why};
use fleet_health_client::{DEFAULT_SERVER, Time};

use crate::simulate::Mix;
use crate::timefmt::{parse_duration_arg, parse_time};

/// See the health of a fleet of agents, report an agent's events, simulate a
/// fleet.
///
/// Exit codes: 0 ok, 1 error, 2 usage error, 3 server unreachable, 4 agent
/// not found, 5 storm (a large share of the fleet is faulty at once; from
/// `list --faulty` and `summary`).
#[derive(Debug, Parser)]
#[command(name = "fleet-health", version, propagate_version = true)]
pub struct Cli {
    /// The server's address.
    #[arg(long, global = true, env = "FLEET_HEALTH_SERVER", default_value = DEFAULT_SERVER, value_name = "URL")]
    pub server: String,

    /// Output format: table (for people), json, ndjson (one JSON object a
    /// line) or ids (one agent ID a line). Not every command has every format.
    #[arg(short, long, global = true, value_enum, value_name = "FORMAT")]
    pub output: Option<Output>,

    /// How long to wait for the server: to connect and for each answer (for
    /// `report`, for the acknowledgement).
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration_arg, value_name = "DURATION")]
    pub timeout: Duration,

    /// When to colour the output: auto (only on a terminal, and never when
    /// NO_COLOR is set), always or never.
    #[arg(long, global = true, value_enum, default_value_t = ColorWhen::Auto, value_name = "WHEN")]
    pub color: ColorWhen,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// An output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns and a summary line, for people.
    Table,
    /// One JSON document.
    Json,
    /// One JSON object a line.
    Ndjson,
    /// One agent ID a line.
    Ids,
}

/// When to colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ColorWhen {
    /// On a terminal, unless NO_COLOR is set.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List agents: the active ones (healthy and faulty) unless told otherwise.
    List(ListArgs),
    /// Show one agent in detail.
    Status(StatusArgs),
    /// Show the matching agents, then each change as it happens, until
    /// interrupted. Use `-o ndjson` in scripts.
    Watch(WatchArgs),
    /// Counts by state and reason, and the storm flag.
    Summary(SummaryArgs),
    /// The recent changes of one agent's status.
    History(AgentArgs),
    /// Remove an agent and everything known of it from the server.
    Forget(AgentArgs),
    /// Report one event of an agent (from a shell script); exits once the
    /// server has acknowledged it.
    Report(ReportArgs),
    /// Run a simulated fleet of agents, each with its own stream, for demos
    /// and load tests; prints the rate and acknowledgement latency achieved.
    Simulate(SimulateArgs),
}

/// Which agents: state flags, reasons and labels.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("state").args(["faulty", "healthy", "inactive", "all"])))]
pub struct Filter {
    /// Only faulty agents (the restart candidates).
    #[arg(long)]
    pub faulty: bool,
    /// Only healthy agents.
    #[arg(long)]
    pub healthy: bool,
    /// Only inactive agents (silent for the inactive window).
    #[arg(long)]
    pub inactive: bool,
    /// Every agent, inactive ones included.
    #[arg(long)]
    pub all: bool,
    /// Only agents with this reason: its text ("no data sent to server") or
    /// short name (no-data-sent, no-data-received, stuck-at-shutdown,
    /// not-reporting, shutdown-in-progress, not-registered, all-is-ok,
    /// stopped, inactive). Repeat for any of several.
    #[arg(long, value_parser = parse_why_arg, value_name = "WHY")]
    pub why: Vec<Why>,
    /// Only agents with this label (KEY=VALUE). Repeat: all must match.
    #[arg(long, value_parser = parse_label_arg, value_name = "KEY=VALUE")]
    pub label: Vec<(String, String)>,
}

impl Filter {
    /// The state filter the flags ask for.
    pub fn state(&self) -> StateFilter {
        if self.faulty {
            StateFilter::Faulty
        } else if self.healthy {
            StateFilter::Healthy
        } else if self.inactive {
            StateFilter::Inactive
        } else if self.all {
            StateFilter::All
        } else {
            StateFilter::Active
        }
    }

    /// The labels as a map.
    pub fn labels(&self) -> BTreeMap<String, String> {
        self.label.iter().cloned().collect()
    }
}

/// `list`'s arguments.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Which agents.
    #[command(flatten)]
    pub filter: Filter,
    /// Evaluate at this TIME instead of now: RFC 3339, epoch seconds, or
    /// relative (-7h, +2h). A forecast assumes connected agents keep up their
    /// heartbeats.
    #[arg(long, value_parser = parse_time_arg, value_name = "TIME", allow_hyphen_values = true)]
    pub at: Option<Time>,
}

/// `status`'s arguments.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The agent's ID.
    #[arg(value_parser = parse_agent_id, value_name = "AGENT")]
    pub agent: String,
    /// Evaluate at this TIME instead of now (RFC 3339, epoch seconds, -7h, +2h).
    #[arg(long, value_parser = parse_time_arg, value_name = "TIME", allow_hyphen_values = true)]
    pub at: Option<Time>,
}

/// `watch`'s arguments.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Which agents.
    #[command(flatten)]
    pub filter: Filter,
}

/// `summary`'s arguments.
#[derive(Debug, Args)]
pub struct SummaryArgs {
    /// Evaluate at this TIME instead of now (RFC 3339, epoch seconds, -7h, +2h).
    #[arg(long, value_parser = parse_time_arg, value_name = "TIME", allow_hyphen_values = true)]
    pub at: Option<Time>,
}

/// One agent.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The agent's ID.
    #[arg(value_parser = parse_agent_id, value_name = "AGENT")]
    pub agent: String,
}

/// `report`'s arguments.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The agent's ID: 1 to 253 characters of A-Z a-z 0-9 . _ : @ / -
    #[arg(long, value_parser = parse_agent_id, value_name = "ID")]
    pub agent: String,
    /// The event, as the reference sensor names it: starting, shutting_down,
    /// server_data_received, server_data_sent, registered, unregistered,
    /// heartbeat, stopped.
    #[arg(value_parser = parse_event_arg, value_name = "EVENT")]
    pub event: EventKind,
    /// When it happened (RFC 3339, epoch seconds, or relative such as -7h);
    /// default: when the server receives it.
    #[arg(long, value_parser = parse_time_arg, value_name = "TIME", allow_hyphen_values = true)]
    pub at: Option<Time>,
    /// A label to set on the agent (KEY=VALUE); repeat for more. Given labels
    /// replace the agent's earlier ones; none leaves them as they are.
    #[arg(long, value_parser = parse_label_arg, value_name = "KEY=VALUE")]
    pub label: Vec<(String, String)>,
}

/// `simulate`'s arguments.
#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// How many agents.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub agents: u32,
    /// The share of each behaviour, as NAME=WEIGHT pairs: healthy,
    /// no-data-sent, no-data-received, stuck-at-shutdown, unregistered,
    /// crash, stop. Unnamed behaviours get weight 0.
    #[arg(long, value_parser = Mix::parse, default_value = Mix::DEFAULT, value_name = "MIX")]
    pub mix: Mix,
    /// Data events per second across the fleet (0: as fast as the server
    /// acknowledges them). Default: each agent sends one data event every 10 s.
    #[arg(long, value_name = "EVENTS_PER_SEC")]
    pub rate: Option<f64>,
    /// How many agent streams share one HTTP/2 connection.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub streams_per_connection: u32,
    /// Events per message (batching) for the data events of healthy agents.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub events_per_message: u32,
    /// Stop after this long (default: run until interrupted).
    #[arg(long, value_parser = parse_duration_arg, value_name = "DURATION")]
    pub duration: Option<Duration>,
    /// The agents' IDs begin with this; then the behaviour and a number.
    #[arg(long, default_value = "sim-", value_name = "PREFIX")]
    pub prefix: String,
    /// On exit, drop the agents' streams without a word (they become "not
    /// reporting" after the server's silence window) instead of stopping them
    /// cleanly. Agents stuck at shutdown never say `stopped` either way.
    #[arg(long)]
    pub leave: bool,
    /// How long the agents take to connect, spread evenly.
    #[arg(long, default_value = "2s", value_parser = parse_duration_arg, value_name = "DURATION")]
    pub ramp_up: Duration,
}

/// Parses an agent ID, with the rule in the message when it is refused.
pub fn parse_agent_id(s: &str) -> Result<String, String> {
    validate_agent_id(s).map_err(|e| e.to_string())?;
    Ok(s.to_owned())
}

/// Parses a reason: its text or its short name.
pub fn parse_why_arg(s: &str) -> Result<Why, String> {
    names::parse_why(s).ok_or_else(|| {
        let known: Vec<&str> = names::WHY_NAMES.iter().map(|(_, n, _)| *n).collect();
        format!(
            "unknown reason {s:?}: use its text (\"no data sent to server\") or one of {}",
            known.join(", ")
        )
    })
}

/// Parses an event name as the reference spells it.
pub fn parse_event_arg(s: &str) -> Result<EventKind, String> {
    names::event_kind(s).ok_or_else(|| {
        let known: Vec<&str> = names::EVENT_NAMES.iter().map(|(_, n)| *n).collect();
        format!("unknown event {s:?}: one of {}", known.join(", "))
    })
}

/// Parses KEY=VALUE.
pub fn parse_label_arg(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("invalid label {s:?}: expected KEY=VALUE"))?;
    validate_label(k, v).map_err(|e| e.to_string())?;
    Ok((k.to_owned(), v.to_owned()))
}

/// Parses a TIME relative to the clock now.
pub fn parse_time_arg(s: &str) -> Result<Time, String> {
    parse_time(s, fleet_health_client::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("fleet-health").chain(args.iter().copied()))
    }

    #[test]
    fn the_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = parse(&[
            "list",
            "--faulty",
            "-o",
            "json",
            "--server",
            "http://h:1",
            "--timeout",
            "3s",
        ])
        .unwrap();
        assert_eq!(cli.output, Some(Output::Json));
        assert_eq!(cli.server, "http://h:1");
        assert_eq!(cli.timeout, Duration::from_secs(3));
        let Command::List(list) = cli.command else {
            panic!()
        };
        assert_eq!(list.filter.state(), StateFilter::Faulty);
    }

    #[test]
    fn list_filters() {
        let cli = parse(&[
            "list",
            "--why",
            "no data sent to server",
            "--why",
            "not-reporting",
            "--label",
            "site=eu",
            "--label",
            "tier=db",
            "--at",
            "-7h",
        ])
        .unwrap();
        let Command::List(list) = cli.command else {
            panic!()
        };
        assert_eq!(list.filter.state(), StateFilter::Active);
        assert_eq!(list.filter.why, [Why::NoDataSent, Why::NotReporting]);
        assert_eq!(list.filter.labels().len(), 2);
        let at = list.at.unwrap();
        let ago = fleet_health_client::now().since(at);
        assert!(
            ago >= Duration::from_secs(7 * 3600 - 5) && ago <= Duration::from_secs(7 * 3600 + 5)
        );
        for (flag, state) in [
            ("--healthy", StateFilter::Healthy),
            ("--all", StateFilter::All),
            ("--inactive", StateFilter::Inactive),
        ] {
            let Command::List(list) = parse(&["list", flag]).unwrap().command else {
                panic!()
            };
            assert_eq!(list.filter.state(), state);
        }
    }

    #[test]
    fn state_flags_exclude_each_other() {
        let err = parse(&["list", "--faulty", "--healthy"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn bad_values_are_usage_errors_with_clear_messages() {
        let cases: [(&[&str], &str); 6] = [
            (&["status", "bad id"], "1 to 253 characters"),
            (
                &["report", "--agent", "a b", "starting"],
                "1 to 253 characters",
            ),
            (
                &["report", "--agent", "a", "shutting-down"],
                "unknown event",
            ),
            (&["list", "--why", "sad"], "unknown reason"),
            (&["list", "--label", "site"], "KEY=VALUE"),
            (&["list", "--at", "tomorrow"], "RFC 3339"),
        ];
        for (args, needle) in cases {
            let err = parse(args).unwrap_err();
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{args:?}"
            );
            assert!(err.to_string().contains(needle), "{args:?}: {err}");
        }
        assert!(parse(&["list", "-o", "xml"]).is_err());
        assert!(parse(&[]).is_err());
    }

    #[test]
    fn report_takes_every_event_name_of_the_reference() {
        for (kind, name) in names::EVENT_NAMES {
            let cli = parse(&["report", "--agent", "web-1", name, "--at", "1714564800"]).unwrap();
            let Command::Report(r) = cli.command else {
                panic!()
            };
            assert_eq!(r.event, kind);
            assert_eq!(r.agent, "web-1");
            assert_eq!(r.at.unwrap().as_unix(), (1_714_564_800, 0));
        }
    }

    #[test]
    fn simulate_load_flags() {
        let cli = parse(&[
            "simulate",
            "--agents",
            "100000",
            "--rate",
            "0",
            "--streams-per-connection",
            "200",
            "--events-per-message",
            "50",
            "--duration",
            "30s",
            "--mix",
            "healthy=1",
        ])
        .unwrap();
        let Command::Simulate(s) = cli.command else {
            panic!()
        };
        assert_eq!(s.agents, 100_000);
        assert_eq!(s.rate, Some(0.0));
        assert_eq!(s.streams_per_connection, 200);
        assert_eq!(s.events_per_message, 50);
        assert_eq!(s.duration, Some(Duration::from_secs(30)));
        assert!(parse(&["simulate", "--agents", "0"]).is_err());
    }
}
