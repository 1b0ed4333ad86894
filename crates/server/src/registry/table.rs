//! The agents' records, found by ID: a fixed number of shards, each a slab
//! of records in fixed-size chunks and a hash table of 32-bit slot numbers.
//!
//! Memory is why it is not a map of boxed records: a record here costs its
//! size and nothing more (no allocation of its own, no pointer to it), and
//! the hash table holds 4 bytes a slot, so its spare capacity costs little.
//! A record keeps its place until it is removed, so that other indexes (the
//! timer queue) can name it by a 32-bit [`Slot`] instead of its ID.
//!
//! Lock: one read-write lock per shard, held by the guards this module hands
//! out ([`AgentRef`], [`AgentMut`]); holding a guard is holding the agent's
//! entry. The lock is taken alone or first (see the registry's lock order).

use std::hash::{BuildHasher, RandomState};
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use hashbrown::HashTable;

use super::agent::Agent;

/// Records per chunk: a chunk is allocated whole when the shard's last one
/// is full, so a shard's spare room is at most one chunk.
const CHUNK: usize = 512;

/// Bits of a [`Slot`] that name the shard: at most 64 shards.
const SHARD_BITS: u32 = 6;
/// The most shards.
const MAX_SHARDS: usize = 1 << SHARD_BITS;

/// Where an agent's record lives, while it lives: its shard and its place
/// there, in 32 bits. A slot is reused after its agent is removed, so a
/// holder must check that the record it finds is the one it meant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Slot(u32);

impl Slot {
    /// The slot of `place` in shard `shard`.
    pub(super) fn new(shard: usize, place: u32) -> Slot {
        Slot((place << SHARD_BITS) | shard as u32)
    }

    fn shard(self) -> usize {
        (self.0 & (MAX_SHARDS as u32 - 1)) as usize
    }

    fn place(self) -> u32 {
        self.0 >> SHARD_BITS
    }
}

/// One record: the agent's ID and what is known of it.
#[derive(Debug)]
struct Record {
    key: Arc<str>,
    agent: Agent,
}

/// One shard: its records and the table that finds them.
#[derive(Debug, Default)]
struct Shard {
    /// Places of the records, by the hash of their ID.
    index: HashTable<u32>,
    /// The records, `CHUNK` to a chunk; `None`: a free place.
    chunks: Vec<Box<[Option<Record>]>>,
    /// Free places below the end.
    free: Vec<u32>,
    /// Places in use or freed: the next new place.
    end: u32,
}

impl Shard {
    fn record(&self, place: u32) -> Option<&Record> {
        let p = place as usize;
        self.chunks.get(p / CHUNK)?[p % CHUNK].as_ref()
    }

    fn record_mut(&mut self, place: u32) -> Option<&mut Record> {
        let p = place as usize;
        self.chunks.get_mut(p / CHUNK)?[p % CHUNK].as_mut()
    }

    fn find(&self, hash: u64, key: &str) -> Option<u32> {
        let chunks = &self.chunks;
        self.index
            .find(hash, |&p| {
                let p = p as usize;
                chunks[p / CHUNK][p % CHUNK]
                    .as_ref()
                    .is_some_and(|r| &*r.key == key)
            })
            .copied()
    }

    /// Stores `record` (whose ID is not in the shard) and returns its place.
    fn insert(&mut self, hash: u64, record: Record, hasher: &RandomState) -> u32 {
        let place = match self.free.pop() {
            Some(p) => p,
            None => {
                let p = self.end;
                if p as usize == self.chunks.len() * CHUNK {
                    self.chunks
                        .push(std::iter::repeat_with(|| None).take(CHUNK).collect());
                }
                self.end += 1;
                p
            }
        };
        let p = place as usize;
        self.chunks[p / CHUNK][p % CHUNK] = Some(record);
        let chunks = &self.chunks;
        self.index.insert_unique(hash, place, |&p| {
            let p = p as usize;
            chunks[p / CHUNK][p % CHUNK]
                .as_ref()
                .map_or(0, |r| hasher.hash_one(&*r.key))
        });
        place
    }

    fn remove(&mut self, hash: u64, key: &str) -> Option<Record> {
        let chunks = &self.chunks;
        let entry = self
            .index
            .find_entry(hash, |&p| {
                let p = p as usize;
                chunks[p / CHUNK][p % CHUNK]
                    .as_ref()
                    .is_some_and(|r| &*r.key == key)
            })
            .ok()?;
        let (place, _) = entry.remove();
        let p = place as usize;
        let record = self.chunks[p / CHUNK][p % CHUNK].take();
        self.free.push(place);
        record
    }
}

