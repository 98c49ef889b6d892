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

/// RoPE on CUDA: the tables are inputs of the op (already on the device), not host copies.
#[cfg(feature = "cuda")]
struct RopeCuda {
    sign: f32,
}

#[cfg(feature = "cuda")]
impl candle_core::CustomOp3 for RopeCuda {
    fn name(&self) -> &'static str {
        "ablate-rope-2axis-cuda"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        super::cuda::cpu_refused(self.name())
    }

    fn cuda_fwd(&self, s1: &candle_core::CudaStorage, l1: &Layout, s2: &candle_core::CudaStorage, l2: &Layout, s3: &candle_core::CudaStorage, l3: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        let (b, _, n, dh) = l1.shape().dims4()?;
        let fits = |l: &Layout| l.dims() == [n, dh / 2] || l.dims() == [b, n, dh / 2];
        if dh % 2 != 0 || !fits(l2) || l2.dims() != l3.dims() {
            candle_core::bail!("{}: x {:?} and tables {:?}, {:?} do not fit", self.name(), l1.dims(), l2.dims(), l3.dims());
        }
        super::cuda::fwd::rope(self.sign, (s1, l1), (s2, l2), (s3, l3))
    }

    fn bwd(&self, _x: &Tensor, cos: &Tensor, sin: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = dy.contiguous()?.apply_op3_no_bwd(cos, sin, &RopeCuda { sign: -self.sign })?;
        Ok((Some(dx), None, None))
    }
}

/// Rotates `x` (B, H, N, Dh), f32 on CPU (or f32/bf16 on CUDA), by tables (N, Dh/2) or
/// (B, N, Dh/2).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() {
        let table = |t: &Tensor| t.to_dtype(candle_core::DType::F32)?.contiguous();
        return x.contiguous()?.apply_op3(&table(cos)?, &table(sin)?, RopeCuda { sign: 1.0 });
    }
    let op = Rope {
        cos: Arc::new(cos.flatten_all()?.to_vec1::<f32>()?),
        sin: Arc::new(sin.flatten_all()?.to_vec1::<f32>()?),
        per_sample: cos.rank() == 3,
        inverse: false,
    };
    x.contiguous()?.apply_op1(op)
}
