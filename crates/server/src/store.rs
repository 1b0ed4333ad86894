//! Durable state: what the registry needs of a store ([`AgentStore`]), and its
//! one implementation today, [`RedbStore`], an embedded, crash-safe database
//! (redb) in the data directory.
//!
//! - A store keeps one opaque record per agent, keyed by agent ID; the
//!   registry owns the record format (`registry::record`). It is asked for
//!   three things: load every record at start-up, write a batch of changed
//!   records and forgotten agents atomically, and say where it is (for logs
//!   and errors). A second implementation (a database shared by several
//!   servers) implements the same trait without touching the registry.
//! - Commits are grouped: the registry marks changed agents dirty; a committer
//!   writes each dirty agent's latest record once per transaction, so many
//!   events cost one fsync. An event is acknowledged only once the transaction
//!   that holds its effect is committed.
//! - The redb file carries a format version from the first day. A newer
//!   version, or a file that cannot be read, is an error at start-up, never a
//!   silent reset.
//! - The redb file is compacted at start-up, and after a commit when it is at
//!   least [`StoreOptions::compact_min_bytes`] large and more than half of it
//!   is free space (many agents forgotten). Whether that is so is looked at
//!   (a walk of the tree's pages) only when the file has doubled since the
//!   last look or half the agents stored then have been forgotten since, so
//!   a commit otherwise costs one `stat` more. Its page cache is bounded by
//!   [`StoreOptions::cache_bytes`].

use crate::model::ArcStr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::registry::RecordError;

/// The version of the data directory's format that this build writes.
pub const FORMAT_VERSION: u64 = 1;

/// The database file inside the data directory.
pub const DB_FILE: &str = "fleet-health.redb";

const AGENTS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("agents");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
const FORMAT_KEY: &str = "format_version";

/// What the registry needs of a durable store.
pub trait AgentStore: Send + Sync + 'static {
    /// Where the store is, for logs and errors (a path, a URL).
    fn location(&self) -> String;

    /// Every stored record, as `(agent ID, record bytes)`.
    fn load(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// Writes `upserts` (agent ID, record bytes) and forgets `deletes` in one
    /// durable, atomic transaction: after a crash, all of it or none is there.
    fn commit(&self, upserts: &[(ArcStr, Vec<u8>)], deletes: &[ArcStr]) -> Result<(), StoreError>;

    /// Every stored record as of one moment (commits may go on meanwhile),
    /// in agent ID order, handed to `each` until it returns false: what a
    /// backup copies.
    fn snapshot(&self, each: &mut dyn FnMut(&str, &[u8]) -> bool) -> Result<(), StoreError> {
        let mut all = self.load()?;
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (k, v) in &all {
            if !each(k, v) {
                break;
            }
        }
        Ok(())
    }
}

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
    /// A stored record cannot be turned back into an agent.
    #[error("{location}: {source}")]
    Corrupt {
        /// Where the store is.
        location: String,
        /// The record and what is wrong with it.
        source: RecordError,
    },
    /// A read or write failed.
    #[error("{0}")]
    Db(String),
    /// A cluster's write was refused whole: these shards are now another
    /// server's (see [`crate::cluster`]).
    #[error("shards {0:?} are now another server's")]
    Lost(Vec<u32>),
}

impl StoreError {
    /// A damaged record found in the store at `location`.
    pub fn corrupt(location: String, source: RecordError) -> StoreError {
        StoreError::Corrupt { location, source }
    }
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
    redb::CommitError,
    redb::CompactionError
);

/// Settings of the embedded store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// The most memory redb's page cache may hold, in bytes (default
    /// [`StoreOptions::DEFAULT_CACHE_BYTES`]; redb's own default is 1 GiB).
    /// The registry keeps every agent in memory and reads the store only at
    /// start-up; the cache serves the B-tree pages a commit updates, which the
    /// kernel's page cache also holds. At 1 000 000 agents, 16 MiB registered
    /// agents as fast as 64 MiB did (`bench/memory.sh`) and saved 63 bytes of
    /// resident memory per agent.
    pub cache_bytes: usize,
    /// The file is compacted after a commit only if it is at least this
    /// large, in bytes (default 64 MiB), and more than half of it is free;
    /// it is always compacted at start-up.
    pub compact_min_bytes: u64,
}

impl StoreOptions {
    /// The page cache when nothing else is said: 16 MiB.
    pub const DEFAULT_CACHE_BYTES: usize = 16 * 1024 * 1024;
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            cache_bytes: StoreOptions::DEFAULT_CACHE_BYTES,
            compact_min_bytes: 64 * 1024 * 1024,
        }
    }
}

/// The embedded store: one redb file in the data directory.
pub struct RedbStore {
    /// Locked for each transaction, and exclusively for a compaction (which
    /// needs the database to itself).
    db: Mutex<Db>,
    path: PathBuf,
    options: StoreOptions,
}

