//! The differentiable building blocks of the PRX block, written as compositions of candle ops
//! with gradients (candle-nn's fused `rms_norm`, `softmax_last_dim`, `rope_i` have no
//! backward pass, see STYLE.md). Statistics (norms, softmax) are computed in fp32 whatever
//! the compute dtype, as the precision policy requires; callers get their own dtype back.
//!
//! These functions are the seams where fused CPU/CUDA kernels replace the compositions.

use candle_core::{DType, Device, Result, Tensor, D};


use crate::kernels::{f32_of, via_f32};

/// RMSNorm over the last dimension with a learned scale.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let fits = weight.rank() == 1 && x.dim(D::Minus1)? == weight.dim(0)?;
    if fits && crate::kernels::applies(x) && crate::kernels::applies(weight) {
        return crate::kernels::rms::rms_norm(x, weight, eps);
    }
    if fits {
        if let Some(w) = crate::kernels::cuda_cast_like(x, &[weight])? {
            return crate::kernels::rms::rms_norm(x, &w[0], eps);
        }
    }
    if let Some(v) = via_f32(&[x, weight])? {
        return rms_norm(&v[0], &v[1], eps)?.to_dtype(x.dtype());
    }
    rms_norm_composed(x, weight, eps)
}

/// The differentiable composition `rms_norm` falls back to (and is tested against).
pub fn rms_norm_composed(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dt = x.dtype();
    let x32 = f32_of(x)?;
    let ms = x32.sqr()?.mean_keepdim(D::Minus1)?;
    let y = x32.broadcast_div(&(ms + eps)?.sqrt()?)?.broadcast_mul(&f32_of(weight)?)?;
    y.to_dtype(dt)
}

/// LayerNorm over the last dimension without affine parameters (adaLN supplies them).
pub fn layer_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
    let dt = x.dtype();
    let x32 = f32_of(x)?;
    let mean = x32.mean_keepdim(D::Minus1)?;
    let xc = x32.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    xc.broadcast_div(&(var + eps)?.sqrt()?)?.to_dtype(dt)
}

/// adaLN modulation: `x * (1 + scale) + shift` with per-sample `shift`, `scale` of shape (B, D).
pub fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    let scale = (scale.unsqueeze(1)? + 1.0)?;
    x.broadcast_mul(&scale)?.broadcast_add(&shift.unsqueeze(1)?)
}

/// The adaLN-zero gated residual `x + y * gate` with `x`, `y` (B, N, D) and `gate` (B, D),
/// fused on CPU f32 (`kernels::residual`). `y` is cast to `x`'s dtype first.
pub fn gated_residual(x: &Tensor, y: &Tensor, gate: &Tensor) -> Result<Tensor> {
    if crate::kernels::applies(x) && crate::kernels::applies(y) && crate::kernels::applies(gate) {
        return crate::kernels::residual::gated_residual(x, y, gate);
    }
    if x.rank() == 3 && y.dims() == x.dims() && gate.dims() == [x.dim(0)?, x.dim(2)?] {
        // on CUDA the bf16 branch output and gate join the f32 stream in f32
        if let Some(c) = crate::kernels::cuda_cast_like(x, &[y, gate])? {
            return crate::kernels::residual::gated_residual(x, &c[0], &c[1]);
        }
    }
    if let Some(v) = via_f32(&[x, y, gate])? {
        return gated_residual(&v[0], &v[1], &v[2])?.to_dtype(x.dtype());
    }
    gated_residual_composed(x, y, gate)
}

/// The composition `gated_residual` falls back to (and is tested against).
pub fn gated_residual_composed(x: &Tensor, y: &Tensor, gate: &Tensor) -> Result<Tensor> {
    x + y.broadcast_mul(&gate.unsqueeze(1)?)?.to_dtype(x.dtype())?
}

