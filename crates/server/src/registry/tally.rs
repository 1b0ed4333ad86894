//! The tally: which agents have each reason (an ordered set of IDs per
//! reason, whose sizes are the counts), and the storm guard computed from it.
//!
//! Lock: one mutex over the index and the storm flag, so that counts and the
//! flag always agree. It is a leaf lock: taken under an agent's map entry,
//! never the other way round, and nothing else is locked while it is held.
//! Readers copy keys out and release it before looking agents up.

use crate::model::ArcStr;
use std::collections::HashSet;
use std::sync::Mutex;

use crate::model::{ByWhy, FleetRules, State, Why};

use super::lock;
use super::types::StormView;

/// The index and the storm flag.
#[derive(Debug, Default)]
struct Index {
    /// The agents with each reason, by ID.
    by_why: ByWhy<IdSet>,
    /// Whether the storm flag is up.
    storm: bool,
    /// Agents under maintenance (usually few).
    maintained: HashSet<ArcStr>,
    /// How many of them have each reason, as settled.
    maintained_by_why: ByWhy<u64>,
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
    pub(super) fn moved(&self, key: &ArcStr, from: Option<Why>, to: Option<Why>) {
        if from == to {
            return;
        }
        let mut index = lock(&self.index);
        if let Some(r) = from {
            index.by_why[r].remove(key);
        }
        if let Some(r) = to {
            index.by_why[r].insert(key);
        }
        if !index.maintained.is_empty() && index.maintained.contains(key) {
            if let Some(r) = from {
                index.maintained_by_why[r] -= 1;
            }
            match to {
                Some(r) => index.maintained_by_why[r] += 1,
                None => {
                    index.maintained.remove(key);
                }
            }
        }
    }

    /// Puts agent `key` (settled as `why`) under maintenance or takes it
    /// out; returns whether that changed anything.
    pub(super) fn set_maintained(&self, key: &ArcStr, why: Why, on: bool) -> bool {
        let mut index = lock(&self.index);
        let changed = if on {
            index.maintained.insert(key.clone())
        } else {
            index.maintained.remove(key)
        };
        if changed {
            if on {
                index.maintained_by_why[why] += 1;
            } else {
                index.maintained_by_why[why] -= 1;
            }
        }
        changed
    }

    /// Whether agent `key` is under maintenance.
    pub(super) fn is_maintained(&self, key: &str) -> bool {
        let index = lock(&self.index);
        !index.maintained.is_empty() && index.maintained.contains(key)
    }

    /// Agents under maintenance by reason, as settled.
    pub(super) fn maintained_counts(&self) -> ByWhy<u64> {
        lock(&self.index).maintained_by_why
    }

    /// Agents under maintenance, by ID, after `after`, at most `take`.
    pub(super) fn maintained_keys(&self, after: Option<&str>, take: usize) -> Vec<ArcStr> {
        let mut keys: Vec<ArcStr> = {
            let index = lock(&self.index);
            index
                .maintained
                .iter()
                .filter(|k| after.is_none_or(|a| &***k > a))
                .cloned()
                .collect()
        };
        keys.sort_unstable();
        keys.truncate(take);
        keys
    }

    /// Raises or lowers the storm flag to match the counts; returns the
    /// reading if the flag changed.
    pub(super) fn check_storm(&self) -> Option<StormView> {
        let mut index = lock(&self.index);
        let storm = self.storm_of(&index.by_why.each_len(), &index.maintained_by_why);
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
    pub(super) fn keys(&self, whys: &[Why], after: Option<&str>, take: usize) -> Vec<ArcStr> {
        let mut keys: Vec<ArcStr> = {
            let index = lock(&self.index);
            whys.iter()
                .flat_map(|r| index.by_why[*r].after(after).take(take).cloned())
                .collect()
        };
        if whys.len() > 1 {
            keys.sort_unstable();
        }
        keys.truncate(take);
        keys
    }

    /// The storm guard for these counts, of which `maintained` are under
    /// maintenance: those count neither as faulty nor as active, so that
    /// planned work raises no storm.
    pub(super) fn storm_of(&self, all: &ByWhy<u64>, maintained: &ByWhy<u64>) -> StormView {
        let counts = &ByWhy::from_fn(|r| all[r].saturating_sub(maintained[r]));
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
            maintenance: maintained.total(),
            faulty_by_why: ByWhy::from_fn(|r| {
                if r.state() == State::Faulty {
                    counts[r]
                } else {
                    0
                }
            }),
        }
    }
}

