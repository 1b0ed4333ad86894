//! The settled configuration of one run: everything the flags asked for,
//! checked, in plain types. Commands see this, never the flags.

use std::time::Duration;

use std::path::PathBuf;

use fleet_health_client::{
    AgentId, AgentQuery, Credentials, EventKind, Labels, ReconnectPolicy, Targets, Time,
};

use crate::contexts::Context;
use crate::pki::PkiTask;
use crate::tokens::TokenTask;

use crate::render::{Format, Style};
use crate::simulate::Settings;

/// One run of `fleet-health`.
#[derive(Clone, Debug)]
pub struct Config {
    /// The server's address.
    pub server: String,
    /// TLS and token.
    pub credentials: Credentials,
    /// The context they came from, if any.
    pub context: Option<String>,
    /// How long to wait for the server: to connect and for each answer.
    pub timeout: Duration,
    /// Colours or not.
    pub style: Style,
    /// What to do.
    pub task: Task,
}

/// What to do, with the output format already checked against what the
/// command offers.
#[derive(Clone, Debug, PartialEq)]
pub enum Task {
    /// List the agents matching a query; exit 5 on a storm when the query
    /// asks for the faulty ones.
    List {
        /// Which agents, and when.
        query: AgentQuery,
        /// How to print them.
        format: Format,
        /// In which order.
        sort: SortBy,
    },
    /// Show one agent.
    Status {
        /// The agent.
        agent: AgentId,
        /// Evaluate at this time instead of now.
        at: Option<Time>,
        /// How to print it.
        format: Format,
    },
    /// Watch the agents matching a query until interrupted.
    Watch {
        /// Which agents (`at` unset).
        query: AgentQuery,
        /// How to print each message.
        format: Format,
        /// How to reconnect when the server goes away, and for how long.
        reconnect: ReconnectPolicy,
    },
    /// The fleet in numbers; exit 5 on a storm.
    Summary {
        /// Evaluate at this time instead of now.
        at: Option<Time>,
        /// How to print it.
        format: Format,
    },
    /// One agent's recent transitions.
    History {
        /// The agent.
        agent: AgentId,
        /// How to print them.
        format: Format,
    },
    /// Remove an agent from the server.
    Forget {
        /// The agent.
        agent: AgentId,
        /// How to print what it was.
        format: Format,
    },
    /// Report one event and wait for its acknowledgement.
    Report(ReportTask),
    /// Run a simulated fleet.
    Simulate {
        /// What to simulate.
        settings: Settings,
        /// How to print the outcome.
        format: Format,
    },
    /// Act on faulty agents (`remediate`).
    Remediate {
        /// The program and the policy.
        settings: Box<crate::remediate::Settings>,
        /// Lines for people, or NDJSON.
        format: Format,
    },
    /// Clear a remediator's "given up" from an agent (`remediate clear`).
    ClearGivenUp {
        /// The agent.
        agent: AgentId,
        /// How to print the answer.
        format: Format,
    },
    /// Make or use certificates (no server needed).
    Pki(PkiTask),
    /// Make, list or remove tokens (no server needed).
    Token(TokenTask),
    /// The cluster the server is a node of.
    ClusterStatus {
        /// How to print it.
        format: Format,
    },
    /// The client's and the server's versions.
    Version {
        /// How to print them.
        format: Format,
    },
    /// Print these bytes (a completion script, a man page).
    Print(Vec<u8>),
    /// Write these files into `dir` (the man pages).
    WriteFiles {
        /// Where.
        dir: PathBuf,
        /// (name, contents).
        files: Vec<(String, Vec<u8>)>,
    },
    /// Mark agents as under maintenance, list them, or end marks.
    Maintenance {
        /// What to do.
        task: MaintenanceTask,
        /// How to print the outcome.
        format: Format,
    },
    /// Manage the contexts in the file at `path`.
    Context {
        /// What to do.
        task: ContextTask,
        /// The contexts file.
        path: PathBuf,
    },
}

/// The order of a list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortBy {
    /// By agent ID (as the server pages them).
    #[default]
    Id,
    /// Faulty first, then healthy, then inactive; by ID within each.
    State,
    /// By why (its text), then ID.
    Why,
    /// Longest in its state first.
    Since,
    /// Silent longest first.
    LastHeard,
}

/// What `maintenance` was asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MaintenanceTask {
    /// Mark agents for a while, with a reason.
    Set {
        /// Which agents.
        targets: Targets,
        /// Why.
        reason: String,
        /// For how long.
        duration: Duration,
    },
    /// List the agents under maintenance (those with these labels).
    List {
        /// Only agents that carry all these labels.
        labels: Labels,
    },
    /// End marks early.
    Clear {
        /// Which agents.
        targets: Targets,
    },
}

/// What `context` was asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContextTask {
    /// List them.
    List,
    /// Make one current.
    Use {
        /// Its name.
        name: String,
    },
    /// Add or change one.
    Set {
        /// Its name.
        name: String,
        /// The settings given (the others stay).
        context: Context,
        /// Make it current too.
        make_current: bool,
    },
    /// Show what a command would use.
    Show,
}

/// `report`'s settled arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportTask {
    /// The agent.
    pub agent: AgentId,
    /// The event.
    pub event: EventKind,
    /// When it happened; `None`: when the server receives it.
    pub at: Option<Time>,
    /// Labels to set on the agent; empty: keep its earlier ones.
    pub labels: Labels,
    /// Table (silent) or JSON.
    pub format: Format,
}
