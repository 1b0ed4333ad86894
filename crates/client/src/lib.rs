//! The client side of fleet-health.
//!
//! - [`Reporter`]: what an agent process embeds to report its lifecycle
//!   events. Its methods are named after the reference sensor's (`starting`,
//!   `shutting_down`, `server_data_received`, ...) and never block; it keeps
//!   what the server has not acknowledged (bounded), re-sends it after a
//!   reconnect with backoff and jitter, batches a backlog, heartbeats at the
//!   interval the server asks for, and on [`Reporter::shutdown`] says
//!   `stopped` and closes its stream cleanly.
//! - [`FleetClient`]: a typed client for `FleetService` (get, list across
//!   pages, watch, summary, history, forget). It answers in the plain values
//!   of [`view`] ([`AgentView`], [`Summary`], [`WatchChange`], ...), decoded
//!   once with `TryFrom`; nothing above it sees a protobuf message. A state
//!   or why that a newer server sends and this version does not know reads
//!   as `None`, with the server's text kept (`AgentView::why_text`).
//! - [`ResumingWatch`]: a watch that reconnects with backoff after the
//!   server restarts, and resumes with a fresh snapshot.
//!
//! The words themselves (agent IDs and label rules, [`Why`], [`State`],
//! [`StateFilter`], [`EventKind`]) and their wire conversions come from
//! `fleet-health-types`, the vocabulary server and clients share; they are
//! re-exported here, and the whole crate as [`types`].
//!
//! Layout: `pending.rs` is the pure bookkeeping of sequence numbers, batches
//! and acknowledgements; `backoff.rs` the reconnection delays; `reporter.rs`
//! the task that moves batches over the stream; `fleet.rs` the query client;
//! `view.rs` the values it answers with; `watch.rs` the watches.

mod backoff;
mod connect;
mod fleet;
pub mod ops;
mod pending;
mod reporter;
pub mod view;
mod watch;

use std::time::Duration;

pub use backoff::BackoffConfig;
pub use connect::{
    AuthChannel, BadCredentials, Bearer, ConnectError, Credentials, auth_channel, endpoint_with,
    maybe_refused_certificate, tls_trouble,
};
pub use fleet::{
    AgentQuery, ClientError, ClusterNodeStatus, ClusterStatus, FleetClient, ServerInfo,
};
pub use fleet_health_proto::v1 as proto;
pub use fleet_health_sensor::Time;
pub use fleet_health_types as types;
pub use fleet_health_types::wire::now;
pub use fleet_health_types::{
    AgentId, AgentIdError, EventKind, LabelError, Labels, MaintenanceFilter, State, StateFilter,
    Why,
};
pub use ops::{
    Activity, ActivityKind, Claim, ClaimOutcome, ClaimRefusal, GivenUp, Maintenance,
    MaintenanceSet, Remediation, RemediationResult, Targets,
};
pub use reporter::{AckHook, Acked, Reporter, ReporterConfig, ReporterError, Stats};
use tonic::transport::{Channel, Endpoint};
pub use view::{
    AgentList, AgentPage, AgentView, DecodeError, History, ResyncCause, SensorView, StateAndWhy,
    Storm, Summary, Transition, WatchChange, WhyCount, WhyText,
};
pub use watch::{LostHook, ReconnectPolicy, ResumingWatch, Watch};

