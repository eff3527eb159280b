//! The KV block allocator: reference-counted fixed-size blocks plus a prefix
//! cache. A full block whose tokens (and all tokens before them) are known is
//! registered under a chained hash; a later request with the same prefix
//! takes a reference instead of recomputing it. A block nobody references
//! but that still holds a cached prefix is "evictable": it counts as free,
//! and is reused (dropping its hash) only when no never-cached block is left,
//! oldest first.
//!
//! Invariant: every block is in exactly one of {referenced, free list,
//! evictable}; `used() == 0` once every sequence has released its blocks.

use std::collections::{BTreeMap, HashMap, VecDeque};

pub type BlockId = u32;

/// Chains a block's tokens onto the hash of everything before it.
pub fn chain_hash(parent: u64, tokens: &[u32]) -> u64 {
    // FNV-1a over the parent hash and the tokens: stable across runs, cheap.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ parent;
    for &t in tokens {
        for b in t.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PrefixStats {
    pub lookups: u64,
    pub hits: u64,
}

#[derive(Debug)]
pub struct BlockAllocator {
    ref_counts: Vec<u32>,
    hash_of: Vec<Option<u64>>,
    by_hash: HashMap<u64, BlockId>,
    free: VecDeque<BlockId>,
    /// Unreferenced cached blocks by release tick (oldest first).
    evictable: BTreeMap<u64, BlockId>,
    evict_tick: Vec<u64>,
    tick: u64,
    pub stats: PrefixStats,
}

impl BlockAllocator {
    pub fn new(num_blocks: usize) -> Self {
        Self {
            ref_counts: vec![0; num_blocks],
            hash_of: vec![None; num_blocks],
            by_hash: HashMap::new(),
            free: (0..num_blocks as BlockId).collect(),
            evictable: BTreeMap::new(),
            evict_tick: vec![0; num_blocks],
            tick: 0,
            stats: PrefixStats::default(),
        }
    }

    pub fn total(&self) -> usize {
        self.ref_counts.len()
    }

    /// Blocks that can be handed out now (free or evictable).
    pub fn available(&self) -> usize {
        self.free.len() + self.evictable.len()
    }

    /// Blocks referenced by some sequence.
    pub fn used(&self) -> usize {
        self.total() - self.available()
    }

    pub fn usage(&self) -> f64 {
        if self.total() == 0 {
            0.0
        } else {
            self.used() as f64 / self.total() as f64
        }
    }

    /// Takes a fresh block, evicting the oldest cached prefix if needed.
    pub fn allocate(&mut self) -> Option<BlockId> {
        let b = if let Some(b) = self.free.pop_front() {
            b
        } else {
            let (&tick, &b) = self.evictable.iter().next()?;
            self.evictable.remove(&tick);
            if let Some(h) = self.hash_of[b as usize].take() {
                self.by_hash.remove(&h);
            }
            b
        };
        self.ref_counts[b as usize] = 1;
        Some(b)
    }

    /// Looks a full-block prefix hash up; on a hit takes a reference.
    pub fn lookup(&mut self, hash: u64) -> Option<BlockId> {
        self.stats.lookups += 1;
        let b = *self.by_hash.get(&hash)?;
        self.stats.hits += 1;
        if self.ref_counts[b as usize] == 0 {
            self.evictable.remove(&self.evict_tick[b as usize]);
        }
        self.ref_counts[b as usize] += 1;
        Some(b)
    }

    /// Records that `block` now holds the full prefix `hash`. Returns false
    /// when another block already holds it (the caller's block stays private).
    pub fn register(&mut self, block: BlockId, hash: u64) -> bool {
        if self.by_hash.contains_key(&hash) || self.hash_of[block as usize].is_some() {
            return false;
        }
        self.by_hash.insert(hash, block);
        self.hash_of[block as usize] = Some(hash);
        true
    }

    /// Drops one reference.
    pub fn release(&mut self, block: BlockId) {
        let rc = &mut self.ref_counts[block as usize];
        debug_assert!(*rc > 0, "double release of block {block}");
        if *rc == 0 {
            return;
        }
        *rc -= 1;
        if *rc == 0 {
            if self.hash_of[block as usize].is_some() {
                self.tick += 1;
                self.evict_tick[block as usize] = self.tick;
                self.evictable.insert(self.tick, block);
            } else {
                self.free.push_back(block);
            }
        }
    }

    pub fn ref_count(&self, block: BlockId) -> u32 {
        self.ref_counts[block as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn allocate_until_exhausted_then_release_returns_all() {
        let mut a = BlockAllocator::new(4);
        let got: Vec<_> = (0..4).filter_map(|_| a.allocate()).collect();
        assert_eq!(got.len(), 4);
        assert!(a.allocate().is_none());
        assert_eq!(a.usage(), 1.0);
        for b in got {
            a.release(b);
        }
        assert_eq!(a.used(), 0);
    }

    #[test]
    fn registered_block_is_shared_by_lookup_and_survives_release_as_evictable() {
        let mut a = BlockAllocator::new(2);
        let b = a.allocate().unwrap();
        let h = chain_hash(0, &[1, 2, 3]);
        assert!(a.register(b, h));
        assert_eq!(a.lookup(h), Some(b));
        assert_eq!(a.ref_count(b), 2);
        a.release(b);
        a.release(b);
        assert_eq!(a.used(), 0);
        // Still cached: a lookup revives it.
        assert_eq!(a.lookup(h), Some(b));
        assert_eq!(
            a.stats,
            PrefixStats {
                lookups: 2,
                hits: 2
            }
        );
        a.release(b);
    }

    #[test]
    fn evictable_blocks_are_reused_oldest_first_and_lose_their_hash() {
        let mut a = BlockAllocator::new(2);
        let b0 = a.allocate().unwrap();
        let b1 = a.allocate().unwrap();
        a.register(b0, 10);
        a.register(b1, 11);
        a.release(b0);
        a.release(b1);
        assert_eq!(a.allocate(), Some(b0));
        assert_eq!(a.lookup(10), None);
        assert_eq!(a.lookup(11), Some(b1));
    }

    /// Random mixes of allocate, share, register and release (what finish,
    /// cancel and preempt do) never leak a block.
    #[test]
    fn no_leak_under_random_finish_cancel_preempt_mix() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _round in 0..50 {
            let mut a = BlockAllocator::new(32);
            let mut seqs: Vec<Vec<BlockId>> = Vec::new();
            for _ in 0..400 {
                match rng.random_range(0..5) {
                    0 | 1 => {
                        let mut s = Vec::new();
                        // share a cached prefix sometimes
                        if let Some(b) = a.lookup(rng.random_range(0..8)) {
                            s.push(b);
                        }
                        for _ in 0..rng.random_range(1..5) {
                            match a.allocate() {
                                Some(b) => {
                                    if rng.random_bool(0.3) {
                                        a.register(b, rng.random_range(0..8));
                                    }
                                    s.push(b)
                                }
                                None => break,
                            }
                        }
                        seqs.push(s);
                    }
                    _ if !seqs.is_empty() => {
                        // finish, cancel and preempt all release every block
                        let i = rng.random_range(0..seqs.len());
                        for b in seqs.swap_remove(i) {
                            a.release(b);
                        }
                    }
                    _ => {}
                }
                let held: usize = {
                    let mut v: Vec<_> = seqs.iter().flatten().copied().collect();
                    v.sort();
                    v.dedup();
                    v.len()
                };
                assert_eq!(a.used(), held);
            }
            for s in seqs.drain(..) {
                for b in s {
                    a.release(b);
                }
            }
            assert_eq!(a.used(), 0);
            assert_eq!(a.available(), 32);
        }
    }
}
