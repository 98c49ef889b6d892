//! Weights files of the evaluation networks: safetensors read with their metadata and
//! sha256 (the hash every protocol line names), written durably, and the shape facts the
//! networks read their architecture from.

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

use super::EvalError;

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// What `load` read from a weights file.
pub struct Loaded {
    pub tensors: HashMap<String, Tensor>,
    pub metadata: HashMap<String, String>,
    pub sha256: String,
}

/// Reads a safetensors file with its metadata and hash (f32 tensors on `device`).
pub fn read_weights(path: &Path, device: &Device) -> Result<Loaded, EvalError> {
    let file_err = |msg: String| EvalError::File { path: path.display().to_string(), msg };
    let bytes = std::fs::read(path).map_err(|e| file_err(e.to_string()))?;
    let metadata = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| file_err(format!("not a safetensors file: {e}")))?.1.metadata().clone().unwrap_or_default();
    let tensors = candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| file_err(e.to_string()))?;
    let tensors = tensors.into_iter().map(|(k, t)| Ok((k, if t.dtype().is_float() { t.to_dtype(DType::F32)? } else { t }))).collect::<candle_core::Result<_>>()?;
    Ok(Loaded { tensors, metadata, sha256: sha256_hex(&bytes) })
}

/// Writes `tensors` as a safetensors file with `metadata` (e.g. `num_attention_heads`,
/// `input_size`), durably.
pub fn write_weights(path: &Path, tensors: &HashMap<String, Tensor>, metadata: HashMap<String, String>) -> Result<(), EvalError> {
    let mut named: Vec<(&String, &Tensor)> = tensors.iter().collect();
    named.sort_by_key(|(k, _)| k.as_str());
    let bytes = safetensors::serialize(named, Some(metadata)).map_err(|e| EvalError::File { path: path.display().to_string(), msg: e.to_string() })?;
    crate::fsutil::write_durable(path, &bytes).map_err(|e| EvalError::File { path: path.display().to_string(), msg: e.to_string() })
}

/// Shape facts read off the tensors.
pub struct Shapes<'a> {
    pub tensors: &'a HashMap<String, Tensor>,
    pub path: &'a Path,
}

impl Shapes<'_> {
    pub fn dims(&self, name: &str) -> Result<Vec<usize>, EvalError> {
        self.tensors.get(name).map(|t| t.dims().to_vec()).ok_or_else(|| EvalError::File { path: self.path.display().to_string(), msg: format!("tensor {name} is missing") })
    }

    /// One more than the largest `i` of tensors named `<prefix><i>.…`.
    pub fn layers(&self, prefix: &str) -> usize {
        self.tensors.keys().filter_map(|k| k.strip_prefix(prefix)?.split('.').next()?.parse::<usize>().ok()).map(|i| i + 1).max().unwrap_or(0)
    }

    pub fn err(&self, msg: String) -> EvalError {
        EvalError::File { path: self.path.display().to_string(), msg }
    }
}