trait EachLen {
    fn each_len(&self) -> ByWhy<u64>;
}

impl EachLen for ByWhy<IdSet> {
    fn each_len(&self) -> ByWhy<u64> {
        ByWhy::from_fn(|r| self[r].len() as u64)
    }
}

/// The most IDs in one chunk of an [`IdSet`].
const CHUNK: usize = 512;

/// A set of agent IDs in order: sorted chunks of at most [`CHUNK`] IDs,
/// each allocated at its full size once. An ordered tree costs about 36
/// bytes an ID here (its nodes half full when IDs arrive in order); chunks
/// cost the 8 bytes of the ID's pointer, a little more once IDs arriving
/// out of order have split some chunks. An insert or removal moves at most
/// one chunk's pointers.
#[derive(Debug, Default)]
struct IdSet {
    /// Non-empty chunks, each sorted, each wholly before the next.
    chunks: Vec<Vec<ArcStr>>,
    len: usize,
}

impl IdSet {
    fn len(&self) -> usize {
        self.len
    }

    /// The chunk where `key` is or would go: the first whose last ID is not
    /// before it, or the last chunk.
    fn chunk_of(&self, key: &str) -> usize {
        let i = self
            .chunks
            .partition_point(|c| c.last().is_some_and(|l| &**l < key));
        i.min(self.chunks.len().saturating_sub(1))
    }

    /// Adds `key`; false if it was there.
    fn insert(&mut self, key: &ArcStr) -> bool {
        if self.chunks.is_empty() {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        let ci = self.chunk_of(key);
        let last = ci + 1 == self.chunks.len();
        let chunk = &mut self.chunks[ci];
        let Err(at) = chunk.binary_search_by(|k| (**k).cmp(key)) else {
            return false;
        };
        if chunk.len() < CHUNK {
            chunk.insert(at, key.clone());
        } else if last && at == CHUNK {
            // After every ID (IDs often arrive in order): a new chunk, and
            // the full one stays full.
            let mut next = Vec::with_capacity(CHUNK);
            next.push(key.clone());
            self.chunks.push(next);
        } else {
            let mut right = Vec::with_capacity(CHUNK);
            right.extend(chunk.drain(CHUNK / 2..));
            if at <= CHUNK / 2 {
                chunk.insert(at, key.clone());
            } else {
                right.insert(at - CHUNK / 2, key.clone());
            }
            self.chunks.insert(ci + 1, right);
        }
        self.len += 1;
        true
    }

    /// Removes `key`; false if it was not there.
    fn remove(&mut self, key: &str) -> bool {
        if self.chunks.is_empty() {
            return false;
        }
        let ci = self.chunk_of(key);
        let chunk = &mut self.chunks[ci];
        let Ok(at) = chunk.binary_search_by(|k| (**k).cmp(key)) else {
            return false;
        };
        chunk.remove(at);
        let left = chunk.len();
        self.len -= 1;
        // Merge a chunk gone small into its neighbour when both fit in one,
        // so that removals do not leave many near-empty chunks.
        if left < CHUNK / 4 {
            let fits = |c: Option<&Vec<ArcStr>>| c.is_some_and(|c| c.len() + left <= CHUNK);
            if fits(self.chunks.get(ci + 1)) {
                let next = self.chunks.remove(ci + 1);
                self.chunks[ci].extend(next);
            } else if ci > 0 && fits(self.chunks.get(ci - 1)) {
                let this = self.chunks.remove(ci);
                self.chunks[ci - 1].extend(this);
            } else if left == 0 {
                self.chunks.remove(ci);
            }
        }
        true
    }

    /// The IDs after `after` (all if `None`), in order.
    fn after(&self, after: Option<&str>) -> impl Iterator<Item = &ArcStr> {
        let (ci, at) = match after {
            None => (0, 0),
            Some(a) => {
                let ci = self
                    .chunks
                    .partition_point(|c| c.last().is_some_and(|l| &**l <= a));
                let at = self
                    .chunks
                    .get(ci)
                    .map_or(0, |c| c.partition_point(|k| &**k <= a));
                (ci, at)
            }
        };
        self.chunks
            .get(ci..)
            .unwrap_or(&[])
            .iter()
            .enumerate()
            .flat_map(move |(n, c)| &c[if n == 0 { at } else { 0 }..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_set_keeps_order_through_splits_and_merges() {
        use std::collections::BTreeSet;
        let mut set = IdSet::default();
        let mut model = BTreeSet::new();
        // A fixed pseudo-random walk of inserts and removals over 4000 IDs,
        // after a run of IDs in order.
        let mut x: u64 = 7;
        let step = |set: &mut IdSet, model: &mut BTreeSet<ArcStr>, n: u64, add: bool| {
            let k: ArcStr = ArcStr::from(format!("id-{n:05}"));
            if add {
                assert_eq!(set.insert(&k), model.insert(k.clone()), "insert {k}");
            } else {
                assert_eq!(set.remove(&k), model.remove(&k), "remove {k}");
            }
        };
        for n in 0..3 * CHUNK as u64 {
            step(&mut set, &mut model, n, true);
        }
        assert!(
            set.chunks.iter().all(|c| c.len() == CHUNK),
            "in order: full"
        );
        for _ in 0..40_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let n = (x >> 33) % 4000;
            step(&mut set, &mut model, n, !(x >> 20).is_multiple_of(3));
        }
        for _ in 0..30_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            step(&mut set, &mut model, (x >> 33) % 4000, false);
        }
        assert_eq!(set.len(), model.len());
        assert!(set.chunks.iter().all(|c| !c.is_empty() && c.len() <= CHUNK));
        let all: Vec<_> = set.after(None).cloned().collect();
        assert_eq!(all, model.iter().cloned().collect::<Vec<_>>());
        for a in ["id-00000", "id-01234", "id-02000", "id-03999", "id-9", "a"] {
            let got: Vec<_> = set.after(Some(a)).take(5).cloned().collect();
            let want: Vec<_> = model
                .range::<str, _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))
                .take(5)
                .cloned()
                .collect();
            assert_eq!(got, want, "after {a}");
        }
    }

