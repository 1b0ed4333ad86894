//! The command line: flags, subcommands and the parsing of their values,
//! and [`Cli::into_config`], the one place where they become a [`Config`].
//! This is the only module that sees clap's types.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use fleet_health_auth::{AgentPattern, Role, TrustDomain};

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use fleet_health_client::{
    AgentQuery, Credentials, DEFAULT_SERVER, MaintenanceFilter, ReconnectPolicy, Targets, Time,
};
use fleet_health_types::{AgentId, EventKind, Labels, StateFilter, Why, check_label};

use crate::config::{Config, ContextTask, MaintenanceTask, ReportTask, SortBy, Task};
use crate::contexts::{Context, ContextsFile};
use crate::error::Failure;
use crate::pki::{PkiTask, Subject};
use crate::remediate;
use crate::remediate::engine::Policy;
use crate::remediate::rate::Rate;
use crate::remediate::runner::Program;
use crate::render::{Colour, Format, Style};
use crate::simulate::{Mix, Settings};
use crate::timearg::{parse_duration_arg, parse_time};
use crate::tokens::TokenTask;

/// See the health of a fleet of agents, report an agent's events, simulate a
/// fleet.
///
/// Exit codes: 0 ok, 1 error, 2 usage error, 3 server unreachable (for
/// `watch`: gone for good), 4 agent not found, 5 storm (a large share of the
/// fleet is faulty at once; from `list --faulty` and `summary`), 6 not
/// authenticated, 7 permission denied, 8 TLS failed, 9 a remediation failed
/// (`remediate --once`).
///
/// Settings come from flags, then environment variables, then the context
/// (`--context`, or the contexts file's current one; see `fleet-health
/// context`), then defaults.
#[derive(Debug, Parser)]
#[command(
    name = "fleet-health",
    version,
    propagate_version = true,
    after_help = "Examples:
  fleet-health summary                        the fleet in numbers, and the storm flag
  fleet-health list --faulty                  the restart candidates
  fleet-health list -l site=eu -o wide        more columns, agents labelled site=eu
  fleet-health status web-7                   one agent in detail
  fleet-health watch --faulty -o ndjson       every change, one JSON object a line
  fleet-health history web-7                  its transitions and what was done to it
  fleet-health --server fh.example:50051 --ca ca.pem --token-file admin.token summary"
)]
pub struct Cli {
    /// The server's address: http://HOST:PORT, or https://HOST:PORT for TLS,
    /// or HOST:PORT (https:// when --ca or --cert is given, else http://)
    /// [default: the context's, else http://127.0.0.1:50051].
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "FLEET_HEALTH_SERVER",
        value_name = "URL"
    )]
    pub server: Option<String>,

    /// The context to use from the contexts file [default: its current one].
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "FLEET_HEALTH_CONTEXT",
        value_name = "NAME"
    )]
    pub context: Option<String>,

    /// Trust bundle (PEM) for the server's certificate [default: the
    /// context's, else the public web roots].
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "FLEET_HEALTH_CA",
        value_name = "FILE"
    )]
    pub ca: Option<PathBuf>,

    /// Client certificate (PEM), from `fleet-health pki issue` or your CA.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "FLEET_HEALTH_CERT",
        value_name = "FILE"
    )]
    pub cert: Option<PathBuf>,

    /// The private key of --cert (PEM).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "FLEET_HEALTH_KEY",
        value_name = "FILE"
    )]
    pub key: Option<PathBuf>,

    /// A bearer token (`fleet-health token create`). Prefer --token-file or
    /// the environment: a flag stays in the shell's history.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "FLEET_HEALTH_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,

    /// A file holding a bearer token.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "FLEET_HEALTH_TOKEN_FILE",
        value_name = "FILE",
        conflicts_with = "token"
    )]
    pub token_file: Option<PathBuf>,

    /// Output format: table (for people), wide (the table with more
    /// columns), json, yaml, ndjson (one JSON object a line) or ids (one
    /// agent ID a line). Not every command has every format.
    #[arg(
        short,
        long,
        global = true,
        help_heading = "Global options",
        value_enum,
        value_name = "FORMAT"
    )]
    pub output: Option<Output>,

    /// How long to wait for the server: to connect and for each answer (for
    /// `report`, for the acknowledgement).
    #[arg(long, global = true, help_heading = "Global options", default_value = "10s", value_parser = parse_duration_arg, value_name = "DURATION")]
    pub timeout: Duration,

    /// Tables without their header line (and lists without their summary
    /// line), for scripts that read columns.
    #[arg(long, global = true, help_heading = "Global options")]
    pub no_headers: bool,

    /// When to colour the output: auto (only on a terminal, and never when
    /// NO_COLOR is set), always or never.
    #[arg(long, global = true, help_heading = "Global options", value_enum, default_value_t = ColorWhen::Auto, value_name = "WHEN")]
    pub color: ColorWhen,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,

    /// Which connection flags were typed on the command line (not taken
    /// from the environment): what `context set` saves. Filled by
    /// [`Cli::try_parse_args`].
    #[arg(skip)]
    pub typed: Typed,
}

