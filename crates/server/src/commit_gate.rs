//! Where agent streams wait for their events to be committed.
//!
//! The registry numbers its group commits (epochs). A stream that applied
//! events waits for the epoch that will hold them; when the committer reports
//! an epoch written ([`CommitGate::mark_committed`]), exactly the streams
//! waiting for that epoch or an earlier one wake. A stream waiting for a later
//! epoch sleeps on.
//!
//! Lock: one mutex over the table of waited-for epochs, held only to add an
//! epoch or take the committed ones; the committed epoch can also be read
//! without it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;

/// The committed epoch, and one wake-up list per epoch still awaited.
#[derive(Debug, Default)]
pub struct CommitGate {
    /// The last committed epoch (every earlier one is committed too).
    committed: AtomicU64,
    /// Epochs some stream waits for, above `committed`.
    waiting: Mutex<BTreeMap<u64, Arc<Notify>>>,
}

impl CommitGate {
    /// A gate at epoch 0: nothing committed yet.
    pub fn new() -> CommitGate {
        CommitGate::default()
    }

    /// The last committed epoch.
    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::Acquire)
    }

    /// Whether `epoch` is committed.
    pub fn is_committed(&self, epoch: u64) -> bool {
        epoch <= self.committed()
    }

    /// A future that resolves once `epoch` is committed, or `None` if it
    /// already is. The future is woken only by a commit of `epoch` or later.
    pub fn wait(&self, epoch: u64) -> Option<OwnedNotified> {
        if self.is_committed(epoch) {
            return None;
        }
        let mut waiting = lock(&self.waiting);
        // Checked again under the lock: `mark_committed` raises the epoch
        // and takes the committed entries under it, so a commit is either
        // seen here or finds (and wakes) the entry made here.
        if self.is_committed(epoch) {
            return None;
        }
        let notify = waiting.entry(epoch).or_default().clone();
        // Made under the lock: a wake-up sent after the lock is released
        // reaches this future even before it is first polled.
        Some(notify.notified_owned())
    }

    /// Waits until `epoch` is committed.
    pub async fn committed_through(&self, epoch: u64) {
        // A spurious wake-up cannot happen (each epoch has its own list), but
        // the loop costs nothing and keeps the promise regardless.
        while let Some(wait) = self.wait(epoch) {
            wait.await;
        }
    }

    /// Records that every epoch up to `epoch` is committed and wakes the
    /// streams waiting for them (and no others). An older epoch than the
    /// last recorded changes nothing.
    pub fn mark_committed(&self, epoch: u64) {
        let woken = {
            let mut waiting = lock(&self.waiting);
            if self.committed.fetch_max(epoch, Ordering::AcqRel) >= epoch {
                return;
            }
            let later = match epoch.checked_add(1) {
                Some(next) => waiting.split_off(&next),
                None => BTreeMap::new(),
            };
            std::mem::replace(&mut *waiting, later)
        };
        for notify in woken.values() {
            notify.notify_waiters();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The table stays consistent whatever panicked while holding it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::sync::atomic::AtomicUsize;
    use std::task::{Context, Poll, Wake, Waker};

    use super::*;

    /// A waker that counts its wake-ups.
    #[derive(Default)]
    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn woken(c: &Arc<Counter>) -> usize {
        c.0.load(Ordering::SeqCst)
    }

    #[test]
    fn a_commit_wakes_exactly_the_waiters_of_its_epoch_and_earlier() {
        let gate = CommitGate::new();
        let (early, exact, later) = (
            Arc::new(Counter::default()),
            Arc::new(Counter::default()),
            Arc::new(Counter::default()),
        );
        let mut wait_1 = pin!(gate.wait(1).expect("not committed yet"));
        let mut wait_2 = pin!(gate.wait(2).expect("not committed yet"));
        let mut wait_3 = pin!(gate.wait(3).expect("not committed yet"));
        let (w1, w2, w3) = (
            Waker::from(early.clone()),
            Waker::from(exact.clone()),
            Waker::from(later.clone()),
        );
        assert!(
            wait_1
                .as_mut()
                .poll(&mut Context::from_waker(&w1))
                .is_pending()
        );
        assert!(
            wait_2
                .as_mut()
                .poll(&mut Context::from_waker(&w2))
                .is_pending()
        );
        assert!(
            wait_3
                .as_mut()
                .poll(&mut Context::from_waker(&w3))
                .is_pending()
        );

        gate.mark_committed(2);
        assert_eq!((woken(&early), woken(&exact), woken(&later)), (1, 1, 0));
        assert_eq!(
            wait_1.as_mut().poll(&mut Context::from_waker(&w1)),
            Poll::Ready(())
        );
        assert_eq!(
            wait_2.as_mut().poll(&mut Context::from_waker(&w2)),
            Poll::Ready(())
        );
        assert!(
            wait_3
                .as_mut()
                .poll(&mut Context::from_waker(&w3))
                .is_pending()
        );
        assert!(gate.is_committed(2) && !gate.is_committed(3));
        assert!(gate.wait(2).is_none(), "a committed epoch needs no wait");

        // An older report changes nothing and wakes no one.
        gate.mark_committed(1);
        assert_eq!(gate.committed(), 2);
        assert_eq!(woken(&later), 0);

        gate.mark_committed(3);
        assert_eq!(woken(&later), 1);
        assert_eq!(
            wait_3.as_mut().poll(&mut Context::from_waker(&w3)),
            Poll::Ready(())
        );
    }

    #[test]
    fn a_wait_made_before_the_commit_is_woken_even_if_not_yet_polled() {
        let gate = CommitGate::new();
        let counter = Arc::new(Counter::default());
        let mut wait = pin!(gate.wait(5).expect("not committed yet"));
        gate.mark_committed(7);
        let waker = Waker::from(counter);
        assert_eq!(
            wait.as_mut().poll(&mut Context::from_waker(&waker)),
            Poll::Ready(())
        );
        assert!(
            lock(&gate.waiting).is_empty(),
            "committed epochs are dropped"
        );
    }

    #[tokio::test]
    async fn committed_through_returns_once_the_epoch_is_written() {
        let gate = Arc::new(CommitGate::new());
        let waiter = tokio::spawn({
            let gate = gate.clone();
            async move { gate.committed_through(4).await }
        });
        gate.mark_committed(3);
        assert!(!waiter.is_finished());
        gate.mark_committed(4);
        waiter.await.expect("the waiter ends");
    }
}
