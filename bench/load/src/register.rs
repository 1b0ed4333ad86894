//! Registration: make many distinct agents known, quickly. Each agent has one
//! short Report stream: Hello, one `starting` event, its Ack, half-close, the
//! server's end of the stream. A bounded number of agents are in flight at
//! once, spread over a few HTTP/2 connections, so that a million agents need
//! neither a million open streams nor a million connections.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use fleet_health_proto::v1 as pb;
use fleet_health_proto::v1::agent_service_client::AgentServiceClient;
use pb::report_request::Body as In;
use pb::report_response::Body as Out;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::config::{LoadError, MAX_PHASE};
use crate::stream::status_text;

/// The most agents one registration run makes known.
const MAX_AGENTS: u64 = 100_000_000;
/// The most agents in flight at once.
const MAX_CONCURRENCY: u32 = 100_000;

/// What to register.
#[derive(Clone, Debug)]
pub struct RegisterConfig {
    /// The server's URL (`http://127.0.0.1:PORT`).
    pub server: String,
    /// How many distinct agents to make known: `PREFIX-0` to `PREFIX-(N-1)`.
    pub agents: u64,
    /// Agents in flight at once (each one open stream while it registers).
    pub concurrency: u32,
    /// HTTP/2 connections the streams are spread over (round robin).
    pub connections: u32,
    /// Agent IDs are `PREFIX-N`.
    pub agent_prefix: String,
    /// How long connecting may take, and how long one agent's whole stream
    /// (Hello to the server's end of it) may take.
    pub timeout: Duration,
    /// TLS settings for an `https://` server.
    pub credentials: fleet_health_client::Credentials,
}

impl Default for RegisterConfig {
    fn default() -> RegisterConfig {
        RegisterConfig {
            server: "http://127.0.0.1:50051".into(),
            agents: 1000,
            concurrency: 256,
            connections: 4,
            agent_prefix: "load".into(),
            timeout: Duration::from_secs(30),
            credentials: fleet_health_client::Credentials::default(),
        }
    }
}

impl RegisterConfig {
    /// Checks that every setting is in range.
    pub fn validate(&self) -> Result<(), LoadError> {
        let bad = |what: String| Err(LoadError::Config(what));
        if self.agents == 0 || self.agents > MAX_AGENTS {
            return bad(format!("agents to register must be 1 to {MAX_AGENTS}"));
        }
        if self.concurrency == 0 || self.concurrency > MAX_CONCURRENCY {
            return bad(format!("streams must be 1 to {MAX_CONCURRENCY}"));
        }
        if self.connections == 0 || self.connections > self.concurrency {
            return bad("connections must be 1 to the number of streams".into());
        }
        if self.timeout.is_zero() || self.timeout > MAX_PHASE {
            return bad("the set-up timeout must be above 0 and at most 1h".into());
        }
        Ok(())
    }
}

/// What a registration run did.
#[derive(Clone, Debug, Serialize)]
pub struct RegisterReport {
    /// The server's URL.
    pub server: String,
    /// Agents asked for.
    pub agents: u64,
    /// Agents whose `starting` event the server acknowledged and whose stream
    /// then ended cleanly.
    pub registered: u64,
    /// Agents in flight at once, at most.
    pub concurrency: u32,
    /// HTTP/2 connections.
    pub connections: u32,
    /// Wall time of the run, in seconds.
    pub seconds: f64,
    /// `registered / seconds`.
    pub agents_per_second: f64,
}

