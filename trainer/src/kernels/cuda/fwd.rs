//! The forward passes of the fused ops on CUDA, called from each op's `cuda_fwd` after the
//! op has checked its shapes (the same checks as on the CPU).

use candle_core::backend::BackendStorage;
use candle_core::{CudaStorage, Layout, Result, Shape};

use super::{config, func, launch, same_dtype, view, with_elem, wrap, LOSS, NORM, POINTWISE};
use crate::kernels::launch as geo;

type In<'a> = (&'a CudaStorage, &'a Layout);

/// `LayerNorm(x) * (offset + scale) + shift` for x (B, N, D); shift/scale (B, D), or (1, D)
/// when `shared`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn ln_modulate(eps: f64, offset: f32, (b, n, d, shared): (usize, usize, usize, bool), x: In, shift: In, scale: In) -> Result<(CudaStorage, Shape)> {
    const WHAT: &str = "ablate-layer-norm-modulate";
    let dev = x.0.device().clone();
    let rows = b * n;
    with_elem!(same_dtype(WHAT, &[x.0, shift.0, scale.0])?, WHAT, T => {
        let (xv, sh, sc) = (view::<T>(x.0, x.1, WHAT)?, view::<T>(shift.0, shift.1, WHAT)?, view::<T>(scale.0, scale.1, WHAT)?);
        // SAFETY: every element is written by the kernel before it is read
        let y = unsafe { dev.alloc::<T>(rows * d)? };
        launch!(&dev, func::<T>(&dev, &NORM, "ablate_ln_modulate_fwd")?, config(geo::ln_rows(rows, d)), xv, sh, sc, y.slice(..), rows as i32, n as i32, d as i32, shared as i32, offset, eps);
        Ok((wrap(y, &dev), x.1.shape().clone()))
    })
}

/// RMSNorm of x (.., D) with weight (D).
pub(crate) fn rms_norm(eps: f64, x: In, w: In) -> Result<(CudaStorage, Shape)> {
    const WHAT: &str = "ablate-rms-norm";
    let dev = x.0.device().clone();
    let d = w.1.shape().elem_count();
    let rows = x.1.shape().elem_count() / d.max(1);
    with_elem!(same_dtype(WHAT, &[x.0, w.0])?, WHAT, T => {
        let (xv, wv) = (view::<T>(x.0, x.1, WHAT)?, view::<T>(w.0, w.1, WHAT)?);
        // SAFETY: written whole by the kernel
        let y = unsafe { dev.alloc::<T>(rows * d)? };
        launch!(&dev, func::<T>(&dev, &NORM, "ablate_rms_norm_fwd")?, config(geo::rms_rows(rows)), xv, wv, y.slice(..), rows as i64, d as i32, eps);
        Ok((wrap(y, &dev), x.1.shape().clone()))
    })
}

/// `gelu_tanh(gate) * up`, or `gelu_tanh(gate)` without `up`.
pub(crate) fn gated_gelu(gate: In, up: Option<In>) -> Result<(CudaStorage, Shape)> {
    const WHAT: &str = "ablate-gated-gelu";
    let dev = gate.0.device().clone();
    let n = gate.1.shape().elem_count();
    let dt = match up {
        Some(u) => same_dtype(WHAT, &[gate.0, u.0])?,
        None => gate.0.dtype(),
    };
    with_elem!(dt, WHAT, T => {
        let g = view::<T>(gate.0, gate.1, WHAT)?;
        // SAFETY: written whole by the kernel
        let y = unsafe { dev.alloc::<T>(n)? };
        let f = func::<T>(&dev, &POINTWISE, "ablate_gated_gelu_fwd")?;
        match up {
            Some(u) => launch!(&dev, f, config(geo::elementwise(n)), g, view::<T>(u.0, u.1, WHAT)?, y.slice(..), n as i64),
            None => launch!(&dev, f, config(geo::elementwise(n)), g, 0u64, y.slice(..), n as i64),
        }
        Ok((wrap(y, &dev), gate.1.shape().clone()))
    })
}

