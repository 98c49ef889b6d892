//! Checks that the training code gives the CPU's answers on another device (CUDA): each
//! differentiable building block forward and backward, a few training steps' losses in fp32
//! and under bf16 autocast, a short run whose loss falls and moves every parameter, and (with
//! the `nccl` feature) a world-size-1 NCCL all-reduce of a gradient's storage.
//!
//! They live in the library, not only in tests, so the shipped binary can run them on a GPU
//! machine that has no Rust toolchain (`ablate selfcheck-cuda`); `trainer/tests/cuda.rs` runs
//! the same functions as `#[ignore]`d tests. On the CPU they compare the fused CPU kernels
//! with themselves through the same code, which checks the checks.

use candle_core::{DType, Device, Tensor, Var};

use crate::data::{BatchSpec, Tokenizer};
use crate::model::layers;
use crate::precision::PrecisionPolicy;
use crate::rng::Rng;
use crate::{TrainConfig, TrainError, Trainer};

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("{0}")]
    Mismatch(String),
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("data: {0}")]
    Data(#[from] crate::data::real::DataError),
    #[error("nccl: {0}")]
    Nccl(String),
}

type Result<T> = std::result::Result<T, CheckError>;

/// Largest |a - b| over max(|b|) (both brought to f32 on the CPU).
fn rel_err(a: &Tensor, b: &Tensor) -> Result<f32> {
    let a = a.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let b = b.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    if a.len() != b.len() {
        return Err(CheckError::Mismatch(format!("{} vs {} elements", a.len(), b.len())));
    }
    if a.iter().any(|v| !v.is_finite()) {
        return Err(CheckError::Mismatch("non-finite values".into()));
    }
    let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    Ok(a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale)
}

fn randn(shape: &[usize], seed: u64, scale: f32) -> Result<Tensor> {
    let n = shape.iter().product();
    let v: Vec<f32> = Rng::new(seed).normal_vec(n).into_iter().map(|x| x * scale).collect();
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}

/// Value of `f(inputs)` and the gradients of `sum(f(inputs) * w)` for every input, with the
/// inputs moved to `dev` in `dtype`.
fn value_and_grads(
    f: &dyn Fn(&[Tensor]) -> candle_core::Result<Tensor>,
    inputs: &[Tensor],
    w: &Tensor,
    dev: &Device,
    dtype: DType,
) -> Result<(Tensor, Vec<Tensor>)> {
    let vars = inputs.iter().map(|t| Var::from_tensor(&t.to_device(dev)?.to_dtype(dtype)?)).collect::<candle_core::Result<Vec<_>>>()?;
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&ts)?;
    let g = (y.to_dtype(DType::F32)? * w.to_device(dev)?)?.sum_all()?.backward()?;
    let grads = vars
        .iter()
        .map(|v| g.get(v.as_tensor()).cloned().ok_or_else(|| CheckError::Mismatch("an input received no gradient".into())))
        .collect::<Result<Vec<_>>>()?;
    Ok((y, grads))
}

/// A mismatch past `tol` fails the check naming `what`; otherwise the dtype's worst error
/// joins the report `line`.
fn judge(line: &mut String, what: &str, dtype: DType, worst: f32, tol: f32) -> std::result::Result<(), CheckError> {
    if worst > tol {
        return Err(CheckError::Mismatch(format!("{what} in {dtype:?}: relative error {worst:.2e} > {tol:.0e}")));
    }
    line.push_str(&format!(" {dtype:?} {worst:.1e}"));
    Ok(())
}

/// The largest relative error of `f`'s value and input gradients on `dev` in `dtype`
/// against `reference` (value and gradients computed on the CPU).
fn worst_error(
    f: &dyn Fn(&[Tensor]) -> candle_core::Result<Tensor>,
    inputs: &[Tensor],
    w: &Tensor,
    dev: &Device,
    dtype: DType,
    (y_ref, g_ref): &(Tensor, Vec<Tensor>),
) -> Result<f32> {
    let (y, g) = value_and_grads(f, inputs, w, dev, dtype)?;
    let mut worst = rel_err(&y, y_ref)?;
    for (a, r) in g.iter().zip(g_ref) {
        worst = worst.max(rel_err(a, r)?);
    }
    Ok(worst)
}