/// The database and when to look at compacting it next.
struct Db {
    db: redb::Database,
    /// Look again once the file is larger than this...
    compact_at: u64,
    /// ...or once this many agents are forgotten (half those stored at the
    /// last look).
    forget_at: u64,
    /// Agents forgotten since the last look.
    forgotten: u64,
    /// Compactions done since the store was opened.
    compactions: u64,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .field("options", &self.options)
            .finish()
    }
}

impl RedbStore {
    /// Opens (or creates) the store in `dir` with the default options.
    pub fn open(dir: &Path) -> Result<RedbStore, StoreError> {
        RedbStore::open_with(dir, StoreOptions::default())
    }

    /// Opens (or creates) the store in `dir`, checks its format version, and
    /// compacts it.
    pub fn open_with(dir: &Path, options: StoreOptions) -> Result<RedbStore, StoreError> {
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
        let db = redb::Builder::new()
            .set_cache_size(options.cache_bytes)
            .create(&path)
            .map_err(|source| StoreError::Open {
                path: path.clone(),
                source,
            })?;
        let store = RedbStore {
            db: Mutex::new(Db {
                db,
                compact_at: 0,
                forget_at: 0,
                forgotten: 0,
                compactions: 0,
            }),
            path,
            options,
        };
        store.check_format()?;
        let mut db = store.lock();
        store.compact(&mut db)?;
        drop(db);
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The size of the database file in bytes.
    pub fn file_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }

    /// How many times the file was compacted since it was opened (the first
    /// is at the opening).
    pub fn compactions(&self) -> u64 {
        self.lock().compactions
    }

    fn lock(&self) -> MutexGuard<'_, Db> {
        // A panic in another transaction leaves redb consistent (it is
        // crash-safe); go on with it.
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check_format(&self) -> Result<(), StoreError> {
        let tx = self.lock().db.begin_write()?;
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

    /// Compacts the file, then sets when to look again.
    fn compact(&self, db: &mut Db) -> Result<(), StoreError> {
        let before = self.file_bytes();
        while db.db.compact()? {}
        db.compactions += 1;
        let after = self.file_bytes();
        if after < before {
            tracing::info!(
                path = %self.path.display(),
                before_bytes = before,
                after_bytes = after,
                "store compacted"
            );
        }
        self.look_again(db, after)
    }

    /// Sets when to look at compacting next: once the file has doubled from
    /// `size` (and not below the configured minimum), or once half the
    /// agents stored now are forgotten.
    fn look_again(&self, db: &mut Db, size: u64) -> Result<(), StoreError> {
        let stored = {
            let tx = db.db.begin_read()?;
            tx.open_table(AGENTS)?.len()?
        };
        db.compact_at = size.saturating_mul(2).max(self.options.compact_min_bytes);
        db.forget_at = (stored / 2).max(1);
        db.forgotten = 0;
        Ok(())
    }

    /// After a commit: if it is time to look, compacts the file when it is
    /// past the configured minimum and at least half of it is free.
    fn maybe_compact(&self, db: &mut Db, forgotten: usize) -> Result<(), StoreError> {
        db.forgotten += forgotten as u64;
        let size = self.file_bytes();
        if size <= db.compact_at && db.forgotten < db.forget_at {
            return Ok(());
        }
        let used = {
            let tx = db.db.begin_write()?;
            let stats = tx.stats()?;
            tx.abort()?;
            stats.allocated_pages() * stats.page_size() as u64
        };
        if size >= self.options.compact_min_bytes && size > used.saturating_mul(2) {
            self.compact(db)
        } else {
            self.look_again(db, size)
        }
    }

    /// Sets the stored format version (for tests of an upgrade refused).
    #[doc(hidden)]
    pub fn set_format_version(&self, v: u64) -> Result<(), StoreError> {
        let tx = self.lock().db.begin_write()?;
        tx.open_table(META)?.insert(FORMAT_KEY, v)?;
        tx.commit()?;
        Ok(())
    }
}

impl AgentStore for RedbStore {
    fn location(&self) -> String {
        self.path.display().to_string()
    }

