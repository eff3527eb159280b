//! The Llama-family decoder on libtorch: weights loaded from a Hugging Face
//! directory (`weights`) with its `config.json` (`config`), the paged KV-cache tensors (`kv`), and the batched
//! forward pass over paged blocks (`llama`). Weights are immutable after load
//! (`&self`); the caller owns and mutates the KV state.

pub mod config;
pub mod kv;
pub mod linear;
pub mod llama;
pub mod weights;

pub use kv::KvCache;
pub use linear::WeightLayout;
pub use llama::{DType, DecodeGroup, Llama, PrefillSeq, StepBatch};

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
///
/// The engine links only libtorch's CPU library, so one binary serves both:
/// where libtorch's CUDA library is on the library path (a GPU node's
/// torch/lib), it is loaded here, before the first CUDA query, and its
/// static initialisers register the CUDA backend. Returns the device and a
/// line saying what happened, for the start-up log.
pub fn pick_device() -> (tch::Device, String) {
    let cuda_lib = load_cuda_backend();
    let device = if tch::Cuda::is_available() {
        tch::Device::Cuda(0)
    } else {
        tch::Device::Cpu
    };
    (device, cuda_lib)
}

fn load_cuda_backend() -> String {
    const LIB: &str = "libtorch_cuda.so";
    let Ok(name) = std::ffi::CString::new(LIB) else {
        return "bad library name".into();
    };
    // SAFETY: dlopen with a valid C string; the handle is kept for the life
    // of the process (never closed), as the registered kernels live in it.
    let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if handle.is_null() {
        // SAFETY: dlerror returns a thread-local C string or null.
        let err = unsafe { libc::dlerror() };
        let why = if err.is_null() {
            "not found".to_string()
        } else {
            // SAFETY: non-null, NUL-terminated, valid until the next dl call.
            unsafe { std::ffi::CStr::from_ptr(err) }
                .to_string_lossy()
                .into_owned()
        };
        format!("{LIB} not loaded ({why})")
    } else {
        format!("{LIB} loaded")
    }
}
