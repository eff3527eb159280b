//! Reads a Hugging Face model directory's safetensors (single file or
//! sharded with `model.safetensors.index.json`) into named tensors on the
//! target device, converted to the compute dtype (f32 on CPU; bf16/f16
//! checkpoints are upcast).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use tch::{Device, Kind, Tensor};

use super::{ModelError, Result};

/// Loads every tensor of the checkpoint in `dir`.
pub fn load_tensors(dir: &Path, device: Device, kind: Kind) -> Result<HashMap<String, Tensor>> {
    let files = shard_files(dir)?;
    let mut out = HashMap::new();
    for file in files {
        let named = Tensor::read_safetensors(&file)?;
        for (name, t) in named {
            let t = t.to_device(device).to_kind(kind);
            out.insert(name, t);
        }
    }
    Ok(out)
}

fn shard_files(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index).map_err(|source| ModelError::Io {
        path: index.display().to_string(),
        source,
    })?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|source| ModelError::Json {
        path: index.display().to_string(),
        source,
    })?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| ModelError::Unsupported("index has no weight_map".into()))?;
    let files: BTreeSet<String> = map
        .values()
        .filter_map(|f| f.as_str().map(str::to_string))
        .collect();
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

/// Removes and returns one named tensor.
pub fn take(map: &mut HashMap<String, Tensor>, name: &str) -> Result<Tensor> {
    map.remove(name)
        .ok_or_else(|| ModelError::MissingWeight(name.to_string()))
}
