//! Optimizers with state we own (candle-nn's AdamW hides its moments, so it can be neither
//! checkpointed nor inspected): AdamW, and Muon for the 2-D weight matrices inside the
//! transformer blocks with AdamW for everything else. Plus global grad-norm clipping, the
//! warm-up-then-constant schedule of PRX (or a cosine, linear or warmup-stable-decay schedule
//! after the warm-up), and
//! an optional EMA of the weights.
//!
//! Updates run in each parameter's own dtype: with fp32 master weights that is fp32; in the
//! "bf16-stored weights" arm the weights and moments are bf16 and small updates round away,
//! which is exactly the bug PRX Part 2 measured.

pub mod adamw;
pub mod muon;

use candle_core::{backprop::GradStore, DType, Result, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

pub use adamw::{AdamW, AdamwScalars};
pub use muon::{newton_schulz5, Muon};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OptimKind {
    #[default]
    Adamw,
    Muon,
}

/// The learning rate after the warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LrDecay {
    /// Constant (PRX).
    #[default]
    None,
    /// Half a cosine from `lr` down to `lr * min_lr_ratio` at the last step.
    Cosine,
    /// A straight line from `lr` down to `lr * min_lr_ratio` at the last step.
    Linear,
    /// Warmup-stable-decay: `lr` held until the last `cooldown_steps`, then a straight line
    /// down to `lr * min_lr_ratio` at the last step. Until its cooldown the rate does not
    /// depend on the run's length: runs of any length share the stable phase (a longer run's
    /// steps are a shorter one's up to the shorter one's cooldown).
    Wsd,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    pub kind: OptimKind,
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Global grad-norm clip (0 = off).
    pub grad_clip: f64,
    pub warmup_steps: usize,
    /// The schedule after the warm-up.
    pub decay: LrDecay,
    /// Where a decay ends, as a fraction of `lr`.
    pub min_lr_ratio: f64,
    /// The steps of a `wsd` schedule's final decay.
    pub cooldown_steps: usize,
    /// Muon momentum (Nesterov).
    pub muon_momentum: f64,
    /// EMA decay; when on, samples are drawn with the EMA weights (0 = off, the PRX baseline).
    pub ema_decay: f64,
}

impl Default for OptimConfig {
    /// The PRX baseline: AdamW lr 1e-4, betas (0.9, 0.95), eps 1e-15, no weight decay, clip 0.2.
    fn default() -> Self {
        Self {
            kind: OptimKind::Adamw,
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-15,
            weight_decay: 0.0,
            grad_clip: 0.2,
            warmup_steps: 1000,
            decay: LrDecay::None,
            min_lr_ratio: 0.1,
            cooldown_steps: 0,
            muon_momentum: 0.95,
            ema_decay: 0.0,
        }
    }
}

impl OptimConfig {
    /// The rate of step `step` (from 0) of `total`: a linear warm-up from lr/warmup, then
    /// constant or decaying to `lr * min_lr_ratio` at the last step.
    pub fn lr_at(&self, step: usize, total: usize) -> f64 {
        if self.warmup_steps > 0 && step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        // the decay runs from `start` to the last step (total - 1)
        let start = match self.decay {
            LrDecay::Wsd => total.saturating_sub(self.cooldown_steps).max(self.warmup_steps),
            _ => self.warmup_steps,
        };
        if step < start {
            return self.lr;
        }
        let span = total.saturating_sub(start + 1);
        let p = if span == 0 { 1.0 } else { ((step - start) as f64 / span as f64).min(1.0) };
        let r = self.min_lr_ratio;
        match self.decay {
            LrDecay::None => self.lr,
            LrDecay::Cosine => self.lr * (r + (1.0 - r) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())),
            LrDecay::Linear | LrDecay::Wsd => self.lr * (1.0 - (1.0 - r) * p),
        }
    }

    /// The recipe the project's small asset networks (teachers, autoencoders) train with.
    pub fn asset_recipe() -> Self {
        Self { lr: 2e-3, beta2: 0.99, eps: 1e-8, warmup_steps: 20, ..Default::default() }
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        if !(self.lr > 0.0) {
            return Err(format!("optim.lr must be positive, got {}", self.lr));
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) {
            return Err("optim.beta1 and optim.beta2 must be in [0, 1)".into());
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return Err(format!("optim.ema_decay must be in [0, 1), got {}", self.ema_decay));
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return Err(format!("optim.min_lr_ratio must be in [0, 1], got {}", self.min_lr_ratio));
        }
        match (self.decay, self.cooldown_steps) {
            (LrDecay::Wsd, 0) => return Err("optim.decay = \"wsd\" needs optim.cooldown_steps, the length of its final decay".into()),
            (LrDecay::Wsd, _) | (_, 0) => {}
            (d, _) => {
                let name = match d {
                    LrDecay::None => "none",
                    LrDecay::Cosine => "cosine",
                    LrDecay::Linear => "linear",
                    LrDecay::Wsd => "wsd",
                };
                return Err(format!("optim.cooldown_steps belongs to optim.decay = \"wsd\", not \"{name}\""));
            }
        }
        Ok(())
    }
}

