//! `fleethealth.v1.AdminService`: the server's own state. `Backup` streams
//! a consistent copy of the durable store (a read snapshot taken off the
//! async workers, sent in chunks as the caller takes them) while the server
//! goes on serving and committing.

use std::pin::Pin;
use std::sync::Arc;

use fleet_health_proto::v1 as pb;
use fleet_health_proto::v1::admin_service_server::AdminService as AdminServiceApi;
use futures_util::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::store::{AgentStore, FORMAT_VERSION};

/// Records in one backup chunk.
const CHUNK: usize = 1000;

/// The `fleethealth.v1.AdminService`.
pub struct AdminService {
    store: Option<Arc<dyn AgentStore>>,
}

impl AdminService {
    /// A service over `store` (`None`: a server in memory, with nothing to
    /// back up).
    pub fn new(store: Option<Arc<dyn AgentStore>>) -> AdminService {
        AdminService { store }
    }
}

type Chunks = Pin<Box<dyn Stream<Item = Result<pb::BackupChunk, Status>> + Send>>;

#[tonic::async_trait]
impl AdminServiceApi for AdminService {
    type BackupStream = Chunks;

    async fn backup(&self, _: Request<pb::BackupRequest>) -> Result<Response<Chunks>, Status> {
        let store = self.store.clone().ok_or_else(|| {
            Status::failed_precondition(
                "this server keeps its state in memory only (--in-memory): there is nothing to back up",
            )
        })?;
        let (tx, rx) = mpsc::channel::<Result<pb::BackupChunk, Status>>(4);
        tokio::task::spawn_blocking(move || {
            let mut chunk = Vec::with_capacity(CHUNK);
            let mut total = 0u64;
            let mut gone = false;
            let read = store.snapshot(&mut |k, v| {
                chunk.push(pb::StoredRecord {
                    agent_id: k.to_owned(),
                    record: v.to_vec(),
                });
                total += 1;
                if chunk.len() == CHUNK {
                    let records = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
                    let sent = tx.blocking_send(Ok(pb::BackupChunk {
                        format_version: FORMAT_VERSION,
                        records,
                        total: 0,
                        last: false,
                    }));
                    // The caller went away: stop reading.
                    gone = sent.is_err();
                }
                !gone
            });
            let last = match read {
                Ok(()) if !gone => Ok(pb::BackupChunk {
                    format_version: FORMAT_VERSION,
                    records: chunk,
                    total,
                    last: true,
                }),
                Ok(()) => return,
                Err(e) => {
                    tracing::error!(error = %e, "backup failed");
                    Err(Status::internal(format!("reading the store failed: {e}")))
                }
            };
            if last.is_ok() {
                tracing::info!(records = total, "backup sent");
            }
            let _ = tx.blocking_send(last);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
