//! The agent streams open now, one per agent: how a takeover, a forget or
//! the server's shutdown ends a stream at once rather than at its next
//! message.
//!
//! The registry decides which stream is an agent's own (its stream token);
//! this table holds, for each agent with an open stream, a small signal that
//! ends that stream. A stream registers after its hello (ending the older
//! one); an operator's forget ends the stream the registry no longer holds;
//! shutdown ends them all, and refuses those that register later.
//!
//! Lock: the table's entry for an agent, held while the registry is asked
//! whether a stream is still the agent's own (the registry never calls back
//! into this table).

use crate::model::ArcStr;
use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::task::{Context, Poll};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use futures_util::task::AtomicWaker;
use tonic::Status;

use crate::model::AgentId;
use crate::registry::{Registry, RegistryError, Session};

/// Why a stream was ended from outside.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// A newer stream for the same agent said hello.
    Superseded,
    /// An operator forgot the agent.
    Forgotten,
    /// The server is shutting down.
    ShuttingDown,
    /// The stream's credential was revoked, removed or expired.
    Revoked,
    /// The agent's shard is now another server's (many servers over one
    /// database): the agent reconnects, and reaches the new owner.
    Moved,
}

impl Ended {
    /// The status that ends the stream of agent `id`: ABORTED for a
    /// takeover or a forget (the agent reconnects if it is still alive),
    /// UNAVAILABLE for a shutdown (it reconnects with backoff).
    pub fn status(self, id: &AgentId) -> Status {
        match self {
            Ended::Superseded => RegistryError::Superseded(id.to_string()).into(),
            Ended::Forgotten => RegistryError::Forgotten(id.to_string()).into(),
            Ended::ShuttingDown => shutting_down(),
            Ended::Revoked => revoked(),
            Ended::Moved => moved(),
        }
    }
}

/// The status of a stream whose agent's shard moved to another server.
pub fn moved() -> Status {
    Status::unavailable("this agent is now served by another server of the cluster; reconnect")
}

/// The status of a stream whose credential no longer holds.
pub fn revoked() -> Status {
    Status::unauthenticated(
        "the credential of this stream was revoked, removed or has expired; get a new certificate or token",
    )
}

/// The status of a stream ended by the server's shutdown.
pub fn shutting_down() -> Status {
    Status::unavailable("the server is shutting down; reconnect")
}

/// Tells one open stream that it has ended. One small allocation per open
/// stream: a byte and a waker slot.
#[derive(Debug, Default)]
pub struct EndSignal {
    /// 0: open; otherwise the [`Ended`] it was ended with.
    why: AtomicU8,
    waker: AtomicWaker,
}

impl EndSignal {
    const SUPERSEDED: u8 = 1;
    const FORGOTTEN: u8 = 2;
    const SHUTTING_DOWN: u8 = 3;
    const REVOKED: u8 = 4;
    const MOVED: u8 = 5;

    /// Ends the stream with `why` (the first reason given stands).
    pub fn end(&self, why: Ended) {
        let code = match why {
            Ended::Superseded => EndSignal::SUPERSEDED,
            Ended::Forgotten => EndSignal::FORGOTTEN,
            Ended::ShuttingDown => EndSignal::SHUTTING_DOWN,
            Ended::Revoked => EndSignal::REVOKED,
            Ended::Moved => EndSignal::MOVED,
        };
        // The first reason stands.
        let _ = self
            .why
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
        self.waker.wake();
    }

    fn get(&self) -> Option<Ended> {
        match self.why.load(Ordering::Acquire) {
            EndSignal::SUPERSEDED => Some(Ended::Superseded),
            EndSignal::FORGOTTEN => Some(Ended::Forgotten),
            EndSignal::SHUTTING_DOWN => Some(Ended::ShuttingDown),
            EndSignal::REVOKED => Some(Ended::Revoked),
            EndSignal::MOVED => Some(Ended::Moved),
            _ => None,
        }
    }

