//! store-choice: measure redb vs SQLite (rusqlite, bundled) on the fleet-health
//! agent-record workload. See README.md.
//!
//! Modes (first positional argument, default `commit`):
//!   commit      create a fresh DB in --dir, pre-fill --agents records, then for
//!               --seconds run group commits of --batch distinct random upserts,
//!               timing every transaction (begin .. durable commit returned).
//!   fill        create a fresh DB in --dir, pre-fill --agents records, close it
//!               cleanly (SQLite: wal_checkpoint(TRUNCATE)), report bytes on disk.
//!   load        open the existing DB in --dir and read every record into a Vec
//!               (the server's start-up load); report open and read times.
//!   crashwrite  open the existing DB in --dir and commit batches forever, each
//!               also upserting a marker key holding the commit sequence number;
//!               prints `ACK <seq>` after each commit returned. Meant to be
//!               killed with SIGKILL; `load` then reports the marker it finds.
//!
//! Every result is one line starting with `RESULT` followed by key=value pairs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MARKER_KEY: &[u8] = b"~last-acked-commit";
const VALUE_LEN: usize = 120;
const FILL_TXN: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Backend {
    /// redb, default Durability::Immediate, quick-repair off (redb default).
    Redb,
    /// redb, Durability::Immediate, quick-repair on (allocator state saved per commit).
    RedbQr,
    /// SQLite WAL, synchronous=FULL.
    SqliteFull,
    /// SQLite WAL, synchronous=NORMAL.
    SqliteNormal,
}

impl Backend {
    fn parse(s: &str) -> Backend {
        match s {
            "redb" => Backend::Redb,
            "redb-qr" => Backend::RedbQr,
            "sqlite" | "sqlite-full" => Backend::SqliteFull,
            "sqlite-normal" => Backend::SqliteNormal,
            other => die(&format!("unknown backend {other:?}")),
        }
    }
    fn name(self) -> &'static str {
        match self {
            Backend::Redb => "redb",
            Backend::RedbQr => "redb-qr",
            Backend::SqliteFull => "sqlite-full",
            Backend::SqliteNormal => "sqlite-normal",
        }
    }
}

fn die(msg: &str) -> ! {
    eprintln!("store-choice: {msg}");
    eprintln!(
        "usage: store-choice [commit|fill|load|crashwrite] --backend redb|redb-qr|sqlite-full|sqlite-normal \
         --agents N --batch K --seconds S --dir PATH [--seed X]"
    );
    std::process::exit(2)
}

struct Args {
    mode: String,
    backend: Backend,
    agents: usize,
    batch: usize,
    seconds: f64,
    dir: PathBuf,
    seed: u64,
}

fn parse_args() -> Args {
    let mut mode = "commit".to_string();
    let mut backend = None;
    let mut agents = 100_000usize;
    let mut batch = 100usize;
    let mut seconds = 5.0f64;
    let mut dir = None;
    let mut seed = 42u64;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = |name: &str| it.next().unwrap_or_else(|| die(&format!("{name} needs a value")));
        match a.as_str() {
            "--backend" => backend = Some(Backend::parse(&val("--backend"))),
            "--agents" => agents = val("--agents").parse().unwrap_or_else(|_| die("bad --agents")),
            "--batch" => batch = val("--batch").parse().unwrap_or_else(|_| die("bad --batch")),
            "--seconds" => seconds = val("--seconds").parse().unwrap_or_else(|_| die("bad --seconds")),
            "--dir" => dir = Some(PathBuf::from(val("--dir"))),
            "--seed" => seed = val("--seed").parse().unwrap_or_else(|_| die("bad --seed")),
            "-h" | "--help" => die("help"),
            m if !m.starts_with('-') => mode = m.to_string(),
            other => die(&format!("unknown argument {other:?}")),
        }
    }
    let backend = backend.unwrap_or_else(|| die("--backend is required"));
    let dir = dir.unwrap_or_else(|| die("--dir is required"));
    if batch == 0 || batch > agents {
        die("--batch must be in 1..=agents");
    }
    Args { mode, backend, agents, batch, seconds, dir, seed }
}

// ---------------------------------------------------------------- data ----

/// splitmix64: small, fast, good enough to make values incompressible.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn agent_key(i: usize) -> Vec<u8> {
    // 23 bytes: "host-000123.example.com"
    format!("host-{i:06}.example.com").into_bytes()
}

