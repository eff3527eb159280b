//! OpenAI `logprobs` / `echo` over real HTTP against a real engine process:
//! the shapes, teacher-forced scoring of a given text (what the quality
//! gate's perplexity uses), and that the scores mean something: text the
//! model itself would write has lower perplexity than random text, and a
//! degraded model (logit-noise test aid) scores the same text worse.

mod common;

use common::{Engine, SseReader, MODEL};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const PROMPT: &str = "The river flowed slowly past the mill";

async fn completion(e: &Engine, body: Value) -> Value {
    let r = e.post("/v1/completions", body).await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// Teacher-forced scoring of `prompt` (echo, no generation).
async fn score(e: &Engine, prompt: Value) -> Value {
    completion(
        e,
        json!({"model": MODEL, "prompt": prompt, "max_tokens": 0, "echo": true, "logprobs": 0}),
    )
    .await
}

/// Perplexity of the tokens whose text starts at or after `from` (chars).
fn perplexity_from(lp: &Value, from: u64) -> (f64, usize) {
    let mut sum = 0.0;
    let mut n = 0;
    for (i, off) in lp["text_offset"].as_array().unwrap().iter().enumerate() {
        if off.as_u64().unwrap() >= from {
            let l = &lp["token_logprobs"][i];
            assert!(l.is_number(), "scored token {i}");
            sum += f(l);
            n += 1;
        }
    }
    assert!(n > 0);
    ((-sum / n as f64).exp(), n)
}

#[tokio::test]
async fn completion_logprobs_have_the_openai_shape() {
    let e = Engine::start(&[]).await;
    let v = completion(
        &e,
        json!({"model": MODEL, "prompt": PROMPT, "max_tokens": 6, "ignore_eos": true, "temperature": 0, "logprobs": 3}),
    )
    .await;
    let c = &v["choices"][0];
    let lp = &c["logprobs"];
    let tokens = lp["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 6);
    let joined: String = tokens.iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(joined, c["text"].as_str().unwrap());
    let offsets: Vec<u64> = lp["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_u64().unwrap())
        .collect();
    assert_eq!(offsets[0], 0);
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]));
    for i in 0..6 {
        let chosen = f(&lp["token_logprobs"][i]);
        assert!(chosen <= 0.0);
        let top = lp["top_logprobs"][i].as_object().unwrap();
        // k alternatives + the chosen one; two ids may share a text.
        assert!((1..=4).contains(&top.len()), "{top:?}");
        assert!(top.contains_key(lp["tokens"][i].as_str().unwrap()));
        // Greedy: the chosen token is the most likely one.
        let best = top.values().map(f).fold(f64::NEG_INFINITY, f64::max);
        assert!((best - chosen).abs() < 1e-4, "greedy picks the argmax");
    }
    // Without logprobs the field is null, as OpenAI sends it.
    let v = completion(
        &e,
        json!({"model": MODEL, "prompt": PROMPT, "max_tokens": 2}),
    )
    .await;
    assert!(v["choices"][0]["logprobs"].is_null());
}

