//! Fused CPU kernels with a real backward pass, for the hot element-wise chains of the PRX
//! block (see docs/performance.md: the step is dominated by small element-wise ops, each
//! allocating and walking memory). Each op is a candle custom op whose `bwd` is exact, so
//! gradients flow as through the composed version; `model::layers` calls them for
//! contiguous f32 tensors on CPU and keeps the differentiable compositions for every other
//! case (bf16, CUDA until CUDA kernels are added behind the same ops).

pub mod attention;
pub mod attn_core;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod fastmath;
pub mod gelu;
pub mod launch;
pub mod linear;
pub mod loss;
pub mod norm;
pub mod reduce;
pub mod residual;
pub mod rms;
pub mod rope;
pub mod softmax;

use candle_core::{CpuStorage, DType, Layout, Result, Tensor};
use std::sync::OnceLock;

/// Fused kernels are used unless the environment sets `ABLATE_FUSED=0` (to compare against
/// the composed reference, e.g. loss curves before and after).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("ABLATE_FUSED").map(|v| v != "0").unwrap_or(true))
}

/// Whether `t` can take the fused CPU path.
pub fn applies(t: &Tensor) -> bool {
    enabled() && t.dtype() == DType::F32 && t.device().is_cpu()
}

/// The fused CPU kernels compute in f32. bf16 tensors reach them through f32 copies when
/// every input is f32 or bf16 on the CPU and at least one is bf16. That is what a bf16 kernel
/// does inside (GPU kernels read bf16, compute in f32 and round the result once); callers
/// convert the result to the dtype their composition returns (that of their first input:
/// bf16 in the bf16 arms). Returns the f32 copies, or None where this route does not apply
/// (kernels off, another device or dtype, or no bf16 input).
pub fn via_f32(ts: &[&Tensor]) -> Result<Option<Vec<Tensor>>> {
    let cpu_float = |t: &&Tensor| t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::BF16);
    if !crate::kernels::enabled() || !ts.iter().all(cpu_float) || !ts.iter().any(|t| t.dtype() == DType::BF16) {
        return Ok(None);
    }
    ts.iter().map(|t| f32_of(t)).collect::<Result<Vec<_>>>().map(Some)
}

/// `x` in f32 (itself when it already is).
pub(crate) fn f32_of(x: &Tensor) -> Result<Tensor> {
    if x.dtype() == DType::F32 { Ok(x.clone()) } else { x.to_dtype(DType::F32) }
}

/// Whether `ts` can take the CUDA kernels (`kernels::cuda`): a CUDA build, fused kernels on,
/// every tensor on a CUDA device in the same dtype, f32 or bf16. Always false without the
/// `cuda` feature, so callers need no `cfg` of their own.
pub fn on_cuda(ts: &[&Tensor]) -> bool {
    #[cfg(feature = "cuda")]
    {
        !ts.is_empty() && ts.iter().all(|t| cuda::applies(t)) && ts.iter().all(|t| t.dtype() == ts[0].dtype())
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = ts;
        false
    }
}

/// For an op led by `x` (whose dtype the result takes) on CUDA: the other inputs `ts` cast
/// to `x`'s dtype (under bf16 autocast the residual stream and the norms' weights are f32
/// while activations are bf16), or None where the CUDA kernels do not apply.
pub fn cuda_cast_like(x: &Tensor, ts: &[&Tensor]) -> Result<Option<Vec<Tensor>>> {
    let float = |t: &Tensor| matches!(t.dtype(), DType::F32 | DType::BF16) && t.device().same_device(x.device());
    if !on_cuda(&[x]) || !ts.iter().all(|t| float(t)) {
        return Ok(None);
    }
    ts.iter().map(|t| t.to_dtype(x.dtype())).collect::<Result<Vec<_>>>().map(Some)
}

/// The f32 slice of a contiguous CPU tensor.
pub(crate) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else { candle_core::bail!("{what}: fused kernel expects f32") };
    let (start, end) = l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg(format!("{what}: fused kernel expects a contiguous tensor")))?;
    Ok(&v[start..end])
}

/// Runs `f` on the f32 data of a CPU tensor without copying it when it is contiguous (a
/// contiguous copy is made otherwise).
pub(crate) fn with_f32<R>(t: &Tensor, what: &str, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = if t.is_contiguous() { t.clone() } else { t.contiguous()? };
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(s) => f(f32_slice(s, layout, what)?),
        _ => candle_core::bail!("{what}: fused kernel expects a CPU tensor"),
    }
}

/// faer's AVX-512 kernels return with the upper halves of the vector registers dirty. Until
/// a `vzeroupper`, every SSE instruction on that thread (all of Rust's scalar float code for
/// the baseline target, glibc's non-VEX math) pays a transition penalty: measured, it made the
/// rest of a training step several times slower. Every caller of faer's
/// kernels therefore ends with one on the calling thread.
#[inline]
pub(crate) fn clear_upper_vector_state() {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx")]
        unsafe fn zeroupper() {
            std::arch::x86_64::_mm256_zeroupper();
        }
        if std::arch::is_x86_feature_detected!("avx") {
            // SAFETY: the CPU supports AVX (checked above); vzeroupper has no other effect.
            unsafe { zeroupper() }
        }
    }
}