/// Makes `config.agents` distinct agents known to the server, and reports how
/// fast. The first agent that fails stops the run (the agents in flight
/// finish or fail) and is the error.
pub async fn register(config: RegisterConfig) -> Result<RegisterReport, LoadError> {
    config.validate()?;
    let channels = crate::connect(
        &config.server,
        &config.credentials,
        config.connections,
        config.timeout,
    )
    .await?;

    let started = Instant::now();
    let config = Arc::new(config);
    let progress = Arc::new(Progress {
        next: AtomicU64::new(0),
        registered: AtomicU64::new(0),
        failed: AtomicBool::new(false),
        first_error: Mutex::new(None),
    });
    let mut workers = JoinSet::new();
    for worker in 0..config.concurrency {
        let channel = channels[(worker % config.connections) as usize].clone();
        workers.spawn(work(channel, Arc::clone(&config), Arc::clone(&progress)));
    }
    drop(channels);
    // Each worker ends after at most one agent's timeout once the agents run
    // out or one fails; `work` bounds each agent.
    while let Some(joined) = workers.join_next().await {
        if let Err(e) = joined {
            progress.fail(format!("a registration task failed: {e}"));
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let registered = progress.registered.load(Ordering::Acquire);
    let first_error = progress
        .first_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    if let Some(first_error) = first_error {
        return Err(LoadError::Register {
            registered,
            agents: config.agents,
            first_error,
        });
    }
    Ok(RegisterReport {
        server: config.server.clone(),
        agents: config.agents,
        registered,
        concurrency: config.concurrency,
        connections: config.connections,
        seconds,
        agents_per_second: if seconds > 0.0 {
            registered as f64 / seconds
        } else {
            0.0
        },
    })
}

/// The run's shared state: the next agent to register, how many are done,
/// and the first failure.
struct Progress {
    next: AtomicU64,
    registered: AtomicU64,
    failed: AtomicBool,
    first_error: Mutex<Option<String>>,
}

impl Progress {
    /// The next agent's number, or `None` once all are taken or one failed.
    fn claim(&self, agents: u64) -> Option<u64> {
        if self.failed.load(Ordering::Acquire) {
            return None;
        }
        let index = self.next.fetch_add(1, Ordering::Relaxed);
        (index < agents).then_some(index)
    }

    fn fail(&self, error: String) {
        self.failed.store(true, Ordering::Release);
        let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
        first.get_or_insert(error);
    }
}

/// One worker: registers agents one after another until none are left.
async fn work(channel: Channel, config: Arc<RegisterConfig>, progress: Arc<Progress>) {
    let mut client = AgentServiceClient::new(channel);
    while let Some(index) = progress.claim(config.agents) {
        let agent_id = format!("{}-{index}", config.agent_prefix);
        let outcome = tokio::time::timeout(config.timeout, one(&mut client, &agent_id))
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "its stream did not end within {:?}",
                    config.timeout
                ))
            });
        match outcome {
            Ok(()) => {
                progress.registered.fetch_add(1, Ordering::AcqRel);
            }
            Err(e) => {
                progress.fail(format!("agent {agent_id}: {e}"));
                return;
            }
        }
    }
}

/// One agent's stream: Hello and a `starting` event (sent together), the
/// Welcome, the Ack that covers the event, then a half-close and the end of
/// the stream.
async fn one(client: &mut AgentServiceClient<Channel>, agent_id: &str) -> Result<(), String> {
    let (tx, rx) = mpsc::channel(2);
    let hello = pb::ReportRequest {
        body: Some(In::Hello(pb::Hello {
            agent_id: agent_id.to_owned(),
            incarnation: fastrand::u64(1..),
            labels: Default::default(),
        })),
    };
    let starting = pb::ReportRequest {
        body: Some(In::Events(pb::EventBatch {
            events: vec![pb::Event {
                seq: 1,
                kind: pb::EventKind::Starting.into(),
                time: Some(SystemTime::now().into()),
            }],
        })),
    };
    for msg in [hello, starting] {
        tx.try_send(msg)
            .map_err(|_| "cannot queue a message".to_owned())?;
    }
    let mut inbound = client
        .report(ReceiverStream::new(rx))
        .await
        .map_err(|s| status_text(&s))?
        .into_inner();
    let mut welcomed = false;
    loop {
        match inbound.message().await.map_err(|s| status_text(&s))? {
            Some(pb::ReportResponse {
                body: Some(Out::Welcome(_)),
            }) if !welcomed => welcomed = true,
            Some(pb::ReportResponse {
                body: Some(Out::Ack(ack)),
            }) if welcomed => {
                if ack.applied_through >= 1 {
                    break;
                }
            }
            Some(other) => return Err(format!("unexpected answer {other:?}")),
            None => return Err("the server ended the stream before the Ack".into()),
        }
    }
    drop(tx);
    // Anything after the Ack (a heartbeat request, say) is not ours to
    // answer: the stream is closing.
    while inbound
        .message()
        .await
        .map_err(|s| status_text(&s))?
        .is_some()
    {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_out_of_range_are_refused() {
        assert!(RegisterConfig::default().validate().is_ok());
        let cases: [fn(&mut RegisterConfig); 5] = [
            |c| c.agents = 0,
            |c| c.concurrency = 0,
            |c| c.connections = c.concurrency + 1,
            |c| c.timeout = Duration::ZERO,
            |c| c.timeout = Duration::from_secs(7200),
        ];
        for (i, change) in cases.into_iter().enumerate() {
            let mut config = RegisterConfig::default();
            change(&mut config);
            assert!(
                matches!(config.validate(), Err(LoadError::Config(_))),
                "case {i}: {config:?}"
            );
        }
    }

    #[test]
    fn agents_are_claimed_once_each_and_not_after_a_failure() {
        let progress = Progress {
            next: AtomicU64::new(0),
            registered: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            first_error: Mutex::new(None),
        };
        assert_eq!(progress.claim(2), Some(0));
        assert_eq!(progress.claim(2), Some(1));
        assert_eq!(progress.claim(2), None);
        let progress = Progress {
            next: AtomicU64::new(0),
            ..progress
        };
        progress.fail("first".into());
        progress.fail("second".into());
        assert_eq!(progress.claim(2), None);
        assert_eq!(
            progress.first_error.lock().unwrap().as_deref(),
            Some("first")
        );
    }
}
