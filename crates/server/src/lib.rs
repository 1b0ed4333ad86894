//! fleet-health-server: the fleet health aggregator.
//!
//! Agents stream their lifecycle events over gRPC; the server keeps one
//! health sensor per agent (the reference's rules, in `fleet-health-sensor`),
//! adds the fleet's rules (not reporting, stopped, inactive, storm guard), and
//! answers operators, orchestrators and monitoring.
//!
//! Layout:
//! - [`model`]: agent IDs, reasons, states, the fleet rules;
//! - [`registry`]: the fleet, time-driven transitions, the change feed;
//! - [`store`]: the durable state, one record per agent;
//! - [`agent_service`] and [`fleet_service`]: the two gRPC services, thin;
//! - [`open_streams`]: one end signal per connected agent (takeover, forget,
//!   shutdown end its stream at once);
//! - [`commit_gate`]: a stream waits for the commit of its own events;
//! - [`convert`]: wire ⇄ domain;
//! - [`metrics`]: Prometheus counters, gauges and the ack histogram;
//! - [`clock`]: where "now" comes from (injected, so tests need not wait);
//! - [`config`]: every setting, in one [`Config`];
//! - [`server`]: the wiring: builds a [`Server`] and [`Server::run`]s it
//!   until a shutdown future resolves;
//! - [`committer`]: group commits of what the registry marks dirty;
//! - [`shutdown`]: the stop signal and the drain deadline;
//! - [`http`]: `/metrics` and `/healthz`;
//! - [`net`]: listeners, accepted connections (`TCP_NODELAY`, cut at the
//!   drain deadline).

pub mod admin_service;
pub mod agent_service;
pub mod backup;
pub mod clock;
pub mod cluster;
pub mod commit_gate;
pub mod committer;
pub mod config;
pub mod convert;
pub mod fleet_service;
pub mod http;
pub mod log_limit;
pub mod metrics;
pub mod model;
pub mod net;
pub mod open_streams;
pub mod probe;
pub mod readiness;
pub mod registry;
pub mod reload;
pub mod security;
pub mod server;
pub mod shutdown;
pub mod store;
pub mod systemd;
pub mod telemetry;
#[cfg(test)]
mod testing;
pub mod tls;
pub mod web;

pub use config::{Config, Shutdown, Storage, Transport};
pub use net::bind;
pub use server::{Listeners, ServeError, Server};

pub(crate) use shutdown::stopped;