/// How long to wait for the server by default (the global --timeout).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The connection flags typed on the command line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Typed {
    /// `--server`.
    pub server: bool,
    /// `--ca`.
    pub ca: bool,
    /// `--cert`.
    pub cert: bool,
    /// `--key`.
    pub key: bool,
    /// `--token`.
    pub token: bool,
    /// `--token-file`.
    pub token_file: bool,
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
    /// One YAML document (the JSON shape).
    Yaml,
    /// The table with more columns (`list`).
    Wide,
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
    #[command(after_help = "Examples:
  fleet-health list --faulty                        the restart candidates (exit 5 in a storm)
  fleet-health list --faulty -o ids                 their IDs, one a line, for scripts
  fleet-health list --why stuck-at-shutdown -l site=eu
  fleet-health list --all --sort-by last-heard      silent longest first
  fleet-health list --faulty --at +2h               a forecast: faulty in two hours if nothing changes
  fleet-health list -o wide --no-headers            more columns, no header line")]
    List(ListArgs),
    /// Show one agent in detail.
    #[command(after_help = "Examples:
  fleet-health status web-7
  fleet-health status web-7 --at -1h      as it was an hour ago
  fleet-health status web-7 -o yaml")]
    Status(StatusArgs),
    /// Show the matching agents, then each change as it happens, until
    /// interrupted. Use `-o ndjson` in scripts. If the server goes away, it
    /// reconnects and starts over with a fresh snapshot; it exits 3 if the
    /// server does not come back within --reconnect-for.
    #[command(after_help = "Examples:
  fleet-health watch --faulty                 the faulty set now, then each change
  fleet-health watch --faulty -o ndjson | jq -c 'select(.type == \"changed\")'")]
    Watch(WatchArgs),
    /// Counts by state and why, and the storm flag.
    Summary(SummaryArgs),
    /// The recent changes of one agent's status.
    History(AgentArgs),
    /// Remove an agent and everything known of it from the server.
    Forget(AgentArgs),
    /// Report one event of an agent (from a shell script); exits once the
    /// server has acknowledged it.
    #[command(after_help = "Examples:
  fleet-health report --agent web-7 starting
  fleet-health report --agent web-7 server_data_received --label site=eu
  fleet-health report --agent web-7 shutting_down --at -10m")]
    Report(ReportArgs),
    /// Run a simulated fleet of agents, each with its own stream, for demos
    /// and load tests; prints the rate and acknowledgement latency achieved.
    Simulate(SimulateArgs),
    /// Restart faulty agents: run a program for each agent that has been
    /// faulty for --settle, within a rate, a concurrency, a cooldown and a
    /// crash-loop limit; stop all while the fleet looks like a storm; claim
    /// each agent on the server first, so that several remediators never act
    /// on one agent at once. `remediate clear ID` clears a "given up".
    ///
    /// Example: fleet-health remediate --why stuck-at-shutdown --exec
    /// systemctl restart 'agent@{id}'
    ///
    /// Exit codes (besides the common ones): with --once, 0 when every
    /// program succeeded (or none was needed), 9 when a program failed,
    /// timed out or could not start, or an agent was given up, 5 when the
    /// storm stop held everything back. Without --once it runs until SIGINT
    /// or SIGTERM (exit 0: it stops starting programs and waits for those
    /// running), or exits 3 when the server is gone for longer than
    /// --reconnect-for.
    Remediate(RemediateArgs),
    /// A small CA in a folder: certificates for the server, agents and
    /// operators (for small fleets and tests; a large fleet uses its own CA).
    #[command(subcommand)]
    Pki(PkiCommand),
    /// Bearer tokens in a server's tokens file (only their hashes are kept).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Planned work: mark agents as under maintenance for a while, with a
    /// reason. They keep their real status, but faulty lists and watches
    /// leave them out (unless --maintenance include), the storm guard does
    /// not count them, and remediators never act on them. A mark ends by
    /// itself when its time is up. Needs the orchestrator or admin role.
    #[command(subcommand)]
    Maintenance(MaintenanceCommand),
    /// Named contexts: a server and its credentials, kept in the contexts
    /// file ($FLEET_HEALTH_CONFIG, else $XDG_CONFIG_HOME/fleet-health/config.toml).
    #[command(subcommand)]
    Context(ContextCommand),
    /// The servers of a cluster (see "Running several servers" in the
    /// README): the nodes, the shards each serves, their leases, the
    /// database's standbys.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// The versions of this client and of the server it talks to.
    Version,
    /// Print a shell completion script. Bash: `source <(fleet-health
    /// completion bash)` (or save it in /etc/bash_completion.d/); zsh: save
    /// it as `_fleet-health` in a directory of $fpath; fish: save it in
    /// ~/.config/fish/completions/fleet-health.fish.
    Completion {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (fleet-health.1 and one per command) into DIR, or
    /// print fleet-health.1 when no DIR is given (`fleet-health man | man -l -`).
    Man {
        /// Where to write them.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// A shell completion script for `fleet-health`, made from the flags.
pub fn completion(shell: clap_complete::Shell) -> Vec<u8> {
    use clap::CommandFactory;
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "fleet-health", &mut out);
    out
}

/// The man pages, made from the flags: `fleet-health.1`, then one per
/// command (`fleet-health-list.1`, ...), as (file name, roff).
pub fn man_pages() -> std::io::Result<Vec<(String, Vec<u8>)>> {
    use clap::CommandFactory;
    let cmd = Cli::command();
    let mut pages = Vec::new();
    let mut main = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut main)?;
    pages.push(("fleet-health.1".to_owned(), main));
    for sub in cmd.get_subcommands() {
        let name = format!("fleet-health-{}", sub.get_name());
        let mut page = Vec::new();
        clap_mangen::Man::new(sub.clone())
            .title(name.to_uppercase())
            .render(&mut page)?;
        pages.push((format!("{name}.1"), page));
    }
    Ok(pages)
}

/// `maintenance` subcommands.
#[derive(Debug, Subcommand)]
pub enum MaintenanceCommand {
    /// Mark agents (by ID, by label, or all) as under maintenance for
    /// DURATION, replacing marks they have.
    #[command(after_help = "Examples:
  fleet-health maintenance set web-7 web-8 --reason \"disk swap\" --for 30m
  fleet-health maintenance set -l rack=r1 --reason \"kernel upgrade\" --for 2h")]
    Set {
        /// Which agents.
        #[command(flatten)]
        targets: TargetArgs,
        /// Why (shown in status, list and history; recorded with your name).
        #[arg(long, value_name = "TEXT")]
        reason: String,
        /// How long the mark lasts: it ends by itself then (1s to 365d).
        #[arg(long = "for", value_parser = parse_duration_arg, value_name = "DURATION")]
        duration: Duration,
    },
    /// List the agents under maintenance, with their real status and marks.
    List {
        /// Only agents with this label (KEY=VALUE). Repeat: all must match.
        #[arg(long, value_parser = parse_label_arg, value_name = "KEY=VALUE")]
        label: Vec<(String, String)>,
    },
    /// End marks before their time (by ID, by label, or all).
    Clear {
        /// Which agents.
        #[command(flatten)]
        targets: TargetArgs,
    },
}

/// The agents a maintenance command names: IDs, labels, or all.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("targets").args(["agents", "label", "all"]).required(true)))]
pub struct TargetArgs {
    /// The agents' IDs.
    #[arg(value_parser = parse_agent_id, value_name = "AGENT")]
    pub agents: Vec<AgentId>,
    /// The agents with this label (KEY=VALUE). Repeat: all must match.
    #[arg(long, value_parser = parse_label_arg, value_name = "KEY=VALUE")]
    pub label: Vec<(String, String)>,
    /// Every agent (for `clear`: every agent under maintenance).
    #[arg(long)]
    pub all: bool,
}

impl TargetArgs {
    fn targets(self) -> Targets {
        if self.all {
            Targets::All
        } else if !self.label.is_empty() {
            Targets::Labels(self.label.into_iter().collect())
        } else {
            Targets::Ids(self.agents.iter().map(ToString::to_string).collect())
        }
    }
}

/// `pki` subcommands.
#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Make a CA, a server certificate and an empty CRL in DIR.
    Init {
        /// The folder.
        dir: PathBuf,
        /// A name the server is reached by (DNS name or IP address); repeat
        /// for several [default: localhost and 127.0.0.1].
        #[arg(long = "san", value_name = "NAME")]
        sans: Vec<String>,
        /// The trust domain of the identities this CA signs.
        #[arg(long, default_value = "fleet-health.local", value_parser = parse_trust_domain)]
        trust_domain: TrustDomain,
        /// Days the certificates are valid (the CA: five times as long).
        #[arg(long, default_value_t = 365)]
        days: u64,
        /// Replace files already there.
        #[arg(long)]
        force: bool,
    },
    /// Sign a client certificate with the CA in --dir.
    #[command(subcommand)]
    Issue(IssueCommand),
    /// Add a certificate to the CA's CRL (DIR/crl.pem).
    Revoke {
        /// The certificate (PEM).
        cert: PathBuf,
        /// The CA's folder.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
}

/// What `pki issue` makes.
#[derive(Debug, Subcommand)]
pub enum IssueCommand {
    /// A certificate for an agent: it may report for its own ID only.
    Agent {
        /// The agent's ID.
        #[arg(value_parser = parse_agent_id)]
        id: AgentId,
        /// The CA's folder.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Days it is valid.
        #[arg(long, default_value_t = 90)]
        days: u64,
        /// Replace files already there.
        #[arg(long)]
        force: bool,
    },
    /// A certificate for an operator or a program with a role.
    Operator {
        /// The name.
        name: String,
        /// The role: reader, orchestrator, admin or relay.
        #[arg(long)]
        role: Role,
        /// For a relay: the agent IDs it may report for (`*` matches any
        /// run of characters); repeat for several.
        #[arg(long = "agents", value_name = "PATTERN")]
        agents: Vec<AgentPattern>,
        /// The CA's folder.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Days it is valid.
        #[arg(long, default_value_t = 90)]
        days: u64,
        /// Replace files already there.
        #[arg(long)]
        force: bool,
    },
}

