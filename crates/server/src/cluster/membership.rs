//! A node's part in the cluster: every tick it says it is alive, renews its
//! leases, works out which shards it should own (rendezvous hashing over the
//! live nodes), hands over those it should not, and takes those it should.
//!
//! What the node owns is an [`Ownership`], which the rest of the server
//! reads: a shard is served only while its lease is valid **by the node's
//! own monotonic clock**, counted from when the renewal was sent, which is
//! never later than the database's `now()` that set the lease. A node cut
//! off from the database therefore stops serving its shards before any other
//! node can take them.
//!
//! Taking and handing over need the registry: the loop sends an [`Event`]
//! and waits for the server to answer it (load the shard's agents, or write
//! what is left of them and drop them) before it marks a shard served, or
//! releases it.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::db::{Db, DbError, Held};
use super::shard;

/// How a node takes part.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The cluster's database (to connect again after a failure).
    pub url: String,
    /// The node's ID, unique in the cluster (stable across restarts).
    pub node: String,
    /// The address other nodes reach it on.
    pub address: String,
    /// How long a lease lasts from each renewal.
    pub lease: Duration,
    /// How often the loop runs (a fraction of the lease).
    pub tick: Duration,
    /// How much earlier than its lease a node stops serving a shard.
    pub margin: Duration,
}

impl Settings {
    /// Settings for `node` at `address`, over the database at `url`, with a
    /// lease of `lease`, renewed
    /// four times per lease, stopping a tenth of a lease early.
    pub fn new(
        url: impl Into<String>,
        node: impl Into<String>,
        address: impl Into<String>,
        lease: Duration,
    ) -> Settings {
        Settings {
            url: url.into(),
            node: node.into(),
            address: address.into(),
            lease,
            tick: lease / 4,
            margin: lease / 10,
        }
    }
}

/// The shards a node serves now, each with its epoch and until when (by
/// the node's monotonic clock) it may serve it.
#[derive(Debug, Default)]
pub struct Ownership {
    held: Mutex<BTreeMap<u32, (i64, Instant)>>,
    /// Each shard's owner (node, address) as last read from the database;
    /// `None` for a shard without a live owner (in takeover).
    routes: Mutex<Vec<Option<Route>>>,
}

/// A shard's owner: its node ID and the address it is reached on.
pub type Route = (Arc<str>, Arc<str>);

impl Ownership {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, (i64, Instant)>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `shard` is served now.
    pub fn serves(&self, shard: u32) -> bool {
        self.lock()
            .get(&shard)
            .is_some_and(|(_, until)| *until > Instant::now())
    }

    /// The shards served now, with their epochs: what a write is fenced
    /// with.
    pub fn held(&self) -> Vec<Held> {
        let now = Instant::now();
        self.lock()
            .iter()
            .filter(|(_, (_, until))| *until > now)
            .map(|(shard, (epoch, _))| Held {
                shard: *shard,
                epoch: *epoch,
            })
            .collect()
    }

    /// How many shards are served now.
    pub fn len(&self) -> usize {
        self.held().len()
    }

    /// Whether no shard is served.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The owner of `shard` (its node ID and address) as last read, if it
    /// has a live one.
    pub fn route(&self, shard: u32) -> Option<Route> {
        self.routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(shard as usize)
            .cloned()
            .flatten()
    }