/// The gated MLP's hidden activations `gelu_tanh(gate(x)) * up(x)` for bias-free linears.
/// On CPU f32 the two projections run as one product with the weights stacked, followed by
/// the fused activation reading the packed result (one pass over `x` in backward, not two).
pub fn gated_mlp_hidden(x: &Tensor, gate: &super::params::Lin, up: &super::params::Lin) -> Result<Tensor> {
    let fits = gate.bias.is_none() && up.bias.is_none() && gate.weight.dims() == up.weight.dims();
    if fits && crate::kernels::applies(x) && crate::kernels::applies(&gate.weight) && crate::kernels::applies(&up.weight) {
        let w = Tensor::cat(&[&gate.weight, &up.weight], 0)?;
        return crate::kernels::gelu::gated_gelu_packed(&crate::kernels::linear::linear(x, &w, None)?);
    }
    gated_gelu(&gate.forward(x)?, &up.forward(x)?)
}

/// `mean((a - b)^2)` as a scalar: the flow-matching loss's squared error, fused on CPU f32
/// (`kernels::loss`).
pub fn mean_squared_error(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.dims() == b.dims() && ((crate::kernels::applies(a) && crate::kernels::applies(b)) || crate::kernels::on_cuda(&[a, b])) {
        return crate::kernels::loss::mean_squared_error(a, b);
    }
    mean_squared_error_composed(a, b)
}

/// The composition `mean_squared_error` falls back to (and is tested against).
pub fn mean_squared_error_composed(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    (a - b)?.sqr()?.mean_all()
}

/// `gelu_tanh(x)`, fused on CPU f32 (`kernels::gelu`).
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if crate::kernels::applies(x) || crate::kernels::on_cuda(&[x]) {
        return crate::kernels::gelu::gelu(x);
    }
    if let Some(v) = via_f32(&[x])? {
        return gelu(&v[0])?.to_dtype(x.dtype());
    }
    x.gelu()
}

/// `gelu_tanh(gate) * up`, fused on CPU f32 (`kernels::gelu`).
pub fn gated_gelu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if crate::kernels::applies(gate) || (crate::kernels::on_cuda(&[gate, up]) && gate.dims() == up.dims()) {
        return crate::kernels::gelu::gated_gelu(gate, up);
    }
    if let Some(v) = via_f32(&[gate, up])? {
        return gated_gelu(&v[0], &v[1])?.to_dtype(gate.dtype());
    }
    gate.gelu()? * up
}

/// adaLN: `LayerNorm(x) * (1 + scale) + shift`, fused on CPU f32 (`kernels::norm`).
pub fn norm_modulate(x: &Tensor, shift: &Tensor, scale: &Tensor, eps: f64) -> Result<Tensor> {
    if crate::kernels::applies(x) && shift.dtype() == DType::F32 {
        return crate::kernels::norm::layer_norm_modulate(x, shift, scale, eps);
    }
    if x.rank() == 3 && shift.dims() == [x.dim(0)?, x.dim(2)?] && scale.dims() == shift.dims() {
        if let Some(c) = crate::kernels::cuda_cast_like(x, &[shift, scale])? {
            return crate::kernels::norm::layer_norm_modulate(x, &c[0], &c[1], eps);
        }
    }
    if let Some(v) = via_f32(&[x, shift, scale])? {
        return norm_modulate(&v[0], &v[1], &v[2], eps)?.to_dtype(x.dtype());
    }
    modulate(&layer_norm(x, eps)?, shift, scale)
}

/// LayerNorm over the last dimension with affine `weight` and `bias` (D), for x (B, N, D);
/// fused on CPU f32 (`kernels::norm`, the adaLN kernel with shared weights).
pub fn layer_norm_affine(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let fits = x.rank() == 3 && weight.rank() == 1 && bias.dims() == weight.dims() && x.dim(D::Minus1)? == weight.dim(0)?;
    if fits && crate::kernels::applies(x) && crate::kernels::applies(weight) && crate::kernels::applies(bias) {
        return crate::kernels::norm::layer_norm_affine(x, weight, bias, eps);
    }
    if fits {
        if let Some(c) = crate::kernels::cuda_cast_like(x, &[weight, bias])? {
            return crate::kernels::norm::layer_norm_affine(x, &c[0], &c[1], eps);
        }
    }
    if fits {
        if let Some(v) = via_f32(&[x, weight, bias])? {
            return layer_norm_affine(&v[0], &v[1], &v[2], eps)?.to_dtype(x.dtype());
        }
    }
    layer_norm_affine_composed(x, weight, bias, eps)
}

