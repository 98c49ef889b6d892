//! The backward passes of the fused ops on CUDA. Each is a custom op (CUDA only) whose
//! output packs every input gradient of the fused op one after another in the inputs' dtype;
//! the public functions cut it apart with views and reshape. Parameter gradients that are
//! sums over rows (LayerNorm's shift and scale, RMSNorm's weight, the residual's gate) are
//! two deterministic passes: partial sums per chunk of rows, then the chunks in order.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use super::{col_sum, config, cpu_refused, func, launch, same_dtype, unpack, view, with_elem, wrap, Module, LOSS, NORM, POINTWISE};
use crate::kernels::launch as geo;

/// adaLN / LayerNorm-affine backward on (x, scale, dy): [dx | dshift | dscale].
struct LnModulateBwd {
    eps: f64,
    offset: f32,
}

impl CustomOp3 for LnModulateBwd {
    fn name(&self) -> &'static str {
        "ablate-layer-norm-modulate-bwd"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_refused(self.name())
    }
    fn cuda_fwd(&self, xs: &CudaStorage, xl: &Layout, ss: &CudaStorage, sl: &Layout, gs: &CudaStorage, gl: &Layout) -> Result<(CudaStorage, Shape)> {
        let what = self.name();
        let dev = xs.device().clone();
        let (b, n, d) = xl.shape().dims3()?;
        let shared = sl.dims()[0] == 1;
        let rows = b * n;
        let (groups, group_rows) = if shared { (1, rows) } else { (b, n) };
        let (chunk_rows, chunks) = (geo::chunk_rows(groups, group_rows), geo::chunks(groups, group_rows));
        let total = rows * d + 2 * groups * d;
        with_elem!(same_dtype(what, &[xs, ss, gs])?, what, T => {
            let (x, dy) = (|| view::<T>(xs, xl, what), || view::<T>(gs, gl, what));
            let sc = view::<T>(ss, sl, what)?;
            // SAFETY: dx, dshift and dscale are all written below; the scratch buffers too
            let out = unsafe { dev.alloc::<T>(total)? };
            let stats = unsafe { dev.alloc::<f32>(2 * rows)? };
            let (ps, pc) = unsafe { (dev.alloc::<f32>(groups * chunks * d)?, dev.alloc::<f32>(groups * chunks * d)?) };
            launch!(&dev, func::<T>(&dev, &NORM, "ablate_ln_modulate_bwd_dx")?, config(geo::ln_rows(rows, d)), x()?, sc, dy()?, out.slice(..rows * d), stats.slice(..), rows as i32, n as i32, d as i32, shared as i32, self.offset, self.eps);
            launch!(&dev, func::<T>(&dev, &NORM, "ablate_ln_modulate_param_partials")?, config(geo::column_partials(groups, group_rows, d)), x()?, dy()?, stats.slice(..), ps.slice(..), pc.slice(..), group_rows as i32, chunk_rows as i32, chunks as i32, d as i32);
            col_sum!(&dev, T, ps.slice(..), out.slice(rows * d..rows * d + groups * d), groups, chunks, d);
            col_sum!(&dev, T, pc.slice(..), out.slice(rows * d + groups * d..), groups, chunks, d);
            Ok((wrap(out, &dev), Shape::from(total)))
        })
    }
}

/// (dx, dshift, dscale) of `LayerNorm(x) * (offset + scale) + shift` on CUDA.
pub(crate) fn ln_modulate(x: &Tensor, shift: &Tensor, scale: &Tensor, dy: &Tensor, eps: f64, offset: f32) -> Result<(Tensor, Tensor, Tensor)> {
    let p = x.contiguous()?.apply_op3_no_bwd(&scale.contiguous()?, &dy.contiguous()?, &LnModulateBwd { eps, offset })?;
    let g = unpack(&p, &[x.shape(), shift.shape(), scale.shape()])?;
    Ok((g[0].clone(), g[1].clone(), g[2].clone()))
}

/// RMSNorm backward on (x, w, dy): [dx | dw].
struct RmsNormBwd {
    eps: f64,
}

