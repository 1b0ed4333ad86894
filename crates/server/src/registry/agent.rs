//! One agent's record: its sensor, what the fleet rules read, its settled
//! verdict and its recent transitions.
//!
//! An [`Agent`] lives boxed in the registry's map and is only touched under
//! its map entry; nothing here locks.

use std::num::NonZeroU32;
use std::sync::Arc;

use fleet_health_sensor::{Sensor, Time};

use crate::model::{EventKind, Facts, LabelSet, Why};

use super::types::{StreamToken, Transition};

/// `Agent::stopped_at` when the agent is not stopped (a sentinel rather than
/// an `Option`: it keeps the record 8 bytes smaller).
const NOT_STOPPED: Time = Time::MIN;

/// How many transitions a history keeps in the record itself.
const INLINE: usize = 2;

/// An agent's recent transitions, oldest first. Up to [`INLINE`] of them
/// (every agent has its first status and usually one change) live in the
/// record, with times and reasons held apart so that they pack into 24
/// bytes; longer histories are a boxed slice, rebuilt at each transition
/// (transitions are rare next to events, and a slice costs no spare
/// capacity).
#[derive(Debug)]
pub(super) enum History {
    /// The first `len` of each array.
    Inline {
        len: u8,
        at: [Time; INLINE],
        from: [Option<Why>; INLINE],
        to: [Why; INLINE],
    },
    /// More than [`INLINE`] transitions.
    Spilled(Box<[Transition]>),
}

impl Default for History {
    fn default() -> History {
        History::Inline {
            len: 0,
            at: [Time::MIN; INLINE],
            from: [None; INLINE],
            to: [Why::AllIsOk; INLINE],
        }
    }
}

impl History {
    /// A history of these transitions, oldest first.
    pub(super) fn from_vec(v: Vec<Transition>) -> History {
        if v.len() > INLINE {
            return History::Spilled(v.into_boxed_slice());
        }
        let mut h = History::default();
        if let History::Inline { len, at, from, to } = &mut h {
            for (i, t) in v.iter().enumerate() {
                (at[i], from[i], to[i]) = (t.at, t.from, t.to);
            }
            *len = v.len() as u8;
        }
        h
    }

    /// How many transitions it holds.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        match self {
            History::Inline { len, .. } => usize::from(*len),
            History::Spilled(s) => s.len(),
        }
    }

    /// The transitions, oldest first.
    pub(super) fn to_vec(&self) -> Vec<Transition> {
        match self {
            History::Inline { len, at, from, to } => (0..usize::from(*len))
                .map(|i| Transition {
                    at: at[i],
                    from: from[i],
                    to: to[i],
                })
                .collect(),
            History::Spilled(s) => s.to_vec(),
        }
    }

    /// Appends `t`, keeping at most `cap` (at least one).
    pub(super) fn push(&mut self, t: Transition, cap: usize) {
        let mut v = self.to_vec();
        let keep = v.len().min(cap.max(1) - 1);
        v.drain(..v.len() - keep);
        v.push(t);
        *self = History::from_vec(v);
    }
}

/// An agent's record.
#[derive(Debug)]
pub(super) struct Agent {
    /// The sensor's four times (started, shut down, data received, data
    /// sent), held apart from its registration flag so that the flag packs
    /// with the record's other small fields: see [`Agent::sensor`].
    sensor_times: [Time; 4],
    pub(super) last_heard: Time,
    pub(super) first_seen: Time,
    /// Since when it has had `reason`.
    pub(super) since: Time,
    /// When the verdict was last settled.
    pub(super) evaluated: Time,
    /// The time of this agent's live timer entry (`Time::MAX`: none).
    pub(super) queued: Time,
    /// When it said "stopped" ([`NOT_STOPPED`]: it has not, or started since).
    stopped_at: Time,
    pub(super) incarnation: u64,
    pub(super) last_seq: u64,
    /// The open stream's token, if a stream is open.
    pub(super) stream: Option<StreamToken>,
    /// The settled verdict, as of `evaluated`.
    pub(super) why: Why,
    pub(super) labels: Option<Arc<LabelSet>>,
    pub(super) history: History,
    /// The sensor's registration.
    registered: bool,
    /// Queued for the committer.
    pub(super) dirty: bool,
    /// Which grace holds back its `not reporting` (one byte, as the flag
    /// it replaced).
    pub(super) grace: crate::model::Grace,
}

impl Agent {
    /// A new agent, first heard at `now`.
    pub(super) fn new(now: Time) -> Agent {
        let fresh = Sensor::new();
        Agent {
            sensor_times: Agent::times_of(&fresh),
            registered: fresh.is_registered(),
            last_heard: now,
            first_seen: now,
            since: now,
            evaluated: now,
            queued: Time::MAX,
            stopped_at: NOT_STOPPED,
            incarnation: 0,
            last_seq: 0,
            stream: None,
            why: Why::AllIsOk,
            labels: None,
            history: History::default(),
            dirty: false,
            grace: crate::model::Grace::Start,
        }
    }

    fn times_of(s: &Sensor) -> [Time; 4] {
        [
            s.started_at(),
            s.shutdown_at(),
            s.last_received(),
            s.last_sent(),
        ]
    }

