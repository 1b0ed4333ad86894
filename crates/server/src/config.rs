//! Everything the server can be told, in one settled value: [`Config`].
//!
//! The binary turns its flags into a `Config` in one function; nothing past
//! that sees a flag. The settings that belong to one part of the server are
//! defined beside it and gathered here: the fleet's rules ([`FleetRules`]),
//! the registry's limits ([`Limits`]), the agent streams' limits
//! ([`StreamLimits`]); the transport, the storage and shutdown are defined
//! here.

use std::path::PathBuf;
use std::time::Duration;

pub use crate::agent_service::StreamLimits;
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
    /// HTTP/2 and message settings.
    pub transport: Transport,
    /// Where the fleet's state is kept.
    pub storage: Storage,
    /// How a stopping server ends what is open.
    pub shutdown: Shutdown,
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
