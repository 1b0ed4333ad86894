//! Settings read from files that change while the server runs: the TLS
//! certificate, key, trust bundle and CRLs, and the tokens file.
//!
//! A [`Reloadable`] holds the value built from its files and swaps it for a
//! new one when the files change (their contents are compared every second,
//! which follows a Kubernetes Secret's symlink swap as well as an edit in
//! place) or on SIGHUP. A file that does not parse keeps the old value, and
//! the failure is logged with its cause and counted in
//! `fleet_health_reloads_total{result="failed"}`; the next change tries again.
//! Readers take the current value with one atomic load ([`arc_swap`]), and
//! may subscribe to the generation, which rises with each successful reload.
//!
//! Lock: the file stamps, held only while they are compared and replaced;
//! never while the value is read.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::metrics::{Metrics, ReloadResult, Reloaded};

/// How often the files are compared with what was last loaded.
pub const POLL_EVERY: Duration = Duration::from_secs(1);

/// Builds the value from the files: the error names the file and says why.
pub type Loader<T> = Box<dyn Fn() -> Result<T, String> + Send + Sync>;

/// A value built from files, swapped when they change.
pub struct Reloadable<T> {
    what: Reloaded,
    files: Vec<PathBuf>,
    loader: Loader<T>,
    current: ArcSwap<T>,
    generation: watch::Sender<u64>,
    /// What the files held when last looked at (a hash of each one's bytes,
    /// `None` for a file that could not be read).
    stamps: Mutex<Vec<Option<u64>>>,
    metrics: Arc<Metrics>,
}

impl<T> std::fmt::Debug for Reloadable<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloadable")
            .field("what", &self.what)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl<T: Send + Sync + 'static> Reloadable<T> {
    /// Loads the value for the first time: an error here stops the server
    /// from starting.
    pub fn load(
        what: Reloaded,
        files: Vec<PathBuf>,
        loader: Loader<T>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Reloadable<T>>, String> {
        let stamps = stamps(&files);
        let value = loader()?;
        Ok(Arc::new(Reloadable {
            what,
            files,
            loader,
            current: ArcSwap::from_pointee(value),
            generation: watch::Sender::new(0),
            stamps: Mutex::new(stamps),
            metrics,
        }))
    }

    /// The value now.
    pub fn current(&self) -> Arc<T> {
        self.current.load_full()
    }

    /// The generation: it rises with each successful reload.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Builds the value again from the files, whether or not they changed.
    /// On failure the old value stays.
    pub fn reload_now(&self) -> Result<(), String> {
        let stamps = stamps(&self.files);
        *self.stamps.lock().unwrap_or_else(|e| e.into_inner()) = stamps;
        match (self.loader)() {
            Ok(value) => {
                self.current.store(Arc::new(value));
                self.generation.send_modify(|g| *g += 1);
                self.metrics.count_reload(self.what, ReloadResult::Ok);
                tracing::info!(what = self.what.as_str(), files = ?self.files, "reloaded");
                Ok(())
            }
            Err(e) => {
                self.metrics.count_reload(self.what, ReloadResult::Failed);
                tracing::error!(
                    what = self.what.as_str(),
                    error = %e,
                    "reload failed; the previous configuration stays in force"
                );
                Err(e)
            }
        }
    }

    /// Reloads if any file's contents changed since last looked at; returns
    /// whether it tried.
    pub fn reload_if_changed(&self) -> Option<Result<(), String>> {
        let now = stamps(&self.files);
        let changed = *self.stamps.lock().unwrap_or_else(|e| e.into_inner()) != now;
        changed.then(|| self.reload_now())
    }

    /// What it reloads, for the audit log.
    pub fn what(&self) -> Reloaded {
        self.what
    }
}

fn stamps(files: &[PathBuf]) -> Vec<Option<u64>> {
    files
        .iter()
        .map(|f| {
            std::fs::read(f).ok().map(|bytes| {
                let mut h = DefaultHasher::new();
                bytes.hash(&mut h);
                h.finish()
            })
        })
        .collect()
}

/// Something to reload, whatever its value.
pub trait Reload: Send + Sync {
    /// Builds it again now.
    fn reload_now(&self) -> Result<(), String>;
    /// Builds it again if its files changed.
    fn reload_if_changed(&self) -> Option<Result<(), String>>;
    /// What it is.
    fn what(&self) -> Reloaded;
}

