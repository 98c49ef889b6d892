//! The trainer of one rank: builds the networks from a `TrainConfig`, runs training steps
//! (forward, loss, backward, optional gradient exchange, clip, optimizer step), samples
//! images, and saves/loads checkpoints.
//!
//! The step is split into `compute_grads` and `apply_grads` so a data-parallel runtime can
//! all-reduce the gradients in between (candle's `backward_step` leaves no room for that).

use candle_core::{backprop::GradStore, DType, Device, Tensor};
use candle_nn::VarMap;
use std::collections::HashMap;
use std::path::Path;

use crate::config::TrainConfig;
use crate::data::{Batch, Tokenizer};
use crate::latent::Latent;
use crate::model::text::LearnedTextEncoder;
use crate::model::{Denoiser, Params};
use crate::objective::flow::{flow_loss, interpolate, velocity_of, velocity_target};
use crate::objective::repa::{repa_loss, select_tokens, Projector};
use crate::optim::{Ema, Optimizer, Param};
use crate::precision::PrecisionPolicy;
use crate::rng::Rng;
use crate::routing::RoutePlan;
use crate::teacher::Teacher;
use crate::TrainError;
use rayon::prelude::*;

/// The smallest micro-batch `compute_grads` splits a CPU batch into.
const MIN_MICRO_BATCH: usize = 4;

/// The text encoder of a run.
enum TextEncoder {
    Learned(LearnedTextEncoder),
    Frozen(crate::model::frozen_text::FrozenTextEncoder),
}

/// Measurements of one step.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StepStats {
    pub step: usize,
    pub loss: f64,
    pub mse: f64,
    pub repa: Option<f64>,
    pub grad_norm: f64,
    pub lr: f64,
}

pub struct Trainer {
    pub cfg: TrainConfig,
    pub device: Device,
    pub policy: PrecisionPolicy,
    pub varmap: VarMap,
    /// Trainable parameters sorted by name: the fixed order used by optimizers,
    /// checkpoints and the gradient exchange.
    pub params: Vec<Param>,
    text: TextEncoder,
    pub denoiser: Denoiser,
    projector: Option<Projector>,
    teacher: Option<Teacher>,
    pub latent: Latent,
    opt: Optimizer,
    ema: Option<Ema>,
    pub step: usize,
    pub tokenizer: Tokenizer,
    /// This rank and the group size: with the batch they fix which global samples (and so
    /// which noise) a step sees.
    pub rank: usize,
    pub world: usize,
}

impl Trainer {
    pub fn new(cfg: TrainConfig, device: &Device) -> Result<Self, TrainError> {
        cfg.validate()?;
        let policy = cfg.precision.policy;
        let tokenizer = Tokenizer::new();
        let varmap = VarMap::new();
        let p = Params::new(varmap.clone(), cfg.seed, policy.param(), device);
        let d = cfg.denoiser()?;
        let ae_params = p.pp("ae");
        let latent = Latent::load(&cfg.latent.kind, cfg.latent.weights.as_deref(), cfg.latent.end_to_end.then_some(&ae_params), device)?;
        let text = match cfg.text.encoder.as_str() {
            name @ ("bert" | "t5") => {
                let family = crate::model::frozen_text::Family::parse(name).expect("bert or t5");
                TextEncoder::Frozen(crate::model::frozen_text::FrozenTextEncoder::load(family, &cfg.text_dir(), cfg.text.max_tokens, device)?)
            }
            _ => TextEncoder::Learned(LearnedTextEncoder::new(&cfg.text_encoder(tokenizer.vocab_size()), &p.pp("text"))?),
        };
        let denoiser = Denoiser::new(&d, &p.pp("denoiser"), cfg.routing.sprint_span())?;
        let (projector, teacher) = if cfg.repa.enabled {
            let teacher = Teacher::load(&cfg.repa, device)?;
            let proj = Projector::new(&p.pp("repa"), d.hidden, cfg.repa.projector_width, teacher.dim())?;
            (Some(proj), Some(teacher))
        } else {
            (None, None)
        };
        let params = crate::optim::trainable(&varmap);
        let opt = Optimizer::new(&cfg.optim, params.clone())?;
        let ema = if cfg.optim.ema_decay > 0.0 { Some(Ema::new(cfg.optim.ema_decay, &params)?) } else { None };
        Ok(Self { cfg, device: device.clone(), policy, varmap, params, text, denoiser, projector, teacher, latent, opt, ema, step: 0, tokenizer, rank: 0, world: 1 })
    }

