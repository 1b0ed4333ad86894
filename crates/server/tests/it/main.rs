//! The server's integration tests, one binary: a real server on an
//! ephemeral port (started through the library's `run`, on a manual clock)
//! and the generated tonic clients. `common` holds the harness.

mod agents;
mod cluster;
mod common;
mod durable;
mod fleet;
mod monitoring;
mod ops;
mod protocol;
mod security;
mod tls;
mod watch;
