//! The synchronous heart of the engine: the scheduler, the model and the KV
//! tensors together. `step` asks the scheduler for a plan, turns it into one
//! batched forward pass and returns next-token logits per sequence. Sampling,
//! streaming and timing live in the actor (`super::actor`); tests drive this
//! struct directly.

use std::time::{Duration, Instant};

use tch::{Device, Kind, Tensor};

use std::collections::HashMap;

use super::score::{score_rows, ScoreRequest, ScoreRows, TokenLogprob};
use crate::model::{DecodeGroup, KvCache, Llama, PrefillSeq, StepBatch};
use crate::sched::{Scheduler, SchedulerConfig, SeqId, StepPlan};

pub struct EngineCore {
    model: Llama,
    kv: KvCache,
    pub sched: Scheduler,
    /// Sequences whose prompt positions are scored (`add_scored`).
    scoring: HashMap<SeqId, ScoreRequest>,
    /// Test aid (`--fault-logit-noise`): noise on scored logits.
    pub logit_noise: f64,
}

/// What one step did.
pub struct StepOutput {
    pub plan: StepPlan,
    /// Next-token logits of each sequence whose chunk reached its end.
    pub logits: Vec<(SeqId, Vec<f32>)>,
    /// Time spent in the forward pass, logits copied to the host included
    /// (the "busy" time of utilisation).
    pub busy: Duration,
    /// Time spent planning the step and building its input tensors.
    pub schedule: Duration,
    pub tokens: usize,
    /// Of `tokens`, how many were prompt (or recomputed) tokens.
    pub prefill_tokens: usize,
    /// Log-probabilities of prompt tokens of scored sequences (positions
    /// 1.. of the prompt, in order, possibly over several steps).
    pub prompt_logprobs: Vec<(SeqId, Vec<TokenLogprob>)>,
}

impl EngineCore {
    pub fn new(model: Llama, cfg: SchedulerConfig) -> Self {
        let kv = KvCache::new(
            &model.cfg,
            cfg.num_blocks,
            cfg.block_size,
            model.device,
            model.kind,
        );
        Self {
            model,
            kv,
            sched: Scheduler::new(cfg),
            scoring: HashMap::new(),
            logit_noise: 0.0,
        }
    }

    /// Queues a sequence whose prompt tokens are scored: each prompt
    /// position is computed (no prefix-cache reuse) and the step outputs
    /// the log-probability of every prompt token after the first, with the
    /// `top_k` alternatives.
    pub fn add_scored(&mut self, id: SeqId, prompt: Vec<u32>, top_k: usize) {
        self.scoring.insert(
            id,
            ScoreRequest {
                top_k,
                prompt_len: prompt.len(),
                next: 1,
            },
        );
        self.sched.add_with(id, prompt, false);
    }

    /// Runs a short prefill and two decode steps so the first real request
    /// does not pay for libtorch's lazy initialisation.
    pub fn warm_up(&mut self) -> Result<Duration, tch::TchError> {
        let t0 = Instant::now();
        let id = SeqId::MAX;
        self.sched.add(id, (1..=8).collect());
        let mut produced = 0;
        for _ in 0..16 {
            let out = self.step()?;
            for (seq, logits) in out.logits {
                produced += 1;
                let tok = crate::sampling::argmax(&logits);
                self.sched.append_token(seq, tok);
            }
            if produced >= 3 {
                break;
            }
        }
        self.sched.remove(id);
        Ok(t0.elapsed())
    }

    pub fn model(&self) -> &Llama {
        &self.model
    }

