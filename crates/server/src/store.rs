//! Durable state: one record per agent in an embedded, crash-safe database
//! (redb) in the data directory.
//!
//! - A record holds everything the registry needs to answer exactly as before
//!   a restart: the sensor's times, registration, incarnation, last applied
//!   sequence number, labels, status and since, recent transitions. Records are
//!   protobuf messages (prost), so fields can be added without a migration.
//! - Commits are grouped: the registry marks changed agents dirty; a committer
//!   writes each dirty agent's latest record once per transaction, so many
//!   events cost one fsync. An event is acknowledged only once the transaction
//!   that holds its effect is committed.
//! - The database carries a format version from the first day. A newer
//!   version, or a file that cannot be read, is an error at start-up, never a
//!   silent reset.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost::Message;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

/// The version of the data directory's format that this build writes.
pub const FORMAT_VERSION: u64 = 1;

/// The database file inside the data directory.
pub const DB_FILE: &str = "fleet-health.redb";

const AGENTS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("agents");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
const FORMAT_KEY: &str = "format_version";

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data directory cannot be created or read.
    #[error("data directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The database cannot be opened (corrupt, locked by another server, or
    /// unreadable).
    #[error(
        "cannot open {path}: {source} (is another fleet-health-server using it? is it damaged?)"
    )]
    Open {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: redb::DatabaseError,
    },
    /// The data directory was written by a newer fleet-health.
    #[error(
        "{path} has format version {found}; this build reads up to {FORMAT_VERSION}: run a newer fleet-health-server"
    )]
    NewerFormat {
        /// The file.
        path: PathBuf,
        /// The version found.
        found: u64,
    },
    /// A record cannot be decoded.
    #[error("{path}: the record of agent {agent:?} is damaged: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The agent.
        agent: String,
        /// What is wrong.
        reason: String,
    },
    /// A read or write failed.
    #[error("{0}")]
    Db(String),
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> StoreError {
                StoreError::Db(e.to_string())
            }
        }
    )*};
}
db_err!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// One transition as stored.
#[derive(Clone, PartialEq, Message)]
pub struct TransitionRecord {
    /// When (microseconds since the epoch).
    #[prost(int64, tag = "1")]
    pub at: i64,
    /// The reason before, as its `fleethealth.v1.Why` number (0: none).
    #[prost(uint32, tag = "2")]
    pub from: u32,
    /// The reason after, as its `fleethealth.v1.Why` number.
    #[prost(uint32, tag = "3")]
    pub to: u32,
}

/// One agent as stored. Times are microseconds since the epoch; reasons are
/// `fleethealth.v1.Why` numbers, which never change meaning.
#[derive(Clone, PartialEq, Message)]
pub struct AgentRecord {
    /// The sensor's `started_at`.
    #[prost(int64, tag = "1")]
    pub started_at: i64,
    /// The sensor's `shutdown_at`.
    #[prost(int64, tag = "2")]
    pub shutdown_at: i64,
    /// The sensor's `last_received`.
    #[prost(int64, tag = "3")]
    pub last_received: i64,
    /// The sensor's `last_sent`.
    #[prost(int64, tag = "4")]
    pub last_sent: i64,
    /// Not registered (the default, false, is registered).
    #[prost(bool, tag = "5")]
    pub unregistered: bool,
    /// When last heard from.
    #[prost(int64, tag = "6")]
    pub last_heard: i64,
    /// When first heard from.
    #[prost(int64, tag = "7")]
    pub first_seen: i64,
    /// Since when it has had its reason.
    #[prost(int64, tag = "8")]
    pub since: i64,
    /// When its reason was last settled.
    #[prost(int64, tag = "9")]
    pub evaluated: i64,
    /// When it said "stopped", if it is stopped.
    #[prost(int64, optional, tag = "10")]
    pub stopped_at: Option<i64>,
    /// The reporter incarnation.
    #[prost(uint64, tag = "11")]
    pub incarnation: u64,
    /// The last sequence number applied for it.
    #[prost(uint64, tag = "12")]
    pub last_seq: u64,
    /// The reason.
    #[prost(uint32, tag = "13")]
    pub reason: u32,
    /// Labels.
    #[prost(btree_map = "string, string", tag = "14")]
    pub labels: BTreeMap<String, String>,
    /// Recent transitions, oldest first.
    #[prost(message, repeated, tag = "15")]
    pub history: Vec<TransitionRecord>,
}