    /// How many shards have no live owner, as last read.
    pub fn unowned(&self) -> usize {
        self.routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|r| r.is_none())
            .count()
    }

    fn set_routes(&self, routes: Vec<Option<Route>>) {
        *self.routes.lock().unwrap_or_else(|e| e.into_inner()) = routes;
    }

    /// Stops serving `shards` (a write for them was refused: another node
    /// holds them now).
    pub fn give_up(&self, shards: &[u32]) {
        let mut map = self.lock();
        for s in shards {
            map.remove(s);
        }
    }

    fn insert(&self, held: Held, until: Instant) {
        self.lock().insert(held.shard, (held.epoch, until));
    }

    fn extend(&self, shard: u32, until: Instant) {
        if let Some(entry) = self.lock().get_mut(&shard) {
            entry.1 = until;
        }
    }

    fn remove(&self, shard: u32) -> Option<Held> {
        self.lock()
            .remove(&shard)
            .map(|(epoch, _)| Held { shard, epoch })
    }

    /// Shards whose time has run out on the node's clock: removed, and
    /// returned.
    fn expire(&self) -> Vec<u32> {
        let now = Instant::now();
        let mut map = self.lock();
        let gone: Vec<u32> = map
            .iter()
            .filter(|(_, (_, until))| *until <= now)
            .map(|(s, _)| *s)
            .collect();
        for s in &gone {
            map.remove(s);
        }
        gone
    }

    fn all(&self) -> Vec<Held> {
        self.lock()
            .iter()
            .map(|(shard, (epoch, _))| Held {
                shard: *shard,
                epoch: *epoch,
            })
            .collect()
    }
}

/// What the loop asks of the server.
#[derive(Debug)]
pub enum Event {
    /// These shards were taken: load their agents, then answer. They are
    /// served once answered.
    Taken {
        /// The shards, at their new epochs.
        shards: Vec<Held>,
        /// Answered when their agents are loaded.
        done: oneshot::Sender<()>,
    },
    /// These shards are to be handed over: stop taking events for their
    /// agents, write what is left of them, drop them, then answer. They
    /// are no longer served from now; they are released once answered.
    HandOver {
        /// The shards.
        shards: Vec<Held>,
        /// Answered when their last writes are committed.
        done: oneshot::Sender<()>,
    },
    /// These shards were lost (another node holds them now, or the lease
    /// ran out on this node's clock): drop their agents, end their streams.
    Lost {
        /// The shards.
        shards: Vec<u32>,
    },
}

/// Runs the node's loop on `db` until `stop` resolves; then hands every
/// shard over and leaves the cluster. `events` carries what the server must
/// do; `ownership` is kept up to date; `on_round` hears whether each round
/// succeeded.
pub async fn run(
    mut db: Db,
    settings: Settings,
    shards: u32,
    ownership: Arc<Ownership>,
    events: mpsc::Sender<Event>,
    stop: impl std::future::Future<Output = ()>,
    on_round: impl Fn(bool),
) {
    tokio::pin!(stop);
    let mut ticker = tokio::time::interval(settings.tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = ticker.tick() => {}
        }
        if db.is_closed() {
            match Db::connect(&settings.url).await {
                Ok(fresh) => db = fresh,
                Err(e) => tracing::warn!(error = %e, "cluster database unreachable"),
            }
        }
        match tick(&db, &settings, shards, &ownership, &events, false).await {
            Ok(()) => on_round(true),
            Err(e) => {
                on_round(false);
                tracing::warn!(error = %e, "cluster round failed; shards are served until their leases run out on this node's clock");
            }
        }
        let expired = ownership.expire();
        if !expired.is_empty() {
            tracing::warn!(shards = ?expired, "leases ran out on this node's clock: no longer serving these shards");
            let _ = events.send(Event::Lost { shards: expired }).await;
        }
    }
    // Draining: say so, hand everything over, leave.
    if let Err(e) = tick(&db, &settings, shards, &ownership, &events, true).await {
        tracing::warn!(error = %e, "could not hand the shards over; other nodes take them when their leases run out");
        return;
    }
    if let Err(e) = db.leave(&settings.node).await {
        tracing::warn!(error = %e, "could not leave the cluster's node list");
    }
}

