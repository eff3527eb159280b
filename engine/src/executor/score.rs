//! Log-probabilities for the OpenAI `logprobs` / `echo` options and for
//! teacher-forced scoring of a given text (the quality gate's perplexity):
//! - prompt positions: the core adds, for a scored sequence, one logits row
//!   per prompt position to the step's forward pass (the model already
//!   computes any rows it is asked for) and `score_rows` turns those rows
//!   into the log-probability of the *next prompt token* plus the top-k
//!   alternatives, on the device, so only k+1 numbers per position come
//!   back;
//! - generated tokens: `logprobs_of` does the same on the CPU row the
//!   sampler already has.
//!
//! Log-probabilities are of the model's distribution (log-softmax of the
//! raw logits), not of the sampling distribution after temperature/top-p,
//! as OpenAI and vLLM report them.

use tch::{Device, Kind, Tensor};

use crate::sched::SeqId;

/// Most alternatives a request may ask for per position.
pub const MAX_TOP_LOGPROBS: usize = 20;

/// One token's log-probability under the model and the most likely
/// alternatives at its position.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    /// None for the first prompt token: nothing predicts it.
    pub logprob: Option<f32>,
    /// `(token, logprob)`, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// What a scored sequence asked for, kept by the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScoreRequest {
    pub top_k: usize,
    pub prompt_len: usize,
    /// Prompt positions below this have been scored (a preempted sequence
    /// recomputes its prompt; nothing is scored twice).
    pub next: usize,
}

/// The scoring rows of one step, in the order they were appended to the
/// forward pass's logit rows.
#[derive(Debug, Default)]
pub struct ScoreRows {
    pub seqs: Vec<SeqId>,
    /// The prompt token each row predicts.
    pub targets: Vec<u32>,
    pub top_k: Vec<usize>,
}

impl ScoreRows {
    pub fn len(&self) -> usize {
        self.seqs.len()
    }
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }
}

/// Turns `logits` (`[rows.len(), vocab]`) into per-sequence prompt
/// log-probabilities, in position order. `noise` (a test aid, standard
/// deviation) is added to the logits first.
pub fn score_rows(
    logits: &Tensor,
    rows: &ScoreRows,
    noise: f64,
) -> Result<Vec<(SeqId, Vec<TokenLogprob>)>, tch::TchError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let dev = logits.device();
    let mut x = logits.to_kind(Kind::Float);
    if noise > 0.0 {
        x = &x + x.randn_like() * noise;
    }
    let lp = x.log_softmax(-1, Kind::Float);
    let targets: Vec<i64> = rows.targets.iter().map(|&t| i64::from(t)).collect();
    let tgt = Tensor::from_slice(&targets).to_device(dev).unsqueeze(1);
    let chosen = Vec::<f32>::try_from(
        lp.gather(1, &tgt, false)
            .squeeze_dim(1)
            .to_device(Device::Cpu),
    )?;
    let k = rows
        .top_k
        .iter()
        .copied()
        .max()
        .unwrap_or(0)
        .min(MAX_TOP_LOGPROBS);
    let (top_v, top_i) = if k > 0 {
        let (v, i) = lp.topk(k as i64, -1, true, true);
        (
            Vec::<f32>::try_from(v.to_device(Device::Cpu).contiguous().view([-1]))?,
            Vec::<i64>::try_from(i.to_device(Device::Cpu).contiguous().view([-1]))?,
        )
    } else {
        (Vec::new(), Vec::new())
    };
    let mut out: Vec<(SeqId, Vec<TokenLogprob>)> = Vec::new();
    for r in 0..rows.len() {
        let want = rows.top_k[r].min(k);
        let top = (0..want)
            .map(|j| (top_i[r * k + j] as u32, top_v[r * k + j]))
            .collect();
        let t = TokenLogprob {
            token: rows.targets[r],
            logprob: Some(chosen[r]),
            top,
        };
        match out.last_mut() {
            Some((s, v)) if *s == rows.seqs[r] => v.push(t),
            _ => out.push((rows.seqs[r], vec![t])),
        }
    }
    Ok(out)
}

/// The log-probability of `chosen` in one row of logits, with the `k` most
/// likely tokens (CPU; for generated tokens).
pub fn logprobs_of(logits: &[f32], chosen: u32, k: usize) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + logits.iter().map(|v| (v - max).exp()).sum::<f32>().ln();
    let lp = |i: usize| logits[i] - lse;
    let k = k.min(MAX_TOP_LOGPROBS).min(logits.len());
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    let top = if k > 0 {
        idx.select_nth_unstable_by(k - 1, |&a, &b| logits[b].total_cmp(&logits[a]));
        let mut best: Vec<usize> = idx[..k].to_vec();
        best.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        best.into_iter().map(|i| (i as u32, lp(i))).collect()
    } else {
        Vec::new()
    };
    TokenLogprob {
        token: chosen,
        logprob: logits.get(chosen as usize).map(|_| lp(chosen as usize)),
        top,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_logprobs_are_a_log_softmax_with_sorted_top_k() {
        let logits = [1.0f32, 3.0, 2.0, 0.0];
        let t = logprobs_of(&logits, 2, 2);
        let z: f32 = logits.iter().map(|v| v.exp()).sum();
        assert!((t.logprob.unwrap() - (2.0f32.exp() / z).ln()).abs() < 1e-5);
        assert_eq!(
            t.top.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert!(t.top[0].1 > t.top[1].1);
        let total: f32 = logits
            .iter()
            .enumerate()
            .map(|(i, _)| logprobs_of(&logits, i as u32, 0).logprob.unwrap().exp())
            .sum();
        assert!((total - 1.0).abs() < 1e-5);
    }

    #[test]
    fn device_scoring_matches_the_cpu_reference_and_groups_by_sequence() {
        let rows_data: Vec<f32> = vec![0.5, -1.0, 2.0, 0.0, 3.0, 1.0, 0.0, -2.0, 1.0];
        let logits = Tensor::from_slice(&rows_data).view([3, 3]);
        let rows = ScoreRows {
            seqs: vec![7, 7, 9],
            targets: vec![2, 0, 1],
            top_k: vec![1, 1, 2],
        };
        let out = score_rows(&logits, &rows, 0.0).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].0, 7);
        assert_eq!(out[0].1.len(), 2);
        assert_eq!(out[1].0, 9);
        for (r, t) in [&out[0].1[0], &out[0].1[1], &out[1].1[0]]
            .into_iter()
            .enumerate()
        {
            let cpu = logprobs_of(&rows_data[r * 3..r * 3 + 3], rows.targets[r], rows.top_k[r]);
            assert!((t.logprob.unwrap() - cpu.logprob.unwrap()).abs() < 1e-5);
            assert_eq!(t.top.len(), cpu.top.len());
            for (a, b) in t.top.iter().zip(&cpu.top) {
                assert_eq!(a.0, b.0);
                assert!((a.1 - b.1).abs() < 1e-5);
            }
        }
    }
}
