//! The health rules of one agent, exactly as the original agent's
//! `health_sensor.py` states them: events in, healthy-or-faulty and why out.
//!
//! - [`Sensor`] holds what the rules need: four instants and a flag
//!   (40 bytes). Events replace earlier values; nothing is kept as a maximum.
//! - [`Sensor::status`] checks, in the reference's order: stuck at shutdown,
//!   shutdown in progress, not registered, no data received, no data sent, all
//!   is ok. It neither allocates nor changes the sensor.
//! - [`Sensor::next_change`] says when, if no event arrives, the status will
//!   next be different, so that a server can move agents between healthy and
//!   faulty at the right moment without polling every one.
//! - [`Windows`] holds the three windows (18 h, 6 h, 600 s by default).
//! - [`Time`] is an instant in whole microseconds: exact comparisons at the
//!   windows' edges, and no NaN or infinity.
//!
//! This crate has no async runtime, no I/O and no dependencies.

mod time;

use std::fmt;
use std::time::Duration;

pub use time::{MAX_UNIX_SECS, Time, TimeError};

/// The three windows of the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Windows {
    receive: i64,
    send: i64,
    shutdown_timeout: i64,
}

/// A window longer than [`Windows::MAX_WINDOW`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowTooLong {
    /// Which window: `receive`, `send` or `shutdown_timeout`.
    pub window: &'static str,
}

impl fmt::Display for WindowTooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the {} window is longer than {} days",
            self.window,
            Windows::MAX_WINDOW.as_secs() / 86_400
        )
    }
}

impl std::error::Error for WindowTooLong {}

impl Windows {
    /// The reference's `RECEIVE_WINDOW`: 18 hours.
    pub const REFERENCE_RECEIVE: Duration = Duration::from_secs(18 * 3600);
    /// The reference's `SEND_WINDOW`: 6 hours.
    pub const REFERENCE_SEND: Duration = Duration::from_secs(6 * 3600);
    /// The reference's `SHUTDOWN_TIMEOUT`: 600 seconds.
    pub const REFERENCE_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(600);
    /// The longest window accepted: 100 years.
    pub const MAX_WINDOW: Duration = Duration::from_secs(100 * 365 * 86_400);

    /// Windows of the given lengths (truncated to the microsecond).
    pub fn new(
        receive: Duration,
        send: Duration,
        shutdown_timeout: Duration,
    ) -> Result<Windows, WindowTooLong> {
        let micros = |d: Duration, window: &'static str| {
            if d > Windows::MAX_WINDOW {
                Err(WindowTooLong { window })
            } else {
                // At most 100 years: fits an i64 of microseconds.
                Ok(d.as_micros() as i64)
            }
        };
        Ok(Windows {
            receive: micros(receive, "receive")?,
            send: micros(send, "send")?,
            shutdown_timeout: micros(shutdown_timeout, "shutdown_timeout")?,
        })
    }

    /// No data received from the server for this long (and started this long
    /// ago) is faulty.
    pub fn receive(&self) -> Duration {
        Duration::from_micros(self.receive as u64)
    }

    /// No data sent to the server for this long (and started this long ago)
    /// is faulty.
    pub fn send(&self) -> Duration {
        Duration::from_micros(self.send as u64)
    }

    /// A shutdown that has lasted this long is stuck.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_micros(self.shutdown_timeout as u64)
    }
}

impl Default for Windows {
    /// The reference's windows: 18 h, 6 h and 600 s.
    fn default() -> Windows {
        Windows {
            receive: Windows::REFERENCE_RECEIVE.as_micros() as i64,
            send: Windows::REFERENCE_SEND.as_micros() as i64,
            shutdown_timeout: Windows::REFERENCE_SHUTDOWN_TIMEOUT.as_micros() as i64,
        }
    }
}

/// Why a sensor is healthy or faulty. The text of each is exactly the
/// reference's `why`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Why {
    /// Faulty: a shutdown began at least the shutdown timeout ago.
    StuckAtShutdown,
    /// Healthy: a shutdown began less than the shutdown timeout ago.
    ShutdownInProgress,
    /// Healthy: the agent is not registered (its license is not valid).
    NotRegistered,
    /// Faulty: started, and last received data, at least the receive window ago.
    NoDataReceived,
    /// Faulty: started, and last sent data, at least the send window ago.
    NoDataSent,
    /// Healthy: none of the above.
    AllIsOk,
}

impl Why {
    /// Every reason, in the order the rules check them.
    pub const ALL: [Why; 6] = [
        Why::StuckAtShutdown,
        Why::ShutdownInProgress,
        Why::NotRegistered,
        Why::NoDataReceived,
        Why::NoDataSent,
        Why::AllIsOk,
    ];

