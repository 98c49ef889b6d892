//! The attention's input preparation on CUDA (`qkv.cu`): head split, QK RMSNorms, RoPE of the
//! image queries and keys, and the text-key concatenation in one kernel, forward and
//! backward. `layers::attention_core` uses it on CUDA in place of the composed preparation.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor};

use super::{col_sum, config, cpu_refused, func, launch, same_dtype, unpack, view, with_elem, wrap, QKV};
use crate::kernels::launch as geo;

/// The shapes of one preparation.
#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    heads: usize,
    n: usize,
    t: usize,
    dh: usize,
}

impl Dims {
    fn rows(&self) -> usize {
        self.b * self.heads * (self.n + 2 * (self.n + self.t))
    }
    fn packed(&self) -> usize {
        self.rows() * self.dh
    }
}

/// Forward on (qkv, tkv, weights (3, Dh)) with the RoPE tables held: packed [q | k | v].
struct QkvPrep {
    cos: Tensor,
    sin: Tensor,
    heads: usize,
    eps: f64,
}

impl QkvPrep {
    fn dims(&self, ql: &Layout, tl: &Layout) -> Result<Dims> {
        let (b, n, h3) = ql.shape().dims3()?;
        let (bt, t, h2) = tl.shape().dims3()?;
        let h = h3 / 3;
        if bt != b || h3 != 3 * h || h2 != 2 * h || h % self.heads != 0 || (h / self.heads) % 2 != 0 {
            candle_core::bail!("ablate-qkv-prep: qkv {:?}, tkv {:?} and {} heads do not fit", ql.dims(), tl.dims(), self.heads);
        }
        let d = Dims { b, heads: self.heads, n, t, dh: h / self.heads };
        let fits = |t: &Tensor| t.dims() == [n, d.dh / 2] || t.dims() == [b, n, d.dh / 2];
        if !fits(&self.cos) || self.sin.dims() != self.cos.dims() {
            candle_core::bail!("ablate-qkv-prep: RoPE tables {:?} do not fit {n} tokens of head dim {}", self.cos.dims(), d.dh);
        }
        Ok(d)
    }
}

impl CustomOp3 for QkvPrep {
    fn name(&self) -> &'static str {
        "ablate-qkv-prep"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_refused(self.name())
    }

    fn cuda_fwd(&self, qs: &CudaStorage, ql: &Layout, ts: &CudaStorage, tl: &Layout, ws: &CudaStorage, wl: &Layout) -> Result<(CudaStorage, Shape)> {
        let what = self.name();
        let d = self.dims(ql, tl)?;
        let dev = qs.device().clone();
        let (cg, cl) = self.cos.storage_and_layout();
        let (sg, sl) = self.sin.storage_and_layout();
        let (Storage::Cuda(cs), Storage::Cuda(ss)) = (&*cg, &*sg) else { candle_core::bail!("{what}: RoPE tables not on the CUDA device") };
        let (cv, sv) = (view::<f32>(cs, cl, what)?, view::<f32>(ss, sl, what)?);
        with_elem!(same_dtype(what, &[qs, ts, ws])?, what, T => {
            let (q, t, w) = (view::<T>(qs, ql, what)?, view::<T>(ts, tl, what)?, view::<T>(ws, wl, what)?);
            // SAFETY: every row of the packed output is written by the kernel
            let out = unsafe { dev.alloc::<T>(d.packed())? };
            launch!(&dev, func::<T>(&dev, &QKV, "ablate_qkv_prep_fwd")?, config(geo::rms_rows(d.rows())), q, t, w, cv, sv, out.slice(..), d.b as i64, d.heads as i32, d.n as i32, d.t as i32, d.dh as i32, (self.cos.rank() == 3) as i32, self.eps);
            Ok((wrap(out, &dev), Shape::from(d.packed())))
        })
    }

    fn bwd(&self, qkv: &Tensor, tkv: &Tensor, w: &Tensor, _out: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let op = QkvPrepBwd { fwd: QkvPrep { cos: self.cos.clone(), sin: self.sin.clone(), heads: self.heads, eps: self.eps }, w: w.clone() };
        let p = qkv.apply_op3_no_bwd(tkv, &g.to_dtype(qkv.dtype())?.contiguous()?, &op)?;
        let d = unpack(&p, &[qkv.shape(), tkv.shape(), w.shape()])?;
        Ok((Some(d[0].clone()), Some(d[1].clone()), Some(d[2].clone())))
    }
}

/// Backward on (qkv, tkv, packed gradient) with the weights held: [dqkv | dtkv | dw].
struct QkvPrepBwd {
    fwd: QkvPrep,
    w: Tensor,
}

