//! Softmax over the last dimension, fused: one pass for max, one for exp + sum, one for the
//! scale (instead of five tensor ops and four allocations). Backward:
//! `dx = y * (dy - sum(dy * y))`, also one fused pass.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{f32_slice, rows_per_task};

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "ablate-softmax-last-dim"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let d = l.dims()[l.dims().len() - 1];
        let mut y = vec![0f32; x.len()];
        let rows = rows_per_task(d);
        y.par_chunks_mut(d * rows).zip(x.par_chunks(d * rows)).for_each(|(yc, xc)| {
            for (yr, xr) in yc.chunks_mut(d).zip(xc.chunks(d)) {
                let m = xr.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                for (o, &v) in yr.iter_mut().zip(xr) {
                    *o = (v - m).exp();
                    sum += *o;
                }
                let inv = 1.0 / sum;
                yr.iter_mut().for_each(|o| *o *= inv);
            }
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(y.apply_op2_no_bwd(&dy.contiguous()?, &SoftmaxBwd)?))
    }
}

struct SoftmaxBwd;

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "ablate-softmax-last-dim-bwd"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = f32_slice(s1, l1, self.name())?;
        let dy = f32_slice(s2, l2, self.name())?;
        let d = l1.dims()[l1.dims().len() - 1];
        let mut dx = vec![0f32; y.len()];
        let rows = rows_per_task(d);
        dx.par_chunks_mut(d * rows).zip(y.par_chunks(d * rows).zip(dy.par_chunks(d * rows))).for_each(|(oc, (yc, gc))| {
            for (o, (yr, gr)) in oc.chunks_mut(d).zip(yc.chunks(d).zip(gc.chunks(d))) {
                let dot: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
                for ((o, &a), &g) in o.iter_mut().zip(yr).zip(gr) {
                    *o = a * (g - dot);
                }
            }
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// Softmax over the last dimension of a contiguous f32 CPU tensor, with backward.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Softmax)
}
