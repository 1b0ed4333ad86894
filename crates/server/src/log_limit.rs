//! Rate limits for log lines that a flood would multiply (refused streams
//! under an attack, transitions under a storm): at most so many lines a
//! second of each kind; the rest are counted and reported in one line when
//! the next second begins. Metrics keep the exact counts.
//!
//! No lock: atomics per kind.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// One kind of log line's limit.
#[derive(Debug)]
pub struct LogLimit {
    what: &'static str,
    per_sec: u32,
    second: AtomicU64,
    count: AtomicU32,
    suppressed: AtomicU64,
}

/// Refused agent streams.
pub static REJECTIONS: LogLimit = LogLimit::new("agent stream refused", 20);
/// Connections refused or failing their handshake.
pub static CONNECTIONS: LogLimit = LogLimit::new("connection refused", 20);
/// Agent transitions.
pub static TRANSITIONS: LogLimit = LogLimit::new("agent transition", 50);

impl LogLimit {
    /// At most `per_sec` lines a second of `what`.
    pub const fn new(what: &'static str, per_sec: u32) -> LogLimit {
        LogLimit {
            what,
            per_sec,
            second: AtomicU64::new(0),
            count: AtomicU32::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether a line may be written now.
    pub fn allow(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.allow_at(now)
    }

    fn allow_at(&self, second: u64) -> bool {
        if self.second.swap(second, Ordering::AcqRel) != second {
            self.count.store(0, Ordering::Release);
            let dropped = self.suppressed.swap(0, Ordering::AcqRel);
            if dropped > 0 {
                tracing::info!(
                    suppressed = dropped,
                    "{} log lines held back in the last second (more than {}/s); metrics count them all",
                    self.what,
                    self.per_sec
                );
            }
        }
        if self.count.fetch_add(1, Ordering::AcqRel) < self.per_sec {
            true
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_lines_a_second_and_the_rest_counted() {
        let limit = LogLimit::new("test", 3);
        let allowed = (0..10).filter(|_| limit.allow_at(100)).count();
        assert_eq!(allowed, 3);
        assert_eq!(limit.suppressed.load(Ordering::Relaxed), 7);
        assert!(limit.allow_at(101), "a new second");
        assert_eq!(limit.suppressed.load(Ordering::Relaxed), 0);
    }
}
