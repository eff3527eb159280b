//! The Llama decoder: RMSNorm, rotary position embeddings (rotate-half form,
//! `rope_theta` from the config), grouped-query attention over paged K/V, and
//! a SwiGLU MLP. One `forward` runs a whole engine step: every scheduled
//! sequence's new tokens are flattened into one `[T, hidden]` matrix so the
//! projections and MLP are single matmuls; attention is per prefill chunk,
//! and all single-token decodes run as one padded, masked batch.

use std::path::Path;

use tch::{Device, Kind, Tensor};

use super::kv::KvCache;
use super::linear::{Linear, WeightLayout};
use super::weights::{load_tensors, take};
use super::{ModelError, Result};
use crate::model::config::ModelConfig;

/// How weights (and the KV cache) are stored; activations follow them,
/// norms and softmax statistics are computed in f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DType {
    /// 32-bit floats: the reference.
    F32,
    /// bfloat16: half the bytes per step; on CPUs with AVX-512 BF16 (or
    /// AMX) and on GPUs the matmuls run natively in bf16.
    Bf16,
}

impl DType {
    pub fn kind(self) -> Kind {
        match self {
            DType::F32 => Kind::Float,
            DType::Bf16 => Kind::BFloat16,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::Bf16 => "bf16",
        }
    }
}

struct Layer {
    input_norm: Tensor,
    /// q, k and v projections stacked along the output dim.
    wqkv: Linear,
    wo: Linear,
    post_norm: Tensor,
    /// gate and up projections stacked along the output dim.
    w_gate_up: Linear,
    w_down: Linear,
}

/// The model weights. Immutable after load.
pub struct Llama {
    pub cfg: ModelConfig,
    pub device: Device,
    pub kind: Kind,
    /// The weight layouts chosen at load.
    pub layout: WeightLayout,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Linear,
    /// The output head shares the embedding's storage (plain layout).
    tied: bool,
    cos: Tensor,
    sin: Tensor,
    /// Decode attention reads K and V in place from the paged cache
    /// ([`super::linear::paged_attention`]) instead of gathering a padded
    /// copy: on by default where it runs (CPU with AVX-512, f32, a head
    /// dim that is a multiple of 16); off, the gather path.
    pub paged_attention: bool,
}

/// One sequence's prefill chunk inside a step.
pub struct PrefillSeq {
    /// Row of its first new token in the flattened batch.
    pub start: i64,
    /// Number of new tokens.
    pub len: i64,
    /// Tokens of context (cached and new).
    pub ctx_len: i64,
    /// KV-cache rows of its whole context, head-major
    /// (`[kv_heads * ctx_len]`: `head * slots + slot`); `None` when the
    /// context is only this chunk (its K/V come straight from the chunk).
    pub ctx_index: Option<Tensor>,
}

/// All single-token decodes of a step, attended as one padded batch.
pub struct DecodeGroup {
    /// Rows of these tokens in the flattened batch (`[B]`), ascending;
    /// when the step has no prefill they are exactly `0..B`.
    pub rows: Tensor,
    /// Longest context in the group.
    pub lmax: i64,
    /// KV-cache rows of each sequence's context, head-major and padded
    /// (`[B * kv_heads * lmax]`, ordered batch, head, position).
    pub index: Tensor,
    /// 0 where a position is real, -inf where it is padding (`[B, 1, 1, lmax]`, f32).
    pub bias: Tensor,
}

/// The input of one engine step.
pub struct StepBatch {
    pub tokens: Tensor,
    pub positions: Tensor,
    /// KV-cache rows each new token's K/V heads are written to, head-major
    /// (`[T * kv_heads]`, ordered token, head).
    pub write_index: Tensor,
    pub prefills: Vec<PrefillSeq>,
    pub decode: Option<DecodeGroup>,
    /// Rows whose logits are wanted (`[n]`).
    pub logit_rows: Tensor,
}

/// RMSNorm computed in f32 whatever the storage dtype, cast back before
/// the weight multiplies it (as Hugging Face's LlamaRMSNorm does).
fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Tensor {
    let kind = x.kind();
    let xf = if kind == Kind::Float {
        x.shallow_clone()
    } else {
        x.to_kind(Kind::Float)
    };
    let var = xf.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
    let normed = xf * (var + eps).rsqrt();
    if kind == Kind::Float {
        normed * w
    } else {
        normed.to_kind(kind) * w
    }
}

fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size()[x.dim() - 1] / 2;
    let x1 = x.narrow(-1, 0, half);
    let x2 = x.narrow(-1, half, half);
    Tensor::cat(&[x2.neg(), x1], -1)
}

impl Llama {
    /// Loads `config.json` and the safetensors of `dir` as f32.
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        Self::load_as(dir, device, DType::F32, WeightLayout::Auto)
    }

    /// Loads `config.json` and the safetensors of `dir`, weights (and the
    /// KV cache made for this model) stored as `dtype`, projections laid
    /// out as `layout` resolves to on `device`.
    pub fn load_as(dir: &Path, device: Device, dtype: DType, layout: WeightLayout) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let cfg: ModelConfig = serde_json::from_str(&text).map_err(|source| ModelError::Json {
            path: path.display().to_string(),
            source,
        })?;
        if !cfg.model_type.is_empty() && cfg.model_type != "llama" && cfg.model_type != "mistral" {
            return Err(ModelError::Unsupported(format!(
                "model_type {} (only llama-family decoders)",
                cfg.model_type
            )));
        }
        if cfg.hidden_act.as_deref().is_some_and(|a| a != "silu") {
            return Err(ModelError::Unsupported("hidden_act other than silu".into()));
        }
        let kind = dtype.kind();
        let layout = layout.resolve(device, kind);
        if device.is_cuda() {
            // Shapes change every step: no per-shape cuDNN attention plans.
            super::linear::sdp_use_cudnn(false);
        }
        let lin = |w: Tensor| Linear::new(w, layout);
        let _guard = tch::no_grad_guard();
        let mut w = load_tensors(dir, device, kind)?;
        let embed = take(&mut w, "model.embed_tokens.weight")?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let q = take(&mut w, &format!("{p}.self_attn.q_proj.weight"))?;
            let k = take(&mut w, &format!("{p}.self_attn.k_proj.weight"))?;
            let v = take(&mut w, &format!("{p}.self_attn.v_proj.weight"))?;
            let gate = take(&mut w, &format!("{p}.mlp.gate_proj.weight"))?;
            let up = take(&mut w, &format!("{p}.mlp.up_proj.weight"))?;
            layers.push(Layer {
                input_norm: take(&mut w, &format!("{p}.input_layernorm.weight"))?,
                wqkv: lin(Tensor::cat(&[q, k, v], 0))?,
                wo: lin(take(&mut w, &format!("{p}.self_attn.o_proj.weight"))?)?,
                post_norm: take(&mut w, &format!("{p}.post_attention_layernorm.weight"))?,
                w_gate_up: lin(Tensor::cat(&[gate, up], 0))?,
                w_down: lin(take(&mut w, &format!("{p}.mlp.down_proj.weight"))?)?,
            });
        }
        let norm = take(&mut w, "model.norm.weight")?;
        let (lm_head, tied) = match w.remove("lm_head.weight") {
            Some(t) => (lin(t)?, false),
            None if cfg.tie_word_embeddings => (lin(embed.shallow_clone())?, true),
            None => return Err(ModelError::MissingWeight("lm_head.weight".into())),
        };
        let (cos, sin) = rope_tables(&cfg, device);
        let (cos, sin) = (cos.to_kind(kind), sin.to_kind(kind));
        let paged_attention = device == Device::Cpu
            && kind == Kind::Float
            && cfg.head_dim().is_multiple_of(16)
            && super::linear::panel_available();
        Ok(Self {
            cfg,
            device,
            kind,
            layout,
            embed,
            layers,
            norm,
            lm_head,
            tied,
            cos,
            sin,
            paged_attention,
        })
    }

    /// Number of parameters (a tied output head counted once).
    pub fn num_params(&self) -> i64 {
        let mut n = self.embed.numel() + self.norm.numel();
        if !self.tied {
            n += self.lm_head.numel();
        }
        for l in &self.layers {
            n += l.input_norm.numel()
                + l.wqkv.numel()
                + l.wo.numel()
                + l.post_norm.numel()
                + l.w_gate_up.numel()
                + l.w_down.numel();
        }
        n as i64
    }

    /// Bytes the weights take as stored, every layout counted (a tied
    /// output head's plain copy is the embedding itself).
    pub fn weight_bytes(&self) -> u64 {
        let plain = |t: &Tensor| t.numel() as u64 * t.kind().elt_size_in_bytes() as u64;
        let mut b = plain(&self.embed) + plain(&self.norm) + self.lm_head.bytes();
        if self.tied && self.lm_head.has_plain() {
            b -= plain(&self.embed);
        }
        for l in &self.layers {
            b += plain(&l.input_norm)
                + plain(&l.post_norm)
                + l.wqkv.bytes()
                + l.wo.bytes()
                + l.w_gate_up.bytes()
                + l.w_down.bytes();
        }
        b
    }

    /// Runs one step: writes the new tokens' K/V into `kv` and returns the
    /// logits of `batch.logit_rows` as `[n, vocab]` (f32).
    pub fn forward(&self, kv: &mut KvCache, batch: &StepBatch) -> Tensor {
        let _guard = tch::no_grad_guard();
        let cfg = &self.cfg;
        let n_heads = cfg.num_attention_heads as i64;
        let n_kv = cfg.kv_heads() as i64;
        let hd = cfg.head_dim() as i64;
        let groups = n_heads / n_kv;
        let t = batch.tokens.size()[0];
        let eps = cfg.rms_norm_eps;
        let scale = 1.0 / (hd as f64).sqrt();

        let cos = self.cos.index_select(0, &batch.positions).unsqueeze(1);
        let sin = self.sin.index_select(0, &batch.positions).unsqueeze(1);
        let mut h = self.embed.index_select(0, &batch.tokens);
        let dec_bias = batch.decode.as_ref().map(|d| d.bias.to_kind(self.kind));
        for (li, layer) in self.layers.iter().enumerate() {
            let xn = rms_norm(&h, &layer.input_norm, eps);
            let qkv = layer.wqkv.forward(&xn);
            // RoPE on q and k in one pass: they sit side by side in qkv.
            let qk = qkv
                .narrow(1, 0, (n_heads + n_kv) * hd)
                .view([t, n_heads + n_kv, hd]);
            let qk = &qk * &cos + rotate_half(&qk) * &sin;
            let q = qk.narrow(1, 0, n_heads);
            let k = qk.narrow(1, n_heads, n_kv);
            let v = qkv
                .narrow(1, (n_heads + n_kv) * hd, n_kv * hd)
                .view([t, n_kv, hd]);
            let (kc, vc) = &mut kv.layers[li];
            let _ = kc.index_copy_(0, &batch.write_index, &k.reshape([t * n_kv, hd]));
            let _ = vc.index_copy_(0, &batch.write_index, &v.reshape([t * n_kv, hd]));

            let decode_only = batch.prefills.is_empty();
            let mut out = if decode_only {
                None
            } else {
                Some(Tensor::zeros([t, n_heads, hd], (self.kind, self.device)))
            };
            for p in &batch.prefills {
                let qs = q.narrow(0, p.start, p.len).permute([1, 0, 2]).unsqueeze(0);
                let ctx = p.ctx_len;
                // [1, kv_heads, ctx, hd]: from the cache, or the chunk itself.
                let (ks, vs) = match &p.ctx_index {
                    Some(idx) => (
                        kc.index_select(0, idx).view([1, n_kv, ctx, hd]),
                        vc.index_select(0, idx).view([1, n_kv, ctx, hd]),
                    ),
                    None => (
                        k.narrow(0, p.start, p.len).permute([1, 0, 2]).unsqueeze(0),
                        v.narrow(0, p.start, p.len).permute([1, 0, 2]).unsqueeze(0),
                    ),
                };
                let o = if ctx == p.len {
                    Tensor::scaled_dot_product_attention::<Tensor>(
                        &qs, &ks, &vs, None, 0.0, true, scale, true,
                    )
                } else {
                    // Query i sits at position ctx - len + i and sees keys up to it.
                    let qpos = Tensor::arange_start(ctx - p.len, ctx, (Kind::Int64, self.device))
                        .unsqueeze(1);
                    let kpos = Tensor::arange(ctx, (Kind::Int64, self.device)).unsqueeze(0);
                    let mask = kpos.le_tensor(&qpos);
                    Tensor::scaled_dot_product_attention(
                        &qs,
                        &ks,
                        &vs,
                        Some(mask),
                        0.0,
                        false,
                        scale,
                        true,
                    )
                };
                if let Some(out) = &mut out {
                    out.narrow(0, p.start, p.len)
                        .copy_(&o.squeeze_dim(0).permute([1, 0, 2]));
                }
            }
            let mut decoded = None;
            if let Some(d) = &batch.decode {
                let b = d.rows.size()[0];
                // Grouped attention: query head j*groups + i reads KV head j.
                let qd = if decode_only {
                    q.shallow_clone()
                } else {
                    q.index_select(0, &d.rows)
                };
                let qd = (qd * scale).reshape([b, n_kv, groups, hd]);
                let o = if self.paged_attention {
                    in_place_decode(&qd, kc, vc, d, dec_bias.as_ref())
                        .unwrap_or_else(|e| {
                            tracing::warn!(error = %e, "paged attention failed; gathering the contexts instead");
                            gathered_decode(&qd, kc, vc, d, dec_bias.as_ref(), self.kind)
                        })
                } else {
                    gathered_decode(&qd, kc, vc, d, dec_bias.as_ref(), self.kind)
                }
                .reshape([b, n_heads, hd]);
                match &mut out {
                    Some(out) => {
                        let _ = out.index_copy_(0, &d.rows, &o);
                    }
                    None => decoded = Some(o),
                }
            }
            let out = match (out, decoded) {
                (Some(out), _) => out,
                (None, Some(o)) => o,
                (None, None) => Tensor::zeros([t, n_heads, hd], (self.kind, self.device)),
            };
            let attn = layer.wo.forward(&out.view([t, n_heads * hd]));
            h += attn;
            let xn = rms_norm(&h, &layer.post_norm, eps);
            let gu = layer.w_gate_up.forward(&xn);
            let inter = cfg.intermediate_size as i64;
            let g = gu.narrow(1, 0, inter);
            let u = gu.narrow(1, inter, inter);
            let m = layer.w_down.forward(&(g.silu() * u));
            h += m;
        }
        let last = h.index_select(0, &batch.logit_rows);
        let last = rms_norm(&last, &self.norm, eps);
        self.lm_head.forward(&last).to_kind(Kind::Float)
    }
}

