//! The journal: which agents changed since the last commit, for the
//! committer that writes them to the store, and the number of the last
//! commit, for streams that acknowledge only what is committed.
//!
//! - The journal is always there. A registry built with
//!   [`Registry::durable`] journals every change and its streams wait for the
//!   commit; one built with [`Registry::new`] keeps its state in memory only,
//!   so it journals nothing: every change is final at once (commit 0) and no
//!   committer runs. That choice is made once, here.
//! - Each changed agent is queued once (its `dirty` flag) however often it
//!   changes before the committer takes the batch; the committer encodes its
//!   latest record then.
//! - Lock: one mutex over the queue, a leaf lock taken under an agent's map
//!   entry; [`Registry::take_dirty`] releases it before touching agents.

use crate::model::ArcStr;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::agent::Agent;
use super::{Registry, lock, record};
use crate::commit_gate::CommitGate;

/// What the committer writes: the latest record of each changed agent.
#[derive(Debug, Default)]
pub struct DirtyBatch {
    /// The commit these belong to.
    pub epoch: u64,
    /// Encoded records of agents that exist.
    pub upserts: Vec<(ArcStr, Vec<u8>)>,
    /// Agents forgotten.
    pub deletes: Vec<ArcStr>,
}

/// Changed agents waiting for the committer.
#[derive(Debug)]
struct Pending {
    keys: Vec<ArcStr>,
    /// The commit that the queued keys will go into.
    epoch: u64,
}

/// Group-commit bookkeeping.
#[derive(Debug)]
pub(super) struct Journal {
    /// Whether changes wait for a store (see the module docs).
    durable: bool,
    pending: Mutex<Pending>,
    wake: Notify,
    committed: Arc<CommitGate>,
}

impl Journal {
    /// A journal for a durable registry, or one that journals nothing.
    pub(super) fn new(durable: bool) -> Journal {
        Journal {
            durable,
            pending: Mutex::new(Pending {
                keys: Vec::new(),
                epoch: 1,
            }),
            wake: Notify::new(),
            committed: Arc::new(CommitGate::new()),
        }
    }

    /// Queues a changed agent for the committer; returns the commit that will
    /// hold the change (0: nothing to wait for). Called under the agent's
    /// entry.
    pub(super) fn changed(&self, key: &ArcStr, a: &mut Agent) -> u64 {
        if !self.durable {
            return 0;
        }
        let mut pending = lock(&self.pending);
        if !a.dirty() {
            a.set_dirty(true);
            pending.keys.push(key.clone());
        }
        // If the agent was already queued, its entry is in this batch or in
        // one being written now (which may or may not hold this change): this
        // batch is the latest that may be needed.
        let epoch = pending.epoch;
        drop(pending);
        self.wake.notify_one();
        epoch
    }

    /// Queues a forgotten agent for the committer.
    pub(super) fn removed(&self, key: &ArcStr) {
        if self.durable {
            lock(&self.pending).keys.push(key.clone());
            self.wake.notify_one();
        }
    }
}

impl Journal {
    /// Drops the queued changes of the agents for which `gone` holds.
    pub(super) fn discard(&self, gone: &dyn Fn(&str) -> bool) {
        lock(&self.pending).keys.retain(|k| !gone(k));
    }
}

impl Registry {
    /// Asks the committer to write what is queued now, and returns the
    /// commit that will hold it: once the commit gate has passed it,
    /// everything changed before this call is in the store.
    pub fn flush(&self) -> u64 {
        let journal = &self.inner.journal;
        let epoch = lock(&journal.pending).epoch;
        journal.wake.notify_one();
        epoch
    }

    /// Waits until something is queued for the committer (forever, for a
    /// registry that journals nothing).
    pub async fn dirty(&self) {
        self.inner.journal.wake.notified().await
    }

    /// Takes what is queued for the committer: the latest record of each
    /// changed agent, and the forgotten ones.
    pub fn take_dirty(&self) -> DirtyBatch {
        let journal = &self.inner.journal;
        let (keys, epoch) = {
            let mut pending = lock(&journal.pending);
            let keys = std::mem::take(&mut pending.keys);
            let epoch = pending.epoch;
            pending.epoch += 1;
            (keys, epoch)
        };
        let mut batch = DirtyBatch {
            epoch,
            ..DirtyBatch::default()
        };
        for key in keys {
            match self.inner.agents.get_mut(&key) {
                Some(mut a) => {
                    if a.dirty() {
                        a.set_dirty(false);
                        let ops = self.ops_record(&key);
                        batch.upserts.push((key, record::encode(&a, ops)));
                    }
                }
                None => batch.deletes.push(key),
            }
        }
        batch
    }

    /// Records that every batch up to `epoch` is committed.
    pub fn mark_committed(&self, epoch: u64) {
        self.inner.journal.committed.mark_committed(epoch);
    }

    /// Where streams wait for the commit of their own events (`None` for a
    /// registry that journals nothing: there is nothing to wait for).
    pub fn commits(&self) -> Option<Arc<CommitGate>> {
        let journal = &self.inner.journal;
        journal.durable.then(|| journal.committed.clone())
    }
}