    fn key(s: &str) -> ArcStr {
        ArcStr::from(s)
    }

    #[test]
    fn the_index_lists_by_id_across_reasons() {
        let tally = Tally::new(&FleetRules::default());
        tally.moved(&key("c"), None, Some(Why::NoDataSent));
        tally.moved(&key("a"), None, Some(Why::NotReporting));
        tally.moved(&key("b"), None, Some(Why::AllIsOk));
        tally.moved(&key("d"), None, Some(Why::NoDataSent));
        let faulty: Vec<Why> = Why::ALL
            .into_iter()
            .filter(|r| r.state() == State::Faulty)
            .collect();
        let keys = tally.keys(&faulty, None, 10);
        assert_eq!(keys, [key("a"), key("c"), key("d")]);
        assert_eq!(tally.keys(&faulty, Some("a"), 1), [key("c")]);
        tally.moved(&key("c"), Some(Why::NoDataSent), Some(Why::AllIsOk));
        tally.moved(&key("d"), Some(Why::NoDataSent), None);
        assert_eq!(tally.keys(&faulty, None, 10), [key("a")]);
        let counts = tally.counts();
        assert_eq!(counts[Why::AllIsOk], 2);
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
            tally.moved(&key(k), None, Some(Why::NoDataSent));
        }
        // Three agents: under the minimum fleet.
        assert_eq!(tally.check_storm(), None);
        tally.moved(&key("d"), None, Some(Why::AllIsOk));
        let up = tally.check_storm().expect("raised");
        assert!(up.active);
        assert_eq!(up.dominant, Some((Why::NoDataSent, 3)));
        assert_eq!(tally.check_storm(), None, "told once");
        tally.moved(&key("a"), Some(Why::NoDataSent), Some(Why::AllIsOk));
        tally.moved(&key("b"), Some(Why::NoDataSent), Some(Why::Inactive));
        let down = tally.check_storm().expect("lowered");
        assert!(!down.active);
        assert_eq!((down.faulty, down.active_agents), (1, 3));
    }
}