/// `token` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token: prints its secret once, writes only its hash.
    Create {
        /// Its name (unique in the file).
        name: String,
        /// The role: reader, orchestrator, admin or relay.
        #[arg(long)]
        role: Role,
        /// For a relay: the agent IDs it may report for; repeat for several.
        #[arg(long = "agents", value_name = "PATTERN")]
        agents: Vec<AgentPattern>,
        /// How long it lasts (e.g. 30d) [default: until removed].
        #[arg(long, value_parser = parse_duration_arg, value_name = "DURATION")]
        expires: Option<Duration>,
        /// The server's tokens file.
        #[arg(long, env = "FLEET_HEALTH_TOKENS", value_name = "FILE")]
        tokens_file: PathBuf,
        /// Replace a token of the same name.
        #[arg(long)]
        replace: bool,
    },
    /// List the tokens (names, roles, times; never secrets).
    List {
        /// The server's tokens file.
        #[arg(long, env = "FLEET_HEALTH_TOKENS", value_name = "FILE")]
        tokens_file: PathBuf,
    },
    /// Remove a token: it stops working, and its open streams end.
    Revoke {
        /// Its name.
        name: String,
        /// The server's tokens file.
        #[arg(long, env = "FLEET_HEALTH_TOKENS", value_name = "FILE")]
        tokens_file: PathBuf,
    },
}

/// `context` subcommands.
#[derive(Debug, Subcommand)]
pub enum ContextCommand {
    /// List the contexts; the current one is marked.
    List,
    /// Make NAME the current context.
    Use {
        /// The context.
        name: String,
    },
    /// Add or change a context (only the settings given change). The
    /// settings are its own flags or the global ones typed on the command
    /// line (`context set lab --server https://... --ca ca.pem`); values
    /// from the environment are never saved.
    Set {
        /// The context.
        name: String,
        /// The server's URL (or the global --server, given here).
        #[arg(long = "url", value_name = "URL")]
        url: Option<String>,
        /// Trust bundle (PEM) (or the global --ca, given here).
        #[arg(long = "ca-file", value_name = "FILE")]
        ca_file: Option<PathBuf>,
        /// Client certificate (PEM) (or the global --cert, given here).
        #[arg(long = "cert-file", value_name = "FILE")]
        cert_file: Option<PathBuf>,
        /// Its key (PEM) (or the global --key, given here).
        #[arg(long = "key-file", value_name = "FILE")]
        key_file: Option<PathBuf>,
        /// A file holding a bearer token (or the global --token-file, given
        /// here). A context never holds a token itself.
        #[arg(long = "token-path", value_name = "FILE")]
        token_path: Option<PathBuf>,
        /// Also make it the current context.
        #[arg(long = "use")]
        make_current: bool,
    },
    /// Show what a command would use now: the context, the server and the
    /// credentials (a token only as "set").
    Show,
}

/// Which agents: state flags, whys and labels.
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
    /// Only agents with this why: its text ("no data sent to server") or
    /// short name (no-data-sent, no-data-received, stuck-at-shutdown,
    /// not-reporting, shutdown-in-progress, not-registered, all-is-ok,
    /// stopped, inactive). Repeat for any of several.
    #[arg(long, value_parser = parse_why_arg, value_name = "WHY")]
    pub why: Vec<Why>,
    /// Only agents with this label (KEY=VALUE, the value taken whole, commas
    /// and all). Repeat: all must match.
    #[arg(long, value_parser = parse_label_arg, value_name = "KEY=VALUE")]
    pub label: Vec<(String, String)>,
    /// A label selector, as kubectl's: `-l site=eu,rack=r1` (comma-separated
    /// KEY=VALUE pairs; all must match, with --label's too). A value that
    /// holds a comma needs --label.
    #[arg(short = 'l', long, value_parser = parse_label_arg, value_delimiter = ',', value_name = "KEY=VALUE,...")]
    pub selector: Vec<(String, String)>,
    /// Agents under maintenance: include, exclude or only. By default
    /// faulty lists and watches leave them out, and other lists take them.
    #[arg(long, value_name = "WHICH")]
    pub maintenance: Option<MaintenanceArg>,
}

/// `--maintenance`'s values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MaintenanceArg {
    /// Take agents under maintenance too.
    Include,
    /// Leave them out.
    Exclude,
    /// Only agents under maintenance.
    Only,
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

    /// The labels as a map (--label and -l together).
    pub fn labels(&self) -> Labels {
        self.label.iter().chain(&self.selector).cloned().collect()
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
    /// The order: id, state (faulty first), why, since (longest in its
    /// state first) or last-heard (silent longest first).
    #[arg(long, value_enum, default_value_t = SortArg::Id, value_name = "FIELD")]
    pub sort_by: SortArg,
    /// Only agents whose ID contains TEXT (case-sensitive).
    #[arg(long, value_name = "TEXT")]
    pub id_contains: Option<String>,
}

/// `fleet-health cluster`'s tasks.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Nodes (live, draining), the shards each serves, the shortest lease
    /// left, when each was last heard from, the shards changing hands, and
    /// the database's standbys with their replay lag.
    Status,
}

/// `--sort-by`'s values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SortArg {
    /// By agent ID.
    Id,
    /// Faulty first, then healthy, then inactive.
    State,
    /// By why.
    Why,
    /// Longest in its state first.
    Since,
    /// Silent longest first.
    LastHeard,
}

impl From<SortArg> for SortBy {
    fn from(s: SortArg) -> SortBy {
        match s {
            SortArg::Id => SortBy::Id,
            SortArg::State => SortBy::State,
            SortArg::Why => SortBy::Why,
            SortArg::Since => SortBy::Since,
            SortArg::LastHeard => SortBy::LastHeard,
        }
    }
}

/// `status`'s arguments.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The agent's ID.
    #[arg(value_parser = parse_agent_id, value_name = "AGENT")]
    pub agent: AgentId,
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
    /// When the server goes away (a restart, a broken connection), keep
    /// trying to reconnect for this long, with growing pauses, before giving
    /// up with exit code 3. After a reconnect the watch starts over: a
    /// `resync` message, then a fresh snapshot. 0s: give up at once.
    #[arg(long, default_value = "2m", value_parser = parse_duration_arg, value_name = "DURATION")]
    pub reconnect_for: Duration,
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
    pub agent: AgentId,
}

/// `report`'s arguments.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The agent's ID: 1 to 253 characters of A-Z a-z 0-9 . _ : @ / -
    #[arg(long, value_parser = parse_agent_id, value_name = "ID")]
    pub agent: AgentId,
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

