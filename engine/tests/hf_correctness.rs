//! The engine's Llama against an implementation nobody here wrote: Hugging
//! Face `transformers` (PyTorch, CPU) loads the same `make-model --size tiny`
//! directory; next-token logits for fixed prompts must match within
//! tolerance and greedy continuations must be identical token for token.
//! The engine side runs through the real scheduler and paged KV cache, all
//! prompts batched together with chunked prefill.
//!
//! Needs `STEWARD_PYTHON` (a Python with torch + transformers; `tools/setup.sh
//! python` builds one and `tools/setup.sh --print-env` exports it). Without it
//! the test fails: a skipped correctness check would look like a pass.

use std::io::Write;
use std::process::{Command, Stdio};

use steward_engine::executor::EngineCore;
use steward_engine::make_model::{make_model, ModelSize};
use steward_engine::model::Llama;
use steward_engine::sampling::argmax;
use steward_engine::sched::SchedulerConfig;
use steward_engine::tokenizer::TextCodec;

const STEPS: usize = 12;

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

    let model = Llama::load(dir.path(), tch::Device::Cpu).expect("load model");
    let mut core = EngineCore::new(
        model,
        SchedulerConfig {
            num_blocks: 64,
            block_size: 16,
            max_batch_tokens: 24,
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
    }
}
