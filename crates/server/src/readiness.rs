//! Whether the server is ready for traffic, for `/readyz` (and a load
//! balancer or Kubernetes' readiness probe): not while it is starting, not
//! while it is draining to stop, and not while its store cannot commit
//! (acknowledgements wait for commits: an agent sent there would wait).
//! `/healthz` stays the cheap liveness answer.
//!
//! A cluster node is also not ready until its first round with the
//! cluster's database, and while its rounds fail: its shards then move to
//! other nodes, and a load balancer should send agents there.
//!
//! No lock: four flags.

use std::sync::atomic::{AtomicBool, Ordering};

/// The server's readiness.
#[derive(Debug, Default)]
pub struct Readiness {
    serving: AtomicBool,
    draining: AtomicBool,
    commit_failing: AtomicBool,
    /// A cluster node that has not yet taken part, or has lost contact
    /// with the cluster's database.
    cluster_out: AtomicBool,
}

impl Readiness {
    /// Not ready yet: the server is starting.
    pub fn new() -> Readiness {
        Readiness::default()
    }

    /// The server serves requests now.
    pub fn set_serving(&self) {
        self.serving.store(true, Ordering::Release);
    }

    /// The server is draining to stop.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// The last commit failed (`true`) or succeeded (`false`).
    pub fn set_commit_failing(&self, failing: bool) {
        self.commit_failing.store(failing, Ordering::Release);
    }

    /// A cluster node's last round with the database succeeded (`false`) or
    /// failed, or none has yet (`true`).
    pub fn set_cluster_out(&self, out: bool) {
        self.cluster_out.store(out, Ordering::Release);
    }

    /// Ready, or why not (each reason a short sentence).
    pub fn check(&self) -> Result<(), Vec<&'static str>> {
        let mut not = Vec::new();
        if !self.serving.load(Ordering::Acquire) {
            not.push("starting");
        }
        if self.draining.load(Ordering::Acquire) {
            not.push("draining: the server is stopping");
        }
        if self.commit_failing.load(Ordering::Acquire) {
            not.push("the store cannot commit (acknowledgements wait): see the log and fleet_health_store_commit_failures_total");
        }
        if self.cluster_out.load(Ordering::Acquire) {
            not.push("cluster: not in contact with the cluster's database (its shards are served elsewhere)");
        }
        if not.is_empty() { Ok(()) } else { Err(not) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_while_serving_and_committing() {
        let r = Readiness::new();
        assert_eq!(r.check(), Err(vec!["starting"]));
        r.set_serving();
        assert_eq!(r.check(), Ok(()));
        r.set_commit_failing(true);
        assert!(r.check().unwrap_err()[0].contains("cannot commit"));
        r.set_commit_failing(false);
        assert_eq!(r.check(), Ok(()));
        r.set_draining();
        assert!(r.check().unwrap_err()[0].starts_with("draining"));
    }
}