impl CustomOp3 for QkvPrepBwd {
    fn name(&self) -> &'static str {
        "ablate-qkv-prep-bwd"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_refused(self.name())
    }

    fn cuda_fwd(&self, qs: &CudaStorage, ql: &Layout, ts: &CudaStorage, tl: &Layout, gs: &CudaStorage, gl: &Layout) -> Result<(CudaStorage, Shape)> {
        let what = self.name();
        let d = self.fwd.dims(ql, tl)?;
        let dev = qs.device().clone();
        let (cg, cl) = self.fwd.cos.storage_and_layout();
        let (sg, sl) = self.fwd.sin.storage_and_layout();
        let (wg, wl) = self.w.storage_and_layout();
        let (Storage::Cuda(cs), Storage::Cuda(ss), Storage::Cuda(ws)) = (&*cg, &*sg, &*wg) else { candle_core::bail!("{what}: tables or weights not on the CUDA device") };
        let (nq, nt) = (ql.shape().elem_count(), tl.shape().elem_count());
        let per_weight = d.b * d.heads * d.n.max(d.t);
        let (chunk_rows, chunks) = (geo::chunk_rows(3, per_weight), geo::chunks(3, per_weight));
        let per_sample = (self.fwd.cos.rank() == 3) as i32;
        with_elem!(same_dtype(what, &[qs, ts, gs, ws])?, what, T => {
            let (q, t, g, w) = (|| view::<T>(qs, ql, what), || view::<T>(ts, tl, what), || view::<T>(gs, gl, what), view::<T>(ws, wl, what)?);
            let (cv, sv) = (|| view::<f32>(cs, cl, what), || view::<f32>(ss, sl, what));
            // SAFETY: dqkv, dtkv (every element: each source element feeds exactly one output
            // row) and dw are written below; so are the scratch buffers
            let out = unsafe { dev.alloc::<T>(nq + nt + 3 * d.dh)? };
            let (stats, part) = unsafe { (dev.alloc::<f32>(d.rows())?, dev.alloc::<f32>(3 * chunks * d.dh)?) };
            launch!(&dev, func::<T>(&dev, &QKV, "ablate_qkv_prep_bwd")?, config(geo::rms_rows(d.rows())), q()?, t()?, w, cv()?, sv()?, g()?, out.slice(..nq), out.slice(nq..nq + nt), stats.slice(..), d.b as i64, d.heads as i32, d.n as i32, d.t as i32, d.dh as i32, per_sample, self.fwd.eps);
            launch!(&dev, func::<T>(&dev, &QKV, "ablate_qkv_prep_dw_partials")?, config(geo::column_partials(3, per_weight, d.dh)), q()?, t()?, cv()?, sv()?, g()?, stats.slice(..), part.slice(..), d.b as i64, d.heads as i32, d.n as i32, d.t as i32, d.dh as i32, per_sample, chunk_rows as i32, chunks as i32);
            col_sum!(&dev, T, part.slice(..), out.slice(nq + nt..), 3usize, chunks, d.dh);
            Ok((wrap(out, &dev), Shape::from(nq + nt + 3 * d.dh)))
        })
    }
}

/// (q (B, heads, N, Dh), k (B, heads, N + T, Dh), v (B, heads, N + T, Dh)) of a PRX block's
/// attention from its projections, on CUDA: see the module header. `norms`: the q, image-key
/// and text-key RMSNorm weights (Dh each), cast to the projections' dtype.
pub fn qkv_prep(qkv: &Tensor, tkv: &Tensor, norms: [&Tensor; 3], cos: &Tensor, sin: &Tensor, heads: usize, eps: f64) -> Result<(Tensor, Tensor, Tensor)> {
    let (b, n, h3) = qkv.dims3()?;
    let t = tkv.dim(1)?;
    let dh = h3 / 3 / heads;
    let w = Tensor::stack(&norms.iter().map(|w| w.to_dtype(qkv.dtype())).collect::<Result<Vec<_>>>()?, 0)?;
    let table = |x: &Tensor| x.to_dtype(DType::F32)?.contiguous();
    let op = QkvPrep { cos: table(cos)?, sin: table(sin)?, heads, eps };
    let p = qkv.contiguous()?.apply_op3(&tkv.contiguous()?, &w, op)?;
    let (q, kv) = (Shape::from((b, heads, n, dh)), Shape::from((b, heads, n + t, dh)));
    let parts = unpack(&p, &[&q, &kv, &kv])?;
    Ok((parts[0].clone(), parts[1].clone(), parts[2].clone()))
}