    /// Whether the stream has been ended (and why), without waiting.
    pub fn is_ended(&self) -> Option<Ended> {
        self.get()
    }

    /// Ready with the reason once the stream has been ended.
    pub fn poll_ended(&self, cx: &mut Context<'_>) -> Poll<Ended> {
        if let Some(why) = self.get() {
            return Poll::Ready(why);
        }
        self.waker.register(cx.waker());
        // Checked again: an end between the first check and the
        // registration would otherwise wake no one.
        match self.get() {
            Some(why) => Poll::Ready(why),
            None => Poll::Pending,
        }
    }

    /// Resolves once the stream has been ended.
    pub async fn ended(&self) -> Ended {
        poll_fn(|cx| self.poll_ended(cx)).await
    }
}

/// The open agent streams, by agent ID. Cloning shares the table.
#[derive(Clone, Debug, Default)]
pub struct OpenStreams {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    table: DashMap<ArcStr, Open>,
    /// Set once the server shuts down: no stream registers after it.
    closed: AtomicBool,
}

/// One agent's open stream.
#[derive(Debug)]
struct Open {
    token: u32,
    signal: Arc<EndSignal>,
}

impl OpenStreams {
    /// An empty table.
    pub fn new() -> OpenStreams {
        OpenStreams::default()
    }

