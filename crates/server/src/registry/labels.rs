//! The label sets in use, each kept once however many agents carry it (a
//! fleet has few distinct sets: site, version).
//!
//! Lock: the registry keeps the interner behind its own mutex, taken alone
//! (never while another registry lock is held) and only for the lookup.

use std::collections::HashSet;
use std::sync::Arc;

use crate::model::LabelSet;

/// The interner. Sets no agent uses any more are dropped whenever the table
/// has doubled since the last sweep.
#[derive(Debug, Default)]
pub(super) struct LabelInterner {
    sets: HashSet<Arc<LabelSet>>,
    sweep_at: usize,
}

impl LabelInterner {
    /// The shared copy of `set`.
    pub(super) fn intern(&mut self, set: Arc<LabelSet>) -> Arc<LabelSet> {
        if let Some(existing) = self.sets.get(&*set) {
            return existing.clone();
        }
        if self.sets.len() >= self.sweep_at {
            self.sets.retain(|s| Arc::strong_count(s) > 1);
            self.sweep_at = (self.sets.len() * 2).max(1024);
        }
        self.sets.insert(set.clone());
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Labels;

    fn set(v: &str) -> Arc<LabelSet> {
        let map: Labels = [("site".to_string(), v.to_string())].into();
        Arc::new(LabelSet::from(&map))
    }

    #[test]
    fn equal_label_sets_are_shared_and_unused_ones_swept() {
        let mut i = LabelInterner::default();
        let a = i.intern(set("eu"));
        let b = i.intern(set("eu"));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &i.intern(set("us"))));
        // 1024 sets nobody keeps: when the table reaches its sweep size,
        // those no agent holds are dropped, so it stays small.
        for n in 0..1024 {
            i.intern(set(&format!("tmp-{n}")));
        }
        assert!(i.sets.len() < 16, "{} sets kept", i.sets.len());
        assert!(Arc::ptr_eq(&a, &i.intern(set("eu"))));
    }
}
