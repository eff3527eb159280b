//! The engine's Llama against an implementation nobody here wrote: Hugging
//! Face `transformers` (PyTorch, CPU) loads the same `make-model --size tiny`
//! directory; next-token logits for fixed prompts must match within
//! tolerance and greedy continuations must be identical token for token.
//! The engine side runs through the real scheduler and paged KV cache, all
//! prompts batched together with chunked prefill. The engine runs twice:
//! f32 (logits within 1e-3, identical greedy tokens) and `--dtype bf16`
//! (weights and KV cache in bf16, against the same f32 reference: relative
//! L2 logit error under 2e-2, and the same next token unless the reference
//! has a near-tie within twice the largest logit error).
//!
//! Needs `STEWARD_PYTHON` (a Python with torch + transformers; `tools/setup.sh
//! python` builds one and `tools/setup.sh --print-env` exports it). Without it
//! the test fails: a skipped correctness check would look like a pass.

use std::io::Write;
use std::process::{Command, Stdio};

use steward_engine::executor::EngineCore;
use steward_engine::make_model::{make_model, ModelSize};
use steward_engine::model::{DType, Llama, WeightLayout};
use steward_engine::sampling::argmax;
use steward_engine::sched::SchedulerConfig;
use steward_engine::tokenizer::TextCodec;

const STEPS: usize = 12;
/// Largest relative L2 error of bf16 logits against the f32 reference.
const BF16_REL_TOL: f64 = 2e-2;

#[test]
fn tiny_model_matches_transformers_logits_and_greedy_tokens() {
    let python = std::env::var("STEWARD_PYTHON").unwrap_or_else(|_| {
        panic!(
            "STEWARD_PYTHON is not set: this test compares the engine with Hugging Face \
             transformers and needs that Python. Run `tools/setup.sh python` and \
             `source <(tools/setup.sh --print-env)` first."
        )
    });
    let dir = tempfile::tempdir().expect("tempdir");
    make_model(ModelSize::Tiny, dir.path()).expect("make-model tiny");
    let codec = TextCodec::load(dir.path()).expect("tokenizer");
    let texts = [
        "The quick brown fox jumps over the lazy dog.",
        "Once upon a time there was a small village at the edge of a great forest, and the people",
        "Héllo wörld 🙂",
    ];
    let mut prompts: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| codec.encode(t).expect("encode"))
        .collect();
    // A prompt longer than a KV block and the per-step budget: exercises
    // chunked prefill across blocks.
    prompts.push((0..70).map(|i| (i * 7 % 300) as u32 + 2).collect());

    let (first_logits, generated) = run_engine(dir.path(), &prompts, DType::F32);
    let (first_bf16, generated_bf16) = run_engine(dir.path(), &prompts, DType::Bf16);

    let req = serde_json::json!({
        "model_dir": dir.path(),
        "texts": texts,
        "prompts": prompts,
        "steps": STEPS,
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/hf_reference.py");
    let mut child = Command::new(&python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {python}: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(req.to_string().as_bytes())
        .expect("write request");
    let out = child.wait_with_output().expect("python output");
    assert!(
        out.status.success(),
        "hf_reference.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hf: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json from python");

    for (i, text) in texts.iter().enumerate() {
        let hf_ids: Vec<u32> = serde_json::from_value(hf["token_ids"][i].clone()).expect("ids");
        assert_eq!(
            hf_ids, prompts[i],
            "tokenizer disagrees with transformers on {text:?}"
        );
    }
    for (i, prompt) in prompts.iter().enumerate() {
        let hf_logits: Vec<f32> = serde_json::from_value(hf["logits"][i].clone()).expect("logits");
        let ours = first_logits[i].as_ref().expect("engine produced logits");
        assert_eq!(hf_logits.len(), ours.len());
        let max_diff = hf_logits
            .iter()
            .zip(ours)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            max_diff < 1e-3,
            "prompt {i} ({} tokens): max |logit diff| {max_diff}",
            prompt.len()
        );
        let hf_greedy: Vec<u32> = serde_json::from_value(hf["greedy"][i].clone()).expect("greedy");
        assert_eq!(
            hf_greedy, generated[i],
            "prompt {i}: greedy continuation differs"
        );

        // bf16 weights and KV cache against the f32 reference: relative L2
        // error of the logits under BF16_REL_TOL (docs/engine.md), and a
        // next token that is the reference's or within twice the largest
        // logit error of it (random weights have near-ties that bf16
        // rounding may flip; after a flip greedy continuations part ways,
        // so they are reported, not compared).
        let bf16 = first_bf16[i].as_ref().expect("bf16 engine produced logits");
        let (num, den, worst) =
            hf_logits
                .iter()
                .zip(bf16)
                .fold((0.0f64, 0.0f64, 0.0f32), |(n, d, w), (a, b)| {
                    (
                        n + f64::from(a - b).powi(2),
                        d + f64::from(*a).powi(2),
                        w.max((a - b).abs()),
                    )
                });
        let rel = (num / den).sqrt();
        let top = hf_logits[argmax(&hf_logits) as usize];
        let picked = hf_logits[argmax(bf16) as usize];
        let same = hf_greedy
            .iter()
            .zip(&generated_bf16[i])
            .take_while(|(a, b)| a == b)
            .count();
        println!(
            "prompt {i}: bf16 logits relative L2 error {rel:.2e}, max |diff| {worst:.3}, \
             greedy agrees on the first {same}/{STEPS} tokens"
        );
        assert!(
            rel < BF16_REL_TOL,
            "prompt {i}: bf16 logits relative error {rel:.3e} >= {BF16_REL_TOL}"
        );
        assert!(
            top - picked <= 2.0 * worst,
            "prompt {i}: bf16 picks a token {} below the reference's best",
            top - picked
        );
    }
}

/// Runs every prompt through the engine (batched, chunked, paged) with
/// weights stored as `dtype`; returns each prompt's first next-token logits
/// and its greedy continuation.
fn run_engine(
    dir: &std::path::Path,
    prompts: &[Vec<u32>],
    dtype: DType,
) -> (Vec<Option<Vec<f32>>>, Vec<Vec<u32>>) {
    let model =
        Llama::load_as(dir, tch::Device::Cpu, dtype, WeightLayout::Auto).expect("load model");
    let mut core = EngineCore::new(
        model,
        SchedulerConfig {
            num_blocks: 64,
            block_size: 16,
            max_batch_tokens: 24,
            // Small chunks while others decode: decode-first planning and
            // chunked prefill interleave in every step.
            prefill_chunk_while_decoding: 5,
            prefill_tokens_per_decode: 0,
            prefill_step_ratio: 0.0,
            max_running: 8,
            prefix_caching: true,
        },
    );
    for (i, p) in prompts.iter().enumerate() {
        core.sched.add(i as u64, p.clone());
    }
    let mut first_logits: Vec<Option<Vec<f32>>> = vec![None; prompts.len()];
    let mut generated: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
    for _ in 0..500 {
        if generated.iter().all(|g| g.len() >= STEPS) {
            break;
        }
        let out = core.step().expect("step");
        for (seq, logits) in out.logits {
            let i = seq as usize;
            let tok = argmax(&logits);
            if first_logits[i].is_none() {
                first_logits[i] = Some(logits);
            }
            generated[i].push(tok);
            if generated[i].len() >= STEPS {
                core.sched.remove(seq);
            } else {
                core.sched.append_token(seq, tok);
            }
        }
    }
    assert_eq!(
        core.sched.blocks_used(),
        0,
        "all blocks freed after the run"
    );
    (first_logits, generated)
}
