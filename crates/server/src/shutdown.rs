//! How the server stops: one signal that every part waits on, and the drain
//! deadline after which the connections still open are cut.
//!
//! The order, from the moment the caller's shutdown future resolves:
//! 1. health checks answer NOT_SERVING and the listeners stop accepting;
//! 2. [`Stop::begin`] tells every part: agent streams and watches end with
//!    UNAVAILABLE (reconnect), the timer task and the HTTP endpoint stop;
//! 3. requests in flight are answered, and streams waiting for a commit get
//!    their acks;
//! 4. if connections are still open when the drain deadline passes (a client
//!    that has stopped reading holds its HTTP/2 stream open for ever), they
//!    are cut;
//! 5. the committer writes what is left and the store is closed.

use std::time::Duration;

use tokio::sync::watch;

use crate::net::Connections;

/// The stop signal: a cheap handle, one sender for the whole server.
#[derive(Clone, Debug)]
pub struct Stop {
    tx: watch::Sender<bool>,
}

impl Default for Stop {
    fn default() -> Stop {
        Stop::new()
    }
}

impl Stop {
    /// A signal not yet given.
    pub fn new() -> Stop {
        Stop {
            tx: watch::Sender::new(false),
        }
    }

    /// Gives the signal (again is harmless).
    pub fn begin(&self) {
        self.tx.send_replace(true);
    }

    /// A receiver for parts that take one (the services); [`stopped`] waits on it.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }

    /// Resolves once the signal is given.
    pub async fn given(&self) {
        stopped(&mut self.subscribe()).await;
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Once `stop` is given, waits `drain` and then cuts every connection still
/// open. Run it beside the servers; it has nothing to do (and is dropped)
/// when they finish first.
pub async fn enforce_deadline(stop: Stop, drain: Duration, connections: Connections) {
    stop.given().await;
    tokio::time::sleep(drain).await;
    let open = connections.cut_all();
    if open > 0 {
        tracing::warn!(
            connections = open,
            drain_timeout_ms = drain.as_millis() as u64,
            "drain deadline passed: connections still open are cut"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_deadline_counts_from_the_signal() {
        let stop = Stop::new();
        let connections = Connections::new();
        let task = tokio::spawn(enforce_deadline(
            stop.clone(),
            Duration::from_secs(10),
            connections.clone(),
        ));
        // No signal: an hour passes and nothing is cut.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(!task.is_finished());
        let started = tokio::time::Instant::now();
        stop.begin();
        task.await.expect("ends");
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test]
    async fn every_receiver_sees_the_signal() {
        let stop = Stop::new();
        let mut early = stop.subscribe();
        stop.begin();
        stopped(&mut early).await;
        // A receiver made after the signal sees it too.
        stopped(&mut stop.subscribe()).await;
        stop.given().await;
    }
}
