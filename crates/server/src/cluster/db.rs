//! The cluster's tables in PostgreSQL, and every statement that reads or
//! writes them.
//!
//! - `fh_meta`: the schema version and the shard count, fixed when the
//!   cluster is made.
//! - `fh_nodes`: each node, its address, when it was last seen (by the
//!   database's clock) and whether it is draining.
//! - `fh_shards`: each shard's owner, epoch and lease. Taking a shard raises
//!   its epoch; a lease is judged by the database's clock (`now()`), never by
//!   a node's.
//! - `fh_agents`: each agent's stored record (the embedded store's record,
//!   so that moving a store into a cluster is a copy), by shard.
//!
//! Fencing: every write of agent records runs in a transaction that first
//! reads the rows of its shards where the epoch is still the writer's and
//! the owner still the writer, `FOR SHARE`: that locks them until the
//! commit, so a takeover (an update of the row) waits for the write; and a
//! takeover that came first has raised the epoch, so the read finds fewer
//! rows than the write has shards: the transaction is rolled back and the
//! writer learns which shards it lost. A node that lost a shard can never
//! write for it again.

use std::collections::HashSet;
use std::time::Duration;

use tokio_postgres::{Client, NoTls};

/// The schema this build reads and writes.
pub const SCHEMA_VERSION: i32 = 1;

/// The key of the advisory lock that serialises schema changes.
const MIGRATION_LOCK: i64 = 0x666c_6565_7468_6561; // "fleethea"

/// Why a cluster statement failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database refused or failed the statement, or the connection
    /// broke.
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// The database holds a cluster this build cannot use.
    #[error("{0}")]
    Mismatch(String),
}

/// A shard held: its number and the epoch this node took it at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Held {
    /// The shard.
    pub shard: u32,
    /// The epoch it was taken at.
    pub epoch: i64,
}

/// One shard as the table has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardRow {
    /// The shard.
    pub shard: u32,
    /// Its owner, if any.
    pub owner: Option<String>,
    /// Its epoch.
    pub epoch: i64,
    /// How long its lease has still to run, by the database's clock
    /// (negative: expired); `None` without an owner.
    pub lease_left: Option<Duration>,
    /// Whether the lease has expired.
    pub expired: bool,
}

/// One node as the table has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRow {
    /// Its ID.
    pub node: String,
    /// The address other nodes reach it on.
    pub address: String,
    /// How long ago it was last seen, by the database's clock.
    pub seen_ago: Duration,
    /// Whether it is handing its shards over to stop.
    pub draining: bool,
}

/// A write refused because shards were lost (taken over by another node).
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// These shards now have another epoch or owner: nothing was written.
    #[error("shards {0:?} are no longer this node's")]
    Lost(Vec<u32>),
    /// The database failed: nothing was written.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<tokio_postgres::Error> for CommitError {
    fn from(e: tokio_postgres::Error) -> CommitError {
        CommitError::Db(DbError::Postgres(e))
    }
}

