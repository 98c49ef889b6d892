//! The gated MLP's activation fused: `gelu_tanh(gate) * up` in one pass. Backward:
//! `d_gate = dy * up * gelu'(gate)`, `d_up = dy * gelu(gate)`.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{f32_slice, with_f32};

const C: f32 = 0.797_884_6; // sqrt(2 / pi)
const A: f32 = 0.044_715;
const CHUNK: usize = 16_384;

/// tanh through one `exp`: glibc's `tanhf` (via `expm1f`) took ~10% of a CPU training step.
/// Absolute error at most 1.2e-7 (one ulp of 1.0), which is all GELU needs (its output is `0.5 a (1 + tanh)`).
#[inline]
fn fast_tanh(u: f32) -> f32 {
    let e = super::fastmath::exp(-2.0 * u.abs());
    ((1.0 - e) / (1.0 + e)).copysign(u)
}

#[inline]
fn gelu_and_grad(a: f32) -> (f32, f32) {
    let u = C * (a + A * a * a * a);
    let t = fast_tanh(u);
    let g = 0.5 * a * (1.0 + t);
    let dg = 0.5 * (1.0 + t) + 0.5 * a * (1.0 - t * t) * C * (1.0 + 3.0 * A * a * a);
    (g, dg)
}

struct GatedGelu;