/// Each building block of `model::layers` on `dev` against the CPU in f32, forward and
/// backward, in f32 and bf16. Returns one line per block with the worst relative error.
pub fn ops(dev: &Device) -> Result<String> {
    let (cos, sin) = layers::rope_tables(4, 4, 32, 10000.0, &Device::Cpu)?;
    let idx = Tensor::new((0u32..16).chain((0u32..16).rev()).collect::<Vec<_>>().as_slice(), &Device::Cpu)?;
    let (pcos, psin) = (cos.index_select(&idx, 0)?.reshape((2, 16, 16))?, sin.index_select(&idx, 0)?.reshape((2, 16, 16))?);
    let bias = layers::padding_bias(16, &[3, 5], 8, &Device::Cpu)?;
    let tables = |t: &Tensor, x: &Tensor| t.to_device(x.device());
    type Block<'a> = (&'static str, Box<dyn Fn(&[Tensor]) -> candle_core::Result<Tensor> + 'a>, Vec<Vec<usize>>);
    let blocks: Vec<Block> = vec![
        ("rms_norm", Box::new(|t: &[Tensor]| layers::rms_norm(&t[0], &t[1], 1e-6)), vec![vec![2, 3, 16, 32], vec![32]]),
        ("norm_modulate", Box::new(|t: &[Tensor]| layers::norm_modulate(&t[0], &t[1], &t[2], 1e-6)), vec![vec![2, 16, 48], vec![2, 48], vec![2, 48]]),
        ("softmax_f32", Box::new(|t: &[Tensor]| layers::softmax_f32(&t[0])), vec![vec![2, 3, 16, 40]]),
        ("rope", Box::new(|t: &[Tensor]| layers::apply_rope(&t[0], &tables(&cos, &t[0])?, &tables(&sin, &t[0])?)), vec![vec![2, 3, 16, 32]]),
        ("rope_per_sample", Box::new(|t: &[Tensor]| layers::apply_rope(&t[0], &tables(&pcos, &t[0])?, &tables(&psin, &t[0])?)), vec![vec![2, 3, 16, 32]]),
        ("gated_gelu", Box::new(|t: &[Tensor]| layers::gated_gelu(&t[0], &t[1])), vec![vec![2, 16, 56], vec![2, 16, 56]]),
        ("attention", Box::new(|t: &[Tensor]| layers::attention(&t[0], &t[1], &t[2], Some(&tables(&bias, &t[0])?))), vec![vec![2, 3, 16, 32], vec![2, 3, 24, 32], vec![2, 3, 24, 32]]),
    ];
    let mut lines = Vec::new();
    for (bi, (name, f, shapes)) in blocks.iter().enumerate() {
        let inputs = shapes.iter().enumerate().map(|(i, s)| randn(s, 100 * bi as u64 + i as u64, 1.5)).collect::<Result<Vec<_>>>()?;
        let out_shape = f(&inputs)?.dims().to_vec();
        let w = randn(&out_shape, 999 + bi as u64, 1.0)?;
        let reference = value_and_grads(f.as_ref(), &inputs, &w, &Device::Cpu, DType::F32)?;
        let mut line = format!("{name:<16}");
        for (dtype, tol) in [(DType::F32, 1e-4f32), (DType::BF16, 5e-2)] {
            let worst = worst_error(f.as_ref(), &inputs, &w, dev, dtype, &reference)?;
            judge(&mut line, name, dtype, worst, tol)?;
        }
        lines.push(line);
    }
    Ok(lines.join("\n"))
}