/// Every agent's record, by ID.
#[derive(Debug)]
pub(super) struct Table {
    shards: Box<[RwLock<Shard>]>,
    hasher: RandomState,
}

/// Read access to one agent: holds its shard's read lock.
pub(super) struct AgentRef<'a> {
    shard: RwLockReadGuard<'a, Shard>,
    place: u32,
}

/// Write access to one agent: holds its shard's write lock.
pub(super) struct AgentMut<'a> {
    shard: RwLockWriteGuard<'a, Shard>,
    place: u32,
    slot: Slot,
}

/// An ID looked up for a change: the agent, or the room to add it.
pub(super) enum Entry<'a> {
    /// The agent is known.
    Occupied(AgentMut<'a>),
    /// It is not; [`Vacant::insert`] adds it.
    Vacant(Vacant<'a>),
}

/// The room for a new agent, its shard write-locked.
pub(super) struct Vacant<'a> {
    shard: RwLockWriteGuard<'a, Shard>,
    shard_no: usize,
    hash: u64,
    hasher: &'a RandomState,
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

impl Table {
    /// An empty table, with four shards per core (as many as 64), so that
    /// threads seldom wait for each other; a shard's spare room is at most
    /// one chunk.
    pub(super) fn new() -> Table {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Table::with_shards((cores * 4).next_power_of_two().min(MAX_SHARDS))
    }

    /// An empty table of `n` shards (a power of two, at most 64).
    fn with_shards(n: usize) -> Table {
        debug_assert!(n.is_power_of_two() && n <= MAX_SHARDS);
        Table {
            shards: (0..n).map(|_| RwLock::default()).collect(),
            hasher: RandomState::new(),
        }
    }

    fn locate(&self, key: &str) -> (usize, u64) {
        let hash = self.hasher.hash_one(key);
        // The hash table uses the hash's low bits and its top 7; the shard
        // takes bits from the middle.
        (((hash >> 32) as usize) & (self.shards.len() - 1), hash)
    }

    /// Reads agent `key`.
    pub(super) fn get(&self, key: &str) -> Option<AgentRef<'_>> {
        let (s, hash) = self.locate(key);
        let shard = read(&self.shards[s]);
        let place = shard.find(hash, key)?;
        Some(AgentRef { shard, place })
    }

    /// Changes agent `key`.
    pub(super) fn get_mut(&self, key: &str) -> Option<AgentMut<'_>> {
        let (s, hash) = self.locate(key);
        let shard = write(&self.shards[s]);
        let place = shard.find(hash, key)?;
        Some(AgentMut {
            shard,
            place,
            slot: Slot::new(s, place),
        })
    }

    /// Changes the agent at `slot`, if one is there (it may not be the one
    /// that was there when the slot was taken).
    pub(super) fn get_mut_at(&self, slot: Slot) -> Option<AgentMut<'_>> {
        let shard = write(self.shards.get(slot.shard())?);
        shard.record(slot.place())?;
        Some(AgentMut {
            shard,
            place: slot.place(),
            slot,
        })
    }

    /// The ID of the agent at `slot`, if one is there.
    pub(super) fn key_at(&self, slot: Slot) -> Option<Arc<str>> {
        let shard = read(self.shards.get(slot.shard())?);
        shard.record(slot.place()).map(|r| r.key.clone())
    }

    /// Agent `key`, or the room to add it.
    pub(super) fn entry(&self, key: &str) -> Entry<'_> {
        let (s, hash) = self.locate(key);
        let shard = write(&self.shards[s]);
        match shard.find(hash, key) {
            Some(place) => Entry::Occupied(AgentMut {
                shard,
                place,
                slot: Slot::new(s, place),
            }),
            None => Entry::Vacant(Vacant {
                shard,
                shard_no: s,
                hash,
                hasher: &self.hasher,
            }),
        }
    }

    /// Adds agent `key`, or replaces its record; returns whether it is new.
    #[cfg(test)]
    fn insert(&self, key: Arc<str>, agent: Agent) -> bool {
        match self.entry(&key) {
            Entry::Occupied(mut a) => {
                *a = agent;
                false
            }
            Entry::Vacant(v) => {
                v.insert(key, agent);
                true
            }
        }
    }

    /// Removes agent `key`; returns its ID and record.
    pub(super) fn remove(&self, key: &str) -> Option<(Arc<str>, Agent)> {
        let (s, hash) = self.locate(key);
        let record = write(&self.shards[s]).remove(hash, key)?;
        Some((record.key, record.agent))
    }

    /// Calls `f` with every agent, one shard (read-locked) at a time.
    pub(super) fn for_each(&self, mut f: impl FnMut(&Arc<str>, &Agent)) {
        for shard in self.shards.iter() {
            let shard = read(shard);
            for chunk in &shard.chunks {
                for r in chunk.iter().flatten() {
                    f(&r.key, &r.agent);
                }
            }
        }
    }
}

