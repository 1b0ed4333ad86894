//! What to run: the settings of a load run, their bounds, and why a run
//! could not take place.

use std::time::Duration;

/// What to run.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// The server's URL (`http://127.0.0.1:PORT`).
    pub server: String,
    /// Report streams, one per simulated agent.
    pub streams: u32,
    /// HTTP/2 connections the streams are spread over (round robin).
    pub connections: u32,
    /// Messages each stream may have sent but not yet seen acknowledged.
    pub in_flight: u32,
    /// Events in each message.
    pub events_per_message: u32,
    /// The measured window, after the warm-up.
    pub duration: Duration,
    /// Load before the measured window, not counted.
    pub warmup: Duration,
    /// At most this many messages over all streams (warm-up included); the
    /// run ends early once they are all acknowledged. `None`: no budget.
    pub messages: Option<u64>,
    /// How long connecting and every stream's Hello may take.
    pub setup_timeout: Duration,
    /// How long, at the end, a stream waits for its outstanding acks, and
    /// then for the server to end the stream.
    pub drain_timeout: Duration,
    /// Give every event the time of its message (as an agent does); `false`
    /// leaves times unset (the server's receive time).
    pub event_times: bool,
    /// Agent IDs are `PREFIX-N`.
    pub agent_prefix: String,
    /// TLS settings for an `https://` server (an admin's certificate: it may
    /// report for every `PREFIX-N`).
    pub credentials: fleet_health_client::Credentials,
}

impl Default for LoadConfig {
    fn default() -> LoadConfig {
        LoadConfig {
            server: "http://127.0.0.1:50051".into(),
            streams: 16,
            connections: 1,
            in_flight: 16,
            events_per_message: 1,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            messages: None,
            setup_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(5),
            event_times: true,
            agent_prefix: "load".into(),
            credentials: fleet_health_client::Credentials::default(),
        }
    }
}

/// Upper bounds that keep a run's memory and time in check.
const MAX_STREAMS: u32 = 100_000;
const MAX_IN_FLIGHT: u32 = 4096;
/// The server's default cap on events in one message.
const MAX_EVENTS_PER_MESSAGE: u32 = 4096;
pub(crate) const MAX_PHASE: Duration = Duration::from_secs(3600);

impl LoadConfig {
    /// Checks that every setting is in range.
    pub fn validate(&self) -> Result<(), LoadError> {
        let bad = |what: String| Err(LoadError::Config(what));
        if self.streams == 0 || self.streams > MAX_STREAMS {
            return bad(format!("streams must be 1 to {MAX_STREAMS}"));
        }
        if self.connections == 0 || self.connections > self.streams {
            return bad("connections must be 1 to the number of streams".into());
        }
        if self.in_flight == 0 || self.in_flight > MAX_IN_FLIGHT {
            return bad(format!("in-flight must be 1 to {MAX_IN_FLIGHT}"));
        }
        if self.events_per_message == 0 || self.events_per_message > MAX_EVENTS_PER_MESSAGE {
            return bad(format!(
                "events per message must be 1 to {MAX_EVENTS_PER_MESSAGE}"
            ));
        }
        if self.duration.is_zero() {
            return bad("the duration must be above 0".into());
        }
        for (name, d) in [
            ("duration", self.duration),
            ("warm-up", self.warmup),
            ("set-up timeout", self.setup_timeout),
            ("drain timeout", self.drain_timeout),
        ] {
            if d > MAX_PHASE {
                return bad(format!("the {name} must be at most 1h"));
            }
        }
        if self.setup_timeout.is_zero() || self.drain_timeout.is_zero() {
            return bad("the set-up and drain timeouts must be above 0".into());
        }
        if self.messages == Some(0) {
            return bad("a message budget must be at least 1".into());
        }
        Ok(())
    }
}

/// Why a run could not take place.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A setting is out of range.
    #[error("invalid load settings: {0}")]
    Config(String),
    /// The server address or the TLS settings are not usable.
    #[error(transparent)]
    Endpoint(#[from] fleet_health_client::ConnectError),
    /// A connection could not be made.
    #[error("cannot connect to {server}: {reason}")]
    Connect {
        /// The server's URL.
        server: String,
        /// What went wrong.
        reason: String,
    },
    /// Not every stream was welcomed within the set-up timeout.
    #[error("only {ready} of {streams} streams were welcomed within {timeout:?}: {first_error}")]
    Setup {
        /// Streams welcomed.
        ready: u32,
        /// Streams asked for.
        streams: u32,
        /// The set-up timeout.
        timeout: Duration,
        /// The first failure seen (or the timeout).
        first_error: String,
    },
    /// An agent could not be registered; the run stopped there.
    #[error("{registered} of {agents} agents registered, then: {first_error}")]
    Register {
        /// Agents registered before the run stopped.
        registered: u64,
        /// Agents asked for.
        agents: u64,
        /// The first failure.
        first_error: String,
    },
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_out_of_range_are_refused() {
        assert!(LoadConfig::default().validate().is_ok());
        let cases: [fn(&mut LoadConfig); 7] = [
            |c| c.streams = 0,
            |c| c.connections = c.streams + 1,
            |c| c.in_flight = 0,
            |c| c.events_per_message = MAX_EVENTS_PER_MESSAGE + 1,
            |c| c.duration = Duration::ZERO,
            |c| c.warmup = Duration::from_secs(7200),
            |c| c.messages = Some(0),
        ];
        for (i, change) in cases.into_iter().enumerate() {
            let mut config = LoadConfig::default();
            change(&mut config);
            assert!(
                matches!(config.validate(), Err(LoadError::Config(_))),
                "case {i}: {config:?}"
            );
        }
    }
}
