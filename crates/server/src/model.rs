//! The fleet's domain: agent IDs, reasons and states, and the fleet rules that
//! wrap the reference sensor (`stopped`, `inactive`, `not reporting`).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use fleet_health_sensor::{Sensor, Time, Why, Windows};

/// The longest agent ID accepted.
pub const MAX_AGENT_ID_LEN: usize = 253;

/// A checked agent ID: 1 to 253 characters of `[A-Za-z0-9._:@/-]`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AgentId(Arc<str>);

/// Why a string is not an agent ID.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AgentIdError {
    /// Empty.
    #[error("agent ID is empty (it must be 1 to 253 characters of [A-Za-z0-9._:@/-])")]
    Empty,
    /// Too long.
    #[error("agent ID is {0} characters long (at most 253 of [A-Za-z0-9._:@/-])")]
    TooLong(usize),
    /// A character outside the set.
    #[error("agent ID contains {0:?} (only [A-Za-z0-9._:@/-] are allowed)")]
    BadChar(char),
}

impl AgentId {
    /// Checks `s` against the rule: 1 to 253 characters, each an ASCII letter,
    /// a digit, or one of `._:@/-`.
    pub fn parse(s: &str) -> Result<AgentId, AgentIdError> {
        if s.is_empty() {
            return Err(AgentIdError::Empty);
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "._:@/-".contains(*c)))
        {
            return Err(AgentIdError::BadChar(c));
        }
        if s.len() > MAX_AGENT_ID_LEN {
            return Err(AgentIdError::TooLong(s.len()));
        }
        Ok(AgentId(Arc::from(s)))
    }

    /// The ID as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shared text.
    pub fn as_arc(&self) -> &Arc<str> {
        &self.0
    }

    pub(crate) fn from_arc(s: Arc<str>) -> AgentId {
        AgentId(s)
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An agent's labels (site, version, ...).
pub type Labels = BTreeMap<String, String>;

/// Labels as an agent's record keeps them: sorted by key, in one slice with
/// no spare capacity (a map's node would cost half a kilobyte for one label).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct LabelSet(Box<[(Box<str>, Box<str>)]>);

impl LabelSet {
    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &*self.0[i].1)
    }

    /// The labels, by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The labels as a map.
    pub fn to_map(&self) -> Labels {
        self.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

impl From<&Labels> for LabelSet {
    fn from(map: &Labels) -> LabelSet {
        // A BTreeMap iterates in key order: the slice is sorted.
        LabelSet(
            map.iter()
                .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
                .collect(),
        )
    }
}

/// The most labels an agent may carry.
pub const MAX_LABELS: usize = 32;

/// Checks labels: at most 32; keys 1 to 63 characters of `[A-Za-z0-9._/-]`;
/// values at most 255 bytes.
pub fn check_labels(labels: &Labels) -> Result<(), String> {
    if labels.len() > MAX_LABELS {
        return Err(format!(
            "{} labels given (at most {MAX_LABELS})",
            labels.len()
        ));
    }
    for (k, v) in labels {
        let key_ok = !k.is_empty()
            && k.len() <= 63
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._/-".contains(c));
        if !key_ok {
            return Err(format!(
                "label key {k:?} must be 1 to 63 characters of [A-Za-z0-9._/-]"
            ));
        }
        if v.len() > 255 {
            return Err(format!("label {k:?} has a value over 255 bytes"));
        }
    }
    Ok(())
}

/// An agent's overall state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    /// No restart needed.
    Healthy,
    /// A restart candidate.
    Faulty,
    /// Silent for the inactive window: kept, never a restart candidate.
    Inactive,
}

impl State {
    /// Lower-case name, as in metrics and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            State::Healthy => "healthy",
            State::Faulty => "faulty",
            State::Inactive => "inactive",
        }
    }
}

/// Why an agent is in its state: the sensor's six reasons and the fleet's three.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// The sensor: all is ok.
    AllIsOk,
    /// The sensor: shutdown is in progress.
    ShutdownInProgress,
    /// The sensor: not registered.
    NotRegistered,
    /// The sensor: no data sent to server.
    NoDataSent,
    /// The sensor: no data received from server.
    NoDataReceived,
    /// The sensor: stuck at shutdown.
    StuckAtShutdown,
    /// Nothing heard for the silence window.
    NotReporting,
    /// The agent said it stopped on purpose.
    Stopped,
    /// Nothing heard for the inactive window.
    Inactive,
}