/// The composition `layer_norm_affine` falls back to (and is tested against).
pub fn layer_norm_affine_composed(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    layer_norm(x, eps)?.broadcast_mul(weight)?.broadcast_add(bias)
}

/// Softmax over the last dimension in fp32 (fused on CPU, `kernels::softmax`).
pub fn softmax_f32(x: &Tensor) -> Result<Tensor> {
    let dt = x.dtype();
    let x = f32_of(x)?;
    if crate::kernels::applies(&x) {
        return crate::kernels::softmax::softmax_last_dim(&x)?.to_dtype(dt);
    }
    candle_nn::ops::softmax(&x, D::Minus1)?.to_dtype(dt)
}

/// Multi-head attention. `q`: (B, H, Nq, Dh); `k`, `v`: (B, H, Nk, Dh); `bias`: additive,
/// broadcastable to (B, H, Nq, Nk) (padding mask). Returns (B, H, Nq, Dh).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    if crate::kernels::applies(q) && k.dtype() == q.dtype() && v.dtype() == q.dtype() && bias.is_none_or(crate::kernels::applies) {
        if let Some(out) = crate::kernels::attention::attention(q, k, v, bias)? {
            return Ok(out);
        }
    }
    #[cfg(feature = "cuda")]
    if crate::kernels::on_cuda(&[q, k, v]) && bias.is_none_or(|b| b.device().same_device(q.device()) && b.rank() == 4 && b.dim(1).ok() == Some(1) && b.dim(2).ok() == Some(1)) {
        // batched cuBLAS GEMMs around one fused scale + key mask + softmax kernel
        let scale = 1.0 / (q.dim(D::Minus1)? as f64).sqrt();
        let p = crate::kernels::cuda::softmax::masked_softmax(&q.matmul(&k.t()?)?, bias, scale)?;
        return p.matmul(v);
    }
    let mut ins = vec![q, k, v];
    ins.extend(bias);
    if let Some(f) = via_f32(&ins)? {
        return attention(&f[0], &f[1], &f[2], f.get(3))?.to_dtype(q.dtype());
    }
    attention_composed(q, k, v, bias)
}

/// The differentiable composition `attention` falls back to (and is tested against).
pub fn attention_composed(q: &Tensor, k: &Tensor, v: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let dh = q.dim(D::Minus1)?;
    let scores = (q.matmul(&k.t()?)? * (1.0 / (dh as f64).sqrt()))?;
    let scores = match bias {
        Some(b) => f32_of(&scores)?.broadcast_add(b)?,
        None => scores,
    };
    softmax_f32(&scores)?.to_dtype(v.dtype())?.matmul(v)
}