/// `remediate`'s arguments.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RemediateArgs {
    /// `remediate clear ID`.
    #[command(subcommand)]
    pub command: Option<RemediateCommand>,
    /// The program to run for each agent, and its arguments (the rest of the
    /// command line: give it last). Run without a shell; `{id}` and `{why}`
    /// in the arguments are replaced; the environment has
    /// FLEET_HEALTH_AGENT_ID, FLEET_HEALTH_WHY and `FLEET_HEALTH_LABEL_<KEY>`
    /// (the key upper-cased, other characters than A-Z 0-9 as `_`), and not
    /// FLEET_HEALTH_TOKEN.
    #[arg(long, num_args = 1.., allow_hyphen_values = true, value_name = "PROGRAM", conflicts_with = "shell", help_heading = "Program")]
    pub exec: Vec<String>,
    /// A string for /bin/sh -c instead of --exec; `{id}` and `{why}` are
    /// replaced by single-quoted words.
    #[arg(long, value_name = "STRING", help_heading = "Program")]
    pub shell: Option<String>,
    /// How long a program may run: then its process group gets SIGTERM, and
    /// SIGKILL 5s later (or at the timeout, if shorter). For `remediate`,
    /// --timeout anywhere on the command line is this one; each call to the
    /// server waits 10s.
    #[arg(long, default_value = "5m", value_parser = parse_duration_arg, value_name = "DURATION", help_heading = "Program")]
    pub timeout: Duration,
    /// Act on an agent once it has been faulty this long (counted from the
    /// server's `since`; a change of why while faulty does not reset it).
    #[arg(long, default_value = "1m", value_parser = parse_duration_arg, value_name = "DURATION", help_heading = "Policy")]
    pub settle: Duration,
    /// Only agents with this why (text or short name, as for `list`);
    /// repeat for any of several [default: any faulty why].
    #[arg(long, value_parser = parse_why_arg, value_name = "WHY", help_heading = "Policy")]
    pub why: Vec<Why>,
    /// Only agents with this label (KEY=VALUE); repeat: all must match.
    #[arg(long, value_parser = parse_label_arg, value_name = "KEY=VALUE", help_heading = "Policy")]
    pub label: Vec<(String, String)>,
    /// Programs running at once, at most.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=10_000), help_heading = "Policy")]
    pub concurrency: u32,
    /// Program starts at most, in any window of this length: N/s, N/m,
    /// N/h (or N/30s).
    #[arg(long, default_value = "10/m", value_parser = Rate::parse, value_name = "N/WINDOW", help_heading = "Policy")]
    pub rate: Rate,
    /// No action on an agent within this of its last remediation, by any
    /// remediator (from the server's record).
    #[arg(long, default_value = "10m", value_parser = parse_duration_arg, value_name = "DURATION", help_heading = "Policy")]
    pub cooldown: Duration,
    /// Crash-loop limit: an agent already remediated this many times within
    /// --per is not restarted again; it is marked "given up" on the server,
    /// reported, and left alone until an operator runs `remediate clear ID`.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..), value_name = "N", help_heading = "Policy")]
    pub max_restarts: u32,
    /// The window of --max-restarts.
    #[arg(long, default_value = "1h", value_parser = parse_duration_arg, value_name = "WINDOW", help_heading = "Policy")]
    pub per: Duration,
    /// How long each claim on the server lasts [default: --timeout plus
    /// --cooldown, so that it covers the run and the time the agent takes
    /// to come back]. The claim is kept after the program ends; it ends by
    /// itself at the lease, or when the agent turns healthy.
    #[arg(long, value_parser = parse_duration_arg, value_name = "DURATION", help_heading = "Policy")]
    pub lease: Option<Duration>,
    /// This remediator's name in claims and records; give each remediator
    /// its own, stable across restarts [default: HOSTNAME:PID].
    #[arg(
        long,
        env = "FLEET_HEALTH_HOLDER",
        value_name = "NAME",
        help_heading = "Policy"
    )]
    pub holder: Option<String>,
    /// Storm stop: with at least this many faulty agents, and more than half
    /// of them giving one --outside-why, nothing is started. (The server's
    /// storm flag stops everything too.)
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..), value_name = "N", help_heading = "Storm stop")]
    pub storm_min: u32,
    /// A why that points away from the agents (the data server, the
    /// network) rather than at them; repeat for several.
    #[arg(long, value_parser = parse_why_arg, default_value = "no-data-received", value_name = "WHY", help_heading = "Storm stop")]
    pub outside_why: Vec<Why>,
    /// Act even during a storm. RISK: when the cause is shared (the data
    /// server or the network is down), this restarts a large part of the
    /// fleet at once (at --rate) and fixes nothing.
    #[arg(long, help_heading = "Storm stop")]
    pub allow_mass_restart: bool,
    /// Act on the agents faulty now (those settled; each at most once),
    /// wait for their programs, and exit.
    #[arg(long)]
    pub once: bool,
    /// Print the plan: which agents it would act on, with which command. No
    /// claim, no program, nothing recorded.
    #[arg(long)]
    pub dry_run: bool,
    /// When the server goes away, keep trying to reconnect for this long
    /// before exiting with code 3; programs running go on meanwhile.
    #[arg(long, default_value = "2m", value_parser = parse_duration_arg, value_name = "DURATION")]
    pub reconnect_for: Duration,
}

/// `remediate` subcommands.
#[derive(Debug, Subcommand)]
pub enum RemediateCommand {
    /// Clear the "given up" a remediator set on an agent: remediators may
    /// act on it again (with a fresh crash-loop budget).
    Clear(AgentArgs),
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

impl From<Output> for Format {
    fn from(o: Output) -> Format {
        match o {
            Output::Table => Format::Table,
            Output::Json => Format::Json,
            Output::Ndjson => Format::Ndjson,
            Output::Ids => Format::Ids,
            Output::Yaml => Format::Yaml,
            Output::Wide => Format::Wide,
        }
    }
}

impl From<ColorWhen> for Colour {
    fn from(c: ColorWhen) -> Colour {
        match c {
            ColorWhen::Auto => Colour::Auto,
            ColorWhen::Always => Colour::Always,
            ColorWhen::Never => Colour::Never,
        }
    }
}

/// The format to use: the one asked for, if the command has it, else its
/// first (the default); a usage error naming what it has otherwise.
fn pick_format(
    command: &str,
    asked: Option<Output>,
    offered: &[Format],
) -> Result<Format, Failure> {
    match asked.map(Format::from) {
        None => Ok(offered[0]),
        Some(f) if offered.contains(&f) => Ok(f),
        Some(f) => {
            let names: Vec<&str> = offered.iter().map(|f| f.name()).collect();
            Err(Failure::usage(format!(
                "`{command}` has no {} output; it has: {}",
                f.name(),
                names.join(", ")
            )))
        }
    }
}

impl Filter {
    /// The query these flags ask for, at `at`.
    fn query(self, at: Option<Time>) -> AgentQuery {
        AgentQuery {
            filter: self.state(),
            labels: self.labels(),
            why: self.why,
            at,
            maintenance: match self.maintenance {
                None => MaintenanceFilter::Default,
                Some(MaintenanceArg::Include) => MaintenanceFilter::Include,
                Some(MaintenanceArg::Exclude) => MaintenanceFilter::Exclude,
                Some(MaintenanceArg::Only) => MaintenanceFilter::Only,
            },
            id_contains: None,
        }
    }
}

impl Cli {
    /// Parses `args` (the program's name first), noting which connection
    /// flags were typed rather than taken from the environment.
    pub fn try_parse_args<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::parser::ValueSource;
        use clap::{CommandFactory, FromArgMatches};
        let matches = Cli::command().try_get_matches_from(args)?;
        let mut cli = Cli::from_arg_matches(&matches)?;
        let typed = |id: &str| {
            let mut m = &matches;
            loop {
                if m.value_source(id) == Some(ValueSource::CommandLine) {
                    return true;
                }
                match m.subcommand() {
                    Some((_, sub)) => m = sub,
                    None => return false,
                }
            }
        };
        cli.typed = Typed {
            server: typed("server"),
            ca: typed("ca"),
            cert: typed("cert"),
            key: typed("key"),
            token: typed("token"),
            token_file: typed("token_file"),
        };
        Ok(cli)
    }

