//! Pretrained autoencoders for GPU-scale runs, loaded from safetensors with candle-
//! transformers' implementations: FLUX.1 (16 channels, 8x downsampling, the PRX baseline's
//! latent space; BFL's `ae.safetensors` naming), Stable Diffusion 1.x (4 channels, 8x;
//! diffusers naming) and FLUX.2 (diffusers `AutoencoderKLFlux2` naming).
//!
//! FLUX.2's autoencoder is not a model of its own in candle-transformers 0.11.1, but its
//! encoder and decoder are diffusers' `AutoencoderKL` (blocks [128, 256, 512, 512], 2 layers
//! per block, quant convs) with 32 latent channels; what differs is the latent
//! normalisation: latents are patchified 2x2 (32 -> 128 channels at 1/16 resolution) and
//! normalised with the stored BatchNorm running statistics (`bn.running_mean`,
//! `bn.running_var`, eps 1e-4). The denoiser therefore sees 128 channels at 16x
//! downsampling and uses patch 1.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::flux::autoencoder::{AutoEncoder as FluxAe, Config as FluxConfig};
use candle_transformers::models::stable_diffusion::vae::{AutoEncoderKL, AutoEncoderKLConfig};

/// SD 1.x latent scaling factor.
pub const SD_SCALE: f64 = 0.18215;

pub enum Pretrained {
    Flux1(FluxAe),
    Sd(AutoEncoderKL),
    Flux2 { ae: AutoEncoderKL, bn_mean: Tensor, bn_std: Tensor },
}

const FLUX2_BN_EPS: f64 = 1e-4;

/// (B, C, H, W) -> (B, 4C, H/2, W/2), channel-major within each 2x2 patch (diffusers order).
pub fn patchify2(z: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = z.dims4()?;
    z.reshape((b, c, h / 2, 2, w / 2, 2))?.permute((0, 1, 3, 5, 2, 4))?.reshape((b, c * 4, h / 2, w / 2))
}

pub fn unpatchify2(z: &Tensor) -> Result<Tensor> {
    let (b, c4, h, w) = z.dims4()?;
    let c = c4 / 4;
    z.reshape((b, c, 2, 2, h, w))?.permute((0, 1, 4, 2, 5, 3))?.reshape((b, c, h * 2, w * 2))
}

pub fn sd_config() -> AutoEncoderKLConfig {
    AutoEncoderKLConfig { block_out_channels: vec![128, 256, 512, 512], layers_per_block: 2, latent_channels: 4, norm_num_groups: 32, use_quant_conv: true, use_post_quant_conv: true }
}

impl Pretrained {
    /// Builds `kind` ("flux1", "flux2" or "sd") from a VarBuilder (weights file, or zeros in tests).
    pub fn build(kind: &str, vb: VarBuilder) -> Result<Self> {
        match kind {
            "flux1" => Ok(Pretrained::Flux1(FluxAe::new(&FluxConfig::dev(), vb)?)),
            "sd" => Ok(Pretrained::Sd(AutoEncoderKL::new(vb, 3, 3, sd_config())?)),
            "flux2" => {
                let cfg = AutoEncoderKLConfig { latent_channels: 32, ..sd_config() };
                let bn = vb.pp("bn");
                let bn_mean = bn.get_with_hints(128, "running_mean", candle_nn::Init::Const(0.))?.reshape((1, 128, 1, 1))?;
                let bn_var = bn.get_with_hints(128, "running_var", candle_nn::Init::Const(1.))?.reshape((1, 128, 1, 1))?;
                let bn_std = (bn_var + FLUX2_BN_EPS)?.sqrt()?;
                Ok(Pretrained::Flux2 { ae: AutoEncoderKL::new(vb, 3, 3, cfg)?, bn_mean, bn_std })
            }
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
            Pretrained::Flux2 { ae, bn_mean, bn_std } => patchify2(&ae.encode(x)?.sample()?)?.broadcast_sub(bn_mean)?.broadcast_div(bn_std),
        }
    }

    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        match self {
            Pretrained::Flux1(ae) => ae.decode(z),
            Pretrained::Sd(ae) => ae.decode(&(z / SD_SCALE)?),
            Pretrained::Flux2 { ae, bn_mean, bn_std } => ae.decode(&unpatchify2(&z.broadcast_mul(bn_std)?.broadcast_add(bn_mean)?)?),
        }
    }
}
