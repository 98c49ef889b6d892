//! The built-in evaluator for the synthetic scene world.
//!
//! A small convolutional network trained by the project on the renderer's ground truth
//! (`ablate assets train-evaluator`; weights in `assets/eval/scene-evaluator.safetensors`,
//! hash in docs/assets.md). For each of the 2x2 cells it reads which shape (or nothing) and
//! which colour is there; from the whole image it reads the rendering style (synthetic or
//! photo). Its penultimate features (the four cell vectors and the global mean) are the
//! embedding of "FD-scenes" and of MMD; its heads give compositional accuracy.
//! It is an evaluator only: nothing lets a REPA config point at it.

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{Conv2d, Conv2dConfig};
use std::collections::HashMap;
use std::path::PathBuf;

use crate::data::render::render;
use crate::data::scene::{Scene, Style, COLORS, SHAPES};
use crate::model::{Init, Lin, Params};

/// Input resolution (images of other sizes are resized bilinearly).
pub const EVAL_SIZE: usize = 32;
/// Channels of each cell vector.
pub const CELL_DIM: usize = 64;
/// Embedding size: four cell vectors and the global mean.
pub const EMBED_DIM: usize = 5 * CELL_DIM;
pub const NAME: &str = "scene-evaluator";

pub fn weights_path() -> PathBuf {
    crate::teacher::assets_dir().join("eval").join(format!("{NAME}.safetensors"))
}

fn conv(p: &Params, name: &str, cin: usize, cout: usize, stride: usize) -> Result<Conv2d> {
    let w = p.pp(name).get(&[cout, cin, 3, 3], "weight", Init::Normal((2.0 / (cin * 9) as f64).sqrt()))?;
    let b = p.pp(name).get(&[cout], "bias", Init::Zeros)?;
    Ok(Conv2d::new(w, Some(b), Conv2dConfig { padding: 1, stride, ..Default::default() }))
}

/// What the heads read from a batch.
#[derive(Debug, Clone)]
pub struct Readout {
    /// Per image, per cell: `None` (empty) or (shape, colour).
    pub cells: Vec<[Option<(usize, usize)>; 4]>,
    /// Per image: 0 synthetic, 1 photo.
    pub style: Vec<usize>,
}

pub struct SceneEvaluator {
    convs: Vec<Conv2d>,
    shape_head: Lin,
    color_head: Lin,
    style_head: Lin,
    /// sha256 of the weights file ("untrained" while training).
    pub weights_hash: String,
}

/// Logits of one batch: shape (B*4, 7), colour (B*4, 11), style (B, 2), embedding (B, 320).
pub struct Outputs {
    pub shape: Tensor,
    pub color: Tensor,
    pub style: Tensor,
    pub embedding: Tensor,
}

impl SceneEvaluator {
    pub fn new(p: &Params) -> Result<Self> {
        let w = 32;
        let convs = vec![
            conv(p, "c1", 3, w, 1)?,
            conv(p, "c2", w, 2 * w, 2)?,
            conv(p, "c3", 2 * w, 2 * w, 1)?,
            conv(p, "c4", 2 * w, 4 * w, 2)?,
            conv(p, "c5", 4 * w, CELL_DIM, 1)?,
        ];
        Ok(Self {
            convs,
            shape_head: Lin::new(&p.pp("shape_head"), CELL_DIM, SHAPES.len() + 1, true)?,
            color_head: Lin::new(&p.pp("color_head"), CELL_DIM, COLORS.len() + 1, true)?,
            style_head: Lin::new(&p.pp("style_head"), CELL_DIM, 2, true)?,
            weights_hash: "untrained".into(),
        })
    }

    /// Loads the shipped weights (or `path`).
    pub fn load(path: Option<&std::path::Path>, device: &Device) -> std::result::Result<Self, super::EvalError> {
        let path = path.map(PathBuf::from).unwrap_or_else(weights_path);
        if !path.is_file() {
            return Err(super::EvalError::Unavailable(
                "the scene evaluator".into(),
                format!("{} is missing; `ablate assets train-evaluator` reproduces it", path.display()),
            ));
        }
        let bytes = std::fs::read(&path).map_err(|e| super::EvalError::File { path: path.display().to_string(), msg: e.to_string() })?;
        let tensors: HashMap<String, Tensor> = candle_core::safetensors::load_buffer(&bytes, device)?;
        let p = Params::frozen(tensors, DType::F32, device);
        let mut net = Self::new(&p)?;
        net.weights_hash = super::weights::sha256_hex(&bytes);
        Ok(net)
    }

