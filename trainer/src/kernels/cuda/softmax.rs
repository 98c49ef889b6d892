//! Attention's softmax on CUDA (`attention.cu`): `softmax(scores * scale + bias)` over the
//! last dimension with the additive key mask `bias` (B, Nk) in one pass per row, kept in the
//! scores' dtype; its backward is one more pass. `layers::attention` wraps it between two
//! batched cuBLAS GEMMs.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

use super::{config, cpu_refused, func, launch, view, with_elem, wrap, ATTENTION};
use crate::kernels::launch as geo;

/// Forward on (scores (B, H, Nq, Nk), bias (B, Nk) f32).
struct MaskedSoftmax {
    scale: f32,
}

impl CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "ablate-masked-softmax"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_refused(self.name())
    }

    fn cuda_fwd(&self, ss: &CudaStorage, sl: &Layout, bs: &CudaStorage, bl: &Layout) -> Result<(CudaStorage, Shape)> {
        let what = self.name();
        let (b, h, nq, nk) = sl.shape().dims4()?;
        if bl.dims() != [b, nk] || bs.dtype() != DType::F32 {
            candle_core::bail!("{what}: scores {:?} and bias {:?} ({:?}) do not fit", sl.dims(), bl.dims(), bs.dtype());
        }
        let dev = ss.device().clone();
        let rows = b * h * nq;
        let bias = view::<f32>(bs, bl, what)?;
        with_elem!(ss.dtype(), what, T => {
            let s = view::<T>(ss, sl, what)?;
            // SAFETY: written whole by the kernel
            let p = unsafe { dev.alloc::<T>(rows * nk)? };
            launch!(&dev, func::<T>(&dev, &ATTENTION, "ablate_masked_softmax_fwd")?, config(geo::ln_rows(rows, nk)), s, bias, p.slice(..), rows as i64, (h * nq) as i64, nk as i32, self.scale);
            Ok((wrap(p, &dev), sl.shape().clone()))
        })
    }

    fn bwd(&self, _s: &Tensor, _bias: &Tensor, p: &Tensor, dp: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let ds = p.contiguous()?.apply_op2_no_bwd(&dp.to_dtype(p.dtype())?.contiguous()?, &MaskedSoftmaxBwd { scale: self.scale })?;
        Ok((Some(ds), None))
    }
}

/// Backward on (p, dp): dscores.
struct MaskedSoftmaxBwd {
    scale: f32,
}

impl CustomOp2 for MaskedSoftmaxBwd {
    fn name(&self) -> &'static str {
        "ablate-masked-softmax-bwd"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_refused(self.name())
    }

    fn cuda_fwd(&self, ps: &CudaStorage, pl: &Layout, gs: &CudaStorage, gl: &Layout) -> Result<(CudaStorage, Shape)> {
        let what = self.name();
        let nk = pl.dims().last().copied().unwrap_or(0);
        let rows = pl.shape().elem_count() / nk.max(1);
        let dev = ps.device().clone();
        with_elem!(super::same_dtype(what, &[ps, gs])?, what, T => {
            let (p, g) = (view::<T>(ps, pl, what)?, view::<T>(gs, gl, what)?);
            // SAFETY: written whole by the kernel
            let ds = unsafe { dev.alloc::<T>(rows * nk)? };
            launch!(&dev, func::<T>(&dev, &ATTENTION, "ablate_masked_softmax_bwd")?, config(geo::ln_rows(rows, nk)), p, g, ds.slice(..), rows as i64, nk as i32, self.scale);
            Ok((wrap(ds, &dev), pl.shape().clone()))
        })
    }
}

/// `softmax(scores * scale + bias)` over the keys for CUDA `scores` (B, H, Nq, Nk) in f32 or
/// bf16 and a key mask broadcastable from (B, 1, 1, Nk) (none: no mask), with backward; the
/// result has the scores' dtype.
pub fn masked_softmax(scores: &Tensor, bias: Option<&Tensor>, scale: f64) -> Result<Tensor> {
    let (b, _, _, nk) = scores.dims4()?;
    let bias = match bias {
        Some(t) => t.to_dtype(DType::F32)?.broadcast_as((b, 1, 1, nk))?.contiguous()?.reshape((b, nk))?,
        None => Tensor::zeros((b, nk), DType::F32, scores.device())?,
    };
    scores.contiguous()?.apply_op2(&bias.detach(), MaskedSoftmax { scale: scale as f32 })
}
