//! One agent's record: its sensor, what the fleet rules read, its settled
//! verdict and its recent transitions.
//!
//! An [`Agent`] lives boxed in the registry's map and is only touched under
//! its map entry; nothing here locks.

use std::num::NonZeroU32;
use std::sync::Arc;

use fleet_health_sensor::{Sensor, Time};
use thin_vec::ThinVec;

use crate::model::{EventKind, Facts, LabelSet, Why};

use super::types::{StreamToken, Transition};

/// `Agent::stopped_at` when the agent is not stopped (a sentinel rather than
/// an `Option`: it keeps the record 8 bytes smaller).
const NOT_STOPPED: Time = Time::MIN;

/// A short history told by the record's own fields, in one byte.
///
/// Most agents have had one or two transitions: their first status (from
/// nothing, at `first_seen`) and perhaps one change since (at `since`, to
/// `why`). The record holds those times and the latest reason already, so
/// such a history needs only the first status's reason and the second
/// transition's `from`:
/// - 0: no transition;
/// - 1 + i: the first status only, to `Why::ALL[i]`;
/// - 10 + 10 i + j: the first status (to `Why::ALL[i]`), then a change from
///   nothing (j = 0) or from `Why::ALL[j - 1]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Short(u8);

const _: () = assert!(10 + 10 * Why::COUNT <= 256, "a short history fits a byte");

impl Short {
    /// The short form of `v` for a record with these fields, if it has one.
    fn of(v: &[Transition], first_seen: Time, since: Time, why: Why) -> Option<Short> {
        let first = |t: &Transition| t.from.is_none() && t.at == first_seen;
        let short = match v {
            [] => Short(0),
            [a] if first(a) => Short(1 + a.to.index() as u8),
            [a, b] if first(a) && b.at == since && b.to == why => {
                let from = b.from.map_or(0, |w| 1 + w.index() as u8);
                Short(10 + 10 * a.to.index() as u8 + from)
            }
            _ => return None,
        };
        // Only a form that reads back as `v` is kept.
        (short.read(first_seen, since, why) == v).then_some(short)
    }

    /// The transitions it stands for in a record with these fields.
    fn read(self, first_seen: Time, since: Time, why: Why) -> Vec<Transition> {
        let first = |i: u8| Transition {
            at: first_seen,
            from: None,
            to: Why::ALL[usize::from(i)],
        };
        match self.0 {
            0 => Vec::new(),
            n @ 1..10 => vec![first(n - 1)],
            n => {
                let (i, j) = ((n - 10) / 10, (n - 10) % 10);
                let second = Transition {
                    at: since,
                    from: j.checked_sub(1).map(|j| Why::ALL[usize::from(j)]),
                    to: why,
                };
                vec![first(i), second]
            }
        }
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
    /// Since when it has had `why` (changed only with the history).
    since: Time,
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
    pub(super) labels: Option<Arc<LabelSet>>,
    /// Its recent transitions, oldest first, when they have no short form
    /// (empty otherwise: no allocation).
    spilled: ThinVec<Transition>,
    /// The settled verdict, as of `evaluated` (changed only with the
    /// history).
    why: Why,
    /// Its recent transitions when they have a short form.
    short: Short,
    /// The sensor's registration ([`Flags::REGISTERED`]) and whether it is
    /// queued for the committer ([`Flags::DIRTY`]).
    flags: Flags,
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
            last_heard: now,
            first_seen: now,
            since: now,
            evaluated: now,
            queued: Time::MAX,
            stopped_at: NOT_STOPPED,
            incarnation: 0,
            last_seq: 0,
            stream: None,
            labels: None,
            spilled: ThinVec::new(),
            why: Why::AllIsOk,
            short: Short(0),
            flags: Flags::default().with(Flags::REGISTERED, fresh.is_registered()),
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
        Sensor::from_parts(
            started,
            shutdown,
            received,
            sent,
            self.flags.has(Flags::REGISTERED),
        )
    }

    /// Replaces its sensor.
    pub(super) fn set_sensor(&mut self, s: Sensor) {
        self.sensor_times = Agent::times_of(&s);
        self.flags = self.flags.with(Flags::REGISTERED, s.is_registered());
    }

    /// When it said "stopped", if it has not started since.
    pub(super) fn stopped(&self) -> Option<Time> {
        (self.stopped_at != NOT_STOPPED).then_some(self.stopped_at)
    }

    /// Sets or clears the time it said "stopped".
    pub(super) fn set_stopped(&mut self, at: Option<Time>) {
        self.stopped_at = at.unwrap_or(NOT_STOPPED);
    }

    /// The settled verdict, as of `evaluated`.
    pub(super) fn why(&self) -> Why {
        self.why
    }

    /// Since when it has had [`Agent::why`].
    pub(super) fn since(&self) -> Time {
        self.since
    }

    /// Its recent transitions, oldest first.
    pub(super) fn history(&self) -> Vec<Transition> {
        if self.spilled.is_empty() {
            self.short.read(self.first_seen, self.since, self.why)
        } else {
            self.spilled.to_vec()
        }
    }

