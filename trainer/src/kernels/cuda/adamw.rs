//! The multi-tensor AdamW of `adamw.cu` for `optim::AdamW` on CUDA: one launch updates every
//! parameter in place (weights, first and second moments), where the composed update ran ~10
//! element-wise kernels per tensor. The kernel does the CPU fused update's f32 operations in
//! the same order (`optim::AdamwScalars`), so CPU and CUDA runs agree bit for bit on the same
//! gradients; `cuda-emu`'s `adamw` test checks the kernel against `optim::AdamW`.

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DevicePtr};
use candle_core::cuda_backend::WrapErr;
use candle_core::{Result, Storage, Tensor};

use super::{config, launch, plain_func, ADAMW};
use crate::kernels::launch as geo;
use crate::optim::AdamwScalars;

/// The device address of a contiguous f32 CUDA tensor's first element.
fn address(t: &Tensor, stream: &candle_core::cuda_backend::cudarc::driver::CudaStream, what: &str) -> Result<u64> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cuda(cs) = &*storage else { candle_core::bail!("adamw: {what} is not on a CUDA device") };
    if !layout.is_contiguous() {
        candle_core::bail!("adamw: {what} is not contiguous");
    }
    let slice = cs.as_cuda_slice::<f32>()?;
    let (ptr, _sync) = slice.device_ptr(stream);
    Ok(ptr + 4 * layout.start_offset() as u64)
}

/// Whether every tensor can go into a [`Table`]: f32 (the kernel's only type), contiguous, on
/// one CUDA device, fused kernels on.
pub(crate) fn applies(ts: &[&Tensor]) -> bool {
    !ts.is_empty() && ts.iter().all(|t| super::applies(t) && t.dtype() == candle_core::DType::F32 && t.is_contiguous() && t.device().same_device(ts[0].device()))
}

/// The parameters of one step as the kernels see them: the `AdamwTensor` table and the chunk
/// table, on the device. The tensors it points into must outlive it (the caller holds them).
pub(crate) struct Table {
    dev: candle_core::CudaDevice,
    table: CudaSlice<u64>,
    chunk_tensor: CudaSlice<i32>,
    chunk_start: CudaSlice<i64>,
    chunks: usize,
}

/// The table of weights `w` with gradients `g` and moments `m`, `v` (same shapes, f32,
/// contiguous, on one CUDA device; see [`applies`]); None when there is nothing to update.
pub(crate) fn table(w: &[&Tensor], g: &[&Tensor], m: &[&Tensor], v: &[&Tensor]) -> Result<Option<Table>> {
    let Some(first) = w.first() else { return Ok(None) };
    let dev = first.device().as_cuda_device()?.clone();
    let stream = dev.cuda_stream();
    let mut table: Vec<u64> = Vec::with_capacity(6 * w.len());
    let mut sizes = Vec::with_capacity(w.len());
    for i in 0..w.len() {
        let n = w[i].elem_count();
        if [g[i], m[i], v[i]].iter().any(|t| t.elem_count() != n) {
            candle_core::bail!("adamw: parameter {i} has {n} elements but its gradient or moments do not");
        }
        // `AdamwTensor` of adamw.cu: w, g, m, v, w_bf16 (none), n
        table.extend([address(w[i], &stream, "a weight")?, address(g[i], &stream, "a gradient")?, address(m[i], &stream, "a first moment")?, address(v[i], &stream, "a second moment")?, 0, n as u64]);
        sizes.push(n);
    }
    let (chunk_tensor, chunk_start) = geo::adamw_chunks(&sizes);
    if chunk_tensor.is_empty() {
        return Ok(None);
    }
    Ok(Some(Table { table: stream.clone_htod(&table).w()?, chunk_tensor: stream.clone_htod(&chunk_tensor).w()?, chunk_start: stream.clone_htod(&chunk_start).w()?, chunks: chunk_tensor.len(), dev }))
}

impl Table {
    /// The gradients' global L2 norm (double sums per chunk, added in order) and the factor
    /// `max_norm / (norm + 1e-6)` that clipping multiplies them by (1 when `max_norm` is 0 or
    /// not exceeded), both left on the device for [`Table::update`]; returns the norm (one
    /// small read, the step's one synchronisation, as on the composed path).
    pub(crate) fn clip(&self, max_norm: f64) -> Result<(f64, CudaSlice<f32>)> {
        let dev = &self.dev;
        // SAFETY: every partial and both outputs are written by the kernels
        let part = unsafe { dev.alloc::<f64>(self.chunks)? };
        let out = unsafe { dev.alloc::<f32>(2)? };
        launch!(dev, plain_func(dev, &ADAMW, "ablate_grad_sq_partials")?, config(((self.chunks as u32, 1), geo::BLOCK)), self.table.slice(..), self.chunk_tensor.slice(..), self.chunk_start.slice(..), part.slice(..));
        launch!(dev, plain_func(dev, &ADAMW, "ablate_grad_clip_finish")?, config(((1, 1), geo::BLOCK)), part.slice(..), self.chunks as i32, max_norm as f32, out.slice(..));
        let host = dev.cuda_stream().clone_dtoh(&out).w()?;
        Ok((host[0] as f64, out))
    }

    /// Updates every weight and moment in place; with `clip` (from [`Table::clip`]) the
    /// gradients are scaled by its factor first.
    pub(crate) fn update(&self, s: AdamwScalars, clip: Option<&CudaSlice<f32>>) -> Result<()> {
        let dev = &self.dev;
        let (decay, use_decay) = (s.decay.unwrap_or(1.0), s.decay.is_some() as i32);
        let f = plain_func(dev, &ADAMW, "ablate_adamw_multi")?;
        let cfg = config(((self.chunks as u32, 1), geo::BLOCK));
        let (t, ct, cs) = (self.table.slice(..), self.chunk_tensor.slice(..), self.chunk_start.slice(..));
        match clip {
            Some(c) => launch!(dev, f, cfg, t, ct, cs, c.slice(..), s.b1, s.c1, s.b2, s.c2, s.inv_bc1, s.inv_bc2, s.eps, decay, use_decay, s.lr),
            None => launch!(dev, f, cfg, t, ct, cs, 0u64, s.b1, s.c1, s.b2, s.c2, s.inv_bc1, s.inv_bc2, s.eps, decay, use_decay, s.lr),
        }
        Ok(())
    }
}
