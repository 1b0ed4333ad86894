//! Where "now" comes from. Everything that depends on the time takes a
//! [`Clock`], so that tests of the 6 h, 18 h and 600 s rules take
//! milliseconds: they move a [`ManualClock`] instead of waiting.

use std::sync::Arc;
use std::time::Duration;

use fleet_health_sensor::Time;
use tokio::sync::watch;

/// A source of the current time, and a way to wait for a time to come.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> Time;

    /// Waits until `now() >= deadline` (or a little earlier: callers check the
    /// time again when it returns).
    fn sleep_until(
        &self,
        deadline: Time,
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Time {
        // Saturates at the ends of the range (a clock set past year 9999).
        fleet_health_types::wire::now()
    }

    fn sleep_until(
        &self,
        deadline: Time,
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        // Sleep at most a minute at a time: the wall clock may be set.
        let wait = deadline.since(self.now()).min(Duration::from_secs(60));
        Box::pin(tokio::time::sleep(wait))
    }
}

/// A clock that moves only when told: for tests.
#[derive(Clone, Debug)]
pub struct ManualClock {
    now: Arc<watch::Sender<Time>>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: Time) -> ManualClock {
        ManualClock {
            now: Arc::new(watch::Sender::new(start)),
        }
    }

    /// Sets the time (it may go backwards, as a wall clock may).
    pub fn set(&self, to: Time) {
        self.now.send_replace(to);
    }

    /// Moves the time forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.now.send_modify(|t| *t = t.saturating_add(by));
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Time {
        *self.now.borrow()
    }

    fn sleep_until(
        &self,
        deadline: Time,
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        let mut rx = self.now.subscribe();
        Box::pin(async move {
            // The sender lives as long as self, so this only ends at the deadline.
            let _ = rx.wait_for(|t| *t >= deadline).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_clock_wakes_sleepers_when_moved() {
        let clock = ManualClock::new(Time::ZERO);
        let deadline = Time::ZERO.saturating_add(Duration::from_secs(10));
        let waiter = {
            let clock = clock.clone();
            tokio::spawn(async move { clock.sleep_until(deadline).await })
        };
        clock.advance(Duration::from_secs(5));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        clock.advance(Duration::from_secs(5));
        waiter.await.expect("sleeper ends");
        assert_eq!(clock.now(), deadline);
    }
}