    /// The connection flags typed on the command line, as a context's
    /// settings (for `context set`).
    fn typed_context(&self) -> Result<Context, Failure> {
        if self.typed.token {
            return Err(Failure::usage(
                "a context never holds a token itself: put it in a file (mode 0600) and give --token-file FILE",
            ));
        }
        let pick = |typed: bool, v: &Option<PathBuf>| if typed { v.clone() } else { None };
        Ok(Context {
            server: if self.typed.server {
                self.server.clone()
            } else {
                None
            },
            ca: pick(self.typed.ca, &self.ca),
            cert: pick(self.typed.cert, &self.cert),
            key: pick(self.typed.key, &self.key),
            token_file: pick(self.typed.token_file, &self.token_file),
        })
    }

    /// Settles the flags into a [`Config`]: checks the output format against
    /// the command, checks values that clap cannot, and decides colours
    /// (from `--color`, `NO_COLOR` and whether stdout is a terminal).
    pub fn into_config(self) -> Result<Config, Failure> {
        use Format::{Ids, Json, Ndjson, Table, Wide, Yaml};
        let out = self.output;
        let typed_context = self.typed_context();
        // Local commands need no server, and do not read the contexts file
        // (a broken one must not stop `pki` or `token`), but `context show`.
        let needs_server = match &self.command {
            Command::Pki(_)
            | Command::Token(_)
            | Command::Completion { .. }
            | Command::Man { .. } => false,
            Command::Context(c) => matches!(c, ContextCommand::Show),
            _ => true,
        };
        let (server, credentials, context) = if needs_server {
            self.connection()?
        } else {
            (DEFAULT_SERVER.to_string(), Credentials::default(), None)
        };
        let task = match self.command {
            Command::List(args) => Task::List {
                format: pick_format("list", out, &[Table, Json, Ndjson, Ids, Yaml, Wide])?,
                query: AgentQuery {
                    id_contains: args.id_contains.filter(|t| !t.is_empty()),
                    ..args.filter.query(args.at)
                },
                sort: args.sort_by.into(),
            },
            Command::Status(args) => Task::Status {
                format: pick_format("status", out, &[Table, Json, Ndjson, Ids, Yaml])?,
                agent: args.agent,
                at: args.at,
            },
            Command::Watch(args) => Task::Watch {
                format: pick_format("watch", out, &[Table, Ndjson])?,
                query: args.filter.query(None),
                reconnect: ReconnectPolicy {
                    give_up_after: args.reconnect_for,
                    ..ReconnectPolicy::default()
                },
            },
            Command::Summary(args) => Task::Summary {
                format: pick_format("summary", out, &[Table, Json, Yaml])?,
                at: args.at,
            },
            Command::History(args) => Task::History {
                format: pick_format("history", out, &[Table, Json, Ndjson, Yaml])?,
                agent: args.agent,
            },
            Command::Forget(args) => Task::Forget {
                format: pick_format("forget", out, &[Table, Json, Ids])?,
                agent: args.agent,
            },
            Command::Report(args) => Task::Report(ReportTask {
                format: pick_format("report", out, &[Table, Json])?,
                agent: args.agent,
                event: args.event,
                at: args.at,
                labels: args.label.into_iter().collect(),
            }),
            Command::Simulate(args) => {
                let format = pick_format("simulate", out, &[Table, Json])?;
                if let Some(rate) = args.rate
                    && (!rate.is_finite() || rate < 0.0)
                {
                    return Err(Failure::usage(
                        "--rate must be a number of events per second, 0 or more",
                    ));
                }
                Task::Simulate {
                    format,
                    settings: Settings {
                        server: server.clone(),
                        credentials: credentials.clone(),
                        timeout: self.timeout,
                        agents: args.agents,
                        mix: args.mix,
                        rate: args.rate,
                        streams_per_connection: args.streams_per_connection,
                        events_per_message: args.events_per_message,
                        duration: args.duration,
                        prefix: args.prefix,
                        leave: args.leave,
                        ramp_up: args.ramp_up,
                        progress: std::io::stderr().is_terminal(),
                    },
                }
            }
            Command::Remediate(args) => args.task(out)?,
            Command::Maintenance(cmd) => {
                let (task, offered): (MaintenanceTask, &[Format]) = match cmd {
                    MaintenanceCommand::Set {
                        targets,
                        reason,
                        duration,
                    } => (
                        MaintenanceTask::Set {
                            targets: targets.targets(),
                            reason,
                            duration,
                        },
                        &[Table, Json],
                    ),
                    MaintenanceCommand::List { label } => (
                        MaintenanceTask::List {
                            labels: label.into_iter().collect(),
                        },
                        &[Table, Json, Ndjson, Ids, Yaml],
                    ),
                    MaintenanceCommand::Clear { targets } => (
                        MaintenanceTask::Clear {
                            targets: targets.targets(),
                        },
                        &[Table, Json],
                    ),
                };
                Task::Maintenance {
                    format: pick_format("maintenance", out, offered)?,
                    task,
                }
            }
            Command::Version => Task::Version {
                format: pick_format("version", out, &[Table, Json, Yaml])?,
            },
            Command::Cluster(ClusterCommand::Status) => Task::ClusterStatus {
                format: pick_format("cluster status", out, &[Table, Json, Yaml])?,
            },
            Command::Completion { shell } => Task::Print(completion(shell)),
            Command::Man { dir: None } => Task::Print(
                man_pages()
                    .map_err(Failure::from)?
                    .into_iter()
                    .next()
                    .map(|(_, page)| page)
                    .unwrap_or_default(),
            ),
            Command::Man { dir: Some(dir) } => Task::WriteFiles {
                dir,
                files: man_pages().map_err(Failure::from)?,
            },
            Command::Pki(cmd) => Task::Pki(cmd.task()),
            Command::Token(cmd) => Task::Token(cmd.task()),
            Command::Context(cmd) => {
                let path = crate::contexts::default_path().ok_or_else(|| {
                    Failure::usage(
                        "no contexts file: set FLEET_HEALTH_CONFIG, XDG_CONFIG_HOME or HOME",
                    )
                })?;
                Task::Context {
                    task: cmd.task(typed_context)?,
                    path,
                }
            }
        };
        // `remediate --timeout` is the program's (clap shares the value with
        // the global flag of the same name); its server calls wait the default.
        let timeout = if matches!(task, Task::Remediate { .. }) {
            DEFAULT_CALL_TIMEOUT
        } else {
            self.timeout
        };
        Ok(Config {
            server,
            credentials,
            context,
            timeout,
            style: {
                let style = Style::detect(self.color.into(), std::io::stdout().is_terminal());
                if self.no_headers {
                    style.without_headers()
                } else {
                    style
                }
            },
            task,
        })
    }

    /// The server and credentials: flag or environment, then the context,
    /// then the default.
    fn connection(&self) -> Result<(String, Credentials, Option<String>), Failure> {
        let file = match crate::contexts::default_path() {
            Some(path) => ContextsFile::read(&path).map_err(Failure::usage)?,
            None => ContextsFile::default(),
        };
        self.connection_from(&file)
    }

