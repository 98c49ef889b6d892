//! Training the scene evaluator on the renderer's ground truth, and its held-out accuracy.

use candle_core::{Device, Result, Tensor};
use std::collections::HashMap;

use super::{cell_truth, labels, render_batch, scene_stream, SceneEvaluator, EVAL_SIZE};
use crate::model::Params;
use crate::optim::{AdamW, OptimConfig};

/// (steps, batch) of the shipped evaluator.
pub const RECIPE: (usize, usize) = (2400, 48);

/// Held-out accuracy per head.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct HeadAccuracy {
    /// Shape (or empty) per cell.
    pub shape: f64,
    /// Colour (or empty) per cell.
    pub color: f64,
    /// Occupied or empty per cell: where objects are.
    pub position: f64,
    /// Number of objects per image.
    pub count: f64,
    /// Synthetic or photo per image.
    pub style: f64,
}

/// Trains with `seed`; `progress(step, loss)` every 50 steps. Returns the weights and the
/// held-out accuracy on `heldout` images.
pub fn train_evaluator(seed: u64, steps: usize, batch: usize, heldout: usize, mut progress: impl FnMut(usize, f64)) -> Result<(HashMap<String, Tensor>, HeadAccuracy)> {
    let dev = Device::Cpu;
    let p = Params::fresh_cpu(seed);
    let net = SceneEvaluator::new(&p)?;
    let mut cfg = OptimConfig::asset_recipe();
    cfg.warmup_steps = 50;
    let mut opt = AdamW::new(&cfg, p.trainable())?;
    let ce = candle_nn::loss::cross_entropy;
    for step in 0..steps {
        let scenes = scene_stream(seed, (step * batch) as u64, batch);
        let x = render_batch(&scenes, EVAL_SIZE, &dev)?;
        let (ys, yc, yst) = labels(&scenes, &dev)?;
        let o = net.outputs(&x)?;
        let loss = ((ce(&o.shape, &ys)? + ce(&o.color, &yc)?)? + (ce(&o.style, &yst)? * 0.5)?)?;
        opt.step(&loss.backward()?, cfg.lr_at(step, steps))?;
        if step % 50 == 0 || step + 1 == steps {
            progress(step, loss.to_scalar::<f32>()? as f64);
        }
    }
    let acc = heldout_accuracy(&net, seed ^ 0xfeed, heldout)?;
    Ok((p.tensors(), acc))
}

/// Accuracy per head on `n` renders of the held-out stream `seed`.
pub fn heldout_accuracy(net: &SceneEvaluator, seed: u64, n: usize) -> Result<HeadAccuracy> {
    let dev = Device::Cpu;
    let (mut shape, mut color, mut position, mut count, mut style) = (0usize, 0usize, 0usize, 0usize, 0usize);
    for start in (0..n).step_by(64) {
        let m = 64.min(n - start);
        let scenes = scene_stream(seed, start as u64, m);
        let read = net.read(&render_batch(&scenes, EVAL_SIZE, &dev)?)?;
        for (i, (scene, _)) in scenes.iter().enumerate() {
            let truth = cell_truth(scene);
            let got = read.cells[i];
            for k in 0..4 {
                shape += (truth[k].map(|t| t.0) == got[k].map(|g| g.0)) as usize;
                color += (truth[k].map(|t| t.1) == got[k].map(|g| g.1)) as usize;
                position += (truth[k].is_some() == got[k].is_some()) as usize;
            }
            count += (truth.iter().flatten().count() == got.iter().flatten().count()) as usize;
            style += (read.style[i] == (scene.style == crate::data::scene::Style::Photo) as usize) as usize;
        }
    }
    let (cells, imgs) = ((4 * n) as f64, n as f64);
    Ok(HeadAccuracy {
        shape: shape as f64 / cells,
        color: color as f64 / cells,
        position: position as f64 / cells,
        count: count as f64 / imgs,
        style: style as f64 / imgs,
    })
}