/// An agent ID or labels given to the client that break the rules, found
/// before anything is sent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The agent ID is empty, too long, or holds a character outside the set.
    #[error(transparent)]
    AgentId(#[from] AgentIdError),
    /// Too many labels, or a label key or value that breaks the rules.
    #[error(transparent)]
    Labels(#[from] LabelError),
}

/// The server address used when none is given.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";

/// A server address that is not a valid URL.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid server address {url:?}: {reason}")]
pub struct InvalidEndpoint {
    /// The address given.
    pub url: String,
    /// What is wrong with it.
    pub reason: String,
}

/// A server address as a URL: `HOST:PORT` (or `localhost:PORT`) becomes
/// `https://HOST:PORT` when TLS settings are given (`tls`), else
/// `http://HOST:PORT`; a URL with a scheme is kept as it is.
pub fn server_url(address: &str, tls: bool) -> String {
    let address = address.trim();
    if address.contains("://") {
        address.to_owned()
    } else if tls {
        format!("https://{address}")
    } else {
        format!("http://{address}")
    }
}

/// The endpoint settings used for the server: a connect timeout, and HTTP/2
/// keep-alive pings so that a dead connection is noticed even when idle.
/// TLS settings for an `https://` URL come from [`endpoint_with`].
/// A `HOST:PORT` without a scheme is taken as `http://HOST:PORT`.
pub fn endpoint(url: &str, connect_timeout: Duration) -> Result<Endpoint, InvalidEndpoint> {
    let url = &server_url(url, false);
    let invalid = |reason: String| InvalidEndpoint {
        url: url.to_owned(),
        reason,
    };
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(invalid(
            "it must be HOST:PORT, http://HOST:PORT or https://HOST:PORT".into(),
        ));
    }
    let endpoint = Endpoint::from_shared(url.to_owned()).map_err(|e| invalid(e.to_string()))?;
    Ok(endpoint
        .connect_timeout(connect_timeout)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .tcp_nodelay(true))
}

/// A channel to `url` that connects on first use (and reconnects after a
/// failure). Must be called within a Tokio runtime.
pub fn lazy_channel(url: &str, connect_timeout: Duration) -> Result<Channel, InvalidEndpoint> {
    Ok(endpoint(url, connect_timeout)?.connect_lazy())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_errors_say_the_rule() {
        let e = NameError::from(AgentId::parse("a b").unwrap_err());
        assert!(e.to_string().contains("1 to 253 characters"), "{e}");
        let e = NameError::from(fleet_health_types::check_label("a:b", "").unwrap_err());
        assert!(e.to_string().contains("label key"), "{e}");
    }

    #[test]
    fn endpoints_must_be_http_or_https_urls() {
        assert!(endpoint("http://127.0.0.1:50051", Duration::from_secs(1)).is_ok());
        assert!(endpoint("http://fleet.example:8080/", Duration::from_secs(1)).is_ok());
        assert!(endpoint("https://fleet.example:50051", Duration::from_secs(1)).is_ok());
        assert!(endpoint("127.0.0.1:50051", Duration::from_secs(1)).is_ok());
        assert!(endpoint("localhost:50051", Duration::from_secs(1)).is_ok());
        let e = endpoint("ftp://fleet.example:21", Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().contains("https://HOST:PORT"), "{e}");
        assert!(endpoint("http://", Duration::from_secs(1)).is_err());
        assert_eq!(server_url("fh:50051", true), "https://fh:50051");
        assert_eq!(
            server_url("localhost:50051", false),
            "http://localhost:50051"
        );
        assert_eq!(server_url("http://fh:1", true), "http://fh:1");
    }

    #[test]
    fn tls_settings_need_an_https_url_and_readable_files() {
        let t = Duration::from_secs(1);
        let with_ca = Credentials {
            ca: Some("/nonexistent/ca.pem".into()),
            ..Credentials::default()
        };
        let e = endpoint_with("http://127.0.0.1:1", t, &with_ca).unwrap_err();
        assert!(e.to_string().contains("use https://"), "{e}");
        let e = endpoint_with("https://127.0.0.1:1", t, &with_ca).unwrap_err();
        assert!(e.to_string().contains("--ca /nonexistent/ca.pem"), "{e}");
        let half = Credentials {
            cert: Some("/x".into()),
            ..Credentials::default()
        };
        let e = endpoint_with("https://127.0.0.1:1", t, &half).unwrap_err();
        assert!(e.to_string().contains("--cert needs --key"), "{e}");
        assert!(endpoint_with("https://127.0.0.1:1", t, &Credentials::default()).is_ok());
        assert!(Bearer::new("fht_abc").is_ok());
        assert!(Bearer::new("bad\ntoken").is_err());
    }
}
