//! Training the built-in scene teachers on the renderer's ground truth.
//!
//! Each location of the teacher's feature map (stride 4) is labelled with the shape and the
//! colour of the object covering most of its 4x4 pixel cell (or background). Two 1x1 heads
//! read those labels from the features during training and are discarded afterwards: what
//! ships is the trunk (`net.*`), whose features then know where which object is.
//! Images come from both the synthetic and the photo style so the features do not depend on
//! rendering style.

use candle_core::{DType, Device, Result, Tensor, D};
use std::collections::HashMap;

use super::{SceneNet, TeacherArch};
use crate::data::render::{object_map, render};
use crate::data::scene::{Scene, COLORS, SHAPES};
use crate::model::{Lin, Params};
use crate::optim::{AdamW, OptimConfig};

pub const IMAGE_SIZE: usize = 32;
const STRIDE: usize = 4;

/// Recipe of each built-in teacher: (steps, batch).
pub fn recipe(name: &str) -> Option<(usize, usize)> {
    match name {
        "strong" => Some((600, 32)),
        "weak" => Some((60, 16)),
        _ => None,
    }
}

/// Images (B, 3, S, S) and per-cell labels (shape, colour), each (B * g * g) u32.
pub fn labelled_batch(seed: u64, start: u64, n: usize, device: &Device) -> Result<(Tensor, Tensor, Tensor)> {
    let s = IMAGE_SIZE;
    let g = s / STRIDE;
    let mut imgs = Vec::with_capacity(n * 3 * s * s);
    let mut shape_l = Vec::with_capacity(n * g * g);
    let mut color_l = Vec::with_capacity(n * g * g);
    for i in 0..n as u64 {
        let (scene, noise) = Scene::asset_stream(seed, start + i);
        imgs.extend(render(&scene, s, noise));
        let map = object_map(&scene, s);
        for cy in 0..g {
            for cx in 0..g {
                let mut counts = [0usize; 5];
                for y in cy * STRIDE..(cy + 1) * STRIDE {
                    for x in cx * STRIDE..(cx + 1) * STRIDE {
                        counts[map[y * s + x] as usize] += 1;
                    }
                }
                let best = (0..5).max_by_key(|&k| (counts[k], std::cmp::Reverse(k))).unwrap();
                if best == 0 {
                    shape_l.push(0u32);
                    color_l.push(0u32);
                } else {
                    let o = &scene.objects[best - 1];
                    shape_l.push(o.shape as u32 + 1);
                    color_l.push(o.color as u32 + 1);
                }
            }
        }
    }
    let m = n * g * g;
    Ok((
        Tensor::from_vec(imgs, (n, 3, s, s), device)?,
        Tensor::from_vec(shape_l, m, device)?,
        Tensor::from_vec(color_l, m, device)?,
    ))
}

/// Trunk + the two label heads.
pub struct LabelledNet {
    pub net: SceneNet,
    shape_head: Lin,
    color_head: Lin,
}

impl LabelledNet {
    pub fn new(arch: TeacherArch, p: &Params) -> Result<Self> {
        Ok(Self {
            net: SceneNet::new(arch, &p.pp("net"))?,
            shape_head: Lin::new(&p.pp("shape_head"), arch.dim, SHAPES.len() + 1, true)?,
            color_head: Lin::new(&p.pp("color_head"), arch.dim, COLORS.len() + 1, true)?,
        })
    }

    /// Logits (B*g*g, classes) for shapes and colours.
    pub fn logits(&self, images: &Tensor) -> Result<(Tensor, Tensor)> {
        let f = self.net.forward(images)?.relu()?;
        let (b, d, h, w) = f.dims4()?;
        let rows = f.permute((0, 2, 3, 1))?.reshape((b * h * w, d))?;
        Ok((self.shape_head.forward(&rows)?, self.color_head.forward(&rows)?))
    }
}

pub fn accuracy(logits: &Tensor, labels: &Tensor) -> Result<f64> {
    let pred = logits.argmax(D::Minus1)?;
    let ok = pred.eq(labels)?.to_dtype(DType::F32)?.mean_all()?.to_scalar::<f32>()?;
    Ok(ok as f64)
}

/// Trains teacher `name`; calls `progress(step, loss)` every 20 steps. Returns the trunk's
/// tensors (to save) and held-out (shape, colour) accuracy.
pub fn train_teacher(name: &str, seed: u64, mut progress: impl FnMut(usize, f64)) -> Result<(HashMap<String, Tensor>, f64, f64)> {
    let arch = TeacherArch::named(name).ok_or_else(|| candle_core::Error::Msg(format!("unknown teacher \"{name}\" (expected strong or weak)")))?;
    let (steps, batch) = recipe(name).expect("recipe exists for every named arch");
    let dev = Device::Cpu;
    let p = Params::fresh_cpu(seed);
    let model = LabelledNet::new(arch, &p)?;
    let cfg = OptimConfig::asset_recipe();
    let mut opt = AdamW::new(&cfg, p.trainable())?;
    for step in 0..steps {
        let (x, ys, yc) = labelled_batch(seed, (step * batch) as u64, batch, &dev)?;
        let (ls, lc) = model.logits(&x)?;
        let loss = (candle_nn::loss::cross_entropy(&ls, &ys)? + candle_nn::loss::cross_entropy(&lc, &yc)?)?;
        opt.step(&loss.backward()?, cfg.lr_at(step, steps))?;
        if step % 20 == 0 || step + 1 == steps {
            progress(step, loss.to_scalar::<f32>()? as f64);
        }
    }
    // held-out accuracy on scenes the training never saw
    let (x, ys, yc) = labelled_batch(seed ^ 0xfeed, 0, 128, &dev)?;
    let (ls, lc) = model.logits(&x)?;
    let (acc_s, acc_c) = (accuracy(&ls, &ys)?, accuracy(&lc, &yc)?);
    let tensors = p.tensors().into_iter().filter(|(n, _)| n.starts_with("net.")).collect();
    Ok((tensors, acc_s, acc_c))
}
