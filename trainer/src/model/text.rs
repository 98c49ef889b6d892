//! The default text encoder: a small transformer over word tokens, trained jointly with the
//! denoiser (the synthetic captions use a closed vocabulary, so a learned encoder reaches
//! every word). Output is (B, T, width); padded positions are masked out by the denoiser.

use candle_core::{Result, Tensor};

use super::layers::{attention, gelu, padding_bias};
use super::params::{Init, Lin, Params};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TextEncoderConfig {
    pub vocab: usize,
    pub max_len: usize,
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
}

impl TextEncoderConfig {
    /// Matmul FLOPs of one forward pass for one caption of `t` tokens (see
    /// `DenoiserConfig::forward_flops`).
    pub fn forward_flops(&self, t: usize) -> f64 {
        let (w, t) = (self.width as f64, t as f64);
        let layer = 2.0 * t * w * (3.0 * w + w + 4.0 * w + 4.0 * w) + 2.0 * 2.0 * t * t * w;
        self.layers as f64 * layer
    }
}

#[derive(Debug, Clone)]
struct EncoderLayer {
    ln1: (Tensor, Tensor),
    qkv: Lin,
    proj: Lin,
    ln2: (Tensor, Tensor),
    fc1: Lin,
    fc2: Lin,
}

fn ln_params(p: &Params, w: usize) -> Result<(Tensor, Tensor)> {
    Ok((p.get(&[w], "weight", Init::Ones)?, p.get(&[w], "bias", Init::Zeros)?))
}

fn ln(x: &Tensor, (w, b): &(Tensor, Tensor)) -> Result<Tensor> {
    super::layers::layer_norm_affine(x, w, b, 1e-5)
}

#[derive(Debug, Clone)]
pub struct LearnedTextEncoder {
    cfg: TextEncoderConfig,
    tok: Tensor,
    pos: Tensor,
    layers: Vec<EncoderLayer>,
    ln_out: (Tensor, Tensor),
}

impl LearnedTextEncoder {
    pub fn new(cfg: &TextEncoderConfig, p: &Params) -> Result<Self> {
        let w = cfg.width;
        let tok = p.get(&[cfg.vocab, w], "tok_emb", Init::Normal(0.02))?;
        let pos = p.get(&[cfg.max_len, w], "pos_emb", Init::Normal(0.02))?;
        let layers = (0..cfg.layers)
            .map(|i| {
                let l = p.pp("layers").pp(i);
                Ok(EncoderLayer {
                    ln1: ln_params(&l.pp("ln1"), w)?,
                    qkv: Lin::new(&l.pp("qkv"), w, 3 * w, true)?,
                    proj: Lin::new(&l.pp("proj"), w, w, true)?,
                    ln2: ln_params(&l.pp("ln2"), w)?,
                    fc1: Lin::new(&l.pp("fc1"), w, 4 * w, true)?,
                    fc2: Lin::new(&l.pp("fc2"), 4 * w, w, true)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { cfg: cfg.clone(), tok, pos, layers, ln_out: ln_params(&p.pp("ln_out"), w)? })
    }

    /// `ids`: (B, T) u32 token ids; `lens`: real tokens per sample.
    pub fn forward(&self, ids: &Tensor, lens: &[usize]) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let w = self.cfg.width;
        let nh = self.cfg.heads;
        let x = self.tok.index_select(&ids.flatten_all()?, 0)?.reshape((b, t, w))?;
        let mut x = x.broadcast_add(&self.pos.narrow(0, 0, t)?.unsqueeze(0)?)?;
        let bias = padding_bias(0, lens, t, ids.device())?;
        for l in &self.layers {
            let h = ln(&x, &l.ln1)?;
            let qkv = l.qkv.forward(&h)?.reshape((b, t, 3, nh, w / nh))?;
            let part = |i: usize| qkv.narrow(2, i, 1)?.squeeze(2)?.transpose(1, 2)?.contiguous();
            let a = attention(&part(0)?, &part(1)?, &part(2)?, Some(&bias))?;
            let a = a.transpose(1, 2)?.reshape((b, t, w))?;
            x = (x + l.proj.forward(&a)?)?;
            let h = ln(&x, &l.ln2)?;
            x = (&x + l.fc2.forward(&gelu(&l.fc1.forward(&h)?)?)?)?;
        }
        ln(&x, &self.ln_out)
    }
}