    fn load(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let tx = self.lock().db.begin_read()?;
        let table = tx.open_table(AGENTS)?;
        let mut out = Vec::with_capacity(usize::try_from(table.len()?).unwrap_or(0));
        for entry in table.iter()? {
            let (k, v) = entry?;
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn commit(&self, upserts: &[(ArcStr, Vec<u8>)], deletes: &[ArcStr]) -> Result<(), StoreError> {
        let mut db = self.lock();
        let tx = db.db.begin_write()?;
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
        if let Err(e) = self.maybe_compact(&mut db, deletes.len()) {
            // The commit is done; a compaction can wait for the next one
            // (one fails while a backup reads).
            tracing::warn!(error = %e, "store compaction failed");
        }
        Ok(())
    }

    fn snapshot(&self, each: &mut dyn FnMut(&str, &[u8]) -> bool) -> Result<(), StoreError> {
        // A read transaction sees the database as of its start, whatever is
        // committed after; the lock is held only to begin it.
        let tx = self.lock().db.begin_read()?;
        let table = tx.open_table(AGENTS)?;
        for entry in table.iter()? {
            let (k, v) = entry?;
            if !each(k.value(), v.value()) {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> ArcStr {
        ArcStr::from(s)
    }

    #[test]
    fn records_survive_reopening() {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let store = RedbStore::open(dir.path()).expect("opens");
            store
                .commit(
                    &[(key("a"), b"one".to_vec()), (key("b"), b"two".to_vec())],
                    &[],
                )
                .expect("commits");
            store.commit(&[], &[key("b")]).expect("deletes");
        }
        let store = RedbStore::open(dir.path()).expect("reopens");
        let all = store.load().expect("loads");
        assert_eq!(all, vec![("a".to_string(), b"one".to_vec())]);
        assert!(store.location().ends_with(DB_FILE));
    }

    #[test]
    fn a_newer_format_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        RedbStore::open(dir.path())
            .expect("opens")
            .set_format_version(FORMAT_VERSION + 1)
            .expect("set");
        let err = RedbStore::open(dir.path()).expect_err("refused");
        assert!(
            matches!(err, StoreError::NewerFormat { found: 2, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("newer fleet-health-server"));
    }

    #[test]
    fn a_corrupt_file_is_an_error_not_a_reset() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join(DB_FILE), vec![0x5a; 64 * 1024]).expect("garbage written");
        let err = RedbStore::open(dir.path()).expect_err("refused");
        assert!(matches!(err, StoreError::Open { .. }), "{err}");
        // The garbage is still there: nothing was reset.
        assert_eq!(
            std::fs::read(dir.path().join(DB_FILE)).expect("file").len(),
            64 * 1024
        );
    }

    /// Writes `n` records of `size` bytes, in batches, and returns their keys.
    fn fill(store: &RedbStore, n: usize, size: usize) -> Vec<ArcStr> {
        let keys: Vec<ArcStr> = (0..n).map(|i| key(&format!("agent-{i:06}"))).collect();
        for chunk in keys.chunks(1000) {
            let upserts: Vec<_> = chunk.iter().map(|k| (k.clone(), vec![7u8; size])).collect();
            store.commit(&upserts, &[]).expect("commits");
        }
        keys
    }

    #[test]
    fn the_file_shrinks_after_many_forgets() {
        let dir = tempfile::tempdir().expect("temp dir");
        let options = StoreOptions {
            compact_min_bytes: 1024 * 1024,
            ..StoreOptions::default()
        };
        let store = RedbStore::open_with(dir.path(), options).expect("opens");
        let keys = fill(&store, 20_000, 400);
        let full = store.file_bytes();
        assert!(full > 8 * 1024 * 1024, "{full} bytes");
        // Forget all but a hundred: the commit that does it compacts.
        for chunk in keys[100..].chunks(5000) {
            store.commit(&[], chunk).expect("forgets");
        }
        let after = store.file_bytes();
        assert!(after * 4 < full, "{full} bytes before, {after} after");
        assert!(store.compactions() > 1);
        assert_eq!(store.load().expect("loads").len(), 100);
    }

    #[test]
    fn the_file_is_compacted_at_start_up() {
        let dir = tempfile::tempdir().expect("temp dir");
        let options = StoreOptions {
            // Never after a commit: only at start-up.
            compact_min_bytes: u64::MAX,
            ..StoreOptions::default()
        };
        let full = {
            let store = RedbStore::open_with(dir.path(), options).expect("opens");
            let keys = fill(&store, 20_000, 400);
            store.commit(&[], &keys[100..]).expect("forgets");
            store.file_bytes()
        };
        let store = RedbStore::open_with(dir.path(), options).expect("reopens");
        let after = store.file_bytes();
        assert!(after * 4 < full, "{full} bytes before, {after} after");
        assert_eq!(store.load().expect("loads").len(), 100);
    }

    #[test]
    fn a_growing_file_is_not_compacted_for_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let options = StoreOptions {
            compact_min_bytes: 1024 * 1024,
            ..StoreOptions::default()
        };
        let store = RedbStore::open_with(dir.path(), options).expect("opens");
        fill(&store, 20_000, 400);
        let size = store.file_bytes();
        // The live data fills the file: the next look is at twice its size.
        assert!(
            store.lock().compact_at >= size,
            "{}",
            store.lock().compact_at
        );
    }
}
