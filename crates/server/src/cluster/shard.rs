//! Shards: which shard an agent belongs to, and which node should own a
//! shard.
//!
//! An agent's shard is a hash of its ID modulo the cluster's shard count,
//! fixed for the cluster's life (it is written in the database when the
//! cluster is made). The hash is FNV-1a (64 bits), written out here rather
//! than taken from `std::hash`, whose algorithm may change between Rust
//! releases: every node, of every version, must agree on it.
//!
//! Which node should own a shard is rendezvous hashing over the live nodes:
//! each node scores each shard, the highest score wins. When a node joins or
//! leaves, only the shards it wins or held move; every node computes the
//! same answer from the same list of nodes, with no coordinator.

/// FNV-1a, 64 bits, over `parts` in order.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(PRIME);
        }
    }
    h
}

/// A 64-bit mix (the finaliser of SplitMix64), so that scores of nearby
/// shard numbers are unrelated.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The shard of agent `id` among `shards`.
pub fn shard_of(id: &str, shards: u32) -> u32 {
    debug_assert!(shards > 0);
    (mix(fnv1a(&[id.as_bytes()])) % u64::from(shards.max(1))) as u32
}

/// The score of `node` for `shard`: the highest score owns the shard.
fn score(node: &str, shard: u32) -> u64 {
    mix(fnv1a(&[node.as_bytes(), &[0], &shard.to_be_bytes()]))
}

/// The node that should own `shard` among `nodes` (none: no node is live).
pub fn owner_of(shard: u32, nodes: &[String]) -> Option<&str> {
    nodes
        .iter()
        .max_by_key(|n| (score(n, shard), n.as_str()))
        .map(String::as_str)
}

/// The shards among `0..shards` that `node` should own, with `nodes` live
/// (`node` among them).
pub fn wanted(node: &str, nodes: &[String], shards: u32) -> Vec<u32> {
    (0..shards)
        .filter(|s| owner_of(*s, nodes) == Some(node))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_fixed() {
        // FNV-1a's published test values: any change here would move
        // every agent of every cluster to another shard.
        assert_eq!(fnv1a(&[b""]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(&[b"a"]), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(&[b"foobar"]), 0x8594_4171_f739_67e8);
        assert_eq!(shard_of("web-1", 1024), shard_of("web-1", 1024));
    }

    #[test]
    fn agents_spread_evenly_over_shards() {
        let shards = 64;
        let mut counts = vec![0u32; shards as usize];
        for i in 0..64_000 {
            counts[shard_of(&format!("host-{i:07}.example.com"), shards) as usize] += 1;
        }
        let (min, max) = (
            *counts.iter().min().expect("some"),
            *counts.iter().max().expect("some"),
        );
        assert!(min > 850 && max < 1150, "{min}..{max}");
    }

    #[test]
    fn shards_spread_over_nodes_and_only_a_leavers_move() {
        let nodes: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let shards = 1024;
        let per: Vec<usize> = nodes
            .iter()
            .map(|n| wanted(n, &nodes, shards).len())
            .collect();
        assert_eq!(per.iter().sum::<usize>(), shards as usize);
        assert!(per.iter().all(|n| (280..400).contains(n)), "{per:?}");
        // c leaves: only c's shards move, and they spread over a and b.
        let two = &nodes[..2];
        for s in 0..shards {
            let before = owner_of(s, &nodes).expect("owned");
            let after = owner_of(s, two).expect("owned");
            if before != "c" {
                assert_eq!(before, after, "shard {s} moved");
            }
        }
        // A fourth node takes about a quarter, from each of the others.
        let four: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        let moved = (0..shards)
            .filter(|s| owner_of(*s, &nodes) != owner_of(*s, &four))
            .count();
        let to_d = wanted("d", &four, shards).len();
        assert_eq!(moved, to_d);
        assert!((200..320).contains(&to_d), "{to_d}");
        assert_eq!(owner_of(0, &[]), None);
    }
}