    /// The reference's text for this reason.
    pub const fn as_str(self) -> &'static str {
        match self {
            Why::StuckAtShutdown => "stuck at shutdown",
            Why::ShutdownInProgress => "shutdown is in progress",
            Why::NotRegistered => "not registered",
            Why::NoDataReceived => "no data received from server",
            Why::NoDataSent => "no data sent to server",
            Why::AllIsOk => "all is ok",
        }
    }

    /// Whether this reason means healthy.
    pub const fn is_healthy(self) -> bool {
        !matches!(
            self,
            Why::StuckAtShutdown | Why::NoDataReceived | Why::NoDataSent
        )
    }

    /// The reason whose reference text is `text`, if any.
    pub fn from_text(text: &str) -> Option<Why> {
        Why::ALL.into_iter().find(|w| w.as_str() == text)
    }
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`Sensor::status`] answers: the reference's `HealthStatus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Status {
    /// Healthy (`true`) or faulty.
    pub healthy: bool,
    /// Why.
    pub why: Why,
}

impl From<Why> for Status {
    fn from(why: Why) -> Status {
        Status {
            healthy: why.is_healthy(),
            why,
        }
    }
}

/// One of the reference's six events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// The agent process started at this time.
    Starting(Time),
    /// An externally initiated shutdown began at this time.
    ShuttingDown(Time),
    /// Data was received from the server at this time.
    ServerDataReceived(Time),
    /// Data was sent to the server at this time.
    ServerDataSent(Time),
    /// The agent is registered (its license is valid).
    Registered,
    /// The agent is not registered.
    Unregistered,
}

impl Event {
    /// The reference's method name for this event.
    pub const fn name(&self) -> &'static str {
        match self {
            Event::Starting(_) => "starting",
            Event::ShuttingDown(_) => "shutting_down",
            Event::ServerDataReceived(_) => "server_data_received",
            Event::ServerDataSent(_) => "server_data_sent",
            Event::Registered => "registered",
            Event::Unregistered => "unregistered",
        }
    }
}

/// The health sensor of one agent process: the reference's `HealthSensor`.
///
/// A new sensor assumes everything happened long ago (at the epoch) and that
/// the agent is registered, so its first status at a real clock is faulty.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Sensor {
    started_at: Time,
    shutdown_at: Time,
    last_received: Time,
    last_sent: Time,
    registered: bool,
}

impl Default for Sensor {
    fn default() -> Sensor {
        Sensor::new()
    }
}

impl Sensor {
    /// A sensor in the reference's initial state.
    pub const fn new() -> Sensor {
        Sensor {
            started_at: Time::ZERO,
            shutdown_at: Time::ZERO,
            last_received: Time::ZERO,
            last_sent: Time::ZERO,
            registered: true,
        }
    }

    /// A sensor with these values, as a store would reload it.
    pub const fn from_parts(
        started_at: Time,
        shutdown_at: Time,
        last_received: Time,
        last_sent: Time,
        registered: bool,
    ) -> Sensor {
        Sensor {
            started_at,
            shutdown_at,
            last_received,
            last_sent,
            registered,
        }
    }

    /// Records the moment the agent started.
    pub fn starting(&mut self, when: Time) {
        self.started_at = when;
    }

    /// Records the moment an externally initiated shutdown began.
    pub fn shutting_down(&mut self, when: Time) {
        self.shutdown_at = when;
    }

    /// Records a moment data was received from the server.
    pub fn server_data_received(&mut self, when: Time) {
        self.last_received = when;
    }

    /// Records a moment data was sent to the server.
    pub fn server_data_sent(&mut self, when: Time) {
        self.last_sent = when;
    }

    /// Marks the agent registered.
    pub fn registered(&mut self) {
        self.registered = true;
    }

    /// Marks the agent not registered.
    pub fn unregistered(&mut self) {
        self.registered = false;
    }

    /// Applies one event.
    pub fn apply(&mut self, event: Event) {
        match event {
            Event::Starting(t) => self.starting(t),
            Event::ShuttingDown(t) => self.shutting_down(t),
            Event::ServerDataReceived(t) => self.server_data_received(t),
            Event::ServerDataSent(t) => self.server_data_sent(t),
            Event::Registered => self.registered(),
            Event::Unregistered => self.unregistered(),
        }
    }

    /// When the agent last started (the epoch if never).
    pub const fn started_at(&self) -> Time {
        self.started_at
    }

    /// When a shutdown began, or the epoch (a shutdown at or before the epoch
    /// is not recorded, as in the reference's `shutdown_at > 0`).
    pub const fn shutdown_at(&self) -> Time {
        self.shutdown_at
    }

    /// When data was last received from the server.
    pub const fn last_received(&self) -> Time {
        self.last_received
    }

    /// When data was last sent to the server.
    pub const fn last_sent(&self) -> Time {
        self.last_sent
    }

    /// Whether the agent is registered.
    pub const fn is_registered(&self) -> bool {
        self.registered
    }

    /// Whether a shutdown is recorded.
    pub fn shutdown_recorded(&self) -> bool {
        self.shutdown_at > Time::ZERO
    }

    /// The status at `now`, by the reference's rules in the reference's order.
    pub fn status(&self, now: Time, windows: &Windows) -> Status {
        Status::from(self.why(now, windows))
    }

