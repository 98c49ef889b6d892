//! Frozen REPA teachers: networks that give patch-level features of a clean image.
//!
//! The built-in teachers are small convolutional dense predictors trained by the project on
//! the scene renderer's ground truth (which object, shape and colour covers each location):
//! `strong` (wider, trained longer) and `weak` (narrow, trained briefly), so the REPA arms
//! can reproduce "a better teacher helps more". Their weights ship in `assets/teachers/`
//! and `ablate assets train-teacher` reproduces them. They are never used for evaluation.

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig};
use std::collections::HashMap;
use std::path::PathBuf;

use crate::model::{Init, Params};
use crate::objective::repa::RepaConfig;

/// Architecture of a scene teacher.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TeacherArch {
    pub width: usize,
    pub dim: usize,
}

impl TeacherArch {
    pub fn named(name: &str) -> Option<Self> {
        match name {
            "strong" => Some(Self { width: 64, dim: 128 }),
            "weak" => Some(Self { width: 16, dim: 32 }),
            _ => None,
        }
    }
}

/// Where the project's assets live (override with ABLATE_ASSETS).
pub fn assets_dir() -> PathBuf {
    std::env::var_os("ABLATE_ASSETS").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../assets")))
}

pub fn teacher_path(name: &str) -> PathBuf {
    assets_dir().join("teachers").join(format!("scene-{name}.safetensors"))
}

/// The teacher's convolutional trunk: image (B, 3, S, S) -> features (B, dim, S/4, S/4).
#[derive(Debug, Clone)]
pub struct SceneNet {
    convs: Vec<Conv2d>,
    pub arch: TeacherArch,
}

fn conv(p: &Params, name: &str, cin: usize, cout: usize, stride: usize) -> Result<Conv2d> {
    let fan_in = (cin * 9) as f64;
    let w = p.pp(name).get(&[cout, cin, 3, 3], "weight", Init::Normal((2.0 / fan_in).sqrt()))?;
    let b = p.pp(name).get(&[cout], "bias", Init::Zeros)?;
    Ok(Conv2d::new(w, Some(b), Conv2dConfig { padding: 1, stride, ..Default::default() }))
}

impl SceneNet {
    pub fn new(arch: TeacherArch, p: &Params) -> Result<Self> {
        let w = arch.width;
        let convs = vec![
            conv(p, "c1", 3, w, 1)?,
            conv(p, "c2", w, w, 2)?,
            conv(p, "c3", w, 2 * w, 1)?,
            conv(p, "c4", 2 * w, 2 * w, 2)?,
            conv(p, "c5", 2 * w, arch.dim, 1)?,
        ];
        Ok(Self { convs, arch })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        let last = self.convs.len() - 1;
        for (i, c) in self.convs.iter().enumerate() {
            h = c.forward(&h)?;
            if i < last {
                h = h.relu()?;
            }
        }
        Ok(h)
    }
}

/// A frozen teacher ready for REPA.
pub struct Teacher {
    net: SceneNet,
}

impl Teacher {
    pub fn load(cfg: &RepaConfig, device: &Device) -> Result<Self> {
        let arch = TeacherArch::named(&cfg.teacher).ok_or_else(|| {
            candle_core::Error::Msg(format!("unknown repa.teacher \"{}\" (expected \"strong\" or \"weak\")", cfg.teacher))
        })?;
        let path = cfg.teacher_weights.as_ref().map(PathBuf::from).unwrap_or_else(|| teacher_path(&cfg.teacher));
        if !path.exists() {
            candle_core::bail!(
                "REPA teacher weights {} not found: run `ablate assets train-teacher {}` to reproduce them",
                path.display(),
                cfg.teacher
            );
        }
        let tensors: HashMap<String, Tensor> = candle_core::safetensors::load(&path, device)?;
        let p = Params::frozen(tensors, candle_core::DType::F32, device);
        Ok(Self { net: SceneNet::new(arch, &p.pp("net"))? })
    }

    pub fn dim(&self) -> usize {
        self.net.arch.dim
    }

    /// Patch features on the denoiser's token grid: (B, tokens, dim). `images` (B, 3, S, S)
    /// in [-1, 1]; the feature map (S/4) is average-pooled to the token grid (S/patch).
    pub fn features(&self, images: &Tensor, patch: usize) -> Result<Tensor> {
        let f = self.net.forward(images)?;
        let (b, d, h, w) = f.dims4()?;
        let (_, _, s, _) = images.dims4()?;
        let g = s / patch;
        let f = if g == h { f } else if h % g == 0 { f.avg_pool2d(h / g)? } else { candle_core::bail!("teacher grid {h} cannot be pooled to token grid {g}") };
        let _ = w;
        f.reshape((b, d, g * g))?.transpose(1, 2)?.contiguous()
    }
}

pub mod train;
