//! AdamW exactly as PyTorch's `torch.optim.AdamW` (decoupled weight decay, bias correction).

use candle_core::{backprop::GradStore, Result, Tensor};
use std::collections::HashMap;

use super::{OptimConfig, Param};

/// The f32 constants of one AdamW step, rounded from their f64 definitions once: the CPU
/// fused update and the CUDA kernel (`kernels/cuda/adamw.cu`) both take them from here, so
/// they compute the same f32 operations on the same operands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamwScalars {
    pub b1: f32,
    /// 1 - beta1
    pub c1: f32,
    pub b2: f32,
    /// 1 - beta2
    pub c2: f32,
    /// 1 / (1 - beta1^t)
    pub inv_bc1: f32,
    /// 1 / (1 - beta2^t)
    pub inv_bc2: f32,
    pub eps: f32,
    /// 1 - lr * weight_decay, or None without weight decay.
    pub decay: Option<f32>,
    pub lr: f32,
}

impl AdamwScalars {
    /// `bc1`, `bc2`: the bias corrections 1 - beta^t of this step.
    pub fn new(beta1: f64, beta2: f64, eps: f64, weight_decay: f64, lr: f64, bc1: f64, bc2: f64) -> Self {
        Self {
            b1: beta1 as f32,
            c1: (1.0 - beta1) as f32,
            b2: beta2 as f32,
            c2: (1.0 - beta2) as f32,
            inv_bc1: (1.0 / bc1) as f32,
            inv_bc2: (1.0 / bc2) as f32,
            eps: eps as f32,
            decay: (weight_decay > 0.0).then_some((1.0 - lr * weight_decay) as f32),
            lr: lr as f32,
        }
    }

    /// The bias corrections of step `t` (1-based).
    pub fn corrections(beta1: f64, beta2: f64, t: usize) -> (f64, f64) {
        (1.0 - beta1.powi(t as i32), 1.0 - beta2.powi(t as i32))
    }
}

/// `t` with storage of its own where the multi-tensor kernel updates moments in place (CUDA),
/// so moments handed out (checkpoints) or taken in (resume) are never shared with a live
/// buffer; a cheap handle elsewhere, where every update makes new tensors.
fn owned(t: &Tensor) -> Result<Tensor> {
    if t.device().is_cuda() {
        t.copy()
    } else {
        Ok(t.clone())
    }
}

pub struct AdamW {
    params: Vec<Param>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    pub t: usize,
    beta1: f64,
    beta2: f64,
    eps: f64,
    wd: f64,
}

