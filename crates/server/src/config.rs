//! Everything the server can be told, in one settled value: [`Config`].
//!
//! The binary turns its flags into a `Config` in one function; nothing past
//! that sees a flag. The settings that belong to one part of the server are
//! defined beside it and gathered here: the fleet's rules ([`FleetRules`]),
//! the registry's limits ([`Limits`]), the agent streams' limits
//! ([`StreamLimits`]); the transport, the storage and shutdown are defined
//! here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use fleet_health_auth::TrustDomain;

pub use crate::net::ConnLimits;
pub use crate::security::IdentityLimits;
pub use crate::tls::TlsFiles;

pub use crate::agent_service::StreamLimits;
pub use crate::fleet_service::WatchLimits;
pub use crate::model::FleetRules;
pub use crate::registry::Limits;

/// Everything the server can be told.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// The fleet's rules: windows and thresholds.
    pub rules: FleetRules,
    /// How many agents the registry keeps, and how far a watcher may fall behind.
    pub limits: Limits,
    /// How many agent streams, how large their messages, how fast and how idle.
    pub streams: StreamLimits,
    /// How many watches, and how long one may stall.
    pub watch: WatchLimits,
    /// HTTP/2 and message settings.
    pub transport: Transport,
    /// Where the fleet's state is kept.
    pub storage: Storage,
    /// How a stopping server ends what is open.
    pub shutdown: Shutdown,
    /// TLS, credentials, the audit log.
    pub security: SecurityConfig,
}

impl Config {
    /// Refuses settings that cannot work together, saying why and what
    /// would: agents heartbeat every `heartbeat` (they are told so), so a
    /// silence window or an idle timeout that is not at least twice as long
    /// would call a healthy, idle agent silent (or close its stream) between
    /// two heartbeats, and flap; an agent goes `not reporting` before
    /// `inactive`, so the inactive window must be the longer.
    pub fn check(&self) -> Result<(), String> {
        let r = &self.rules;
        let hb = r.heartbeat;
        let show = |d: std::time::Duration| humantime::format_duration(d).to_string();
        if hb.is_zero() {
            return Err("--heartbeat-interval must be more than zero".into());
        }
        if !r.silence.is_zero() && r.silence < hb * 2 {
            return Err(format!(
                "--silence-window {} is too short for --heartbeat-interval {}: idle agents, which say                  nothing but a heartbeat each interval, would turn \"not reporting\" between two                  heartbeats and back (flapping). Give a silence window of at least twice the                  interval ({} or more), or a shorter interval, or 0 to turn the rule off",
                show(r.silence),
                show(hb),
                show(hb * 2)
            ));
        }
        if self.streams.idle_timeout < hb * 2 {
            return Err(format!(
                "--idle-timeout {} is too short for --heartbeat-interval {}: the streams of idle                  agents would be closed between two heartbeats. Give at least twice the interval                  ({} or more)",
                show(self.streams.idle_timeout),
                show(hb),
                show(hb * 2)
            ));
        }
        if !r.silence.is_zero() && r.inactive <= r.silence {
            return Err(format!(
                "--inactive-window {} must be longer than --silence-window {}: a silent agent is                  \"not reporting\" first and inactive later",
                show(r.inactive),
                show(r.silence)
            ));
        }
        Ok(())
    }
}

/// TLS, credentials, the audit log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecurityConfig {
    /// TLS: without it, gRPC is plaintext.
    pub tls: Option<TlsFiles>,
    /// The tokens file.
    pub tokens: Option<PathBuf>,
    /// The only trust domain client certificates may name (`None`: any the
    /// trust bundle signs).
    pub trust_domain: Option<TrustDomain>,
    /// Where the audit log goes; `None`: beside the durable store
    /// (`audit.log` in the data directory), or the server's own log when
    /// in memory.
    pub audit_log: Option<PathBuf>,
    /// Plaintext on a non-loopback address, allowed by `--insecure`: said at
    /// start and in `fleet_health_insecure`.
    pub insecure: bool,
    /// Streams, events per second and watches per identity.
    pub identity_limits: IdentityLimits,
}

impl SecurityConfig {
    /// Whether calls are checked: TLS or a tokens file.
    pub fn enabled(&self) -> bool {
        self.tls.is_some() || self.tokens.is_some()
    }

    /// Whether gRPC may listen on `addr` with these settings: plaintext only
    /// on loopback, unless `allow_insecure`. `Ok(true)` when it is plaintext
    /// on another address (allowed, and to be said loudly).
    pub fn check_listen(&self, addr: SocketAddr, allow_insecure: bool) -> Result<bool, String> {
        if self.tls.is_some() || addr.ip().is_loopback() {
            return Ok(false);
        }
        if allow_insecure {
            return Ok(true);
        }
        Err(format!(
            "refusing to serve plaintext gRPC on {addr}, which is not a loopback address: anyone who can reach it could report for any agent. \
             Give --tls-cert and --tls-key (and --client-ca for client certificates; `fleet-health pki init` makes a set), \
             or listen on 127.0.0.1, or pass --insecure if a network layer you trust does the encryption"
        ))
    }
}

