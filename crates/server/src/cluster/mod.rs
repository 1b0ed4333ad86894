//! Many servers over one PostgreSQL database: the agents are split into
//! shards, each owned by one node at a time, fenced by an epoch in the
//! database (see `docs/cluster.md`).
//!
//! - [`shard`]: an agent's shard; which node should own a shard
//!   (rendezvous hashing over the live nodes).
//! - [`db`]: the tables, leases, and the fenced write of agent records.
//! - [`membership`]: a node's loop: say it is alive, renew its leases, take
//!   the shards it should own, hand over those it should not, and stop
//!   serving a shard on its own clock before its lease can expire.
//! - [`store`]: the committer's store on a node: fenced writes of records.
//! - [`node`]: what a node does when it takes, hands over or loses shards:
//!   loads their agents, or ends their streams, writes what is left and lets
//!   them go.

pub mod db;
pub mod import;
pub mod membership;
pub mod node;
pub mod shard;
pub mod store;