impl<T: Send + Sync + 'static> Reload for Reloadable<T> {
    fn reload_now(&self) -> Result<(), String> {
        Reloadable::reload_now(self)
    }
    fn reload_if_changed(&self) -> Option<Result<(), String>> {
        Reloadable::reload_if_changed(self)
    }
    fn what(&self) -> Reloaded {
        Reloadable::what(self)
    }
}

/// Reloads each of `all` when its files change, and all of them on SIGHUP,
/// until `stop` resolves. `then` hears of every attempt (the audit log).
pub async fn watch_files(
    all: Vec<Arc<dyn Reload>>,
    then: impl Fn(Reloaded, &Result<(), String>) + Send,
    stop: impl Future<Output = ()>,
) {
    if all.is_empty() {
        return;
    }
    let mut hup = sighup();
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = tick.tick() => {
                for r in &all {
                    if let Some(result) = r.reload_if_changed() {
                        then(r.what(), &result);
                    }
                }
            }
            Some(()) = recv(&mut hup) => {
                tracing::info!("SIGHUP: reloading certificates and tokens");
                for r in &all {
                    let result = r.reload_now();
                    then(r.what(), &result);
                }
            }
        }
    }
}

/// Takes SIGHUP over from its default action (which ends the process), at
/// once: call it before the server says it is listening, so that a reload
/// asked for right after the start never stops the server. A SIGHUP that
/// comes before [`watch_files`] listens is then ignored (the files are
/// still compared every second). Needs a Tokio runtime.
pub fn install_sighup() {
    #[cfg(unix)]
    drop(sighup());
}

#[cfg(unix)]
fn sighup() -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; files are still watched");
            None
        }
    }
}

