//! RMSNorm with a weight over the last dimension (the per-head QK norms), fused:
//! `y = x * rstd * w`, `rstd = 1 / sqrt(mean(x^2) + eps)`, one pass per row. Backward, per row
//! with `x_hat = x * rstd` and `g = dy * w`: `dx = rstd * (g - x_hat * mean(g * x_hat))`,
//! `dw = sum over rows of dy * x_hat`. Statistics in f64.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{f32_slice, rows_per_task};

struct RmsNorm {
    eps: f64,
}

/// 1 / sqrt(mean(row^2) + eps), accumulated in f64.
pub(super) fn rstd(row: &[f32], eps: f64) -> f32 {
    let ms = super::reduce::dot(row, row) / row.len() as f64;
    (1.0 / (ms + eps).sqrt()) as f32
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "ablate-rms-norm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let w = f32_slice(s2, l2, self.name())?;
        let d = w.len();
        let mut y = vec![0f32; x.len()];
        let rows = rows_per_task(d);
        y.par_chunks_mut(rows * d).zip(x.par_chunks(rows * d)).for_each(|(yc, xc)| {
            for (yr, xr) in yc.chunks_mut(d).zip(xc.chunks(d)) {
                let r = rstd(xr, self.eps);
                for ((o, &v), &wi) in yr.iter_mut().zip(xr).zip(w) {
                    *o = v * r * wi;
                }
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &candle_core::CudaStorage, l1: &Layout, s2: &candle_core::CudaStorage, l2: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        if l1.dims().last() != Some(&l2.shape().elem_count()) {
            candle_core::bail!("{}: x {:?} and weight {:?} do not fit", self.name(), l1.dims(), l2.dims());
        }
        super::cuda::fwd::rms_norm(self.eps, (s1, l1), (s2, l2))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        #[cfg(feature = "cuda")]
        if x.device().is_cuda() {
            let (dx, dw) = super::cuda::bwd::rms_norm(x, w, dy, self.eps)?;
            return Ok((Some(dx), Some(dw)));
        }
        let xs = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let ws = w.flatten_all()?.to_vec1::<f32>()?;
        let ds = dy.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let d = ws.len();
        let rows = rows_per_task(d);
        let mut dx = vec![0f32; xs.len()];
        // dw partial sums per task, added up afterwards (deterministic order).
        let partial: Vec<Vec<f64>> = dx
            .par_chunks_mut(rows * d)
            .zip(xs.par_chunks(rows * d).zip(ds.par_chunks(rows * d)))
            .map(|(dxc, (xc, dc))| {
                let mut dw = vec![0f64; d];
                let (mut g, mut xh) = (vec![0f32; d], vec![0f32; d]);
                for ((dxr, xr), dr) in dxc.chunks_mut(d).zip(xc.chunks(d)).zip(dc.chunks(d)) {
                    let r = rstd(xr, self.eps);
                    for ((((g, xh), dw), (&xk, &dk)), &wk) in g.iter_mut().zip(xh.iter_mut()).zip(dw.iter_mut()).zip(xr.iter().zip(dr)).zip(&ws) {
                        *xh = xk * r;
                        *g = dk * wk;
                        *dw += (dk * xk * r) as f64;
                    }
                    let m = (super::reduce::dot(&g, &xh) / d as f64) as f32;
                    for ((o, &gk), &xk) in dxr.iter_mut().zip(&g).zip(&xh) {
                        *o = r * (gk - xk * m);
                    }
                }
                dw
            })
            .collect();
        let dw: Vec<f32> = (0..d).map(|k| partial.iter().map(|p| p[k]).sum::<f64>() as f32).collect();
        let dev = x.device();
        Ok((Some(Tensor::from_vec(dx, x.shape(), dev)?), Some(Tensor::from_vec(dw, w.shape(), dev)?)))
    }
}

/// RMSNorm of contiguous f32 CPU `x` (..., D) with weight (D), with backward.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&weight.contiguous()?, RmsNorm { eps })
}
