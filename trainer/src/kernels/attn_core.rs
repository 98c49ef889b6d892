//! The attention core of the PRX block as one op: from the packed image `qkv` projection and
//! the packed text `kv` projection to the attention output in token-major layout, ready for
//! the output projection.
//!
//! Composed, this is about thirty graph nodes per block (three narrow/transpose/copy chains,
//! two concatenations, QK RMSNorm, RoPE, attention, a transpose back), each with its own
//! copy in forward and a zero-filled gradient plus an addition in backward. Here, for each
//! sample and head: gather the head's rows, RMSNorm them with their weight (queries, image
//! keys, text keys), rotate image queries and keys, attend over image + text keys with the
//! padding bias, and write the head's output columns. Backward reuses forward's normalised
//! heads and probabilities (the op keeps them; on CPU a few MB per block cost less than
//! computing them again) and writes the gradients straight into the packed layouts. One
//! rayon task per sample, so each task owns whole rows of every output.
//!
//! Layouts: `qkv` (B, N, 3 H Dh) with (part, head, dim) fastest, `tkv` (B, T, 2 H Dh) the
//! same with parts (k, v), `norms` (3, Dh) the weights of q, k and text k, output
//! (B, N, H Dh).

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

use super::attention::{mm, softmax_rows};
use super::rms::rstd;
use super::{f32_slice, with_f32};

/// The most forward keeps per op for backward (heads and probabilities); above it, backward
/// recomputes them.
const KEEP_LIMIT_BYTES: usize = 256 << 20;

struct AttnCore {
    heads: usize,
    eps: f64,
    /// RoPE tables (N, Dh/2) shared, or (B, N, Dh/2) per sample.
    cos: Arc<Vec<f32>>,
    sin: Arc<Vec<f32>>,
    per_sample_rope: bool,
    /// (B, N + T) additive key bias (text padding).
    bias: Option<Arc<Vec<f32>>>,
    /// What forward computed, per sample and head, for backward to reuse instead of
    /// recomputing: the normalised heads and the probabilities (B H N (N + T) floats, a few
    /// MB per block at CPU sizes).
    saved: std::sync::Mutex<Option<Vec<Vec<(Head, Vec<f32>)>>>>,
}

/// Shapes of one call.
#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    n: usize,
    t: usize,
    h: usize,
    dh: usize,
}

impl Dims {
    fn nk(&self) -> usize {
        self.n + self.t
    }
    fn width(&self) -> usize {
        self.h * self.dh
    }
}

/// One sample and head, normalised and rotated: queries (N, Dh), keys and values of image
/// then text tokens ((N + T), Dh), and the reciprocal RMS of every normalised row.
struct Head {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    rq: Vec<f32>,
    rk: Vec<f32>,
}

impl AttnCore {
    fn dims(&self, qkv: &Layout, tkv: &Layout, norms: &Layout) -> Result<Dims> {
        let (b, n, w3) = qkv.shape().dims3()?;
        let (tb, t, w2) = tkv.shape().dims3()?;
        let (three, dh) = norms.shape().dims2()?;
        let h = self.heads;
        if tb != b || w3 != 3 * h * dh || w2 != 2 * h * dh || three != 3 {
            candle_core::bail!("ablate-attn-core: qkv {:?}, text kv {:?} and norms {:?} do not fit {h} heads", qkv.dims(), tkv.dims(), norms.dims());
        }
        let half = dh / 2;
        let table = if self.per_sample_rope { b * n * half } else { n * half };
        if dh % 2 != 0 || self.cos.len() != table || self.sin.len() != table {
            candle_core::bail!("ablate-attn-core: RoPE tables of {} values do not fit {n} tokens of head dim {dh}", self.cos.len());
        }
        if self.bias.as_ref().is_some_and(|bias| bias.len() != b * (n + t)) {
            candle_core::bail!("ablate-attn-core: the key bias does not fit {b} x {} keys", n + t);
        }
        Ok(Dims { b, n, t, h, dh })
    }

    /// (cos, sin) rows of image token `i` of sample `b`.
    fn table(&self, d: Dims, b: usize, i: usize) -> (&[f32], &[f32]) {
        let half = d.dh / 2;
        let at = if self.per_sample_rope { (b * d.n + i) * half } else { i * half };
        (&self.cos[at..at + half], &self.sin[at..at + half])
    }

