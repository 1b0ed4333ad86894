//! The events an agent reports: the sensor's six and the fleet's two.

use std::fmt;

use fleet_health_sensor::Time;

/// What happened to an agent.
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
    /// How many there are.
    pub const COUNT: usize = 8;

    /// Every kind, in a fixed order (the index of [`EventKind::index`]).
    pub const ALL: [EventKind; EventKind::COUNT] = [
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

    /// The name, as the reference sensor spells its methods.
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

    /// The kind named as the reference spells its methods (`shutting_down`).
    pub fn parse(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

crate::per_variant!(
    /// One value per event kind, indexed by the kind itself: the events of
    /// each kind in a batch, a counter for each.
    ByKind,
    EventKind,
    EventKind::COUNT
);

/// One event, as a reporter numbers it and the server applies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentEvent {
    /// The reporter's sequence number (at least 1, increasing).
    pub seq: u64,
    /// What happened.
    pub kind: EventKind,
    /// When it happened on the agent; `None`: when the server received it.
    pub time: Option<Time>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for (i, k) in EventKind::ALL.into_iter().enumerate() {
            assert_eq!(k.index(), i);
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(EventKind::parse("shutting-down"), None);
        let mut kinds = ByKind::<u32>::default();
        kinds[EventKind::Stopped] += 1;
        assert_eq!(kinds.into_array()[EventKind::Stopped.index()], 1);
    }
}
