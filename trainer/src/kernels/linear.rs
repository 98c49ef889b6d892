//! The linear layer `y = x W^T (+ b)` as one op, with its matrix products in faer.
//!
//! candle's path for a linear layer is four graph nodes (reshape, transpose, matmul,
//! reshape), and every node's gradient is zero-filled and then added to in backward. Its
//! matmul goes through the `gemm` crate, whose stable build has AVX2 kernels only (about
//! 100 GFLOP/s on one core of this machine), while faer picks AVX-512 kernels at run time
//! (about 165). Here, for `x` of shape (.., K), `W` (N, K) and `dy` (.., N):
//! forward `y = x W^T`; backward `dx = dy W`, `dW = dy^T x`, `db = column sums of dy`.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use super::{f32_slice, with_f32};

/// Below this many multiply-adds a product runs on the calling thread.
const PAR_MIN_MNK: usize = 1 << 21;

/// A destination buffer. Zeroed, not left uninitialised: faer's small-matrix kernels compute
/// `0 * dst + product` even with `Accum::Replace`, and garbage NaNs would survive that.
fn zeroed(len: usize) -> Vec<f32> {
    vec![0f32; len]
}

fn mm_seq(dst: MatMut<'_, f32>, lhs: MatRef<'_, f32>, rhs: MatRef<'_, f32>) {
    matmul(dst, Accum::Replace, lhs, rhs, 1.0f32, Par::Seq);
    super::clear_upper_vector_state();
}

/// `dst (m x n, row-major) = lhs (m x k) rhs (k x n)`, split into row blocks over rayon's
/// threads when large enough. faer runs sequentially inside each block: its own parallel
/// mode brings a second thread pool that fights rayon's and candle's for the cores.
fn product(dst: &mut [f32], lhs: MatRef<'_, f32>, rhs: MatRef<'_, f32>) {
    let (m, k, n) = (lhs.nrows(), lhs.ncols(), rhs.ncols());
    if m * n == 0 {
        return;
    }
    let threads = rayon::current_num_threads();
    let tasks = if m * n * k >= PAR_MIN_MNK { threads.min(m.div_ceil(16)) } else { 1 };
    if tasks <= 1 {
        mm_seq(MatMut::from_row_major_slice_mut(dst, m, n), lhs, rhs);
        return;
    }
    // row blocks in multiples of 16 (the kernels' register tile height)
    let rows = m.div_ceil(tasks).div_ceil(16) * 16;
    dst.par_chunks_mut(rows * n).enumerate().for_each(|(i, d)| {
        let r0 = i * rows;
        let r = d.len() / n;
        mm_seq(MatMut::from_row_major_slice_mut(d, r, n), lhs.subrows(r0, r), rhs);
    });
}

/// `x` (m, k) row-major times `w` (n, k) row-major, transposed: (m, n).
fn forward(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut y = zeroed(m * n);
    product(&mut y, MatRef::from_row_major_slice(x, m, k), MatRef::from_row_major_slice(w, n, k).transpose());
    y
}

/// (dx, dW) for `dy` (m, n): `dx = dy W` (m, k), `dW = dy^T x` (n, k).
fn backward(x: &[f32], w: &[f32], dy: &[f32], m: usize, k: usize, n: usize) -> (Vec<f32>, Vec<f32>) {
    let mut dx = zeroed(m * k);
    let mut dw = zeroed(n * k);
    let dyv = MatRef::from_row_major_slice(dy, m, n);
    product(&mut dx, dyv, MatRef::from_row_major_slice(w, n, k));
    product(&mut dw, dyv.transpose(), MatRef::from_row_major_slice(x, m, k));
    (dx, dw)
}

/// Column sums of `dy` (m, n), accumulated in f64 in row order.
fn column_sums(dy: &[f32], n: usize) -> Vec<f32> {
    let mut acc = vec![0f64; n];
    for row in dy.chunks_exact(n.max(1)) {
        acc.iter_mut().zip(row).for_each(|(a, &v)| *a += v as f64);
    }
    acc.into_iter().map(|a| a as f32).collect()
}