/// [`clear_upper_vector_state`] on this thread and on every rayon worker, after faer calls
/// that may have run on the pool (the evaluation's statistics).
pub fn clear_upper_vector_state_everywhere() {
    rayon::broadcast(|_| clear_upper_vector_state());
    clear_upper_vector_state();
}

/// Rows processed per rayon task: enough work to amortise scheduling.
pub(crate) fn rows_per_task(row_len: usize) -> usize {
    (16_384 / row_len.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    //! Each fused op against the composed candle version, forward and backward, plus central
    //! finite differences on a few elements.
    use crate::model::layers::{layer_norm, modulate};
    use crate::rng::Rng;
    use candle_core::{Device, Result, Tensor, Var, D};

    fn randn(shape: &[usize], seed: u64, scale: f64) -> Result<Tensor> {
        let n = shape.iter().product();
        Tensor::from_vec(Rng::new(seed).normal_vec(n), shape, &Device::Cpu)? * scale
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    /// The fused op's value and gradients `(yf, gf)` equal the composed op's `(yc, gc)` within
    /// `tol_y` and `tol_g` (largest absolute difference).
    fn assert_matches((yf, gf): (&Tensor, &[Tensor]), (yc, gc): (&Tensor, &[Tensor]), tol_y: f32, tol_g: f32) -> Result<()> {
        assert!(max_diff(yf, yc)? < tol_y, "forward {}", max_diff(yf, yc)?);
        assert_eq!(gf.len(), gc.len(), "gradient count");
        for (i, (a, c)) in gf.iter().zip(gc).enumerate() {
            assert!(max_diff(a, c)? < tol_g, "grad {i}: {}", max_diff(a, c)?);
        }
        Ok(())
    }

    /// Value and all input gradients of `sum(f(inputs) * w)`.
    fn value_and_grads(f: impl Fn(&[Tensor]) -> Result<Tensor>, inputs: &[Var], w: &Tensor) -> Result<(Tensor, Vec<Tensor>)> {
        let ts: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
        let y = f(&ts)?;
        let g = (&y * w)?.sum_all()?.backward()?;
        Ok((y, inputs.iter().map(|v| g.get(v.as_tensor()).unwrap().clone()).collect()))
    }

    #[test]
    fn fused_attention_matches_composed() -> Result<()> {
        use crate::model::layers::attention_composed;
        let (b, h, nq, nk, dh) = (2, 3, 5, 7, 8);
        let q = Var::from_tensor(&randn(&[b, h, nq, dh], 31, 1.0)?)?;
        let k = Var::from_tensor(&randn(&[b, h, nk, dh], 32, 1.0)?)?;
        let v = Var::from_tensor(&randn(&[b, h, nk, dh], 33, 1.0)?)?;
        // padding bias: the last two keys of sample 1 masked
        let mut bias = vec![0f32; b * nk];
        bias[nk + 5] = -1e9;
        bias[nk + 6] = -1e9;
        let bias = Tensor::from_vec(bias, (b, 1, 1, nk), &Device::Cpu)?;
        let w = randn(&[b, h, nq, dh], 34, 1.0)?;
        let fused = |t: &[Tensor]| super::attention::attention(&t[0], &t[1], &t[2], Some(&bias)).map(|o| o.expect("shapes fit"));
        let (yf, gf) = value_and_grads(fused, &[q.clone(), k.clone(), v.clone()], &w)?;
        let (yc, gc) = value_and_grads(|t| attention_composed(&t[0], &t[1], &t[2], Some(&bias)), &[q.clone(), k.clone(), v.clone()], &w)?;
        assert_matches((&yf, &gf), (&yc, &gc), 1e-5, 1e-4)?;
        // masked keys get no gradient and no weight
        let dk = gf[1].narrow(0, 1, 1)?.narrow(2, 5, 2)?;
        assert_eq!(dk.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?, 0.0);
        // a finite difference on one query element
        let f = |qv: &Tensor| -> Result<f32> {
            let o = super::attention::attention(qv, k.as_tensor(), v.as_tensor(), Some(&bias))?.expect("fits");
            (o * &w)?.sum_all()?.to_scalar::<f32>()
        };
        let eps = 1e-2f32;
        let mut qd = q.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        let idx = 17;
        qd[idx] += eps;
        let plus = f(&Tensor::from_vec(qd.clone(), q.shape(), &Device::Cpu)?)?;
        qd[idx] -= 2.0 * eps;
        let minus = f(&Tensor::from_vec(qd, q.shape(), &Device::Cpu)?)?;
        let fd = (plus - minus) / (2.0 * eps);
        let an = gf[0].flatten_all()?.to_vec1::<f32>()?[idx];
        assert!((fd - an).abs() < 2e-2 * an.abs().max(1.0), "finite difference {fd} vs analytic {an}");
        Ok(())
    }

    #[test]
    fn fused_linear_matches_composed_with_and_without_bias() -> Result<()> {
        use crate::model::Params;
        use candle_nn::VarMap;
        for bias in [false, true] {
            let p = Params::new(VarMap::new(), 5, candle_core::DType::F32, &Device::Cpu);
            let lin = crate::model::params::Lin::new(&p.pp("l"), 24, 40, bias)?;
            let x = Var::from_tensor(&randn(&[3, 11, 24], 51, 1.0)?)?;
            let w = randn(&[3, 11, 40], 52, 1.0)?;
            let (yf, gf) = value_and_grads(|t| lin.forward(&t[0]), &[x.clone()], &w)?;
            let (yc, gc) = value_and_grads(|t| lin.forward_composed(&t[0]), &[x.clone()], &w)?;
            assert!(max_diff(&yf, &yc)? < 1e-5, "forward {}", max_diff(&yf, &yc)?);
            assert!(max_diff(&gf[0], &gc[0])? < 1e-4, "dx {}", max_diff(&gf[0], &gc[0])?);
            let gw = |f: &dyn Fn(&Tensor) -> Result<Tensor>| -> Result<Vec<Tensor>> {
                let g = (f(x.as_tensor())? * &w)?.sum_all()?.backward()?;
                let mut out = vec![g.get(&lin.weight).expect("weight grad").clone()];
                if let Some(b) = &lin.bias {
                    out.push(g.get(b).expect("bias grad").clone());
                }
                Ok(out)
            };
            let (a, c) = (gw(&|t| lin.forward(t))?, gw(&|t| lin.forward_composed(t))?);
            assert_eq!(a.len(), if bias { 2 } else { 1 });
            for (i, (a, c)) in a.iter().zip(&c).enumerate() {
                assert!(max_diff(a, c)? < 1e-4, "parameter grad {i}: {}", max_diff(a, c)?);
            }
        }
        // 2-D input and an input that does not fit the weight
        let p = Params::new(VarMap::new(), 6, candle_core::DType::F32, &Device::Cpu);
        let lin = crate::model::params::Lin::new(&p.pp("l"), 8, 5, true)?;
        let x = randn(&[4, 8], 53, 1.0)?;
        assert!(max_diff(&lin.forward(&x)?, &lin.forward_composed(&x)?)? < 1e-5);
        let err = lin.forward(&randn(&[4, 7], 54, 1.0)?).unwrap_err().to_string();
        assert!(err.contains("does not fit"), "{err}");
        Ok(())
    }

    /// The optimizer's faer product against candle's matmul, with a transposed (strided)
    /// operand as Muon passes it, large enough to be split over threads (m n k above
    /// `PAR_MIN_MNK`) in a pool of two; and a misfit.
    #[test]
    fn matmul_2d_matches_candle() -> Result<()> {
        let a = randn(&[300, 70], 55, 1.0)?;
        let b = randn(&[120, 70], 56, 1.0)?.t()?;
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let (f, c) = (pool.install(|| super::linear::matmul_2d(&a, &b))?, a.matmul(&b)?);
        assert_eq!(f.dims(), &[300, 120]);
        assert!(max_diff(&f, &c)? < 1e-4, "{}", max_diff(&f, &c)?);
        let err = super::linear::matmul_2d(&a, &a).unwrap_err().to_string();
        assert!(err.contains("does not fit"), "{err}");
        Ok(())
    }

    #[test]
    fn fused_attention_core_matches_composed_with_shared_and_per_sample_rope() -> Result<()> {
        use crate::model::layers::{attention_core, attention_core_composed, padding_bias, rope_tables};
        let (b, n, t, heads, dh) = (2, 6, 4, 3, 8);
        let h = heads * dh;
        let (cos, sin) = rope_tables(2, 3, dh, 10000.0, &Device::Cpu)?;
        // per-sample tables: sample 1 sees the tokens in reverse order (as after routing)
        let idx = Tensor::new(&[0u32, 1, 2, 3, 4, 5, 5, 4, 3, 2, 1, 0], &Device::Cpu)?;
        let (pc, ps) = (cos.index_select(&idx, 0)?.reshape((b, n, dh / 2))?, sin.index_select(&idx, 0)?.reshape((b, n, dh / 2))?);
        let bias = padding_bias(n, &[4, 2], t, &Device::Cpu)?; // sample 1: two padded text keys
        let qkv = Var::from_tensor(&randn(&[b, n, 3 * h], 61, 1.5)?)?;
        let tkv = Var::from_tensor(&randn(&[b, t, 2 * h], 62, 1.5)?)?;
        let wq = Var::from_tensor(&(randn(&[dh], 63, 0.3)? + 1.0)?)?;
        let wk = Var::from_tensor(&(randn(&[dh], 64, 0.3)? + 1.0)?)?;
        let wt = Var::from_tensor(&(randn(&[dh], 65, 0.3)? + 1.0)?)?;
        let w = randn(&[b, n, h], 66, 1.0)?;
        let inputs = [qkv.clone(), tkv.clone(), wq, wk, wt];
        for (c, s) in [(&cos, &sin), (&pc, &ps)] {
            let fused = |x: &[Tensor]| attention_core(&x[0], &x[1], [&x[2], &x[3], &x[4]], c, s, &bias, heads, 1e-6);
            let composed = |x: &[Tensor]| attention_core_composed(&x[0], &x[1], [&x[2], &x[3], &x[4]], c, s, &bias, heads, 1e-6);
            let (yf, gf) = value_and_grads(fused, &inputs, &w)?;
            let (yc, gc) = value_and_grads(composed, &inputs, &w)?;
            assert_matches((&yf, &gf), (&yc, &gc), 1e-5, 1e-4)?;
            // a second backward through the same graph (REPA-E does one per objective) finds
            // forward's kept heads already used and recomputes them: same gradients
            let ts: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
            let loss = (fused(&ts)? * &w)?.sum_all()?;
            let (first, second) = (loss.backward()?, loss.backward()?);
            for v in &inputs {
                let (a, c) = (first.get(v.as_tensor()).expect("grad"), second.get(v.as_tensor()).expect("grad"));
                assert_eq!(max_diff(a, c)?, 0.0, "recomputed backward differs");
            }
            // padded text keys and values get exactly zero gradient
            let padded = gf[1].narrow(0, 1, 1)?.narrow(1, 2, 2)?;
            assert_eq!(padded.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?, 0.0);
        }
        // a finite difference on one element of qkv (a query of head 1)
        let f = |x: &Tensor| -> Result<f32> {
            (attention_core(x, tkv.as_tensor(), [inputs[2].as_tensor(), inputs[3].as_tensor(), inputs[4].as_tensor()], &cos, &sin, &bias, heads, 1e-6)? * &w)?.sum_all()?.to_scalar::<f32>()
        };
        let (_, g) = value_and_grads(|x| attention_core(&x[0], tkv.as_tensor(), [inputs[2].as_tensor(), inputs[3].as_tensor(), inputs[4].as_tensor()], &cos, &sin, &bias, heads, 1e-6), &[qkv.clone()], &w)?;
        let base = qkv.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        let i = 3 * h + dh + 2; // token 1, head 1, dim 2 of the queries
        let bump = |delta: f32| -> Result<f32> {
            let mut v = base.clone();
            v[i] += delta;
            f(&Tensor::from_vec(v, (b, n, 3 * h), &Device::Cpu)?)
        };
        let fd = (bump(1e-2)? - bump(-1e-2)?) / 2e-2;
        let an = g[0].flatten_all()?.to_vec1::<f32>()?[i];
        assert!((fd - an).abs() < 2e-2 * an.abs().max(1.0), "finite difference {fd} vs analytic {an}");
        Ok(())
    }

    #[test]
    fn fused_gated_residual_matches_composed() -> Result<()> {
        use crate::model::layers::{gated_residual, gated_residual_composed};
        let x = Var::from_tensor(&randn(&[3, 5, 12], 71, 1.0)?)?;
        let y = Var::from_tensor(&randn(&[3, 5, 12], 72, 1.0)?)?;
        let g = Var::from_tensor(&randn(&[3, 12], 73, 1.0)?)?;
        let w = randn(&[3, 5, 12], 74, 1.0)?;
        let inputs = [x, y, g];
        let (yf, gf) = value_and_grads(|t| gated_residual(&t[0], &t[1], &t[2]), &inputs, &w)?;
        let (yc, gc) = value_and_grads(|t| gated_residual_composed(&t[0], &t[1], &t[2]), &inputs, &w)?;
        assert_matches((&yf, &gf), (&yc, &gc), 1e-6, 1e-5)?;
        Ok(())
    }

    /// bf16 inputs reach the fused ops through f32 copies (`kernels::via_f32`): every op's
    /// value and input gradients against its composition run in bf16, within bf16 rounding
    /// (relative to the largest magnitude), and the results come back as bf16.
    #[test]
    fn bf16_through_the_fused_ops_matches_the_bf16_compositions() -> Result<()> {
        use crate::model::layers::*;
        use candle_core::DType::{BF16, F32};
        type Op<'a> = Box<dyn Fn(&[Tensor]) -> Result<Tensor> + 'a>;
        let bf = |shape: &[usize], seed: u64, offset: f64| -> Result<Var> { Var::from_tensor(&(randn(shape, seed, 1.0)? + offset)?.to_dtype(BF16)?) };
        let rel = |a: &Tensor, c: &Tensor| -> Result<f32> {
            let (a, c) = (a.to_dtype(F32)?, c.to_dtype(F32)?);
            let scale = c.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?.max(1e-3);
            Ok(max_diff(&a, &c)? / scale)
        };
        let check = |name: &str, fused: Op, composed: Op, inputs: &[Var]| -> Result<()> {
            let ts: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
            let y = fused(&ts)?;
            assert_eq!(y.dtype(), BF16, "{name}: result dtype");
            let w = randn(y.dims(), 99, 1.0)?.to_dtype(BF16)?;
            let (yf, gf) = value_and_grads(&*fused, inputs, &w)?;
            let (yc, gc) = value_and_grads(&*composed, inputs, &w)?;
            assert!(rel(&yf, &yc)? < 3e-2, "{name}: value differs by {}", rel(&yf, &yc)?);
            for (i, (a, c)) in gf.iter().zip(&gc).enumerate() {
                assert_eq!(a.dtype(), BF16, "{name}: gradient {i} dtype");
                assert!(rel(a, c)? < 3e-2, "{name}: gradient {i} differs by {}", rel(a, c)?);
            }
            Ok(())
        };
        let (x, y, g) = (bf(&[3, 5, 12], 1, 0.0)?, bf(&[3, 5, 12], 2, 0.0)?, bf(&[3, 12], 3, 0.0)?);
        check("gated_residual", Box::new(|t| gated_residual(&t[0], &t[1], &t[2])), Box::new(|t| gated_residual_composed(&t[0], &t[1], &t[2])), &[x.clone(), y.clone(), g.clone()])?;
        check("norm_modulate", Box::new(|t| norm_modulate(&t[0], &t[1], &t[2], 1e-6)), Box::new(|t| modulate(&layer_norm(&t[0], 1e-6)?, &t[1], &t[2])), &[x.clone(), g.clone(), bf(&[3, 12], 4, 0.0)?])?;
        check("layer_norm_affine", Box::new(|t| layer_norm_affine(&t[0], &t[1], &t[2], 1e-5)), Box::new(|t| layer_norm_affine_composed(&t[0], &t[1], &t[2], 1e-5)), &[x.clone(), bf(&[12], 15, 1.0)?, bf(&[12], 16, 0.0)?])?;
        check("gelu", Box::new(|t| gelu(&t[0])), Box::new(|t| t[0].gelu()), &[x.clone()])?;
        check("gated_gelu", Box::new(|t| gated_gelu(&t[0], &t[1])), Box::new(|t| t[0].gelu()? * &t[1]), &[x.clone(), y.clone()])?;
        let (q, k, v) = (bf(&[2, 3, 7, 8], 5, 0.0)?, bf(&[2, 3, 9, 8], 6, 0.0)?, bf(&[2, 3, 9, 8], 7, 0.0)?);
        check("attention", Box::new(|t| attention(&t[0], &t[1], &t[2], None)), Box::new(|t| attention_composed(&t[0], &t[1], &t[2], None)), &[q, k, v])?;
        let rw = bf(&[8], 8, 1.0)?;
        check("rms_norm", Box::new(|t| rms_norm(&t[0], &t[1], 1e-6)), Box::new(|t| rms_norm_composed(&t[0], &t[1], 1e-6)), &[bf(&[2, 3, 6, 8], 9, 0.0)?, rw.clone()])?;
        let (cos, sin) = rope_tables(2, 3, 8, 10000.0, &Device::Cpu)?;
        check("apply_rope", Box::new(|t| apply_rope(&t[0], &cos, &sin)), Box::new(|t| apply_rope_composed(&t[0], &cos, &sin)), &[bf(&[2, 3, 6, 8], 10, 0.0)?])?;
        let bias = padding_bias(6, &[4, 2], 4, &Device::Cpu)?;
        let core_inputs = [bf(&[2, 6, 3 * 24], 11, 0.0)?, bf(&[2, 4, 2 * 24], 12, 0.0)?, rw.clone(), bf(&[8], 13, 1.0)?, bf(&[8], 14, 1.0)?];
        let core = |composed: bool| -> Op {
            let (c, s, b) = (cos.clone(), sin.clone(), bias.clone());
            Box::new(move |t: &[Tensor]| {
                let norms = [&t[2], &t[3], &t[4]];
                if composed { attention_core_composed(&t[0], &t[1], norms, &c, &s, &b, 3, 1e-6) } else { attention_core(&t[0], &t[1], norms, &c, &s, &b, 3, 1e-6) }
            })
        };
        check("attention_core", core(false), core(true), &core_inputs)?;
        // a linear layer with f32 weights under bf16 autocast: weights rounded to bf16 first
        let p = crate::model::Params::new(candle_nn::VarMap::new(), 7, F32, &Device::Cpu);
        let lin = crate::model::params::Lin::new(&p.pp("l"), 12, 20, true)?;
        check("linear", Box::new(|t| lin.forward(&t[0])), Box::new(|t| lin.forward_composed(&t[0])), &[x])?;
        Ok(())
    }

    /// The loss's squared error: value and both gradients against the composition, over
    /// more than one chunk; a finite difference in f64 on one element; a shape misfit.
    #[test]
    fn fused_mean_squared_error_matches_composed() -> Result<()> {
        use crate::model::layers::{mean_squared_error, mean_squared_error_composed};
        let a = Var::from_tensor(&randn(&[5, 3, 40, 41], 81, 1.0)?)?;
        let b = Var::from_tensor(&randn(&[5, 3, 40, 41], 82, 1.0)?)?;
        let one = Tensor::new(1f32, &Device::Cpu)?;
        let inputs = [a.clone(), b.clone()];
        let (yf, gf) = value_and_grads(|t| mean_squared_error(&t[0], &t[1]), &inputs, &one)?;
        let (yc, gc) = value_and_grads(|t| mean_squared_error_composed(&t[0], &t[1]), &inputs, &one)?;
        assert!(max_diff(&yf, &yc)? < 1e-5 * yc.to_scalar::<f32>()?.abs(), "value {} vs {}", yf, yc);
        for (i, (x, c)) in gf.iter().zip(&gc).enumerate() {
            assert!(max_diff(x, c)? < 1e-9, "grad {i}: {}", max_diff(x, c)?);
        }
        let (av, bv) = (a.as_tensor().flatten_all()?.to_vec1::<f32>()?, b.as_tensor().flatten_all()?.to_vec1::<f32>()?);
        let k = 1234;
        let loss = |ak: f64| -> f64 {
            let s: f64 = av.iter().zip(&bv).enumerate().map(|(i, (&x, &y))| ((if i == k { ak } else { x as f64 }) - y as f64).powi(2)).sum();
            s / av.len() as f64
        };
        let h = 1e-3;
        let fd = (loss(av[k] as f64 + h) - loss(av[k] as f64 - h)) / (2.0 * h);
        let an = gf[0].flatten_all()?.to_vec1::<f32>()?[k] as f64;
        assert!((fd - an).abs() < 1e-6 * an.abs().max(1e-3), "finite difference {fd} vs analytic {an}");
        let err = crate::kernels::loss::mean_squared_error(a.as_tensor(), &randn(&[5, 3, 40, 40], 83, 1.0)?).unwrap_err().to_string();
        assert!(err.contains("differ"), "{err}");
        Ok(())
    }

    #[test]
    fn packed_gated_mlp_matches_two_projections() -> Result<()> {
        use crate::model::layers::gated_mlp_hidden;
        use crate::model::{Lin, Params};
        let p = Params::new(candle_nn::VarMap::new(), 8, candle_core::DType::F32, &Device::Cpu);
        let (gate, up) = (Lin::new(&p.pp("gate"), 16, 28, false)?, Lin::new(&p.pp("up"), 16, 28, false)?);
        let x = Var::from_tensor(&randn(&[2, 5, 16], 81, 1.0)?)?;
        let w = randn(&[2, 5, 28], 82, 1.0)?;
        let all = |f: &dyn Fn(&Tensor) -> Result<Tensor>| -> Result<(Tensor, Vec<Tensor>)> {
            let y = f(x.as_tensor())?;
            let g = (&y * &w)?.sum_all()?.backward()?;
            let grads = [x.as_tensor(), &gate.weight, &up.weight].iter().map(|t| g.get(t).expect("gradient").clone()).collect();
            Ok((y, grads))
        };
        let (yf, gf) = all(&|t| gated_mlp_hidden(t, &gate, &up))?;
        let (yc, gc) = all(&|t| gate.forward_composed(t)?.gelu()? * up.forward_composed(t)?)?;
        assert_matches((&yf, &gf), (&yc, &gc), 1e-5, 1e-4)?;
        Ok(())
    }

    #[test]
    fn fused_rms_norm_matches_composed() -> Result<()> {
        use crate::model::layers::rms_norm_composed;
        let x = Var::from_tensor(&randn(&[2, 3, 5, 8], 41, 2.0)?)?;
        let wt = Var::from_tensor(&(randn(&[8], 42, 0.3)? + 1.0)?)?;
        let w = randn(&[2, 3, 5, 8], 43, 1.0)?;
        let (yf, gf) = value_and_grads(|t| super::rms::rms_norm(&t[0], &t[1], 1e-6), &[x.clone(), wt.clone()], &w)?;
        let (yc, gc) = value_and_grads(|t| rms_norm_composed(&t[0], &t[1], 1e-6), &[x, wt], &w)?;
        assert_matches((&yf, &gf), (&yc, &gc), 1e-5, 1e-4)?;
        Ok(())
    }

    #[test]
    fn fused_gated_gelu_matches_composed() -> Result<()> {
        let a = Var::from_tensor(&randn(&[4, 9, 33], 7, 2.0)?)?;
        let b = Var::from_tensor(&randn(&[4, 9, 33], 8, 1.0)?)?;
        let w = randn(&[4, 9, 33], 9, 1.0)?;
        let (yf, gf) = value_and_grads(|t| super::gelu::gated_gelu(&t[0], &t[1]), &[a.clone(), b.clone()], &w)?;
        let (yc, gc) = value_and_grads(|t| t[0].gelu()? * &t[1], &[a.clone(), b], &w)?;
        assert!(max_diff(&yf, &yc)? < 1e-5);
        for (f, c) in gf.iter().zip(&gc) {
            assert!(max_diff(f, c)? < 1e-4, "{}", max_diff(f, c)?);
        }
        let (yf, gf) = value_and_grads(|t| super::gelu::gelu(&t[0]), &[a.clone()], &w)?;
        let (yc, gc) = value_and_grads(|t| t[0].gelu(), &[a], &w)?;
        assert!(max_diff(&yf, &yc)? < 1e-5);
        assert!(max_diff(&gf[0], &gc[0])? < 1e-4, "{}", max_diff(&gf[0], &gc[0])?);
        Ok(())
    }

    #[test]
    fn fused_rope_matches_composed_for_shared_and_per_sample_tables() -> Result<()> {
        use crate::model::layers::{apply_rope, rope_tables};
        let (cos, sin) = rope_tables(3, 4, 16, 10000.0, &Device::Cpu)?;
        let x = Var::from_tensor(&randn(&[2, 3, 12, 16], 10, 1.0)?)?;
        let w = randn(&[2, 3, 12, 16], 11, 1.0)?;
        let (yf, gf) = value_and_grads(|t| super::rope::rope(&t[0], &cos, &sin), &[x.clone()], &w)?;
        // the composed reference: apply_rope with fused kernels bypassed (bf16 path is the
        // composition; here we call it on f32 through the same math by hand)
        let composed = |t: &[Tensor], c: &Tensor, s: &Tensor| -> Result<Tensor> {
            let (b, h, n, dh) = t[0].dims4()?;
            let (c, s) = if c.rank() == 2 { (c.reshape((1, 1, n, dh / 2, 1))?, s.reshape((1, 1, n, dh / 2, 1))?) } else { (c.reshape((b, 1, n, dh / 2, 1))?, s.reshape((b, 1, n, dh / 2, 1))?) };
            let x = t[0].reshape((b, h, n, dh / 2, 2))?;
            let (x0, x1) = (x.narrow(4, 0, 1)?, x.narrow(4, 1, 1)?);
            let y0 = (x0.broadcast_mul(&c)? - x1.broadcast_mul(&s)?)?;
            let y1 = (x0.broadcast_mul(&s)? + x1.broadcast_mul(&c)?)?;
            Tensor::cat(&[y0, y1], 4)?.reshape((b, h, n, dh))
        };
        let (yc, gc) = value_and_grads(|t| composed(t, &cos, &sin), &[x.clone()], &w)?;
        assert!(max_diff(&yf, &yc)? < 1e-6);
        assert!(max_diff(&gf[0], &gc[0])? < 1e-6);
        assert!(max_diff(&apply_rope(x.as_tensor(), &cos, &sin)?, &yc)? < 1e-6);
        // per-sample tables (token routing): sample 1 uses rows in another order
        let idx = Tensor::new(&[0u32, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0], &Device::Cpu)?;
        let (pc, ps) = (cos.index_select(&idx, 0)?.reshape((2, 12, 8))?, sin.index_select(&idx, 0)?.reshape((2, 12, 8))?);
        let (yf, gf) = value_and_grads(|t| super::rope::rope(&t[0], &pc, &ps), &[x.clone()], &w)?;
        let (yc, gc) = value_and_grads(|t| composed(t, &pc, &ps), &[x], &w)?;
        assert!(max_diff(&yf, &yc)? < 1e-6);
        assert!(max_diff(&gf[0], &gc[0])? < 1e-6);
        Ok(())
    }

    #[test]
    fn fused_softmax_matches_composed_forward_and_backward() -> Result<()> {
        let x = Var::from_tensor(&randn(&[3, 5, 37], 1, 3.0)?)?;
        let w = randn(&[3, 5, 37], 2, 1.0)?;
        let fused = super::softmax::softmax_last_dim(x.as_tensor())?;
        let composed = candle_nn::ops::softmax(x.as_tensor(), D::Minus1)?;
        assert!(max_diff(&fused, &composed)? < 1e-6);
        let gf = (fused * &w)?.sum_all()?.backward()?.get(x.as_tensor()).unwrap().clone();
        let gc = (composed * &w)?.sum_all()?.backward()?.get(x.as_tensor()).unwrap().clone();
        assert!(max_diff(&gf, &gc)? < 1e-6, "{}", max_diff(&gf, &gc)?);
        // finite differences on a few elements (f64 reference)
        let xv = x.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        let wv = w.flatten_all()?.to_vec1::<f32>()?;
        let gv = gf.flatten_all()?.to_vec1::<f32>()?;
        let loss = |xs: &[f32]| -> f64 {
            xs.chunks(37).zip(wv.chunks(37)).map(|(r, wr)| {
                let m = r.iter().fold(f32::MIN, |a, &b| a.max(b)) as f64;
                let e: Vec<f64> = r.iter().map(|&v| (v as f64 - m).exp()).collect();
                let s: f64 = e.iter().sum();
                e.iter().zip(wr).map(|(a, &b)| a / s * b as f64).sum::<f64>()
            }).sum()
        };
        for &i in &[0usize, 17, 200, 554] {
            let mut p = xv.clone();
            let mut m = xv.clone();
            p[i] += 1e-2;
            m[i] -= 1e-2;
            let fd = (loss(&p) - loss(&m)) / 2e-2;
            assert!((fd - gv[i] as f64).abs() < 1e-3, "element {i}: fd {fd} vs {}", gv[i]);
        }
        Ok(())
    }

    /// The text encoder's LayerNorm with affine weight and bias (the adaLN kernel with the
    /// weights shared by the batch): value and all gradients against the composition; shift
    /// and scale that fit neither per sample nor shared are refused.
    #[test]
    fn fused_layer_norm_affine_matches_composed() -> Result<()> {
        use crate::model::layers::{layer_norm_affine, layer_norm_affine_composed};
        let x = Var::from_tensor(&(randn(&[3, 5, 16], 21, 2.0)? + 0.5)?)?;
        let wt = Var::from_tensor(&(randn(&[16], 22, 0.3)? + 1.0)?)?;
        let bs = Var::from_tensor(&randn(&[16], 23, 0.3)?)?;
        let w = randn(&[3, 5, 16], 24, 1.0)?;
        let inputs = [x.clone(), wt, bs];
        let (yf, gf) = value_and_grads(|t| layer_norm_affine(&t[0], &t[1], &t[2], 1e-5), &inputs, &w)?;
        let (yc, gc) = value_and_grads(|t| layer_norm_affine_composed(&t[0], &t[1], &t[2], 1e-5), &inputs, &w)?;
        assert_matches((&yf, &gf), (&yc, &gc), 1e-5, 1e-4)?;
        let err = super::norm::layer_norm_modulate(x.as_tensor(), &randn(&[2, 16], 25, 1.0)?, &randn(&[2, 16], 26, 1.0)?, 1e-6).unwrap_err().to_string();
        assert!(err.contains("do not fit"), "{err}");
        Ok(())
    }

    #[test]
    fn fused_norm_modulate_matches_composed_forward_and_backward() -> Result<()> {
        let x = Var::from_tensor(&(randn(&[2, 7, 24], 3, 2.0)? + 0.5)?)?;
        let shift = Var::from_tensor(&randn(&[2, 24], 4, 0.5)?)?;
        let scale = Var::from_tensor(&randn(&[2, 24], 5, 0.5)?)?;
        let w = randn(&[2, 7, 24], 6, 1.0)?;
        let fused = super::norm::layer_norm_modulate(x.as_tensor(), shift.as_tensor(), scale.as_tensor(), 1e-6)?;
        let composed = modulate(&layer_norm(x.as_tensor(), 1e-6)?, shift.as_tensor(), scale.as_tensor())?;
        assert!(max_diff(&fused, &composed)? < 1e-5);
        let gf = (fused * &w)?.sum_all()?.backward()?;
        let gc = (composed * &w)?.sum_all()?.backward()?;
        for (name, v) in [("x", &x), ("shift", &shift), ("scale", &scale)] {
            let d = max_diff(gf.get(v.as_tensor()).unwrap(), gc.get(v.as_tensor()).unwrap())?;
            assert!(d < 1e-4, "grad of {name} differs by {d}");
        }
        // finite differences through the composed forward, in f64 via small steps
        let gx = gf.get(x.as_tensor()).unwrap().flatten_all()?.to_vec1::<f32>()?;
        let f = |xt: &Tensor| -> Result<f64> {
            let y = super::norm::layer_norm_modulate(xt, shift.as_tensor(), scale.as_tensor(), 1e-6)?;
            Ok((y * &w)?.sum_all()?.to_scalar::<f32>()? as f64)
        };
        let xv = x.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        for &i in &[0usize, 31, 200, 335] {
            let bump = |delta: f32| -> Result<f64> {
                let mut v = xv.clone();
                v[i] += delta;
                f(&Tensor::from_vec(v, (2, 7, 24), &Device::Cpu)?)
            };
            let fd = (bump(1e-2)? - bump(-1e-2)?) / 2e-2;
            assert!((fd - gx[i] as f64).abs() < 2e-2 * (1.0 + fd.abs()), "element {i}: fd {fd} vs {}", gx[i]);
        }
        Ok(())
    }
}