/// `gelu_tanh(x[.., :M]) * x[.., M:]` of a packed (.., 2M) projection.
pub(crate) fn gated_gelu_packed(x: In, out_shape: Shape) -> Result<(CudaStorage, Shape)> {
    const WHAT: &str = "ablate-gated-gelu-packed";
    let dev = x.0.device().clone();
    let m = out_shape.dims().last().copied().unwrap_or(0);
    let rows = out_shape.elem_count() / m.max(1);
    with_elem!(x.0.dtype(), WHAT, T => {
        let xv = view::<T>(x.0, x.1, WHAT)?;
        // SAFETY: written whole by the kernel
        let y = unsafe { dev.alloc::<T>(rows * m)? };
        launch!(&dev, func::<T>(&dev, &POINTWISE, "ablate_gated_gelu_packed_fwd")?, config(geo::elementwise(rows * m)), xv, y.slice(..), rows as i64, m as i32);
        Ok((wrap(y, &dev), out_shape))
    })
}

/// `x + y * gate[:, None, :]` for x, y (B, N, D), gate (B, D).
pub(crate) fn gated_residual((n, d): (usize, usize), x: In, y: In, gate: In) -> Result<(CudaStorage, Shape)> {
    const WHAT: &str = "ablate-gated-residual";
    let dev = x.0.device().clone();
    let total = x.1.shape().elem_count();
    with_elem!(same_dtype(WHAT, &[x.0, y.0, gate.0])?, WHAT, T => {
        let (xv, yv, gv) = (view::<T>(x.0, x.1, WHAT)?, view::<T>(y.0, y.1, WHAT)?, view::<T>(gate.0, gate.1, WHAT)?);
        // SAFETY: written whole by the kernel
        let out = unsafe { dev.alloc::<T>(total)? };
        launch!(&dev, func::<T>(&dev, &POINTWISE, "ablate_gated_residual_fwd")?, config(geo::elementwise(total)), xv, yv, gv, out.slice(..), total as i64, n as i32, d as i32);
        Ok((wrap(out, &dev), x.1.shape().clone()))
    })
}

/// RoPE of x (B, H, N, Dh) by f32 tables (N, Dh/2) or (B, N, Dh/2); `sign` -1 rotates back.
pub(crate) fn rope(sign: f32, x: In, cos: In, sin: In) -> Result<(CudaStorage, Shape)> {
    const WHAT: &str = "ablate-rope-2axis";
    let dev = x.0.device().clone();
    let (_, h, n, dh) = x.1.shape().dims4()?;
    let per_sample = cos.1.shape().rank() == 3;
    let pairs = x.1.shape().elem_count() / 2;
    let (cv, sv) = (view::<f32>(cos.0, cos.1, WHAT)?, view::<f32>(sin.0, sin.1, WHAT)?);
    with_elem!(x.0.dtype(), WHAT, T => {
        let xv = view::<T>(x.0, x.1, WHAT)?;
        // SAFETY: written whole by the kernel
        let y = unsafe { dev.alloc::<T>(2 * pairs)? };
        launch!(&dev, func::<T>(&dev, &POINTWISE, "ablate_rope")?, config(geo::elementwise(pairs)), xv, cv, sv, y.slice(..), pairs as i64, h as i32, n as i32, dh as i32, per_sample as i32, sign);
        Ok((wrap(y, &dev), x.1.shape().clone()))
    })
}

/// `mean((a - b)^2)` as a scalar of the inputs' dtype, in two deterministic passes.
pub(crate) fn mean_squared_error(a: In, b: In) -> Result<(CudaStorage, Shape)> {
    const WHAT: &str = "ablate-mean-squared-error";
    let dev = a.0.device().clone();
    let n = a.1.shape().elem_count();
    let l = geo::mse_partials(n);
    with_elem!(same_dtype(WHAT, &[a.0, b.0])?, WHAT, T => {
        let (av, bv) = (view::<T>(a.0, a.1, WHAT)?, view::<T>(b.0, b.1, WHAT)?);
        // SAFETY: each partial and the result are written by the kernels
        let part = unsafe { dev.alloc::<f64>(l.0 .0 as usize)? };
        let out = unsafe { dev.alloc::<T>(1)? };
        launch!(&dev, func::<T>(&dev, &LOSS, "ablate_mse_partials")?, config(l), av, bv, part.slice(..), n as i64);
        launch!(&dev, func::<T>(&dev, &LOSS, "ablate_mse_finish")?, config(((1, 1), geo::BLOCK)), part.slice(..), l.0 .0 as i32, out.slice(..), n as i64);
        Ok((wrap(out, &dev), Shape::from(())))
    })
}
