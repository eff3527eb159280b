//! The continuous-batching scheduler: decides, every step, which sequences
//! run and how many of their tokens, under a per-step token budget.
//!
//! Rules, in order (decode-first):
//! 1. Every running sequence that is decoding takes its one token, oldest
//!    first. When it needs a block and none is free, the youngest running
//!    sequence is preempted: its blocks are released and it goes back to the
//!    front of the waiting queue, to be recomputed later.
//! 2. Prompt tokens share a prefill budget: `max_batch_tokens` minus the
//!    decodes, and, when any decode runs in the step, at most
//!    `prefill_chunk_while_decoding`, with `prefill_step_ratio` set at
//!    the chunk that keeps the step within that many times the decodes
//!    alone by the step times learned so far ([`super::cost`]), and with
//!    `prefill_tokens_per_decode` set at that many tokens per decode in the
//!    step; never fewer than [`MIN_PREFILL_CHUNK`]: an arriving long
//!    prompt delays running streams by one small chunk per step instead of
//!    one big one, and a step with a chunk costs a bounded multiple of one
//!    without on any device. Running sequences
//!    still prefilling take their next chunk first, oldest first (no
//!    preemption for a chunk: it waits for blocks).
//! 3. Only if nothing was preempted, waiting sequences join (FIFO) while
//!    the prefill budget, blocks and `max_running` allow, first reusing any
//!    cached full blocks of their prefix.
//!
//! The scheduler owns token ids and block tables only; the engine loop runs
//! the plan on the model and reports back with `complete`/`append_token`.

use std::collections::{HashMap, VecDeque};

use std::time::Duration;

use super::blocks::{chain_hash, BlockAllocator, BlockId};
use super::cost::StepCost;

pub type SeqId = u64;

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub num_blocks: usize,
    pub block_size: usize,
    pub max_batch_tokens: usize,
    /// Most prompt tokens one step computes while any sequence is decoding
    /// (decode-first: a long prompt never stalls running streams for more
    /// than one such chunk). Without decodes a step may fill
    /// `max_batch_tokens` with prompt tokens.
    pub prefill_chunk_while_decoding: usize,
    /// With decodes in the step, at most this many prompt tokens per decode
    /// (at least [`MIN_PREFILL_CHUNK`]); 0: no such limit.
    pub prefill_tokens_per_decode: usize,
    /// With decodes in the step, at most the prompt tokens that keep the
    /// step within this many times the decodes alone, by the learned step
    /// times (at least [`MIN_PREFILL_CHUNK`]); 0: no such limit.
    pub prefill_step_ratio: f64,
    pub max_running: usize,
    pub prefix_caching: bool,
}

/// The smallest prefill chunk `prefill_tokens_per_decode` leaves a step with
/// decodes (within `prefill_chunk_while_decoding`): a prompt beside one or
/// two streams still advances a block per step.
pub const MIN_PREFILL_CHUNK: usize = 16;

/// The prompt tokens a step may compute beside `decodes` decodes, before
/// blocks and the remaining batch budget are counted. `cost` is what steps
/// have cost so far; while it does not know the decodes' own step, the
/// ratio rule gives the floor.
pub fn prefill_chunk(cfg: &SchedulerConfig, decodes: usize, cost: &StepCost) -> usize {
    if decodes == 0 {
        return cfg.max_batch_tokens;
    }
    let cap = cfg.prefill_chunk_while_decoding;
    let mut chunk = cap;
    if cfg.prefill_tokens_per_decode > 0 {
        chunk = chunk.min(
            decodes
                .saturating_mul(cfg.prefill_tokens_per_decode)
                .max(MIN_PREFILL_CHUNK),
        );
    }
    if cfg.prefill_step_ratio > 0.0 {
        let learned = cost
            .chunk(decodes, cfg.prefill_step_ratio, cap)
            .unwrap_or(0);
        chunk = chunk.min(learned.max(MIN_PREFILL_CHUNK));
    }
    chunk
}

#[derive(Debug)]
struct Seq {
    tokens: Vec<u32>,
    computed: usize,
    blocks: Vec<BlockId>,
    /// Prefix hashes of the leading full blocks already registered/looked up.
    hashes: Vec<u64>,
    /// False for a sequence whose every prompt position must be computed
    /// (prompt scoring needs the logits of each one).
    reuse_prefix: bool,
}

