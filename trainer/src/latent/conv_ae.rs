//! The project's own small convolutional autoencoders, at two capacities:
//! `lean` (4 latent channels, narrow: the FLUX.1-VAE role) and `rich` (12 latent channels,
//! twice as wide: the heavier FLUX.2-AE role). Both downsample by 2, so a 32x32 image becomes
//! a 16x16 latent and, with patch 2, 64 tokens, the same as pixel space with patch 4.
//!
//! Latents are normalised with a per-channel shift and scale measured after training (as
//! FLUX's `shift_factor` / `scaling_factor`), so the diffusion model sees unit-variance data.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig};

use crate::model::{Init, Params};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AeArch {
    pub width: usize,
    pub latent: usize,
}

impl AeArch {
    pub fn named(name: &str) -> Option<Self> {
        match name {
            "lean" | "repa-e" => Some(Self { width: 32, latent: 4 }),
            "rich" => Some(Self { width: 48, latent: 12 }),
            _ => None,
        }
    }
}

pub const DOWNSAMPLE: usize = 2;

fn conv(p: &Params, name: &str, cin: usize, cout: usize, k: usize, stride: usize) -> Result<Conv2d> {
    let fan_in = (cin * k * k) as f64;
    let w = p.pp(name).get(&[cout, cin, k, k], "weight", Init::Normal((1.0 / fan_in).sqrt()))?;
    let b = p.pp(name).get(&[cout], "bias", Init::Zeros)?;
    Ok(Conv2d::new(w, Some(b), Conv2dConfig { padding: k / 2, stride, ..Default::default() }))
}

#[derive(Debug, Clone)]
pub struct ConvAe {
    pub arch: AeArch,
    enc: Vec<Conv2d>,
    dec_in: Vec<Conv2d>,
    dec_out: Vec<Conv2d>,
    /// Per-channel latent shift and scale (1, C, 1, 1).
    pub shift: Tensor,
    pub scale: Tensor,
}

impl ConvAe {
    pub fn new(arch: AeArch, p: &Params) -> Result<Self> {
        let (w, z) = (arch.width, arch.latent);
        let enc = vec![conv(p, "enc.c1", 3, w, 3, 1)?, conv(p, "enc.c2", w, 2 * w, 3, 2)?, conv(p, "enc.c3", 2 * w, 2 * w, 3, 1)?, conv(p, "enc.c4", 2 * w, z, 1, 1)?];
        let dec_in = vec![conv(p, "dec.c1", z, 2 * w, 3, 1)?, conv(p, "dec.c2", 2 * w, 2 * w, 3, 1)?];
        let dec_out = vec![conv(p, "dec.c3", 2 * w, w, 3, 1)?, conv(p, "dec.c4", w, 3, 3, 1)?];
        let shift = p.get(&[1, z, 1, 1], "latent_shift", Init::Zeros)?;
        let scale = p.get(&[1, z, 1, 1], "latent_scale", Init::Ones)?;
        Ok(Self { arch, enc, dec_in, dec_out, shift, scale })
    }

    fn chain(convs: &[Conv2d], x: &Tensor, act_last: bool) -> Result<Tensor> {
        let mut h = x.clone();
        for (i, c) in convs.iter().enumerate() {
            h = c.forward(&h)?;
            if act_last || i + 1 < convs.len() {
                h = h.silu()?;
            }
        }
        Ok(h)
    }

    /// Raw (unnormalised) latents of images (B, 3, S, S) in [-1, 1].
    pub fn encode_raw(&self, x: &Tensor) -> Result<Tensor> {
        Self::chain(&self.enc, x, false)
    }

    pub fn decode_raw(&self, z: &Tensor) -> Result<Tensor> {
        let h = Self::chain(&self.dec_in, z, true)?;
        let (_, _, hh, ww) = h.dims4()?;
        let h = h.upsample_nearest2d(hh * DOWNSAMPLE, ww * DOWNSAMPLE)?;
        Self::chain(&self.dec_out, &h, false)
    }

    /// Normalised latents for the diffusion model.
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        self.encode_raw(x)?.broadcast_sub(&self.shift)?.broadcast_div(&self.scale)
    }

    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        self.decode_raw(&z.broadcast_mul(&self.scale)?.broadcast_add(&self.shift)?)
    }
}
