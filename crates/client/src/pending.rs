//! The reporter's buffer of events that the server has not acknowledged yet.
//!
//! Pure bookkeeping, no I/O: sequence numbers are assigned here, batches are
//! cut here, and acknowledgements and a reconnect's `last_applied_seq` drop
//! what the server holds. The reporter's task only moves these batches over a
//! stream.

use std::collections::VecDeque;

use fleet_health_sensor::Time;
use fleet_health_types::{EventKind, wire};

use crate::proto::{self, Event};

/// Unacknowledged events, oldest first, with increasing sequence numbers.
#[derive(Debug)]
pub(crate) struct Pending {
    events: VecDeque<Event>,
    capacity: usize,
    /// The last sequence number assigned (0: none yet).
    last_seq: u64,
    /// Everything up to here was sent on the current stream.
    sent_through: u64,
    /// Everything up to here is acknowledged.
    acked_through: u64,
    /// Events dropped, oldest first, because the buffer was full.
    dropped: u64,
}

impl Pending {
    /// A buffer that keeps at most `capacity` (at least 1) events.
    pub(crate) fn new(capacity: usize) -> Pending {
        Pending {
            events: VecDeque::new(),
            capacity: capacity.max(1),
            last_seq: 0,
            sent_through: 0,
            acked_through: 0,
            dropped: 0,
        }
    }

    /// Queues an event with the next sequence number and returns the number.
    /// When the buffer is full the oldest event is dropped (and counted): the
    /// newest events say the most about the agent's health now.
    pub(crate) fn push(&mut self, kind: EventKind, time: Option<Time>) -> u64 {
        if self.events.len() >= self.capacity {
            self.events.pop_front();
            self.dropped += 1;
        }
        self.last_seq += 1;
        self.events.push_back(Event {
            seq: self.last_seq,
            kind: proto::EventKind::from(kind) as i32,
            time: time.map(wire::timestamp),
        });
        self.last_seq
    }

    /// Drops every event up to `through`; returns how many were dropped. An
    /// acknowledgement of more than was sent is taken only up to what was sent.
    pub(crate) fn ack(&mut self, through: u64) -> usize {
        let through = through.min(self.last_seq);
        if through <= self.acked_through {
            return 0;
        }
        self.acked_through = through;
        self.sent_through = self.sent_through.max(through);
        let before = self.events.len();
        while self.events.front().is_some_and(|e| e.seq <= through) {
            self.events.pop_front();
        }
        before - self.events.len()
    }

    /// A new stream begins: the server already applied everything up to
    /// `last_applied`, and the rest must be sent again.
    pub(crate) fn restart(&mut self, last_applied: u64) {
        self.ack(last_applied);
        self.sent_through = self.acked_through;
    }

    /// The next batch of unsent events, at most `max` of them, now counted as
    /// sent; `None` when everything was sent.
    pub(crate) fn next_batch(&mut self, max: usize) -> Option<Vec<Event>> {
        let start = self.events.partition_point(|e| e.seq <= self.sent_through);
        if start == self.events.len() {
            return None;
        }
        let batch: Vec<Event> = self
            .events
            .range(start..)
            .take(max.max(1))
            .copied()
            .collect();
        self.sent_through = batch.last().map_or(self.sent_through, |e| e.seq);
        Some(batch)
    }

    /// Whether there are events not yet sent on the current stream.
    pub(crate) fn has_unsent(&self) -> bool {
        self.events
            .back()
            .is_some_and(|e| e.seq > self.sent_through)
    }

    /// How many events are not acknowledged.
    pub(crate) fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether every event is acknowledged.
    pub(crate) fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The last sequence number assigned.
    pub(crate) fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Everything up to this sequence number is acknowledged.
    pub(crate) fn acked_through(&self) -> u64 {
        self.acked_through
    }

    /// How many events were dropped because the buffer was full.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seqs(batch: &[Event]) -> Vec<u64> {
        batch.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn numbers_start_at_one_and_batches_follow_the_backlog() {
        let mut p = Pending::new(100);
        for _ in 0..5 {
            p.push(EventKind::ServerDataSent, None);
        }
        assert_eq!(p.last_seq(), 5);
        assert_eq!(seqs(&p.next_batch(2).unwrap()), [1, 2]);
        assert_eq!(seqs(&p.next_batch(10).unwrap()), [3, 4, 5]);
        assert!(p.next_batch(10).is_none());
        assert!(!p.has_unsent());
        assert_eq!(p.len(), 5);
    }

    #[test]
    fn acks_are_cumulative_and_never_go_back() {
        let mut p = Pending::new(100);
        for _ in 0..5 {
            p.push(EventKind::Heartbeat, None);
        }
        p.next_batch(10);
        assert_eq!(p.ack(3), 3);
        assert_eq!(p.acked_through(), 3);
        assert_eq!(p.ack(2), 0);
        assert_eq!(p.acked_through(), 3);
        // More than was ever assigned: taken up to the last number only.
        assert_eq!(p.ack(99), 2);
        assert_eq!(p.acked_through(), 5);
        assert!(p.is_empty());
        assert_eq!(p.push(EventKind::Heartbeat, None), 6);
    }

    #[test]
    fn a_restart_resends_what_the_server_did_not_apply() {
        let mut p = Pending::new(100);
        for _ in 0..6 {
            p.push(EventKind::ServerDataReceived, None);
        }
        assert_eq!(seqs(&p.next_batch(10).unwrap()), [1, 2, 3, 4, 5, 6]);
        p.ack(2);
        // The stream broke; the server says it applied up to 4.
        p.restart(4);
        assert_eq!(p.acked_through(), 4);
        assert_eq!(seqs(&p.next_batch(10).unwrap()), [5, 6]);
        // Again, and this time the server had applied nothing new.
        p.restart(0);
        assert_eq!(seqs(&p.next_batch(10).unwrap()), [5, 6]);
    }

    #[test]
    fn a_full_buffer_drops_the_oldest_and_counts_it() {
        let mut p = Pending::new(3);
        for _ in 0..5 {
            p.push(EventKind::ServerDataSent, None);
        }
        assert_eq!(p.len(), 3);
        assert_eq!(p.dropped(), 2);
        assert_eq!(seqs(&p.next_batch(10).unwrap()), [3, 4, 5]);
        // A gap in the numbers is fine: they only have to increase.
        p.ack(5);
        assert!(p.is_empty());
    }

    #[test]
    fn events_keep_their_kind_and_time() {
        let mut p = Pending::new(10);
        let t = Time::from_unix(1_700_000_000, 123_456_000).unwrap();
        p.push(EventKind::Starting, Some(t));
        let batch = p.next_batch(1).unwrap();
        assert_eq!(batch[0].kind(), proto::EventKind::Starting);
        let sent = batch[0].time.unwrap();
        assert_eq!((sent.seconds, sent.nanos), (1_700_000_000, 123_456_000));
    }
}
