//! Pretrained autoencoders for GPU-scale runs, loaded from safetensors with candle-
//! transformers' implementations: FLUX.1 (16 channels, 8x downsampling, the PRX baseline's
//! latent space) and Stable Diffusion 1.x (4 channels, 8x).
//!
//! FLUX.2's 32-channel autoencoder is not in candle-transformers 0.11.1 and is not
//! available here yet.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::flux::autoencoder::{AutoEncoder as FluxAe, Config as FluxConfig};
use candle_transformers::models::stable_diffusion::vae::{AutoEncoderKL, AutoEncoderKLConfig};

/// SD 1.x latent scaling factor.
pub const SD_SCALE: f64 = 0.18215;

pub enum Pretrained {
    Flux1(FluxAe),
    Sd(AutoEncoderKL),
}

pub fn sd_config() -> AutoEncoderKLConfig {
    AutoEncoderKLConfig { block_out_channels: vec![128, 256, 512, 512], layers_per_block: 2, latent_channels: 4, norm_num_groups: 32, use_quant_conv: true, use_post_quant_conv: true }
}

impl Pretrained {
    /// Builds `kind` ("flux1" or "sd") from a VarBuilder (weights file, or zeros in tests).
    pub fn build(kind: &str, vb: VarBuilder) -> Result<Self> {
        match kind {
            "flux1" => Ok(Pretrained::Flux1(FluxAe::new(&FluxConfig::dev(), vb)?)),
            "sd" => Ok(Pretrained::Sd(AutoEncoderKL::new(vb, 3, 3, sd_config())?)),
            other => candle_core::bail!("unknown pretrained autoencoder \"{other}\""),
        }
    }

    pub fn load(kind: &str, path: &std::path::Path, device: &Device) -> Result<Self> {
        if !path.exists() {
            candle_core::bail!(
                "autoencoder weights {} not found: download the {} VAE's safetensors (diffusers layout for sd, BFL's ae.safetensors for flux1) and set latent.weights",
                path.display(),
                kind
            );
        }
        // SAFETY: the file is memory-mapped read-only and not modified while in use.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[path], DType::F32, device)? };
        Self::build(kind, vb)
    }

    /// Scaled latents of images in [-1, 1].
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            // FLUX's encode applies shift_factor and scale_factor itself
            Pretrained::Flux1(ae) => ae.encode(x),
            Pretrained::Sd(ae) => ae.encode(x)?.sample()? * SD_SCALE,
        }
    }

    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        match self {
            Pretrained::Flux1(ae) => ae.decode(z),
            Pretrained::Sd(ae) => ae.decode(&(z / SD_SCALE)?),
        }
    }
}