/// One round: heartbeat, renew, hand over, take.
async fn tick(
    db: &Db,
    settings: &Settings,
    shards: u32,
    ownership: &Ownership,
    events: &mpsc::Sender<Event>,
    draining: bool,
) -> Result<(), DbError> {
    db.heartbeat(&settings.node, &settings.address, draining)
        .await?;

    // Renew what is held; what is not renewed was lost.
    let held = ownership.all();
    if !held.is_empty() {
        let sent = Instant::now();
        let renewed = db.renew(&settings.node, &held, settings.lease).await?;
        let until = sent + settings.lease.saturating_sub(settings.margin);
        let mut lost = Vec::new();
        for h in &held {
            if renewed.contains(&h.shard) {
                ownership.extend(h.shard, until);
            } else if ownership.remove(h.shard).is_some() {
                lost.push(h.shard);
            }
        }
        if !lost.is_empty() {
            tracing::warn!(shards = ?lost, "shards taken by another node");
            let _ = events.send(Event::Lost { shards: lost }).await;
        }
    }

    // Which shards this node should own, with the nodes alive now.
    let nodes = db.nodes().await?;
    let live: Vec<String> = nodes
        .iter()
        .filter(|n| !n.draining && n.seen_ago < settings.lease)
        .map(|n| n.node.clone())
        .filter(|n| !(draining && *n == settings.node))
        .collect();
    let wanted: HashSet<u32> = if draining || !live.contains(&settings.node) {
        HashSet::new()
    } else {
        shard::wanted(&settings.node, &live, shards)
            .into_iter()
            .collect()
    };

    // Hand over what another node should own.
    let leaving: Vec<Held> = ownership
        .all()
        .into_iter()
        .filter(|h| !wanted.contains(&h.shard))
        .collect();
    if !leaving.is_empty() {
        for h in &leaving {
            ownership.remove(h.shard);
        }
        let (done, answered) = oneshot::channel();
        if events
            .send(Event::HandOver {
                shards: leaving.clone(),
                done,
            })
            .await
            .is_ok()
        {
            let _ = answered.await;
        }
        db.release(&settings.node, &leaving).await?;
        tracing::info!(shards = leaving.len(), "shards handed over");
    }

    // Take what this node should own and nobody holds (or whose lease ran
    // out).
    let owned: HashSet<u32> = ownership.all().iter().map(|h| h.shard).collect();
    let missing: Vec<u32> = wanted
        .iter()
        .filter(|s| !owned.contains(s))
        .copied()
        .collect();
    if !missing.is_empty() {
        let taken = db.acquire(&settings.node, &missing, settings.lease).await?;
        if !taken.is_empty() {
            let (done, answered) = oneshot::channel();
            if events
                .send(Event::Taken {
                    shards: taken.clone(),
                    done,
                })
                .await
                .is_ok()
            {
                let _ = answered.await;
            }
            // Loading may have taken a while: the lease is renewed before
            // the shards are served, and counted from that renewal.
            let sent = Instant::now();
            let renewed = db.renew(&settings.node, &taken, settings.lease).await?;
            let until = sent + settings.lease.saturating_sub(settings.margin);
            let mut lost = Vec::new();
            for h in &taken {
                if renewed.contains(&h.shard) {
                    ownership.insert(*h, until);
                } else {
                    lost.push(h.shard);
                }
            }
            if !lost.is_empty() {
                let _ = events.send(Event::Lost { shards: lost }).await;
            }
            tracing::info!(shards = taken.len(), "shards taken");
        }
    }

    // Where each shard is served now, for the streams and calls this node
    // passes on.
    let addresses: std::collections::HashMap<&str, Arc<str>> = nodes
        .iter()
        .filter(|n| n.seen_ago < settings.lease)
        .map(|n| (n.node.as_str(), Arc::from(n.address.as_str())))
        .collect();
    let routes = db
        .shards()
        .await?
        .into_iter()
        .map(|s| {
            let owner = s.owner.filter(|_| !s.expired)?;
            let address = addresses.get(owner.as_str())?.clone();
            Some((Arc::from(owner.as_str()), address))
        })
        .collect();
    ownership.set_routes(routes);
    Ok(())
}
