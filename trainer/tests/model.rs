//! Model-level invariants of the PRX denoiser.

mod common;

use ablate_trainer::model::block::{BlockCtx, PrxBlock};
use ablate_trainer::model::layers::{padding_bias, rope_tables};
use ablate_trainer::model::{Denoiser, DenoiserConfig, Params};
use ablate_trainer::rng::Rng;
use ablate_trainer::routing::{RoutePlan, RoutingConfig, RoutingKind};
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarMap;

fn cfg() -> DenoiserConfig {
    DenoiserConfig { hidden: 32, depth: 3, heads: 2, mlp_ratio: 2.0, patch: 2, in_channels: 3, text_dim: 16, rope_theta: 10000.0, time_embed_dim: 64 }
}

fn randn(shape: &[usize], seed: u64) -> Result<Tensor> {
    let n = shape.iter().product();
    Tensor::from_vec(Rng::new(seed).normal_vec(n), shape, &Device::Cpu)
}

#[test]
fn adaln_zero_makes_a_fresh_block_the_identity() -> Result<()> {
    let dev = Device::Cpu;
    let c = cfg();
    let p = Params::new(VarMap::new(), 1, DType::F32, &dev);
    let blk = PrxBlock::new(&c, &p)?;
    let x = randn(&[2, 16, 32], 2)?;
    let txt = randn(&[2, 5, 32], 3)?;
    let cond = randn(&[2, 32], 4)?;
    let (cos, sin) = rope_tables(4, 4, 16, 10000.0, &dev)?;
    let bias = padding_bias(16, &[5, 2], 5, &dev)?;
    let y = blk.forward(&x, &BlockCtx { cond: &cond, txt: &txt, cos: &cos, sin: &sin, bias: &bias })?;
    let diff = (y - &x)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert_eq!(diff, 0.0, "a fresh adaLN-zero block must return its input");
    // and the zero-initialised final layer makes the whole fresh model predict zero
    let d = Denoiser::new(&c, &p.pp("d"), None)?;
    let out = d.forward(&randn(&[2, 3, 8, 8], 5)?, &Tensor::new(&[0.3f32, 0.9], &dev)?, &randn(&[2, 5, 16], 6)?, &[5, 0], DType::F32, None, None)?;
    assert_eq!(out.pred.dims(), &[2, 3, 8, 8]);
    assert_eq!(out.pred.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
    Ok(())
}

#[test]
fn patchify_round_trips_and_shapes_hold_with_routing() -> Result<()> {
    let dev = Device::Cpu;
    let c = cfg();
    let p = Params::new(VarMap::new(), 1, DType::F32, &dev);
    let d = Denoiser::new(&c, &p, Some((1, 1)))?;
    let x = randn(&[2, 3, 8, 8], 7)?;
    let tok = d.patchify(&x)?;
    assert_eq!(tok.dims(), &[2, 16, 12]);
    let back = d.unpatchify(&tok, 8, 8)?;
    assert_eq!(back.flatten_all()?.to_vec1::<f32>()?, x.flatten_all()?.to_vec1::<f32>()?);
    for kind in [RoutingKind::Tread, RoutingKind::Sprint] {
        let rc = RoutingConfig { kind, start: 2, end: 2, rate: 0.75, ..Default::default() };
        let plan = RoutePlan::draw(&rc, 2, 16, &mut Rng::new(1), &dev)?;
        let out = d.forward(&x, &Tensor::new(&[0.5f32, 0.5], &dev)?, &randn(&[2, 4, 16], 8)?, &[4, 4], DType::F32, Some(&plan), Some(1))?;
        assert_eq!(out.pred.dims(), &[2, 3, 8, 8]);
        // the REPA tap inside the routed span only sees the kept tokens, and says which
        assert_eq!(out.repa.unwrap().dims(), &[2, 4, 32]);
        assert_eq!(out.repa_tokens.unwrap()[0].len(), 4);
    }
    Ok(())
}

#[test]
fn prx_small_builds_and_runs_a_forward_pass_at_batch_1() -> Result<()> {
    let dev = Device::Cpu;
    let c = DenoiserConfig::prx_small();
    let p = Params::new(VarMap::new(), 0, DType::F32, &dev);
    let d = Denoiser::new(&c, &p, None)?;
    let n: usize = p.varmap().all_vars().iter().map(|v| v.elem_count()).sum();
    assert!((1_100_000_000..1_300_000_000).contains(&n), "{n} parameters");
    assert_eq!(n, c.param_count());
    // 256x256 image -> 32x32x16 FLUX latent -> 256 tokens; 16 text tokens of width 2304
    let x = randn(&[1, 16, 32, 32], 1)?;
    let out = d.forward(&x, &Tensor::new(&[0.5f32], &dev)?, &randn(&[1, 16, 2304], 2)?, &[16], DType::F32, None, None)?;
    assert_eq!(out.pred.dims(), &[1, 16, 32, 32]);
    Ok(())
}

/// Trains a fresh model (seed 3) for `steps` AdamW steps on a fixed batch, each step with
/// `route(step)` as its routing; returns the loss of every step.
fn losses(sprint: Option<(usize, usize)>, steps: usize, route: impl Fn(usize) -> Option<RoutePlan>) -> Result<Vec<f32>> {
    let dev = Device::Cpu;
    let p = Params::fresh_cpu(3);
    let d = Denoiser::new(&cfg(), &p, sprint)?;
    let mut opt = ablate_trainer::optim::AdamW::new(&ablate_trainer::optim::OptimConfig { lr: 1e-2, warmup_steps: 0, ..Default::default() }, p.trainable())?;
    let (x, target, txt) = (randn(&[2, 3, 8, 8], 11)?, randn(&[2, 3, 8, 8], 12)?, randn(&[2, 4, 16], 13)?);
    let t = Tensor::new(&[0.3f32, 0.8], &dev)?;
    let mut out = Vec::new();
    for step in 0..steps {
        let plan = route(step);
        let pred = d.forward(&x, &t, &txt, &[4, 2], DType::F32, plan.as_ref(), None)?.pred;
        let loss = (pred - &target)?.sqr()?.mean_all()?;
        out.push(loss.to_scalar::<f32>()?);
        opt.step(&loss.backward()?, 1e-2)?;
    }
    Ok(out)
}

/// A routing plan over blocks 2..=3 that keeps every one of the 16 tokens (rate 0.01 rounds
/// to no drop), with a fresh draw each step.
fn keep_all(kind: RoutingKind, step: usize) -> Option<RoutePlan> {
    let rc = RoutingConfig { kind, start: 2, end: 3, rate: 0.01, ..Default::default() };
    let plan = RoutePlan::draw(&rc, 2, 16, &mut Rng::new(step as u64), &Device::Cpu).unwrap();
    assert_eq!(plan.keep, 16);
    Some(plan)
}

#[test]
fn sprint_dropping_no_tokens_equals_its_dense_path_step_for_step() -> Result<()> {
    // the dense path (sampling, evaluation, the full-token tail) goes through the fusion as
    // training does: with nothing dropped, routed training and dense training are the same
    let routed = losses(Some((1, 2)), 8, |s| keep_all(RoutingKind::Sprint, s))?;
    let dense = losses(Some((1, 2)), 8, |_| None)?;
    for (i, (a, b)) in routed.iter().zip(&dense).enumerate() {
        assert!((a - b).abs() <= 1e-6 * b.abs(), "step {i}: routed {a} vs dense {b}");
    }
    assert!(dense[7] < dense[0], "the model learns: {dense:?}");
    Ok(())
}

#[test]
fn tread_dropping_no_tokens_equals_the_baseline_step_for_step() -> Result<()> {
    let routed = losses(None, 8, |s| keep_all(RoutingKind::Tread, s))?;
    let baseline = losses(None, 8, |_| None)?;
    for (i, (a, b)) in routed.iter().zip(&baseline).enumerate() {
        assert!((a - b).abs() <= 1e-6 * b.abs(), "step {i}: routed {a} vs baseline {b}");
    }
    Ok(())
}

#[test]
fn a_sprint_model_refuses_a_route_over_another_span() -> Result<()> {
    let p = Params::fresh_cpu(3);
    let d = Denoiser::new(&cfg(), &p, Some((1, 1)))?;
    let plan = keep_all(RoutingKind::Sprint, 0);
    let e = d.forward(&randn(&[2, 3, 8, 8], 1)?, &Tensor::new(&[0.5f32, 0.5], &Device::Cpu)?, &randn(&[2, 4, 16], 2)?, &[4, 4], DType::F32, plan.as_ref(), None).err().unwrap();
    assert!(e.to_string().contains("differs from the SPRINT model's 2..2"), "{e}");
    assert!(Denoiser::new(&cfg(), &p, Some((1, 3))).is_err(), "a span past the last block");
    Ok(())
}

#[test]
fn the_full_token_tail_routes_no_step() {
    let rc = RoutingConfig { kind: RoutingKind::Sprint, rate: 0.75, full_token_fraction: 0.1, ..Default::default() };
    let routed: Vec<bool> = (0..100).map(|s| rc.routes_at(s, 100)).collect();
    assert!(routed[..90].iter().all(|r| *r) && routed[90..].iter().all(|r| !*r));
    assert!(!RoutingConfig::default().routes_at(0, 100), "no routing kind, no routing");
    let bad = RoutingConfig { full_token_fraction: 1.0, ..rc };
    assert!(bad.validate(8).unwrap_err().contains("routing.full_token_fraction"));
}