impl<'a> Vacant<'a> {
    /// Adds the agent; returns write access to it.
    pub(super) fn insert(mut self, key: Arc<str>, agent: Agent) -> AgentMut<'a> {
        let place = self
            .shard
            .insert(self.hash, Record { key, agent }, self.hasher);
        AgentMut {
            shard: self.shard,
            place,
            slot: Slot::new(self.shard_no, place),
        }
    }
}

impl AgentRef<'_> {
    fn record(&self) -> &Record {
        // The place was found under this same lock.
        self.shard
            .record(self.place)
            .expect("a found place holds a record")
    }

    /// The agent's ID.
    #[cfg(test)]
    fn key(&self) -> &Arc<str> {
        &self.record().key
    }
}

impl Deref for AgentRef<'_> {
    type Target = Agent;

    fn deref(&self) -> &Agent {
        &self.record().agent
    }
}

impl AgentMut<'_> {
    fn record(&self) -> &Record {
        // The place was found under this same lock.
        self.shard
            .record(self.place)
            .expect("a found place holds a record")
    }

    /// Where the record lives.
    pub(super) fn slot(&self) -> Slot {
        self.slot
    }

    /// The agent's ID and its record, apart, so that both can be used at once.
    pub(super) fn split(&mut self) -> (&Arc<str>, &mut Agent) {
        let r = self
            .shard
            .record_mut(self.place)
            .expect("a found place holds a record");
        (&r.key, &mut r.agent)
    }
}

impl Deref for AgentMut<'_> {
    type Target = Agent;

    fn deref(&self) -> &Agent {
        &self.record().agent
    }
}

impl DerefMut for AgentMut<'_> {
    fn deref_mut(&mut self) -> &mut Agent {
        self.split().1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_health_sensor::Time;

    fn agent(incarnation: u64) -> Agent {
        let mut a = Agent::new(Time::from_micros(0).expect("in range"));
        a.incarnation = incarnation;
        a
    }

    #[test]
    fn records_are_found_changed_removed_and_their_places_reused() {
        let t = Table::with_shards(4);
        let n = 9 * CHUNK as u64;
        for i in 0..n {
            assert!(t.insert(Arc::from(format!("a{i}")), agent(i)));
        }
        assert!(!t.insert(Arc::from("a7"), agent(70)), "replaced");
        assert_eq!(t.get("a7").expect("known").incarnation, 70);
        assert_eq!(t.get("a8").expect("known").key().as_ref(), "a8");
        assert!(t.get("b").is_none());
        let slot = t.get_mut("a9").expect("known").slot();
        assert_eq!(t.key_at(slot).as_deref(), Some("a9"));
        t.get_mut_at(slot).expect("there").incarnation = 90;
        assert_eq!(t.get("a9").expect("known").incarnation, 90);
        let (key, a) = t.remove("a9").expect("removed");
        assert_eq!((&*key, a.incarnation), ("a9", 90));
        assert!(t.remove("a9").is_none());
        assert!(t.get("a9").is_none());
        assert!(t.get_mut_at(slot).is_none(), "a freed place holds nothing");
        assert_eq!(t.key_at(slot), None);
        // An ID of the same shard takes the freed place.
        let new = (0..)
            .map(|i| format!("new{i}"))
            .find(|k| t.locate(k).0 == slot.shard())
            .expect("some ID falls in that shard");
        let Entry::Vacant(v) = t.entry(&new) else {
            panic!("not known")
        };
        let added = v.insert(Arc::from(new.as_str()), agent(1));
        let reused = added.slot();
        drop(added);
        assert_eq!(reused, slot, "the freed place is taken again");
        assert!(matches!(t.entry(&new), Entry::Occupied(_)));
        let mut seen = Vec::new();
        t.for_each(|k, a| seen.push((k.to_string(), a.incarnation)));
        assert_eq!(seen.len() as u64, n);
        for i in (0..n).filter(|i| *i != 9) {
            assert!(seen.contains(&(format!("a{i}"), if i == 7 { 70 } else { i })));
        }
    }
}