/// The attention of a PRX block from its projections: `qkv` (B, N, 3 hidden) of the image
/// tokens, `tkv` (B, T, 2 hidden) of the text tokens, `norms` the QK RMSNorm weights of
/// queries, image keys and text keys (Dh each). Queries and image keys are normalised and
/// rotated, text keys normalised; image queries attend over image + text keys with the
/// padding `bias` (B, 1, 1, N + T). Returns (B, N, hidden). Fused on CPU f32
/// (`kernels::attn_core`).
#[allow(clippy::too_many_arguments)]
pub fn attention_core(qkv: &Tensor, tkv: &Tensor, norms: [&Tensor; 3], cos: &Tensor, sin: &Tensor, bias: &Tensor, heads: usize, eps: f64) -> Result<Tensor> {
    if crate::kernels::applies(qkv) && crate::kernels::applies(tkv) && norms.iter().all(|w| crate::kernels::applies(w)) && crate::kernels::applies(bias) {
        let stacked = Tensor::stack(&norms, 0)?;
        if let Some(out) = crate::kernels::attn_core::attn_core(qkv, tkv, &stacked, cos, sin, Some(bias), heads, eps)? {
            return Ok(out);
        }
    }
    if let Some(f) = via_f32(&[qkv, tkv, norms[0], norms[1], norms[2], bias])? {
        return attention_core(&f[0], &f[1], [&f[2], &f[3], &f[4]], cos, sin, &f[5], heads, eps)?.to_dtype(qkv.dtype());
    }
    #[cfg(feature = "cuda")]
    if crate::kernels::on_cuda(&[qkv, tkv]) && cos.device().same_device(qkv.device()) && norms.iter().all(|w| w.device().same_device(qkv.device())) {
        // one kernel for the head split, QK norms, RoPE and text-key concatenation
        let (b, n, h3) = qkv.dims3()?;
        let (q, k, v) = crate::kernels::cuda::qkv::qkv_prep(qkv, tkv, norms, cos, sin, heads, eps)?;
        return attention(&q, &k, &v, Some(bias))?.transpose(1, 2)?.reshape((b, n, h3 / 3));
    }
    attention_core_composed(qkv, tkv, norms, cos, sin, bias, heads, eps)
}

/// The composition `attention_core` falls back to (and is tested against).
#[allow(clippy::too_many_arguments)]
pub fn attention_core_composed(qkv: &Tensor, tkv: &Tensor, norms: [&Tensor; 3], cos: &Tensor, sin: &Tensor, bias: &Tensor, heads: usize, eps: f64) -> Result<Tensor> {
    let (b, n, h3) = qkv.dims3()?;
    let (q, k, v) = qkv_prep_composed(qkv, tkv, norms, cos, sin, heads, eps)?;
    attention(&q, &k, &v, Some(bias))?.transpose(1, 2)?.reshape((b, n, h3 / 3))
}

/// The attention's inputs from a PRX block's projections, composed: q (B, H, N, Dh) normed
/// and rotated; k (B, H, N + T, Dh) the normed, rotated image keys then the normed text keys;
/// v (B, H, N + T, Dh) the image values then the text values. The reference of the CUDA
/// kernel that does this in one pass (`kernels::cuda::qkv`).
pub fn qkv_prep_composed(qkv: &Tensor, tkv: &Tensor, norms: [&Tensor; 3], cos: &Tensor, sin: &Tensor, heads: usize, eps: f64) -> Result<(Tensor, Tensor, Tensor)> {
    let (b, n, h3) = qkv.dims3()?;
    let t = tkv.dim(1)?;
    let dh = h3 / 3 / heads;
    let qkv = qkv.reshape((b, n, 3, heads, dh))?;
    let heads_first = |t: Tensor| t.squeeze(2)?.transpose(1, 2)?.contiguous(); // (B, H, N, Dh)
    let q = heads_first(qkv.narrow(2, 0, 1)?)?;
    let k = heads_first(qkv.narrow(2, 1, 1)?)?;
    let v = heads_first(qkv.narrow(2, 2, 1)?)?;
    let q = apply_rope(&rms_norm(&q, norms[0], eps)?, cos, sin)?;
    let k = apply_rope(&rms_norm(&k, norms[1], eps)?, cos, sin)?;
    let tkv = tkv.reshape((b, t, 2, heads, dh))?;
    let tk = rms_norm(&heads_first(tkv.narrow(2, 0, 1)?)?, norms[2], eps)?;
    let tv = heads_first(tkv.narrow(2, 1, 1)?)?;
    Ok((q, Tensor::cat(&[&k, &tk], 2)?, Tensor::cat(&[&v, &tv], 2)?))
}