/// (m, k, n) of `x` (.., K) and `w` (N, K), checked.
fn sizes(x: &Layout, w: &Layout) -> Result<(usize, usize, usize)> {
    let (n, kw) = w.shape().dims2()?;
    let k = *x.dims().last().unwrap_or(&0);
    if k != kw || x.dims().is_empty() {
        candle_core::bail!("ablate-linear: input {:?} does not fit weight {:?}", x.dims(), w.dims());
    }
    Ok((x.shape().elem_count() / k.max(1), k, n))
}

fn out_shape(x: &Layout, n: usize) -> Shape {
    let mut d = x.dims().to_vec();
    *d.last_mut().expect("rank >= 1") = n;
    Shape::from(d)
}

struct Linear;

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "ablate-linear"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (m, k, n) = sizes(l1, l2)?;
        let y = forward(f32_slice(s1, l1, self.name())?, f32_slice(s2, l2, self.name())?, m, k, n);
        Ok((CpuStorage::F32(y), out_shape(l1, n)))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = grads(x, w, dy)?;
        Ok((Some(dx), Some(dw)))
    }
}

struct LinearBias;

impl CustomOp3 for LinearBias {
    fn name(&self) -> &'static str {
        "ablate-linear-bias"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let (m, k, n) = sizes(l1, l2)?;
        let bias = f32_slice(s3, l3, self.name())?;
        if bias.len() != n {
            candle_core::bail!("ablate-linear: bias {:?} does not fit weight {:?}", l3.dims(), l2.dims());
        }
        let mut y = forward(f32_slice(s1, l1, self.name())?, f32_slice(s2, l2, self.name())?, m, k, n);
        for row in y.chunks_exact_mut(n.max(1)) {
            row.iter_mut().zip(bias).for_each(|(o, b)| *o += b);
        }
        Ok((CpuStorage::F32(y), out_shape(l1, n)))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, b: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = grads(x, w, dy)?;
        let n = w.dim(0)?;
        let db = with_f32(dy, "ablate-linear", |d| Ok(column_sums(d, n)))?;
        Ok((Some(dx), Some(dw), Some(Tensor::from_vec(db, b.shape(), b.device())?)))
    }
}

fn grads(x: &Tensor, w: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    let (n, k) = w.dims2()?;
    let m = x.elem_count() / k.max(1);
    let (dx, dw) = with_f32(x, "ablate-linear", |xs| with_f32(w, "ablate-linear", |ws| with_f32(dy, "ablate-linear", |ds| Ok(backward(xs, ws, ds, m, k, n)))))?;
    Ok((Tensor::from_vec(dx, x.shape(), x.device())?, Tensor::from_vec(dw, w.shape(), w.device())?))
}

/// `x W^T + b` for f32 CPU tensors: `x` (.., K), `weight` (N, K), `bias` (N) or None.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (x, w) = (x.contiguous()?, weight.contiguous()?);
    match bias {
        None => x.apply_op2(&w, Linear),
        Some(b) => x.apply_op3(&w, &b.contiguous()?, LinearBias),
    }
}

/// `a (m, k) b (k, n)` for 2-D f32 CPU tensors, on faer, without a backward pass (for the
/// optimizer's matrix maths: Muon's Newton-Schulz iterations).
pub fn matmul_2d(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let ((m, k), (kb, n)) = (a.dims2()?, b.dims2()?);
    if k != kb {
        candle_core::bail!("ablate-matmul: {:?} times {:?} does not fit", a.dims(), b.dims());
    }
    let mut y = zeroed(m * n);
    with_f32(a, "ablate-matmul", |av| {
        with_f32(b, "ablate-matmul", |bv| {
            product(&mut y, MatRef::from_row_major_slice(av, m, k), MatRef::from_row_major_slice(bv, k, n));
            Ok(())
        })
    })?;
    Tensor::from_vec(y, (m, n), a.device())
}