/// ~120 opaque bytes derived from a counter: a few varint-ish header bytes like a
/// prost encoding would have, then pseudo-random payload (does not compress).
fn make_value(counter: u64, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&[0x08, 0x01, 0x12, 0x10]);
    out.extend_from_slice(&counter.to_le_bytes());
    let mut r = Rng(counter ^ 0xA5A5_5A5A_0F0F_F0F0);
    while out.len() < VALUE_LEN {
        out.extend_from_slice(&r.next().to_le_bytes());
    }
    out.truncate(VALUE_LEN);
}

/// Picks K distinct agents out of N by a partial Fisher-Yates over a persistent
/// permutation: O(K) per batch.
struct Picker {
    perm: Vec<u32>,
    rng: Rng,
}
impl Picker {
    fn new(n: usize, seed: u64) -> Self {
        Picker { perm: (0..n as u32).collect(), rng: Rng(seed) }
    }
    fn pick(&mut self, k: usize) -> &[u32] {
        let n = self.perm.len();
        for i in 0..k {
            let j = i + self.rng.below(n - i);
            self.perm.swap(i, j);
        }
        &self.perm[..k]
    }
}

// ------------------------------------------------------------- backends ----

trait Store {
    /// One durable transaction upserting all `records`; returns when durable.
    fn commit_batch(&mut self, records: &[(Vec<u8>, Vec<u8>)]);
    /// Read every record into memory.
    fn load_all(&mut self) -> Vec<(Vec<u8>, Vec<u8>)>;
    /// Make the on-disk state final (SQLite: checkpoint) and close.
    fn close(self: Box<Self>);
}

fn db_files(backend: Backend, dir: &Path) -> Vec<PathBuf> {
    match backend {
        Backend::Redb | Backend::RedbQr => vec![dir.join("agents.redb")],
        Backend::SqliteFull | Backend::SqliteNormal => vec![
            dir.join("agents.sqlite"),
            dir.join("agents.sqlite-wal"),
            dir.join("agents.sqlite-shm"),
        ],
    }
}

/// Bytes on disk: (sum of apparent file sizes, sum of allocated blocks).
fn disk_bytes(backend: Backend, dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut len = 0;
    let mut alloc = 0;
    for f in db_files(backend, dir) {
        // The -shm file is a memory-mapped index, not data; SQLite rebuilds it.
        if f.extension().is_some_and(|e| e == "sqlite-shm") {
            continue;
        }
        if let Ok(m) = std::fs::metadata(&f) {
            len += m.len();
            alloc += m.blocks() * 512;
        }
    }
    (len, alloc)
}

#[cfg(feature = "redb")]
mod redb_store {
    use super::*;
    use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

    const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("agents");

    pub struct RedbStore {
        db: Database,
        quick_repair: bool,
    }

    pub fn open(path: &Path, create: bool, quick_repair: bool) -> RedbStore {
        let db = if create { Database::create(path) } else { Database::open(path) }
            .unwrap_or_else(|e| die(&format!("redb open {}: {e}", path.display())));
        if create {
            let txn = db.begin_write().unwrap();
            txn.open_table(TABLE).unwrap();
            txn.commit().unwrap();
        }
        RedbStore { db, quick_repair }
    }

    impl Store for RedbStore {
        fn commit_batch(&mut self, records: &[(Vec<u8>, Vec<u8>)]) {
            let mut txn = self.db.begin_write().unwrap();
            // Durability::Immediate is the default; set it explicitly for clarity.
            txn.set_durability(redb::Durability::Immediate).unwrap();
            if self.quick_repair {
                txn.set_quick_repair(true);
            }
            {
                let mut t = txn.open_table(TABLE).unwrap();
                for (k, v) in records {
                    t.insert(k.as_slice(), v.as_slice()).unwrap();
                }
            }
            txn.commit().unwrap();
        }

        fn load_all(&mut self) -> Vec<(Vec<u8>, Vec<u8>)> {
            let txn = self.db.begin_read().unwrap();
            let t = txn.open_table(TABLE).unwrap();
            let mut out = Vec::with_capacity(t.len().unwrap() as usize);
            for item in t.iter().unwrap() {
                let (k, v) = item.unwrap();
                out.push((k.value().to_vec(), v.value().to_vec()));
            }
            out
        }

        fn close(self: Box<Self>) {
            drop(self.db);
        }
    }
}

#[cfg(feature = "sqlite")]
mod sqlite_store {
    use super::*;
    use rusqlite::{params, Connection, TransactionBehavior};

    const UPSERT: &str = "INSERT INTO agents(key, value) VALUES (?1, ?2) \
                          ON CONFLICT(key) DO UPDATE SET value = excluded.value";