/// HTTP/2 and message settings.
#[derive(Clone, Debug)]
pub struct Transport {
    /// The largest message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// HTTP/2 window of each stream, in bytes.
    pub stream_window: u32,
    /// HTTP/2 window of each connection, in bytes.
    pub connection_window: u32,
    /// How often to ping an idle connection to see that it is alive.
    pub keepalive_interval: Duration,
    /// How long to wait for the ping's answer before closing the connection.
    pub keepalive_timeout: Duration,
    /// Connections held at most, in total and per peer address.
    pub connections: ConnLimits,
    /// How long a new connection has to finish its TLS handshake (or send
    /// the HTTP/2 preface, on plaintext); on the metrics port, how long a
    /// connection may stay idle.
    pub handshake_timeout: Duration,
    /// Connections proving themselves at once, at most; more are closed.
    pub max_handshakes: usize,
}

impl Default for Transport {
    fn default() -> Transport {
        Transport {
            max_message_bytes: 256 * 1024,
            max_concurrent_streams: 1024,
            stream_window: 64 * 1024,
            connection_window: 1024 * 1024,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(20),
            connections: ConnLimits::default(),
            handshake_timeout: Duration::from_secs(10),
            max_handshakes: 1024,
        }
    }
}

impl Transport {
    /// tonic's server builder with these HTTP/2 settings. `TCP_NODELAY` is
    /// not among them: tonic applies it only to listeners it binds itself, so
    /// [`crate::net::Acceptor`] sets it on each accepted socket.
    pub fn server_builder(&self) -> tonic::transport::Server {
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(self.keepalive_interval))
            .http2_keepalive_timeout(Some(self.keepalive_timeout))
            .initial_stream_window_size(self.stream_window)
            .initial_connection_window_size(self.connection_window)
            .max_concurrent_streams(self.max_concurrent_streams)
    }
}

/// Where the fleet's state is kept.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Storage {
    /// In memory only: a restart forgets the whole fleet.
    #[default]
    InMemory,
    /// In the durable store in `dir`: a restart resumes where it stopped, and
    /// events are acknowledged once committed.
    Durable {
        /// The data directory.
        dir: PathBuf,
        /// The most memory the store's page cache may take, in bytes.
        cache_bytes: usize,
    },
    /// In a PostgreSQL database shared by the nodes of a cluster (see
    /// [`crate::cluster`]).
    Cluster(ClusterConfig),
}

/// How a node joins a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The database: `postgres://USER[:PASSWORD]@HOST:PORT/DB`.
    pub url: String,
    /// This node's ID, unique in the cluster and stable across restarts.
    pub node: String,
    /// The address other nodes reach this node's gRPC port on.
    pub address: String,
    /// How long a shard's lease lasts: a dead node's shards move within
    /// about two leases.
    pub lease: Duration,
    /// The shard count, when this node makes the cluster (the cluster's own
    /// count wins afterwards).
    pub shards: u32,
    /// With security on: the secret the cluster's servers show each other
    /// when they pass calls on, and the trust bundle for each other's
    /// server certificates.
    pub peers: Option<crate::cluster::node::PeerSecurity>,
}

impl ClusterConfig {
    /// The default lease.
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);
    /// The default shard count.
    pub const DEFAULT_SHARDS: u32 = 1024;
}

impl Storage {
    /// The store's page cache when nothing else is said (16 MiB).
    pub const DEFAULT_CACHE_BYTES: usize = crate::store::StoreOptions::DEFAULT_CACHE_BYTES;
}

/// How a stopping server ends what is open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shutdown {
    /// How long a stopping server waits for open streams and requests to end
    /// by themselves (agent streams and watches are told to reconnect at
    /// once; what is in flight is answered). Past it, every connection is
    /// cut: a client that has stopped reading cannot hold the server up.
    pub drain_timeout: Duration,
}

impl Default for Shutdown {
    fn default() -> Shutdown {
        Shutdown {
            drain_timeout: Duration::from_secs(10),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_only_on_loopback_unless_insecure() {
        let plain = SecurityConfig::default();
        for ok in ["127.0.0.1:50051", "[::1]:50051"] {
            assert_eq!(
                plain.check_listen(ok.parse().unwrap(), false),
                Ok(false),
                "{ok}"
            );
        }
        let public: SocketAddr = "0.0.0.0:50051".parse().unwrap();
        let err = plain.check_listen(public, false).unwrap_err();
        assert!(
            err.contains("--insecure") && err.contains("--tls-cert"),
            "{err}"
        );
        // Allowed, and to be said loudly.
        assert_eq!(plain.check_listen(public, true), Ok(true));
        let tls = SecurityConfig {
            tls: Some(TlsFiles {
                cert: "c".into(),
                key: "k".into(),
                client_ca: None,
                crls: vec![],
            }),
            ..SecurityConfig::default()
        };
        assert_eq!(tls.check_listen(public, false), Ok(false));
        // Tokens alone do not make plaintext safe off loopback.
        let tokens = SecurityConfig {
            tokens: Some("t".into()),
            ..SecurityConfig::default()
        };
        assert!(tokens.check_listen(public, false).is_err());
    }
}