#[tokio::test]
async fn echo_with_max_tokens_zero_scores_the_prompt_teacher_forced() {
    let e = Engine::start(&[]).await;
    let v = completion(
        &e,
        json!({"model": MODEL, "prompt": PROMPT, "max_tokens": 0, "echo": true, "logprobs": 5}),
    )
    .await;
    let c = &v["choices"][0];
    assert_eq!(c["text"], PROMPT, "the prompt comes back");
    assert_eq!(c["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 0);
    let lp = &c["logprobs"];
    let n = v["usage"]["prompt_tokens"].as_u64().unwrap() as usize;
    assert_eq!(lp["tokens"].as_array().unwrap().len(), n);
    assert!(
        lp["token_logprobs"][0].is_null(),
        "nothing predicts the first token"
    );
    assert!(lp["top_logprobs"][0].is_null());
    assert_eq!(lp["text_offset"][0], 0);
    for i in 1..n {
        assert!(f(&lp["token_logprobs"][i]) <= 0.0);
    }
    // Teacher forcing: the scores at position i are the model's
    // distribution after the prompt's first i tokens, the same numbers a
    // one-token generation from that prefix reports. Compare position 3's
    // top-5 with a generation from the first 3 tokens (as token text).
    let prefix: String = (0..3)
        .map(|i| lp["tokens"][i].as_str().unwrap())
        .collect::<String>();
    let g = completion(
        &e,
        json!({"model": MODEL, "prompt": prefix, "max_tokens": 1, "temperature": 0, "ignore_eos": true, "logprobs": 5}),
    )
    .await;
    let gen_top = g["choices"][0]["logprobs"]["top_logprobs"][0]
        .as_object()
        .unwrap()
        .clone();
    let echo_top = lp["top_logprobs"][3].as_object().unwrap();
    let mut compared = 0;
    for (tok, lpv) in &gen_top {
        if let Some(other) = echo_top.get(tok) {
            assert!((f(lpv) - f(other)).abs() < 1e-3, "{tok}: {lpv} vs {other}");
            compared += 1;
        }
    }
    assert!(
        compared >= 4,
        "the same top tokens: {gen_top:?} vs {echo_top:?}"
    );
    // Echo + generation: prompt entries first, then the generated ones.
    let v = completion(
        &e,
        json!({"model": MODEL, "prompt": PROMPT, "max_tokens": 3, "echo": true, "logprobs": 0, "ignore_eos": true}),
    )
    .await;
    let c = &v["choices"][0];
    assert!(c["text"].as_str().unwrap().starts_with(PROMPT));
    assert_eq!(c["logprobs"]["tokens"].as_array().unwrap().len(), n + 3);
}

fn ids(lp: &Value) -> Vec<u32> {
    lp["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            t.as_str()
                .and_then(|t| t.strip_prefix("token_id:"))
                .and_then(|t| t.parse().ok())
                .expect("token_id:<id>")
        })
        .collect()
}

fn ppl(lps: &[f64]) -> f64 {
    (-lps.iter().sum::<f64>() / lps.len() as f64).exp()
}

/// Teacher-forced scores of `ids` from position `from` on.
async fn scores_from(e: &Engine, ids: &[u32], from: usize) -> Vec<f64> {
    let v = completion(
        e,
        json!({"model": MODEL, "prompt": ids, "max_tokens": 0, "echo": true, "logprobs": 0}),
    )
    .await;
    v["choices"][0]["logprobs"]["token_logprobs"]
        .as_array()
        .unwrap()[from..]
        .iter()
        .map(f)
        .collect()
}

#[tokio::test]
async fn perplexity_of_the_models_own_text_is_lower_than_of_random_text_and_rises_under_logit_noise(
) {
    let e = Engine::start(&[]).await;
    // The prompt's and the greedy continuation's exact token ids (vLLM's
    // return_tokens_as_token_ids), with the logprobs generation saw.
    let g = completion(
        &e,
        json!({"model": MODEL, "prompt": PROMPT, "max_tokens": 24, "temperature": 0, "ignore_eos": true,
               "echo": true, "logprobs": 0, "return_tokens_as_token_ids": true}),
    )
    .await;
    let all = ids(&g["choices"][0]["logprobs"]);
    let n_prompt = g["usage"]["prompt_tokens"].as_u64().unwrap() as usize;
    assert_eq!(all.len(), n_prompt + 24);
    let generated: Vec<f64> = g["choices"][0]["logprobs"]["token_logprobs"]
        .as_array()
        .unwrap()[n_prompt..]
        .iter()
        .map(f)
        .collect();
    // Teacher forcing the same ids gives the numbers generation saw.
    let forced = scores_from(&e, &all, n_prompt).await;
    for (i, (a, b)) in generated.iter().zip(&forced).enumerate() {
        assert!(
            (a - b).abs() < 1e-3,
            "token {i}: generated {a} vs forced {b}"
        );
    }
    let ppl_greedy = ppl(&forced);
    // Random continuation ids after the same prompt.
    let mut rng = StdRng::seed_from_u64(5);
    let mut random = all[..n_prompt].to_vec();
    random.extend((0..24).map(|_| rng.random_range(3..500u32)));
    let ppl_random = ppl(&scores_from(&e, &random, n_prompt).await);
    // The same greedy ids on a degraded replica (the quality test aid).
    let noisy = Engine::start(&[
        "--enable-fault-injection",
        "--fault-logit-noise",
        "3",
        "--fault-seed",
        "1",
    ])
    .await;
    let ppl_noisy = ppl(&scores_from(&noisy, &all, n_prompt).await);
    // And the reference as plain text, as the quality gate sends it.
    let text = format!(
        "{PROMPT}{}",
        g["choices"][0]["text"]
            .as_str()
            .unwrap()
            .strip_prefix(PROMPT)
            .unwrap()
    );
    let scored_text = score(&e, json!(text)).await;
    let (ppl_text, n_text) = perplexity_from(
        &scored_text["choices"][0]["logprobs"],
        PROMPT.chars().count() as u64,
    );
    println!(
        "perplexity over 24 tokens: greedy {ppl_greedy:.2}, random {ppl_random:.2}, greedy under logit noise {ppl_noisy:.2}; greedy as re-tokenised text ({n_text} tokens) {ppl_text:.2}; vocab 512"
    );
    assert!(
        ppl_greedy < 512.0,
        "argmax tokens: perplexity below the vocabulary size"
    );
    assert!(
        ppl_greedy < ppl_random,
        "greedy {ppl_greedy} < random {ppl_random}"
    );
    assert!(
        ppl_noisy > ppl_greedy * 1.5,
        "noise raises perplexity: {ppl_noisy} vs {ppl_greedy}"
    );
}

#[tokio::test]
async fn chat_logprobs_have_the_openai_shape() {
    let e = Engine::start(&[]).await;
    let r = e
        .post("/v1/chat/completions", json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "ignore_eos": true, "logprobs": true, "top_logprobs": 2}))
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 4);
    for c in content {
        assert!(c["token"].is_string());
        assert!(f(&c["logprob"]) <= 0.0);
        assert!(c["bytes"].is_array());
        let top = c["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 2);
        assert!(f(&top[0]["logprob"]) >= f(&top[1]["logprob"]));
    }
}

