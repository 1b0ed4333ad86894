//! Exponential backoff with jitter, for reconnecting.
//!
//! Kept here rather than taken from `backon`: its jitter adds up to a whole
//! delay on top of the capped one (delays up to twice `max`), where a fleet
//! operator sets `max` as the longest an agent stays away; "equal jitter"
//! (each delay drawn from the upper half of its ceiling) keeps that bound.

use std::time::Duration;

/// How long to wait between reconnection attempts: doubling from `initial` up
/// to `max`, each delay drawn at random from its upper half ("equal jitter"),
/// so that a fleet that lost the server at once does not come back at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffConfig {
    /// The first delay's ceiling.
    pub initial: Duration,
    /// The largest delay.
    pub max: Duration,
}

impl Default for BackoffConfig {
    fn default() -> BackoffConfig {
        BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
        }
    }
}

/// The state of a backoff: how many attempts failed in a row.
#[derive(Debug)]
pub(crate) struct Backoff {
    config: BackoffConfig,
    failures: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    pub(crate) fn new(config: BackoffConfig, rng: fastrand::Rng) -> Backoff {
        Backoff {
            config,
            failures: 0,
            rng,
        }
    }

    /// The delay before the next attempt; each call doubles the ceiling.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        let half = ceiling / 2;
        let extra_nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(self.rng.u64(0..=extra_nanos))
    }

    /// The ceiling of the next delay.
    pub(crate) fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.failures.min(31)).unwrap_or(u32::MAX);
        self.config
            .initial
            .checked_mul(factor)
            .unwrap_or(self.config.max)
            .min(self.config.max)
    }

    /// Back to the first delay, after a connection that worked.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_max_and_stay_in_the_upper_half() {
        let config = BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        let mut b = Backoff::new(config, fastrand::Rng::with_seed(7));
        let ceilings = [100, 200, 400, 800, 1600, 2000, 2000, 2000];
        for ms in ceilings {
            let ceiling = Duration::from_millis(ms);
            assert_eq!(b.ceiling(), ceiling);
            let d = b.next_delay();
            assert!(d >= ceiling / 2 && d <= ceiling, "{d:?} vs {ceiling:?}");
        }
        for _ in 0..100 {
            assert!(b.next_delay() <= config.max);
        }
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }

    #[test]
    fn delays_are_jittered() {
        let mut b = Backoff::new(BackoffConfig::default(), fastrand::Rng::with_seed(1));
        let mut seen = std::collections::HashSet::new();
        for _ in 0..20 {
            b.reset();
            for _ in 0..5 {
                b.next_delay();
            }
            seen.insert(b.next_delay());
        }
        assert!(seen.len() > 10, "{seen:?}");
    }
}
