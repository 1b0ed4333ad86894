//! The audit log: one JSON line per denial, per forget and other admin
//! action, per reload, per stream ended by a revocation.
//!
//! Lines are written off the request path: [`Audit::record`] hands the line
//! to a writer task through a bounded channel and never waits; if the
//! writer falls behind (a full disk, a flood of denials), lines are dropped
//! and counted in `fleet_health_audit_dropped_total` rather than slowing
//! the server. The file is opened for appending (mode 0600), so an outside
//! rotation that moves it and sends SIGHUP... is not needed: the writer
//! reopens the file when it has been moved or removed.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// Lines waiting for the writer, at most.
const QUEUE: usize = 4096;

/// One audited event.
#[derive(Clone, Debug, Serialize)]
pub struct AuditEvent {
    /// `denied`, `admin`, `reload`, `revoked`, `started`.
    pub event: &'static str,
    /// Who (`agent/ID`, `ROLE/NAME`), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// `certificate` or `token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<&'static str>,
    /// The peer's address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<SocketAddr>,
    /// The gRPC path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpc: Option<&'static str>,
    /// The agent concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// `ok`, `permission_denied`, `unauthenticated`, `failed`, ...
    pub result: &'static str,
    /// The reason, as in `fleet_health_denials_total`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// Anything else worth keeping: the message the caller was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    #[serde(flatten)]
    event: &'a AuditEvent,
}

/// Where audit lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuditSink {
    /// Appended to this file.
    File(PathBuf),
    /// To the server's log, at target `audit` (when there is no file to
    /// write: a server with security on and neither `--audit-log` nor a
    /// data directory).
    Log,
}

/// The audit log handle. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Audit {
    tx: Option<mpsc::Sender<AuditEvent>>,
    metrics: Option<Arc<Metrics>>,
}

impl Audit {
    /// No audit log (security off).
    pub fn off() -> Audit {
        Audit {
            tx: None,
            metrics: None,
        }
    }

    /// An audit log to `sink`, with its writer task started. Fails if the
    /// file cannot be opened for appending.
    pub fn start(sink: AuditSink, metrics: Arc<Metrics>) -> std::io::Result<Audit> {
        let (tx, mut rx) = mpsc::channel::<AuditEvent>(QUEUE);
        match sink {
            AuditSink::File(path) => {
                let mut file = open(&path)?;
                tokio::task::spawn_blocking(move || {
                    while let Some(event) = rx.blocking_recv() {
                        if !path.exists() {
                            // Moved away by a rotation: start a new file.
                            match open(&path) {
                                Ok(f) => file = f,
                                Err(e) => {
                                    tracing::error!(error = %e, path = %path.display(), "cannot reopen the audit log")
                                }
                            }
                        }
                        let mut text = encode(&event);
                        text.push('\n');
                        if let Err(e) = file.write_all(text.as_bytes()) {
                            tracing::error!(error = %e, path = %path.display(), "cannot write the audit log");
                        }
                    }
                });
            }
            AuditSink::Log => {
                tokio::spawn(async move {
                    while let Some(event) = rx.recv().await {
                        tracing::info!(target: "audit", "{}", encode(&event));
                    }
                });
            }
        }
        Ok(Audit {
            tx: Some(tx),
            metrics: Some(metrics),
        })
    }

    /// Records `event` now, without waiting.
    pub fn record(&self, event: AuditEvent) {
        let Some(tx) = &self.tx else { return };
        if tx.try_send(event).is_err()
            && let Some(m) = &self.metrics
        {
            m.count_audit_dropped();
        }
    }
}

fn open(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot open the audit log {}: {e}", path.display()),
        )
    })
}

fn encode(event: &AuditEvent) -> String {
    let line = Line {
        time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        event,
    };
    serde_json::to_string(&line).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_json_with_the_time_first() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("audit.log");
        let audit = Audit::start(AuditSink::File(path.clone()), Arc::new(Metrics::default()))
            .expect("opens");
        audit.record(AuditEvent {
            event: "denied",
            identity: Some("reader/alice".into()),
            credential: Some("token"),
            peer: Some("127.0.0.1:5".parse().expect("addr")),
            rpc: Some("/fleethealth.v1.FleetService/ForgetAgent"),
            agent_id: None,
            result: "permission_denied",
            reason: Some("role"),
            detail: None,
        });
        drop(audit);
        let text = loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.ends_with('\n') {
                break text;
            }
            tokio::task::yield_now().await;
        };
        let v: serde_json::Value = serde_json::from_str(text.trim()).expect("json");
        assert!(text.starts_with("{\"time\":\""), "{text}");
        assert_eq!(v["identity"], "reader/alice");
        assert_eq!(v["peer"], "127.0.0.1:5");
        assert_eq!(v["result"], "permission_denied");
        assert!(v.get("agent_id").is_none());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)
                .expect("exists")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
