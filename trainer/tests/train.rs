//! Training-level invariants: every parameter learns, resume is exact, bad runs fail loudly.

mod common;

use ablate_trainer::objective::flow::Prediction;
use ablate_trainer::optim::OptimKind;
use ablate_trainer::routing::RoutingKind;
use ablate_trainer::run::{read_metrics, run, NoProgress, RunOptions};
use ablate_trainer::Trainer;
use candle_core::{DType, Device};
use common::{batches, small_config};

/// Catches silent gradient stops (candle's fused ops without backward, a constant where a
/// weight belongs): after a few steps every trainable tensor must have moved.
fn assert_every_param_moves(cfg: ablate_trainer::TrainConfig) {
    let mut t = Trainer::new(cfg, &Device::Cpu).unwrap();
    let before: Vec<Vec<f32>> = t.params.iter().map(|p| p.var.as_tensor().to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap()).collect();
    for b in batches(&t.cfg, 4) {
        t.train_step(&b).unwrap();
    }
    for (p, b) in t.params.iter().zip(before) {
        let after: Vec<f32> = p.var.as_tensor().to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let moved = after.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(moved > 0.0, "parameter {} never changed", p.name);
    }
}

/// Micro-batches on CPU (one per rayon thread) give the gradients and loss of one pass over
/// the batch, up to float rounding, with routing, REPA and the contrastive term too (same
/// noise, same routing draws, the contrastive pairs across the parts' boundaries).
#[test]
fn micro_batches_give_the_gradients_of_one_pass() {
    let configs = {
        let base = || {
            let mut c = small_config();
            c.train.batch_size = 8;
            c
        };
        let mut tread = base();
        tread.routing.kind = RoutingKind::Tread;
        tread.routing.rate = 0.5;
        let mut repa = base();
        repa.repa.enabled = true;
        // the contrastive term pairs samples across the parts' boundaries
        let mut contrastive = base();
        contrastive.objective.contrastive_lambda = 0.05;
        let mut contrastive_x = base();
        contrastive_x.objective.contrastive_lambda = 0.05;
        contrastive_x.objective.prediction = Prediction::X;
        [("baseline", base()), ("tread", tread), ("repa", repa), ("contrastive", contrastive), ("contrastive-x", contrastive_x)]
    };
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let two = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    for (name, cfg) in configs {
        let mut t = Trainer::new(cfg, &Device::Cpu).unwrap();
        let data = batches(&t.cfg, 3);
        // two steps first, so the zero-initialised adaLN layers no longer zero most gradients
        for b in &data[..2] {
            one.install(|| t.train_step(b)).unwrap();
        }
        let b = &data[2];
        assert_eq!(one.install(|| t.micro_batches(8)), vec![0..8]);
        assert_eq!(two.install(|| t.micro_batches(8)), vec![0..4, 4..8], "{name}");
        let (g1, s1) = one.install(|| t.compute_grads(b)).unwrap();
        let (g2, s2) = two.install(|| t.compute_grads(b)).unwrap();
        assert!((s1.loss - s2.loss).abs() < 1e-6 * s1.loss.abs().max(1.0), "{name}: loss {} vs {}", s1.loss, s2.loss);
        assert!((s1.mse - s2.mse).abs() < 1e-6, "{name}: mse {} vs {}", s1.mse, s2.mse);
        assert_eq!(s1.repa.is_some(), s2.repa.is_some());
        for p in &t.params {
            let (a, c) = (g1.get(p.var.as_tensor()), g2.get(p.var.as_tensor()));
            let (Some(a), Some(c)) = (a, c) else {
                assert!(a.is_none() && c.is_none(), "{name}: {} has a gradient in only one of the two", p.name);
                continue;
            };
            let scale = a.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1e-6);
            let d = (a - c).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(d <= 1e-4 * scale, "{name}: gradient of {} differs by {d} (largest {scale})", p.name);
        }
    }
}

#[test]
fn every_parameter_moves_baseline() {
    assert_every_param_moves(small_config());
}

#[test]
fn every_parameter_moves_with_sprint_and_muon() {
    let mut c = small_config();
    c.routing.kind = RoutingKind::Sprint;
    c.routing.rate = 0.75;
    c.optim.kind = OptimKind::Muon;
    assert_every_param_moves(c);
}

