//! The PRX-style flow-matching denoiser: patchify -> PRX blocks -> adaLN final layer ->
//! unpatchify, with optional token routing (TREAD/SPRINT) and a REPA feature tap.
//!
//! A SPRINT model's fusion is part of its architecture: at the end of its span the deep
//! features are fused with the dense features from before the span, `Linear(2C -> C)([dense
//! || deep])`, on every pass. A routed training pass fills the dropped positions of `deep`
//! with the mask token first; a dense pass (sampling, evaluation, the full-token tail of
//! training) fuses the span's output on all tokens. Without the fusion on the dense path the
//! model sampled would not be the model trained.

use candle_core::{DType, Result, Tensor};

use super::block::{BlockCtx, PrxBlock, NORM_EPS};
use super::config::DenoiserConfig;
use super::layers::{norm_modulate, padding_bias, rope_tables, timestep_embedding};
use super::params::{Init, Lin, Params};
use crate::routing::{RoutePlan, RoutingKind};

#[derive(Debug, Clone)]
pub struct Denoiser {
    pub cfg: DenoiserConfig,
    patch_in: Lin,
    txt_in: Lin,
    time_fc1: Lin,
    time_fc2: Lin,
    blocks: Vec<PrxBlock>,
    final_ada: Lin,
    final_out: Lin,
    /// SPRINT extras (present only when built for SPRINT).
    sprint: Option<Sprint>,
}

/// SPRINT's mask token and fusion, and the span (0-based blocks `first..=last`) they close.
#[derive(Debug, Clone)]
struct Sprint {
    mask: Tensor,
    fuse: Lin,
    first: usize,
    last: usize,
}

/// What a forward pass returns.
pub struct DenoiserOut {
    /// Prediction in latent layout (B, C, H, W).
    pub pred: Tensor,
    /// Image-token features after the REPA block (B, Nk, hidden), if asked for.
    pub repa: Option<Tensor>,
    /// Which token positions `repa` holds per sample, when routing dropped some.
    pub repa_tokens: Option<Vec<Vec<u32>>>,
}