/// Every fused op's own kernel (called directly, so a missing CUDA kernel fails instead of
/// falling back to the composed ops) at the shapes of the `mini` and `prx-small` presets (256
/// image tokens, batch 2), against the CPU fused op: the value and every input gradient, in
/// f32 (tolerance 2e-5 of the largest magnitude) and bf16 (1e-2; the CPU reference computes
/// in f32 on the same bf16-rounded inputs). One line per preset and op.
pub fn kernels_at_scale(dev: &Device) -> Result<String> {
    use crate::kernels as k;
    use crate::model::DenoiserConfig;
    let mut lines = Vec::new();
    for (preset, cfg) in [("mini", DenoiserConfig::mini()), ("prx-small", DenoiserConfig::prx_small())] {
        let (b, n, d, heads) = (2usize, 256usize, cfg.hidden, cfg.heads);
        let dh = d / heads;
        let m = (d as f64 * cfg.mlp_ratio) as usize;
        let (cos, sin) = layers::rope_tables(16, 16, dh, cfg.rope_theta, &Device::Cpu)?;
        let on = |t: &Tensor, x: &Tensor| t.to_device(x.device());
        type Op<'a> = (&'static str, Box<dyn Fn(&[Tensor]) -> candle_core::Result<Tensor> + 'a>, Vec<Vec<usize>>);
        let ops: Vec<Op> = vec![
            ("norm_modulate", Box::new(|t: &[Tensor]| k::norm::layer_norm_modulate(&t[0], &t[1], &t[2], 1e-6)), vec![vec![b, n, d], vec![b, d], vec![b, d]]),
            ("layer_norm_affine", Box::new(|t: &[Tensor]| k::norm::layer_norm_affine(&t[0], &t[1], &t[2], 1e-5)), vec![vec![b, 64, d], vec![d], vec![d]]),
            ("rms_norm", Box::new(|t: &[Tensor]| k::rms::rms_norm(&t[0], &t[1], 1e-6)), vec![vec![b, heads, n, dh], vec![dh]]),
            ("rope", Box::new(|t: &[Tensor]| k::rope::rope(&t[0], &on(&cos, &t[0])?, &on(&sin, &t[0])?)), vec![vec![b, heads, n, dh]]),
            ("gated_gelu", Box::new(|t: &[Tensor]| k::gelu::gated_gelu(&t[0], &t[1])), vec![vec![b, n, m], vec![b, n, m]]),
            ("gated_gelu_packed", Box::new(|t: &[Tensor]| k::gelu::gated_gelu_packed(&t[0])), vec![vec![b, n, 2 * m]]),
            ("gelu", Box::new(|t: &[Tensor]| k::gelu::gelu(&t[0])), vec![vec![b, n, d]]),
            ("gated_residual", Box::new(|t: &[Tensor]| k::residual::gated_residual(&t[0], &t[1], &t[2])), vec![vec![b, n, d], vec![b, n, d], vec![b, d]]),
            ("mean_squared_error", Box::new(|t: &[Tensor]| k::loss::mean_squared_error(&t[0], &t[1])), vec![vec![b, n, 64], vec![b, n, 64]]),
            ("qkv_prep", Box::new(|t: &[Tensor]| qkv_prep_packed(t, &on(&cos, &t[0])?, &on(&sin, &t[0])?, heads)), vec![vec![b, n, 3 * d], vec![b, 64, 2 * d], vec![dh], vec![dh], vec![dh]]),
        ];
        for (oi, (name, f, shapes)) in ops.iter().enumerate() {
            let inputs = shapes.iter().enumerate().map(|(i, s)| randn(s, 7000 + 10 * oi as u64 + i as u64, 1.0)).collect::<Result<Vec<_>>>()?;
            let out_shape = f(&inputs)?.dims().to_vec();
            let w = randn(&out_shape, 8000 + oi as u64, 1.0)?;
            let mut line = format!("{preset:<10} {name:<19}");
            // the CPU fused ops take f32 only (bf16 reaches them through f32 copies in `layers`)
            let precisions: &[(DType, f32)] = if dev.is_cpu() { &[(DType::F32, 2e-5)] } else { &[(DType::F32, 2e-5), (DType::BF16, 1e-2)] };
            for &(dtype, tol) in precisions {
                // the reference sees the inputs the device sees: rounded to `dtype`
                let seen = inputs.iter().map(|t| t.to_dtype(dtype)?.to_dtype(DType::F32)).collect::<candle_core::Result<Vec<_>>>()?;
                let reference = value_and_grads(f.as_ref(), &seen, &w, &Device::Cpu, DType::F32)?;
                let worst = worst_error(f.as_ref(), &seen, &w, dev, dtype, &reference)?;
                judge(&mut line, &format!("{preset} {name}"), dtype, worst, tol)?;
            }
            lines.push(line);
        }
    }
    Ok(lines.join("\n"))
}

/// Attention's input preparation, packed [q | k | v]: the CUDA kernel on a CUDA device, the
/// composition `layers::attention_core_composed` uses on the CPU (its reference).
fn qkv_prep_packed(t: &[Tensor], cos: &Tensor, sin: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let norms = [&t[2], &t[3], &t[4]];
    #[cfg(feature = "cuda")]
    let (q, k, v) = if t[0].device().is_cuda() {
        crate::kernels::cuda::qkv::qkv_prep(&t[0], &t[1], norms, cos, sin, heads, 1e-6)?
    } else {
        layers::qkv_prep_composed(&t[0], &t[1], norms, cos, sin, heads, 1e-6)?
    };
    #[cfg(not(feature = "cuda"))]
    let (q, k, v) = layers::qkv_prep_composed(&t[0], &t[1], norms, cos, sin, heads, 1e-6)?;
    Tensor::cat(&[q.flatten_all()?, k.flatten_all()?, v.flatten_all()?], 0)
}