impl CustomOp3 for RmsNormBwd {
    fn name(&self) -> &'static str {
        "ablate-rms-norm-bwd"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_refused(self.name())
    }
    fn cuda_fwd(&self, xs: &CudaStorage, xl: &Layout, ws: &CudaStorage, wl: &Layout, gs: &CudaStorage, gl: &Layout) -> Result<(CudaStorage, Shape)> {
        let what = self.name();
        let dev = xs.device().clone();
        let d = wl.shape().elem_count();
        let rows = xl.shape().elem_count() / d.max(1);
        let (chunk_rows, chunks) = (geo::chunk_rows(1, rows), geo::chunks(1, rows));
        let total = rows * d + d;
        with_elem!(same_dtype(what, &[xs, ws, gs])?, what, T => {
            let (x, dy) = (|| view::<T>(xs, xl, what), || view::<T>(gs, gl, what));
            let w = view::<T>(ws, wl, what)?;
            // SAFETY: dx and dw are written below; the scratch buffers too
            let out = unsafe { dev.alloc::<T>(total)? };
            let (stats, part) = unsafe { (dev.alloc::<f32>(rows)?, dev.alloc::<f32>(chunks * d)?) };
            launch!(&dev, func::<T>(&dev, &NORM, "ablate_rms_norm_bwd_dx")?, config(geo::rms_rows(rows)), x()?, w, dy()?, out.slice(..rows * d), stats.slice(..), rows as i64, d as i32, self.eps);
            launch!(&dev, func::<T>(&dev, &NORM, "ablate_rms_norm_dw_partials")?, config(geo::column_partials(1, rows, d)), x()?, dy()?, stats.slice(..), part.slice(..), rows as i64, chunk_rows as i32, d as i32);
            col_sum!(&dev, T, part.slice(..), out.slice(rows * d..), 1usize, chunks, d);
            Ok((wrap(out, &dev), Shape::from(total)))
        })
    }
}

/// (dx, dw) of RMSNorm on CUDA.
pub(crate) fn rms_norm(x: &Tensor, w: &Tensor, dy: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    let p = x.contiguous()?.apply_op3_no_bwd(&w.contiguous()?, &dy.contiguous()?, &RmsNormBwd { eps })?;
    let g = unpack(&p, &[x.shape(), w.shape()])?;
    Ok((g[0].clone(), g[1].clone()))
}

/// The backward of an elementwise op of two same-shaped inputs (a, b) and its upstream
/// gradient g (same shape, or one scalar for a mean): [da | db], by one kernel that writes
/// both halves. `gelu(gate) * up` and the squared error are two instances.
struct PairBwd {
    name: &'static str,
    module: &'static Module,
    kernel: &'static str,
}

const GATED_GELU_BWD: PairBwd = PairBwd { name: "ablate-gated-gelu-bwd", module: &POINTWISE, kernel: "ablate_gated_gelu_bwd" };
const MSE_BWD: PairBwd = PairBwd { name: "ablate-mean-squared-error-bwd", module: &LOSS, kernel: "ablate_mse_bwd" };

impl CustomOp3 for PairBwd {
    fn name(&self) -> &'static str {
        self.name
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_refused(self.name())
    }
    fn cuda_fwd(&self, a: &CudaStorage, al: &Layout, b: &CudaStorage, bl: &Layout, g: &CudaStorage, gl: &Layout) -> Result<(CudaStorage, Shape)> {
        let what = self.name();
        let dev = a.device().clone();
        let n = al.shape().elem_count();
        with_elem!(same_dtype(what, &[a, b, g])?, what, T => {
            let (av, bv, gv) = (view::<T>(a, al, what)?, view::<T>(b, bl, what)?, view::<T>(g, gl, what)?);
            // SAFETY: both halves are written by the kernel
            let out = unsafe { dev.alloc::<T>(2 * n)? };
            launch!(&dev, func::<T>(&dev, self.module, self.kernel)?, config(geo::elementwise(n)), av, bv, gv, out.slice(..n), out.slice(n..), n as i64);
            Ok((wrap(out, &dev), Shape::from(2 * n)))
        })
    }
}

/// (dgate, dup) of `gelu_tanh(gate) * up` on CUDA.
pub(crate) fn gated_gelu(gate: &Tensor, up: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    let p = gate.contiguous()?.apply_op3_no_bwd(&up.contiguous()?, &dy.contiguous()?, &GATED_GELU_BWD)?;
    let g = unpack(&p, &[gate.shape(), up.shape()])?;
    Ok((g[0].clone(), g[1].clone()))
}

/// gelu backward (on (x, dy)) and the packed gate|up backward, both giving dx.
struct GeluBwd {
    packed: bool,
}