    /// The reason alone; [`Sensor::status`] adds whether it is healthy.
    pub fn why(&self, now: Time, w: &Windows) -> Why {
        if self.shutdown_recorded() {
            if now.micros_since(self.shutdown_at) >= w.shutdown_timeout {
                return Why::StuckAtShutdown;
            }
            return Why::ShutdownInProgress;
        }
        if !self.registered {
            return Why::NotRegistered;
        }
        if now.micros_since(self.started_at) >= w.receive
            && now.micros_since(self.last_received) >= w.receive
        {
            return Why::NoDataReceived;
        }
        if now.micros_since(self.started_at) >= w.send && now.micros_since(self.last_sent) >= w.send
        {
            return Why::NoDataSent;
        }
        Why::AllIsOk
    }

    /// The earliest instant after `now` at which the status would differ from
    /// the status at `now` if no event arrived, or `None` if it never would.
    ///
    /// Every condition of the rules has the form `now - t >= window`, false
    /// before `t + window` and true from then on, so the status can only
    /// change at one of those instants: the answer is the first of them after
    /// `now` at which the status is different.
    pub fn next_change(&self, now: Time, w: &Windows) -> Option<Time> {
        let current = self.why(now, w);
        let mut edges = [
            edge(self.shutdown_at, w.shutdown_timeout),
            edge(self.started_at, w.receive),
            edge(self.last_received, w.receive),
            edge(self.started_at, w.send),
            edge(self.last_sent, w.send),
        ];
        edges.sort_unstable();
        edges
            .into_iter()
            .flatten()
            .filter(|&t| t > now)
            .find(|&t| self.why(t, w) != current)
    }
}

/// The instant at which `now - t >= window` becomes true, if representable.
fn edge(t: Time, window: i64) -> Option<Time> {
    Time::from_micros(t.as_micros().checked_add(window)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Time {
        Time::from_secs_f64(s).expect("valid time")
    }

    #[test]
    fn default_windows_are_the_references() {
        let w = Windows::default();
        assert_eq!(w.receive(), Duration::from_secs(64_800));
        assert_eq!(w.send(), Duration::from_secs(21_600));
        assert_eq!(w.shutdown_timeout(), Duration::from_secs(600));
    }

    #[test]
    fn a_new_sensor_is_faulty_at_a_real_clock() {
        let s = Sensor::new();
        let st = s.status(secs(1_700_000_000.0), &Windows::default());
        assert_eq!(
            st,
            Status {
                healthy: false,
                why: Why::NoDataReceived
            }
        );
    }

    #[test]
    fn texts_are_the_references() {
        let texts: Vec<_> = Why::ALL.iter().map(|w| w.as_str()).collect();
        assert_eq!(
            texts,
            [
                "stuck at shutdown",
                "shutdown is in progress",
                "not registered",
                "no data received from server",
                "no data sent to server",
                "all is ok"
            ]
        );
        for w in Why::ALL {
            assert_eq!(Why::from_text(w.as_str()), Some(w));
        }
        assert_eq!(Why::from_text("ok"), None);
    }

    #[test]
    fn shutdown_at_epoch_is_not_recorded() {
        let mut s = Sensor::new();
        s.starting(secs(10.0));
        s.shutting_down(Time::ZERO);
        assert!(!s.shutdown_recorded());
        assert_eq!(s.why(secs(20.0), &Windows::default()), Why::AllIsOk);
    }

    #[test]
    fn next_change_walks_through_the_rules() {
        let w = Windows::default();
        let mut s = Sensor::new();
        s.starting(secs(1000.0));
        s.server_data_received(secs(1000.0));
        s.server_data_sent(secs(1000.0));
        assert_eq!(
            s.next_change(secs(1000.0), &w),
            Some(secs(1000.0 + 21_600.0))
        );
        assert_eq!(s.why(secs(22_600.0), &w), Why::NoDataSent);
        assert_eq!(s.next_change(secs(22_600.0), &w), Some(secs(65_800.0)));
        assert_eq!(s.why(secs(65_800.0), &w), Why::NoDataReceived);
        assert_eq!(s.next_change(secs(65_800.0), &w), None);
        s.unregistered();
        assert_eq!(s.next_change(secs(0.0), &w), None);
        s.shutting_down(secs(70_000.0));
        assert_eq!(s.next_change(secs(0.0), &w), Some(secs(70_600.0)));
    }

    #[test]
    fn custom_windows_apply() {
        let w = Windows::new(
            Duration::from_secs(100),
            Duration::from_secs(50),
            Duration::from_secs(5),
        )
        .expect("short windows");
        let mut s = Sensor::new();
        s.starting(secs(1000.0));
        assert_eq!(s.why(secs(1049.0), &w), Why::AllIsOk);
        assert_eq!(s.why(secs(1050.0), &w), Why::NoDataSent);
        assert_eq!(s.why(secs(1100.0), &w), Why::NoDataReceived);
        s.shutting_down(secs(2000.0));
        assert_eq!(s.why(secs(2005.0), &w), Why::StuckAtShutdown);
        assert!(Windows::new(Duration::MAX, Duration::ZERO, Duration::ZERO).is_err());
    }

    #[test]
    fn sensor_is_small() {
        assert_eq!(std::mem::size_of::<Sensor>(), 40);
    }
}