/// One sequence's share of a step: tokens `[start, start + len)` of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanItem {
    pub seq: SeqId,
    pub start: usize,
    pub len: usize,
    /// True when this chunk reaches the sequence's last token, so the step
    /// yields its next-token logits.
    pub wants_logits: bool,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StepPlan {
    pub items: Vec<PlanItem>,
    pub preempted: Vec<SeqId>,
}

#[derive(Debug)]
pub struct Scheduler {
    cfg: SchedulerConfig,
    alloc: BlockAllocator,
    seqs: HashMap<SeqId, Seq>,
    waiting: VecDeque<SeqId>,
    /// Oldest first.
    running: Vec<SeqId>,
    pub preemptions: u64,
    /// Step times by size, for the prompt chunk beside decodes.
    cost: StepCost,
}

impl Scheduler {
    pub fn new(cfg: SchedulerConfig) -> Self {
        let cost = StepCost::new(cfg.max_batch_tokens.max(cfg.max_running));
        Self {
            alloc: BlockAllocator::new(cfg.num_blocks),
            cfg,
            seqs: HashMap::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            preemptions: 0,
            cost,
        }
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    /// Records how long the model took for a step of `tokens` tokens (the
    /// scheduler sizes later prompt chunks from it).
    pub fn observe_step(&mut self, tokens: usize, forward: Duration) {
        self.cost.observe(tokens, forward);
    }

    /// The most prompt tokens a step beside `decodes` decodes may take now
    /// (before blocks and the batch budget): the engine's gauge.
    pub fn prefill_chunk_now(&self, decodes: usize) -> usize {
        prefill_chunk(&self.cfg, decodes, &self.cost)
    }

    /// Queues a new sequence with its prompt.
    pub fn add(&mut self, id: SeqId, prompt: Vec<u32>) {
        self.add_with(id, prompt, true);
    }

    /// Queues a new sequence; with `reuse_prefix` false it never takes
    /// cached prefix blocks, so every prompt position is computed.
    pub fn add_with(&mut self, id: SeqId, prompt: Vec<u32>, reuse_prefix: bool) {
        self.seqs.insert(
            id,
            Seq {
                tokens: prompt,
                computed: 0,
                blocks: Vec::new(),
                hashes: Vec::new(),
                reuse_prefix,
            },
        );
        self.waiting.push_back(id);
    }

    /// Removes a sequence (finished or cancelled) and frees its blocks.
    pub fn remove(&mut self, id: SeqId) {
        if let Some(s) = self.seqs.remove(&id) {
            for b in s.blocks {
                self.alloc.release(b);
            }
        }
        self.waiting.retain(|&w| w != id);
        self.running.retain(|&r| r != id);
    }

    pub fn append_token(&mut self, id: SeqId, token: u32) {
        if let Some(s) = self.seqs.get_mut(&id) {
            s.tokens.push(token);
        }
    }

    pub fn tokens(&self, id: SeqId) -> &[u32] {
        self.seqs
            .get(&id)
            .map(|s| s.tokens.as_slice())
            .unwrap_or(&[])
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }
    pub fn num_running(&self) -> usize {
        self.running.len()
    }
    pub fn is_idle(&self) -> bool {
        self.seqs.is_empty()
    }
    pub fn kv_usage(&self) -> f64 {
        self.alloc.usage()
    }
    pub fn blocks_used(&self) -> usize {
        self.alloc.used()
    }
    pub fn prefix_stats(&self) -> super::blocks::PrefixStats {
        self.alloc.stats
    }

    /// Slot (`block * block_size + offset`) of each position in `range`.
    pub fn slots(&self, id: SeqId, range: std::ops::Range<usize>) -> Vec<i64> {
        let bs = self.cfg.block_size;
        let Some(s) = self.seqs.get(&id) else {
            return Vec::new();
        };
        range
            .map(|p| s.blocks[p / bs] as i64 * bs as i64 + (p % bs) as i64)
            .collect()
    }

    fn blocks_needed(&self, s: &Seq, upto: usize) -> usize {
        upto.div_ceil(self.cfg.block_size)
            .saturating_sub(s.blocks.len())
    }

    fn grow(&mut self, id: SeqId, upto: usize) -> bool {
        let Some(s) = self.seqs.get(&id) else {
            return false;
        };
        let need = self.blocks_needed(s, upto);
        if need > self.alloc.available() {
            return false;
        }
        let mut got = Vec::with_capacity(need);
        for _ in 0..need {
            match self.alloc.allocate() {
                Some(b) => got.push(b),
                None => break,
            }
        }
        if let Some(s) = self.seqs.get_mut(&id) {
            s.blocks.extend(got);
        }
        true
    }

    fn preempt(&mut self, id: SeqId) {
        if let Some(s) = self.seqs.get_mut(&id) {
            for b in s.blocks.drain(..) {
                self.alloc.release(b);
            }
            s.computed = 0;
            s.hashes.clear();
        }
        self.running.retain(|&r| r != id);
        self.waiting.push_front(id);
        self.preemptions += 1;
    }

    /// Takes references on cached full blocks of the sequence's prefix. The
    /// last token is never taken from cache: its logits are needed.
    fn reuse_prefix(&mut self, id: SeqId) {
        if !self.cfg.prefix_caching {
            return;
        }
        let bs = self.cfg.block_size;
        let Some(s) = self.seqs.get(&id) else { return };
        if !s.blocks.is_empty() || !s.reuse_prefix {
            return;
        }
        let max_blocks = s.tokens.len().saturating_sub(1) / bs;
        let mut parent = 0u64;
        let mut found = Vec::new();
        for b in 0..max_blocks {
            let h = chain_hash(parent, &s.tokens[b * bs..(b + 1) * bs]);
            match self.alloc.lookup(h) {
                Some(blk) => {
                    found.push((blk, h));
                    parent = h;
                }
                None => break,
            }
        }
        if let Some(s) = self.seqs.get_mut(&id) {
            s.computed = found.len() * bs;
            for (blk, h) in found {
                s.blocks.push(blk);
                s.hashes.push(h);
            }
        }
    }

    fn release_all(&mut self, id: SeqId) {
        if let Some(s) = self.seqs.get_mut(&id) {
            for b in s.blocks.drain(..) {
                self.alloc.release(b);
            }
            s.computed = 0;
            s.hashes.clear();
        }
    }

    /// Where a sequence stands: (tokens with K/V, tokens in total).
    fn progress(&self, id: SeqId) -> Option<(usize, usize)> {
        self.seqs.get(&id).map(|s| (s.computed, s.tokens.len()))
    }

    /// Gives running sequence `id` the blocks for `upto` tokens, preempting
    /// the youngest running sequences while blocks are short. Returns false
    /// when `id` itself had to go.
    fn make_room(&mut self, id: SeqId, upto: usize, plan: &mut StepPlan) -> bool {
        while !self.grow(id, upto) {
            let Some(&victim) = self.running.last() else {
                return false;
            };
            self.preempt(victim);
            plan.preempted.push(victim);
            if victim == id {
                return false;
            }
        }
        true
    }

    /// Plans the next step: decodes first, then prompt chunks under the
    /// prefill budget (the smaller one while any decode runs).
    pub fn schedule(&mut self) -> StepPlan {
        let mut plan = StepPlan::default();
        let mut budget = self.cfg.max_batch_tokens;

        // 1. Every decoding sequence (only its newest token lacks K/V),
        //    oldest first.
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let id = self.running[i];
            match self.progress(id) {
                Some((computed, total)) if total == computed + 1 => {
                    if !self.make_room(id, total, &mut plan) {
                        break;
                    }
                    plan.items.push(PlanItem {
                        seq: id,
                        start: computed,
                        len: 1,
                        wants_logits: true,
                    });
                    budget -= 1;
                }
                _ => {}
            }
            i += 1;
        }
        let decodes = plan.items.len();
        let mut prefill_budget = budget.min(prefill_chunk(&self.cfg, decodes, &self.cost));

        // 2. Running sequences still prefilling take their next chunk,
        //    oldest first. No preemption here: the youngest sequence may be
        //    a decode already planned above; a chunk that finds no blocks
        //    waits for a later step.
        let mut i = 0;
        while i < self.running.len() && prefill_budget > 0 {
            let id = self.running[i];
            match self.progress(id) {
                Some((computed, total)) if total > computed + 1 => {
                    let len = (total - computed).min(prefill_budget);
                    if !self.grow(id, computed + len) {
                        break;
                    }
                    plan.items.push(PlanItem {
                        seq: id,
                        start: computed,
                        len,
                        wants_logits: computed + len == total,
                    });
                    prefill_budget -= len;
                }
                _ => {}
            }
            i += 1;
        }

        // 3. Only if nothing was preempted, waiting sequences join (FIFO).
        if plan.preempted.is_empty() {
            while prefill_budget > 0 && self.running.len() < self.cfg.max_running {
                let Some(&id) = self.waiting.front() else {
                    break;
                };
                self.reuse_prefix(id);
                let Some((computed, total)) = self.progress(id) else {
                    self.waiting.pop_front();
                    continue;
                };
                let len = (total - computed).min(prefill_budget);
                if !self.grow(id, computed + len) {
                    self.release_all(id);
                    break;
                }
                self.waiting.pop_front();
                self.running.push(id);
                plan.items.push(PlanItem {
                    seq: id,
                    start: computed,
                    len,
                    wants_logits: computed + len == total,
                });
                prefill_budget -= len;
            }
        }
        plan
    }

