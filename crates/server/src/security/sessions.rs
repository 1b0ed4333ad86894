//! The open Report streams and watches, by the credential they were opened
//! with: how a revoked certificate or a removed token loses what it has open.
//!
//! Each long-lived stream registers here ([`Sessions::open`]) and listens to
//! its [`EndSignal`]. [`run`] checks every open credential again when the
//! TLS files or the tokens file are reloaded, and every second for expiries;
//! a credential that no longer holds ends its streams with UNAUTHENTICATED,
//! one audit line and one count each.
//!
//! Lock: the table's mutex, held to add or remove one entry, and during a
//! sweep to collect the entries (the checks run outside it).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_health_auth::Identity;

use super::{AuditEvent, Caller, Credential, Security};
use crate::open_streams::{EndSignal, Ended};

/// How often credentials are checked for expiry when nothing is reloaded.
pub const EXPIRY_CHECK_EVERY: Duration = Duration::from_secs(1);

/// The open streams by credential. Cloning shares the table.
#[derive(Clone, Debug, Default)]
pub struct Sessions {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Open>>,
}

#[derive(Debug, Clone)]
struct Open {
    identity: Arc<Identity>,
    credential: Credential,
    peer: Option<SocketAddr>,
    rpc: &'static str,
    signal: Arc<EndSignal>,
}

/// A registered stream: removed from the table when dropped.
#[derive(Debug)]
pub struct SessionGuard {
    id: u64,
    sessions: Sessions,
    signal: Arc<EndSignal>,
}

impl SessionGuard {
    /// Resolves when the stream's credential no longer holds.
    pub async fn revoked(&self) {
        self.signal.ended().await;
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.sessions.table().remove(&self.id);
    }
}

impl Sessions {
    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Open>> {
        self.inner
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a stream of `caller` on `rpc`.
    pub fn open(&self, caller: &Caller, rpc: &'static str) -> SessionGuard {
        let id = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let signal = Arc::new(EndSignal::default());
        self.table().insert(
            id,
            Open {
                identity: caller.identity.clone(),
                credential: caller.credential.clone(),
                peer: caller.peer,
                rpc,
                signal: signal.clone(),
            },
        );
        SessionGuard {
            id,
            sessions: self.clone(),
            signal,
        }
    }

    /// How many streams are registered.
    pub fn len(&self) -> usize {
        self.table().len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks every open credential now; ends the streams whose credential
    /// no longer holds, and returns how many. `full`: against the trust
    /// bundle, CRLs and tokens file in force (a signature check per
    /// certificate: after a reload); otherwise only whether it has expired
    /// (a comparison: every second).
    pub fn sweep(&self, security: &Security, full: bool) -> usize {
        let open: Vec<(u64, Open)> = self
            .table()
            .iter()
            .map(|(id, o)| (*id, o.clone()))
            .collect();
        let mut ended = 0;
        for (id, o) in open {
            let failed = if full {
                security.still_valid(&o.credential, &o.identity).err()
            } else {
                security.expired(&o.credential)
            };
            if let Some(why) = failed {
                // Out of the table at once: ended once, counted once.
                if self.table().remove(&id).is_none() {
                    continue;
                }
                o.signal.end(Ended::Revoked);
                ended += 1;
                security.metrics().count_revoked();
                security.audit().record(AuditEvent {
                    event: "revoked",
                    identity: Some(o.identity.to_string()),
                    credential: Some(o.credential.kind()),
                    peer: o.peer,
                    rpc: Some(o.rpc),
                    agent_id: match &*o.identity {
                        Identity::Agent(id) => Some(id.to_string()),
                        Identity::Holder { .. } => None,
                    },
                    result: "unauthenticated",
                    reason: None,
                    detail: Some(why.clone()),
                });
                tracing::info!(identity = %o.identity, rpc = o.rpc, reason = %why, "stream ended: its credential no longer holds");
            }
        }
        ended
    }
}

/// Sweeps fully on every reload of the TLS files or the tokens file (off
/// the runtime's threads: a signature check per open certificate), and for
/// expiries every [`EXPIRY_CHECK_EVERY`], until `stop` resolves.
pub async fn run(security: Arc<Security>, stop: impl Future<Output = ()>) {
    if !security.enabled() {
        return;
    }
    let mut tls = security.tls().map(|t| t.subscribe());
    let mut tokens = security.tokens().map(|t| t.subscribe());
    let mut tick = tokio::time::interval(EXPIRY_CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        let full = tokio::select! {
            () = &mut stop => return,
            _ = tick.tick() => false,
            Ok(()) = changed(&mut tls) => true,
            Ok(()) = changed(&mut tokens) => true,
        };
        if security.sessions().is_empty() {
            continue;
        }
        if full {
            let security = security.clone();
            let _ = tokio::task::spawn_blocking(move || security.sessions().sweep(&security, true))
                .await;
        } else {
            security.sessions().sweep(&security, false);
        }
    }
}

async fn changed(
    rx: &mut Option<tokio::sync::watch::Receiver<u64>>,
) -> Result<(), tokio::sync::watch::error::RecvError> {
    match rx {
        Some(rx) => rx.changed().await,
        None => std::future::pending().await,
    }
}
