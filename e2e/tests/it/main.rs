//! The end-to-end tests, one binary: each module runs the real
//! `fleet-health-server` and `fleet-health` binaries through the harness in
//! the crate's library (`fleet_health_e2e`).

mod backup;
mod cli;
mod cluster;
mod crash;
mod habits;
mod maintenance;
mod ops;
mod remediate;
mod reporter;
mod simulate;
mod tls;
mod watch;
mod web;