    /// Normalises (and for image tokens rotates) one head of sample `b`.
    fn head(&self, d: Dims, qkv: &[f32], tkv: &[f32], norms: &[f32], b: usize, head: usize) -> Head {
        let (n, t, dh, w) = (d.n, d.t, d.dh, d.width());
        let nk = d.nk();
        let mut hd = Head { q: vec![0f32; n * dh], k: vec![0f32; nk * dh], v: vec![0f32; nk * dh], rq: vec![0f32; n], rk: vec![0f32; nk] };
        let (wq, wk, wt) = (&norms[..dh], &norms[dh..2 * dh], &norms[2 * dh..3 * dh]);
        let col = head * dh;
        for i in 0..n {
            let row = &qkv[(b * n + i) * 3 * w..(b * n + i + 1) * 3 * w];
            let (cos, sin) = self.table(d, b, i);
            for (part, dst, rs, wt_) in [(0, &mut hd.q, &mut hd.rq, wq), (1, &mut hd.k, &mut hd.rk, wk)] {
                let x = &row[part * w + col..part * w + col + dh];
                let r = rstd(x, self.eps);
                rs[i] = r;
                let o = &mut dst[i * dh..(i + 1) * dh];
                for (((o, xp), wp), (&c, &s)) in o.chunks_exact_mut(2).zip(x.chunks_exact(2)).zip(wt_.chunks_exact(2)).zip(cos.iter().zip(sin)) {
                    let (a0, a1) = (xp[0] * r * wp[0], xp[1] * r * wp[1]);
                    o[0] = a0 * c - a1 * s;
                    o[1] = a0 * s + a1 * c;
                }
            }
            hd.v[i * dh..(i + 1) * dh].copy_from_slice(&row[2 * w + col..2 * w + col + dh]);
        }
        for j in 0..t {
            let row = &tkv[(b * t + j) * 2 * w..(b * t + j + 1) * 2 * w];
            let x = &row[col..col + dh];
            let r = rstd(x, self.eps);
            hd.rk[n + j] = r;
            for ((o, &xv), &wv) in hd.k[(n + j) * dh..(n + j + 1) * dh].iter_mut().zip(x).zip(wt) {
                *o = xv * r * wv;
            }
            hd.v[(n + j) * dh..(n + j + 1) * dh].copy_from_slice(&row[w + col..w + col + dh]);
        }
        hd
    }