impl Reason {
    /// Every reason, in a fixed order (the index of [`Reason::index`]).
    pub const ALL: [Reason; 9] = [
        Reason::AllIsOk,
        Reason::ShutdownInProgress,
        Reason::NotRegistered,
        Reason::NoDataSent,
        Reason::NoDataReceived,
        Reason::StuckAtShutdown,
        Reason::NotReporting,
        Reason::Stopped,
        Reason::Inactive,
    ];

    /// Position in [`Reason::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }

    /// A stable number: the reason's `fleethealth.v1.Why` value, as stored.
    pub const fn code(self) -> u32 {
        match self {
            Reason::AllIsOk => 1,
            Reason::ShutdownInProgress => 2,
            Reason::NotRegistered => 3,
            Reason::NoDataSent => 4,
            Reason::NoDataReceived => 5,
            Reason::StuckAtShutdown => 6,
            Reason::NotReporting => 7,
            Reason::Stopped => 8,
            Reason::Inactive => 9,
        }
    }

    /// The reason of a [`Reason::code`].
    pub fn from_code(code: u32) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.code() == code)
    }

    /// The state this reason puts an agent in.
    pub const fn state(self) -> State {
        match self {
            Reason::AllIsOk
            | Reason::ShutdownInProgress
            | Reason::NotRegistered
            | Reason::Stopped => State::Healthy,
            Reason::NoDataSent
            | Reason::NoDataReceived
            | Reason::StuckAtShutdown
            | Reason::NotReporting => State::Faulty,
            Reason::Inactive => State::Inactive,
        }
    }

    /// The text: the sensor's exact words, or the fleet's.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::AllIsOk => Why::AllIsOk.as_str(),
            Reason::ShutdownInProgress => Why::ShutdownInProgress.as_str(),
            Reason::NotRegistered => Why::NotRegistered.as_str(),
            Reason::NoDataSent => Why::NoDataSent.as_str(),
            Reason::NoDataReceived => Why::NoDataReceived.as_str(),
            Reason::StuckAtShutdown => Why::StuckAtShutdown.as_str(),
            Reason::NotReporting => "not reporting",
            Reason::Stopped => "stopped",
            Reason::Inactive => "inactive",
        }
    }
}

impl From<Why> for Reason {
    fn from(why: Why) -> Reason {
        match why {
            Why::AllIsOk => Reason::AllIsOk,
            Why::ShutdownInProgress => Reason::ShutdownInProgress,
            Why::NotRegistered => Reason::NotRegistered,
            Why::NoDataSent => Reason::NoDataSent,
            Why::NoDataReceived => Reason::NoDataReceived,
            Why::StuckAtShutdown => Reason::StuckAtShutdown,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The fleet's windows and thresholds: the sensor's windows plus the fleet's
/// silence, inactive and storm rules.
#[derive(Clone, Debug, PartialEq)]
pub struct FleetRules {
    /// The sensor's three windows.
    pub windows: Windows,
    /// Nothing heard for this long: `not reporting`. Zero turns the rule off.
    pub silence: Duration,
    /// Nothing heard for this long: `inactive`.
    pub inactive: Duration,
    /// Event times further than this in the future are clamped to the clock.
    pub skew: Duration,
    /// How often agents are asked to say they are alive.
    pub heartbeat: Duration,
    /// The faulty share of the active fleet that raises the storm flag.
    pub storm_share: f64,
    /// The fleet size below which the storm flag is never raised.
    pub storm_min_agents: u64,
    /// How many transitions are kept per agent.
    pub history: usize,
}

impl Default for FleetRules {
    fn default() -> FleetRules {
        FleetRules {
            windows: Windows::default(),
            silence: Duration::from_secs(300),
            inactive: Duration::from_secs(7 * 86_400),
            skew: Duration::from_secs(300),
            heartbeat: Duration::from_secs(30),
            storm_share: 0.5,
            storm_min_agents: 10,
            history: 32,
        }
    }
}

/// What the rules need besides an agent's own record.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Eval<'a> {
    pub rules: &'a FleetRules,
    /// `not reporting` counts silence from no earlier than this (the server's
    /// start: one silence window of grace after a restart).
    pub grace_from: Time,
    /// Assume that a connected agent keeps up its heartbeats (forecasts).
    pub forecast: bool,
}

/// The part of an agent's record that the rules read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Facts {
    pub sensor: Sensor,
    pub last_heard: Time,
    /// When it said "stopped", if it has not started since.
    pub stopped_at: Option<Time>,
    pub connected: bool,
    /// Was already `not reporting` when the server restarted: no grace.
    pub no_grace: bool,
}

impl Facts {
    /// The verdict at `at`: stopped, then inactive, then not reporting, then
    /// the reference's rules.
    pub fn reason_at(&self, at: Time, e: &Eval<'_>) -> Reason {
        if self.stopped_at.is_some() {
            return Reason::Stopped;
        }
        let heard = self.heard_as_of(at, e);
        if at.since(heard) >= e.rules.inactive {
            return Reason::Inactive;
        }
        if !e.rules.silence.is_zero() && at.since(self.silent_from(heard, e)) >= e.rules.silence {
            return Reason::NotReporting;
        }
        Reason::from(self.sensor.why(at, &e.rules.windows))
    }