#[test]
fn resume_reproduces_the_uninterrupted_loss_sequence() {
    let dir = std::env::temp_dir().join(format!("ablate-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cfg = small_config();
    cfg.train.steps = 6;
    cfg.train.checkpoint_every = 3;
    let straight = dir.join("straight");
    run(cfg.clone(), &RunOptions { out: straight.clone(), resume: false, samples: false, eval_cache: None, checkpoint_store: None }, &mut NoProgress).unwrap();
    // interrupted: 3 steps, then resume to 6
    let split = dir.join("split");
    let mut first = cfg.clone();
    first.train.steps = 3;
    run(first, &RunOptions { out: split.clone(), resume: false, samples: false, eval_cache: None, checkpoint_store: None }, &mut NoProgress).unwrap();
    let s = run(cfg.clone(), &RunOptions { out: split.clone(), resume: true, samples: false, eval_cache: None, checkpoint_store: None }, &mut NoProgress).unwrap();
    assert_eq!(s.first_step, 3);
    let a = read_metrics(&straight.join("metrics.jsonl"), usize::MAX).unwrap();
    let b = read_metrics(&split.join("metrics.jsonl"), usize::MAX).unwrap();
    assert_eq!(a.len(), 6);
    assert_eq!(b.len(), 6);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.step, y.step);
        assert_eq!(x.loss, y.loss, "loss differs at step {}", x.step);
        assert_eq!(x.grad_norm, y.grad_norm);
    }
    // a fresh run into a used directory is refused, nothing overwritten
    let err = run(cfg.clone(), &RunOptions { out: split.clone(), resume: false, samples: false, eval_cache: None, checkpoint_store: None }, &mut NoProgress).unwrap_err();
    assert!(err.to_string().contains("already holds a run"), "{err}");
    // resuming with a changed recipe is refused
    let mut other = cfg;
    other.optim.lr = 5e-4;
    let err = run(other, &RunOptions { out: split, resume: true, samples: false, eval_cache: None, checkpoint_store: None }, &mut NoProgress).unwrap_err();
    assert!(err.to_string().contains("different configuration"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn diverging_training_fails_with_the_reason() {
    let mut c = small_config();
    c.optim.lr = 1e6;
    c.optim.grad_clip = 0.0;
    let mut t = Trainer::new(c, &Device::Cpu).unwrap();
    let mut err = None;
    for b in batches(&t.cfg, 30) {
        if let Err(e) = t.train_step(&b) {
            err = Some(e.to_string());
            break;
        }
    }
    let err = err.expect("lr 1e6 must diverge");
    assert!(err.contains("non-finite") && err.contains("training diverged"), "{err}");
}

#[test]
fn samples_have_the_right_shape_and_range() {
    let t = Trainer::new(small_config(), &Device::Cpu).unwrap();
    let img = t.sample(&["a red circle on a grey background.".into(), String::new()], 0, 3, 3.5).unwrap();
    assert_eq!(img.dims(), &[2, 3, 16, 16]);
    let v: Vec<f32> = img.flatten_all().unwrap().to_vec1().unwrap();
    assert!(v.iter().all(|x| (-1.0..=1.0).contains(x)));
}

/// With an EMA, samples come from the EMA weights (neither the trained nor the initial ones),
/// the raw weights are those of the same run without an EMA, and the training weights are
/// restored afterwards.
#[test]
fn sampling_uses_the_ema_weights_and_restores_the_training_weights() {
    let prompts = vec!["a red circle on a grey background.".to_string()];
    let fresh = Trainer::new(small_config(), &Device::Cpu).unwrap().sample(&prompts, 0, 4, 1.0).unwrap();
    let mut c = small_config();
    c.optim.ema_decay = 0.999;
    let mut t = Trainer::new(c, &Device::Cpu).unwrap();
    for b in batches(&t.cfg, 3) {
        t.train_step(&b).unwrap();
    }
    let before = t.checksum().unwrap();
    let ema_img = t.sample(&prompts, 0, 4, 1.0).unwrap();
    assert_eq!(t.checksum().unwrap(), before, "training weights not restored");
    let raw_img = t.sample_weights(&prompts, None, 0, 4, 1.0, false).unwrap();
    let diff = |a: &candle_core::Tensor, b: &candle_core::Tensor| (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    // the same trainer without EMA trains the same weights and samples what the raw weights give
    let mut c = small_config();
    c.optim.ema_decay = 0.0;
    let mut plain = Trainer::new(c, &Device::Cpu).unwrap();
    for b in batches(&plain.cfg, 3) {
        plain.train_step(&b).unwrap();
    }
    assert_eq!(diff(&plain.sample(&prompts, 0, 4, 1.0).unwrap(), &raw_img), 0.0, "raw weights = the run without EMA");
    // the EMA (warmed up: decays 0.1, 0.18, 0.25 over three steps) lags the weights
    let (d_ema_raw, d_ema_fresh) = (diff(&ema_img, &raw_img), diff(&ema_img, &fresh));
    assert!(d_ema_raw > 0.0 && d_ema_fresh > 0.0, "EMA samples are neither the trained nor the initial weights' ({d_ema_raw}, {d_ema_fresh})");
    assert_eq!(t.checksum().unwrap(), before, "training weights not restored");
}