/// Rotary tables for a 2-axis (row, column) RoPE over a `gh` x `gw` token grid.
///
/// The head dimension is split into two halves: the first rotates with the row index, the
/// second with the column index (PRX/Flux axes dims [Dh/2, Dh/2]). Pairs are interleaved
/// `(x0, x1), (x2, x3), ...`. Frequencies are computed in f64. Returns `cos`, `sin` of shape
/// (gh*gw, Dh/2) in f32.
pub fn rope_tables(gh: usize, gw: usize, head_dim: usize, theta: f64, device: &Device) -> Result<(Tensor, Tensor)> {
    assert!(head_dim % 4 == 0, "head dim must be divisible by 4 for 2-axis RoPE");
    let axis = head_dim / 2; // dims per axis
    let pairs = axis / 2; // rotation pairs per axis
    let n = gh * gw;
    let mut cos = Vec::with_capacity(n * head_dim / 2);
    let mut sin = Vec::with_capacity(n * head_dim / 2);
    for r in 0..gh {
        for c in 0..gw {
            for (pos, _) in [(r, 0), (c, 1)] {
                for i in 0..pairs {
                    let freq = 1.0 / theta.powf(2.0 * i as f64 / axis as f64);
                    let a = pos as f64 * freq;
                    cos.push(a.cos() as f32);
                    sin.push(a.sin() as f32);
                }
            }
        }
    }
    Ok((
        Tensor::from_vec(cos, (n, head_dim / 2), device)?,
        Tensor::from_vec(sin, (n, head_dim / 2), device)?,
    ))
}

/// Applies interleaved RoPE to `x` (B, H, N, Dh) with tables (N, Dh/2) shared by the batch
/// or (B, N, Dh/2) per sample (after token routing has selected a subset per sample).
pub fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if crate::kernels::applies(x) || (crate::kernels::on_cuda(&[x]) && x.rank() == 4 && cos.device().same_device(x.device())) {
        return crate::kernels::rope::rope(x, cos, sin);
    }
    if let Some(v) = via_f32(&[x])? {
        return apply_rope(&v[0], cos, sin)?.to_dtype(x.dtype());
    }
    apply_rope_composed(x, cos, sin)
}

/// The composition `apply_rope` falls back to (and is tested against).
pub fn apply_rope_composed(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (b, h, n, dh) = x.dims4()?;
    let dt = x.dtype();
    let (cos, sin) = match cos.rank() {
        2 => (cos.reshape((1, 1, n, dh / 2, 1))?, sin.reshape((1, 1, n, dh / 2, 1))?),
        _ => (cos.reshape((b, 1, n, dh / 2, 1))?, sin.reshape((b, 1, n, dh / 2, 1))?),
    };
    let x = f32_of(x)?.reshape((b, h, n, dh / 2, 2))?;
    let x0 = x.narrow(D::Minus1, 0, 1)?;
    let x1 = x.narrow(D::Minus1, 1, 1)?;
    let y0 = (x0.broadcast_mul(&cos)? - x1.broadcast_mul(&sin)?)?;
    let y1 = (x0.broadcast_mul(&sin)? + x1.broadcast_mul(&cos)?)?;
    Tensor::cat(&[y0, y1], D::Minus1)?.reshape((b, h, n, dh))?.to_dtype(dt)
}

/// Sinusoidal timestep embedding: t in [0, 1] scaled by 1000, `dim` features
/// (cos half then sin half), max period 10000.
pub fn timestep_embedding(t: &Tensor, dim: usize) -> Result<Tensor> {
    let half = dim / 2;
    let freqs: Vec<f32> = (0..half)
        .map(|i| (-(10000f64.ln()) * i as f64 / half as f64).exp() as f32)
        .collect();
    let freqs = Tensor::from_vec(freqs, (1, half), t.device())?;
    let args = (t.to_dtype(DType::F32)?.unsqueeze(1)? * 1000.0)?.broadcast_mul(&freqs)?;
    Tensor::cat(&[args.cos()?, args.sin()?], 1)
}

