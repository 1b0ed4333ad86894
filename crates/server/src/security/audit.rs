//! The audit log: one JSON line per denial, per forget and other admin
//! action, per reload, per stream ended by a revocation.
//!
//! Lines are written off the request path: [`Audit::record`] hands the line
//! to a writer task through a bounded channel and never waits; if the
//! writer falls behind (a full disk, a flood of denials), lines are dropped
//! and counted in `fleet_health_audit_dropped_total` rather than slowing
//! the server. The file is opened for appending (mode 0600); after an
//! outside rotation has moved or removed it, the writer opens a new file at
//! the same path on the next line (no signal needed).

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
    /// `denied`, `admin`, `reload`, `revoked`.
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

/// An event with the time it happened (not the time it is written).
type Stamped = (SystemTime, AuditEvent);

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
    tx: Option<mpsc::Sender<Stamped>>,
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
        let (tx, mut rx) = mpsc::channel::<Stamped>(QUEUE);
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
                        let mut text = encode(&event.0, &event.1);
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
                        tracing::info!(target: "audit", "{}", encode(&event.0, &event.1));
                    }
                });
            }
        }
        Ok(Audit {
            tx: Some(tx),
            metrics: Some(metrics),
        })
    }

    /// Records `event`, stamped with the time now, without waiting: when the
    /// queue is full the line is dropped and counted.
    pub fn record(&self, event: AuditEvent) {
        let Some(tx) = &self.tx else { return };
        if tx.try_send((SystemTime::now(), event)).is_err()
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

fn encode(time: &SystemTime, event: &AuditEvent) -> String {
    let line = Line {
        time: humantime::format_rfc3339_millis(*time).to_string(),
        event,
    };
    serde_json::to_string(&line).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::FleetGauges;

    fn event(identity: &str) -> AuditEvent {
        AuditEvent {
            event: "denied",
            identity: Some(identity.into()),
            credential: None,
            peer: None,
            rpc: None,
            agent_id: None,
            result: "unauthenticated",
            reason: None,
            detail: None,
        }
    }

    fn dropped(metrics: &Metrics) -> String {
        let text = metrics.render(&FleetGauges::default());
        text.lines()
            .find_map(|l| l.strip_prefix("fleet_health_audit_dropped_total "))
            .expect("the series")
            .to_string()
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let metrics = Arc::new(Metrics::default());
        // A writer that takes nothing: the queue of one fills at once.
        let (tx, mut rx) = mpsc::channel::<Stamped>(1);
        let audit = Audit {
            tx: Some(tx),
            metrics: Some(metrics.clone()),
        };
        audit.record(event("reader/a"));
        audit.record(event("reader/b"));
        audit.record(event("reader/c"));
        assert_eq!(dropped(&metrics), "2");
        let (_, kept) = rx.try_recv().expect("the first line");
        assert_eq!(kept.identity.as_deref(), Some("reader/a"));
        assert!(rx.try_recv().is_err());
    }

    /// Reads `path` until it holds `lines` whole lines.
    async fn lines(path: &std::path::Path, lines: usize) -> Vec<serde_json::Value> {
        let wait = async {
            loop {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                if text.ends_with('\n') && text.lines().count() >= lines {
                    break text;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        };
        let text = tokio::time::timeout(std::time::Duration::from_secs(5), wait)
            .await
            .expect("the lines are written");
        text.lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect()
    }

    #[tokio::test]
    async fn a_rotated_file_is_started_again_at_its_path() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("audit.log");
        let audit = Audit::start(AuditSink::File(path.clone()), Arc::new(Metrics::default()))
            .expect("opens");
        audit.record(event("reader/before"));
        assert_eq!(lines(&path, 1).await[0]["identity"], "reader/before");
        let rotated = dir.path().join("audit.log.1");
        std::fs::rename(&path, &rotated).expect("rotate");
        audit.record(event("reader/after"));
        let after = lines(&path, 1).await;
        assert_eq!(after.len(), 1);
        assert_eq!(after[0]["identity"], "reader/after");
        let old = std::fs::read_to_string(&rotated).expect("rotated file");
        assert_eq!(old.lines().count(), 1, "{old}");
    }

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
