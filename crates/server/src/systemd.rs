//! systemd's service notifications (`sd_notify`), for a unit with
//! `Type=notify` and `WatchdogSec=`: `READY=1` once the server serves,
//! `WATCHDOG=1` at half the watchdog interval for as long as the runtime
//! runs (a wedged runtime stops the pings and systemd restarts the server),
//! and `STOPPING=1` when it begins to stop. Without `NOTIFY_SOCKET` (not
//! started by systemd) nothing is sent; elsewhere than Linux, nothing at all.

use std::future::Future;

/// Tells systemd the server is ready.
pub fn ready() {
    #[cfg(target_os = "linux")]
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "cannot tell systemd the server is ready");
    }
}

/// Tells systemd the server is stopping.
pub fn stopping() {
    #[cfg(target_os = "linux")]
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Stopping]) {
        tracing::warn!(error = %e, "cannot tell systemd the server is stopping");
    }
}

/// Pings systemd's watchdog at half its interval until `stop` resolves
/// (at once when no watchdog is asked for).
pub async fn watchdog(stop: impl Future<Output = ()>) {
    #[cfg(target_os = "linux")]
    {
        let Some(interval) = sd_notify::watchdog_enabled() else {
            return;
        };
        tracing::info!(
            interval_ms = interval.as_millis() as u64,
            "systemd watchdog on"
        );
        let mut tick = tokio::time::interval(interval / 2);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => return,
                _ = tick.tick() => {
                    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]) {
                        tracing::warn!(error = %e, "cannot ping systemd's watchdog");
                    }
                }
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    stop.await
}