    /// Its sensor: the reference's four times and registration.
    pub(super) fn sensor(&self) -> Sensor {
        let [started, shutdown, received, sent] = self.sensor_times;
        Sensor::from_parts(started, shutdown, received, sent, self.registered)
    }

    /// Replaces its sensor.
    pub(super) fn set_sensor(&mut self, s: Sensor) {
        self.sensor_times = Agent::times_of(&s);
        self.registered = s.is_registered();
    }

    /// When it said "stopped", if it has not started since.
    pub(super) fn stopped(&self) -> Option<Time> {
        (self.stopped_at != NOT_STOPPED).then_some(self.stopped_at)
    }

    /// Sets or clears the time it said "stopped".
    pub(super) fn set_stopped(&mut self, at: Option<Time>) {
        self.stopped_at = at.unwrap_or(NOT_STOPPED);
    }

    /// Whether a stream from it is open.
    pub(super) fn connected(&self) -> bool {
        self.stream.is_some()
    }

    /// What the fleet rules read.
    pub(super) fn facts(&self) -> Facts {
        Facts {
            sensor: self.sensor(),
            last_heard: self.last_heard,
            stopped_at: self.stopped(),
            connected: self.connected(),
            grace: self.grace,
        }
    }

    /// Applies one event that happened at `t` to the sensor and the record.
    pub(super) fn apply(&mut self, kind: EventKind, t: Time) {
        let mut sensor = self.sensor();
        match kind {
            EventKind::Starting => {
                // A new life: a fresh sensor, as the original agent built one
                // at every process start.
                sensor = Sensor::new();
                sensor.starting(t);
                self.stopped_at = NOT_STOPPED;
            }
            EventKind::ShuttingDown => sensor.shutting_down(t),
            EventKind::ServerDataReceived => sensor.server_data_received(t),
            EventKind::ServerDataSent => sensor.server_data_sent(t),
            EventKind::Registered => sensor.registered(),
            EventKind::Unregistered => sensor.unregistered(),
            EventKind::Heartbeat | EventKind::Stopped => {}
        }
        if kind == EventKind::Stopped {
            self.stopped_at = t;
        }
        self.set_sensor(sensor);
    }
}

/// Hands out stream tokens: never zero, so that `Option<StreamToken>` costs
/// no more than the token.
#[derive(Debug)]
pub(super) struct Tokens(std::sync::atomic::AtomicU32);

impl Tokens {
    pub(super) fn new() -> Tokens {
        Tokens(std::sync::atomic::AtomicU32::new(1))
    }

    /// A token distinct from the last 2³² − 1 handed out.
    pub(super) fn next(&self) -> StreamToken {
        loop {
            let n = self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Some(t) = NonZeroU32::new(n) {
                return t;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::t;

    fn tr(at: i64) -> Transition {
        Transition {
            at: t(at),
            from: None,
            to: Why::AllIsOk,
        }
    }

    #[test]
    fn history_keeps_the_most_recent() {
        let mut h = History::default();
        assert!(h.to_vec().is_empty());
        for at in 1..=5 {
            h.push(tr(at), 3);
        }
        let kept: Vec<_> = h.to_vec().iter().map(|x| x.at).collect();
        assert_eq!(kept, [t(3), t(4), t(5)]);
    }

    #[test]
    fn short_histories_stay_in_the_record() {
        let mut h = History::default();
        assert_eq!(h.len(), 0);
        let first = Transition {
            at: t(1),
            from: None,
            to: Why::NoDataReceived,
        };
        let second = Transition {
            at: t(2),
            from: Some(Why::NoDataReceived),
            to: Why::AllIsOk,
        };
        h.push(first, 8);
        h.push(second, 8);
        assert!(matches!(h, History::Inline { len: 2, .. }));
        assert_eq!(h.to_vec(), [first, second]);
        h.push(tr(3), 8);
        assert!(matches!(h, History::Spilled(_)));
        assert_eq!(h.to_vec(), [first, second, tr(3)]);
        // A cap of two brings it back into the record.
        h.push(tr(4), 2);
        assert!(matches!(h, History::Inline { len: 2, .. }));
        assert_eq!(h.to_vec(), [tr(3), tr(4)]);
        assert!(std::mem::size_of::<History>() <= 24);
    }

    #[test]
    fn stopping_and_starting_again() {
        let mut a = Agent::new(t(1));
        assert_eq!(a.stopped(), None);
        a.apply(EventKind::Stopped, t(2));
        assert_eq!(a.stopped(), Some(t(2)));
        assert_eq!(a.facts().stopped_at, Some(t(2)));
        a.apply(EventKind::Starting, t(3));
        assert_eq!(a.stopped(), None);
        assert_eq!(a.sensor().started_at(), t(3));
        a.apply(EventKind::Unregistered, t(4));
        a.apply(EventKind::ServerDataSent, t(5));
        let s = a.sensor();
        assert!(!s.is_registered());
        assert_eq!((s.started_at(), s.last_sent()), (t(3), t(5)));
        assert!(std::mem::size_of::<Agent>() <= 136, "the record grew");
    }

    #[test]
    fn tokens_are_never_zero() {
        let tokens = Tokens(std::sync::atomic::AtomicU32::new(u32::MAX));
        assert_eq!(tokens.next().get(), u32::MAX);
        assert_eq!(tokens.next().get(), 1);
    }
}
