//! Attention fused per (batch, head): `softmax(Q K^T * scale + bias) V` without keeping the
//! (B, H, Nq, Nk) score or probability tensors between forward and backward.
//!
//! Forward, per (b, h) on one rayon task: S = Q K^T * scale + bias_b (faer), row softmax in
//! place, O = P V (faer). Backward recomputes P from Q, K (flash-attention style: compute is
//! cheaper than keeping B*H*Nq*Nk floats alive) and uses the saved output O:
//! dV = P^T dO, dP = dO V^T, dS = P * (dP - rowsum(dO * O)), dQ = dS K * scale,
//! dK = dS^T Q * scale. The bias is an additive key bias (B, Nk) (padding), a constant.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

use super::f32_slice;

/// `dst (m x n, row-major) = scale * A (m x k) B (k x n)` with explicit strides, in faer
/// (its AVX-512 kernels are about 1.4x the `gemm` crate's AVX2 ones at these sizes).
#[allow(clippy::too_many_arguments)]
pub(super) fn mm(m: usize, n: usize, k: usize, dst: &mut [f32], a: &[f32], a_rs: isize, a_cs: isize, b: &[f32], b_rs: isize, b_cs: isize, scale: f32) {
    assert!(dst.len() >= m * n);
    if m * n == 0 {
        return;
    }
    let reach = |rows: usize, cols: usize, rs: isize, cs: isize| (rows.max(1) - 1) as isize * rs + (cols.max(1) - 1) as isize * cs;
    assert!(k == 0 || (reach(m, k, a_rs, a_cs) < a.len() as isize && reach(k, n, b_rs, b_cs) < b.len() as isize), "mm: strides reach past the operands");
    // SAFETY: non-negative strides whose furthest element lies inside each slice (asserted
    // above), and dst does not alias a or b (distinct borrows).
    let (lhs, rhs) = unsafe { (faer::MatRef::from_raw_parts(a.as_ptr(), m, k, a_rs, a_cs), faer::MatRef::from_raw_parts(b.as_ptr(), k, n, b_rs, b_cs)) };
    let out = faer::MatMut::from_row_major_slice_mut(&mut dst[..m * n], m, n);
    faer::linalg::matmul::matmul(out, faer::Accum::Replace, lhs, rhs, scale, faer::Par::Seq);
    super::clear_upper_vector_state();
}

/// Row softmax of `s` (rows of `nk`) in place, in f32 with the max subtracted.
pub(super) fn softmax_rows(s: &mut [f32], nk: usize) {
    s.chunks_mut(nk).for_each(super::fastmath::softmax_row);
}

struct Attention {
    scale: f32,
    /// (B, Nk) additive key bias.
    bias: Option<Arc<Vec<f32>>>,
}

impl Attention {
    /// P for one (b, h): (nq x nk).
    fn probs(&self, q: &[f32], k: &[f32], b: usize, nq: usize, nk: usize, dh: usize) -> Vec<f32> {
        let mut p = vec![0f32; nq * nk];
        mm(nq, nk, dh, &mut p, q, dh as isize, 1, k, 1, dh as isize, self.scale);
        if let Some(bias) = &self.bias {
            let row = &bias[b * nk..(b + 1) * nk];
            for r in p.chunks_mut(nk) {
                r.iter_mut().zip(row).for_each(|(x, y)| *x += y);
            }
        }
        softmax_rows(&mut p, nk);
        p
    }
}

