//! `steward-engine make-model`: writes a random-weight Llama model directory
//! in Hugging Face's format (config.json, model.safetensors, tokenizer.json,
//! tokenizer_config.json, generation_config.json), so tests and demos need
//! no model hub. The byte-level BPE tokenizer is trained on a text the binary
//! carries; weights come from a fixed seed, so the same size always gives
//! the same model.

use std::path::Path;

use tch::{Device, Kind, Tensor};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, TokenizerBuilder};

use crate::model::config::{ModelConfig, TokenIds};

const CORPUS: &str = include_str!("corpus.txt");
const SEED: i64 = 1234;
pub const BOS: &str = "<s>";
pub const EOS: &str = "</s>";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModelSize {
    /// About 1M parameters: for tests.
    Tiny,
    /// About 100M parameters: for benchmarks.
    Bench,
}

#[derive(Debug, thiserror::Error)]
pub enum MakeModelError {
    #[error("writing {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("training the tokenizer: {0}")]
    Tokenizer(String),
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("safetensors: {0}")]
    Safetensors(String),
}

struct Shape {
    vocab_target: usize,
    hidden: usize,
    intermediate: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    max_pos: usize,
}

fn shape(size: ModelSize) -> Shape {
    match size {
        ModelSize::Tiny => Shape {
            vocab_target: 512,
            hidden: 128,
            intermediate: 352,
            layers: 4,
            heads: 4,
            kv_heads: 2,
            max_pos: 1024,
        },
        ModelSize::Bench => Shape {
            vocab_target: 8192,
            hidden: 768,
            intermediate: 2048,
            layers: 16,
            heads: 12,
            kv_heads: 4,
            // Room for the benchmark's 2048-token prompts and 4k-context
            // attention measurements.
            max_pos: 4096,
        },
    }
}

fn write(path: &Path, text: &str) -> Result<(), MakeModelError> {
    std::fs::write(path, text).map_err(|source| MakeModelError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Trains the byte-level BPE tokenizer and writes `tokenizer.json`; returns
/// the vocabulary size.
fn write_tokenizer(dir: &Path, vocab_target: usize) -> Result<usize, MakeModelError> {
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_target)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(vec![
            AddedToken::from(BOS, true),
            AddedToken::from(EOS, true),
        ])
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut tok =
        TokenizerBuilder::<BPE, NormalizerWrapper, ByteLevel, ByteLevel, ByteLevel>::new()
            .with_model(BPE::default())
            .with_normalizer(None)
            .with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
            .with_post_processor(Some(ByteLevel::new(false, true, true)))
            .with_decoder(Some(ByteLevel::new(false, true, true)))
            .build()
            .map_err(|e| MakeModelError::Tokenizer(e.to_string()))?;
    tok.train(&mut trainer, CORPUS.lines().map(str::to_string))
        .map_err(|e| MakeModelError::Tokenizer(e.to_string()))?;
    let path = dir.join("tokenizer.json");
    tok.save(&path, false)
        .map_err(|e| MakeModelError::Tokenizer(e.to_string()))?;
    Ok(tok.get_vocab_size(true))
}

/// Writes the model directory for `size` into `dir`.
pub fn make_model(size: ModelSize, dir: &Path) -> Result<ModelConfig, MakeModelError> {
    std::fs::create_dir_all(dir).map_err(|source| MakeModelError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let s = shape(size);
    let vocab = write_tokenizer(dir, s.vocab_target)?;
    let cfg = ModelConfig {
        architectures: vec!["LlamaForCausalLM".into()],
        model_type: "llama".into(),
        vocab_size: vocab,
        hidden_size: s.hidden,
        intermediate_size: s.intermediate,
        num_hidden_layers: s.layers,
        num_attention_heads: s.heads,
        num_key_value_heads: Some(s.kv_heads),
        head_dim: Some(s.hidden / s.heads),
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        max_position_embeddings: s.max_pos,
        tie_word_embeddings: false,
        bos_token_id: Some(0),
        eos_token_id: Some(TokenIds::One(1)),
        torch_dtype: Some("float32".into()),
        hidden_act: Some("silu".into()),
    };
    let config_json = serde_json::json!({
        "architectures": cfg.architectures,
        "model_type": cfg.model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": false,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "torch_dtype": "float32",
        "hidden_act": "silu",
        "attention_bias": false,
        "mlp_bias": false,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "use_cache": true,
    });
    write(&dir.join("config.json"), &pretty(&config_json))?;
    write(
        &dir.join("generation_config.json"),
        &pretty(&serde_json::json!({"bos_token_id": 0, "eos_token_id": 1, "do_sample": false})),
    )?;
    write(
        &dir.join("tokenizer_config.json"),
        &pretty(&serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": BOS,
            "eos_token": EOS,
            "model_max_length": cfg.max_position_embeddings,
            "chat_template": crate::tokenizer::DEFAULT_CHAT_TEMPLATE,
        })),
    )?;
    write_weights(&cfg, &dir.join("model.safetensors"))?;
    Ok(cfg)
}

fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

fn write_weights(cfg: &ModelConfig, path: &Path) -> Result<(), MakeModelError> {
    let _guard = tch::no_grad_guard();
    tch::manual_seed(SEED);
    let opts = (Kind::Float, Device::Cpu);
    // Scaled so activations keep unit scale through the stack and the
    // logits are well separated (greedy decoding has no near-ties).
    let linear = |out: usize, inp: usize| {
        Tensor::randn([out as i64, inp as i64], opts) / (inp as f64).sqrt()
    };
    let norm = |n: usize| Tensor::ones([n as i64], opts) + Tensor::randn([n as i64], opts) * 0.1;
    let d = cfg.hidden_size;
    let hd = cfg.head_dim();
    let mut tensors: Vec<(String, Tensor)> = vec![(
        "model.embed_tokens.weight".into(),
        Tensor::randn([cfg.vocab_size as i64, d as i64], opts),
    )];
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        tensors.push((format!("{p}.input_layernorm.weight"), norm(d)));
        tensors.push((
            format!("{p}.self_attn.q_proj.weight"),
            linear(cfg.num_attention_heads * hd, d),
        ));
        tensors.push((
            format!("{p}.self_attn.k_proj.weight"),
            linear(cfg.kv_heads() * hd, d),
        ));
        tensors.push((
            format!("{p}.self_attn.v_proj.weight"),
            linear(cfg.kv_heads() * hd, d),
        ));
        tensors.push((
            format!("{p}.self_attn.o_proj.weight"),
            linear(d, cfg.num_attention_heads * hd),
        ));
        tensors.push((format!("{p}.post_attention_layernorm.weight"), norm(d)));
        tensors.push((
            format!("{p}.mlp.gate_proj.weight"),
            linear(cfg.intermediate_size, d),
        ));
        tensors.push((
            format!("{p}.mlp.up_proj.weight"),
            linear(cfg.intermediate_size, d),
        ));
        tensors.push((
            format!("{p}.mlp.down_proj.weight"),
            linear(d, cfg.intermediate_size),
        ));
    }
    tensors.push(("model.norm.weight".into(), norm(d)));
    tensors.push(("lm_head.weight".into(), linear(cfg.vocab_size, d) * 4.0));
    // Written with the safetensors crate so the header carries
    // `{"format": "pt"}`, which transformers requires.
    let mut raw: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, t) in &tensors {
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        let values = Vec::<f32>::try_from(t.flatten(0, -1))?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        raw.push((name.clone(), shape, bytes));
    }
    let mut views = Vec::with_capacity(raw.len());
    for (name, shape, bytes) in &raw {
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map_err(|e| MakeModelError::Safetensors(format!("view {name}: {e}")))?;
        views.push((name.clone(), view));
    }
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(meta), path)
        .map_err(|e| MakeModelError::Safetensors(format!("writing: {e}")))?;
    Ok(())
}
