//! The agent streams open now, one per agent: how a takeover or a forget ends
//! the older stream at once rather than at its next message.
//!
//! The registry decides which stream is an agent's own (its stream token);
//! this table holds, for each agent with an open stream, a small signal that
//! ends that stream. A stream registers after its hello (ending the older
//! one); an operator's forget ends the stream the registry no longer holds.
//!
//! Lock: the table's entry for an agent, held while the registry is asked
//! whether a stream is still the agent's own (the registry never calls back
//! into this table).

use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use futures_util::task::AtomicWaker;

use crate::model::AgentId;
use crate::registry::{Registry, RegistryError, Session};

/// Why a stream was ended from outside.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// A newer stream for the same agent said hello.
    Superseded,
    /// An operator forgot the agent.
    Forgotten,
}

impl Ended {
    /// The registry's refusal for the agent `id`, which says the same.
    pub fn error(self, id: &AgentId) -> RegistryError {
        match self {
            Ended::Superseded => RegistryError::Superseded(id.to_string()),
            Ended::Forgotten => RegistryError::Forgotten(id.to_string()),
        }
    }
}

/// Tells one open stream that it has ended. One small allocation per open
/// stream: a byte and a waker slot.
#[derive(Debug, Default)]
pub struct EndSignal {
    /// 0: open; otherwise an [`Ended`] (see [`EndSignal::code`]).
    why: AtomicU8,
    waker: AtomicWaker,
}

impl EndSignal {
    const SUPERSEDED: u8 = 1;
    const FORGOTTEN: u8 = 2;

    fn end(&self, why: Ended) {
        let code = match why {
            Ended::Superseded => EndSignal::SUPERSEDED,
            Ended::Forgotten => EndSignal::FORGOTTEN,
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
            _ => None,
        }
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
    table: Arc<DashMap<Arc<str>, Open>>,
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
        let entry = self.table.entry(key);
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
        self.table
            .remove_if(session.id.as_arc(), |_, o| o.token == session.token());
    }

    /// The agent `id` was forgotten: ends its stream, if one is open and the
    /// registry no longer holds it.
    pub fn forgotten(&self, registry: &Registry, id: &AgentId) {
        if let Some((_, open)) = self
            .table
            .remove_if(id.as_arc(), |_, o| !registry.is_open(id, o.token))
        {
            open.signal.end(Ended::Forgotten);
        }
    }

    /// How many streams are registered.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no stream is registered.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}