    pub fn param_count(&self) -> usize {
        self.params.iter().map(|p| p.var.elem_count()).sum()
    }

    /// Text features (B, T, dim) and real token counts of `captions`; `pre` holds our
    /// tokenizer's ids and lengths when the loader already computed them.
    fn text_features(&self, captions: &[String], pre: Option<(&[u32], &[usize])>) -> candle_core::Result<(Tensor, Vec<usize>)> {
        match &self.text {
            TextEncoder::Frozen(b) => b.encode(captions),
            TextEncoder::Learned(enc) => {
                let (ids, lens) = match pre {
                    Some((ids, lens)) => (ids.to_vec(), lens.to_vec()),
                    None => {
                        let mut ids = Vec::new();
                        let mut lens = Vec::new();
                        for c in captions {
                            let (t, l) = self.tokenizer.encode(c, self.cfg.text.max_tokens);
                            ids.extend(t);
                            lens.push(l);
                        }
                        (ids, lens)
                    }
                };
                let b = lens.len();
                let ids = Tensor::from_vec(ids, (b, self.cfg.text.max_tokens), &self.device)?;
                Ok((enc.forward(&ids, &lens)?, lens))
            }
        }
    }

    fn images(&self, batch: &Batch) -> candle_core::Result<Tensor> {
        let s = self.cfg.latent.image_size;
        Tensor::from_slice(&batch.images, (batch.size, 3, s, s), &self.device)
    }

    /// Forward and backward for one batch at the current step. Returns the gradients (not
    /// yet applied) and the loss terms.
    ///
    /// On CPU the batch is split into micro-batches, one per rayon thread (at least
    /// `MIN_MICRO_BATCH` samples each), whose forward and backward passes run concurrently and
    /// whose gradients are summed: candle runs many of its ops on one thread, so whole
    /// micro-batches per core use the cores better than splitting every op. Every sample draws
    /// the same noise, timestep and routing as in one pass over the batch, so only float
    /// rounding differs. The contrastive flow-matching term pairs each part's first sample
    /// with the target of the sample before it: the parts' latents are encoded first (once,
    /// so a sampling autoencoder's draw is the one that sample trains on), and that sample's
    /// target is rebuilt from its latent, noise and timestep. REPA-E normalises latents with
    /// the batch's statistics and always runs as one pass. `ABLATE_MICRO_BATCH=0` turns the
    /// split off. With `train.micro_batch`, the batch is first cut into passes of that many
    /// samples, run one after another and accumulated (then split as above within a pass).
    pub fn compute_grads(&self, batch: &Batch) -> Result<(GradStore, StepStats), TrainError> {
        let cfg = &self.cfg;
        let b = batch.size;
        // routing draws stay per rank and are made for the whole batch
        let mut rng = Rng::derive(cfg.seed, &[0x7ead, self.step as u64, self.rank as u64]);
        let tokens = (cfg.latent_size() / self.denoiser.cfg.patch).pow(2);
        let route = if cfg.routing.routes_at(self.step, cfg.train.steps) { Some(RoutePlan::draw(&cfg.routing, b, tokens, &mut rng, &self.device)?) } else { None };
        let groups = self.passes(b);
        let parts: Vec<std::ops::Range<usize>> = groups.iter().flatten().cloned().collect();
        if parts.len() <= 1 {
            return self.batch_grads(batch, 0, b, route.as_ref(), None, None, 1.0);
        }
        // contrastive: every part's latents first, since each part's first sample pairs with the
        // last sample of the part before (cyclically)
        let latents: Option<Vec<Tensor>> = if self.cfg.objective.contrastive_lambda != 0.0 {
            Some(parts.par_iter().map(|r| self.latent.encode(&self.images(&batch.slice(r.clone()))?)).collect::<candle_core::Result<_>>()?)
        } else {
            None
        };
        // the passes one after another (gradient accumulation: one pass's activations at a
        // time), the parts of a pass side by side; each pass's gradients are added into the
        // step's as soon as it is done, so no more than one pass's are held besides
        let mut merged: Option<GradStore> = None;
        let mut stats = StepStats { step: self.step, loss: 0.0, mse: 0.0, repa: None, grad_norm: 0.0, lr: 0.0 };
        let mut base = 0;
        for group in &groups {
            let results: Vec<Result<(GradStore, StepStats), TrainError>> = group
                .par_iter()
                .enumerate()
                .map(|(i, r)| {
                    let k = base + i;
                    let plan = route.as_ref().map(|p| p.slice(r.clone())).transpose()?;
                    let (z, before) = match &latents {
                        Some(zs) => {
                            let prev = &zs[(k + parts.len() - 1) % parts.len()];
                            let last = prev.narrow(0, prev.dim(0)? - 1, 1)?;
                            (Some(&zs[k]), Some(self.velocity_target_at(&last, (r.start + b - 1) % b, b)?))
                        }
                        None => (None, None),
                    };
                    self.batch_grads(&batch.slice(r.clone()), r.start, b, plan.as_ref(), z, before.as_ref(), r.len() as f64 / b as f64)
                })
                .collect();
            base += group.len();
            for (r, res) in group.iter().zip(results) {
                let (g, s) = res?;
                let w = r.len() as f64 / b as f64;
                stats.loss += w * s.loss;
                stats.mse += w * s.mse;
                stats.repa = s.repa.map(|v| stats.repa.unwrap_or(0.0) + w * v);
                merged = Some(match merged {
                    None => g,
                    Some(mut m) => {
                        let sums = crate::optim::per_param(&self.params, |_, p| {
                            let t = p.var.as_tensor();
                            g.get(t).map(|gp| m.get(t).map_or_else(|| Ok(gp.clone()), |acc| acc + gp)).transpose()
                        })?;
                        for (p, sum) in self.params.iter().zip(sums) {
                            if let Some(sum) = sum {
                                m.insert(p.var.as_tensor(), sum);
                            }
                        }
                        m
                    }
                });
            }
        }
        Ok((merged.expect("at least two micro-batches"), stats))
    }