    /// Records that the plan's tokens now have K/V in the cache, and
    /// registers newly filled blocks in the prefix cache.
    pub fn complete(&mut self, plan: &StepPlan) {
        let bs = self.cfg.block_size;
        for item in &plan.items {
            let Some(s) = self.seqs.get_mut(&item.seq) else {
                continue;
            };
            s.computed = s.computed.max(item.start + item.len);
            if !self.cfg.prefix_caching {
                continue;
            }
            let full = s.computed / bs;
            while s.hashes.len() < full {
                let b = s.hashes.len();
                let parent = s.hashes.last().copied().unwrap_or(0);
                let h = chain_hash(parent, &s.tokens[b * bs..(b + 1) * bs]);
                self.alloc.register(s.blocks[b], h);
                s.hashes.push(h);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With tokens per decode set, the chunk beside decodes grows with the
    /// batch between the floor and the cap; alone, a prompt gets the whole
    /// batch budget.
    #[test]
    fn prefill_chunk_scales_with_decodes_between_floor_and_cap() {
        let mut c = cfg(64, 512);
        c.prefill_chunk_while_decoding = 64;
        c.prefill_tokens_per_decode = 2;
        let none = StepCost::new(512);
        assert_eq!(prefill_chunk(&c, 0, &none), 512);
        assert_eq!(prefill_chunk(&c, 1, &none), MIN_PREFILL_CHUNK);
        assert_eq!(prefill_chunk(&c, 12, &none), 24);
        assert_eq!(prefill_chunk(&c, 40, &none), 64);
        c.prefill_chunk_while_decoding = 8;
        assert_eq!(
            prefill_chunk(&c, 1, &none),
            8,
            "the cap wins over the floor"
        );
        c.prefill_tokens_per_decode = 0;
        c.prefill_chunk_while_decoding = 64;
        assert_eq!(prefill_chunk(&c, 1, &none), 64, "0: the cap alone");
    }

    /// With a step ratio, the chunk follows the learned step times: the
    /// floor while the decodes' own step is unknown, then the largest chunk
    /// within the ratio; the per-decode rule and the cap still bound it.
    #[test]
    fn prefill_chunk_follows_the_learned_step_times() {
        let mut c = cfg(64, 512);
        c.prefill_chunk_while_decoding = 64;
        c.prefill_step_ratio = 2.5;
        let mut cost = StepCost::new(512);
        assert_eq!(prefill_chunk(&c, 16, &cost), MIN_PREFILL_CHUNK);
        // 10 ms per 16 rows plus 2 ms: 16 decodes 12 ms, budget 30 ms.
        for rows in [16, 32, 48, 64, 80] {
            cost.observe(rows, Duration::from_millis(2 + 10 * rows as u64 / 16));
        }
        assert_eq!(prefill_chunk(&c, 16, &cost), 16);
        c.prefill_step_ratio = 4.0;
        assert_eq!(prefill_chunk(&c, 16, &cost), 48);
        c.prefill_tokens_per_decode = 2;
        assert_eq!(prefill_chunk(&c, 16, &cost), 32, "the per-decode rule");
        c.prefill_tokens_per_decode = 0;
        c.prefill_chunk_while_decoding = 24;
        assert_eq!(prefill_chunk(&c, 16, &cost), 24, "the cap");
        // A slow step seen at 32 rows closes the chunk to the floor.
        c.prefill_chunk_while_decoding = 64;
        for _ in 0..20 {
            cost.observe(32, Duration::from_millis(100));
        }
        assert_eq!(prefill_chunk(&c, 16, &cost), MIN_PREFILL_CHUNK);
    }

    /// The scheduler learns from the steps it is told about.
    #[test]
    fn the_scheduler_sizes_chunks_from_observed_steps() {
        let mut c = cfg(256, 512);
        c.prefill_chunk_while_decoding = 64;
        c.prefill_step_ratio = 2.5;
        let mut s = Scheduler::new(c);
        assert_eq!(s.prefill_chunk_now(4), MIN_PREFILL_CHUNK);
        // Steps of up to 24 tokens cost the same (one weight pass); above
        // that, nothing is known: the next size up is tried.
        for tokens in [4, 16, 24] {
            s.observe_step(tokens, Duration::from_millis(10));
        }
        assert_eq!(s.prefill_chunk_now(4), 32 - 4);
        // A 32-token step took 4x the decodes alone: the chunk falls back
        // to what kept within 2.5x.
        s.observe_step(32, Duration::from_millis(40));
        assert_eq!(s.prefill_chunk_now(4), 24 - 4);
    }

    /// In a planned step, 3 decodes and a waiting 100-token prompt: the
    /// prompt gets the floor, not the cap.
    #[test]
    fn a_prompt_beside_few_decodes_gets_a_small_chunk() {
        let mut c = cfg(64, 512);
        c.prefill_chunk_while_decoding = 64;
        c.prefill_tokens_per_decode = 1;
        let mut s = Scheduler::new(c);
        for id in 0..3 {
            s.add(id, vec![1, 2, 3]);
        }
        let p = s.schedule();
        s.complete(&p);
        for id in 0..3 {
            s.append_token(id, 7);
        }
        s.add(9, (0..100).collect());
        let p = s.schedule();
        let decodes = p.items.iter().filter(|i| i.len == 1).count();
        let chunk: usize = p.items.iter().filter(|i| i.seq == 9).map(|i| i.len).sum();
        assert_eq!(decodes, 3);
        assert_eq!(chunk, MIN_PREFILL_CHUNK);
    }

    fn cfg(blocks: usize, budget: usize) -> SchedulerConfig {
        SchedulerConfig {
            num_blocks: blocks,
            block_size: 4,
            max_batch_tokens: budget,
            prefill_chunk_while_decoding: budget,
            prefill_tokens_per_decode: 0,
            prefill_step_ratio: 0.0,
            max_running: 16,
            prefix_caching: true,
        }
    }

    /// Runs a plan as the engine would: complete it and append a token to
    /// each sequence that produced logits.
    fn step(s: &mut Scheduler) -> StepPlan {
        let plan = s.schedule();
        s.complete(&plan);
        for it in &plan.items {
            if it.wants_logits {
                s.append_token(it.seq, 7);
            }
        }
        plan
    }

    #[test]
    fn new_request_joins_running_batch_at_next_step() {
        let mut s = Scheduler::new(cfg(64, 64));
        s.add(1, vec![1, 2, 3]);
        let p = step(&mut s);
        assert_eq!(p.items.len(), 1);
        s.add(2, vec![4, 5]);
        let p = step(&mut s);
        assert_eq!(
            p.items,
            vec![
                PlanItem {
                    seq: 1,
                    start: 3,
                    len: 1,
                    wants_logits: true
                },
                PlanItem {
                    seq: 2,
                    start: 0,
                    len: 2,
                    wants_logits: true
                },
            ]
        );
    }

    #[test]
    fn finished_sequence_leaves_and_frees_its_blocks() {
        let mut s = Scheduler::new(cfg(64, 64));
        s.add(1, vec![1; 10]);
        s.add(2, vec![2; 3]);
        step(&mut s);
        assert!(s.blocks_used() > 0);
        s.remove(1);
        let p = step(&mut s);
        assert_eq!(p.items.len(), 1);
        assert_eq!(p.items[0].seq, 2);
        s.remove(2);
        assert_eq!(s.blocks_used(), 0);
        assert!(s.is_idle());
    }

    #[test]
    fn long_prompt_is_prefilled_in_chunks_while_running_stream_keeps_decoding() {
        let mut s = Scheduler::new(cfg(64, 8));
        s.add(1, vec![1, 2]);
        step(&mut s);
        s.add(2, vec![9; 20]);
        let mut chunks = Vec::new();
        for _ in 0..4 {
            let p = step(&mut s);
            assert!(
                p.items.iter().any(|i| i.seq == 1 && i.len == 1),
                "stream 1 decodes every step"
            );
            let c = p
                .items
                .iter()
                .find(|i| i.seq == 2)
                .map(|i| (i.start, i.len, i.wants_logits));
            chunks.push(c);
            assert!(p.items.iter().map(|i| i.len).sum::<usize>() <= 8);
        }
        assert_eq!(
            chunks,
            vec![
                Some((0, 7, false)),
                Some((7, 7, false)),
                Some((14, 6, true)),
                Some((20, 1, true))
            ]
        );
    }

    #[test]
    fn youngest_running_sequence_is_preempted_when_blocks_run_out_and_recomputed_later() {
        // 4 blocks of 4 tokens: two sequences of 7 tokens fill 4 blocks.
        let mut s = Scheduler::new(cfg(4, 64));
        s.add(1, vec![1; 7]);
        s.add(2, vec![2; 7]);
        step(&mut s); // both prefilled (7 tokens in 2 blocks), one token appended
        let p = step(&mut s); // position 7 still fits in the second block
        assert!(p.preempted.is_empty());
        let p = step(&mut s); // position 8 needs a third block for each
        assert_eq!(p.preempted, vec![2]);
        assert_eq!(p.items.len(), 1);
        assert_eq!(p.items[0].seq, 1);
        assert_eq!(s.num_waiting(), 1);
        assert_eq!(s.preemptions, 1);
        s.remove(1);
        let p = step(&mut s);
        // recompute: the whole sequence (prompt + generated) again
        assert_eq!(p.items[0].seq, 2);
        assert_eq!(p.items[0].len, 9);
        assert!(p.items[0].wants_logits);
        s.remove(2);
        assert_eq!(s.blocks_used(), 0);
    }

    #[test]
    fn cancelled_sequences_release_blocks_whether_waiting_or_running() {
        let mut s = Scheduler::new(cfg(3, 64));
        s.add(1, vec![1; 8]);
        s.add(2, vec![2; 8]);
        step(&mut s);
        assert_eq!(s.num_running(), 1);
        assert_eq!(s.num_waiting(), 1);
        s.remove(2);
        s.remove(1);
        assert_eq!(s.blocks_used(), 0);
        assert!(s.schedule().items.is_empty());
    }

    #[test]
    fn shared_prefix_reuses_cached_blocks_and_counts_hits() {
        let mut s = Scheduler::new(cfg(64, 64));
        let prompt: Vec<u32> = (0..10).collect();
        s.add(1, prompt.clone());
        step(&mut s);
        s.remove(1);
        s.add(2, prompt);
        let p = step(&mut s);
        // two full blocks (8 tokens) come from cache; only 2 are computed
        assert_eq!(
            p.items[0],
            PlanItem {
                seq: 2,
                start: 8,
                len: 2,
                wants_logits: true
            }
        );
        assert_eq!(s.prefix_stats().hits, 2);
        s.remove(2);
        assert_eq!(s.blocks_used(), 0);
    }

    #[test]
    fn prompt_chunks_are_capped_while_streams_decode_and_fill_the_budget_when_none_do() {
        let mut c = cfg(64, 64);
        c.prefill_chunk_while_decoding = 4;
        let mut s = Scheduler::new(c);
        // Alone, a prompt takes the whole budget in one step.
        s.add(1, vec![1; 30]);
        let p = step(&mut s);
        assert_eq!((p.items[0].seq, p.items[0].len), (1, 30));
        // Now 1 decodes; a 10-token prompt arrives and goes 4 + 4 + 2,
        // and stream 1 decodes in every one of those steps, first.
        s.add(2, vec![2; 10]);
        let mut chunks = Vec::new();
        for _ in 0..3 {
            let p = step(&mut s);
            assert_eq!(
                (p.items[0].seq, p.items[0].len),
                (1, 1),
                "the decode comes first"
            );
            chunks.push((p.items[1].start, p.items[1].len, p.items[1].wants_logits));
        }
        assert_eq!(chunks, vec![(0, 4, false), (4, 4, false), (8, 2, true)]);
        // Both decode now: two tokens per step.
        let p = step(&mut s);
        assert_eq!(
            p.items.iter().map(|i| i.len).collect::<Vec<_>>(),
            vec![1, 1]
        );
    }

    #[test]
    fn many_decodes_leave_no_room_and_prompts_wait_for_the_budget() {
        let mut c = cfg(64, 3);
        c.prefill_chunk_while_decoding = 8;
        let mut s = Scheduler::new(c);
        for id in 1..=3 {
            s.add(id, vec![id as u32]);
        }
        step(&mut s); // three one-token prompts: 3 tokens, the whole budget
        s.add(4, vec![4; 5]);
        let p = step(&mut s);
        assert_eq!(p.items.len(), 3, "three decodes fill the budget of 3");
        assert!(p.items.iter().all(|i| i.len == 1));
        assert_eq!(s.num_waiting(), 1);
    }

    /// Regression guard for decode-first planning: with decodes planned
    /// before prompt chunks, a chunk must never preempt a decode already in
    /// the plan (its item would point at freed blocks). Random mixes of
    /// arrivals, steps and removals under block pressure check that no
    /// planned sequence is preempted, every item has its blocks, and the
    /// budgets hold.
    #[test]
    fn random_mixes_never_plan_a_preempted_sequence_and_respect_both_budgets() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for _round in 0..200 {
            let budget = rng.random_range(2..16);
            let mut c = cfg(rng.random_range(3..12), budget);
            c.prefill_chunk_while_decoding = rng.random_range(1..=budget);
            let chunk = c.prefill_chunk_while_decoding;
            let mut s = Scheduler::new(c);
            let mut next = 0u64;
            for _ in 0..60 {
                match rng.random_range(0..6) {
                    0 | 1 => {
                        next += 1;
                        let len = rng.random_range(1..20);
                        s.add(next, (0..len).map(|_| rng.random_range(0..3)).collect());
                    }
                    2 if next > 0 => s.remove(rng.random_range(1..=next)),
                    _ => {
                        let decoding: Vec<SeqId> = s
                            .running
                            .iter()
                            .copied()
                            .filter(|id| s.progress(*id).is_some_and(|(c, t)| t == c + 1))
                            .collect();
                        let p = step(&mut s);
                        let mut prefill = 0;
                        let mut decodes = 0;
                        for it in &p.items {
                            assert!(
                                !p.preempted.contains(&it.seq),
                                "{} planned and preempted",
                                it.seq
                            );
                            let blocks = s.seqs[&it.seq].blocks.len();
                            assert!(blocks * 4 >= it.start + it.len, "item without blocks");
                            if decoding.contains(&it.seq) {
                                decodes += 1;
                            } else {
                                prefill += it.len;
                            }
                        }
                        assert!(prefill + decodes <= budget);
                        if decodes > 0 {
                            assert!(prefill <= chunk, "prefill {prefill} over chunk {chunk}");
                        }
                    }
                }
            }
            for id in 1..=next {
                s.remove(id);
            }
            assert_eq!(s.blocks_used(), 0);
        }
    }

    #[test]
    fn a_sequence_added_without_prefix_reuse_computes_its_whole_prompt() {
        let mut s = Scheduler::new(cfg(64, 64));
        let prompt: Vec<u32> = (0..10).collect();
        s.add(1, prompt.clone());
        step(&mut s);
        s.remove(1);
        s.add_with(2, prompt, false);
        let p = step(&mut s);
        assert_eq!(
            p.items[0],
            PlanItem {
                seq: 2,
                start: 0,
                len: 10,
                wants_logits: true
            }
        );
        assert_eq!(s.prefix_stats().hits, 0);
    }

    #[test]
    fn waiting_request_does_not_join_when_running_batch_is_full() {
        let mut c = cfg(64, 64);
        c.max_running = 1;
        let mut s = Scheduler::new(c);
        s.add(1, vec![1]);
        s.add(2, vec![2]);
        let p = step(&mut s);
        assert_eq!(p.items.len(), 1);
        assert_eq!(s.num_waiting(), 1);
    }
}