impl AdamW {
    pub fn new(cfg: &OptimConfig, params: Vec<Param>) -> Result<Self> {
        let m = params.iter().map(|p| p.var.as_tensor().zeros_like()).collect::<Result<Vec<_>>>()?;
        let v = params.iter().map(|p| p.var.as_tensor().zeros_like()).collect::<Result<Vec<_>>>()?;
        Ok(Self { params, m, v, t: 0, beta1: cfg.beta1, beta2: cfg.beta2, eps: cfg.eps, wd: cfg.weight_decay })
    }

    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.t += 1;
        #[cfg(feature = "cuda")]
        if self.cuda_step(grads, lr)? {
            return Ok(());
        }
        let (bc1, bc2) = AdamwScalars::corrections(self.beta1, self.beta2, self.t);
        let this = &*self;
        let moments = super::per_param(&self.params, |i, p| {
            let Some(g) = grads.get(p.var.as_tensor()) else { return Ok(None) };
            let w = p.var.as_tensor();
            // detach: gradients carry the backward graph, which the moments would keep alive
            let g = g.to_dtype(w.dtype())?.detach();
            let (nw, nm, nv) = if crate::kernels::applies(w) && g.dims() == w.dims() {
                this.fused(w, &g, &this.m[i], &this.v[i], lr, bc1, bc2)?
            } else {
                this.composed(w, &g, &this.m[i], &this.v[i], lr, bc1, bc2)?
            };
            p.var.set(&nw)?;
            Ok(Some((nm, nv)))
        })?;
        for (i, mv) in moments.into_iter().enumerate() {
            if let Some((m, v)) = mv {
                self.m[i] = m;
                self.v[i] = v;
            }
        }
        Ok(())
    }

    /// The f32 constants of this step (`self.t` already counts it) at learning rate `lr`.
    #[cfg(feature = "cuda")]
    fn scalars(&self, lr: f64) -> AdamwScalars {
        let (bc1, bc2) = AdamwScalars::corrections(self.beta1, self.beta2, self.t);
        AdamwScalars::new(self.beta1, self.beta2, self.eps, self.wd, lr, bc1, bc2)
    }

    /// The multi-tensor kernels' table of the parameters that have a gradient (None inside
    /// when there is nothing to update), with the tensors it points into, when every weight,
    /// gradient (detached, contiguous) and moment is f32 on one CUDA device
    /// (`kernels::cuda::adamw`); None where the kernels do not apply.
    #[cfg(feature = "cuda")]
    #[allow(clippy::type_complexity)]
    fn cuda_table(&self, grads: &GradStore) -> Result<Option<(Vec<[Tensor; 4]>, Option<crate::kernels::cuda::adamw::Table>)>> {
        let mut rows = Vec::with_capacity(self.params.len());
        for (i, p) in self.params.iter().enumerate() {
            let Some(g) = grads.get(p.var.as_tensor()) else { continue };
            let w = p.var.as_tensor();
            if g.dims() != w.dims() || g.dtype() != w.dtype() {
                return Ok(None);
            }
            rows.push([w.clone(), g.detach().contiguous()?, self.m[i].clone(), self.v[i].clone()]);
        }
        let all: Vec<&Tensor> = rows.iter().flatten().collect();
        if !crate::kernels::cuda::adamw::applies(&all) {
            return Ok(None);
        }
        let pick = |k: usize| rows.iter().map(|r| &r[k]).collect::<Vec<&Tensor>>();
        let table = crate::kernels::cuda::adamw::table(&pick(0), &pick(1), &pick(2), &pick(3))?;
        Ok(Some((rows, table)))
    }

    /// All parameters in one multi-tensor kernel launch, in place, on CUDA (`self.t` already
    /// counts the step); false (nothing changed) where the kernel does not apply.
    #[cfg(feature = "cuda")]
    fn cuda_step(&self, grads: &GradStore, lr: f64) -> Result<bool> {
        let Some((_rows, table)) = self.cuda_table(grads)? else { return Ok(false) };
        if let Some(t) = table {
            t.update(self.scalars(lr), None)?;
        }
        Ok(true)
    }

    /// Gradient-norm clipping and the update in two kernels on the device (no per-tensor
    /// scaling pass): the global norm and clip factor are computed there, the norm read back,
    /// and unless it is non-finite the update runs with the gradients scaled by the factor.
    /// Returns (norm, whether the weights were updated), or None where the kernels do not
    /// apply (nothing done).
    #[cfg(feature = "cuda")]
    pub fn cuda_clip_and_step(&mut self, grads: &GradStore, max_norm: f64, lr: f64) -> Result<Option<(f64, bool)>> {
        let Some((_rows, Some(t))) = self.cuda_table(grads)? else { return Ok(None) };
        let (norm, clip) = t.clip(max_norm)?;
        if !norm.is_finite() {
            return Ok(Some((norm, false)));
        }
        self.t += 1;
        t.update(self.scalars(lr), Some(&clip))?;
        Ok(Some((norm, true)))
    }

    /// One parameter's update as candle ops: (new weight, m, v).
    #[allow(clippy::too_many_arguments)]
    fn composed(&self, w: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, lr: f64, bc1: f64, bc2: f64) -> Result<(Tensor, Tensor, Tensor)> {
        let m = ((m * self.beta1)? + (g * (1.0 - self.beta1))?)?;
        let v = ((v * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
        let denom = ((&v / bc2)?.sqrt()? + self.eps)?;
        let update = ((&m / bc1)? / denom)?;
        let decayed = if self.wd > 0.0 { (w * (1.0 - lr * self.wd))? } else { w.clone() };
        Ok(((decayed - (update * lr)?)?, m, v))
    }

    /// One parameter's update in one pass over (w, g, m, v) for f32 CPU tensors: the same
    /// f32 operations in the same order as the composed update above (candle's `x * f64`,
    /// `x / f64` and `x + f64` are `x * c + 0` with c rounded to f32), so the results agree
    /// bit for bit, without the nine intermediate tensors.
    #[allow(clippy::too_many_arguments)]
    fn fused(&self, w: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, lr: f64, bc1: f64, bc2: f64) -> Result<(Tensor, Tensor, Tensor)> {
        use crate::kernels::with_f32;
        use rayon::prelude::*;
        let AdamwScalars { b1, c1, b2, c2, inv_bc1, inv_bc2, eps, decay, lr } = AdamwScalars::new(self.beta1, self.beta2, self.eps, self.wd, lr, bc1, bc2);
        let n = w.elem_count();
        let (mut nw, mut nm, mut nv) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
        with_f32(w, "adamw", |ws| {
            with_f32(g, "adamw", |gs| {
                with_f32(m, "adamw", |ms| {
                    with_f32(v, "adamw", |vs| {
                        const CHUNK: usize = 16_384;
                        nw.par_chunks_mut(CHUNK).zip(nm.par_chunks_mut(CHUNK)).zip(nv.par_chunks_mut(CHUNK)).enumerate().for_each(|(c, ((ow, om), ov))| {
                            let at = c * CHUNK;
                            for k in 0..ow.len() {
                                let (wk, gk) = (ws[at + k], gs[at + k]);
                                let mk = ms[at + k] * b1 + 0.0 + (gk * c1 + 0.0);
                                let vk = vs[at + k] * b2 + 0.0 + ((gk * gk) * c2 + 0.0);
                                let denom = (vk * inv_bc2 + 0.0).sqrt() * 1.0 + eps;
                                let update = (mk * inv_bc1 + 0.0) / denom;
                                let decayed = match decay {
                                    Some(d) => wk * d + 0.0,
                                    None => wk,
                                };
                                ow[k] = decayed - (update * lr + 0.0);
                                om[k] = mk;
                                ov[k] = vk;
                            }
                        });
                        Ok(())
                    })
                })
            })
        })?;
        let dev = w.device();
        Ok((Tensor::from_vec(nw, w.shape(), dev)?, Tensor::from_vec(nm, w.shape(), dev)?, Tensor::from_vec(nv, w.shape(), dev)?))
    }

    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (i, p) in self.params.iter().enumerate() {
            out.insert(format!("adamw.m.{}", p.name), owned(&self.m[i])?);
            out.insert(format!("adamw.v.{}", p.name), owned(&self.v[i])?);
        }
        out.insert("adamw.t".into(), Tensor::new(&[self.t as i64], &candle_core::Device::Cpu)?);
        Ok(out)
    }

    pub fn load_state(&mut self, t: &HashMap<String, Tensor>) -> Result<()> {
        for (i, p) in self.params.iter().enumerate() {
            for (kind, slot) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let key = format!("adamw.{kind}.{}", p.name);
                let s = t.get(&key).ok_or_else(|| candle_core::Error::Msg(format!("checkpoint lacks optimizer state \"{key}\"")))?;
                *slot = owned(&s.to_dtype(slot.dtype())?.to_device(slot.device())?)?;
            }
        }
        let step = t.get("adamw.t").ok_or_else(|| candle_core::Error::Msg("checkpoint lacks \"adamw.t\"".into()))?;
        self.t = step.to_vec1::<i64>()?[0] as usize;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    /// Numbers from PyTorch 2.15.0 (CPU), produced by:
    /// ```python
    /// import torch
    /// w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    /// opt = torch.optim.AdamW([w], lr=0.1, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    /// for _ in range(3):
    ///     opt.zero_grad(); loss = (w ** 2 * torch.tensor([1.0, 0.5, 0.25])).sum(); loss.backward(); opt.step()
    /// print(w.tolist())  # [0.6745544075965881, -1.6440805196762085, 2.6142003536224365]
    /// ```
    #[test]
    fn matches_pytorch_adamw() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::new(&[1f32, -2.0, 3.0], &dev)?;
        let cfg = OptimConfig { lr: 0.1, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, ..Default::default() };
        let mut opt = AdamW::new(&cfg, vec![Param { name: "w".into(), var: w.clone() }])?;
        let c = Tensor::new(&[1f32, 0.5, 0.25], &dev)?;
        for _ in 0..3 {
            let loss = (w.as_tensor().sqr()? * &c)?.sum_all()?;
            opt.step(&loss.backward()?, 0.1)?;
        }
        let got = w.as_tensor().to_vec1::<f32>()?;
        let want = [0.674_554_4_f32, -1.644_080_5, 2.614_200_4];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{got:?} vs {want:?}");
        }
        assert_eq!(w.as_tensor().dtype(), DType::F32);
        // the moments must not keep the backward graph of past steps alive (memory leak)
        for (k, t) in opt.state()? {
            assert!(!t.track_op(), "optimizer state {k} holds a graph");
        }
        Ok(())
    }

    /// The fused f32 update is the composed one, bit for bit, with and without weight decay.
    #[test]
    fn fused_update_equals_the_composed_one_exactly() -> Result<()> {
        let dev = Device::Cpu;
        let rand = |seed: u64, scale: f64| -> Result<Tensor> { Tensor::from_vec(crate::rng::Rng::new(seed).normal_vec(40_000), 40_000, &dev)? * scale };
        for wd in [0.0, 0.1] {
            let cfg = OptimConfig { lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-15, weight_decay: wd, ..Default::default() };
            let opt = AdamW::new(&cfg, vec![])?;
            let (w, g, m) = (rand(1, 1.0)?, rand(2, 0.1)?, rand(3, 0.01)?);
            let v = rand(4, 0.01)?.sqr()?;
            let a = opt.fused(&w, &g, &m, &v, 1e-3, 0.3, 0.2)?;
            let b = opt.composed(&w, &g, &m, &v, 1e-3, 0.3, 0.2)?;
            for (x, y) in [(a.0, b.0), (a.1, b.1), (a.2, b.2)] {
                assert_eq!(x.to_vec1::<f32>()?, y.to_vec1::<f32>()?);
            }
        }
        Ok(())
    }
}