    /// `images` (B, 3, S, S) in [0, 1] (validated by the caller), any S.
    pub fn outputs(&self, images: &Tensor) -> Result<Outputs> {
        let (b, _, h, w) = images.dims4()?;
        let x = if (h, w) == (EVAL_SIZE, EVAL_SIZE) {
            images.clone()
        } else {
            let cpu = images.to_device(&Device::Cpu)?;
            let r = super::inception::resize_bilinear(&cpu, EVAL_SIZE, EVAL_SIZE).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            r.to_device(images.device())?
        };
        // The network sees [-1, 1], like the renderer's output.
        let mut h = ((x.to_dtype(DType::F32)? * 2.0)? - 1.0)?;
        for c in &self.convs {
            h = c.forward(&h)?.relu()?;
        }
        // (B, C, 8, 8) -> 2x2 cells of 4x4 -> (B, 4, C)
        let cells = h.avg_pool2d(EVAL_SIZE / 8)?.flatten_from(2)?.transpose(1, 2)?.contiguous()?;
        let global = h.mean_keepdim(3)?.mean_keepdim(2)?.flatten_from(1)?;
        let rows = cells.reshape((b * 4, CELL_DIM))?;
        Ok(Outputs {
            shape: self.shape_head.forward(&rows)?,
            color: self.color_head.forward(&rows)?,
            style: self.style_head.forward(&global)?,
            embedding: Tensor::cat(&[cells.flatten_from(1)?, global], 1)?,
        })
    }

    pub fn embed(&self, images: &Tensor) -> Result<Tensor> {
        self.outputs(images).map(|o| o.embedding)
    }

    pub fn read(&self, images: &Tensor) -> Result<Readout> {
        let o = self.outputs(images)?;
        let shape: Vec<u32> = o.shape.argmax(D::Minus1)?.to_vec1()?;
        let color: Vec<u32> = o.color.argmax(D::Minus1)?.to_vec1()?;
        let style: Vec<u32> = o.style.argmax(D::Minus1)?.to_vec1()?;
        let cells = shape
            .chunks(4)
            .zip(color.chunks(4))
            .map(|(s, c)| {
                // An object whose colour head says "empty" gets a colour that matches nothing.
                std::array::from_fn(|k| if s[k] == 0 { None } else { Some((s[k] as usize - 1, (c[k] as usize).checked_sub(1).unwrap_or(usize::MAX))) })
            })
            .collect();
        Ok(Readout { cells, style: style.into_iter().map(|v| v as usize).collect() })
    }
}

/// Ground truth of one scene in the evaluator's terms.
pub fn cell_truth(scene: &Scene) -> [Option<(usize, usize)>; 4] {
    let mut cells = [None; 4];
    for o in &scene.objects {
        cells[o.cell] = Some((o.shape, o.color));
    }
    cells
}

/// Rendered images in [0, 1] (B, 3, S, S) of the given scenes.
pub fn render_batch(scenes: &[(Scene, u64)], size: usize, device: &Device) -> Result<Tensor> {
    let mut data = Vec::with_capacity(scenes.len() * 3 * size * size);
    for (scene, noise) in scenes {
        data.extend(render(scene, size, *noise).into_iter().map(|v| (v + 1.0) * 0.5));
    }
    Tensor::from_vec(data, (scenes.len(), 3, size, size), device)?.clamp(0f32, 1f32)
}

/// Labels for training: shape (B*4), colour (B*4), style (B), all u32 (0 = empty cell).
pub fn labels(scenes: &[(Scene, u64)], device: &Device) -> Result<(Tensor, Tensor, Tensor)> {
    let mut s = Vec::new();
    let mut c = Vec::new();
    for (scene, _) in scenes {
        for cell in cell_truth(scene) {
            s.push(cell.map_or(0, |(sh, _)| sh as u32 + 1));
            c.push(cell.map_or(0, |(_, co)| co as u32 + 1));
        }
    }
    let st: Vec<u32> = scenes.iter().map(|(sc, _)| (sc.style == Style::Photo) as u32).collect();
    let (n4, n) = (s.len(), st.len());
    Ok((Tensor::from_vec(s, n4, device)?, Tensor::from_vec(c, n4, device)?, Tensor::from_vec(st, n, device)?))
}

/// The evaluator's training and held-out scenes: both styles alternate; held-out scenes come
/// from another seed.
pub fn scene_stream(seed: u64, start: u64, n: usize) -> Vec<(Scene, u64)> {
    (start..start + n as u64).map(|i| Scene::asset_stream(seed ^ 0x5CE7E, i)).collect()
}

pub mod train;