    pub struct SqliteStore {
        conn: Connection,
    }

    pub fn open(path: &Path, create: bool, full: bool) -> SqliteStore {
        if !create && !path.exists() {
            die(&format!("{} does not exist", path.display()));
        }
        let conn = Connection::open(path)
            .unwrap_or_else(|e| die(&format!("sqlite open {}: {e}", path.display())));
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).unwrap();
        assert_eq!(mode.to_lowercase(), "wal");
        conn.pragma_update(None, "synchronous", if full { "FULL" } else { "NORMAL" }).unwrap();
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS agents(key BLOB PRIMARY KEY NOT NULL, value BLOB NOT NULL) WITHOUT ROWID;",
        )
        .unwrap();
        SqliteStore { conn }
    }

    impl Store for SqliteStore {
        fn commit_batch(&mut self, records: &[(Vec<u8>, Vec<u8>)]) {
            let txn = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).unwrap();
            {
                let mut st = txn.prepare_cached(UPSERT).unwrap();
                for (k, v) in records {
                    st.execute(params![k, v]).unwrap();
                }
            }
            txn.commit().unwrap();
        }

        fn load_all(&mut self) -> Vec<(Vec<u8>, Vec<u8>)> {
            let n: i64 = self.conn.query_row("SELECT count(*) FROM agents", [], |r| r.get(0)).unwrap();
            let mut out = Vec::with_capacity(n as usize);
            let mut st = self.conn.prepare("SELECT key, value FROM agents").unwrap();
            let mut rows = st.query([]).unwrap();
            while let Some(r) = rows.next().unwrap() {
                let k = r.get_ref(0).unwrap().as_blob().unwrap().to_vec();
                let v = r.get_ref(1).unwrap().as_blob().unwrap().to_vec();
                out.push((k, v));
            }
            out
        }

        fn close(self: Box<Self>) {
            self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").unwrap();
            self.conn.close().map_err(|(_, e)| e).unwrap();
        }
    }
}

fn open_store(backend: Backend, dir: &Path, create: bool) -> Box<dyn Store> {
    let path = &db_files(backend, dir)[0];
    match backend {
        #[cfg(feature = "redb")]
        Backend::Redb => Box::new(redb_store::open(path, create, false)),
        #[cfg(feature = "redb")]
        Backend::RedbQr => Box::new(redb_store::open(path, create, true)),
        #[cfg(feature = "sqlite")]
        Backend::SqliteFull => Box::new(sqlite_store::open(path, create, true)),
        #[cfg(feature = "sqlite")]
        Backend::SqliteNormal => Box::new(sqlite_store::open(path, create, false)),
        #[allow(unreachable_patterns)]
        other => die(&format!("backend {} not compiled in (cargo feature)", other.name())),
    }
}

// ---------------------------------------------------------------- modes ----

fn fresh_dir(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap_or_else(|e| die(&format!("mkdir {}: {e}", dir.display())));
}

fn prefill(store: &mut dyn Store, n: usize, counter: &mut u64) {
    let mut batch: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(FILL_TXN);
    let mut i = 0;
    while i < n {
        batch.clear();
        for j in i..(i + FILL_TXN).min(n) {
            let mut v = Vec::with_capacity(VALUE_LEN);
            *counter += 1;
            make_value(*counter, &mut v);
            batch.push((agent_key(j), v));
        }
        store.commit_batch(&batch);
        i += FILL_TXN;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx].as_secs_f64() * 1e3
}