    /// Registers the stream of `session`, which the registry has just
    /// connected, and ends the agent's older stream at once. Fails with the
    /// reason if `session` is no longer the agent's own (a newer stream or a
    /// forget came first).
    pub fn open(&self, registry: &Registry, session: &Session) -> Result<Arc<EndSignal>, Ended> {
        let key = session.id.as_arc().clone();
        let entry = self.inner.table.entry(key);
        // Checked under the entry's lock: `shut_down` sets the flag before
        // it visits the entries, so a stream is either refused here or
        // ended there.
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(Ended::ShuttingDown);
        }
        if !registry.is_open(&session.id, session.token()) {
            return Err(Ended::Superseded);
        }
        let signal = Arc::new(EndSignal::default());
        let open = Open {
            token: session.token(),
            signal: signal.clone(),
        };
        match entry {
            Entry::Occupied(mut e) => {
                let older = e.insert(open);
                older.signal.end(Ended::Superseded);
            }
            Entry::Vacant(e) => {
                e.insert(open);
            }
        }
        Ok(signal)
    }

    /// The stream of `session` ended: forgets it (unless a newer stream of
    /// the agent already replaced it).
    pub fn close(&self, session: &Session) {
        self.inner
            .table
            .remove_if(session.id.as_arc(), |_, o| o.token == session.token());
    }

    /// The agent `id` was forgotten: ends its stream, if one is open and the
    /// registry no longer holds it.
    pub fn forgotten(&self, registry: &Registry, id: &AgentId) {
        if let Some((_, open)) = self
            .inner
            .table
            .remove_if(id.as_arc(), |_, o| !registry.is_open(id, o.token))
        {
            open.signal.end(Ended::Forgotten);
        }
    }

    /// The agents for which `moved` holds now belong to another server:
    /// ends their streams. Called before their records leave the registry,
    /// and before any commit that leaves their changes out is marked done,
    /// so that no acknowledgement goes out for what was not committed here.
    pub fn moved(&self, moved: impl Fn(&str) -> bool) -> usize {
        let mut n = 0;
        self.inner.table.retain(|key, open| {
            if moved(key) {
                open.signal.end(Ended::Moved);
                n += 1;
                false
            } else {
                true
            }
        });
        n
    }

    /// The server is shutting down: ends every registered stream, and
    /// refuses those that would register from now on.
    pub fn shut_down(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        for open in self.inner.table.iter() {
            open.signal.end(Ended::ShuttingDown);
        }
    }

    /// How many streams are registered.
    pub fn len(&self) -> usize {
        self.inner.table.len()
    }

    /// Whether no stream is registered.
    pub fn is_empty(&self) -> bool {
        self.inner.table.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;
    use crate::clock::ManualClock;
    use crate::metrics::Metrics;
    use crate::model::{FleetRules, Labels};
    use crate::registry::Limits;

    fn registry() -> Registry {
        let clock = ManualClock::new(
            fleet_health_sensor::Time::from_micros(1_700_000_000_000_000).expect("in range"),
        );
        Registry::new(
            FleetRules::default(),
            Limits::default(),
            Arc::new(clock),
            Arc::new(Metrics::default()),
        )
    }

    fn id(s: &str) -> AgentId {
        AgentId::parse(s).expect("valid id")
    }

    fn connect(reg: &Registry, name: &str) -> Session {
        reg.connect(&id(name), 1, Labels::new())
            .expect("connects")
            .session
    }

    /// The signal's state without waiting.
    fn state(signal: &EndSignal) -> Poll<Ended> {
        signal.poll_ended(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn a_newer_stream_ends_the_older_and_a_stale_one_is_refused() {
        let (reg, streams) = (registry(), OpenStreams::new());
        let first = connect(&reg, "a");
        let first_signal = streams.open(&reg, &first).expect("registers");
        assert!(state(&first_signal).is_pending());

        let second = connect(&reg, "a");
        let second_signal = streams.open(&reg, &second).expect("registers");
        assert_eq!(state(&first_signal), Poll::Ready(Ended::Superseded));
        assert!(state(&second_signal).is_pending());

        // A stream that lost the race to a newer one does not register.
        let third = connect(&reg, "a");
        let fourth = connect(&reg, "a");
        assert_eq!(streams.open(&reg, &third).err(), Some(Ended::Superseded));
        streams.open(&reg, &fourth).expect("registers");
        assert_eq!(state(&second_signal), Poll::Ready(Ended::Superseded));

        // The older stream's end leaves the newer registered.
        streams.close(&first);
        assert_eq!(streams.len(), 1);
        streams.close(&fourth);
        assert!(streams.is_empty());
    }

    #[test]
    fn a_forget_ends_only_the_stream_the_registry_let_go() {
        let (reg, streams) = (registry(), OpenStreams::new());
        let a = connect(&reg, "a");
        let b = connect(&reg, "b");
        let (a_signal, b_signal) = (
            streams.open(&reg, &a).expect("registers"),
            streams.open(&reg, &b).expect("registers"),
        );
        // Not forgotten in the registry: nothing ends.
        streams.forgotten(&reg, &id("a"));
        assert!(state(&a_signal).is_pending());

        reg.forget(&id("a")).expect("known");
        streams.forgotten(&reg, &id("a"));
        assert_eq!(state(&a_signal), Poll::Ready(Ended::Forgotten));
        assert!(state(&b_signal).is_pending());
        assert_eq!(streams.len(), 1);
    }

    #[test]
    fn shutdown_ends_every_stream_and_refuses_later_ones() {
        let (reg, streams) = (registry(), OpenStreams::new());
        let a = connect(&reg, "a");
        let a_signal = streams.open(&reg, &a).expect("registers");
        streams.shut_down();
        assert_eq!(state(&a_signal), Poll::Ready(Ended::ShuttingDown));
        // The first reason stands.
        reg.forget(&id("a")).expect("known");
        streams.forgotten(&reg, &id("a"));
        assert_eq!(state(&a_signal), Poll::Ready(Ended::ShuttingDown));

        let b = connect(&reg, "b");
        assert_eq!(streams.open(&reg, &b).err(), Some(Ended::ShuttingDown));
        assert_eq!(
            Ended::ShuttingDown.status(&id("b")).code(),
            tonic::Code::Unavailable
        );
        assert_eq!(
            Ended::Forgotten.status(&id("b")).code(),
            tonic::Code::Aborted
        );
    }
}