/// Decode attention read in place from the cache (scores, softmax in f32,
/// probabilities times V), `[b, kv_heads, groups, hd]`: the path for CPUs
/// with AVX-512 and f32 weights.
fn in_place_decode(
    qd: &Tensor,
    kc: &Tensor,
    vc: &Tensor,
    d: &DecodeGroup,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    use super::linear::{paged_attention, PagedPart};
    let mut scores = paged_attention(&qd.contiguous(), kc, &d.index, d.lmax, PagedPart::Scores)?;
    if let Some(bias) = bias {
        scores += bias;
    }
    let probs = scores.softmax(-1, Kind::Float).contiguous();
    paged_attention(&probs, vc, &d.index, d.lmax, PagedPart::Values)
}

/// Decode attention over a padded copy of the contexts gathered from the
/// cache, `[b, kv_heads, groups, hd]`: the path for GPUs, bf16 and CPUs
/// without AVX-512.
fn gathered_decode(
    qd: &Tensor,
    kc: &Tensor,
    vc: &Tensor,
    d: &DecodeGroup,
    bias: Option<&Tensor>,
    kind: Kind,
) -> Tensor {
    let (b, n_kv, hd) = (qd.size()[0], qd.size()[1], qd.size()[3]);
    let kd = kc.index_select(0, &d.index).view([b, n_kv, d.lmax, hd]);
    let vd = vc.index_select(0, &d.index).view([b, n_kv, d.lmax, hd]);
    let mut scores = qd.matmul(&kd.transpose(-1, -2));
    if let Some(bias) = bias {
        scores += bias;
    }
    scores.softmax(-1, Kind::Float).to_kind(kind).matmul(&vd)
}

/// cos/sin tables `[max_pos, head_dim]`, computed as Hugging Face does (f32
/// inverse frequencies, `cat(freqs, freqs)`).
fn rope_tables(cfg: &ModelConfig, device: Device) -> (Tensor, Tensor) {
    let hd = cfg.head_dim() as i64;
    let inv = Tensor::arange_start_step(0, hd, 2, (Kind::Int64, Device::Cpu)).to_kind(Kind::Float)
        / (hd as f64);
    let inv = Tensor::from(cfg.rope_theta as f32).pow(&inv).reciprocal();
    let pos = Tensor::arange(
        cfg.max_position_embeddings as i64,
        (Kind::Float, Device::Cpu),
    );
    let freqs = pos.unsqueeze(1).matmul(&inv.unsqueeze(0));
    let emb = Tensor::cat(&[&freqs, &freqs], -1);
    (emb.cos().to_device(device), emb.sin().to_device(device))
}
