//! The `fleet-health` binary: parses the flags, settles them into a config,
//! picks a runtime, runs the command and exits with its documented code.

use std::process;

use clap::error::ErrorKind;
use fleet_health_cli::config::Task;
use fleet_health_cli::{Cli, ExitCode, Failure};

fn main() -> process::ExitCode {
    let cli = match Cli::try_parse_args(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout and succeed; the rest are usage
            // errors.
            let _ = e.print();
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => ExitCode::Success,
                _ => ExitCode::Usage,
            }
            .into();
        }
    };
    let config = match cli.into_config() {
        Ok(config) => config,
        Err(failure) => return fail(&failure),
    };
    // The simulator drives many streams at once; everything else is one
    // request at a time.
    let runtime = if matches!(config.task, Task::Simulate { .. }) {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fleet-health: cannot start the runtime: {e}");
            return ExitCode::Failure.into();
        }
    };
    match runtime.block_on(fleet_health_cli::run(config)) {
        Ok(code) => code.into(),
        Err(failure) if failure.is_broken_pipe() => ExitCode::Success.into(),
        Err(failure) => fail(&failure),
    }
}

/// Says what went wrong, with its causes, and gives the exit code.
fn fail(failure: &Failure) -> process::ExitCode {
    eprintln!("fleet-health: {:#}", failure.error);
    failure.code.into()
}