/// The durable store.
pub struct Store {
    db: redb::Database,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (or creates) the store in `dir`, checking its format version.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        // Fail early, and clearly, on a directory we may not read or write.
        std::fs::read_dir(dir).map_err(|source| StoreError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(DB_FILE);
        let db = redb::Database::create(&path).map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
        let store = Store { db, path };
        store.check_format()?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn check_format(&self) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut meta = tx.open_table(META)?;
            let found = meta.get(FORMAT_KEY)?.map(|v| v.value());
            match found {
                Some(v) if v > FORMAT_VERSION => {
                    return Err(StoreError::NewerFormat {
                        path: self.path.clone(),
                        found: v,
                    });
                }
                Some(_) => {}
                None => {
                    meta.insert(FORMAT_KEY, FORMAT_VERSION)?;
                }
            }
            tx.open_table(AGENTS)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Reads every agent's record.
    pub fn load(&self) -> Result<Vec<(String, AgentRecord)>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(AGENTS)?;
        let mut out = Vec::with_capacity(usize::try_from(table.len()?).unwrap_or(0));
        for entry in table.iter()? {
            let (k, v) = entry?;
            let agent = k.value().to_string();
            let record = AgentRecord::decode(v.value()).map_err(|e| StoreError::Corrupt {
                path: self.path.clone(),
                agent: agent.clone(),
                reason: e.to_string(),
            })?;
            out.push((agent, record));
        }
        Ok(out)
    }

    /// Writes `upserts` and removes `deletes` in one durable transaction.
    pub fn commit(
        &self,
        upserts: &[(Arc<str>, Vec<u8>)],
        deletes: &[Arc<str>],
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(AGENTS)?;
            for (k, v) in upserts {
                table.insert(&**k, v.as_slice())?;
            }
            for k in deletes {
                table.remove(&**k)?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Sets the stored format version (for tests of an upgrade refused).
    #[doc(hidden)]
    pub fn set_format_version(&self, v: u64) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        tx.open_table(META)?.insert(FORMAT_KEY, v)?;
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64) -> AgentRecord {
        AgentRecord {
            started_at: 1_700_000_000_000_000,
            last_seq: seq,
            reason: 1,
            labels: [("site".to_string(), "eu".to_string())].into(),
            history: vec![TransitionRecord {
                at: 5,
                from: 0,
                to: 1,
            }],
            ..AgentRecord::default()
        }
    }

    #[test]
    fn records_survive_reopening() {
        let dir = tempdir();
        {
            let store = Store::open(&dir).expect("opens");
            store
                .commit(
                    &[
                        (Arc::from("a"), record(1).encode_to_vec()),
                        (Arc::from("b"), record(2).encode_to_vec()),
                    ],
                    &[],
                )
                .expect("commits");
            store.commit(&[], &[Arc::from("b")]).expect("deletes");
        }
        let store = Store::open(&dir).expect("reopens");
        let all = store.load().expect("loads");
        assert_eq!(all, vec![("a".to_string(), record(1))]);
        std::fs::remove_dir_all(&dir).expect("cleaned");
    }

    #[test]
    fn a_newer_format_is_refused() {
        let dir = tempdir();
        Store::open(&dir)
            .expect("opens")
            .set_format_version(FORMAT_VERSION + 1)
            .expect("set");
        let err = Store::open(&dir).expect_err("refused");
        assert!(
            matches!(err, StoreError::NewerFormat { found: 2, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("newer fleet-health-server"));
        std::fs::remove_dir_all(&dir).expect("cleaned");
    }

    #[test]
    fn a_corrupt_file_is_an_error_not_a_reset() {
        let dir = tempdir();
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join(DB_FILE), vec![0x5a; 64 * 1024]).expect("garbage written");
        let err = Store::open(&dir).expect_err("refused");
        assert!(matches!(err, StoreError::Open { .. }), "{err}");
        // The garbage is still there: nothing was reset.
        assert_eq!(
            std::fs::read(dir.join(DB_FILE)).expect("file").len(),
            64 * 1024
        );
        std::fs::remove_dir_all(&dir).expect("cleaned");
    }

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "fleet-health-store-test-{}-{}",
            std::process::id(),
            fastrand_like()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn fastrand_like() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }
}