/// The small config the checks train: tiny preset, 32-pixel images, batch 4, no warm-up.
pub fn tiny_config(policy: PrecisionPolicy, batch: usize) -> TrainConfig {
    let mut cfg = TrainConfig::default();
    cfg.train.batch_size = batch;
    cfg.optim.warmup_steps = 0;
    cfg.optim.lr = 1e-3;
    cfg.precision.policy = policy;
    cfg
}

/// Losses of `steps` training steps of `cfg` on `dev`, and the trainer afterwards.
pub fn train_losses(cfg: &TrainConfig, dev: &Device, steps: usize) -> Result<(Vec<f64>, Trainer)> {
    let mut trainer = Trainer::new(cfg.clone(), dev)?;
    let spec = BatchSpec::new(cfg, 0, 1)?;
    let tok = Tokenizer::new();
    let losses = (0..steps).map(|s| trainer.train_step(&spec.make(s, &tok)).map(|st| st.loss)).collect::<std::result::Result<Vec<_>, _>>()?;
    Ok((losses, trainer))
}

/// The same training steps on `dev` under `policy` and on the CPU in fp32 give the same
/// losses within `tol` (relative). Parameters, batches, noise and timesteps come from the
/// same seeded streams on both, so the only differences are arithmetic.
pub fn train_parity(dev: &Device, policy: PrecisionPolicy, steps: usize, tol: f64) -> Result<String> {
    let (cpu, _) = train_losses(&tiny_config(PrecisionPolicy::Fp32, 4), &Device::Cpu, steps)?;
    let (got, _) = train_losses(&tiny_config(policy, 4), dev, steps)?;
    let worst = cpu.iter().zip(&got).map(|(a, b)| (a - b).abs() / a.abs().max(1e-6)).fold(0f64, f64::max);
    let show = |v: &[f64]| v.iter().map(|x| format!("{x:.5}")).collect::<Vec<_>>().join(" ");
    let msg = format!("cpu fp32 [{}]  {dev:?} {policy:?} [{}]  worst relative difference {worst:.1e} (tolerance {tol:.0e})", show(&cpu), show(&got));
    if !(worst <= tol) {
        return Err(CheckError::Mismatch(msg));
    }
    Ok(msg)
}

/// `steps` bf16-mixed steps on `dev`: the mean loss of the last five is below `ratio` times
/// that of the first five, and every trainable tensor has moved from its initial value
/// (a gradient stop anywhere on this device's code path leaves some tensor untouched).
pub fn loss_falls(dev: &Device, steps: usize, ratio: f64) -> Result<String> {
    let cfg = tiny_config(PrecisionPolicy::Bf16Mixed, 8);
    let init = Trainer::new(cfg.clone(), &Device::Cpu)?;
    let (losses, trainer) = train_losses(&cfg, dev, steps)?;
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (first, last) = (mean(&losses[..5]), mean(&losses[losses.len() - 5..]));
    if !(last < ratio * first) {
        return Err(CheckError::Mismatch(format!("loss {first:.4} -> {last:.4} over {steps} steps (wanted below {ratio} x)")));
    }
    let mut still = Vec::new();
    for (a, b) in init.params.iter().zip(&trainer.params) {
        let d = (a.var.as_tensor().to_dtype(DType::F32)? - b.var.as_tensor().to_device(&Device::Cpu)?.to_dtype(DType::F32)?)?;
        if d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()? == 0.0 {
            still.push(a.name.clone());
        }
    }
    if !still.is_empty() {
        return Err(CheckError::Mismatch(format!("parameters that never moved: {}", still.join(", "))));
    }
    Ok(format!("loss {first:.4} -> {last:.4} over {steps} steps; all {} parameter tensors moved", trainer.params.len()))
}

/// The device reports its peak memory: a 64 MiB tensor raises the high-water mark by at
/// least that much.
pub fn memory(dev: &Device) -> Result<String> {
    super::reset_peak_memory(dev);
    let before = super::memory(dev).and_then(|m| m.peak_in_use);
    let t = Tensor::zeros((16, 1 << 20), DType::F32, dev)?;
    super::synchronize(dev)?;
    let m = super::memory(dev).ok_or_else(|| CheckError::Mismatch("no memory figures for this device".into()))?;
    drop(t);
    let peak = m.peak_in_use.ok_or_else(|| CheckError::Mismatch("no memory-pool peak (allocations not from the stream-ordered pool?)".into()))?;
    if peak < before.unwrap_or(0) + (64 << 20) {
        return Err(CheckError::Mismatch(format!("peak {peak} bytes after a 64 MiB allocation (before {before:?})")));
    }
    Ok(format!("pool peak {:.1} MiB after a 64 MiB tensor; device in use {:.2} of {:.2} GiB", peak as f64 / (1 << 20) as f64, m.in_use as f64 / (1u64 << 30) as f64, m.total as f64 / (1u64 << 30) as f64))
}

