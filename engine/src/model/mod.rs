//! The Llama-family decoder on libtorch: weights loaded from a Hugging Face
//! directory (`weights`) with its `config.json` (`config`), the paged KV-cache tensors (`kv`), and the batched
//! forward pass over paged blocks (`llama`). Weights are immutable after load
//! (`&self`); the caller owns and mutates the KV state.

pub mod config;
pub mod kv;
pub mod llama;
pub mod weights;

pub use kv::KvCache;
pub use llama::{DecodeGroup, Llama, PrefillSeq, StepBatch};

/// Errors from loading or running the model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Json {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("weight {0} is missing from the checkpoint")]
    MissingWeight(String),
    #[error("unsupported model: {0}")]
    Unsupported(String),
}

pub type Result<T> = std::result::Result<T, ModelError>;

/// The device the engine runs on: CUDA when libtorch sees one, else CPU.
pub fn pick_device() -> tch::Device {
    if tch::Cuda::is_available() {
        tch::Device::Cuda(0)
    } else {
        tch::Device::Cpu
    }
}