#[tokio::test]
async fn streamed_echo_and_logprobs_arrive_in_chunks() {
    let e = Engine::start(&[]).await;
    let r = e
        .post("/v1/completions", json!({"model": MODEL, "prompt": PROMPT, "max_tokens": 5, "ignore_eos": true, "echo": true, "logprobs": 1, "stream": true}))
        .await;
    assert_eq!(r.status(), 200);
    let mut s = SseReader::new(r);
    let first: Value = serde_json::from_str(&s.next_data().await.unwrap()).unwrap();
    assert_eq!(first["choices"][0]["text"], PROMPT, "the echo comes first");
    assert!(first["choices"][0]["logprobs"]["token_logprobs"][0].is_null());
    let (text, finish, done) = s.finish().await;
    assert!(done && finish.as_deref() == Some("length"));
    let mut generated = 0;
    for ev in &s.events[1..] {
        if let Ok(v) = serde_json::from_str::<Value>(ev) {
            if let Some(t) = v["choices"][0]["logprobs"]["tokens"].as_array() {
                generated += t.len();
            }
        }
    }
    assert_eq!(generated, 5, "one entry per generated token");
    assert!(text.starts_with(PROMPT));
}

#[tokio::test]
async fn bad_logprob_options_are_400s_naming_the_field() {
    let e = Engine::start(&[]).await;
    for (path, body, param) in [
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "logprobs": 21}),
            "logprobs",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "logprobs": -1}),
            "logprobs",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "max_tokens": 0}),
            "max_tokens",
        ),
        (
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}),
            "top_logprobs",
        ),
        (
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 50}),
            "top_logprobs",
        ),
    ] {
        let r = e.post(path, body.clone()).await;
        assert_eq!(r.status(), 400, "{body}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["param"], param, "{body}");
    }
}
