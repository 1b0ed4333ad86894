//! `fleet-health`, the command line of fleet-health: see the fleet, report an
//! agent's events from a script, simulate a fleet.
//!
//! It follows one flow: the flags are parsed ([`args`], the only module that
//! sees clap), settled into a [`Config`] ([`config`]) with every check done,
//! carried out ([`commands`]) on the client crate, and printed ([`render`]).
//!
//! - [`args`]: the flags and subcommands (clap derive), and the one function
//!   that turns them into a [`Config`].
//! - [`config`]: the settled configuration of one run: the server, the
//!   timeout, the colours and the task with its output format.
//! - [`commands`]: what each task does, given its config and a client.
//! - [`render`]: every output format: tables, lines, JSON and NDJSON shapes,
//!   IDs, times and durations.
//! - [`remediate`]: `fleet-health remediate`: the decisions (a pure engine),
//!   the program runner, and the loop that claims, runs and records.
//! - [`simulate`]: the simulated fleet and load generator, on a plain
//!   settings struct.
//! - [`timearg`]: TIME and DURATION arguments.
//! - [`error`]: a failure and its exit code; [`exit_codes`]: the codes.
//!
//! The modules depend on each other in one direction only (no circle):
//!
//! ```text
//! main      -> args, commands, config, error
//! args      -> config, remediate, render, simulate, timearg, error
//! commands  -> config, remediate, render, simulate, error
//! config    -> remediate, render, simulate
//! render    -> remediate, simulate (to print their decisions, report, notes)
//! remediate -> error
//! simulate  -> error
//! error     -> exit_codes
//! ```
//!
//! The binary (`src/main.rs`) parses the flags, settles them with
//! [`Cli::into_config`], picks a runtime and calls [`run`].

pub mod args;
pub mod commands;
pub mod config;
pub mod contexts;
pub mod error;
pub mod exit_codes;
pub mod pki;
pub mod remediate;
pub mod render;
pub mod simulate;
pub mod timearg;
pub mod tokens;

pub use args::Cli;
pub use commands::run;
pub use config::Config;
pub use error::Failure;
pub use exit_codes::ExitCode;
