//! Full connection set-ups per second: each one a new TCP connection, the
//! TLS handshake (with a client certificate, for mTLS) and the HTTP/2
//! handshake, then closed. `concurrency` of them at a time, `count` in all.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::LoadError;

/// What to run.
#[derive(Clone, Debug)]
pub struct HandshakeConfig {
    /// The server's URL.
    pub server: String,
    /// TLS settings.
    pub credentials: fleet_health_client::Credentials,
    /// Connections to set up in all.
    pub count: u64,
    /// At once.
    pub concurrency: u32,
    /// How long one may take.
    pub timeout: Duration,
}

/// What a run measured.
#[derive(Clone, Debug, Serialize)]
pub struct HandshakeReport {
    /// Connections set up.
    pub handshakes: u64,
    /// Failures.
    pub failed: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Set-ups per second.
    pub handshakes_per_second: f64,
    /// The first failure, if any.
    pub first_error: Option<String>,
}

/// Sets up `count` connections, `concurrency` at a time.
pub async fn handshakes(config: HandshakeConfig) -> Result<HandshakeReport, LoadError> {
    let endpoint =
        fleet_health_client::endpoint_with(&config.server, config.timeout, &config.credentials)?;
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..config.concurrency.max(1) {
        let (endpoint, next, done, failed, first_error) = (
            endpoint.clone(),
            next.clone(),
            done.clone(),
            failed.clone(),
            first_error.clone(),
        );
        let (count, timeout) = (config.count, config.timeout);
        tasks.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < count {
                match tokio::time::timeout(timeout, endpoint.connect()).await {
                    Ok(Ok(channel)) => {
                        drop(channel);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(e)) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        first_error
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert_with(|| crate::error_chain(&e));
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        first_error
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert_with(|| format!("no connection within {timeout:?}"));
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let seconds = started.elapsed().as_secs_f64();
    let handshakes = done.load(Ordering::Relaxed);
    let first_error = first_error.lock().unwrap_or_else(|e| e.into_inner()).take();
    Ok(HandshakeReport {
        handshakes,
        failed: failed.load(Ordering::Relaxed),
        seconds,
        handshakes_per_second: handshakes as f64 / seconds.max(1e-9),
        first_error,
    })
}
