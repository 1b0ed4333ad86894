//! The fleet's rules that wrap the reference sensor (`stopped`, `inactive`, `not reporting`).

use std::time::Duration;

use fleet_health_sensor::{Sensor, Time, Windows};

// The vocabulary (IDs, labels, the why, states, event kinds) is
// fleet-health-types', shared with the clients; the server names it from here.
pub use fleet_health_types::{
    AgentEvent, AgentId, AgentIdError, ArcStr, ByKind, ByWhy, EventKind, LabelSet, Labels,
    MaintenanceFilter, State, StateFilter, Why, check_labels,
};

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
    /// For agents of shards a cluster's node took: silence counts from no
    /// earlier than this either (the node's latest takeover; `Time::ZERO`:
    /// none).
    pub taken_from: Time,
    /// Assume that a connected agent keeps up its heartbeats (forecasts).
    pub forecast: bool,
}

/// Which grace holds back an agent's `not reporting`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Grace {
    /// The grace after the server's start.
    #[default]
    Start,
    /// None: it was already `not reporting` when it was loaded.
    None,
    /// Its shard was taken by this node (many servers): the grace after the
    /// node's latest takeover too.
    Taken,
}

/// The part of an agent's record that the rules read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Facts {
    pub sensor: Sensor,
    pub last_heard: Time,
    /// When it said "stopped", if it has not started since.
    pub stopped_at: Option<Time>,
    pub connected: bool,
    /// Which grace holds back its `not reporting`.
    pub grace: Grace,
}

impl Facts {
    /// The verdict at `at`: stopped, then inactive, then not reporting, then
    /// the reference's rules.
    pub fn why_at(&self, at: Time, e: &Eval<'_>) -> Why {
        if self.stopped_at.is_some() {
            return Why::Stopped;
        }
        let heard = self.heard_as_of(at, e);
        if at.since(heard) >= e.rules.inactive {
            return Why::Inactive;
        }
        if !e.rules.silence.is_zero() && at.since(self.silent_from(heard, e)) >= e.rules.silence {
            return Why::NotReporting;
        }
        Why::from(self.sensor.why(at, &e.rules.windows))
    }

    /// Silence counts from the last word, but not from before the server's
    /// start (the grace after a restart), unless the agent was already silent
    /// then.
    fn silent_from(&self, heard: Time, e: &Eval<'_>) -> Time {
        match self.grace {
            Grace::None => heard,
            Grace::Start => heard.max(e.grace_from),
            Grace::Taken => heard.max(e.grace_from).max(e.taken_from),
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
        let current = self.why_at(now, e);
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
            if self.why_at(next, e) != current {
                return Some(next);
            }
            t = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::t;

    fn eval(rules: &FleetRules) -> Eval<'_> {
        Eval {
            rules,
            grace_from: Time::ZERO,
            taken_from: Time::ZERO,
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
            grace: Grace::Start,
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
        assert_eq!(f.why_at(t(1000), &e), Why::AllIsOk);
        assert_eq!(f.why_at(t(1299), &e), Why::AllIsOk);
        assert_eq!(f.why_at(t(1300), &e), Why::NotReporting);
        assert_eq!(f.why_at(t(1000 + 7 * 86_400), &e), Why::Inactive);
        f.stopped_at = Some(t(1000));
        assert_eq!(f.why_at(t(1000 + 8 * 86_400), &e), Why::Stopped);
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
        assert_eq!(f.why_at(t(2000), &e), Why::AllIsOk);
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
        assert_eq!(f.why_at(t(5000), &e), Why::AllIsOk);
        assert_eq!(f.next_change(t(5000), &e), Some(t(5300)));
    }

    #[test]
    fn an_agent_of_a_shard_taken_gets_the_takeovers_grace() {
        let rules = FleetRules::default();
        let silence = rules.silence.as_secs() as i64;
        let e = Eval {
            taken_from: t(5000),
            ..eval(&rules)
        };
        let mut f = facts(1000, 1000);
        // Without it: not reporting long ago.
        assert_eq!(f.why_at(t(5000 + silence - 1), &e), Why::NotReporting);
        f.grace = Grace::Taken;
        assert_ne!(f.why_at(t(5000 + silence - 1), &e), Why::NotReporting);
        assert_eq!(f.why_at(t(5000 + silence), &e), Why::NotReporting);
    }

    #[test]
    fn an_agent_silent_before_a_restart_gets_no_grace() {
        let rules = FleetRules::default();
        let e = Eval {
            grace_from: t(5000),
            ..eval(&rules)
        };
        let mut f = facts(1000, 1000);
        f.grace = Grace::None;
        assert_eq!(f.why_at(t(5000), &e), Why::NotReporting);
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
        assert_eq!(f.why_at(t(1000 + 7200), &e), Why::AllIsOk);
        assert_eq!(f.why_at(t(1000 + 21_600), &e), Why::NoDataSent);
        f.connected = false;
        assert_eq!(f.why_at(t(1000 + 7200), &e), Why::NotReporting);
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
