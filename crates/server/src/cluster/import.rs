//! `fleet-health-server import DATA_DIR --cluster URL`: a single server's
//! store moved into a cluster. The records are the same bytes in both (the
//! embedded store's record is the cluster's), each written in its agent's
//! shard.

use std::path::Path;

use super::db::Db;
use super::shard::shard_of;
use super::store::redact;
use crate::store::{AgentStore, RedbStore};

/// Copies every record of the data directory `dir` into the cluster's
/// database at `url` (made with `shards` shards if it is new); returns how
/// many agents, and the cluster's shard count. Every record is checked
/// first: a damaged one stops the import before anything is written.
pub async fn import(dir: &Path, url: &str, shards: u32) -> Result<(usize, u32), String> {
    if !dir.join(crate::store::DB_FILE).is_file() {
        return Err(format!(
            "{}: no fleet-health data directory here",
            dir.display()
        ));
    }
    let store = RedbStore::open(dir).map_err(|e| e.to_string())?;
    let records = store.load().map_err(|e| e.to_string())?;
    drop(store);
    for (key, bytes) in &records {
        crate::registry::record::check(key, bytes)
            .map_err(|e| format!("{}: agent {key:?}: {e}", dir.display()))?;
    }
    let fail = |e: super::db::DbError| format!("{}: {e}", redact(url));
    let mut db = Db::connect(url).await.map_err(fail)?;
    let shards = db.migrate(shards).await.map_err(fail)?;
    let rows: Vec<(u32, &str, &[u8])> = records
        .iter()
        .map(|(k, v)| (shard_of(k, shards), k.as_str(), v.as_slice()))
        .collect();
    let n = db.import(&rows).await.map_err(fail)?;
    Ok((n, shards))
}
