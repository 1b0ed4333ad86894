//! The committer: writes what the registry marks dirty to the durable store,
//! in group commits, so that many events cost one fsync.

use crate::model::ArcStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::readiness::Readiness;
use crate::registry::Registry;
use crate::shutdown::stopped;
use crate::store::AgentStore;

/// The longest pause between two attempts at a failing commit.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What a cluster node does when a write is refused because shards are
/// now another node's (see [`crate::cluster`]).
pub trait Fenced: Send + Sync {
    /// Lets `shards` go: their agents' streams end (before anything more is
    /// acknowledged) and their agents leave the registry.
    fn lost(&self, shards: &[u32]);
    /// Whether agent `key` belongs to one of `shards`.
    fn in_shards(&self, key: &str, shards: &[u32]) -> bool;
}

/// Writes what the registry marks dirty, in group commits, until `stop`
/// turns true; then writes what is left. A failed commit is retried with
/// backoff (nothing is acknowledged meanwhile): a full disk stalls
/// acknowledgements, it loses nothing; meanwhile `readiness` says the store
/// cannot commit, and each failure is counted.
pub async fn run(
    registry: Registry,
    store: Arc<dyn AgentStore>,
    readiness: Arc<Readiness>,
    mut stop: watch::Receiver<bool>,
    fenced: Option<Arc<dyn Fenced>>,
) {
    loop {
        let last = tokio::select! {
            () = registry.dirty() => false,
            () = stopped(&mut stop) => true,
        };
        // Shared with the blocking task: a retry writes the same batch again
        // without copying it.
        let mut batch = Arc::new(registry.take_dirty());
        let mut backoff = Duration::from_millis(50);
        loop {
            if batch.upserts.is_empty() && batch.deletes.is_empty() {
                break;
            }
            let started = Instant::now();
            let (store, written) = (store.clone(), batch.clone());
            let result = tokio::task::spawn_blocking(move || {
                store.commit(&written.upserts, &written.deletes)
            })
            .await;
            match result {
                Ok(Ok(())) => {
                    registry.metrics().observe_commit(
                        batch.upserts.len() + batch.deletes.len(),
                        started.elapsed(),
                    );
                    readiness.set_commit_failing(false);
                    break;
                }
                Ok(Err(crate::store::StoreError::Lost(shards))) if fenced.is_some() => {
                    // Not ours any more: let them go (their streams end
                    // before this commit is marked done) and write the rest.
                    let fenced = fenced.as_ref().expect("checked");
                    tracing::warn!(shards = ?shards, "a write was refused: these shards are now another server's");
                    fenced.lost(&shards);
                    let keep = |k: &ArcStr| !fenced.in_shards(k, &shards);
                    batch = Arc::new(crate::registry::DirtyBatch {
                        epoch: batch.epoch,
                        upserts: batch
                            .upserts
                            .iter()
                            .filter(|(k, _)| keep(k))
                            .cloned()
                            .collect(),
                        deletes: batch.deletes.iter().filter(|k| keep(k)).cloned().collect(),
                    });
                    continue;
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, retry_in_ms = backoff.as_millis() as u64, "commit failed")
                }
                Err(e) => tracing::error!(error = %e, "commit task failed"),
            }
            registry.metrics().count_commit_failure();
            readiness.set_commit_failing(true);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        registry.mark_committed(batch.epoch);
        if last {
            tracing::info!("state committed");
            return;
        }
    }
}
