//! The store of a cluster node: agent records in PostgreSQL, each write
//! fenced by the epochs of the shards the node holds ([`Db::commit`]).
//!
//! It is the committer's [`AgentStore`]: group commits, acknowledgements
//! after the commit. A write refused because shards were lost comes back
//! as [`StoreError::Lost`]; the committer then lets those shards go (ending
//! their agents' streams before anything more is acknowledged) and writes
//! the rest. A write whose connection broke (the primary died) tries again
//! every 100 ms on a new connection, which finds the new primary as soon as
//! it takes writes; once the batch's leases have run out on the node's
//! clock meanwhile, it is refused as lost without the database.

use crate::model::ArcStr;
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;

use super::db::{CommitError, Db};
use super::membership::Ownership;
use super::shard::shard_of;
use crate::store::{AgentStore, StoreError};

/// How often a write whose connection broke tries the database again.
const RECONNECT_EVERY: Duration = Duration::from_millis(100);

/// How long a write waits for the database to come back before it fails
/// (and the committer backs off): the batch's leases run out well before
/// with any sane lease, and the write is then refused without the
/// database.
const WAIT_FOR_DATABASE: Duration = Duration::from_secs(30);

/// Agent records in the cluster's database.
pub struct ClusterStore {
    db: tokio::sync::Mutex<Db>,
    url: String,
    node: String,
    shards: u32,
    ownership: Arc<Ownership>,
    runtime: Handle,
}

impl std::fmt::Debug for ClusterStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterStore")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// `url` without a password, for logs.
pub fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((user, host)) => {
                let user = user.split(':').next().unwrap_or("");
                format!("{scheme}://{user}@{host}")
            }
            None => url.to_owned(),
        },
        None => "the cluster database".to_owned(),
    }
}

impl ClusterStore {
    /// A store writing for `node` through `db`, fenced by what `ownership`
    /// holds; `runtime` runs its statements (the committer calls from a
    /// blocking thread).
    pub fn new(
        db: Db,
        url: String,
        node: String,
        shards: u32,
        ownership: Arc<Ownership>,
        runtime: Handle,
    ) -> ClusterStore {
        ClusterStore {
            db: tokio::sync::Mutex::new(db),
            url,
            node,
            shards,
            ownership,
            runtime,
        }
    }
}

impl AgentStore for ClusterStore {
    fn location(&self) -> String {
        redact(&self.url)
    }

    /// Nothing at start: a node loads the agents of each shard when it
    /// takes the shard.
    fn load(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(Vec::new())
    }

    fn commit(&self, upserts: &[(ArcStr, Vec<u8>)], deletes: &[ArcStr]) -> Result<(), StoreError> {
        let ups: Vec<(u32, &str, &[u8])> = upserts
            .iter()
            .map(|(k, v)| (shard_of(k, self.shards), &**k, v.as_slice()))
            .collect();
        let dels: Vec<(u32, &str)> = deletes
            .iter()
            .map(|k| (shard_of(k, self.shards), &**k))
            .collect();
        self.runtime.block_on(async {
            let mut db = self.db.lock().await;
            let started = std::time::Instant::now();
            loop {
                if db.is_closed()
                    && let Ok(fresh) = Db::connect(&self.url).await
                {
                    *db = fresh;
                }
                // Fenced by what is served now: once the batch's shards are
                // no longer this node's (their leases ran out on its clock
                // while the database was away), the write is refused
                // without a statement.
                let held = self.ownership.held();
                match db.commit(&self.node, &held, &ups, &dels).await {
                    Ok(()) => return Ok(()),
                    Err(CommitError::Lost(shards)) => return Err(StoreError::Lost(shards)),
                    // The connection broke (the primary died, a failover is
                    // under way): try again soon rather than after the
                    // committer's backoff, which grows to seconds, so that
                    // the write goes through as soon as the new primary
                    // takes it, and a hand-over waiting for it is not held
                    // up.
                    Err(CommitError::Db(e)) => {
                        if !db.is_closed() || started.elapsed() >= WAIT_FOR_DATABASE {
                            return Err(StoreError::Db(e.to_string()));
                        }
                        tokio::time::sleep(RECONNECT_EVERY).await;
                    }
                }
            }
        })
    }

    /// Backups of a cluster are PostgreSQL's (pg_dump, base backups).
    fn snapshot(&self, _each: &mut dyn FnMut(&str, &[u8]) -> bool) -> Result<(), StoreError> {
        Err(StoreError::Db(
            "a cluster's state is in PostgreSQL: back it up there (pg_dump or base backups)".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(
            redact("postgres://fleet:secret@db:5432/fleet"),
            "postgres://fleet@db:5432/fleet"
        );
        assert_eq!(redact("postgres://db/fleet"), "postgres://db/fleet");
        assert_eq!(redact("host=db password=x"), "the cluster database");
    }
}