    /// The passes `compute_grads` makes over a batch of `b`, one after another: chunks of
    /// `train.micro_batch` samples (one chunk when it is 0 or the batch is no larger), each
    /// split into the parts that run side by side ([`Self::micro_batches`]).
    pub fn passes(&self, b: usize) -> Vec<Vec<std::ops::Range<usize>>> {
        let m = self.cfg.train.micro_batch;
        let chunk = if m == 0 || m >= b { b } else { m };
        (0..b.div_ceil(chunk.max(1)))
            .map(|c| {
                let start = c * chunk;
                let len = chunk.min(b - start);
                self.micro_batches(len).into_iter().map(|r| r.start + start..r.end + start).collect()
            })
            .collect()
    }

    /// The micro-batches `compute_grads` splits a batch of `b` into (one range: no split).
    pub fn micro_batches(&self, b: usize) -> Vec<std::ops::Range<usize>> {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let on = *ON.get_or_init(|| std::env::var("ABLATE_MICRO_BATCH").map(|v| v != "0").unwrap_or(true));
        let separable = !self.cfg.latent.end_to_end;
        let n = if on && separable && self.device.is_cpu() && crate::kernels::enabled() {
            rayon::current_num_threads().min(b / MIN_MICRO_BATCH).max(1)
        } else {
            1
        };
        (0..n).map(|i| i * b / n..(i + 1) * b / n).collect()
    }

    /// Noise (shaped like `x0`) and timesteps (B,) of samples `first..first + B` of a batch
    /// of `full`, drawn per global sample (the loader's numbering), so W ranks x batch b draw
    /// exactly what one rank x batch W*b draws: data parallelism changes nothing.
    fn noise(&self, x0: &Tensor, first: usize, full: usize) -> candle_core::Result<(Tensor, Tensor)> {
        let b = x0.dim(0)?;
        let per_sample = x0.elem_count() / b.max(1);
        let mut eps = Vec::with_capacity(x0.elem_count());
        let mut ts = Vec::with_capacity(b);
        for i in 0..b {
            let global = ((self.step * self.world + self.rank) * full + first + i) as u64;
            let mut r = Rng::derive(self.cfg.seed, &[0x57e9, global]);
            eps.extend(r.normal_vec(per_sample));
            ts.extend(self.cfg.objective.timesteps.sample(&mut r, 1));
        }
        Ok((Tensor::from_vec(eps, x0.shape(), &self.device)?, Tensor::from_vec(ts, b, &self.device)?))
    }