fn dims(l: &Layout) -> Result<(usize, usize, usize, usize)> {
    l.shape().dims4()
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "ablate-attention"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let (q, k, v) = (f32_slice(s1, l1, self.name())?, f32_slice(s2, l2, self.name())?, f32_slice(s3, l3, self.name())?);
        let (b, h, nq, dh) = dims(l1)?;
        let nk = dims(l2)?.2;
        let mut out = vec![0f32; b * h * nq * dh];
        out.par_chunks_mut(nq * dh).enumerate().for_each(|(bh, o)| {
            let qs = &q[bh * nq * dh..(bh + 1) * nq * dh];
            let ks = &k[bh * nk * dh..(bh + 1) * nk * dh];
            let vs = &v[bh * nk * dh..(bh + 1) * nk * dh];
            let p = self.probs(qs, ks, bh / h, nq, nk, dh);
            mm(nq, dh, nk, o, &p, nk as isize, 1, vs, dh as isize, 1, 1.0);
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(&self, q: &Tensor, k: &Tensor, v: &Tensor, out: &Tensor, dout: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, h, nq, dh) = q.dims4()?;
        let nk = k.dim(2)?;
        let flat = |t: &Tensor| t.contiguous()?.flatten_all()?.to_vec1::<f32>();
        let (q_, k_, v_, o_, d_) = (flat(q)?, flat(k)?, flat(v)?, flat(out)?, flat(dout)?);
        let mut dq = vec![0f32; b * h * nq * dh];
        let mut dk = vec![0f32; b * h * nk * dh];
        let mut dv = vec![0f32; b * h * nk * dh];
        dq.par_chunks_mut(nq * dh).zip(dk.par_chunks_mut(nk * dh).zip(dv.par_chunks_mut(nk * dh))).enumerate().for_each(|(bh, (dqs, (dks, dvs)))| {
            let qr = bh * nq * dh..(bh + 1) * nq * dh;
            let kr = bh * nk * dh..(bh + 1) * nk * dh;
            let (qs, ks, vs, os, ds) = (&q_[qr.clone()], &k_[kr.clone()], &v_[kr], &o_[qr.clone()], &d_[qr]);
            let p = self.probs(qs, ks, bh / h, nq, nk, dh);
            // dV = P^T dO
            mm(nk, dh, nq, dvs, &p, 1, nk as isize, ds, dh as isize, 1, 1.0);
            // dP = dO V^T
            let mut dp = vec![0f32; nq * nk];
            mm(nq, nk, dh, &mut dp, ds, dh as isize, 1, vs, 1, dh as isize, 1.0);
            // dS = P * (dP - rowsum(dO * O))
            for i in 0..nq {
                let di: f32 = ds[i * dh..(i + 1) * dh].iter().zip(&os[i * dh..(i + 1) * dh]).map(|(a, b)| a * b).sum();
                for j in 0..nk {
                    dp[i * nk + j] = p[i * nk + j] * (dp[i * nk + j] - di);
                }
            }
            // dQ = dS K * scale; dK = dS^T Q * scale
            mm(nq, dh, nk, dqs, &dp, nk as isize, 1, ks, dh as isize, 1, self.scale);
            mm(nk, dh, nq, dks, &dp, 1, nk as isize, qs, dh as isize, 1, self.scale);
        });
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), dev)?),
            Some(Tensor::from_vec(dk, k.shape(), dev)?),
            Some(Tensor::from_vec(dv, v.shape(), dev)?),
        ))
    }
}

/// Fused attention for contiguous f32 CPU tensors q (B, H, Nq, Dh), k and v (B, H, Nk, Dh);
/// `bias` (B, 1, 1, Nk) additive key bias or None. Returns None when the shapes do not fit
/// (the caller then uses the composed ops).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, bias: Option<&Tensor>) -> Result<Option<Tensor>> {
    let (b, h, _, dh) = q.dims4()?;
    let (kb, kh, nk, kdh) = k.dims4()?;
    if (kb, kh, kdh) != (b, h, dh) || v.dims() != k.dims() {
        return Ok(None);
    }
    let bias = match bias {
        None => None,
        Some(t) if t.dims() == [b, 1, 1, nk] => Some(Arc::new(t.flatten_all()?.to_vec1::<f32>()?)),
        Some(_) => return Ok(None),
    };
    let op = Attention { scale: 1.0 / (dh as f32).sqrt(), bias };
    Ok(Some(q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op)?))
}
