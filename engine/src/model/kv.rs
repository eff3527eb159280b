//! The paged KV cache's storage: per layer, one K and one V tensor laid out
//! head-major, `[kv_heads * slots, head_dim]` with `slots = num_blocks *
//! block_size`: row `head * slots + slot` holds one head of one token. A
//! token's slot is `block * block_size + offset`; the block allocator (in
//! `sched`) decides which blocks a sequence owns, this module only holds the
//! numbers. Head-major rows let one `index_select` gather a batch's context
//! as `[batch, kv_heads, len, head_dim]`, contiguous, ready for a grouped
//! matmul: no permute copy, no repeat of KV heads to query heads.

use tch::{Device, Kind, Tensor};

use crate::model::config::ModelConfig;

/// K/V storage for every layer; owned by the engine loop, written by the
/// forward pass.
pub struct KvCache {
    pub layers: Vec<(Tensor, Tensor)>,
    pub num_blocks: usize,
    pub block_size: usize,
}

impl KvCache {
    pub fn new(
        cfg: &ModelConfig,
        num_blocks: usize,
        block_size: usize,
        device: Device,
        kind: Kind,
    ) -> Self {
        let slots = (num_blocks * block_size) as i64;
        let shape = [cfg.kv_heads() as i64 * slots, cfg.head_dim() as i64];
        let layers = (0..cfg.num_hidden_layers)
            .map(|_| {
                (
                    Tensor::zeros(shape, (kind, device)),
                    Tensor::zeros(shape, (kind, device)),
                )
            })
            .collect();
        Self {
            layers,
            num_blocks,
            block_size,
        }
    }

    /// Slots per head (`num_blocks * block_size`).
    pub fn slots(&self) -> usize {
        self.num_blocks * self.block_size
    }

    /// Bytes one token's K and V take across all layers.
    pub fn bytes_per_token(cfg: &ModelConfig, kind: Kind) -> usize {
        2 * cfg.num_hidden_layers * cfg.kv_heads() * cfg.head_dim() * kind.elt_size_in_bytes()
    }
}