impl Denoiser {
    /// `sprint`: the 0-based blocks `(first, last)` of a SPRINT model's span (None: no SPRINT).
    pub fn new(cfg: &DenoiserConfig, p: &Params, sprint: Option<(usize, usize)>) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::Msg)?;
        let h = cfg.hidden;
        let blocks = (0..cfg.depth).map(|i| PrxBlock::new(cfg, &p.pp("blocks").pp(i))).collect::<Result<Vec<_>>>()?;
        let sprint = match sprint {
            Some((first, last)) if first <= last && last < cfg.depth => {
                let sp = p.pp("sprint");
                Some(Sprint { mask: sp.get(&[h], "mask_token", Init::Normal(0.02))?, fuse: Lin::new(&sp.pp("fuse"), 2 * h, h, true)?, first, last })
            }
            Some((first, last)) => candle_core::bail!("SPRINT span {}..{} outside the model's blocks 1..{}", first + 1, last + 1, cfg.depth),
            None => None,
        };
        Ok(Self {
            cfg: cfg.clone(),
            patch_in: Lin::new(&p.pp("patch_in"), cfg.patch_dim(), h, true)?,
            txt_in: Lin::new(&p.pp("txt_in"), cfg.text_dim, h, true)?,
            time_fc1: Lin::new(&p.pp("time.fc1"), cfg.time_embed_dim, h, true)?,
            time_fc2: Lin::new(&p.pp("time.fc2"), h, h, true)?,
            blocks,
            final_ada: Lin::zeros(&p.pp("final.ada"), h, 2 * h, true)?,
            final_out: Lin::zeros(&p.pp("final.out"), h, cfg.patch_dim(), true)?,
            sprint,
        })
    }

    /// (B, C, H, W) -> (B, H/p * W/p, C*p*p), channel-last within a patch.
    pub fn patchify(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, hh, ww) = x.dims4()?;
        let p = self.cfg.patch;
        x.reshape((b, c, hh / p, p, ww / p, p))?
            .permute((0, 2, 4, 3, 5, 1))?
            .reshape((b, (hh / p) * (ww / p), p * p * c))
    }

    pub fn unpatchify(&self, x: &Tensor, hh: usize, ww: usize) -> Result<Tensor> {
        let b = x.dim(0)?;
        let p = self.cfg.patch;
        let c = self.cfg.in_channels;
        x.reshape((b, hh / p, ww / p, p, p, c))?.permute((0, 5, 1, 3, 2, 4))?.reshape((b, c, hh, ww))
    }

    /// `x`: noisy latents (B, C, H, W); `t`: (B,) in [0, 1]; `txt`: text features
    /// (B, T, text_dim); `txt_lens`: real text tokens per sample; `compute`: dtype of the
    /// matmuls (f32, or bf16 under autocast); `route`: token routing for this step;
    /// `repa_block`: 0-based block whose output to return.
    pub fn forward(
        &self,
        x: &Tensor,
        t: &Tensor,
        txt: &Tensor,
        txt_lens: &[usize],
        compute: DType,
        route: Option<&RoutePlan>,
        repa_block: Option<usize>,
    ) -> Result<DenoiserOut> {
        let (_, _, hh, ww) = x.dims4()?;
        let p = self.cfg.patch;
        let (gh, gw) = (hh / p, ww / p);
        let stream = x.dtype();
        let tokens = self.patchify(x)?;
        let mut h = self.patch_in.forward(&tokens.to_dtype(compute)?)?.to_dtype(stream)?;
        let n = gh * gw;
        let txt = self.txt_in.forward(&txt.to_dtype(compute)?)?;
        let temb = timestep_embedding(t, self.cfg.time_embed_dim)?.to_dtype(compute)?;
        let cond = self.time_fc2.forward(&self.time_fc1.forward(&temb)?.silu()?)?;
        let cond_act = cond.silu()?;
        let (cos_full, sin_full) = rope_tables(gh, gw, self.cfg.head_dim(), self.cfg.rope_theta, x.device())?;
        let bias_full = padding_bias(n, txt_lens, txt.dim(1)?, x.device())?;

        let mut cos = cos_full.clone();
        let mut sin = sin_full.clone();
        let mut bias = bias_full.clone();
        let mut skipped = None;
        let mut dense = None;
        let mut repa = None;
        let mut repa_tokens = None;
        if let (Some(r), Some(sp)) = (route, &self.sprint) {
            if (r.first, r.last) != (sp.first, sp.last) {
                candle_core::bail!("routing span {}..{} differs from the SPRINT model's {}..{}", r.first + 1, r.last + 1, sp.first + 1, sp.last + 1);
            }
        }
        for (i, blk) in self.blocks.iter().enumerate() {
            if self.sprint.as_ref().is_some_and(|sp| sp.first == i) {
                dense = Some(h.clone());
            }
            if let Some(r) = route.filter(|r| r.first == i) {
                let (kept, skip) = r.split(&h)?;
                h = kept;
                skipped = Some(skip);
                cos = r.select_table(&cos_full)?;
                sin = r.select_table(&sin_full)?;
                bias = padding_bias(r.keep, txt_lens, txt.dim(1)?, x.device())?;
            }
            let ctx = BlockCtx { cond: &cond_act, txt: &txt, cos: &cos, sin: &sin, bias: &bias };
            h = blk.forward(&h, &ctx)?;
            if repa_block == Some(i) {
                repa = Some(h.clone());
                if let Some(r) = route.filter(|r| i >= r.first && i <= r.last) {
                    repa_tokens = Some(r.kept.clone());
                }
            }
            if let Some(r) = route.filter(|r| r.last == i) {
                let skip = skipped.take().expect("route split before merge");
                h = match (r.kind, &self.sprint) {
                    (RoutingKind::Sprint, Some(sp)) => {
                        let fill = sp.mask.to_dtype(h.dtype())?.reshape((1, 1, ()))?.broadcast_as(skip.shape())?;
                        r.merge(&h, &fill.contiguous()?)?
                    }
                    _ => r.merge(&h, &skip)?,
                };
                cos = cos_full.clone();
                sin = sin_full.clone();
                bias = bias_full.clone();
            }
            if let Some(sp) = self.sprint.as_ref().filter(|sp| sp.last == i) {
                let d = dense.take().expect("dense features kept at the span's start");
                let cat = Tensor::cat(&[&d, &h], 2)?;
                h = sp.fuse.forward(&cat.to_dtype(compute)?)?.to_dtype(stream)?;
            }
        }
        let m = self.final_ada.forward(&cond_act)?.chunk(2, 1)?;
        let out = norm_modulate(&h.to_dtype(compute)?, &m[0], &m[1], NORM_EPS)?;
        let out = self.final_out.forward(&out)?.to_dtype(stream)?;
        Ok(DenoiserOut { pred: self.unpatchify(&out, hh, ww)?, repa, repa_tokens })
    }
}