/// Additive attention bias (B, 1, 1, Nimg + Ntxt) from text lengths: 0 for image keys and
/// real text tokens, a large negative value for text padding.
pub fn padding_bias(n_img: usize, txt_lens: &[usize], n_txt: usize, device: &Device) -> Result<Tensor> {
    let b = txt_lens.len();
    let mut v = vec![0f32; b * (n_img + n_txt)];
    for (i, &len) in txt_lens.iter().enumerate() {
        for j in len..n_txt {
            v[i * (n_img + n_txt) + n_img + j] = -1e9;
        }
    }
    Tensor::from_vec(v, (b, 1, 1, n_img + n_txt), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_rotates_pairs_by_position_and_preserves_norm() -> Result<()> {
        let dev = Device::Cpu;
        let (cos, sin) = rope_tables(2, 3, 8, 10000.0, &dev)?;
        assert_eq!(cos.dims(), &[6, 4]);
        // token (row 1, col 2) = index 5: first two pairs use row 1, last two use col 2
        let c = cos.to_vec2::<f32>()?;
        assert!((c[5][0] - 1f32.cos()).abs() < 1e-6);
        assert!((c[5][1] - (1.0f64 / 100.0).cos() as f32).abs() < 1e-6); // freq 10000^(-2/4)
        assert!((c[5][2] - 2f32.cos()).abs() < 1e-6);
        // token 0 is not rotated
        let x = Tensor::arange(0f32, 48.0, &dev)?.reshape((1, 1, 6, 8))?;
        let y = apply_rope(&x, &cos, &sin)?;
        assert_eq!(y.narrow(2, 0, 1)?.flatten_all()?.to_vec1::<f32>()?, x.narrow(2, 0, 1)?.flatten_all()?.to_vec1::<f32>()?);
        let nx = x.sqr()?.sum_all()?.to_scalar::<f32>()?;
        let ny = y.sqr()?.sum_all()?.to_scalar::<f32>()?;
        assert!((nx - ny).abs() / nx < 1e-5);
        Ok(())
    }

    #[test]
    fn padding_mask_removes_padded_keys() -> Result<()> {
        let dev = Device::Cpu;
        // 1 query, 2 image keys + 2 text keys of which 1 is padding
        let q = Tensor::new(&[[[[1f32, 0.0]]]], &dev)?; // (1,1,1,2)
        let k = Tensor::new(&[[[[1f32, 0.0], [0.0, 1.0], [2.0, 0.0], [50.0, 0.0]]]], &dev)?;
        let v = Tensor::new(&[[[[1f32, 0.0], [2.0, 0.0], [3.0, 0.0], [1000.0, 0.0]]]], &dev)?;
        let bias = padding_bias(2, &[1], 2, &dev)?;
        let out = attention(&q, &k, &v, Some(&bias))?.flatten_all()?.to_vec1::<f32>()?;
        // reference without the padded key, by hand
        let s = [1.0f64, 0.0, 2.0].map(|x| (x / 2f64.sqrt()).exp());
        let want = (s[0] * 1.0 + s[1] * 2.0 + s[2] * 3.0) / s.iter().sum::<f64>();
        assert!((out[0] as f64 - want).abs() < 1e-5, "{} vs {want}", out[0]);
        assert_eq!(attention(&q, &k, &v, Some(&bias))?.dims(), &[1, 1, 1, 2]);
        Ok(())
    }

    #[test]
    fn norms_match_definitions() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[3f32, 4.0]], &dev)?;
        let y = rms_norm(&x, &Tensor::new(&[1f32, 2.0], &dev)?, 0.0)?.to_vec2::<f32>()?;
        let r = (12.5f32).sqrt();
        assert!((y[0][0] - 3.0 / r).abs() < 1e-6 && (y[0][1] - 8.0 / r).abs() < 1e-6);
        let z = layer_norm(&x, 0.0)?.to_vec2::<f32>()?;
        assert!((z[0][0] + 1.0).abs() < 1e-6 && (z[0][1] - 1.0).abs() < 1e-6);
        Ok(())
    }
}