    /// Silence counts from the last word, but not from before the server's
    /// start (the grace after a restart), unless the agent was already silent
    /// then.
    fn silent_from(&self, heard: Time, e: &Eval<'_>) -> Time {
        if self.no_grace {
            heard
        } else {
            heard.max(e.grace_from)
        }
    }

    fn heard_as_of(&self, at: Time, e: &Eval<'_>) -> Time {
        if e.forecast && self.connected {
            self.last_heard.max(at)
        } else {
            self.last_heard
        }
    }

    /// The earliest instant after `now` at which the verdict differs from the
    /// verdict at `now` if nothing is heard, or `None` if it never would.
    pub fn next_change(&self, now: Time, e: &Eval<'_>) -> Option<Time> {
        if self.stopped_at.is_some() {
            return None;
        }
        let current = self.reason_at(now, e);
        let heard = self.last_heard;
        // A forecast takes a connected agent as heard all along: no fleet edge.
        let assume_heard = e.forecast && self.connected;
        let silence_edge = if e.rules.silence.is_zero() || assume_heard {
            None
        } else {
            self.silent_from(heard, e).checked_add(e.rules.silence)
        };
        let inactive_edge = if assume_heard {
            None
        } else {
            heard.checked_add(e.rules.inactive)
        };
        // The verdict can only change at one of these edges; walk them in
        // order until one changes it. Each step moves strictly forward and
        // there are at most seven edges, so this ends.
        let mut t = now;
        loop {
            let fleet_edge = [silence_edge, inactive_edge]
                .into_iter()
                .flatten()
                .filter(|&x| x > t)
                .min();
            let next = match (self.sensor.next_change(t, &e.rules.windows), fleet_edge) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => a.or(b)?,
            };
            if self.reason_at(next, e) != current {
                return Some(next);
            }
            t = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Time {
        Time::from_micros(s * 1_000_000).expect("in range")
    }

    fn eval(rules: &FleetRules) -> Eval<'_> {
        Eval {
            rules,
            grace_from: Time::ZERO,
            forecast: false,
        }
    }

    fn facts(start: i64, heard: i64) -> Facts {
        let mut sensor = Sensor::new();
        sensor.starting(t(start));
        sensor.server_data_sent(t(start));
        sensor.server_data_received(t(start));
        Facts {
            sensor,
            last_heard: t(heard),
            stopped_at: None,
            connected: false,
            no_grace: false,
        }
    }

    #[test]
    fn agent_ids_follow_the_rule() {
        for ok in [
            "a",
            "host-1.example.com",
            "site/host",
            "uuid:123@x_y",
            &"x".repeat(253),
        ] {
            assert!(AgentId::parse(ok).is_ok(), "{ok}");
        }
        assert_eq!(AgentId::parse(""), Err(AgentIdError::Empty));
        assert_eq!(
            AgentId::parse(&"x".repeat(254)),
            Err(AgentIdError::TooLong(254))
        );
        assert_eq!(AgentId::parse("a b"), Err(AgentIdError::BadChar(' ')));
        assert_eq!(AgentId::parse("é"), Err(AgentIdError::BadChar('é')));
        let msg = AgentId::parse("a*").expect_err("bad").to_string();
        assert!(msg.contains("[A-Za-z0-9._:@/-]"), "{msg}");
    }

    #[test]
    fn labels_are_checked() {
        let mut l = Labels::new();
        l.insert("site".into(), "eu-1".into());
        assert!(check_labels(&l).is_ok());
        l.insert("bad key".into(), "x".into());
        assert!(check_labels(&l).is_err());
        let many: Labels = (0..33).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(check_labels(&many).is_err());
    }

