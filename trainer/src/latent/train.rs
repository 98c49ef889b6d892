//! Training the built-in autoencoders (`ablate assets train-ae lean|rich`): MSE
//! reconstruction on synthetic and photo-style scenes, then the per-channel latent shift and
//! scale measured on held-out images.

use candle_core::{DType, Device, Result, Tensor, D};
use std::collections::HashMap;

use super::conv_ae::{AeArch, ConvAe};
use crate::data::render::render;
use crate::data::scene::Scene;
use crate::model::Params;
use crate::optim::{AdamW, OptimConfig};

pub const IMAGE_SIZE: usize = 32;

/// (steps, batch) of each recipe.
pub fn recipe(name: &str) -> Option<(usize, usize)> {
    match name {
        "lean" => Some((800, 32)),
        // conv backward is slow on CPU: the richer net gets fewer, smaller steps
        "rich" => Some((500, 16)),
        _ => None,
    }
}

pub fn image_batch(seed: u64, start: u64, n: usize, device: &Device) -> Result<Tensor> {
    let s = IMAGE_SIZE;
    let mut v = Vec::with_capacity(n * 3 * s * s);
    for i in 0..n as u64 {
        let (scene, noise) = Scene::asset_stream(seed, start + i);
        v.extend(render(&scene, s, noise));
    }
    Tensor::from_vec(v, (n, 3, s, s), device)
}

/// PSNR in dB of reconstructions in [-1, 1] (peak-to-peak 2).
pub fn psnr(mse: f64) -> f64 {
    10.0 * (4.0 / mse.max(1e-12)).log10()
}

/// Trains autoencoder `name`; returns its tensors and the held-out reconstruction PSNR.
pub fn train_ae(name: &str, seed: u64, mut progress: impl FnMut(usize, f64)) -> Result<(HashMap<String, Tensor>, f64)> {
    let arch = AeArch::named(name).filter(|_| name != "repa-e").ok_or_else(|| candle_core::Error::Msg(format!("unknown autoencoder recipe \"{name}\" (expected lean or rich)")))?;
    let (steps, batch) = recipe(name).expect("recipe for every trainable arch");
    let dev = Device::Cpu;
    let p = Params::fresh_cpu(seed);
    let ae = ConvAe::new(arch, &p)?;
    let cfg = OptimConfig::asset_recipe();
    let mut opt = AdamW::new(&cfg, p.trainable())?;
    for step in 0..steps {
        let x = image_batch(seed, (step * batch) as u64, batch, &dev)?;
        let loss = (ae.decode_raw(&ae.encode_raw(&x)?)? - &x)?.sqr()?.mean_all()?;
        opt.step(&loss.backward()?, cfg.lr_at(step, steps))?;
        if step % 50 == 0 || step + 1 == steps {
            progress(step, loss.to_scalar::<f32>()? as f64);
        }
    }
    let mut tensors = p.tensors();
    let mse = finalize(&ae, &mut tensors, seed)?;
    Ok((tensors, psnr(mse)))
}

/// Per-channel mean and standard deviation (1, C, 1, 1) of raw latents `z` (B, C, H, W).
pub fn channel_stats(z: &Tensor) -> Result<(Tensor, Tensor)> {
    let c = z.dim(1)?;
    let zc = z.permute((1, 0, 2, 3))?.flatten_from(1)?; // (C, N)
    let mean = zc.mean_keepdim(D::Minus1)?;
    let std = (zc.broadcast_sub(&mean)?.sqr()?.mean_keepdim(D::Minus1)?.sqrt()? + 1e-6)?;
    Ok((mean.reshape((1, c, 1, 1))?, std.reshape((1, c, 1, 1))?))
}

/// Measures the latent normalisation of a trained autoencoder on held-out scenes, stores it
/// in `tensors` (`latent_shift`, `latent_scale`) and returns the held-out reconstruction MSE.
pub fn finalize(ae: &ConvAe, tensors: &mut HashMap<String, Tensor>, seed: u64) -> Result<f64> {
    let x = image_batch(seed ^ 0xfeed, 0, 256, x_device(ae))?;
    let z = ae.encode_raw(&x)?;
    let (shift, scale) = channel_stats(&z)?;
    tensors.insert("latent_shift".into(), shift.detach());
    tensors.insert("latent_scale".into(), scale.detach());
    (ae.decode_raw(&z)? - &x)?.sqr()?.mean_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()
}

fn x_device(ae: &ConvAe) -> &Device {
    ae.shift.device()
}