impl CustomOp2 for GeluBwd {
    fn name(&self) -> &'static str {
        if self.packed {
            "ablate-gated-gelu-packed-bwd"
        } else {
            "ablate-gelu-bwd"
        }
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_refused(self.name())
    }
    fn cuda_fwd(&self, x: &CudaStorage, xl: &Layout, g: &CudaStorage, gl: &Layout) -> Result<(CudaStorage, Shape)> {
        let what = self.name();
        let dev = x.device().clone();
        let n = xl.shape().elem_count();
        with_elem!(same_dtype(what, &[x, g])?, what, T => {
            let (xv, gv) = (view::<T>(x, xl, what)?, view::<T>(g, gl, what)?);
            // SAFETY: written whole by the kernel
            let dx = unsafe { dev.alloc::<T>(n)? };
            if self.packed {
                let two_m = xl.dims().last().copied().unwrap_or(0);
                let (m, rows) = (two_m / 2, n / two_m.max(1));
                launch!(&dev, func::<T>(&dev, &POINTWISE, "ablate_gated_gelu_packed_bwd")?, config(geo::elementwise(rows * m)), xv, gv, dx.slice(..), rows as i64, m as i32);
            } else {
                launch!(&dev, func::<T>(&dev, &POINTWISE, "ablate_gated_gelu_bwd")?, config(geo::elementwise(n)), xv, 0u64, gv, dx.slice(..), 0u64, n as i64);
            }
            Ok((wrap(dx, &dev), xl.shape().clone()))
        })
    }
}

/// dx of `gelu_tanh(x)` (`packed` false) or of the packed gated GELU, on CUDA.
pub(crate) fn gelu(x: &Tensor, dy: &Tensor, packed: bool) -> Result<Tensor> {
    x.contiguous()?.apply_op2_no_bwd(&dy.contiguous()?, &GeluBwd { packed })
}

/// Gated residual backward on (y, gate, dout): [dy | dgate].
struct GatedResidualBwd;

impl CustomOp3 for GatedResidualBwd {
    fn name(&self) -> &'static str {
        "ablate-gated-residual-bwd"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_refused(self.name())
    }
    fn cuda_fwd(&self, ys: &CudaStorage, yl: &Layout, gs: &CudaStorage, gl: &Layout, ds: &CudaStorage, dl: &Layout) -> Result<(CudaStorage, Shape)> {
        let what = self.name();
        let dev = ys.device().clone();
        let (b, n, d) = yl.shape().dims3()?;
        let total = b * n * d;
        let (chunk_rows, chunks) = (geo::chunk_rows(b, n), geo::chunks(b, n));
        with_elem!(same_dtype(what, &[ys, gs, ds])?, what, T => {
            let (y, gate) = (view::<T>(ys, yl, what)?, view::<T>(gs, gl, what)?);
            let dout = || view::<T>(ds, dl, what);
            // SAFETY: dy and dgate are written below; the partials too
            let out = unsafe { dev.alloc::<T>(total + b * d)? };
            let part = unsafe { dev.alloc::<f32>(b * chunks * d)? };
            launch!(&dev, func::<T>(&dev, &POINTWISE, "ablate_gated_residual_bwd_dy")?, config(geo::elementwise(total)), gate, dout()?, out.slice(..total), total as i64, n as i32, d as i32);
            launch!(&dev, func::<T>(&dev, &POINTWISE, "ablate_gated_residual_dgate_partials")?, config(geo::column_partials(b, n, d)), y, dout()?, part.slice(..), n as i32, chunk_rows as i32, chunks as i32, d as i32);
            col_sum!(&dev, T, part.slice(..), out.slice(total..), b, chunks, d);
            Ok((wrap(out, &dev), Shape::from(total + b * d)))
        })
    }
}

/// (dy, dgate) of `x + y * gate` on CUDA (dx is dout itself).
pub(crate) fn gated_residual(y: &Tensor, gate: &Tensor, dout: &Tensor) -> Result<(Tensor, Tensor)> {
    let p = y.contiguous()?.apply_op3_no_bwd(&gate.contiguous()?, &dout.contiguous()?, &GatedResidualBwd)?;
    let g = unpack(&p, &[y.shape(), gate.shape()])?;
    Ok((g[0].clone(), g[1].clone()))
}

/// (da, db) of `mean((a - b)^2)` for upstream gradient `g` (a scalar), on CUDA.
pub(crate) fn mean_squared_error(a: &Tensor, b: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor)> {
    let g = g.to_dtype(a.dtype())?.reshape(1)?;
    let p = a.contiguous()?.apply_op3_no_bwd(&b.contiguous()?, &g.contiguous()?, &MSE_BWD)?;
    let gr = unpack(&p, &[a.shape(), b.shape()])?;
    Ok((gr[0].clone(), gr[1].clone()))
}
