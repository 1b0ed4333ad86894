//! Limits per identity: how many Report streams and watches one identity
//! may hold open, and how many events per second it may send over all its
//! streams together. Beyond them a call gets RESOURCE_EXHAUSTED with a
//! message naming the limit and the flag that raises it; each identity has
//! its own allowance, so one greedy identity never takes another's.
//!
//! Lock: the table's entry for one identity, held to take or give back a
//! place; the identity's rate bucket, held for one take per message.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use tokio::time::Instant;
use tonic::Status;

use super::{AuditEvent, Caller, Security};
use crate::agent_service::TokenBucket;
use crate::metrics::Denial;

/// The limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdentityLimits {
    /// Open Report streams per identity.
    pub max_streams: u32,
    /// Events per second per identity, over all its streams (bursts of
    /// twice as many); 0: no limit.
    pub max_events_per_sec: u32,
    /// Open watches per identity.
    pub max_watches: u32,
}

impl Default for IdentityLimits {
    fn default() -> IdentityLimits {
        IdentityLimits {
            max_streams: 10_000,
            max_events_per_sec: 200_000,
            max_watches: 64,
        }
    }
}

/// What each identity holds now.
#[derive(Debug, Default)]
pub struct Usage {
    limits: IdentityLimits,
    table: DashMap<Arc<str>, Arc<Held>>,
}

/// One identity's holdings.
#[derive(Debug)]
pub struct Held {
    streams: AtomicU32,
    watches: AtomicU32,
    bucket: Mutex<TokenBucket>,
}

/// Which kind of place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// A Report stream.
    Stream,
    /// A watch.
    Watch,
}

/// A place held by one identity, given back when dropped.
#[derive(Debug)]
pub struct Permit {
    usage: Arc<Usage>,
    key: Arc<str>,
    held: Arc<Held>,
    place: Place,
}

impl Permit {
    /// Takes `n` events from the identity's allowance at `now`.
    pub fn take_events(&self, n: u32, now: Instant) -> bool {
        self.held
            .bucket
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take(n, now)
    }

    /// The message for an identity over its event rate.
    pub fn events_refused(&self) -> Status {
        let rate = self.usage.limits.max_events_per_sec;
        Status::resource_exhausted(format!(
            "{} sent more than {rate} events/s over all its streams (bursts up to {}), the server's limit per identity; send more slowly, or raise it on the server with --max-events-per-sec-per-identity",
            self.key,
            u64::from(rate) * 2
        ))
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let counter = match self.place {
            Place::Stream => &self.held.streams,
            Place::Watch => &self.held.watches,
        };
        counter.fetch_sub(1, Ordering::AcqRel);
        // Forget identities that hold nothing (their rate allowance refills
        // to full anyway by the time they come back, at most two seconds).
        self.usage.table.remove_if(&self.key, |_, h| {
            h.streams.load(Ordering::Acquire) == 0 && h.watches.load(Ordering::Acquire) == 0
        });
    }
}

impl Usage {
    /// A table for `limits`.
    pub fn new(limits: IdentityLimits) -> Usage {
        Usage {
            limits,
            table: DashMap::new(),
        }
    }

    /// The limits.
    pub fn limits(&self) -> IdentityLimits {
        self.limits
    }

    /// A place of `place` for `key`, or the status that refuses it.
    pub fn take(self: &Arc<Self>, key: &str, place: Place) -> Result<Permit, Status> {
        let (max, flag, what) = match place {
            Place::Stream => (
                self.limits.max_streams,
                "--max-streams-per-identity",
                "Report streams",
            ),
            Place::Watch => (
                self.limits.max_watches,
                "--max-watches-per-identity",
                "watches",
            ),
        };
        let entry = self.table.entry(Arc::from(key)).or_insert_with(|| {
            Arc::new(Held {
                streams: AtomicU32::new(0),
                watches: AtomicU32::new(0),
                bucket: Mutex::new(TokenBucket::new(self.limits.max_events_per_sec)),
            })
        });
        let (key, held) = (entry.key().clone(), entry.value().clone());
        let counter = match place {
            Place::Stream => &held.streams,
            Place::Watch => &held.watches,
        };
        // Counted under the entry's lock: no two takers pass the same last place.
        if counter.load(Ordering::Acquire) >= max {
            drop(entry);
            return Err(Status::resource_exhausted(format!(
                "{key} already holds {max} open {what}, the server's limit per identity; close some, or raise it on the server with {flag}"
            )));
        }
        counter.fetch_add(1, Ordering::AcqRel);
        drop(entry);
        Ok(Permit {
            usage: self.clone(),
            key,
            held,
            place,
        })
    }
}

impl Security {
    /// A place for `caller` (none without security), counted and audited
    /// when refused.
    pub fn admit(
        &self,
        caller: Option<&Caller>,
        place: Place,
        rpc: &'static str,
    ) -> Result<Option<Permit>, Status> {
        let Some(caller) = caller else {
            return Ok(None);
        };
        let key = caller.identity.to_string();
        match self.usage().take(&key, place) {
            Ok(permit) => Ok(Some(permit)),
            Err(status) => {
                self.refuse_limit(caller, rpc, &status);
                Err(status)
            }
        }
    }

    /// Counts and audits a refusal for a limit.
    pub fn refuse_limit(&self, caller: &Caller, rpc: &'static str, status: &Status) {
        self.metrics().count_denial(Denial::Limit);
        self.audit().record(AuditEvent {
            event: "denied",
            identity: Some(caller.identity.to_string()),
            credential: Some(caller.credential.kind()),
            peer: caller.peer,
            rpc: Some(rpc),
            agent_id: None,
            result: "resource_exhausted",
            reason: Some(Denial::Limit.as_str()),
            detail: Some(status.message().to_string()),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_counted_per_identity_and_given_back() {
        let usage = Arc::new(Usage::new(IdentityLimits {
            max_streams: 2,
            max_events_per_sec: 10,
            max_watches: 1,
        }));
        let a1 = usage.take("agent/a", Place::Stream).expect("first");
        let _a2 = usage.take("agent/a", Place::Stream).expect("second");
        let err = usage.take("agent/a", Place::Stream).expect_err("third");
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(
            err.message().contains("--max-streams-per-identity"),
            "{}",
            err.message()
        );
        // Another identity is not held up.
        let _b = usage
            .take("agent/b", Place::Stream)
            .expect("another identity");
        let _w = usage
            .take("agent/a", Place::Watch)
            .expect("a watch is another place");
        assert!(usage.take("agent/a", Place::Watch).is_err());
        drop(a1);
        let _a3 = usage
            .take("agent/a", Place::Stream)
            .expect("a place given back");
    }

    #[test]
    fn the_event_rate_is_shared_by_an_identitys_streams() {
        let usage = Arc::new(Usage::new(IdentityLimits {
            max_streams: 10,
            max_events_per_sec: 10,
            max_watches: 1,
        }));
        let now = Instant::now();
        let s1 = usage.take("relay/gw", Place::Stream).expect("s1");
        let s2 = usage.take("relay/gw", Place::Stream).expect("s2");
        assert!(s1.take_events(15, now));
        assert!(!s2.take_events(10, now), "the burst of 20 is shared");
        assert!(s2.take_events(5, now));
        let other = usage.take("relay/other", Place::Stream).expect("other");
        assert!(
            other.take_events(20, now),
            "another identity has its own allowance"
        );
        assert!(
            s1.events_refused()
                .message()
                .contains("--max-events-per-sec-per-identity")
        );
        drop((s1, s2, other));
        assert!(
            usage.table.is_empty(),
            "identities holding nothing are forgotten"
        );
    }
}