    #[test]
    fn the_fleet_verdicts_come_in_order() {
        let rules = FleetRules::default();
        let e = eval(&rules);
        let mut f = facts(1000, 1000);
        assert_eq!(f.reason_at(t(1000), &e), Reason::AllIsOk);
        assert_eq!(f.reason_at(t(1299), &e), Reason::AllIsOk);
        assert_eq!(f.reason_at(t(1300), &e), Reason::NotReporting);
        assert_eq!(f.reason_at(t(1000 + 7 * 86_400), &e), Reason::Inactive);
        f.stopped_at = Some(t(1000));
        assert_eq!(f.reason_at(t(1000 + 8 * 86_400), &e), Reason::Stopped);
        assert_eq!(f.next_change(t(1000), &e), None);
    }

    #[test]
    fn silence_zero_turns_not_reporting_off() {
        let rules = FleetRules {
            silence: Duration::ZERO,
            ..FleetRules::default()
        };
        let e = eval(&rules);
        let f = facts(1000, 1000);
        assert_eq!(f.reason_at(t(2000), &e), Reason::AllIsOk);
        assert_eq!(f.next_change(t(1000), &e), Some(t(1000 + 21_600)));
    }

    #[test]
    fn grace_holds_back_not_reporting_after_a_restart() {
        let rules = FleetRules::default();
        let e = Eval {
            grace_from: t(5000),
            ..eval(&rules)
        };
        let f = facts(1000, 1000);
        assert_eq!(f.reason_at(t(5000), &e), Reason::AllIsOk);
        assert_eq!(f.next_change(t(5000), &e), Some(t(5300)));
    }

    #[test]
    fn an_agent_silent_before_a_restart_gets_no_grace() {
        let rules = FleetRules::default();
        let e = Eval {
            grace_from: t(5000),
            ..eval(&rules)
        };
        let mut f = facts(1000, 1000);
        f.no_grace = true;
        assert_eq!(f.reason_at(t(5000), &e), Reason::NotReporting);
    }

    #[test]
    fn forecast_keeps_connected_agents_heard() {
        let rules = FleetRules::default();
        let e = Eval {
            forecast: true,
            ..eval(&rules)
        };
        let mut f = facts(1000, 1000);
        f.connected = true;
        assert_eq!(f.reason_at(t(1000 + 7200), &e), Reason::AllIsOk);
        assert_eq!(f.reason_at(t(1000 + 21_600), &e), Reason::NoDataSent);
        f.connected = false;
        assert_eq!(f.reason_at(t(1000 + 7200), &e), Reason::NotReporting);
    }

    #[test]
    fn next_change_skips_edges_that_change_nothing() {
        let rules = FleetRules::default();
        let e = eval(&rules);
        // Unregistered: the sensor never changes; only silence does.
        let mut f = facts(1000, 1000);
        f.sensor.unregistered();
        assert_eq!(f.next_change(t(1000), &e), Some(t(1300)));
        assert_eq!(f.next_change(t(1300), &e), Some(t(1000 + 7 * 86_400)));
        assert_eq!(f.next_change(t(1000 + 7 * 86_400), &e), None);
    }
}

/// The events an agent reports: the sensor's six and the fleet's two.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// The agent process started: a new life, a fresh sensor.
    Starting,
    /// An externally initiated shutdown began.
    ShuttingDown,
    /// Data was received from the data server.
    ServerDataReceived,
    /// Data was sent to the data server.
    ServerDataSent,
    /// The agent is registered.
    Registered,
    /// The agent is not registered.
    Unregistered,
    /// The agent is alive.
    Heartbeat,
    /// The agent is exiting on purpose.
    Stopped,
}

impl EventKind {
    /// Every kind, in a fixed order (the index of [`EventKind::index`]).
    pub const ALL: [EventKind; 8] = [
        EventKind::Starting,
        EventKind::ShuttingDown,
        EventKind::ServerDataReceived,
        EventKind::ServerDataSent,
        EventKind::Registered,
        EventKind::Unregistered,
        EventKind::Heartbeat,
        EventKind::Stopped,
    ];

