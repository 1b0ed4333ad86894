//! The store of a cluster node: agent records in PostgreSQL, each write
//! fenced by the epochs of the shards the node holds ([`Db::commit`]).
//!
//! It is the committer's [`AgentStore`]: group commits, acknowledgements
//! after the commit. A write refused because shards were lost comes back
//! as [`StoreError::Lost`]; the committer then lets those shards go (ending
//! their agents' streams before anything more is acknowledged) and writes
//! the rest.

use std::sync::Arc;

use tokio::runtime::Handle;

use super::db::{CommitError, Db};
use super::membership::Ownership;
use super::shard::shard_of;
use crate::store::{AgentStore, StoreError};

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

    fn commit(
        &self,
        upserts: &[(Arc<str>, Vec<u8>)],
        deletes: &[Arc<str>],
    ) -> Result<(), StoreError> {
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
            if db.is_closed() {
                *db = Db::connect(&self.url)
                    .await
                    .map_err(|e| StoreError::Db(e.to_string()))?;
            }
            let held = self.ownership.held();
            db.commit(&self.node, &held, &ups, &dels)
                .await
                .map_err(|e| match e {
                    CommitError::Lost(shards) => StoreError::Lost(shards),
                    CommitError::Db(e) => StoreError::Db(e.to_string()),
                })
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