    /// The velocity target (1, ..) of sample `i` of a batch of `full`, from its latent `x0`
    /// (1, ..), with the noise and timestep the pass over the part holding it draws.
    fn velocity_target_at(&self, x0: &Tensor, i: usize, full: usize) -> Result<Tensor, TrainError> {
        let (eps, t) = self.noise(x0, i, full)?;
        let xt = interpolate(x0, &eps, &t)?;
        Ok(velocity_target(&self.cfg.objective, x0, &eps, &xt, &t)?)
    }

    /// Forward and backward for samples `first..first + batch.size` of a batch of `full`
    /// samples, with the routing plan of these samples; the loss is scaled by `weight` (the
    /// micro-batch's share of the batch) before backward. Stats are this part's own.
    /// `latents`: this part's latents when already encoded (contrastive parts); `before`: the
    /// velocity target of the sample preceding `first` when the batch is split (the
    /// contrastive term's pair for this part's first sample), None for one pass.
    #[allow(clippy::too_many_arguments)]
    fn batch_grads(&self, batch: &Batch, first: usize, full: usize, route: Option<&RoutePlan>, latents: Option<&Tensor>, before: Option<&Tensor>, weight: f64) -> Result<(GradStore, StepStats), TrainError> {
        let cfg = &self.cfg;
        let step = self.step;
        let stream = self.policy.stream();
        let images = self.images(batch)?;
        let end_to_end = cfg.latent.end_to_end;
        // REPA-E moves the latent distribution while it trains; like the paper's BatchNorm,
        // normalise with this batch's (detached) per-channel statistics.
        // `raw` (REPA-E only) is kept for the reconstruction loss below.
        let (z, raw) = match (end_to_end, self.latent.autoencoder()) {
            (true, Some(ae)) => {
                let raw = ae.encode_raw(&images)?;
                let (mean, std) = crate::latent::train::channel_stats(&raw.detach())?;
                (raw.broadcast_sub(&mean)?.broadcast_div(&std)?, Some(raw))
            }
            _ => (latents.map_or_else(|| self.latent.encode(&images), |z| Ok(z.clone()))?, None),
        };
        // REPA-E: the diffusion loss must not reach the autoencoder (stop-gradient)
        let x0 = if end_to_end { z.detach() } else { z.clone() };
        let (eps, t) = self.noise(&x0, first, full)?;
        let xt = interpolate(&z, &eps, &t)?;
        let (txt, txt_lens) = self.text_features(&batch.captions, Some((&batch.ids, &batch.lens)))?;
        let repa_on = cfg.repa.active_at(step);
        let out = self.denoiser.forward(
            &xt.to_dtype(stream)?,
            &t,
            &txt.to_dtype(stream)?,
            &txt_lens,
            self.policy.compute(),
            route,
            repa_on.then(|| cfg.repa.block - 1),
        )?;
        let (mut loss, mse) = flow_loss(&cfg.objective, &out.pred, &x0, &eps, &xt, &t, before)?;
        let mut repa = None;
        let mut repa_term = None;
        if let (true, Some(proj), Some(teacher), Some(h)) = (repa_on, &self.projector, &self.teacher, &out.repa) {
            let mut target = teacher.features(&images, self.denoiser.cfg.patch * self.latent.downsample())?;
            if let Some(tokens) = &out.repa_tokens {
                target = select_tokens(&target, tokens)?;
            }
            let projected = proj.forward(&h.to_dtype(self.policy.compute())?)?;
            let r = repa_loss(&projected, &target, cfg.repa.lambda)?;
            repa = Some(r.to_scalar::<f32>()? as f64);
            loss = (loss + &r)?;
            repa_term = Some(r);
        }
        // REPA-E: the autoencoder learns from REPA and reconstruction only. One backward of
        // everything for the other parameters, one of (REPA + reconstruction) for the
        // autoencoder; the diffusion loss reaches the autoencoder nowhere.
        let ae_loss = match (self.latent.autoencoder(), &raw) {
            (Some(ae), Some(raw)) => {
                let rec = (ae.decode_raw(raw)? - &images)?.sqr()?.mean_all()?;
                // with REPA switched off (stop_after) the autoencoder keeps only reconstruction
                let objective = match &repa_term {
                    Some(r) => (r + &rec)?,
                    None => rec.clone(),
                };
                Some((rec, objective))
            }
            _ => None,
        };
        if let Some((rec, _)) = &ae_loss {
            loss = (loss + rec)?;
        }
        let loss_v = loss.to_scalar::<f32>()? as f64;
        if !loss_v.is_finite() {
            return Err(TrainError::NonFinite { step, what: "loss".into() });
        }
        let mut grads = if weight == 1.0 { loss.backward()? } else { (loss * weight)?.backward()? };
        if let Some((_, ae_obj)) = ae_loss {
            let mut ae_grads = ae_obj.backward()?;
            for p in self.params.iter().filter(|p| p.name.starts_with("ae.")) {
                grads.remove(p.var.as_tensor());
                if let Some(g) = ae_grads.remove(p.var.as_tensor()) {
                    grads.insert(p.var.as_tensor(), g);
                }
            }
        }
        let stats = StepStats { step, loss: loss_v, mse: mse.to_scalar::<f32>()? as f64, repa, grad_norm: 0.0, lr: 0.0 };
        Ok((grads, stats))
    }