/// A named parameter.
#[derive(Clone)]
pub struct Param {
    pub name: String,
    pub var: Var,
}

/// The trainable parameters of `map`, sorted by name (the fixed order optimizers,
/// checkpoints and the gradient exchange rely on). The autoencoder's latent normalisation
/// (`*latent_shift`, `*latent_scale`) is measured, never trained, and is left out.
pub fn trainable(map: &candle_nn::VarMap) -> Vec<Param> {
    let mut params: Vec<Param> = map
        .data()
        .lock()
        .unwrap()
        .iter()
        .filter(|(n, _)| !n.ends_with("latent_shift") && !n.ends_with("latent_scale"))
        .map(|(n, v)| Param { name: n.clone(), var: v.clone() })
        .collect();
    params.sort_by(|a, b| a.name.cmp(&b.name));
    params
}

/// Is this parameter one Muon should own: a 2-D weight inside a transformer block.
pub fn is_muon_param(name: &str, dims: &[usize]) -> bool {
    dims.len() == 2 && name.contains("blocks.") && name.ends_with(".weight")
}

/// `f` for every parameter, in order. On CPU the parameters are shared among the rayon
/// threads: candle's own CPU ops run on the calling thread (see
/// `device::candle_ops_on_calling_thread`), so without this the optimizer would run on one
/// core while the others wait. Each parameter's arithmetic is unchanged, so the results are
/// the same bit for bit. Other devices go through the parameters one by one.
pub fn per_param<T, F>(params: &[Param], f: F) -> Result<Vec<T>>
where
    T: Send,
    F: Fn(usize, &Param) -> Result<T> + Sync + Send,
{
    use rayon::prelude::*;
    let on_cpu = params.first().is_some_and(|p| p.var.device().is_cpu());
    if on_cpu && rayon::current_num_threads() > 1 {
        params.par_iter().enumerate().map(|(i, p)| f(i, p)).collect()
    } else {
        params.iter().enumerate().map(|(i, p)| f(i, p)).collect()
    }
}

/// Global L2 norm of all gradients (f64 accumulation of the per-tensor f32 sums of squares).
/// The per-tensor sums stay on the device and come back in one transfer, so a GPU step
/// synchronises once here rather than once per parameter.
pub fn grad_norm(params: &[Param], grads: &GradStore) -> Result<f64> {
    let sums = per_param(params, |_, p| grads.get(p.var.as_tensor()).map(|g| g.to_dtype(DType::F32)?.sqr()?.sum_all()?.reshape(1)).transpose())?;
    let sums: Vec<Tensor> = sums.into_iter().flatten().collect();
    if sums.is_empty() {
        return Ok(0.0);
    }
    let sums = Tensor::cat(&sums, 0)?.to_vec1::<f32>()?;
    Ok(sums.iter().map(|&s| s as f64).sum::<f64>().sqrt())
}

/// Scales all gradients so their global norm is at most `max_norm`; returns the norm
/// before clipping.
pub fn clip_grad_norm(params: &[Param], grads: &mut GradStore, max_norm: f64) -> Result<f64> {
    let norm = grad_norm(params, grads)?;
    if max_norm > 0.0 && norm > max_norm {
        let s = max_norm / (norm + 1e-6);
        let scaled = per_param(params, |_, p| grads.get(p.var.as_tensor()).map(|g| g * s).transpose())?;
        for (p, g) in params.iter().zip(scaled) {
            if let Some(g) = g {
                grads.insert(p.var.as_tensor(), g);
            }
        }
    }
    Ok(norm)
}

/// The optimizer of a run: AdamW for every parameter, or Muon for block matrices + AdamW
/// for the rest.
pub struct Optimizer {
    pub adamw: AdamW,
    pub muon: Option<Muon>,
}

