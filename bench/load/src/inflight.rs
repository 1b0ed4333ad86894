//! The unacknowledged messages of one stream, settled by cumulative acks.

use std::collections::VecDeque;

use tokio::time::Instant;

/// An ack above the last sequence number sent: the server acknowledged
/// events it cannot have received.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the server acknowledged sequence number {through}, above the last one sent ({last_sent})")]
pub struct AckBeyondSent {
    /// The ack's `applied_through`.
    pub through: u64,
    /// The last sequence number sent on the stream.
    pub last_sent: u64,
}

/// The unacknowledged messages of one stream, oldest first: the last
/// sequence number of each and when it was sent.
#[derive(Debug, Default)]
pub struct Inflight {
    sent: VecDeque<(u64, Instant)>,
    last_sent: u64,
}

impl Inflight {
    /// A message whose last event has sequence number `last_seq` went out at
    /// `at`. Sequence numbers must increase from message to message.
    pub fn push(&mut self, last_seq: u64, at: Instant) {
        debug_assert!(last_seq > self.last_sent, "sequence numbers increase");
        self.sent.push_back((last_seq, at));
        self.last_sent = last_seq;
    }

    /// Messages not yet acknowledged.
    pub fn len(&self) -> usize {
        self.sent.len()
    }

    /// Whether every message sent is acknowledged.
    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }

    /// Settles the messages an ack of `through` covers (every one whose last
    /// sequence number is at most `through`), calling `each` with the send
    /// time of each; returns how many.
    pub fn ack(
        &mut self,
        through: u64,
        mut each: impl FnMut(Instant),
    ) -> Result<u64, AckBeyondSent> {
        if through > self.last_sent {
            return Err(AckBeyondSent {
                through,
                last_sent: self.last_sent,
            });
        }
        let mut settled = 0;
        while let Some(&(seq, at)) = self.sent.front()
            && seq <= through
        {
            self.sent.pop_front();
            each(at);
            settled += 1;
        }
        Ok(settled)
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn an_ack_settles_every_message_it_covers_and_no_more() {
        let t0 = Instant::now();
        let mut inflight = Inflight::default();
        for (i, last) in [10, 20, 30, 40].into_iter().enumerate() {
            inflight.push(last, t0 + Duration::from_millis(i as u64));
        }
        let mut seen = Vec::new();
        // Within the third message: the first two are settled.
        assert_eq!(inflight.ack(25, |at| seen.push(at)), Ok(2));
        assert_eq!(seen, [t0, t0 + Duration::from_millis(1)]);
        // A repeated (older) ack settles nothing.
        assert_eq!(inflight.ack(20, |_| panic!("nothing to settle")), Ok(0));
        assert_eq!(inflight.len(), 2);
        assert_eq!(inflight.ack(40, |_| {}), Ok(2));
        assert!(inflight.is_empty());
    }

    #[test]
    fn an_ack_beyond_what_was_sent_is_an_error() {
        let mut inflight = Inflight::default();
        inflight.push(5, Instant::now());
        assert_eq!(
            inflight.ack(6, |_| {}),
            Err(AckBeyondSent {
                through: 6,
                last_sent: 5
            })
        );
        assert_eq!(inflight.len(), 1, "nothing settled");
    }
}