    /// Clips, steps the optimizer and the EMA, and advances the step counter.
    pub fn apply_grads(&mut self, mut grads: GradStore, mut stats: StepStats) -> Result<StepStats, TrainError> {
        stats.lr = self.cfg.optim.lr_at(self.step, self.cfg.train.steps);
        // a non-finite norm stops the run before any weight changes
        (stats.grad_norm, _) = self.opt.clip_and_step(&self.params, &mut grads, self.cfg.optim.grad_clip, stats.lr)?;
        if !stats.grad_norm.is_finite() {
            return Err(TrainError::NonFinite { step: self.step, what: "gradient norm".into() });
        }
        if let Some(e) = &mut self.ema {
            e.update(&self.params, self.step)?;
        }
        self.step += 1;
        Ok(stats)
    }

    pub fn train_step(&mut self, batch: &Batch) -> Result<StepStats, TrainError> {
        let (g, s) = self.compute_grads(batch)?;
        self.apply_grads(g, s)
    }

    /// Generates images for `prompts` (empty prompt = unconditional). Returns (n, 3, H, W)
    /// in [-1, 1]. With an EMA (`optim.ema_decay > 0`) the EMA weights are used, swapped in
    /// for the duration of sampling and the training weights restored afterwards.
    pub fn sample(&self, prompts: &[String], seed: u64, steps: usize, guidance: f64) -> Result<Tensor, TrainError> {
        self.sample_indexed(prompts, None, seed, steps, guidance)
    }

    /// As [`sample`](Self::sample), but image `k`'s starting noise depends only on
    /// `(seed, indices[k])`, so an evaluation split across ranks draws exactly the images a
    /// single process would.
    pub fn sample_indexed(&self, prompts: &[String], indices: Option<&[u64]>, seed: u64, steps: usize, guidance: f64) -> Result<Tensor, TrainError> {
        self.sample_weights(prompts, indices, seed, steps, guidance, true)
    }

    /// As [`sample_indexed`](Self::sample_indexed), with the EMA weights only when `ema` (and
    /// there is an EMA); otherwise the training weights.
    pub fn sample_weights(&self, prompts: &[String], indices: Option<&[u64]>, seed: u64, steps: usize, guidance: f64, ema: bool) -> Result<Tensor, TrainError> {
        let Some(ema) = self.ema.as_ref().filter(|_| ema) else {
            return self.sample_current(prompts, indices, seed, steps, guidance);
        };
        let saved: Vec<Tensor> = self.params.iter().map(|p| p.var.as_tensor().copy()).collect::<candle_core::Result<_>>()?;
        for (p, (_, shadow)) in self.params.iter().zip(&ema.shadow) {
            p.var.set(&shadow.to_dtype(p.var.dtype())?)?;
        }
        let out = self.sample_current(prompts, indices, seed, steps, guidance);
        for (p, t) in self.params.iter().zip(&saved) {
            p.var.set(t)?;
        }
        out
    }