    /// [`Cli::connection`] with the contexts in `file`.
    fn connection_from(
        &self,
        file: &ContextsFile,
    ) -> Result<(String, Credentials, Option<String>), Failure> {
        let picked = file.pick(self.context.as_deref()).map_err(Failure::usage)?;
        let empty = Context::default();
        let (name, ctx) = picked.map_or((None, &empty), |(n, c)| (Some(n.to_string()), c));
        let server = self
            .server
            .clone()
            .or_else(|| ctx.server.clone())
            .unwrap_or_else(|| DEFAULT_SERVER.to_string());
        let token = match (&self.token, &self.token_file, &ctx.token_file) {
            (Some(t), _, _) => Some(t.clone()),
            (None, Some(f), _) | (None, None, Some(f)) => Some(read_token(f)?),
            (None, None, None) => None,
        };
        let credentials = Credentials {
            ca: self.ca.clone().or_else(|| ctx.ca.clone()),
            cert: self.cert.clone().or_else(|| ctx.cert.clone()),
            key: self.key.clone().or_else(|| ctx.key.clone()),
            token,
        };
        // HOST:PORT: https:// with TLS settings, else http://.
        let server = fleet_health_client::server_url(
            &server,
            credentials.ca.is_some() || credentials.cert.is_some(),
        );
        Ok((server, credentials, name))
    }
}

fn read_token(path: &std::path::Path) -> Result<String, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::usage(format!("token file {}: {e}", path.display())))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(Failure::usage(format!(
            "token file {} is empty",
            path.display()
        )));
    }
    Ok(token.to_string())
}

fn parse_trust_domain(s: &str) -> Result<TrustDomain, String> {
    TrustDomain::parse(s).map_err(|e| e.to_string())
}

impl PkiCommand {
    fn task(self) -> PkiTask {
        match self {
            PkiCommand::Init {
                dir,
                sans,
                trust_domain,
                days,
                force,
            } => PkiTask::Init {
                dir,
                sans: if sans.is_empty() {
                    vec!["localhost".into(), "127.0.0.1".into()]
                } else {
                    sans
                },
                trust_domain,
                days,
                force,
            },
            PkiCommand::Issue(IssueCommand::Agent {
                id,
                dir,
                days,
                force,
            }) => PkiTask::Issue {
                dir,
                subject: Subject::Agent(id),
                days,
                force,
            },
            PkiCommand::Issue(IssueCommand::Operator {
                name,
                role,
                agents,
                dir,
                days,
                force,
            }) => PkiTask::Issue {
                dir,
                subject: Subject::Holder { name, role, agents },
                days,
                force,
            },
            PkiCommand::Revoke { cert, dir } => PkiTask::Revoke { dir, cert },
        }
    }
}

impl TokenCommand {
    fn task(self) -> TokenTask {
        match self {
            TokenCommand::Create {
                name,
                role,
                agents,
                expires,
                tokens_file,
                replace,
            } => TokenTask::Create {
                file: tokens_file,
                name,
                role,
                agents,
                expires_in: expires,
                replace,
            },
            TokenCommand::List { tokens_file } => TokenTask::List { file: tokens_file },
            TokenCommand::Revoke { name, tokens_file } => TokenTask::Revoke {
                file: tokens_file,
                name,
            },
        }
    }
}

impl RemediateArgs {
    /// The task: `clear`, or a remediator with its policy.
    fn task(self, out: Option<Output>) -> Result<Task, Failure> {
        use Format::{Json, Ndjson, Table};
        if let Some(RemediateCommand::Clear(args)) = self.command {
            return Ok(Task::ClearGivenUp {
                format: pick_format("remediate clear", out, &[Table, Json])?,
                agent: args.agent,
            });
        }
        let format = match pick_format("remediate", out, &[Table, Ndjson, Json])? {
            Json => Ndjson,
            f => f,
        };
        let program = match (self.exec, self.shell) {
            (exec, None) if !exec.is_empty() => Program::Exec(exec),
            (_, Some(shell)) if !shell.trim().is_empty() => Program::Shell(shell),
            _ => {
                return Err(Failure::usage(
                    "what to run: give --exec PROGRAM [ARGS...] (last) or --shell STRING",
                ));
            }
        };
        if self.timeout.is_zero() {
            return Err(Failure::usage("--timeout must be above zero"));
        }
        let lease = self.lease.unwrap_or(self.timeout + self.cooldown);
        if lease < Duration::from_secs(1) || lease > Duration::from_secs(86_400) {
            return Err(Failure::usage(format!(
                "the claim lease must be 1s to 1d; it is {} (--lease, or --timeout plus --cooldown)",
                humantime::format_duration(lease)
            )));
        }
        let holder = match self.holder {
            Some(h) if !h.trim().is_empty() => h,
            Some(_) => return Err(Failure::usage("--holder must not be empty")),
            None => default_holder(),
        };
        Ok(Task::Remediate {
            format,
            settings: Box::new(remediate::Settings {
                policy: Policy {
                    settle: self.settle,
                    whys: self.why,
                    labels: self.label.into_iter().collect(),
                    concurrency: self.concurrency as usize,
                    rate: self.rate,
                    cooldown: self.cooldown,
                    max_restarts: self.max_restarts,
                    restart_window: self.per,
                    storm_min: self.storm_min as usize,
                    outside_whys: self.outside_why,
                    allow_mass_restart: self.allow_mass_restart,
                    once: self.once,
                },
                program,
                timeout: self.timeout,
                lease,
                holder,
                dry_run: self.dry_run,
                reconnect: ReconnectPolicy {
                    give_up_after: self.reconnect_for,
                    ..ReconnectPolicy::default()
                },
            }),
        })
    }
}

/// `HOSTNAME:PID`: unique among the remediators running now.
fn default_holder() -> String {
    let uname = rustix::system::uname();
    let host = uname.nodename().to_string_lossy();
    let host = if host.is_empty() { "localhost" } else { &host };
    format!("{host}:{}", std::process::id())
}

impl ContextCommand {
    /// The task; `typed`: the global connection flags typed on the command
    /// line, which `set` saves where its own flags are not given.
    fn task(self, typed: Result<Context, Failure>) -> Result<ContextTask, Failure> {
        Ok(match self {
            ContextCommand::List => ContextTask::List,
            ContextCommand::Use { name } => ContextTask::Use { name },
            ContextCommand::Set {
                name,
                url,
                ca_file,
                cert_file,
                key_file,
                token_path,
                make_current,
            } => {
                let typed = typed?;
                let context = Context {
                    server: url.or(typed.server),
                    ca: ca_file.or(typed.ca).map(absolute),
                    cert: cert_file.or(typed.cert).map(absolute),
                    key: key_file.or(typed.key).map(absolute),
                    token_file: token_path.or(typed.token_file).map(absolute),
                };
                if context == Context::default() && !make_current {
                    return Err(Failure::usage(format!(
                        "nothing to set in context {name:?}: give --server URL, --ca FILE, --cert FILE, --key FILE or --token-file FILE (or --use)"
                    )));
                }
                ContextTask::Set {
                    name,
                    context,
                    make_current,
                }
            }
            ContextCommand::Show => ContextTask::Show,
        })
    }
}

/// Paths stored in a context are absolute: the context is used from any folder.
fn absolute(p: PathBuf) -> PathBuf {
    std::path::absolute(&p).unwrap_or(p)
}

/// Parses an agent ID, with the rule in the message when it is refused.
pub fn parse_agent_id(s: &str) -> Result<AgentId, String> {
    AgentId::parse(s).map_err(|e| e.to_string())
}