/// One connection to the cluster's database.
pub struct Db {
    client: Client,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").finish_non_exhaustive()
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Db {
    /// Connects to `url` (`postgres://USER@HOST:PORT/DB`, or a libpq
    /// key=value string).
    pub async fn connect(url: &str) -> Result<Db, DbError> {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
        let task = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "cluster database connection ended");
            }
        });
        Ok(Db { client, task })
    }

    /// Whether the connection has broken (a new one is needed).
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Makes the tables if they are missing and the cluster's `shards`
    /// rows on first use; returns the shard count in force, which is the
    /// first cluster's and never changes. Several nodes may run this at
    /// once: an advisory lock takes them one at a time.
    pub async fn migrate(&mut self, shards: u32) -> Result<u32, DbError> {
        let tx = self.client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS fh_meta (
                 key text PRIMARY KEY,
                 value text NOT NULL);
             CREATE TABLE IF NOT EXISTS fh_nodes (
                 node text PRIMARY KEY,
                 address text NOT NULL,
                 started_at timestamptz NOT NULL DEFAULT now(),
                 seen_at timestamptz NOT NULL DEFAULT now(),
                 draining boolean NOT NULL DEFAULT false);
             CREATE TABLE IF NOT EXISTS fh_shards (
                 shard integer PRIMARY KEY,
                 owner text,
                 epoch bigint NOT NULL DEFAULT 0,
                 lease_until timestamptz);
             CREATE TABLE IF NOT EXISTS fh_agents (
                 shard integer NOT NULL,
                 agent_id text NOT NULL,
                 record bytea NOT NULL,
                 PRIMARY KEY (shard, agent_id));",
        )
        .await?;
        let version: Option<String> = tx
            .query_opt(
                "SELECT value FROM fh_meta WHERE key = 'schema_version'",
                &[],
            )
            .await?
            .map(|r| r.get(0));
        match version.as_deref().map(str::parse::<i32>) {
            None => {
                tx.execute(
                    "INSERT INTO fh_meta (key, value) VALUES ('schema_version', $1), ('shards', $2)",
                    &[&SCHEMA_VERSION.to_string(), &shards.to_string()],
                )
                .await?;
                let n = i32::try_from(shards)
                    .map_err(|_| DbError::Mismatch(format!("{shards} shards is too many")))?;
                tx.execute(
                    "INSERT INTO fh_shards (shard) SELECT generate_series(0, $1 - 1) ON CONFLICT DO NOTHING",
                    &[&n],
                )
                .await?;
            }
            Some(Ok(SCHEMA_VERSION)) => {}
            Some(Ok(v)) => {
                return Err(DbError::Mismatch(format!(
                    "the cluster's tables are at schema version {v}; this build uses {SCHEMA_VERSION}"
                )));
            }
            Some(Err(_)) => {
                return Err(DbError::Mismatch(
                    "fh_meta's schema_version is not a number".into(),
                ));
            }
        }
        let in_force: String = tx
            .query_one("SELECT value FROM fh_meta WHERE key = 'shards'", &[])
            .await?
            .get(0);
        tx.commit().await?;
        in_force
            .parse()
            .map_err(|_| DbError::Mismatch("fh_meta's shards is not a number".into()))
    }

    /// Says that `node`, reached at `address`, is alive now (and whether it
    /// is draining).
    pub async fn heartbeat(
        &self,
        node: &str,
        address: &str,
        draining: bool,
    ) -> Result<(), DbError> {
        self.client
            .execute(
                "INSERT INTO fh_nodes (node, address, draining) VALUES ($1, $2, $3)
                 ON CONFLICT (node) DO UPDATE
                 SET address = EXCLUDED.address, seen_at = now(), draining = EXCLUDED.draining",
                &[&node, &address, &draining],
            )
            .await?;
        Ok(())
    }

    /// Every node, by ID.
    pub async fn nodes(&self) -> Result<Vec<NodeRow>, DbError> {
        let rows = self
            .client
            .query(
                "SELECT node, address,
                        extract(epoch FROM (now() - seen_at))::float8 * 1000,
                        draining
                 FROM fh_nodes ORDER BY node",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| NodeRow {
                node: r.get(0),
                address: r.get(1),
                seen_ago: Duration::from_secs_f64(r.get::<_, f64>(2).max(0.0) / 1000.0),
                draining: r.get(3),
            })
            .collect())
    }

    /// Removes `node`'s row (it stopped and handed everything over).
    pub async fn leave(&self, node: &str) -> Result<(), DbError> {
        self.client
            .execute("DELETE FROM fh_nodes WHERE node = $1", &[&node])
            .await?;
        Ok(())
    }

    /// Takes each of `shards` that has no owner, or whose lease has
    /// expired, for `node`, raising its epoch, with a lease of `lease` from
    /// now (the database's); returns those taken.
    pub async fn acquire(
        &self,
        node: &str,
        shards: &[u32],
        lease: Duration,
    ) -> Result<Vec<Held>, DbError> {
        let shards: Vec<i32> = shards
            .iter()
            .filter_map(|s| i32::try_from(*s).ok())
            .collect();
        let rows = self
            .client
            .query(
                "UPDATE fh_shards
                 SET owner = $1, epoch = epoch + 1,
                     lease_until = now() + $3 * interval '1 millisecond'
                 WHERE shard = ANY($2) AND (owner IS NULL OR lease_until < now())
                 RETURNING shard, epoch",
                &[&node, &shards, &millis(lease)],
            )
            .await?;
        let mut held: Vec<Held> = rows
            .iter()
            .map(|r| Held {
                shard: r.get::<_, i32>(0) as u32,
                epoch: r.get(1),
            })
            .collect();
        held.sort();
        Ok(held)
    }

    /// Extends the leases of `held` by `lease` from now, where each is still
    /// `node`'s at its epoch; returns the shards renewed (the others are
    /// lost).
    pub async fn renew(
        &self,
        node: &str,
        held: &[Held],
        lease: Duration,
    ) -> Result<HashSet<u32>, DbError> {
        let (shards, epochs) = split(held);
        let rows = self
            .client
            .query(
                "UPDATE fh_shards AS s
                 SET lease_until = now() + $4 * interval '1 millisecond'
                 FROM unnest($2::int4[], $3::int8[]) AS u(shard, epoch)
                 WHERE s.shard = u.shard AND s.epoch = u.epoch AND s.owner = $1
                 RETURNING s.shard",
                &[&node, &shards, &epochs, &millis(lease)],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get::<_, i32>(0) as u32).collect())
    }

    /// Gives up `held` (after its last write): another node may take each
    /// at once.
    pub async fn release(&self, node: &str, held: &[Held]) -> Result<(), DbError> {
        let (shards, epochs) = split(held);
        self.client
            .execute(
                "UPDATE fh_shards AS s SET owner = NULL, lease_until = NULL
                 FROM unnest($2::int4[], $3::int8[]) AS u(shard, epoch)
                 WHERE s.shard = u.shard AND s.epoch = u.epoch AND s.owner = $1",
                &[&node, &shards, &epochs],
            )
            .await?;
        Ok(())
    }

    /// Every shard, by number.
    pub async fn shards(&self) -> Result<Vec<ShardRow>, DbError> {
        let rows = self
            .client
            .query(
                "SELECT shard, owner, epoch,
                        extract(epoch FROM (lease_until - now()))::float8 * 1000
                 FROM fh_shards ORDER BY shard",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let left: Option<f64> = r.get(3);
                ShardRow {
                    shard: r.get::<_, i32>(0) as u32,
                    owner: r.get(1),
                    epoch: r.get(2),
                    lease_left: left.map(|ms| Duration::from_secs_f64(ms.max(0.0) / 1000.0)),
                    expired: left.is_some_and(|ms| ms < 0.0),
                }
            })
            .collect())
    }

    /// Writes `records` (shard, agent ID, record) in one transaction, with
    /// no node running: refused, writing nothing, while any node holds a
    /// shard. Returns how many were written.
    pub async fn import(&mut self, records: &[(u32, &str, &[u8])]) -> Result<usize, DbError> {
        let tx = self.client.transaction().await?;
        // No node may take a shard meanwhile.
        tx.batch_execute("LOCK TABLE fh_shards IN SHARE ROW EXCLUSIVE MODE")
            .await?;
        let held: Vec<String> = tx
            .query(
                "SELECT DISTINCT owner FROM fh_shards
                 WHERE owner IS NOT NULL AND lease_until > now() ORDER BY owner",
                &[],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !held.is_empty() {
            return Err(DbError::Mismatch(format!(
                "servers {held:?} of the cluster are running: stop them first (an import writes while no server holds the shards)"
            )));
        }
        for chunk in records.chunks(1000) {
            let shard: Vec<i32> = chunk.iter().map(|r| r.0 as i32).collect();
            let id: Vec<&str> = chunk.iter().map(|r| r.1).collect();
            let record: Vec<&[u8]> = chunk.iter().map(|r| r.2).collect();
            tx.execute(
                "INSERT INTO fh_agents (shard, agent_id, record)
                 SELECT * FROM unnest($1::int4[], $2::text[], $3::bytea[])
                 ON CONFLICT (shard, agent_id) DO UPDATE SET record = EXCLUDED.record",
                &[&shard, &id, &record],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(records.len())
    }

    /// The database's standbys as the primary sees them: name, state, sync
    /// state, replay lag. Empty when there are none, or when this user may
    /// not see them.
    pub async fn standbys(&self) -> Vec<(String, String, String, Option<Duration>)> {
        let rows = self
            .client
            .query(
                "SELECT coalesce(application_name, ''), coalesce(state, ''), coalesce(sync_state, ''),
                        extract(epoch FROM replay_lag)::float8
                 FROM pg_stat_replication ORDER BY application_name",
                &[],
            )
            .await
            .unwrap_or_default();
        rows.iter()
            .map(|r| {
                let lag: Option<f64> = r.get(3);
                (
                    r.get(0),
                    r.get(1),
                    r.get(2),
                    lag.map(|s| Duration::from_secs_f64(s.max(0.0))),
                )
            })
            .collect()
    }

    /// The stored records of the agents of `shards`.
    pub async fn load(&self, shards: &[u32]) -> Result<Vec<(u32, String, Vec<u8>)>, DbError> {
        let shards: Vec<i32> = shards
            .iter()
            .filter_map(|s| i32::try_from(*s).ok())
            .collect();
        let rows = self
            .client
            .query(
                "SELECT shard, agent_id, record FROM fh_agents WHERE shard = ANY($1)",
                &[&shards],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, i32>(0) as u32, r.get(1), r.get(2)))
            .collect())
    }

    /// Writes `upserts` (shard, agent ID, record) and removes `deletes`
    /// (shard, agent ID) in one transaction, fenced by `held`: every shard
    /// written must be among them, still `node`'s at that epoch, or nothing
    /// is written and the lost shards are named.
    pub async fn commit(
        &mut self,
        node: &str,
        held: &[Held],
        upserts: &[(u32, &str, &[u8])],
        deletes: &[(u32, &str)],
    ) -> Result<(), CommitError> {
        let touched: HashSet<u32> = upserts
            .iter()
            .map(|u| u.0)
            .chain(deletes.iter().map(|d| d.0))
            .collect();
        let fence: Vec<Held> = held
            .iter()
            .filter(|h| touched.contains(&h.shard))
            .copied()
            .collect();
        let unheld: Vec<u32> = touched
            .iter()
            .filter(|s| !fence.iter().any(|h| h.shard == **s))
            .copied()
            .collect();
        if !unheld.is_empty() {
            return Err(CommitError::Lost(unheld));
        }
        let (shards, epochs) = split(&fence);
        let tx = self.client.transaction().await?;
        let kept: HashSet<u32> = tx
            .query(
                "SELECT s.shard FROM fh_shards AS s, unnest($2::int4[], $3::int8[]) AS u(shard, epoch)
                 WHERE s.shard = u.shard AND s.epoch = u.epoch AND s.owner = $1
                 FOR SHARE OF s",
                &[&node, &shards, &epochs],
            )
            .await?
            .iter()
            .map(|r| r.get::<_, i32>(0) as u32)
            .collect();
        if kept.len() != fence.len() {
            let mut lost: Vec<u32> = fence
                .iter()
                .map(|h| h.shard)
                .filter(|s| !kept.contains(s))
                .collect();
            lost.sort_unstable();
            tx.rollback().await?;
            return Err(CommitError::Lost(lost));
        }
        if !upserts.is_empty() {
            let shard: Vec<i32> = upserts.iter().map(|u| u.0 as i32).collect();
            let id: Vec<&str> = upserts.iter().map(|u| u.1).collect();
            let record: Vec<&[u8]> = upserts.iter().map(|u| u.2).collect();
            tx.execute(
                "INSERT INTO fh_agents (shard, agent_id, record)
                 SELECT * FROM unnest($1::int4[], $2::text[], $3::bytea[])
                 ON CONFLICT (shard, agent_id) DO UPDATE SET record = EXCLUDED.record",
                &[&shard, &id, &record],
            )
            .await?;
        }
        if !deletes.is_empty() {
            let shard: Vec<i32> = deletes.iter().map(|d| d.0 as i32).collect();
            let id: Vec<&str> = deletes.iter().map(|d| d.1).collect();
            tx.execute(
                "DELETE FROM fh_agents AS a
                 USING unnest($1::int4[], $2::text[]) AS d(shard, agent_id)
                 WHERE a.shard = d.shard AND a.agent_id = d.agent_id",
                &[&shard, &id],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

fn split(held: &[Held]) -> (Vec<i32>, Vec<i64>) {
    held.iter().map(|h| (h.shard as i32, h.epoch)).unzip()
}
