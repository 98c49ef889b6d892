//! The flow-matching loss's squared error as one op: `mean((a - b)^2)` over all elements of
//! the velocity estimate `a` and its target `b` (the MSE term, and against the neighbours'
//! targets, the contrastive term). Composed it is a difference, a square and a mean: three
//! graph nodes, two full-size temporaries, and their zero-filled gradients in backward.
//! Backward: `da = 2 (a - b) / n * g`, `db = -da`. The sum is accumulated in f64 over fixed
//! chunks added in order, so the result does not depend on the number of threads.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{f32_slice, with_f32};

const CHUNK: usize = 16_384;

struct MeanSquaredError;

/// sum of (a - b)^2 over one chunk, in four f64 lanes.
fn chunk_sum(a: &[f32], b: &[f32]) -> f64 {
    let mut lanes = [0f64; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let rest: f64 = ca.remainder().iter().zip(cb.remainder()).map(|(&x, &y)| ((x - y) as f64).powi(2)).sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..4 {
            let d = (x[l] - y[l]) as f64;
            lanes[l] += d * d;
        }
    }
    (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]) + rest
}

impl CustomOp2 for MeanSquaredError {
    fn name(&self) -> &'static str {
        "ablate-mean-squared-error"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        if l1.dims() != l2.dims() {
            candle_core::bail!("{}: shapes {:?} and {:?} differ", self.name(), l1.dims(), l2.dims());
        }
        let (a, b) = (f32_slice(s1, l1, self.name())?, f32_slice(s2, l2, self.name())?);
        let partial: Vec<f64> = a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)).map(|(x, y)| chunk_sum(x, y)).collect();
        // an empty input gives NaN, as the composed mean does
        let mean = partial.iter().sum::<f64>() / a.len() as f64;
        Ok((CpuStorage::F32(vec![mean as f32]), Shape::from(())))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &candle_core::CudaStorage, l1: &Layout, s2: &candle_core::CudaStorage, l2: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        if l1.dims() != l2.dims() {
            candle_core::bail!("{}: shapes {:?} and {:?} differ", self.name(), l1.dims(), l2.dims());
        }
        super::cuda::fwd::mean_squared_error((s1, l1), (s2, l2))
    }

    fn bwd(&self, a: &Tensor, b: &Tensor, _y: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        #[cfg(feature = "cuda")]
        if a.device().is_cuda() {
            let (da, db) = super::cuda::bwd::mean_squared_error(a, b, g)?;
            return Ok((Some(da), Some(db)));
        }
        let s = 2.0 * g.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()? / a.elem_count().max(1) as f32;
        let da = with_f32(a, self.name(), |av| {
            with_f32(b, self.name(), |bv| {
                let mut da = vec![0f32; av.len()];
                da.par_chunks_mut(CHUNK).zip(av.par_chunks(CHUNK).zip(bv.par_chunks(CHUNK))).for_each(|(o, (x, y))| {
                    for ((o, &x), &y) in o.iter_mut().zip(x).zip(y) {
                        *o = s * (x - y);
                    }
                });
                Ok(da)
            })
        })?;
        let da = Tensor::from_vec(da, a.shape(), a.device())?;
        let db = da.neg()?;
        Ok((Some(da), Some(db)))
    }
}

/// `mean((a - b)^2)` as a scalar, for f32 CPU tensors of the same shape, with backward.
pub fn mean_squared_error(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    a.contiguous()?.apply_op2(&b.contiguous()?, MeanSquaredError)
}