fn mode_commit(a: &Args) {
    fresh_dir(&a.dir);
    let mut store = open_store(a.backend, &a.dir, true);
    let mut counter = 0u64;
    prefill(store.as_mut(), a.agents, &mut counter);

    let keys: Vec<Vec<u8>> = (0..a.agents).map(agent_key).collect();
    let mut picker = Picker::new(a.agents, a.seed);
    let mut batch: Vec<(Vec<u8>, Vec<u8>)> =
        (0..a.batch).map(|_| (Vec::new(), Vec::with_capacity(VALUE_LEN))).collect();
    let mut lat: Vec<Duration> = Vec::new();
    let mut records = 0u64;
    let limit = Duration::from_secs_f64(a.seconds);
    let start = Instant::now();
    while start.elapsed() < limit {
        // Building the batch (the server already has the encoded records) is not timed.
        for (slot, &idx) in batch.iter_mut().zip(picker.pick(a.batch)) {
            slot.0.clear();
            slot.0.extend_from_slice(&keys[idx as usize]);
            counter += 1;
            make_value(counter, &mut slot.1);
        }
        let t0 = Instant::now();
        store.commit_batch(&batch);
        lat.push(t0.elapsed());
        records += a.batch as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    let (len, alloc) = disk_bytes(a.backend, &a.dir);
    store.close();
    let (len_closed, _) = disk_bytes(a.backend, &a.dir);
    lat.sort_unstable();
    println!(
        "RESULT mode=commit backend={} agents={} batch={} commits={} secs={:.3} commits_s={:.1} records_s={:.0} \
         p50_ms={:.3} p99_ms={:.3} max_ms={:.3} file_bytes_end={} alloc_bytes_end={} file_bytes_closed={} \
         closed_bytes_per_agent={:.1}",
        a.backend.name(),
        a.agents,
        a.batch,
        lat.len(),
        secs,
        lat.len() as f64 / secs,
        records as f64 / secs,
        percentile(&lat, 50.0),
        percentile(&lat, 99.0),
        lat.last().map_or(f64::NAN, |d| d.as_secs_f64() * 1e3),
        len,
        alloc,
        len_closed,
        len_closed as f64 / a.agents as f64
    );
}

fn mode_fill(a: &Args) {
    fresh_dir(&a.dir);
    let t0 = Instant::now();
    let mut store = open_store(a.backend, &a.dir, true);
    let mut counter = 0u64;
    prefill(store.as_mut(), a.agents, &mut counter);
    store.close();
    let secs = t0.elapsed().as_secs_f64();
    let (len, alloc) = disk_bytes(a.backend, &a.dir);
    println!(
        "RESULT mode=fill backend={} agents={} fill_secs={:.3} file_bytes={} alloc_bytes={} bytes_per_agent={:.1} \
         alloc_per_agent={:.1}",
        a.backend.name(),
        a.agents,
        secs,
        len,
        alloc,
        len as f64 / a.agents as f64,
        alloc as f64 / a.agents as f64
    );
}

fn mode_load(a: &Args) {
    let t0 = Instant::now();
    let mut store = open_store(a.backend, &a.dir, false);
    let t_open = t0.elapsed();
    let all = store.load_all();
    let t_total = t0.elapsed();
    let marker = all
        .iter()
        .find(|(k, _)| k.as_slice() == MARKER_KEY)
        .map(|(_, v)| u64::from_le_bytes(v[..8].try_into().unwrap()));
    let agents = all.len() - usize::from(marker.is_some());
    let bytes: usize = all.iter().map(|(k, v)| k.len() + v.len()).sum();
    drop(store);
    println!(
        "RESULT mode=load backend={} records={} payload_bytes={} open_ms={:.2} read_ms={:.2} total_ms={:.2} marker={}",
        a.backend.name(),
        agents,
        bytes,
        t_open.as_secs_f64() * 1e3,
        (t_total - t_open).as_secs_f64() * 1e3,
        t_total.as_secs_f64() * 1e3,
        marker.map_or("none".to_string(), |m| m.to_string())
    );
    if agents != a.agents {
        die(&format!("expected {} agents, found {}", a.agents, agents));
    }
}

fn mode_crashwrite(a: &Args) {
    let mut store = open_store(a.backend, &a.dir, false);
    let keys: Vec<Vec<u8>> = (0..a.agents).map(agent_key).collect();
    let mut picker = Picker::new(a.agents, a.seed);
    let mut counter = 1u64 << 40;
    let mut stdout = std::io::stdout().lock();
    for seq in 1u64.. {
        let mut batch: Vec<(Vec<u8>, Vec<u8>)> = picker
            .pick(a.batch)
            .iter()
            .map(|&i| {
                counter += 1;
                let mut v = Vec::with_capacity(VALUE_LEN);
                make_value(counter, &mut v);
                (keys[i as usize].clone(), v)
            })
            .collect();
        batch.push((MARKER_KEY.to_vec(), seq.to_le_bytes().to_vec()));
        store.commit_batch(&batch);
        // Acknowledged only after the durable commit returned.
        writeln!(stdout, "ACK {seq}").unwrap();
        stdout.flush().unwrap();
    }
}

fn main() {
    let a = parse_args();
    match a.mode.as_str() {
        "commit" => mode_commit(&a),
        "fill" => mode_fill(&a),
        "load" => mode_load(&a),
        "crashwrite" => mode_crashwrite(&a),
        other => die(&format!("unknown mode {other:?}")),
    }
}
