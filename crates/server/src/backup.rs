//! `fleet-health-server backup DIR` and `restore`: a copy of a running
//! server's state, and putting one in place.
//!
//! - A backup asks the running server (`AdminService.Backup`, the admin
//!   role when security is on) for a consistent snapshot of its store and
//!   writes it into DIR as a data directory of its own: a server could
//!   start on it as it is. DIR must not hold one already. The records are
//!   written as they arrive, and the count is checked at the end; a backup
//!   that did not finish leaves `DIR/INCOMPLETE` behind, which restore
//!   refuses.
//! - A restore (the server stopped) checks every record of a backup
//!   (each decodes as an agent), then writes them into an empty data
//!   directory.

use std::path::Path;

use fleet_health_client::proto::admin_service_client::AdminServiceClient;
use fleet_health_client::{Credentials, auth_channel};
use fleet_health_proto::v1 as pb;

use crate::registry::record;
use crate::store::{AgentStore, DB_FILE, FORMAT_VERSION, RedbStore};

/// The marker of a backup that did not finish.
pub const INCOMPLETE: &str = "INCOMPLETE";

/// Records written to the backup per transaction.
const BATCH: usize = 10_000;

/// What a backup or restore did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Copied {
    /// Agent records copied.
    pub records: u64,
}

fn refuse_existing(dir: &Path) -> anyhow::Result<()> {
    if dir.join(DB_FILE).exists() {
        anyhow::bail!(
            "{} already holds a data directory ({DB_FILE}): give an empty or new directory",
            dir.display()
        );
    }
    Ok(())
}

/// Copies the state of the server at `url` into `dir`.
pub async fn backup(
    url: &str,
    credentials: &Credentials,
    timeout: std::time::Duration,
    dir: &Path,
) -> anyhow::Result<Copied> {
    refuse_existing(dir)?;
    std::fs::create_dir_all(dir)?;
    let marker = dir.join(INCOMPLETE);
    std::fs::write(
        &marker,
        "a backup was being written here and did not finish\n",
    )?;
    let channel = auth_channel(url, timeout, credentials)?;
    let mut client = AdminServiceClient::new(channel);
    let mut stream = client
        .backup(pb::BackupRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("{url}: {}: {}", describe(s.code()), s.message()))?
        .into_inner();
    let store = std::sync::Arc::new(RedbStore::open(dir)?);
    let mut batch: Vec<(crate::model::ArcStr, Vec<u8>)> = Vec::new();
    let mut written = 0u64;
    loop {
        let chunk = stream
            .message()
            .await
            .map_err(|s| anyhow::anyhow!("{url}: {}: {}", describe(s.code()), s.message()))?
            .ok_or_else(|| anyhow::anyhow!("{url}: the backup ended before its last chunk"))?;
        if chunk.format_version != FORMAT_VERSION {
            anyhow::bail!(
                "the server's store has format version {}; this build writes {FORMAT_VERSION}: use the server's own version of fleet-health-server",
                chunk.format_version
            );
        }
        for r in chunk.records {
            batch.push((r.agent_id.into(), r.record));
            written += 1;
        }
        if batch.len() >= BATCH || chunk.last {
            let b = std::mem::take(&mut batch);
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.commit(&b, &[])).await??;
        }
        if chunk.last {
            if chunk.total != written {
                anyhow::bail!("the server said {} records and sent {written}", chunk.total);
            }
            break;
        }
    }
    drop(store);
    std::fs::remove_file(&marker)?;
    Ok(Copied { records: written })
}

fn describe(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Unauthenticated => {
            "not authenticated (give --token or --cert/--key of an admin)"
        }
        tonic::Code::PermissionDenied => "permission denied (a backup needs the admin role)",
        tonic::Code::FailedPrecondition => "refused",
        tonic::Code::Unavailable => "server unreachable",
        _ => "failed",
    }
}

/// Writes the backup in `from` into the empty data directory `to`, after
/// checking every record.
pub fn restore(from: &Path, to: &Path) -> anyhow::Result<Copied> {
    if from.join(INCOMPLETE).exists() {
        anyhow::bail!(
            "{} holds a backup that did not finish ({INCOMPLETE} is there): take another",
            from.display()
        );
    }
    if !from.join(DB_FILE).exists() {
        anyhow::bail!("{} holds no backup ({DB_FILE} is missing)", from.display());
    }
    refuse_existing(to)?;
    let records = RedbStore::open(from)?.load()?;
    for (key, bytes) in &records {
        record::check(key, bytes)
            .map_err(|e| anyhow::anyhow!("{}: {e}; nothing was restored", from.display()))?;
    }
    std::fs::create_dir_all(to)?;
    let store = RedbStore::open(to)?;
    let n = records.len() as u64;
    for chunk in records.chunks(BATCH) {
        let batch: Vec<(crate::model::ArcStr, Vec<u8>)> = chunk
            .iter()
            .map(|(k, v)| (k.as_str().into(), v.clone()))
            .collect();
        store.commit(&batch, &[])?;
    }
    Ok(Copied { records: n })
}
