//! Latent spaces: what the denoiser diffuses. `pixel` patchifies raw RGB; `ae-lean`,
//! `ae-rich` and `ae-repa-e` are the project's own convolutional autoencoders (weights in
//! `assets/autoencoders/`, reproduced by `ablate assets train-ae`).
//!
//! `flux1`, `flux2` and `sd` load pretrained autoencoders for GPU-scale runs (`latent.weights`).
//!
//! A frozen autoencoder is loaded as plain tensors (no gradient). Under REPA-E
//! (`latent.end_to_end = true`) the autoencoder's tensors are trainable and receive
//! gradients from the REPA and reconstruction losses only (stop-gradient on the diffusion
//! loss), as in Leng et al. 2025.

pub mod conv_ae;
pub mod pretrained;
pub mod train;

use candle_core::{DType, Device, Result, Tensor};
use std::path::PathBuf;

use crate::model::Params;
pub use conv_ae::{AeArch, ConvAe};

pub const KINDS: [&str; 7] = ["pixel", "ae-lean", "ae-rich", "ae-repa-e", "flux1", "flux2", "sd"];

/// Default weights file of a built-in autoencoder.
pub fn ae_path(name: &str) -> PathBuf {
    crate::teacher::assets_dir().join("autoencoders").join(format!("ae-{name}.safetensors"))
}

pub enum Latent {
    Pixel,
    Ae(ConvAe),
    Pretrained(pretrained::Pretrained),
}

impl Latent {
    /// Builds the latent space `kind`. `trainable`: register the autoencoder's tensors as
    /// parameters under `p` (initialised from the weights file) for REPA-E.
    pub fn load(kind: &str, weights: Option<&str>, trainable: Option<&Params>, device: &Device) -> Result<Self> {
        if kind == "flux1" || kind == "flux2" || kind == "sd" {
            let Some(w) = weights else {
                candle_core::bail!("latent.kind = \"{kind}\" needs latent.weights (the autoencoder's safetensors file)");
            };
            return Ok(Latent::Pretrained(pretrained::Pretrained::load(kind, std::path::Path::new(w), device)?));
        }
        let Some(name) = kind.strip_prefix("ae-") else {
            return Ok(Latent::Pixel);
        };
        let arch = AeArch::named(name).ok_or_else(|| candle_core::Error::Msg(format!("unknown latent.kind \"{kind}\" (expected one of {})", KINDS.join(", "))))?;
        let path = weights.map(PathBuf::from).unwrap_or_else(|| ae_path(name));
        if !path.exists() {
            candle_core::bail!("autoencoder weights {} not found: run `ablate assets train-ae {name}` to reproduce them", path.display());
        }
        let tensors = candle_core::safetensors::load(&path, device)?;
        let ae = match trainable {
            None => ConvAe::new(arch, &Params::frozen(tensors, DType::F32, device))?,
            Some(p) => {
                let ae = ConvAe::new(arch, p)?;
                for (name, var) in p.varmap().data().lock().unwrap().iter() {
                    if let Some(rest) = name.strip_prefix(&format!("{}.", p.prefix())) {
                        let t = tensors.get(rest).ok_or_else(|| candle_core::Error::Msg(format!("{} lacks \"{rest}\"", path.display())))?;
                        var.set(&t.to_dtype(var.dtype())?)?;
                    }
                }
                ae
            }
        };
        Ok(Latent::Ae(ae))
    }

    pub fn channels(&self) -> usize {
        match self {
            Latent::Pixel => 3,
            Latent::Ae(a) => a.arch.latent,
            Latent::Pretrained(pretrained::Pretrained::Flux1(_)) => 16,
            Latent::Pretrained(pretrained::Pretrained::Sd(_)) => 4,
            Latent::Pretrained(pretrained::Pretrained::Flux2 { .. }) => 128,
        }
    }

    pub fn downsample(&self) -> usize {
        match self {
            Latent::Pixel => 1,
            Latent::Ae(_) => conv_ae::DOWNSAMPLE,
            Latent::Pretrained(pretrained::Pretrained::Flux2 { .. }) => 16,
            Latent::Pretrained(_) => 8,
        }
    }

    pub fn encode(&self, images: &Tensor) -> Result<Tensor> {
        match self {
            Latent::Pixel => Ok(images.clone()),
            Latent::Ae(a) => a.encode(images),
            Latent::Pretrained(p) => Ok(p.encode(images)?.detach()),
        }
    }

    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        match self {
            Latent::Pixel => Ok(z.clone()),
            Latent::Ae(a) => a.decode(z),
            Latent::Pretrained(p) => p.decode(z),
        }
    }

    /// The project's own autoencoder, if that is the latent space (REPA-E trains it).
    pub fn autoencoder(&self) -> Option<&ConvAe> {
        match self {
            Latent::Ae(a) => Some(a),
            _ => None,
        }
    }
}

/// Channels and downsampling of a latent kind without loading weights (for validation).
pub fn shape_of(kind: &str) -> Option<(usize, usize)> {
    match kind {
        "pixel" => Some((3, 1)),
        "flux1" => Some((16, 8)),
        "sd" => Some((4, 8)),
        "flux2" => Some((128, 16)),
        _ => kind.strip_prefix("ae-").and_then(AeArch::named).map(|a| (a.latent, conv_ae::DOWNSAMPLE)),
    }
}
