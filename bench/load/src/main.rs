//! `fleet-health-load`: parses flags, runs the load on a runtime of the
//! size asked for, and prints the report as JSON on stdout.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use fleet_health_load::{HandshakeConfig, LoadConfig, RegisterConfig, handshakes, register, run};

/// Load for fleet-health's AgentService (the server, or the floor): S Report
/// streams over C connections, K messages in flight each, N events per
/// message. Prints throughput and ack latency as JSON.
#[derive(Debug, Parser)]
#[command(name = "fleet-health-load", version, about, max_term_width = 100)]
struct Args {
    /// The server's URL.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    server: String,

    /// Report streams (one per simulated agent).
    #[arg(long, short = 's', default_value_t = 16)]
    streams: u32,

    /// HTTP/2 connections the streams share [default: one per 100 streams].
    #[arg(long, short = 'c')]
    connections: Option<u32>,

    /// Messages each stream keeps in flight (sent, not yet acknowledged).
    #[arg(long, short = 'k', default_value_t = 16)]
    in_flight: u32,

    /// Events per message.
    #[arg(long, short = 'n', default_value_t = 1)]
    events_per_message: u32,

    /// The measured window (after the warm-up).
    #[arg(long, short = 'd', default_value = "10s", value_parser = duration)]
    duration: Duration,

    /// Load before the measured window, not counted.
    #[arg(long, default_value = "1s", value_parser = duration)]
    warmup: Duration,

    /// Stop once this many messages (over all streams, warm-up included) are
    /// sent and acknowledged, if that comes before the end of the window.
    #[arg(long)]
    messages: Option<u64>,

    /// How long connecting and every stream's Hello may take.
    #[arg(long, default_value = "10s", value_parser = duration)]
    setup_timeout: Duration,

    /// At the end, how long a stream waits for its outstanding acks (and then
    /// for the server to close it).
    #[arg(long, default_value = "5s", value_parser = duration)]
    drain_timeout: Duration,

    /// Leave event times unset (the server takes its receive time) instead
    /// of stamping each message with the time it is sent.
    #[arg(long)]
    no_event_times: bool,

    /// Agent IDs are PREFIX-0, PREFIX-1, ...
    #[arg(long, default_value = "load")]
    agent_prefix: String,

    /// Instead of a timed load: make this many distinct agents known, each
    /// with one short stream (Hello, a `starting` event, its Ack, close),
    /// --streams of them at a time over --connections; prints the
    /// registration rate. --in-flight, --events-per-message, --duration,
    /// --warmup, --messages and --drain-timeout do not apply;
    /// --setup-timeout bounds connecting and each agent's stream.
    #[arg(long, value_name = "AGENTS")]
    register: Option<u64>,

    /// Instead of a timed load: set up this many connections (TCP, TLS with
    /// the client certificate, HTTP/2), --streams at a time, and close each;
    /// prints the rate.
    #[arg(long, value_name = "CONNECTIONS")]
    handshakes: Option<u64>,
    /// Trust bundle (PEM) for an https:// server's certificate.
    #[arg(long, value_name = "FILE")]
    ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM); an admin's, to report for every PREFIX-N.
    #[arg(long, value_name = "FILE")]
    cert: Option<std::path::PathBuf>,
    /// Its key (PEM).
    #[arg(long, value_name = "FILE")]
    key: Option<std::path::PathBuf>,
    /// Worker threads of the generator's runtime.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: u16,
}

/// Runs a registration and prints its report.
fn registration(runtime: &tokio::runtime::Runtime, config: RegisterConfig) -> ExitCode {
    let report = match runtime.block_on(register(config)) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("fleet-health-load: {e}");
            return ExitCode::FAILURE;
        }
    };
    match serde_json::to_string_pretty(&report) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fleet-health-load: cannot write the report: {e}");
            ExitCode::FAILURE
        }
    }
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (say e.g. 500ms, 10s, 1m)"))
}

impl Args {
    fn credentials(&self) -> fleet_health_client::Credentials {
        fleet_health_client::Credentials {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            token: None,
        }
    }

    fn config(&self) -> LoadConfig {
        LoadConfig {
            server: self.server.clone(),
            streams: self.streams,
            connections: self
                .connections
                .unwrap_or_else(|| self.streams.div_ceil(100).max(1)),
            in_flight: self.in_flight,
            events_per_message: self.events_per_message,
            duration: self.duration,
            warmup: self.warmup,
            messages: self.messages,
            setup_timeout: self.setup_timeout,
            drain_timeout: self.drain_timeout,
            event_times: !self.no_event_times,
            agent_prefix: self.agent_prefix.clone(),
            credentials: self.credentials(),
        }
    }

    fn register_config(&self, agents: u64) -> RegisterConfig {
        RegisterConfig {
            server: self.server.clone(),
            agents,
            concurrency: self.streams,
            connections: self
                .connections
                .unwrap_or_else(|| self.streams.div_ceil(100).max(1)),
            agent_prefix: self.agent_prefix.clone(),
            timeout: self.setup_timeout,
            credentials: self.credentials(),
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(args.threads))
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fleet-health-load: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(agents) = args.register {
        return registration(&runtime, args.register_config(agents));
    }
    if let Some(count) = args.handshakes {
        let config = HandshakeConfig {
            server: args.server.clone(),
            credentials: args.credentials(),
            count,
            concurrency: args.streams,
            timeout: args.setup_timeout,
        };
        return match runtime.block_on(handshakes(config)) {
            Ok(report) => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
                if report.failed > 0 {
                    eprintln!(
                        "fleet-health-load: {} connections failed; the first: {}",
                        report.failed,
                        report.first_error.unwrap_or_default()
                    );
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                }
            }
            Err(e) => {
                eprintln!("fleet-health-load: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let report = match runtime.block_on(run(args.config())) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("fleet-health-load: {e}");
            return ExitCode::FAILURE;
        }
    };
    match serde_json::to_string_pretty(&report) {
        Ok(json) => println!("{json}"),
        Err(e) => {
            eprintln!("fleet-health-load: cannot write the report: {e}");
            return ExitCode::FAILURE;
        }
    }
    if let Some(error) = &report.first_error {
        eprintln!(
            "fleet-health-load: {} of {} streams failed; the first: {error}",
            report.streams_failed, report.streams
        );
        return ExitCode::FAILURE;
    }
    if report.messages_acked == 0 {
        eprintln!("fleet-health-load: no message was acknowledged in the measured window");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Args::command().debug_assert();
    }

    #[test]
    fn connections_default_to_one_per_hundred_streams() {
        let args = Args::try_parse_from(["fleet-health-load", "-s", "256"]).unwrap();
        assert_eq!(args.config().connections, 3);
        let args = Args::try_parse_from(["fleet-health-load", "-s", "256", "-c", "16"]).unwrap();
        assert_eq!(args.config().connections, 16);
    }
}
