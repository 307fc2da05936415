//! Which live node should own each shard: rendezvous hashing, so that a
//! node joining or leaving moves only the shards it wins or held.

use crate::ids::{SHARDS, fnv1a};

/// The node that should own `shard` among `nodes`: the one with the highest
/// score for it. `None` when there are no nodes.
pub fn owner(shard: u32, nodes: &[String]) -> Option<&str> {
    nodes
        .iter()
        .max_by_key(|node| (score(node, shard), node.as_str()))
        .map(String::as_str)
}

/// The shards `node` should own among `nodes` (which include it).
pub fn shards_of(node: &str, nodes: &[String]) -> Vec<u32> {
    (0..SHARDS)
        .filter(|&shard| owner(shard, nodes) == Some(node))
        .collect()
}

/// A node's score for a shard: FNV-1a of both, mixed (splitmix64's
/// finaliser) so that similar node names do not win similar shards.
fn score(node: &str, shard: u32) -> u64 {
    let mut bytes = Vec::with_capacity(node.len() + 5);
    bytes.extend_from_slice(node.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(&shard.to_le_bytes());
    let mut x = fnv1a(&bytes);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn every_shard_has_exactly_one_owner_and_the_load_is_even() {
        let nodes = names(&["node-a", "node-b", "node-c"]);
        let counts: Vec<usize> = nodes.iter().map(|n| shards_of(n, &nodes).len()).collect();
        assert_eq!(counts.iter().sum::<usize>(), SHARDS as usize);
        for count in counts {
            // 256 / 3 ≈ 85; rendezvous hashing spreads within a few dozen.
            assert!((55..=115).contains(&count), "uneven: {count}");
        }
    }

    #[test]
    fn a_leaving_node_moves_only_its_own_shards() {
        let three = names(&["node-a", "node-b", "node-c"]);
        let two = names(&["node-a", "node-b"]);
        for shard in 0..SHARDS {
            let before = owner(shard, &three).unwrap();
            let after = owner(shard, &two).unwrap();
            if before != "node-c" {
                assert_eq!(before, after, "shard {shard} moved needlessly");
            }
        }
    }

    #[test]
    fn no_nodes_no_owner() {
        assert_eq!(owner(7, &[]), None);
    }
}