    /// Softmax probabilities (N, N + T) of one head.
    fn probs(&self, d: Dims, hd: &Head, b: usize) -> Vec<f32> {
        let (n, nk, dh) = (d.n, d.nk(), d.dh);
        let mut p = vec![0f32; n * nk];
        mm(n, nk, dh, &mut p, &hd.q, dh as isize, 1, &hd.k, 1, dh as isize, 1.0 / (dh as f32).sqrt());
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

/// Backward of `y = rope(x * r * w)` (rope optional) for one row: `g` is dL/dy. Writes dL/dx
/// into `dx` and adds dL/dw into `dw`.
/// `gu` is scratch of the row's length.
#[allow(clippy::too_many_arguments)]
fn norm_row_backward(x: &[f32], r: f32, w: &[f32], g: &[f32], rope: Option<(&[f32], &[f32])>, dx: &mut [f32], dw: &mut [f64], gu: &mut [f32]) {
    let dh = x.len();
    // un-rotate the gradient: the rotation is orthogonal, its transpose rotates back
    match rope {
        Some((cos, sin)) => {
            for ((o, gp), (&c, &s)) in gu.chunks_exact_mut(2).zip(g.chunks_exact(2)).zip(cos.iter().zip(sin)) {
                o[0] = gp[0] * c + gp[1] * s;
                o[1] = -gp[0] * s + gp[1] * c;
            }
        }
        None => gu.copy_from_slice(g),
    }
    // gu becomes dL/d(x_hat) = gu * w; dx holds x_hat until the last loop
    for ((((gk, xh), dw), &xk), &wk) in gu.iter_mut().zip(dx.iter_mut()).zip(dw.iter_mut()).zip(x).zip(w) {
        *xh = xk * r;
        *dw += (*gk * *xh) as f64;
        *gk *= wk;
    }
    let m = (super::reduce::dot(gu, dx) / dh as f64) as f32;
    for (o, &gk) in dx.iter_mut().zip(gu.iter()) {
        *o = r * (gk - *o * m);
    }
}

impl CustomOp3 for AttnCore {
    fn name(&self) -> &'static str {
        "ablate-attn-core"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = self.dims(l1, l2, l3)?;
        let (qkv, tkv, norms) = (f32_slice(s1, l1, self.name())?, f32_slice(s2, l2, self.name())?, f32_slice(s3, l3, self.name())?);
        let (n, dh, w) = (d.n, d.dh, d.width());
        let mut out = vec![0f32; d.b * n * w];
        // keep what backward needs unless it is large (long sequences): then recompute
        let keep_all = d.b * d.h * (n * d.nk() + 3 * d.nk() * dh) * 4 <= KEEP_LIMIT_BYTES;
        let saved: Vec<Vec<(Head, Vec<f32>)>> = out
            .par_chunks_mut((n * w).max(1))
            .enumerate()
            .map(|(b, ob)| {
                let mut o = vec![0f32; n * dh];
                let mut keep = Vec::with_capacity(d.h);
                for head in 0..d.h {
                    let hd = self.head(d, qkv, tkv, norms, b, head);
                    let p = self.probs(d, &hd, b);
                    mm(n, dh, d.nk(), &mut o, &p, d.nk() as isize, 1, &hd.v, dh as isize, 1, 1.0);
                    for i in 0..n {
                        ob[i * w + head * dh..i * w + (head + 1) * dh].copy_from_slice(&o[i * dh..(i + 1) * dh]);
                    }
                    if keep_all {
                        keep.push((hd, p));
                    }
                }
                keep
            })
            .collect();
        *self.saved.lock().unwrap_or_else(|e| e.into_inner()) = Some(saved);
        Ok((CpuStorage::F32(out), Shape::from((d.b, n, w))))
    }

    fn bwd(&self, qkv: &Tensor, tkv: &Tensor, norms: &Tensor, out: &Tensor, dout: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let name = self.name();
        let (dqkv, dtkv, dnorms) = with_f32(qkv, name, |qkv_s| {
            with_f32(tkv, name, |tkv_s| {
                with_f32(norms, name, |norm_s| {
                    with_f32(out, name, |out_s| {
                        with_f32(dout, name, |dout_s| {
                            let d = Dims { b: qkv.dim(0)?, n: qkv.dim(1)?, t: tkv.dim(1)?, h: self.heads, dh: norms.dim(1)? };
                            Ok(self.backward(d, qkv_s, tkv_s, norm_s, out_s, dout_s))
                        })
                    })
                })
            })
        })?;
        let dev = qkv.device();
        Ok((
            Some(Tensor::from_vec(dqkv, qkv.shape(), dev)?),
            Some(Tensor::from_vec(dtkv, tkv.shape(), dev)?),
            Some(Tensor::from_vec(dnorms, norms.shape(), dev)?),
        ))
    }
}

impl AttnCore {
    fn backward(&self, d: Dims, qkv: &[f32], tkv: &[f32], norms: &[f32], out: &[f32], dout: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (n, t, dh, w, nk) = (d.n, d.t, d.dh, d.width(), d.nk());
        let scale = 1.0 / (dh as f32).sqrt();
        let mut dqkv = vec![0f32; d.b * n * 3 * w];
        let mut dtkv = vec![0f32; d.b * t * 2 * w];
        let (wq, wk, wt) = (&norms[..dh], &norms[dh..2 * dh], &norms[2 * dh..3 * dh]);
        // forward's heads and probabilities, or nothing (then recomputed)
        let saved = self.saved.lock().unwrap_or_else(|e| e.into_inner()).take().filter(|s| s.len() == d.b).unwrap_or_else(|| (0..d.b).map(|_| Vec::new()).collect());
        let partial: Vec<Vec<f64>> = dqkv
            .par_chunks_mut((n * 3 * w).max(1))
            .zip(dtkv.par_chunks_mut((t * 2 * w).max(1)))
            .zip(saved.into_par_iter())
            .enumerate()
            .map(|(b, ((dq_b, dt_b), saved_b))| {
                let mut saved_b = saved_b.into_iter();
                let mut dnorm = vec![0f64; 3 * dh];
                let mut scratch = vec![0f32; dh];
                let (mut o, mut g) = (vec![0f32; n * dh], vec![0f32; n * dh]);
                let (mut dv, mut dp, mut dq, mut dk) = (vec![0f32; nk * dh], vec![0f32; n * nk], vec![0f32; n * dh], vec![0f32; nk * dh]);
                for head in 0..d.h {
                    let col = head * dh;
                    let (hd, mut p) = match saved_b.next() {
                        Some(kept) => kept,
                        None => {
                            let hd = self.head(d, qkv, tkv, norms, b, head);
                            let p = self.probs(d, &hd, b);
                            (hd, p)
                        }
                    };
                    for i in 0..n {
                        let at = (b * n + i) * w + col;
                        o[i * dh..(i + 1) * dh].copy_from_slice(&out[at..at + dh]);
                        g[i * dh..(i + 1) * dh].copy_from_slice(&dout[at..at + dh]);
                    }
                    // dV = P^T dO; dP = dO V^T; dS = P * (dP - rowsum(dO * O))
                    mm(nk, dh, n, &mut dv, &p, 1, nk as isize, &g, dh as isize, 1, 1.0);
                    mm(n, nk, dh, &mut dp, &g, dh as isize, 1, &hd.v, 1, dh as isize, 1.0);
                    for i in 0..n {
                        let di: f32 = g[i * dh..(i + 1) * dh].iter().zip(&o[i * dh..(i + 1) * dh]).map(|(a, b)| a * b).sum();
                        for (pv, &dpv) in p[i * nk..(i + 1) * nk].iter_mut().zip(&dp[i * nk..(i + 1) * nk]) {
                            *pv *= dpv - di;
                        }
                    }
                    // p now holds dS: dQ = dS K * scale; dK = dS^T Q * scale
                    mm(n, dh, nk, &mut dq, &p, nk as isize, 1, &hd.k, dh as isize, 1, scale);
                    mm(nk, dh, n, &mut dk, &p, 1, nk as isize, &hd.q, dh as isize, 1, scale);
                    let (dn_q, rest) = dnorm.split_at_mut(dh);
                    let (dn_k, dn_t) = rest.split_at_mut(dh);
                    for i in 0..n {
                        let row = &qkv[(b * n + i) * 3 * w..(b * n + i + 1) * 3 * w];
                        let drow = &mut dq_b[i * 3 * w..(i + 1) * 3 * w];
                        let rope = Some(self.table(d, b, i));
                        norm_row_backward(&row[col..col + dh], hd.rq[i], wq, &dq[i * dh..(i + 1) * dh], rope, &mut drow[col..col + dh], dn_q, &mut scratch);
                        norm_row_backward(&row[w + col..w + col + dh], hd.rk[i], wk, &dk[i * dh..(i + 1) * dh], rope, &mut drow[w + col..w + col + dh], dn_k, &mut scratch);
                        drow[2 * w + col..2 * w + col + dh].copy_from_slice(&dv[i * dh..(i + 1) * dh]);
                    }
                    for j in 0..t {
                        let row = &tkv[(b * t + j) * 2 * w..(b * t + j + 1) * 2 * w];
                        let drow = &mut dt_b[j * 2 * w..(j + 1) * 2 * w];
                        let kj = n + j;
                        norm_row_backward(&row[col..col + dh], hd.rk[kj], wt, &dk[kj * dh..(kj + 1) * dh], None, &mut drow[col..col + dh], dn_t, &mut scratch);
                        drow[w + col..w + col + dh].copy_from_slice(&dv[kj * dh..(kj + 1) * dh]);
                    }
                }
                dnorm
            })
            .collect();
        let dnorms = (0..3 * dh).map(|k| partial.iter().map(|p| p[k]).sum::<f64>() as f32).collect();
        (dqkv, dtkv, dnorms)
    }
}

/// The attention core for f32 CPU tensors: `qkv` (B, N, 3 H Dh), `tkv` (B, T, 2 H Dh),
/// `norms` (3, Dh) = the RMSNorm weights of queries, image keys and text keys, RoPE tables
/// `cos`, `sin` of (N, Dh/2) or (B, N, Dh/2), `bias` (B, 1, 1, N + T) or None. Returns
/// (B, N, H Dh). Odd head dims are refused (None: the caller composes instead).
#[allow(clippy::too_many_arguments)]
pub fn attn_core(qkv: &Tensor, tkv: &Tensor, norms: &Tensor, cos: &Tensor, sin: &Tensor, bias: Option<&Tensor>, heads: usize, eps: f64) -> Result<Option<Tensor>> {
    let (b, n, _) = qkv.dims3()?;
    let t = tkv.dim(1)?;
    let dh = norms.dim(1)?;
    if dh % 2 != 0 {
        return Ok(None);
    }
    let bias = match bias {
        None => None,
        Some(x) if x.dims() == [b, 1, 1, n + t] => Some(Arc::new(x.flatten_all()?.to_vec1::<f32>()?)),
        Some(_) => return Ok(None),
    };
    let op = AttnCore {
        heads,
        eps,
        cos: Arc::new(cos.flatten_all()?.to_vec1::<f32>()?),
        sin: Arc::new(sin.flatten_all()?.to_vec1::<f32>()?),
        per_sample_rope: cos.rank() == 3,
        bias,
        saved: std::sync::Mutex::new(None),
    };
    Ok(Some(qkv.contiguous()?.apply_op3(&tkv.contiguous()?, &norms.contiguous()?, op)?))
}