/// World-size-1 NCCL communicator on candle's stream; all-reduces (sum, then average) the
/// storage of a gradient-sized candle tensor and checks both come back unchanged.
#[cfg(feature = "nccl")]
pub fn nccl(dev: &Device) -> Result<String> {
    use candle_core::cuda_backend::cudarc;
    use cudarc::nccl::safe::{Comm, Id, ReduceOp};
    let err = |e: &dyn std::fmt::Debug| CheckError::Nccl(format!("{e:?}"));
    // SAFETY: only tries to dlopen libnccl.
    if !unsafe { cudarc::nccl::sys::is_culib_present() } {
        return Err(CheckError::Nccl("libnccl cannot be loaded (not on LD_LIBRARY_PATH)".into()));
    }
    let mut version = 0i32;
    // SAFETY: writes one int.
    let rc = unsafe { cudarc::nccl::sys::ncclGetVersion(&mut version) };
    if !format!("{rc:?}").contains("Success") {
        return Err(CheckError::Nccl(format!("ncclGetVersion: {rc:?}")));
    }
    let stream = dev.as_cuda_device()?.cuda_stream();
    let comm = Comm::from_rank(stream.clone(), 0, 1, Id::new().map_err(|e| err(&e))?).map_err(|e| err(&e))?;
    let t = randn(&[1 << 20], 7, 1.0)?.to_device(dev)?;
    let want = t.to_vec1::<f32>()?;
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cuda(s) = &*storage else { return Err(CheckError::Nccl("tensor is not on CUDA".into())) };
    if !(layout.is_contiguous() && layout.start_offset() == 0) {
        return Err(CheckError::Nccl("unexpected layout".into()));
    }
    let slice = s.as_cuda_slice::<f32>()?;
    for (name, op) in [("sum", ReduceOp::Sum), ("avg", ReduceOp::Avg)] {
        let mut out = stream.alloc_zeros::<f32>(slice.len()).map_err(|e| err(&e))?;
        comm.all_reduce(slice, &mut out, &op).map_err(|e| err(&e))?;
        if stream.clone_dtoh(&out).map_err(|e| err(&e))? != want {
            return Err(CheckError::Nccl(format!("all_reduce {name} over one rank changed the values")));
        }
    }
    Ok(format!("libnccl {}.{}.{}; rank {} of {}; sum and avg of 1M f32 exact", version / 10000, (version % 10000) / 100, version % 100, comm.rank(), comm.world_size()))
}

/// Runs every check on `dev`, catching panics; returns (name, outcome) in order.
pub fn run_all(dev: &Device) -> Vec<(&'static str, std::result::Result<String, String>)> {
    let guard = |f: &dyn Fn() -> Result<String>| match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(p) => Err(format!("panic: {}", p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default())),
    };
    #[allow(unused_mut)]
    let mut out = vec![
        ("ops", guard(&|| ops(dev))),
        ("kernels-at-scale", guard(&|| kernels_at_scale(dev))),
        ("train-parity-fp32", guard(&|| train_parity(dev, PrecisionPolicy::Fp32, 8, 1e-3))),
        ("train-parity-bf16-mixed", guard(&|| train_parity(dev, PrecisionPolicy::Bf16Mixed, 8, 5e-2))),
        ("loss-falls-bf16-mixed", guard(&|| loss_falls(dev, 40, 0.85))),
    ];
    if dev.is_cuda() {
        out.push(("memory", guard(&|| memory(dev))));
    }
    #[cfg(feature = "nccl")]
    if dev.is_cuda() {
        out.push(("nccl-world-1", guard(&|| nccl(dev))));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPU against itself: the checks' own plumbing and tolerances hold.
    #[test]
    fn ops_check_passes_on_the_cpu() {
        let r = ops(&Device::Cpu).unwrap();
        assert_eq!(r.lines().count(), 7, "{r}");
    }

    /// The kernels' check at both presets' shapes runs through on the CPU (f32 only there).
    #[test]
    fn kernels_at_scale_check_passes_on_the_cpu() {
        let r = kernels_at_scale(&Device::Cpu).unwrap();
        assert_eq!(r.lines().count(), 20, "{r}");
    }
}
