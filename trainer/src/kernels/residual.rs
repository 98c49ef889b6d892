//! The adaLN-zero gated residual `x + y * gate` in one pass, with `x`, `y` (B, N, D) and a
//! per-sample `gate` (B, D). Composed, it is an unsqueeze, a broadcast, a product and a sum
//! (four graph nodes, a (B, N, D) temporary, and a broadcast reduction in backward).
//! Backward: `dx = dout`, `dy = dout * gate`, `dgate = sum over N of dout * y`.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{f32_slice, with_f32};

struct GatedResidual;

fn dims(x: &Layout, y: &Layout, gate: &Layout) -> Result<(usize, usize, usize)> {
    let (b, n, d) = x.shape().dims3()?;
    if y.dims() != x.dims() || gate.dims() != [b, d] {
        candle_core::bail!("ablate-gated-residual: x {:?}, y {:?} and gate {:?} do not fit", x.dims(), y.dims(), gate.dims());
    }
    Ok((b, n, d))
}

impl CustomOp3 for GatedResidual {
    fn name(&self) -> &'static str {
        "ablate-gated-residual"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let (_, n, d) = dims(l1, l2, l3)?;
        let (x, y, g) = (f32_slice(s1, l1, self.name())?, f32_slice(s2, l2, self.name())?, f32_slice(s3, l3, self.name())?);
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut((n * d).max(1)).enumerate().for_each(|(b, ob)| {
            let gb = &g[b * d..(b + 1) * d];
            let (xb, yb) = (&x[b * n * d..(b + 1) * n * d], &y[b * n * d..(b + 1) * n * d]);
            for ((o, xr), yr) in ob.chunks_mut(d).zip(xb.chunks(d)).zip(yb.chunks(d)) {
                for (((o, &xk), &yk), &gk) in o.iter_mut().zip(xr).zip(yr).zip(gb) {
                    *o = xk + yk * gk;
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &candle_core::CudaStorage, l1: &Layout, s2: &candle_core::CudaStorage, l2: &Layout, s3: &candle_core::CudaStorage, l3: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        let (_, n, d) = dims(l1, l2, l3)?;
        super::cuda::fwd::gated_residual((n, d), (s1, l1), (s2, l2), (s3, l3))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, gate: &Tensor, _out: &Tensor, dout: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        #[cfg(feature = "cuda")]
        if y.device().is_cuda() {
            let (dy, dgate) = super::cuda::bwd::gated_residual(y, gate, dout)?;
            return Ok((Some(dout.clone()), Some(dy), Some(dgate)));
        }
        let (b, n, d) = y.dims3()?;
        let (dy, dg) = with_f32(y, self.name(), |ys| {
            with_f32(gate, self.name(), |gs| {
                with_f32(dout, self.name(), |ds| {
                    let mut dy = vec![0f32; ys.len()];
                    let mut dg = vec![0f32; b * d];
                    dy.par_chunks_mut((n * d).max(1)).zip(dg.par_chunks_mut(d.max(1))).enumerate().for_each(|(bi, (dyb, dgb))| {
                        let gb = &gs[bi * d..(bi + 1) * d];
                        let mut acc = vec![0f64; d];
                        let (yb, db) = (&ys[bi * n * d..(bi + 1) * n * d], &ds[bi * n * d..(bi + 1) * n * d]);
                        for ((o, yr), dr) in dyb.chunks_mut(d).zip(yb.chunks(d)).zip(db.chunks(d)) {
                            for ((((o, a), &yk), &dk), &gk) in o.iter_mut().zip(acc.iter_mut()).zip(yr).zip(dr).zip(gb) {
                                *o = dk * gk;
                                *a += (dk * yk) as f64;
                            }
                        }
                        dgb.iter_mut().zip(&acc).for_each(|(o, a)| *o = *a as f32);
                    });
                    Ok((dy, dg))
                })
            })
        })?;
        let dev = y.device();
        Ok((Some(dout.clone()), Some(Tensor::from_vec(dy, y.shape(), dev)?), Some(Tensor::from_vec(dg, gate.shape(), dev)?)))
    }
}

/// `x + y * gate[:, None, :]` for f32 CPU tensors `x`, `y` (B, N, D) and `gate` (B, D).
pub fn gated_residual(x: &Tensor, y: &Tensor, gate: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op3(&y.contiguous()?, &gate.contiguous()?, GatedResidual)
}