impl CustomOp2 for GatedGelu {
    fn name(&self) -> &'static str {
        "ablate-gated-gelu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let gate = f32_slice(s1, l1, self.name())?;
        let up = f32_slice(s2, l2, self.name())?;
        let mut y = vec![0f32; gate.len()];
        y.par_chunks_mut(CHUNK).zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK))).for_each(|(yc, (gc, uc))| {
            for ((o, &a), &u) in yc.iter_mut().zip(gc).zip(uc) {
                *o = gelu_and_grad(a).0 * u;
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &candle_core::CudaStorage, l1: &Layout, s2: &candle_core::CudaStorage, l2: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        if l1.dims() != l2.dims() {
            candle_core::bail!("{}: gate {:?} and up {:?} differ", self.name(), l1.dims(), l2.dims());
        }
        super::cuda::fwd::gated_gelu((s1, l1), Some((s2, l2)))
    }

    fn bwd(&self, gate: &Tensor, up: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        #[cfg(feature = "cuda")]
        if gate.device().is_cuda() {
            let (dg, du) = super::cuda::bwd::gated_gelu(gate, up, dy)?;
            return Ok((Some(dg), Some(du)));
        }
        let g = gate.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let u = up.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let d = dy.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let mut dg = vec![0f32; g.len()];
        let mut du = vec![0f32; g.len()];
        dg.par_chunks_mut(CHUNK).zip(du.par_chunks_mut(CHUNK)).enumerate().for_each(|(ci, (dgc, duc))| {
            let off = ci * CHUNK;
            let n = dgc.len();
            for ((((dg, du), &a), &b), &dy) in dgc.iter_mut().zip(duc.iter_mut()).zip(&g[off..off + n]).zip(&u[off..off + n]).zip(&d[off..off + n]) {
                let (val, grad) = gelu_and_grad(a);
                *dg = dy * b * grad;
                *du = dy * val;
            }
        });
        let dev = gate.device();
        Ok((Some(Tensor::from_vec(dg, gate.shape(), dev)?), Some(Tensor::from_vec(du, up.shape(), dev)?)))
    }
}

/// `gelu_tanh(gate) * up` from one packed projection (.., 2M): gate in the first M columns,
/// up in the last M (the MLP's two input projections as one product). Output (.., M).
struct GatedGeluPacked;

impl candle_core::CustomOp1 for GatedGeluPacked {
    fn name(&self) -> &'static str {
        "ablate-gated-gelu-packed"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let two_m = *l.dims().last().unwrap_or(&0);
        if two_m % 2 != 0 {
            candle_core::bail!("{}: last dimension {two_m} is not even", self.name());
        }
        let m = two_m / 2;
        let rows = x.len() / two_m.max(1);
        let mut y = vec![0f32; rows * m];
        let per_task = super::rows_per_task(two_m);
        y.par_chunks_mut((per_task * m).max(1)).zip(x.par_chunks((per_task * two_m).max(1))).for_each(|(yc, xc)| {
            for (yr, xr) in yc.chunks_mut(m).zip(xc.chunks(two_m)) {
                let (g, u) = xr.split_at(m);
                for ((o, &a), &b) in yr.iter_mut().zip(g).zip(u) {
                    *o = gelu_and_grad(a).0 * b;
                }
            }
        });
        let mut dims = l.dims().to_vec();
        *dims.last_mut().expect("rank >= 1") = m;
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        let two_m = *l.dims().last().unwrap_or(&0);
        if two_m % 2 != 0 {
            candle_core::bail!("{}: last dimension {two_m} is not even", self.name());
        }
        let mut dims = l.dims().to_vec();
        *dims.last_mut().expect("rank >= 1") = two_m / 2;
        super::cuda::fwd::gated_gelu_packed((s, l), Shape::from(dims))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        #[cfg(feature = "cuda")]
        if x.device().is_cuda() {
            return super::cuda::bwd::gelu(x, dy, true).map(Some);
        }
        let two_m = x.dim(candle_core::D::Minus1)?;
        let m = two_m / 2;
        let dx = with_f32(x, self.name(), |xs| {
            with_f32(dy, self.name(), |ds| {
                let mut dx = vec![0f32; xs.len()];
                let per_task = super::rows_per_task(two_m);
                dx.par_chunks_mut((per_task * two_m).max(1)).zip(xs.par_chunks((per_task * two_m).max(1)).zip(ds.par_chunks((per_task * m).max(1)))).for_each(|(dxc, (xc, dc))| {
                    for ((dxr, xr), dr) in dxc.chunks_mut(two_m).zip(xc.chunks(two_m)).zip(dc.chunks(m)) {
                        let (g, u) = xr.split_at(m);
                        let (dg, du) = dxr.split_at_mut(m);
                        // iterators, not indices: bounds checks kept this loop from vectorising
                        for ((((dg, du), &a), &b), &d) in dg.iter_mut().zip(du.iter_mut()).zip(g).zip(u).zip(dr) {
                            let (val, grad) = gelu_and_grad(a);
                            *dg = d * b * grad;
                            *du = d * val;
                        }
                    }
                });
                Ok(dx)
            })
        })?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// `gelu_tanh(gate) * up` with gate and up packed in the last dimension of `x` (.., 2M).
pub fn gated_gelu_packed(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(GatedGeluPacked)
}

struct Gelu;

impl candle_core::CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "ablate-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(yc, xc)| {
            yc.iter_mut().zip(xc).for_each(|(o, &a)| *o = gelu_and_grad(a).0);
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::fwd::gated_gelu((s, l), None)
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        #[cfg(feature = "cuda")]
        if x.device().is_cuda() {
            return super::cuda::bwd::gelu(x, dy, false).map(Some);
        }
        let dx = with_f32(x, self.name(), |xs| {
            with_f32(dy, self.name(), |ds| {
                let mut dx = vec![0f32; xs.len()];
                dx.par_chunks_mut(CHUNK).zip(xs.par_chunks(CHUNK).zip(ds.par_chunks(CHUNK))).for_each(|(o, (xc, dc))| {
                    for ((o, &a), &d) in o.iter_mut().zip(xc).zip(dc) {
                        *o = d * gelu_and_grad(a).1;
                    }
                });
                Ok(dx)
            })
        })?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// `gelu_tanh(x)` for an f32 CPU tensor, with backward (candle's own backward of `gelu`
/// evaluates `powf` twice per element).
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Gelu)
}

#[cfg(test)]
mod tests {
    #[test]
    fn fast_tanh_is_within_one_ulp_of_one_of_tanh() {
        let worst = (-200_000..=200_000).map(|i| i as f32 * 1e-4).map(|u| (super::fast_tanh(u) - u.tanh()).abs()).fold(0f32, f32::max);
        assert!(worst <= 1.2e-7, "{worst}"); // one ulp of 1.0
    }
}

/// `gelu_tanh(gate) * up` for f32 CPU tensors of the same shape, with backward.
pub fn gated_gelu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.contiguous()?.apply_op2(&up.contiguous()?, GatedGelu)
}
