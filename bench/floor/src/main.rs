//! `fleet-health-floor`: binds, says where it listens (as the server does),
//! and serves the floor until SIGINT or SIGTERM.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use fleet_health_server::Transport;

/// The gRPC floor for benchmarks: fleet-health's AgentService with the
/// server's transport settings that answers a Hello with a Welcome and every
/// event batch with an Ack, and does nothing else.
#[derive(Debug, Parser)]
#[command(name = "fleet-health-floor", version, about, max_term_width = 100)]
struct Args {
    /// Address for gRPC (port 0: any free port; the log line "listening"
    /// says which).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,

    /// The largest message accepted, in bytes (the server's default).
    #[arg(long, default_value_t = Transport::default().max_message_bytes)]
    max_message_bytes: usize,

    /// Answer the event batches that arrived together with one cumulative
    /// Ack, as the server without a store does, instead of one Ack each.
    #[arg(long)]
    fold_acks: bool,

    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Lines for people.
    Human,
    /// One JSON object per line (the server's format, for scripts).
    Json,
}

fn init_logging(format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutting down");
}

async fn run(args: Args) -> anyhow::Result<()> {
    let transport = Transport {
        max_message_bytes: args.max_message_bytes,
        ..Transport::default()
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(grpc = %listener.local_addr()?, "listening");
    let floor = fleet_health_floor::FloorService {
        fold_acks: args.fold_acks,
    };
    fleet_health_floor::serve(listener, &transport, floor, shutdown_signal())
        .await
        .context("gRPC transport")?;
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_format);
    // The server's runtime: one worker per core.
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fleet-health-floor: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Args::command().debug_assert();
    }
}