    /// Plans and runs one step. Returns an empty output when nothing ran.
    pub fn step(&mut self) -> Result<StepOutput, tch::TchError> {
        let t_plan = Instant::now();
        let plan = self.sched.schedule();
        if plan.items.is_empty() {
            return Ok(StepOutput {
                plan,
                logits: Vec::new(),
                busy: Duration::ZERO,
                schedule: t_plan.elapsed(),
                tokens: 0,
                prefill_tokens: 0,
                prompt_logprobs: Vec::new(),
            });
        }
        let dev = self.model.device;
        let n_kv = self.model.cfg.kv_heads() as i64;
        let slots_per_head = self.kv.slots() as i64;
        // Head-major KV rows: head h of slot s is row h * slots + s.
        let head_major = |slots: &[i64], out: &mut Vec<i64>| {
            for h in 0..n_kv {
                out.extend(slots.iter().map(|s| h * slots_per_head + s));
            }
        };
        let mut tokens = Vec::new();
        let mut positions = Vec::new();
        let mut write_index = Vec::new();
        let mut prefills = Vec::new();
        let mut dec_rows = Vec::new();
        let mut dec_slots: Vec<Vec<i64>> = Vec::new();
        let mut logit_rows = Vec::new();
        let mut logit_seqs = Vec::new();
        let mut score = ScoreRows::default();
        let mut score_logit_rows = Vec::new();
        if !self.scoring.is_empty() {
            let sched = &self.sched;
            self.scoring.retain(|id, _| !sched.tokens(*id).is_empty());
        }
        for it in &plan.items {
            let row = tokens.len() as i64;
            let seq_tokens = self.sched.tokens(it.seq);
            tokens.extend(
                seq_tokens[it.start..it.start + it.len]
                    .iter()
                    .map(|&t| t as i64),
            );
            positions.extend((it.start..it.start + it.len).map(|p| p as i64));
            for s in self.sched.slots(it.seq, it.start..it.start + it.len) {
                write_index.extend((0..n_kv).map(|h| h * slots_per_head + s));
            }
            if it.len == 1 {
                dec_rows.push(row);
                dec_slots.push(self.sched.slots(it.seq, 0..it.start + 1));
            } else {
                let ctx_index = (it.start > 0).then(|| {
                    let ctx = self.sched.slots(it.seq, 0..it.start + it.len);
                    let mut idx = Vec::with_capacity(ctx.len() * n_kv as usize);
                    head_major(&ctx, &mut idx);
                    Tensor::from_slice(&idx).to_device(dev)
                });
                prefills.push(PrefillSeq {
                    start: row,
                    len: it.len as i64,
                    ctx_len: (it.start + it.len) as i64,
                    ctx_index,
                });
            }
            if it.wants_logits {
                logit_rows.push(row + it.len as i64 - 1);
                logit_seqs.push(it.seq);
            }
            if let Some(sc) = self.scoring.get_mut(&it.seq) {
                // Row of position p predicts the prompt token at p + 1.
                for p in it.start..it.start + it.len {
                    let t = p + 1;
                    if t >= sc.next && t < sc.prompt_len {
                        score_logit_rows.push(row + (p - it.start) as i64);
                        score.seqs.push(it.seq);
                        score.targets.push(seq_tokens[t]);
                        score.top_k.push(sc.top_k);
                    }
                }
                sc.next = sc.next.max((it.start + it.len + 1).min(sc.prompt_len));
            }
        }
        let dec_count = dec_rows.len();
        let n_sample = logit_rows.len() as i64;
        logit_rows.extend_from_slice(&score_logit_rows);
        let decode = if dec_rows.is_empty() {
            None
        } else {
            let lmax = dec_slots.iter().map(Vec::len).max().unwrap_or(1);
            let b = dec_slots.len();
            let mut index = Vec::with_capacity(b * n_kv as usize * lmax);
            let mut bias = Vec::with_capacity(b * lmax);
            for s in &dec_slots {
                // Pad with the sequence's own first slot: a real row, masked out.
                let mut padded = s.clone();
                padded.resize(lmax, s.first().copied().unwrap_or(0));
                head_major(&padded, &mut index);
                bias.extend(std::iter::repeat_n(0f32, s.len()));
                bias.extend(std::iter::repeat_n(f32::NEG_INFINITY, lmax - s.len()));
            }
            Some(DecodeGroup {
                rows: Tensor::from_slice(&dec_rows).to_device(dev),
                lmax: lmax as i64,
                index: Tensor::from_slice(&index).to_device(dev),
                bias: Tensor::from_slice(&bias)
                    .view([b as i64, 1, 1, lmax as i64])
                    .to_device(dev),
            })
        };
        let n_tokens = tokens.len();
        let batch = StepBatch {
            tokens: Tensor::from_slice(&tokens).to_device(dev),
            positions: Tensor::from_slice(&positions).to_device(dev),
            write_index: Tensor::from_slice(&write_index).to_device(dev),
            prefills,
            decode,
            logit_rows: Tensor::from_slice(&logit_rows).to_device(dev),
        };
        let schedule = t_plan.elapsed();
        let t0 = Instant::now();
        let all_logits = self.model.forward(&mut self.kv, &batch);
        let prompt_logprobs = if score.is_empty() {
            Vec::new()
        } else {
            score_rows(
                &all_logits.narrow(0, n_sample, score.len() as i64),
                &score,
                self.logit_noise,
            )?
        };
        let logits = all_logits.narrow(0, 0, n_sample);
        let vocab = self.model.cfg.vocab_size;
        let flat = Vec::<f32>::try_from(
            logits
                .to_device(Device::Cpu)
                .to_kind(Kind::Float)
                .contiguous()
                .view([-1]),
        )?;
        let busy = t0.elapsed();
        self.sched.complete(&plan);
        let logits = logit_seqs
            .into_iter()
            .zip(flat.chunks(vocab).map(<[f32]>::to_vec))
            .collect();
        let prefill_tokens = n_tokens - dec_count;
        Ok(StepOutput {
            plan,
            logits,
            busy,
            schedule,
            tokens: n_tokens,
            prefill_tokens,
            prompt_logprobs,
        })
    }
}
