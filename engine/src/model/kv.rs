//! The paged KV cache's storage: per layer, one K and one V tensor of shape
//! `[num_blocks * block_size, kv_heads, head_dim]`. A token's slot is
//! `block * block_size + offset`; the block allocator (in `sched`) decides
//! which blocks a sequence owns, this module only holds the numbers.

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
        let shape = [slots, cfg.kv_heads() as i64, cfg.head_dim() as i64];
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

    /// Bytes one token's K and V take across all layers.
    pub fn bytes_per_token(cfg: &ModelConfig, kind: Kind) -> usize {
        2 * cfg.num_hidden_layers * cfg.kv_heads() * cfg.head_dim() * kind.elt_size_in_bytes()
    }
}