impl Optimizer {
    pub fn new(cfg: &OptimConfig, params: Vec<Param>) -> Result<Self> {
        match cfg.kind {
            OptimKind::Adamw => Ok(Self { adamw: AdamW::new(cfg, params)?, muon: None }),
            OptimKind::Muon => {
                let (m, a): (Vec<Param>, Vec<Param>) = params.into_iter().partition(|p| is_muon_param(&p.name, p.var.dims()));
                if m.is_empty() {
                    candle_core::bail!("optim.kind = \"muon\" but the model has no 2-D block weights for Muon");
                }
                Ok(Self { adamw: AdamW::new(cfg, a)?, muon: Some(Muon::new(cfg, m)?) })
            }
        }
    }

    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.adamw.step(grads, lr)?;
        if let Some(m) = &mut self.muon {
            m.step(grads, lr)?;
        }
        Ok(())
    }

    /// Clips the gradients' global norm to `max_norm` (0: off) and steps, unless the norm is
    /// not finite; returns the norm before clipping and whether the weights were updated. With
    /// AdamW alone on CUDA both run as kernels on the device (`AdamW::cuda_clip_and_step`);
    /// otherwise `clip_grad_norm` then `step`.
    pub fn clip_and_step(&mut self, params: &[Param], grads: &mut GradStore, max_norm: f64, lr: f64) -> Result<(f64, bool)> {
        #[cfg(feature = "cuda")]
        if self.muon.is_none() {
            if let Some(done) = self.adamw.cuda_clip_and_step(grads, max_norm, lr)? {
                return Ok(done);
            }
        }
        let norm = clip_grad_norm(params, grads, max_norm)?;
        if !norm.is_finite() {
            return Ok((norm, false));
        }
        self.step(grads, lr)?;
        Ok((norm, true))
    }

    /// Optimizer state as named tensors (for checkpoints).
    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = self.adamw.state()?;
        if let Some(m) = &self.muon {
            out.extend(m.state()?);
        }
        Ok(out)
    }

    pub fn load_state(&mut self, t: &HashMap<String, Tensor>) -> Result<()> {
        self.adamw.load_state(t)?;
        if let Some(m) = &mut self.muon {
            m.load_state(t)?;
        }
        Ok(())
    }
}

/// Exponential moving average of the weights.
pub struct Ema {
    pub decay: f64,
    pub shadow: Vec<(String, Tensor)>,
}

impl Ema {
    pub fn new(decay: f64, params: &[Param]) -> Result<Self> {
        let shadow = params.iter().map(|p| Ok((p.name.clone(), p.var.as_tensor().to_dtype(DType::F32)?.copy()?))).collect::<Result<_>>()?;
        Ok(Self { decay, shadow })
    }

    /// The decay used at update `step` (from 0): `decay`, warmed up as `(1 + step) / (10 +
    /// step)` while that is smaller, so the first updates do not keep the initial weights in
    /// the average (at decay 0.99 without warm-up, 22% of step 150's EMA would still be the
    /// initialisation).
    pub fn decay_at(&self, step: usize) -> f64 {
        self.decay.min((1.0 + step as f64) / (10.0 + step as f64))
    }

