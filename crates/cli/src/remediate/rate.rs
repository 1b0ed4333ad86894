//! The global start rate: never more than N program starts in any window of
//! a given length (`--rate 10/m`), as a sliding window, with reservations.
//!
//! A start is reserved when the remediator decides to claim an agent, and
//! becomes a start at the moment the program starts (or is given back when
//! the remediator does not act after all). A reservation counts as a start
//! from the moment it is made until it is given back, so that the number of
//! reservations plus the starts inside the window never exceeds N: every
//! window of the given length then holds at most N starts, however long the
//! claims take. Pure: the caller passes the time.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use fleet_health_client::Time;

/// N starts per window, as `--rate` takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// How many starts at most.
    pub count: u32,
    /// In any window this long.
    pub per: Duration,
}

impl Rate {
    /// Parses `N/s`, `N/m`, `N/h` (also `N/10s`, `N/5m`: a window with a
    /// number); N at least 1.
    pub fn parse(s: &str) -> Result<Rate, String> {
        let invalid = || format!("invalid rate {s:?}: expected N/s, N/m or N/h (such as 10/m)");
        let (n, window) = s.trim().split_once('/').ok_or_else(invalid)?;
        let count: u32 = n.trim().parse().map_err(|_| invalid())?;
        if count == 0 {
            return Err(format!("invalid rate {s:?}: at least 1 start per window"));
        }
        let window = window.trim();
        let per = match window {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            w => humantime::parse_duration(w).map_err(|_| invalid())?,
        };
        if per.is_zero() {
            return Err(invalid());
        }
        Ok(Rate { count, per })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            1 if self.per.subsec_nanos() == 0 => "s".to_owned(),
            60 if self.per.subsec_nanos() == 0 => "m".to_owned(),
            3600 if self.per.subsec_nanos() == 0 => "h".to_owned(),
            _ => humantime::format_duration(self.per).to_string(),
        };
        write!(f, "{}/{unit}", self.count)
    }
}

/// The sliding window of starts, with reservations.
#[derive(Clone, Debug)]
pub struct RateLimiter {
    rate: Rate,
    /// Start times, oldest first; those older than the window are dropped.
    starts: VecDeque<Time>,
    /// Reservations not yet started nor given back.
    reserved: u32,
}

impl RateLimiter {
    /// An empty window.
    pub fn new(rate: Rate) -> RateLimiter {
        RateLimiter {
            rate,
            starts: VecDeque::new(),
            reserved: 0,
        }
    }

    fn expire(&mut self, now: Time) {
        while let Some(&oldest) = self.starts.front() {
            // A start at `oldest` is in the windows (t - per, t] with
            // t < oldest + per.
            if oldest.saturating_add(self.rate.per) <= now {
                self.starts.pop_front();
            } else {
                break;
            }
        }
    }

    /// Reserves a start at `now` if the window has room; false if not.
    pub fn try_reserve(&mut self, now: Time) -> bool {
        self.expire(now);
        let used = self.starts.len() as u64 + u64::from(self.reserved);
        if used < u64::from(self.rate.count) {
            self.reserved += 1;
            true
        } else {
            false
        }
    }

    /// A reservation became a start at `at`.
    pub fn started(&mut self, at: Time) {
        self.reserved = self.reserved.saturating_sub(1);
        // Kept in order even if the clock stepped back.
        let at = self.starts.back().map_or(at, |&last| at.max(last));
        self.starts.push_back(at);
    }

    /// A reservation was given back (the remediator did not act).
    pub fn give_back(&mut self) {
        self.reserved = self.reserved.saturating_sub(1);
    }

    /// When a reservation may next succeed, if not now: when the oldest
    /// start leaves the window. `None` when only given-back or started
    /// reservations can free room (nothing to wait for by time alone).
    pub fn next_free(&mut self, now: Time) -> Option<Time> {
        self.expire(now);
        let used = self.starts.len() as u64 + u64::from(self.reserved);
        if used < u64::from(self.rate.count) {
            return Some(now);
        }
        self.starts
            .front()
            .map(|&oldest| oldest.saturating_add(self.rate.per))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: f64) -> Time {
        Time::from_secs_f64(1_700_000_000.0 + secs).unwrap()
    }

    #[test]
    fn rates_parse_as_operators_write_them() {
        assert_eq!(
            Rate::parse("10/m").unwrap(),
            Rate {
                count: 10,
                per: Duration::from_secs(60)
            }
        );
        assert_eq!(Rate::parse("1/s").unwrap().per, Duration::from_secs(1));
        assert_eq!(Rate::parse("5/h").unwrap().per, Duration::from_secs(3600));
        assert_eq!(Rate::parse("2/10s").unwrap().per, Duration::from_secs(10));
        for bad in ["10", "0/m", "x/m", "10/fortnight", "-1/m", "3/0s"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Rate::parse("10/m").unwrap().to_string(), "10/m");
        assert_eq!(Rate::parse("2/10s").unwrap().to_string(), "2/10s");
    }

    #[test]
    fn no_window_ever_holds_more_than_n_starts() {
        let rate = Rate {
            count: 3,
            per: Duration::from_secs(10),
        };
        let mut limiter = RateLimiter::new(rate);
        let mut starts = Vec::new();
        // Try every 100 ms for 60 s; each reservation starts 0.7 s later
        // (the claim's round trip), some are given back.
        let mut pending: Vec<(f64, bool)> = Vec::new();
        let mut i = 0u32;
        let mut now = 0.0;
        while now < 60.0 {
            pending.retain(|&(due, give_back)| {
                if due <= now {
                    if give_back {
                        limiter.give_back();
                    } else {
                        limiter.started(t(now));
                        starts.push(now);
                    }
                    false
                } else {
                    true
                }
            });
            if limiter.try_reserve(t(now)) {
                i += 1;
                pending.push((now + 0.7, i.is_multiple_of(4)));
            }
            now += 0.1;
        }
        assert!(starts.len() > 10, "{starts:?}");
        for (k, &s) in starts.iter().enumerate() {
            let in_window = starts[k..].iter().filter(|&&x| x < s + 10.0 - 1e-9).count();
            assert!(in_window <= 3, "{in_window} starts from {s}: {starts:?}");
        }
    }

    #[test]
    fn it_says_when_room_comes_back() {
        let mut limiter = RateLimiter::new(Rate {
            count: 1,
            per: Duration::from_secs(60),
        });
        assert_eq!(limiter.next_free(t(0.0)), Some(t(0.0)));
        assert!(limiter.try_reserve(t(0.0)));
        // Reserved, not started: only starting or giving back frees it.
        assert_eq!(limiter.next_free(t(1.0)), None);
        limiter.started(t(2.0));
        assert!(!limiter.try_reserve(t(30.0)));
        assert_eq!(limiter.next_free(t(30.0)), Some(t(62.0)));
        assert!(!limiter.try_reserve(t(61.9)));
        assert!(limiter.try_reserve(t(62.0)));
        limiter.give_back();
        assert!(limiter.try_reserve(t(62.0)));
    }
}
