//! The tally: which agents have each reason (an ordered index per reason,
//! whose sizes are the counts), and the storm guard computed from it.
//!
//! Lock: one mutex over the index and the storm flag, so that counts and the
//! flag always agree. It is a leaf lock: taken under an agent's map entry,
//! never the other way round, and nothing else is locked while it is held.
//! Readers copy keys out and release it before looking agents up.

use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::{Arc, Mutex};

use crate::model::{ByWhy, FleetRules, Reason, State};

use super::lock;
use super::types::StormView;

/// The index and the storm flag.
#[derive(Debug, Default)]
struct Index {
    /// The agents with each reason, by ID.
    by_why: ByWhy<BTreeSet<Arc<str>>>,
    /// Whether the storm flag is up.
    storm: bool,
}

/// Counts by reason, the per-reason index and the storm guard.
#[derive(Debug)]
pub(super) struct Tally {
    index: Mutex<Index>,
    storm_share: f64,
    storm_min_agents: u64,
}

impl Tally {
    /// An empty tally with the storm thresholds of `rules`.
    pub(super) fn new(rules: &FleetRules) -> Tally {
        Tally {
            index: Mutex::new(Index::default()),
            storm_share: rules.storm_share,
            storm_min_agents: rules.storm_min_agents,
        }
    }

    /// Moves agent `key` from reason `from` to reason `to` (`None`: not
    /// known before, or no longer known).
    pub(super) fn moved(&self, key: &Arc<str>, from: Option<Reason>, to: Option<Reason>) {
        if from == to {
            return;
        }
        let mut index = lock(&self.index);
        if let Some(r) = from {
            index.by_why[r].remove(key);
        }
        if let Some(r) = to {
            index.by_why[r].insert(key.clone());
        }
    }

    /// Raises or lowers the storm flag to match the counts; returns the
    /// reading if the flag changed.
    pub(super) fn check_storm(&self) -> Option<StormView> {
        let mut index = lock(&self.index);
        let storm = self.storm_of(&index.by_why.each_len());
        (index.storm != storm.active).then(|| {
            index.storm = storm.active;
            storm
        })
    }

    /// How many agents have each reason, as settled.
    pub(super) fn counts(&self) -> ByWhy<u64> {
        lock(&self.index).by_why.each_len()
    }

    /// Up to `take` agents with any of `reasons` (as settled), by ID, after
    /// `after`.
    pub(super) fn keys(
        &self,
        reasons: &[Reason],
        after: Option<&str>,
        take: usize,
    ) -> Vec<Arc<str>> {
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut keys: Vec<Arc<str>> = {
            let index = lock(&self.index);
            reasons
                .iter()
                .flat_map(|r| {
                    index.by_why[*r]
                        .range::<str, _>((from, Bound::Unbounded))
                        .take(take)
                        .cloned()
                })
                .collect()
        };
        if reasons.len() > 1 {
            keys.sort_unstable();
        }
        keys.truncate(take);
        keys
    }

    /// The storm guard for these counts.
    pub(super) fn storm_of(&self, counts: &ByWhy<u64>) -> StormView {
        let faulty = counts.in_state(State::Faulty);
        let active_agents = faulty + counts.in_state(State::Healthy);
        let dominant = counts
            .iter()
            .filter(|(r, _)| r.state() == State::Faulty)
            .map(|(r, n)| (r, *n))
            .find(|(_, n)| *n * 2 > faulty);
        StormView {
            active: active_agents >= self.storm_min_agents
                && active_agents > 0
                && faulty as f64 >= self.storm_share * active_agents as f64,
            faulty,
            active_agents,
            threshold: self.storm_share,
            min_agents: self.storm_min_agents,
            dominant,
        }
    }
}

trait EachLen {
    fn each_len(&self) -> ByWhy<u64>;
}

impl EachLen for ByWhy<BTreeSet<Arc<str>>> {
    fn each_len(&self) -> ByWhy<u64> {
        ByWhy::from_fn(|r| self[r].len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn the_index_lists_by_id_across_reasons() {
        let tally = Tally::new(&FleetRules::default());
        tally.moved(&key("c"), None, Some(Reason::NoDataSent));
        tally.moved(&key("a"), None, Some(Reason::NotReporting));
        tally.moved(&key("b"), None, Some(Reason::AllIsOk));
        tally.moved(&key("d"), None, Some(Reason::NoDataSent));
        let faulty: Vec<Reason> = Reason::ALL
            .into_iter()
            .filter(|r| r.state() == State::Faulty)
            .collect();
        let keys = tally.keys(&faulty, None, 10);
        assert_eq!(keys, [key("a"), key("c"), key("d")]);
        assert_eq!(tally.keys(&faulty, Some("a"), 1), [key("c")]);
        tally.moved(&key("c"), Some(Reason::NoDataSent), Some(Reason::AllIsOk));
        tally.moved(&key("d"), Some(Reason::NoDataSent), None);
        assert_eq!(tally.keys(&faulty, None, 10), [key("a")]);
        let counts = tally.counts();
        assert_eq!(counts[Reason::AllIsOk], 2);
        assert_eq!(counts.total(), 3);
    }

    #[test]
    fn the_storm_flag_follows_the_share() {
        let rules = FleetRules {
            storm_min_agents: 4,
            ..FleetRules::default()
        };
        let tally = Tally::new(&rules);
        for k in ["a", "b", "c"] {
            tally.moved(&key(k), None, Some(Reason::NoDataSent));
        }
        // Three agents: under the minimum fleet.
        assert_eq!(tally.check_storm(), None);
        tally.moved(&key("d"), None, Some(Reason::AllIsOk));
        let up = tally.check_storm().expect("raised");
        assert!(up.active);
        assert_eq!(up.dominant, Some((Reason::NoDataSent, 3)));
        assert_eq!(tally.check_storm(), None, "told once");
        tally.moved(&key("a"), Some(Reason::NoDataSent), Some(Reason::AllIsOk));
        tally.moved(&key("b"), Some(Reason::NoDataSent), Some(Reason::Inactive));
        let down = tally.check_storm().expect("lowered");
        assert!(!down.active);
        assert_eq!((down.faulty, down.active_agents), (1, 3));
    }
}