/// Parses a why: its text or its short name.
pub fn parse_why_arg(s: &str) -> Result<Why, String> {
    Why::parse(s).ok_or_else(|| {
        let known: Vec<&str> = Why::ALL.iter().map(|w| w.name()).collect();
        format!(
            "unknown why {s:?}: use its text (\"no data sent to server\") or one of {}",
            known.join(", ")
        )
    })
}

/// Parses an event name as the reference spells it.
pub fn parse_event_arg(s: &str) -> Result<EventKind, String> {
    EventKind::parse(s).ok_or_else(|| {
        let known: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
        format!("unknown event {s:?}: one of {}", known.join(", "))
    })
}

/// Parses KEY=VALUE.
pub fn parse_label_arg(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("invalid label {s:?}: expected KEY=VALUE"))?;
    check_label(k, v).map_err(|e| e.to_string())?;
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
        Cli::try_parse_args(std::iter::once("fleet-health").chain(args.iter().copied()))
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
        assert_eq!(cli.server.as_deref(), Some("http://h:1"));
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
            (&["list", "--why", "sad"], "unknown why"),
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
        for kind in EventKind::ALL {
            let name = kind.as_str();
            let cli = parse(&["report", "--agent", "web-1", name, "--at", "1714564800"]).unwrap();
            let Command::Report(r) = cli.command else {
                panic!()
            };
            assert_eq!(r.event, kind);
            assert_eq!(r.agent.as_str(), "web-1");
            assert_eq!(r.at.unwrap().as_unix(), (1_714_564_800, 0));
        }
    }

    fn config(args: &[&str]) -> Result<Config, Failure> {
        parse(args).unwrap().into_config()
    }

    #[test]
    fn formats_are_checked_once_against_what_each_command_has() {
        let c = config(&["list", "-o", "ids", "--faulty"]).unwrap();
        let Task::List { query, format, .. } = c.task else {
            panic!()
        };
        assert_eq!(format, Format::Ids);
        assert_eq!(query.filter, StateFilter::Faulty);
        let c = config(&["history", "x"]).unwrap();
        assert!(matches!(
            c.task,
            Task::History {
                format: Format::Table,
                ..
            }
        ));
        for (args, message) in [
            (
                &["summary", "-o", "ids"][..],
                "`summary` has no ids output; it has: table, json, yaml",
            ),
            (
                &["watch", "-o", "json"],
                "`watch` has no json output; it has: table, ndjson",
            ),
            (
                &["simulate", "-o", "ndjson"],
                "`simulate` has no ndjson output; it has: table, json",
            ),
            (
                &["forget", "x", "-o", "ndjson"],
                "`forget` has no ndjson output; it has: table, json, ids",
            ),
        ] {
            let f = config(args).unwrap_err();
            assert_eq!(f.code, crate::ExitCode::Usage, "{args:?}");
            assert_eq!(f.error.to_string(), message, "{args:?}");
        }
    }

    #[test]
    fn watch_reconnects_for_two_minutes_unless_told() {
        let Task::Watch { reconnect, .. } = config(&["watch"]).unwrap().task else {
            panic!()
        };
        assert_eq!(reconnect.give_up_after, Duration::from_secs(120));
        let Task::Watch {
            reconnect, query, ..
        } = config(&["watch", "--reconnect-for", "5s", "--label", "a=b"])
            .unwrap()
            .task
        else {
            panic!()
        };
        assert_eq!(reconnect.give_up_after, Duration::from_secs(5));
        assert_eq!(query.labels["a"], "b");
        assert_eq!(query.at, None);
    }

    #[test]
    fn a_bad_rate_is_a_usage_error() {
        for rate in ["--rate=-1", "--rate=NaN", "--rate=inf"] {
            let f = config(&["simulate", rate]).unwrap_err();
            assert_eq!(f.code, crate::ExitCode::Usage, "{rate}");
        }
        let Task::Simulate { settings, .. } = config(&["simulate", "--rate", "0"]).unwrap().task
        else {
            panic!()
        };
        assert_eq!(settings.rate, Some(0.0));
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

    #[test]
    fn remediate_settles_its_policy_with_the_documented_defaults() {
        let c = config(&["remediate", "--exec", "systemctl", "restart", "agent@{id}"]).unwrap();
        assert_eq!(c.timeout, Duration::from_secs(10));
        let Task::Remediate { settings, format } = c.task else {
            panic!()
        };
        assert_eq!(format, Format::Table);
        assert_eq!(
            settings.program,
            Program::Exec(vec![
                "systemctl".into(),
                "restart".into(),
                "agent@{id}".into()
            ])
        );
        assert_eq!(settings.policy, Policy::default());
        assert_eq!(settings.timeout, Duration::from_secs(300));
        // The lease covers the run and the cooldown.
        assert_eq!(settings.lease, Duration::from_secs(300 + 600));
        assert!(
            settings
                .holder
                .ends_with(&format!(":{}", std::process::id()))
        );
        assert!(!settings.dry_run);

        // --timeout is the program's; the server calls wait the default.
        let c = config(&[
            "remediate",
            "--timeout",
            "1m",
            "--settle",
            "1s",
            "--why",
            "stuck-at-shutdown",
            "--label",
            "site=eu",
            "--concurrency",
            "2",
            "--rate",
            "3/10s",
            "--cooldown",
            "2s",
            "--max-restarts",
            "5",
            "--per",
            "30m",
            "--holder",
            "ops-1",
            "--storm-min",
            "4",
            "--outside-why",
            "not-reporting",
            "--outside-why",
            "no-data-received",
            "--allow-mass-restart",
            "--once",
            "--dry-run",
            "-o",
            "json",
            "--shell",
            "echo {id}",
        ])
        .unwrap();
        assert_eq!(c.timeout, Duration::from_secs(10));
        let Task::Remediate { settings, format } = c.task else {
            panic!()
        };
        assert_eq!(format, Format::Ndjson);
        assert_eq!(settings.timeout, Duration::from_secs(60));
        assert_eq!(settings.lease, Duration::from_secs(62));
        assert_eq!(settings.program, Program::Shell("echo {id}".into()));
        assert_eq!(settings.holder, "ops-1");
        assert!(settings.dry_run);
        let p = &settings.policy;
        assert_eq!(p.settle, Duration::from_secs(1));
        assert_eq!(p.whys, [Why::StuckAtShutdown]);
        assert_eq!(p.labels["site"], "eu");
        assert_eq!((p.concurrency, p.max_restarts), (2, 5));
        assert_eq!(p.rate.to_string(), "3/10s");
        assert_eq!(p.restart_window, Duration::from_secs(1800));
        assert_eq!(p.storm_min, 4);
        assert_eq!(p.outside_whys, [Why::NotReporting, Why::NoDataReceived]);
        assert!(p.allow_mass_restart && p.once);

        // The program's own flags are its own.
        let Task::Remediate { settings, .. } = config(&[
            "remediate",
            "--once",
            "--exec",
            "ssh",
            "-o",
            "BatchMode=yes",
            "{id}",
            "--once",
        ])
        .unwrap()
        .task
        else {
            panic!()
        };
        assert_eq!(
            settings.program,
            Program::Exec(vec![
                "ssh".into(),
                "-o".into(),
                "BatchMode=yes".into(),
                "{id}".into(),
                "--once".into()
            ])
        );

        let Task::ClearGivenUp { agent, format } =
            config(&["remediate", "clear", "web-1"]).unwrap().task
        else {
            panic!()
        };
        assert_eq!((agent.as_str(), format), ("web-1", Format::Table));
    }

    #[test]
    fn remediate_refuses_what_it_cannot_run() {
        for (args, needle) in [
            (&["remediate"][..], "--exec PROGRAM"),
            (&["remediate", "--shell", " "], "--exec PROGRAM"),
            (&["remediate", "--lease", "2d", "--exec", "x"], "1s to 1d"),
            (
                &["remediate", "--timeout", "0s", "--exec", "x"],
                "above zero",
            ),
            (
                &["remediate", "-o", "ids", "--exec", "x"],
                "has no ids output",
            ),
        ] {
            let f = config(args).unwrap_err();
            assert_eq!(f.code, crate::ExitCode::Usage, "{args:?}");
            assert!(
                f.error.to_string().contains(needle),
                "{args:?}: {:#}",
                f.error
            );
        }
        for args in [
            &["remediate", "--rate", "10", "--exec", "x"][..],
            &["remediate", "--concurrency", "0", "--exec", "x"],
            &["remediate", "--shell", "y", "--exec", "x"],
        ] {
            assert!(parse(args).is_err(), "{args:?}");
        }
    }

    /// A contexts file with a current context `prod` (every setting, a
    /// token in a file) and a context `lab` with only a server.
    fn contexts(token_file: &std::path::Path) -> ContextsFile {
        let mut file = ContextsFile {
            current_context: Some("prod".into()),
            ..ContextsFile::default()
        };
        file.contexts.insert(
            "prod".into(),
            Context {
                server: Some("https://prod:50051".into()),
                ca: Some("/prod/ca.pem".into()),
                cert: Some("/prod/me.pem".into()),
                key: Some("/prod/me.key".into()),
                token_file: Some(token_file.to_path_buf()),
            },
        );
        file.contexts.insert(
            "lab".into(),
            Context {
                server: Some("https://lab:50051".into()),
                ..Context::default()
            },
        );
        file
    }

    #[test]
    fn flags_win_over_the_context_which_wins_over_the_defaults() {
        let dir = tempfile::tempdir().expect("dir");
        let in_context = dir.path().join("context.token");
        std::fs::write(&in_context, "fht_context\n").expect("writes");
        let given = dir.path().join("given.token");
        std::fs::write(&given, "  fht_given  ").expect("writes");
        let file = contexts(&in_context);
        let connect = |args: &[&str], file: &ContextsFile| {
            parse(args)
                .expect("parses")
                .connection_from(file)
                .map_err(|f| format!("{:#}", f.error))
        };

        // Everything from the current context.
        let (server, c, name) = connect(&["summary"], &file).expect("ok");
        assert_eq!(server, "https://prod:50051");
        assert_eq!(name.as_deref(), Some("prod"));
        assert_eq!(c.ca.as_deref(), Some(std::path::Path::new("/prod/ca.pem")));
        assert_eq!(
            c.cert.as_deref(),
            Some(std::path::Path::new("/prod/me.pem"))
        );
        assert_eq!(c.key.as_deref(), Some(std::path::Path::new("/prod/me.key")));
        assert_eq!(c.token.as_deref(), Some("fht_context"));

        // Each flag replaces its own setting only.
        let (server, c, _) = connect(
            &[
                "--server",
                "https://flag:1",
                "--ca",
                "/flag/ca.pem",
                "summary",
            ],
            &file,
        )
        .expect("ok");
        assert_eq!(server, "https://flag:1");
        assert_eq!(c.ca.as_deref(), Some(std::path::Path::new("/flag/ca.pem")));
        assert_eq!(
            c.cert.as_deref(),
            Some(std::path::Path::new("/prod/me.pem"))
        );
        assert_eq!(c.token.as_deref(), Some("fht_context"));

        // A token, or a token file, given replaces the context's token file.
        let (_, c, _) = connect(&["--token", "fht_flag", "summary"], &file).expect("ok");
        assert_eq!(c.token.as_deref(), Some("fht_flag"));
        let given_arg = given.display().to_string();
        let (_, c, _) = connect(&["--token-file", &given_arg, "summary"], &file).expect("ok");
        assert_eq!(c.token.as_deref(), Some("fht_given"));

        // --context picks another context: nothing of the current one leaks.
        let (server, c, name) = connect(&["--context", "lab", "summary"], &file).expect("ok");
        assert_eq!(server, "https://lab:50051");
        assert_eq!(name.as_deref(), Some("lab"));
        assert_eq!(c, Credentials::default());

        // No contexts: the default server, no credentials.
        let (server, c, name) = connect(&["summary"], &ContextsFile::default()).expect("ok");
        assert_eq!(server, DEFAULT_SERVER);
        assert_eq!(name, None);
        assert_eq!(c, Credentials::default());

        // An unknown context, an empty token file: usage errors that say so.
        let err = connect(&["--context", "nope", "summary"], &file).unwrap_err();
        assert!(err.contains("no context named \"nope\""), "{err}");
        let empty = dir.path().join("empty.token");
        std::fs::write(&empty, "\n").expect("writes");
        let empty_arg = empty.display().to_string();
        let err = connect(&["--token-file", &empty_arg, "summary"], &file).unwrap_err();
        assert!(err.contains("is empty"), "{err}");
    }

    fn context_set(args: &[&str]) -> Result<(String, Context, bool), String> {
        let cli = parse(args).map_err(|e| e.to_string())?;
        let typed = cli.typed_context();
        let Command::Context(cmd) = cli.command else {
            panic!("not a context command")
        };
        match cmd.task(typed).map_err(|f| format!("{:#}", f.error))? {
            ContextTask::Set {
                name,
                context,
                make_current,
            } => Ok((name, context, make_current)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn context_set_saves_its_own_flags_and_the_typed_global_ones() {
        let (name, c, current) = context_set(&[
            "context",
            "set",
            "lab",
            "--server",
            "https://lab:1",
            "--ca",
            "/pki/ca.pem",
            "--key-file",
            "/pki/me.key",
        ])
        .expect("ok");
        assert_eq!(name, "lab");
        assert!(!current);
        assert_eq!(
            c,
            Context {
                server: Some("https://lab:1".into()),
                ca: Some("/pki/ca.pem".into()),
                key: Some("/pki/me.key".into()),
                ..Context::default()
            }
        );
        // Global flags before the subcommand count too; its own flag wins.
        let (_, c, current) = context_set(&[
            "--cert",
            "/pki/global.pem",
            "context",
            "set",
            "lab",
            "--cert-file",
            "/pki/own.pem",
            "--use",
        ])
        .expect("ok");
        assert!(current);
        assert_eq!(
            c.cert.as_deref(),
            Some(std::path::Path::new("/pki/own.pem"))
        );
        // Relative paths are saved absolute.
        let (_, c, _) =
            context_set(&["context", "set", "lab", "--token-file", "lab.token"]).expect("ok");
        let saved = c.token_file.expect("a token file");
        assert!(
            saved.is_absolute() && saved.ends_with("lab.token"),
            "{saved:?}"
        );
        // A token itself is never saved; a context set with nothing to set
        // is a mistake, not an empty context.
        let err = context_set(&["context", "set", "lab", "--token", "fht_x"]).unwrap_err();
        assert!(err.contains("--token-file"), "{err}");
        let err = context_set(&["context", "set", "lab"]).unwrap_err();
        assert!(err.contains("nothing to set"), "{err}");
    }
}