#[cfg(unix)]
async fn recv(hup: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match hup {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
fn sighup() -> Option<()> {
    None
}

#[cfg(not(unix))]
async fn recv(_: &mut Option<()>) -> Option<()> {
    std::future::pending().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number_file(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let path = dir.path().join("n");
        std::fs::write(&path, text).expect("writes");
        path
    }

    fn loader(path: PathBuf) -> Loader<u32> {
        Box::new(move || {
            let text = std::fs::read_to_string(&path).map_err(|e| format!("{path:?}: {e}"))?;
            text.trim()
                .parse()
                .map_err(|e| format!("{path:?}: not a number: {e}"))
        })
    }

    #[test]
    fn a_change_is_picked_up_and_a_broken_file_keeps_the_old_value() {
        let dir = tempfile::tempdir().expect("dir");
        let path = number_file(&dir, "1");
        let metrics = Arc::new(Metrics::default());
        let r = Reloadable::load(
            Reloaded::Tokens,
            vec![path.clone()],
            loader(path.clone()),
            metrics.clone(),
        )
        .expect("loads");
        let generation = r.subscribe();
        assert_eq!(*r.current(), 1);
        assert!(r.reload_if_changed().is_none(), "nothing changed");

        std::fs::write(&path, "2").expect("writes");
        assert_eq!(r.reload_if_changed(), Some(Ok(())));
        assert_eq!(*r.current(), 2);
        assert_eq!(*generation.borrow(), 1);

        std::fs::write(&path, "two").expect("writes");
        let err = r.reload_if_changed().expect("tried").expect_err("broken");
        assert!(err.contains("not a number"), "{err}");
        assert_eq!(*r.current(), 2, "the old value stays");
        assert_eq!(*generation.borrow(), 1);
        // Tried once for that content; not again until it changes.
        assert!(r.reload_if_changed().is_none());

        let text = metrics.render(&crate::metrics::FleetGauges::default());
        assert!(
            text.contains("fleet_health_reloads_total{what=\"tokens\",result=\"ok\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("fleet_health_reloads_total{what=\"tokens\",result=\"failed\"} 1\n"));
    }

    #[test]
    fn a_broken_file_at_start_is_an_error() {
        let dir = tempfile::tempdir().expect("dir");
        let path = number_file(&dir, "x");
        let err = Reloadable::load(
            Reloaded::Tls,
            vec![path.clone()],
            loader(path),
            Arc::new(Metrics::default()),
        )
        .expect_err("does not load");
        assert!(err.contains("not a number"));
    }

    type Heard = Arc<Mutex<Vec<(Reloaded, Result<(), String>)>>>;

    fn watching(
        r: &Arc<Reloadable<u32>>,
    ) -> (Heard, crate::shutdown::Stop, tokio::task::JoinHandle<()>) {
        let heard: Heard = Arc::default();
        let stop = crate::shutdown::Stop::new();
        let task = tokio::spawn({
            let (all, heard, stop): (Vec<Arc<dyn Reload>>, _, _) =
                (vec![r.clone()], heard.clone(), stop.clone());
            async move {
                watch_files(
                    all,
                    move |what, result| heard.lock().expect("lock").push((what, result.clone())),
                    stop.given(),
                )
                .await;
            }
        });
        (heard, stop, task)
    }

    #[tokio::test(start_paused = true)]
    async fn the_files_are_polled_until_stopped() {
        let dir = tempfile::tempdir().expect("dir");
        let path = number_file(&dir, "1");
        let metrics = Arc::new(Metrics::default());
        let r = Reloadable::load(
            Reloaded::Tokens,
            vec![path.clone()],
            loader(path.clone()),
            metrics,
        )
        .expect("loads");
        let mut generation = r.subscribe();
        let (heard, stop, task) = watching(&r);
        // A few polls with nothing changed: nothing is reloaded.
        tokio::time::sleep(POLL_EVERY * 3 + POLL_EVERY / 2).await;
        assert!(heard.lock().expect("lock").is_empty());

        std::fs::write(&path, "7").expect("writes");
        let before = tokio::time::Instant::now();
        tokio::time::timeout(POLL_EVERY * 2, generation.changed())
            .await
            .expect("picked up at the next poll")
            .expect("open");
        assert!(before.elapsed() <= POLL_EVERY);
        assert_eq!(*r.current(), 7);
        assert_eq!(
            heard.lock().expect("lock").as_slice(),
            &[(Reloaded::Tokens, Ok(()))]
        );

        stop.begin();
        tokio::time::timeout(POLL_EVERY * 2, task)
            .await
            .expect("stops")
            .expect("ends");
    }

    #[cfg(unix)]
    #[test]
    fn a_kubernetes_secret_swapped_by_symlink_is_picked_up() {
        // As the kubelet updates a mounted Secret: the file is a link
        // through `..data`, itself a link swapped to a new folder.
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().expect("dir");
        let root = dir.path();
        std::fs::create_dir(root.join("..v1")).expect("mkdir");
        std::fs::write(root.join("..v1/n"), "1").expect("writes");
        symlink("..v1", root.join("..data")).expect("links");
        symlink("..data/n", root.join("n")).expect("links");
        let path = root.join("n");
        let r = Reloadable::load(
            Reloaded::Tls,
            vec![path.clone()],
            loader(path),
            Arc::new(Metrics::default()),
        )
        .expect("loads");
        assert_eq!(*r.current(), 1);

        std::fs::create_dir(root.join("..v2")).expect("mkdir");
        std::fs::write(root.join("..v2/n"), "2").expect("writes");
        symlink("..v2", root.join("..data_tmp")).expect("links");
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).expect("swaps");
        std::fs::remove_dir_all(root.join("..v1")).expect("removes the old");
        assert_eq!(r.reload_if_changed(), Some(Ok(())));
        assert_eq!(*r.current(), 2);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn sighup_reloads_even_when_nothing_changed() {
        use tokio::signal::unix::{SignalKind, signal};
        // A handler first, so that the signal never falls on the default
        // action (which ends the process).
        let _handler = signal(SignalKind::hangup()).expect("a handler");
        let dir = tempfile::tempdir().expect("dir");
        let path = number_file(&dir, "1");
        let r = Reloadable::load(
            Reloaded::Tokens,
            vec![path.clone()],
            loader(path),
            Arc::new(Metrics::default()),
        )
        .expect("loads");
        let mut generation = r.subscribe();
        let (heard, stop, task) = watching(&r);
        // The watcher listens once it has started: signal until it hears.
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let sent = std::process::Command::new("kill")
                    .args(["-HUP", &std::process::id().to_string()])
                    .status()
                    .expect("kill runs");
                assert!(sent.success());
                if tokio::time::timeout(Duration::from_millis(200), generation.changed())
                    .await
                    .is_ok()
                {
                    break;
                }
            }
        })
        .await
        .expect("SIGHUP reloads");
        assert_eq!(*r.current(), 1);
        assert!(
            heard
                .lock()
                .expect("lock")
                .iter()
                .all(|h| h == &(Reloaded::Tokens, Ok(())))
        );
        stop.begin();
        task.await.expect("ends");
    }
}