    fn sample_current(&self, prompts: &[String], indices: Option<&[u64]>, seed: u64, steps: usize, guidance: f64) -> Result<Tensor, TrainError> {
        let s = self.cfg.latent_size();
        let c = self.latent.channels();
        let stream = self.policy.stream();
        let mut outs = Vec::new();
        for (chunk_i, chunk) in prompts.chunks(16).enumerate() {
            let n = chunk.len();
            let (txt, lens) = self.text_features(chunk, None)?;
            let txt = txt.to_dtype(stream)?;
            let (null_txt, null_lens) = self.text_features(&vec![String::new(); n], None)?;
            let null_txt = null_txt.to_dtype(stream)?;
            let noise = match indices {
                None => Rng::derive(seed, &[0x5a3e, chunk_i as u64]).normal_vec(n * c * s * s),
                Some(ix) => ix[chunk_i * 16..chunk_i * 16 + n].iter().flat_map(|&i| Rng::derive(seed, &[0x5a3f, i]).normal_vec(c * s * s)).collect(),
            };
            let x = Tensor::from_vec(noise, (n, c, s, s), &self.device)?;
            let pred = self.cfg.objective.prediction;
            let x = crate::sample::euler(x, steps, self.cfg.objective.timesteps.shift, guidance, |x, t, uncond| {
                let tt = Tensor::from_vec(vec![t as f32; n], n, &self.device)?;
                let (tx, tl) = if uncond { (&null_txt, &null_lens) } else { (&txt, &lens) };
                let out = self.denoiser.forward(&x.to_dtype(stream)?, &tt, tx, tl, self.policy.compute(), None, None)?;
                velocity_of(&out.pred.to_dtype(DType::F32)?, x, &tt, pred)
            })?;
            outs.push(self.latent.decode(&x)?.detach());
        }
        Ok(Tensor::cat(&outs, 0)?.clamp(-1.0, 1.0)?)
    }

    /// Everything a checkpoint holds.
    pub fn state(&self) -> Result<HashMap<String, Tensor>, TrainError> {
        let mut out: HashMap<String, Tensor> = self.params.iter().map(|p| (format!("param.{}", p.name), p.var.as_tensor().clone())).collect();
        out.extend(self.opt.state()?);
        if let Some(e) = &self.ema {
            for (n, t) in &e.shadow {
                out.insert(format!("ema.{n}"), t.clone());
            }
        }
        out.insert("meta.step".into(), crate::checkpoint::step_tensor(self.step)?);
        Ok(out)
    }

    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        crate::checkpoint::save_atomic(path, &self.state()?)?;
        Ok(())
    }

    pub fn load(&mut self, path: &Path) -> Result<(), TrainError> {
        let t = crate::checkpoint::load(path, &self.device)?;
        for p in &self.params {
            let key = format!("param.{}", p.name);
            let v = t.get(&key).ok_or_else(|| TrainError::Resume(format!("checkpoint {} lacks \"{key}\"", path.display())))?;
            if v.dims() != p.var.dims() {
                return Err(TrainError::Resume(format!("checkpoint tensor \"{key}\" has shape {:?}, the model wants {:?}", v.dims(), p.var.dims())));
            }
            p.var.set(&v.to_dtype(p.var.dtype())?)?;
        }
        self.opt.load_state(&t)?;
        if let Some(e) = &mut self.ema {
            for (n, s) in e.shadow.iter_mut() {
                if let Some(v) = t.get(&format!("ema.{n}")) {
                    *s = v.clone();
                }
            }
        }
        let step = t.get("meta.step").ok_or_else(|| TrainError::Resume("checkpoint lacks meta.step".into()))?;
        self.step = step.to_vec1::<i64>()?[0] as usize;
        Ok(())
    }

    /// Order-sensitive checksum of all weights (f64 sum of value * (index mod 7 + 1)).
    pub fn checksum(&self) -> Result<f64, TrainError> {
        let mut acc = 0f64;
        for p in &self.params {
            let v = p.var.as_tensor().to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            acc += v.iter().enumerate().map(|(i, x)| *x as f64 * ((i % 7) + 1) as f64).sum::<f64>();
        }
        Ok(acc)
    }
}
