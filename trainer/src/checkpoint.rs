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
