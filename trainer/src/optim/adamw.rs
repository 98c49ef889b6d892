//! AdamW exactly as PyTorch's `torch.optim.AdamW` (decoupled weight decay, bias correction).

use candle_core::{backprop::GradStore, Result, Tensor};
use std::collections::HashMap;

use super::{OptimConfig, Param};

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
        let bc1 = 1.0 - self.beta1.powi(self.t as i32);
        let bc2 = 1.0 - self.beta2.powi(self.t as i32);
        for (i, p) in self.params.iter().enumerate() {
            let Some(g) = grads.get(p.var.as_tensor()) else { continue };
            let w = p.var.as_tensor();
            // detach: gradients carry the backward graph, which the moments would keep alive
            let g = g.to_dtype(w.dtype())?.detach();
            let m = ((&self.m[i] * self.beta1)? + (&g * (1.0 - self.beta1))?)?;
            let v = ((&self.v[i] * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let denom = ((&v / bc2)?.sqrt()? + self.eps)?;
            let update = ((&m / bc1)? / denom)?;
            let decayed = if self.wd > 0.0 { (w * (1.0 - lr * self.wd))? } else { w.clone() };
            p.var.set(&(decayed - (update * lr)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (i, p) in self.params.iter().enumerate() {
            out.insert(format!("adamw.m.{}", p.name), self.m[i].clone());
            out.insert(format!("adamw.v.{}", p.name), self.v[i].clone());
        }
        out.insert("adamw.t".into(), Tensor::new(&[self.t as i64], &candle_core::Device::Cpu)?);
        Ok(out)
    }

    pub fn load_state(&mut self, t: &HashMap<String, Tensor>) -> Result<()> {
        for (i, p) in self.params.iter().enumerate() {
            for (kind, slot) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let key = format!("adamw.{kind}.{}", p.name);
                let s = t.get(&key).ok_or_else(|| candle_core::Error::Msg(format!("checkpoint lacks optimizer state \"{key}\"")))?;
                *slot = s.to_dtype(slot.dtype())?.to_device(slot.device())?;
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
}
