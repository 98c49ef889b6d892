//! DINOv2 as Hugging Face's `Dinov2Model` computes it, with its tensor names: patch
//! embedding (a strided convolution), the class token, position embeddings interpolated
//! bicubically to the input's patch grid (in f32, as HF does), pre-norm blocks with layer
//! scale and an exact-erf GELU MLP, a final LayerNorm (eps 1e-6); the embedding is the class
//! token after it (`pooler_output`). candle-transformers' own DINOv2 reads the original
//! repository's names and interpolates by nearest neighbour, so it is not used here.

use candle_core::{Module, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, LayerNorm, Linear, VarBuilder};

use super::weights::Shapes;
use super::EvalError;

const EPS: f64 = 1e-6;

/// The released checkpoints' name for a tensor: transformers 5 saves the attention
/// projections as `attention.{q,k,v,o}_proj`, the released `facebook/dinov2-*` files (and
/// this module) call them `attention.attention.{query,key,value}` and `attention.output.dense`.
pub fn checkpoint_name(name: &str) -> String {
    for (new, old) in [(".attention.q_proj.", ".attention.attention.query."), (".attention.k_proj.", ".attention.attention.key."), (".attention.v_proj.", ".attention.attention.value."), (".attention.o_proj.", ".attention.output.dense.")] {
        if name.contains(new) {
            return name.replace(new, old);
        }
    }
    name.to_string()
}

struct Block {
    norm1: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    scale1: Tensor,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    scale2: Tensor,
    heads: usize,
}

impl Block {
    fn new(vb: VarBuilder, width: usize, hidden: usize, heads: usize) -> candle_core::Result<Self> {
        let a = vb.pp("attention");
        Ok(Self {
            norm1: candle_nn::layer_norm(width, EPS, vb.pp("norm1"))?,
            q: candle_nn::linear(width, width, a.pp("attention").pp("query"))?,
            k: candle_nn::linear(width, width, a.pp("attention").pp("key"))?,
            v: candle_nn::linear(width, width, a.pp("attention").pp("value"))?,
            out: candle_nn::linear(width, width, a.pp("output").pp("dense"))?,
            scale1: vb.pp("layer_scale1").get(width, "lambda1")?,
            norm2: candle_nn::layer_norm(width, EPS, vb.pp("norm2"))?,
            fc1: candle_nn::linear(width, hidden, vb.pp("mlp").pp("fc1"))?,
            fc2: candle_nn::linear(hidden, width, vb.pp("mlp").pp("fc2"))?,
            scale2: vb.pp("layer_scale2").get(width, "lambda1")?,
            heads,
        })
    }

    fn attention(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        let hd = c / self.heads;
        let split = |t: Tensor| t.reshape((b, n, self.heads, hd))?.transpose(1, 2)?.contiguous();
        let (q, k, v) = (split(self.q.forward(x)?)?, split(self.k.forward(x)?)?, split(self.v.forward(x)?)?);
        let att = (q.matmul(&k.t()?)? * (hd as f64).powf(-0.5))?;
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let y = att.matmul(&v)?.transpose(1, 2)?.reshape((b, n, c))?;
        self.out.forward(&y)
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = (x + self.attention(&self.norm1.forward(x)?)?.broadcast_mul(&self.scale1)?)?;
        let h = self.fc2.forward(&self.fc1.forward(&self.norm2.forward(&x)?)?.gelu_erf()?)?;
        x + h.broadcast_mul(&self.scale2)?
    }
}

pub struct Dinov2 {
    patch: Conv2d,
    patch_size: usize,
    cls: Tensor,
    /// (1, 1 + grid², width)
    positions: Tensor,
    grid: usize,
    blocks: Vec<Block>,
    norm: LayerNorm,
    pub width: usize,
}

impl Dinov2 {
    pub(crate) fn new(s: &Shapes, vb: VarBuilder, heads: impl Fn(usize) -> Result<usize, EvalError>) -> Result<Self, EvalError> {
        let cls = s.dims("embeddings.cls_token")?;
        let width = *cls.last().ok_or_else(|| s.err("embeddings.cls_token has no dimensions".into()))?;
        let patch = s.dims("embeddings.patch_embeddings.projection.weight")?;
        let positions = s.dims("embeddings.position_embeddings")?;
        let grid = ((positions[1].saturating_sub(1)) as f64).sqrt().round() as usize;
        if positions.len() != 3 || grid * grid + 1 != positions[1] {
            return Err(s.err(format!("position embeddings of shape {positions:?} are not a square grid plus the class token")));
        }
        let heads = heads(width)?;
        if width % heads != 0 {
            return Err(s.err(format!("width {width} is not divisible by {heads} heads")));
        }
        let depth = s.layers("encoder.layer.");
        let hidden = s.dims("encoder.layer.0.mlp.fc1.weight")?[0];
        let e = vb.pp("embeddings");
        let conv = Conv2dConfig { stride: patch[2], ..Default::default() };
        Ok(Self {
            patch: candle_nn::conv2d(patch[1], width, patch[2], conv, e.pp("patch_embeddings").pp("projection"))?,
            patch_size: patch[2],
            cls: e.get((1, 1, width), "cls_token")?,
            positions: e.get((1, grid * grid + 1, width), "position_embeddings")?,
            grid,
            blocks: (0..depth).map(|i| Block::new(vb.pp(format!("encoder.layer.{i}")), width, hidden, heads)).collect::<candle_core::Result<_>>()?,
            norm: candle_nn::layer_norm(width, EPS, vb.pp("layernorm"))?,
            width,
        })
    }

    /// The position embeddings for a `gh` x `gw` patch grid.
    fn positions_for(&self, gh: usize, gw: usize) -> candle_core::Result<Tensor> {
        if gh == self.grid && gw == self.grid {
            return Ok(self.positions.clone());
        }
        let c = self.width;
        let cls = self.positions.narrow(1, 0, 1)?;
        let grid: Vec<f64> = self.positions.narrow(1, 1, self.grid * self.grid)?.reshape((self.grid, self.grid, c))?.permute((2, 0, 1))?.to_dtype(candle_core::DType::F64)?.flatten_all()?.to_vec1()?;
        // HF interpolates in f32: round each output as torch's f32 kernel would store it
        let out: Vec<f32> = super::resize::bicubic_planes(&grid, self.grid, self.grid, gh, gw).into_iter().map(|v| v as f32).collect();
        let patch = Tensor::from_vec(out, (c, gh, gw), self.positions.device())?.permute((1, 2, 0))?.reshape((1, gh * gw, c))?;
        Tensor::cat(&[cls, patch], 1)
    }
}

impl Module for Dinov2 {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, _, h, w) = x.dims4()?;
        let tokens = self.patch.forward(x)?.flatten_from(2)?.transpose(1, 2)?;
        let cls = self.cls.expand((b, 1, self.width))?;
        let mut x = Tensor::cat(&[cls, tokens], 1)?.broadcast_add(&self.positions_for(h / self.patch_size, w / self.patch_size)?)?;
        for blk in &self.blocks {
            x = blk.forward(&x)?;
        }
        self.norm.forward(&x)?.narrow(1, 0, 1)?.squeeze(1)?.contiguous()
    }
}
