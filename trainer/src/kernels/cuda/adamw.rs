//! The multi-tensor AdamW of `adamw.cu` for `optim::AdamW` on CUDA: one launch updates every
//! parameter in place (weights, first and second moments), where the composed update ran ~10
//! element-wise kernels per tensor. The kernel does the CPU fused update's f32 operations in
//! the same order (`optim::AdamwScalars`), so CPU and CUDA runs agree bit for bit on the same
//! gradients; `cuda-emu`'s `adamw` test checks the kernel against `optim::AdamW`.

use candle_core::cuda_backend::cudarc::driver::DevicePtr;
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

/// Whether every tensor can take [`step`]: f32, contiguous, on one CUDA device.
pub(crate) fn applies(ts: &[&Tensor]) -> bool {
    crate::kernels::enabled()
        && !ts.is_empty()
        && ts.iter().all(|t| t.device().is_cuda() && t.dtype() == candle_core::DType::F32 && t.is_contiguous() && t.device().same_device(ts[0].device()))
}

/// Updates `w`, `m`, `v` of every parameter in place with gradient `g` (same shapes, f32,
/// contiguous, on one CUDA device; see [`applies`]).
pub(crate) fn step(w: &[&Tensor], g: &[&Tensor], m: &[&Tensor], v: &[&Tensor], s: AdamwScalars) -> Result<()> {
    if w.is_empty() {
        return Ok(());
    }
    let dev = w[0].device().as_cuda_device()?.clone();
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
        return Ok(());
    }
    use candle_core::cuda_backend::WrapErr;
    let table = stream.clone_htod(&table).w()?;
    let chunk_tensor_d = stream.clone_htod(&chunk_tensor).w()?;
    let chunk_start_d = stream.clone_htod(&chunk_start).w()?;
    let (decay, use_decay) = (s.decay.unwrap_or(1.0), s.decay.is_some() as i32);
    launch!(
        &dev,
        plain_func(&dev, &ADAMW, "ablate_adamw_multi")?,
        config(((chunk_tensor.len() as u32, 1), geo::BLOCK)),
        table.slice(..),
        chunk_tensor_d.slice(..),
        chunk_start_d.slice(..),
        0u64, // no clip factor: gradients arrive clipped
        s.b1,
        s.c1,
        s.b2,
        s.c2,
        s.inv_bc1,
        s.inv_bc2,
        s.eps,
        decay,
        use_decay,
        s.lr,
    );
    Ok(())
}
