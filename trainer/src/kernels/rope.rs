//! 2-axis RoPE (interleaved pairs) fused: one pass over (B, H, N, Dh) with the cos/sin
//! tables held by the op, instead of a 5-D reshape, four broadcast products and a
//! concatenation. A rotation's backward is the inverse rotation (sin negated).

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

use super::f32_slice;

#[derive(Clone)]
struct Rope {
    cos: Arc<Vec<f32>>,
    sin: Arc<Vec<f32>>,
    /// Tables hold one (N, Dh/2) block per sample (token routing) instead of one shared.
    per_sample: bool,
    inverse: bool,
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "ablate-rope-2axis"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let (_, h, n, dh) = l.shape().dims4()?;
        let half = dh / 2;
        let sign = if self.inverse { -1f32 } else { 1f32 };
        let mut y = vec![0f32; x.len()];
        // one task per (sample, head): n * dh values
        y.par_chunks_mut(n * dh).zip(x.par_chunks(n * dh)).enumerate().for_each(|(bh, (yc, xc))| {
            let base = if self.per_sample { (bh / h) * n * half } else { 0 };
            for t in 0..n {
                let tab = base + t * half;
                for p in 0..half {
                    let (c, sn) = (self.cos[tab + p], sign * self.sin[tab + p]);
                    let (x0, x1) = (xc[t * dh + 2 * p], xc[t * dh + 2 * p + 1]);
                    yc[t * dh + 2 * p] = x0 * c - x1 * sn;
                    yc[t * dh + 2 * p + 1] = x0 * sn + x1 * c;
                }
            }
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let inv = Rope { inverse: !self.inverse, ..self.clone() };
        Ok(Some(dy.contiguous()?.apply_op1(inv)?))
    }
}

/// Rotates `x` (B, H, N, Dh), f32 on CPU, by tables (N, Dh/2) or (B, N, Dh/2).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let op = Rope {
        cos: Arc::new(cos.flatten_all()?.to_vec1::<f32>()?),
        sin: Arc::new(sin.flatten_all()?.to_vec1::<f32>()?),
        per_sample: cos.rank() == 3,
        inverse: false,
    };
    x.contiguous()?.apply_op1(op)
}