    /// Records its move from `from` (`None`: its first status) to `to` at
    /// `at`, keeping at most `cap` transitions (at least one): the history,
    /// the verdict, since when, and when it was settled.
    pub(super) fn moved(&mut self, from: Option<Why>, to: Why, at: Time, cap: usize) {
        let mut v = self.history();
        let keep = v.len().min(cap.max(1) - 1);
        v.drain(..v.len() - keep);
        v.push(Transition { at, from, to });
        self.restore(to, at, v);
        self.evaluated = at;
    }

    /// Sets its verdict, since when, and its history (as stored).
    pub(super) fn restore(&mut self, why: Why, since: Time, history: Vec<Transition>) {
        (self.why, self.since) = (why, since);
        match Short::of(&history, self.first_seen, since, why) {
            Some(short) => {
                self.short = short;
                self.spilled = ThinVec::new();
            }
            None => {
                self.short = Short(0);
                self.spilled = ThinVec::from(history);
            }
        }
    }

    /// Whether it is queued for the committer.
    pub(super) fn dirty(&self) -> bool {
        self.flags.has(Flags::DIRTY)
    }

    /// Marks it queued for the committer, or not.
    pub(super) fn set_dirty(&mut self, dirty: bool) {
        self.flags = self.flags.with(Flags::DIRTY, dirty);
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

/// An agent's one-bit facts, in one byte.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Flags(u8);

impl Flags {
    /// The sensor's registration.
    const REGISTERED: u8 = 1;
    /// Queued for the committer.
    const DIRTY: u8 = 2;

    fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }

    fn with(self, bit: u8, on: bool) -> Flags {
        Flags(if on { self.0 | bit } else { self.0 & !bit })
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

    #[test]
    fn the_history_keeps_the_most_recent() {
        let mut a = Agent::new(t(0));
        assert!(a.history().is_empty());
        a.moved(None, Why::NoDataReceived, t(0), 3);
        for at in 1..=5 {
            let from = a.why();
            a.moved(Some(from), Why::ALL[at as usize % 3], t(at), 3);
        }
        let kept: Vec<_> = a.history().iter().map(|x| x.at).collect();
        assert_eq!(kept, [t(3), t(4), t(5)]);
        assert_eq!((a.why(), a.since(), a.evaluated), (Why::ALL[2], t(5), t(5)));
    }

    #[test]
    fn short_histories_stay_in_the_record() {
        let mut a = Agent::new(t(1));
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
        let third = Transition {
            at: t(3),
            from: Some(Why::AllIsOk),
            to: Why::Stopped,
        };
        a.moved(first.from, first.to, first.at, 8);
        assert_eq!((a.history(), a.spilled.is_empty()), (vec![first], true));
        a.moved(second.from, second.to, second.at, 8);
        assert_eq!(a.history(), [first, second]);
        assert!(a.spilled.is_empty(), "two transitions need no allocation");
        a.moved(third.from, third.to, third.at, 8);
        assert_eq!(a.history(), [first, second, third]);
        assert!(!a.spilled.is_empty());
        // A cap of two keeps the last two: no longer the first status.
        let fourth = Transition {
            at: t(4),
            from: Some(Why::Stopped),
            to: Why::AllIsOk,
        };
        a.moved(fourth.from, fourth.to, fourth.at, 2);
        assert_eq!(a.history(), [third, fourth]);
        // Every reason, and every `from` of a second transition, reads back.
        for to in Why::ALL {
            for from in std::iter::once(None).chain(Why::ALL.map(Some)) {
                let v = vec![
                    Transition {
                        at: t(1),
                        from: None,
                        to,
                    },
                    Transition {
                        at: t(9),
                        from,
                        to: Why::Inactive,
                    },
                ];
                let mut b = Agent::new(t(1));
                b.restore(Why::Inactive, t(9), v.clone());
                assert_eq!((b.history(), b.spilled.is_empty()), (v, true));
            }
        }
        // A history that the record's fields do not tell is kept whole.
        let odd = vec![Transition {
            at: t(5),
            from: None,
            to: Why::AllIsOk,
        }];
        let mut c = Agent::new(t(1));
        c.restore(Why::AllIsOk, t(5), odd.clone());
        assert_eq!((c.history(), c.spilled.is_empty()), (odd, false));
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
        // 120 bytes: glibc gives the boxed record a 128-byte chunk.
        assert!(std::mem::size_of::<Agent>() <= 120, "the record grew");
        // The key the map, the timer queue and the tally share: one pointer.
        assert_eq!(std::mem::size_of::<crate::model::ArcStr>(), 8);
    }

    #[test]
    fn tokens_are_never_zero() {
        let tokens = Tokens(std::sync::atomic::AtomicU32::new(u32::MAX));
        assert_eq!(tokens.next().get(), u32::MAX);
        assert_eq!(tokens.next().get(), 1);
    }
}