    /// Folds the current weights into the average, at update `step` (the training step, from 0).
    pub fn update(&mut self, params: &[Param], step: usize) -> Result<()> {
        let d = self.decay_at(step);
        let shadow = &self.shadow;
        let next = per_param(params, |i, p| ((&shadow[i].1 * d)? + (p.var.as_tensor().to_dtype(DType::F32)? * (1.0 - d))?).map(|t| t.detach()))?;
        for ((_, s), n) in self.shadow.iter_mut().zip(next) {
            *s = n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// `clip_and_step` is clipping then stepping (the same weights bit for bit), and a
    /// non-finite gradient norm leaves every weight as it was.
    /// The EMA's decay warms up: the first update mostly takes the weights, the decay reaches
    /// the configured value and stays there, and the average after n updates of constant
    /// weights is those weights whatever the initialisation's share would have been.
    #[test]
    fn ema_decay_warms_up_to_its_configured_value() -> Result<()> {
        let dev = Device::Cpu;
        let p = Param { name: "w".into(), var: Var::from_tensor(&Tensor::new(&[0f32, 0.0], &dev)?)? };
        let mut ema = Ema::new(0.99, std::slice::from_ref(&p))?;
        assert!((ema.decay_at(0) - 0.1).abs() < 1e-12);
        assert!(ema.decay_at(100) < 0.99 && ema.decay_at(100) > 0.9);
        assert_eq!(ema.decay_at(5000), 0.99);
        let ds: Vec<f64> = (0..2000).map(|s| ema.decay_at(s)).collect();
        assert!(ds.windows(2).all(|w| w[0] <= w[1]), "the decay never falls");
        p.var.set(&Tensor::new(&[1f32, -2.0], &dev)?)?;
        for step in 0..150 {
            ema.update(std::slice::from_ref(&p), step)?;
        }
        let v = ema.shadow[0].1.to_vec1::<f32>()?;
        // without the warm-up, 0.99^150 = 22% of the zeros would remain
        assert!((v[0] - 1.0).abs() < 1e-3 && (v[1] + 2.0).abs() < 2e-3, "{v:?}");
        Ok(())
    }

    #[test]
    fn schedules_warm_up_then_hold_or_decay_to_the_floor() {
        let c = |decay| OptimConfig { lr: 1.0, warmup_steps: 10, decay, min_lr_ratio: 0.1, ..Default::default() };
        for decay in [LrDecay::None, LrDecay::Cosine, LrDecay::Linear] {
            assert_eq!(c(decay).lr_at(0, 110), 0.1, "{decay:?}: warm-up from lr / warmup");
            assert_eq!(c(decay).lr_at(9, 110), 1.0, "{decay:?}: warm-up ends at lr");
            assert_eq!(c(decay).lr_at(10, 110), 1.0, "{decay:?}: the decay starts at lr");
        }
        assert_eq!(c(LrDecay::None).lr_at(109, 110), 1.0);
        for decay in [LrDecay::Cosine, LrDecay::Linear] {
            assert!((c(decay).lr_at(109, 110) - 0.1).abs() < 1e-12, "{decay:?}: the last step is at the floor");
            let lrs: Vec<f64> = (10..110).map(|s| c(decay).lr_at(s, 110)).collect();
            assert!(lrs.windows(2).all(|w| w[1] <= w[0]), "{decay:?}: never rises");
        }
        assert!((c(LrDecay::Cosine).lr_at(60, 110) - 0.55).abs() < 0.01, "half way down at the middle");
        assert!(OptimConfig { min_lr_ratio: 1.5, ..Default::default() }.validate().unwrap_err().contains("optim.min_lr_ratio"));
    }

    #[test]
    fn warmup_stable_decay_holds_then_cools_down_and_shares_its_stable_phase() {
        let c = OptimConfig { lr: 1.0, warmup_steps: 10, decay: LrDecay::Wsd, cooldown_steps: 20, min_lr_ratio: 0.0, ..Default::default() };
        assert_eq!(c.lr_at(0, 110), 0.1, "the warm-up as before");
        assert_eq!((c.lr_at(10, 110), c.lr_at(89, 110)), (1.0, 1.0), "stable until the cooldown");
        assert_eq!(c.lr_at(90, 110), 1.0, "the cooldown starts at lr");
        assert!((c.lr_at(100, 110) - 1.0 + 10.0 / 19.0).abs() < 1e-12, "a straight line down");
        assert_eq!(c.lr_at(109, 110), 0.0, "the last step at the floor");
        let lrs: Vec<f64> = (0..110).map(|s| c.lr_at(s, 110)).collect();
        assert!(lrs[10..].windows(2).all(|w| w[1] <= w[0]), "never rises after the warm-up");
        // runs of any length share the stable phase: the rate until the shorter run's cooldown is the same
        assert!((0..90).all(|s| c.lr_at(s, 110) == c.lr_at(s, 1000)));
        // cosine and linear are not: their rate depends on the total from the first step after the warm-up
        let cos = OptimConfig { decay: LrDecay::Cosine, ..c.clone() };
        assert_ne!(cos.lr_at(50, 110), cos.lr_at(50, 1000));
        // a cooldown longer than the run after the warm-up starts right after the warm-up
        assert_eq!(c.lr_at(10, 25), 1.0);
        assert!(c.lr_at(11, 25) < 1.0);
        assert!(OptimConfig { decay: LrDecay::Wsd, ..Default::default() }.validate().unwrap_err().contains("optim.cooldown_steps"));
        assert!(OptimConfig { cooldown_steps: 5, ..Default::default() }.validate().unwrap_err().contains("belongs to optim.decay = \"wsd\""));
    }

    #[test]
    fn clip_and_step_is_clip_then_step_and_refuses_a_non_finite_norm() -> Result<()> {
        let make = || -> Result<Vec<Param>> {
            (0..3).map(|i| Ok(Param { name: format!("p{i}"), var: candle_core::Var::from_vec((0..40).map(|k| ((k * 7 + i) % 11) as f32 * 0.1).collect::<Vec<f32>>(), 40, &Device::Cpu)? })).collect()
        };
        let grads_of = |ps: &[Param], scale: f32| -> Result<GradStore> {
            let mut loss = Tensor::new(0f32, &Device::Cpu)?;
            for (i, p) in ps.iter().enumerate() {
                loss = (loss + (p.var.as_tensor().sqr()? * (scale * (i + 1) as f32) as f64)?.sum_all()?)?;
            }
            loss.backward()
        };
        let cfg = OptimConfig { lr: 1e-2, ..Default::default() };
        let (a, b) = (make()?, make()?);
        let (mut oa, mut ob) = (Optimizer::new(&cfg, a.clone())?, Optimizer::new(&cfg, b.clone())?);
        let mut ga = grads_of(&a, 3.0)?;
        let (norm, stepped) = oa.clip_and_step(&a, &mut ga, 0.5, 1e-2)?;
        let mut gb = grads_of(&b, 3.0)?;
        let want = clip_grad_norm(&b, &mut gb, 0.5)?;
        ob.step(&gb, 1e-2)?;
        assert!(stepped && norm == want && norm > 0.5, "norm {norm} vs {want}");
        for (p, q) in a.iter().zip(&b) {
            assert_eq!(p.var.as_tensor().to_vec1::<f32>()?, q.var.as_tensor().to_vec1::<f32>()?);
        }
        let before: Vec<Vec<f32>> = a.iter().map(|p| p.var.as_tensor().to_vec1::<f32>()).collect::<Result<_>>()?;
        let mut bad = grads_of(&a, f32::NAN)?;
        let (norm, stepped) = oa.clip_and_step(&a, &mut bad, 0.5, 1e-2)?;
        assert!(!norm.is_finite() && !stepped);
        let after: Vec<Vec<f32>> = a.iter().map(|p| p.var.as_tensor().to_vec1::<f32>()).collect::<Result<_>>()?;
        assert_eq!(before, after, "a non-finite norm must not move the weights");
        Ok(())
    }

    /// Three steps of AdamW + Muon, clipping and EMA over a few dozen parameters: in a
    /// one-thread pool (parameters one by one, every product in one piece) and a four-thread
    /// pool (parameters shared among threads, large products split into row blocks) the
    /// weights and the norm agree bit for bit.
    #[test]
    fn parameters_shared_among_threads_update_exactly_as_one_by_one() -> Result<()> {
        let run = |threads: usize| -> Result<(Vec<Vec<f32>>, f64)> {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let dev = Device::Cpu;
                let mut params = Vec::new();
                for i in 0..24u64 {
                    let name = if i % 2 == 0 { format!("blocks.{i}.mlp.weight") } else { format!("head.{i}.bias") };
                    let dims: Vec<usize> = if i % 2 == 0 { vec![16 + i as usize, 24] } else { vec![40] };
                    let n = dims.iter().product();
                    let t = Tensor::from_vec(crate::rng::Rng::new(i).normal_vec(n), dims, &dev)?;
                    params.push(Param { name, var: Var::from_tensor(&t)? });
                }
                // one matrix large enough that Muon's products split into row blocks over the
                // threads of the four-thread pool (and not in the one-thread pool)
                let big = Tensor::from_vec(crate::rng::Rng::new(99).normal_vec(96 * 640), (96, 640), &dev)?;
                params.push(Param { name: "blocks.99.mlp.weight".into(), var: Var::from_tensor(&big)? });
                let cfg = OptimConfig { kind: OptimKind::Muon, weight_decay: 0.01, grad_clip: 0.5, ..Default::default() };
                let mut opt = Optimizer::new(&cfg, params.clone())?;
                let mut ema = Ema::new(0.9, &params)?;
                let mut norm = 0.0;
                for step in 0..3u64 {
                    let loss = params.iter().map(|p| p.var.as_tensor().sqr()?.sum_all()? * (step + 1) as f64).collect::<Result<Vec<_>>>()?;
                    let loss = loss.iter().try_fold(Tensor::new(0f32, &dev)?, |a, b| a + b)?;
                    let mut grads = loss.backward()?;
                    norm = clip_grad_norm(&params, &mut grads, cfg.grad_clip)?;
                    opt.step(&grads, cfg.lr_at(step as usize, 3))?;
                    ema.update(&params, step as usize)?;
                }
                let mut out: Vec<Vec<f32>> = params.iter().map(|p| p.var.as_tensor().flatten_all()?.to_vec1::<f32>()).collect::<Result<_>>()?;
                out.extend(ema.shadow.iter().map(|(_, s)| s.flatten_all()?.to_vec1::<f32>()).collect::<Result<Vec<_>>>()?);
                Ok((out, norm))
            })
        };
        let (one, n1) = run(1)?;
        let (four, n4) = run(4)?;
        assert_eq!(n1.to_bits(), n4.to_bits());
        assert_eq!(one, four);
        Ok(())
    }
}
