//! adaLN's normalisation and modulation fused: `LayerNorm(x) * (1 + scale) + shift` over the
//! last dimension (no affine), for x (B, N, D) and per-sample shift/scale (B, D), in one pass
//! per row instead of ten tensor ops. The same op with `offset` 0 and shift/scale shared by
//! the batch, (1, D), is a LayerNorm with affine weight and bias (`layer_norm_affine`, the text
//! encoder's). Backward, per row with x_hat = (x - mean) * rstd and g = dy * (offset + scale):
//! `dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat))`, `dshift = sum_n dy`,
//! `dscale = sum_n dy * x_hat` (summed over the batch too when shared). Statistics are
//! accumulated in f64.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{f32_slice, reduce, with_f32};

struct LnModulate {
    eps: f64,
    /// 1 for adaLN's `1 + scale`, 0 for an affine weight.
    offset: f32,
}

/// (B, N, D) of `x`, and whether shift and scale are shared by the batch (1, D) rather than
/// per sample (B, D).
fn dims(x: &Layout, shift: &Layout, scale: &Layout) -> Result<(usize, usize, usize, bool)> {
    let (b, n, d) = x.shape().dims3()?;
    let shared = shift.dims() == [1, d] && scale.dims() == [1, d];
    if !shared && (shift.dims() != [b, d] || scale.dims() != [b, d]) {
        candle_core::bail!("ablate-layer-norm-modulate: x {:?}, shift {:?} and scale {:?} do not fit", x.dims(), shift.dims(), scale.dims());
    }
    Ok((b, n, d, shared))
}

/// mean and 1/std of one row.
fn stats(row: &[f32], eps: f64) -> (f32, f32) {
    let d = row.len() as f64;
    let mean = reduce::sum(row) / d;
    let var = reduce::sum_sq_dev(row, mean) / d;
    (mean as f32, (1.0 / (var + eps).sqrt()) as f32)
}

impl CustomOp3 for LnModulate {
    fn name(&self) -> &'static str {
        "ablate-layer-norm-modulate"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let shift = f32_slice(s2, l2, self.name())?;
        let scale = f32_slice(s3, l3, self.name())?;
        let (_, n, d, shared) = dims(l1, l2, l3)?;
        let offset = self.offset;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut((n * d).max(1)).zip(x.par_chunks((n * d).max(1))).enumerate().for_each(|(bi, (yb, xb))| {
            let at = if shared { 0 } else { bi * d };
            let (sh, sc) = (&shift[at..at + d], &scale[at..at + d]);
            for (yr, xr) in yb.chunks_mut(d).zip(xb.chunks(d)) {
                let (mean, rstd) = stats(xr, self.eps);
                for (((o, &xk), &ck), &hk) in yr.iter_mut().zip(xr).zip(sc).zip(sh) {
                    *o = (xk - mean) * rstd * (offset + ck) + hk;
                }
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &candle_core::CudaStorage, l1: &Layout, s2: &candle_core::CudaStorage, l2: &Layout, s3: &candle_core::CudaStorage, l3: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::fwd::ln_modulate(self.eps, self.offset, dims(l1, l2, l3)?, (s1, l1), (s2, l2), (s3, l3))
    }

    fn bwd(&self, x: &Tensor, shift: &Tensor, scale: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        #[cfg(feature = "cuda")]
        if x.device().is_cuda() {
            let (dx, dshift, dscale) = super::cuda::bwd::ln_modulate(x, shift, scale, dy, self.eps, self.offset)?;
            return Ok((Some(dx), Some(dshift), Some(dscale)));
        }
        let (b, n, d) = x.dims3()?;
        let shared = scale.dims() == [1, d];
        let offset = self.offset;
        let (x, scale, dy) = (x.contiguous()?, scale.contiguous()?, dy.contiguous()?);
        let mut dx = vec![0f32; b * n * d];
        // per sample: (dshift, dscale) partial sums
        let per_sample: Vec<(Vec<f32>, Vec<f32>)> = with_f32(&x, self.name(), |xv| {
            with_f32(&scale, self.name(), |sc| {
                with_f32(&dy, self.name(), |g| {
                    Ok(dx
                        .par_chunks_mut((n * d).max(1))
                        .enumerate()
                        .map(|(bi, dxb)| {
                            let scb = if shared { &sc[..d] } else { &sc[bi * d..(bi + 1) * d] };
                            let mut dsh = vec![0f32; d];
                            let mut dsc = vec![0f32; d];
                            let (mut gm, mut xh) = (vec![0f32; d], vec![0f32; d]);
                            for (r, dxr) in dxb.chunks_mut(d).enumerate() {
                                let off = (bi * n + r) * d;
                                let (xr, gr) = (&xv[off..off + d], &g[off..off + d]);
                                let (mean, rstd) = stats(xr, self.eps);
                                for (((((xh, gm), dsh), dsc), (&xk, &gk)), &sk) in xh.iter_mut().zip(gm.iter_mut()).zip(dsh.iter_mut()).zip(dsc.iter_mut()).zip(xr.iter().zip(gr)).zip(scb) {
                                    *xh = (xk - mean) * rstd;
                                    *dsh += gk;
                                    *dsc += gk * *xh;
                                    *gm = gk * (offset + sk);
                                }
                                let (mg, mgx) = ((reduce::sum(&gm) / d as f64) as f32, (reduce::dot(&gm, &xh) / d as f64) as f32);
                                for ((o, &gk), &xk) in dxr.iter_mut().zip(&gm).zip(&xh) {
                                    *o = rstd * (gk - mg - xk * mgx);
                                }
                            }
                            (dsh, dsc)
                        })
                        .collect())
                })
            })
        })?;
        let dev = x.device();
        let (dshift, dscale): (Vec<f32>, Vec<f32>) = if shared {
            // summed over the samples in order (deterministic)
            let (mut dsh, mut dsc) = (vec![0f32; d], vec![0f32; d]);
            for (sh, sc) in &per_sample {
                dsh.iter_mut().zip(sh).for_each(|(o, v)| *o += v);
                dsc.iter_mut().zip(sc).for_each(|(o, v)| *o += v);
            }
            (dsh, dsc)
        } else {
            (per_sample.iter().flat_map(|(s, _)| s.iter().copied()).collect(), per_sample.iter().flat_map(|(_, s)| s.iter().copied()).collect())
        };
        Ok((
            Some(Tensor::from_vec(dx, (b, n, d), dev)?),
            Some(Tensor::from_vec(dshift, shift.shape(), dev)?),
            Some(Tensor::from_vec(dscale, scale.shape(), dev)?),
        ))
    }
}

/// `LayerNorm(x) * (1 + scale) + shift` for contiguous-able f32 CPU tensors x (B, N, D),
/// shift and scale (B, D), with backward.
pub fn layer_norm_modulate(x: &Tensor, shift: &Tensor, scale: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op3(&shift.contiguous()?, &scale.contiguous()?, LnModulate { eps, offset: 1.0 })
}

/// `LayerNorm(x) * weight + bias` over the last dimension for f32 CPU tensors x (B, N, D),
/// weight and bias (D), with backward.
pub fn layer_norm_affine(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let d = weight.dim(0)?;
    x.contiguous()?.apply_op3(&bias.reshape((1, d))?.contiguous()?, &weight.reshape((1, d))?.contiguous()?, LnModulate { eps, offset: 0.0 })
}
