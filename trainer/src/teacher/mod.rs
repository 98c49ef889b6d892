//! Frozen REPA teachers: networks that give patch-level features of a clean image.
//!
//! The built-in teachers are small convolutional dense predictors trained by the project on
//! the scene renderer's ground truth (which object, shape and colour covers each location):
//! `strong` (wider, trained longer) and `weak` (narrow, trained briefly), so the REPA arms
//! can reproduce "a better teacher helps more". Their weights ship in `assets/teachers/`
//! and `ablate assets train-teacher` reproduces them. They are never used for evaluation.
//! GPU users can align to DINOv2 ViT-S/14 instead (`repa.teacher = "dinov2"` with
//! `repa.teacher_weights`).

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
    std::env::var_os("ABLATE_ASSETS").map(PathBuf::from).unwrap_or_else(|| {
        let crate_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        crate_dir.parent().unwrap_or(crate_dir).join("assets")
    })
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
pub enum Teacher {
    Scene(SceneNet),
    /// DINOv2 ViT-S/14 (GPU users; weights in candle-transformers' naming).
    Dino(candle_transformers::models::dinov2::DinoVisionTransformer),
}

const DINO_PATCH: usize = 14;
const DINO_DIM: usize = 384;
const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

impl Teacher {
    pub fn load(cfg: &RepaConfig, device: &Device) -> Result<Self> {
        if cfg.teacher == "dinov2" {
            let Some(w) = &cfg.teacher_weights else {
                candle_core::bail!("repa.teacher = \"dinov2\" needs repa.teacher_weights (DINOv2 ViT-S/14 safetensors)");
            };
            let path = PathBuf::from(w);
            if !path.exists() {
                candle_core::bail!("DINOv2 weights {} not found", path.display());
            }
            // SAFETY: read-only memory map of a file not modified while in use.
            let vb = unsafe { candle_nn::VarBuilder::from_mmaped_safetensors(&[path], candle_core::DType::F32, device)? };
            return Ok(Teacher::Dino(candle_transformers::models::dinov2::vit_small(vb)?));
        }
        let arch = TeacherArch::named(&cfg.teacher).ok_or_else(|| {
            candle_core::Error::Msg(format!("unknown repa.teacher \"{}\" (expected \"strong\", \"weak\" or \"dinov2\")", cfg.teacher))
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
        Ok(Teacher::Scene(SceneNet::new(arch, &p.pp("net"))?))
    }

    pub fn dim(&self) -> usize {
        match self {
            Teacher::Scene(n) => n.arch.dim,
            Teacher::Dino(_) => DINO_DIM,
        }
    }

    /// Patch features on the denoiser's token grid: (B, tokens, dim). `images` (B, 3, S, S)
    /// in [-1, 1]; `patch`: image pixels per denoiser token. Scene teachers average-pool
    /// their stride-4 map to the grid; DINOv2 sees the image resized to 14 x grid pixels so
    /// its patch grid is the token grid.
    pub fn features(&self, images: &Tensor, patch: usize) -> Result<Tensor> {
        let net = match self {
            Teacher::Scene(n) => n,
            Teacher::Dino(vit) => {
                let (b, _, s, _) = images.dims4()?;
                let g = s / patch;
                let x = images.upsample_bilinear2d(g * DINO_PATCH, g * DINO_PATCH, false)?;
                let mean = Tensor::new(&IMAGENET_MEAN, images.device())?.reshape((1, 3, 1, 1))?;
                let std = Tensor::new(&IMAGENET_STD, images.device())?.reshape((1, 3, 1, 1))?;
                let x = ((x + 1.0)? / 2.0)?.broadcast_sub(&mean)?.broadcast_div(&std)?;
                // candle-transformers 0.11.1's DINOv2 concatenates its class token without
                // broadcasting over the batch, so it only runs at batch 1: one image at a time.
                let per_image = (0..b)
                    .map(|i| vit.get_intermediate_layers(&x.narrow(0, i, 1)?, &[11], false, false, true)?.squeeze(0))
                    .collect::<Result<Vec<_>>>()?;
                return Tensor::cat(&per_image, 0)?.reshape((b, g * g, DINO_DIM))?.detach().contiguous();
            }
        };
        let f = net.forward(images)?;
        let (b, d, h, _) = f.dims4()?;
        let (_, _, s, _) = images.dims4()?;
        let g = s / patch;
        let f = if g == h { f } else if h % g == 0 { f.avg_pool2d(h / g)? } else { candle_core::bail!("teacher grid {h} cannot be pooled to token grid {g}") };
        f.reshape((b, d, g * g))?.transpose(1, 2)?.contiguous()
    }
}

pub mod train;