    /// Position in [`EventKind::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The name, as the reference spells its methods.
    pub const fn as_str(self) -> &'static str {
        match self {
            EventKind::Starting => "starting",
            EventKind::ShuttingDown => "shutting_down",
            EventKind::ServerDataReceived => "server_data_received",
            EventKind::ServerDataSent => "server_data_sent",
            EventKind::Registered => "registered",
            EventKind::Unregistered => "unregistered",
            EventKind::Heartbeat => "heartbeat",
            EventKind::Stopped => "stopped",
        }
    }
}

/// One event as the registry applies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentEvent {
    /// The reporter's sequence number (at least 1).
    pub seq: u64,
    /// What happened.
    pub kind: EventKind,
    /// When it happened on the agent; `None`: when the server received it.
    pub time: Option<Time>,
}

/// A table with one value per variant of a small, fixed enum, indexed by the
/// variant itself: what `[T; N]` indexed by `variant.index()` would be, with
/// the size and the order written once, in the enum's `ALL`.
macro_rules! per_variant {
    ($(#[$doc:meta])* $name:ident, $key:ident, $n:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
        pub struct $name<T>([T; $n]);

        impl<T> $name<T> {
            /// A table whose value for each variant is `f(variant)`.
            pub fn from_fn(mut f: impl FnMut($key) -> T) -> $name<T> {
                $name(std::array::from_fn(|i| f($key::ALL[i])))
            }

            /// Every variant with its value, in the enum's `ALL` order.
            pub fn iter(&self) -> impl Iterator<Item = ($key, &T)> {
                $key::ALL.into_iter().zip(self.0.iter())
            }

            /// The table with `f` applied to every value.
            pub fn map<U>(self, f: impl FnMut(T) -> U) -> $name<U> {
                $name(self.0.map(f))
            }

            /// The values in the enum's `ALL` order (for code that predates
            /// the table).
            pub fn into_array(self) -> [T; $n] {
                self.0
            }
        }

        impl<T> std::ops::Index<$key> for $name<T> {
            type Output = T;
            fn index(&self, k: $key) -> &T {
                &self.0[k.index()]
            }
        }

        impl<T> std::ops::IndexMut<$key> for $name<T> {
            fn index_mut(&mut self, k: $key) -> &mut T {
                &mut self.0[k.index()]
            }
        }

        impl<T> From<[T; $n]> for $name<T> {
            fn from(values: [T; $n]) -> $name<T> {
                $name(values)
            }
        }
    };
}

per_variant!(
    /// One value per reason (why an agent is in its state), such as the
    /// number of agents with each.
    ByWhy,
    Reason,
    Reason::ALL.len()
);

per_variant!(
    /// One value per event kind, such as the events of each kind in a batch.
    ByKind,
    EventKind,
    EventKind::ALL.len()
);

impl ByWhy<u64> {
    /// The sum over every reason.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// The sum over the reasons that put an agent in state `s`.
    pub fn in_state(&self, s: State) -> u64 {
        self.iter()
            .filter(|(r, _)| r.state() == s)
            .map(|(_, n)| *n)
            .sum()
    }
}

#[cfg(test)]
mod label_tests {
    use super::*;

    #[test]
    fn label_sets_keep_the_maps_content_and_order() {
        let map: Labels = [("site", "eu"), ("app", "web"), ("zone", "b")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let set = LabelSet::from(&map);
        assert_eq!(set.get("site"), Some("eu"));
        assert_eq!(set.get("zone"), Some("b"));
        assert_eq!(set.get("nope"), None);
        assert_eq!(set.to_map(), map);
        assert_eq!(
            set.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            ["app", "site", "zone"]
        );
        assert!(LabelSet::default().is_empty());
    }

    #[test]
    fn tables_by_why_are_indexed_by_the_reason() {
        let mut counts = ByWhy::<u64>::default();
        counts[Reason::NoDataSent] += 2;
        counts[Reason::AllIsOk] += 1;
        counts[Reason::Inactive] += 4;
        assert_eq!(counts.total(), 7);
        assert_eq!(counts.in_state(State::Faulty), 2);
        assert_eq!(counts.in_state(State::Healthy), 1);
        assert_eq!(counts.into_array()[Reason::Inactive.index()], 4);
        let codes = ByWhy::from_fn(Reason::code);
        assert!(codes.iter().all(|(r, c)| r.code() == *c));
        let mut kinds = ByKind::<u32>::default();
        kinds[EventKind::Stopped] += 1;
        assert_eq!(kinds.into_array()[EventKind::Stopped.index()], 1);
    }
}
