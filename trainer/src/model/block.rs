//! One PRX transformer block (PRX Part 1/2; the diffusers PRX transformer).
//!
//! Only image tokens are queries. Text tokens are projected to keys and values only,
//! concatenated after the image keys/values, and never updated, so their K/V could be cached
//! at inference. QK RMSNorm on image queries/keys and on text keys; 2-axis RoPE on image
//! queries/keys; adaLN-zero modulation (shift/scale/gate for attention and MLP, produced by
//! one zero-initialised Linear(dim -> 6 dim)); gated GELU-tanh MLP; no bias on attention
//! and MLP linears.

use candle_core::{Result, Tensor};

use super::config::DenoiserConfig;
use super::layers::{attention_core, gated_mlp_hidden, gated_residual, norm_modulate};
use super::params::{Init, Lin, Params};

pub const NORM_EPS: f64 = 1e-6;

#[derive(Debug, Clone)]
pub struct PrxBlock {
    ada: Lin,
    qkv: Lin,
    txt_kv: Lin,
    q_norm: Tensor,
    k_norm: Tensor,
    txt_k_norm: Tensor,
    proj: Lin,
    mlp_gate: Lin,
    mlp_up: Lin,
    mlp_down: Lin,
    heads: usize,
}

/// Per-forward context shared by all blocks.
pub struct BlockCtx<'a> {
    /// silu(conditioning), (B, hidden), in the compute dtype.
    pub cond: &'a Tensor,
    /// Projected text tokens (B, T, hidden).
    pub txt: &'a Tensor,
    /// RoPE tables for the image tokens present (see `apply_rope`).
    pub cos: &'a Tensor,
    pub sin: &'a Tensor,
    /// Additive bias (B, 1, 1, N + T).
    pub bias: &'a Tensor,
}

impl PrxBlock {
    pub fn new(cfg: &DenoiserConfig, p: &Params) -> Result<Self> {
        let h = cfg.hidden;
        let dh = cfg.head_dim();
        let attn = p.pp("attn");
        let mlp = p.pp("mlp");
        Ok(Self {
            ada: Lin::zeros(&p.pp("ada"), h, 6 * h, true)?,
            qkv: Lin::new(&attn.pp("qkv"), h, 3 * h, false)?,
            txt_kv: Lin::new(&attn.pp("txt_kv"), h, 2 * h, false)?,
            q_norm: attn.get(&[dh], "q_norm.weight", Init::Ones)?,
            k_norm: attn.get(&[dh], "k_norm.weight", Init::Ones)?,
            txt_k_norm: attn.get(&[dh], "txt_k_norm.weight", Init::Ones)?,
            proj: Lin::new(&attn.pp("proj"), h, h, false)?,
            mlp_gate: Lin::new(&mlp.pp("gate"), h, cfg.mlp_hidden(), false)?,
            mlp_up: Lin::new(&mlp.pp("up"), h, cfg.mlp_hidden(), false)?,
            mlp_down: Lin::new(&mlp.pp("down"), cfg.mlp_hidden(), h, false)?,
            heads: cfg.heads,
        })
    }

    /// `x`: image tokens (B, N, hidden) in the stream dtype; returns the same shape.
    pub fn forward(&self, x: &Tensor, ctx: &BlockCtx) -> Result<Tensor> {
        let nh = self.heads;
        let cdt = ctx.cond.dtype();
        let m = self.ada.forward(ctx.cond)?.chunk(6, 1)?;
        let (shift1, scale1, gate1, shift2, scale2, gate2) = (&m[0], &m[1], &m[2], &m[3], &m[4], &m[5]);

        // attention branch
        let hx = norm_modulate(&x.to_dtype(cdt)?, shift1, scale1, NORM_EPS)?;
        let qkv = self.qkv.forward(&hx)?;
        let tkv = self.txt_kv.forward(&ctx.txt.to_dtype(cdt)?)?;
        let norms = [&self.q_norm, &self.k_norm, &self.txt_k_norm];
        let a = attention_core(&qkv, &tkv, norms, ctx.cos, ctx.sin, ctx.bias, nh, NORM_EPS)?;
        let x = gated_residual(x, &self.proj.forward(&a)?, gate1)?;

        // MLP branch
        let hx = norm_modulate(&x.to_dtype(cdt)?, shift2, scale2, NORM_EPS)?;
        let g = gated_mlp_hidden(&hx, &self.mlp_gate, &self.mlp_up)?;
        gated_residual(&x, &self.mlp_down.forward(&g)?, gate2)
    }
}
