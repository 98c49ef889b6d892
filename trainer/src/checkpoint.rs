//! Checkpoints: one safetensors file holding weights (`param.*`), optimizer state
//! (`adamw.*`, `muon.*`), EMA weights (`ema.*`) and the step (`meta.step`). Written to a
//! temporary file, synced, then renamed over the old one, so a crash never leaves a torn
//! checkpoint. RNG state needs no saving: every random stream is derived from (seed, step).

use candle_core::{Device, Result, Tensor};
use std::collections::HashMap;
use std::path::Path;

pub fn save_atomic(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    crate::fsutil::write_durable_with(path, |tmp| candle_core::safetensors::save(tensors, tmp).map_err(std::io::Error::other))?;
    Ok(())
}

pub fn load(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    if !path.exists() {
        candle_core::bail!("checkpoint {} does not exist", path.display());
    }
    candle_core::safetensors::load(path, device)
}

pub fn step_tensor(step: usize) -> Result<Tensor> {
    Tensor::new(&[step as i64], &Device::Cpu)
}

/// The step a checkpoint holds (`meta.step`), read without loading its other tensors.
pub fn read_step(path: &Path) -> Result<usize> {
    // SAFETY: checkpoints are replaced by rename, never written in place, so the mapped file
    // does not change under the mapping.
    let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(path)? };
    let t = st.load("meta.step", &Device::Cpu)?;
    Ok(t.to_vec1::<i64>()?.first().copied().unwrap_or(0).max(0) as usize)
}
