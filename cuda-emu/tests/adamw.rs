//! `adamw.cu` under host emulation against the CPU optimizer: the multi-tensor update agrees
//! with `optim::AdamW` bit for bit over several steps (with and without weight decay, tensors
//! that span several chunks and one smaller than a block), the bf16 copy is the rounded new
//! weight, and the device-side global norm and clip factor agree with `optim::clip_grad_norm`.

use ablate_cuda_emu::{kernels, launch, AdamwTensor, P};
use ablate_trainer::kernels::launch as geo;
use ablate_trainer::optim::{self, AdamW, AdamwScalars, OptimConfig, Param};
use ablate_trainer::rng::Rng;
use candle_core::{Device, Tensor, Var};

fn randn(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    Rng::new(seed).normal_vec(n).into_iter().map(|v| v * scale).collect()
}

struct Host {
    w: Vec<f32>,
    g: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    w16: Vec<u16>,
}

/// The gradient store of `sum(p_i * g_i)`: exactly `g_i` for every parameter.
fn grads_of(params: &[Param], gs: &[Vec<f32>]) -> candle_core::backprop::GradStore {
    let mut loss = Tensor::new(0f32, &Device::Cpu).unwrap();
    for (p, g) in params.iter().zip(gs) {
        let gt = Tensor::from_vec(g.clone(), p.var.shape(), &Device::Cpu).unwrap();
        loss = (loss + (p.var.as_tensor() * gt).unwrap().sum_all().unwrap()).unwrap();
    }
    loss.backward().unwrap()
}

#[test]
fn multi_tensor_adamw_matches_the_cpu_optimizer_bit_for_bit() {
    let sizes = [3usize, 2 * geo::ADAMW_CHUNK + 77, 1000, 257];
    for wd in [0.0, 0.1] {
        let cfg = OptimConfig { lr: 3e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: wd, ..Default::default() };
        let params: Vec<Param> = sizes.iter().enumerate().map(|(i, &n)| Param { name: format!("p{i}"), var: Var::from_vec(randn(n, 60 + i as u64, 0.5), n, &Device::Cpu).unwrap() }).collect();
        let mut host: Vec<Host> = sizes.iter().zip(&params).map(|(&n, p)| Host { w: p.var.as_tensor().to_vec1::<f32>().unwrap(), g: vec![0.0; n], m: vec![0.0; n], v: vec![0.0; n], w16: vec![0; n] }).collect();
        let mut opt = AdamW::new(&cfg, params.clone()).unwrap();
        let (chunk_tensor, chunk_start) = geo::adamw_chunks(&sizes);
        for step in 1..=3usize {
            let gs: Vec<Vec<f32>> = sizes.iter().enumerate().map(|(i, &n)| randn(n, 100 * step as u64 + i as u64, 1e-2)).collect();
            let lr = cfg.lr * step as f64 / 3.0;
            opt.step(&grads_of(&params, &gs), lr).unwrap();
            for (h, g) in host.iter_mut().zip(&gs) {
                h.g.clone_from(g);
            }
            let table: Vec<AdamwTensor> = host.iter_mut().map(|h| AdamwTensor { w: h.w.as_mut_ptr(), g: h.g.as_ptr(), m: h.m.as_mut_ptr(), v: h.v.as_mut_ptr(), w_bf16: h.w16.as_mut_ptr(), n: h.w.len() as i64 }).collect();
            let (bc1, bc2) = AdamwScalars::corrections(cfg.beta1, cfg.beta2, step);
            let s = AdamwScalars::new(cfg.beta1, cfg.beta2, cfg.eps, cfg.weight_decay, lr, bc1, bc2);
            let (pt, pc, ps) = (P::of_ref(&table), P::of_ref(&chunk_tensor), P::of_ref(&chunk_start));
            launch((chunk_tensor.len() as u32, 1), geo::BLOCK, || unsafe {
                // SAFETY: the table points at live host buffers of the sizes it states
                kernels::ablate_adamw_multi(pt.get(), pc.get(), ps.get(), std::ptr::null(), s.b1, s.c1, s.b2, s.c2, s.inv_bc1, s.inv_bc2, s.eps, s.decay.unwrap_or(1.0), s.decay.is_some() as i32, s.lr)
            })
            .expect("emulated launch");
            for (i, (h, p)) in host.iter().zip(&params).enumerate() {
                let want = p.var.as_tensor().to_vec1::<f32>().unwrap();
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&h.w), bits(&want), "step {step}, weight decay {wd}: parameter {i} differs");
                let rounded: Vec<u16> = want.iter().map(|&x| half::bf16::from_f32(x).to_bits()).collect();
                assert_eq!(h.w16, rounded, "bf16 copy of parameter {i}");
            }
        }
        let state = opt.state().unwrap();
        for (i, h) in host.iter().enumerate() {
            let m = state[&format!("adamw.m.p{i}")].to_vec1::<f32>().unwrap();
            assert_eq!(h.m, m, "first moment of parameter {i}");
        }
    }
}

/// The device's global norm and clip factor against the CPU's, and the clipped update
/// against the CPU optimizer after `clip_grad_norm`.
#[test]
fn gradient_norm_and_clip_agree_with_the_cpu() {
    let sizes = [geo::ADAMW_CHUNK + 5, 300];
    let params: Vec<Param> = sizes.iter().enumerate().map(|(i, &n)| Param { name: format!("q{i}"), var: Var::from_vec(randn(n, 70 + i as u64, 0.5), n, &Device::Cpu).unwrap() }).collect();
    let gs: Vec<Vec<f32>> = sizes.iter().enumerate().map(|(i, &n)| randn(n, 80 + i as u64, 0.05)).collect();
    let mut grads = grads_of(&params, &gs);
    let max_norm = 0.2;
    let cpu_norm = optim::clip_grad_norm(&params, &mut grads, max_norm).unwrap();
    assert!(cpu_norm > max_norm, "the test must clip");
    let mut host: Vec<Host> = sizes.iter().zip(&params).zip(&gs).map(|((&n, p), g)| Host { w: p.var.as_tensor().to_vec1::<f32>().unwrap(), g: g.clone(), m: vec![0.0; n], v: vec![0.0; n], w16: vec![] }).collect();
    let table: Vec<AdamwTensor> = host.iter_mut().map(|h| AdamwTensor { w: h.w.as_mut_ptr(), g: h.g.as_ptr(), m: h.m.as_mut_ptr(), v: h.v.as_mut_ptr(), w_bf16: std::ptr::null_mut(), n: h.w.len() as i64 }).collect();
    let (chunk_tensor, chunk_start) = geo::adamw_chunks(&sizes);
    let mut part = vec![0f64; chunk_tensor.len()];
    let mut clip = [0f32; 2];
    let (pt, pc, ps, pp) = (P::of_ref(&table), P::of_ref(&chunk_tensor), P::of_ref(&chunk_start), P::of(&mut part));
    // SAFETY (both launches): the table and the outputs are live buffers of the stated sizes
    launch((chunk_tensor.len() as u32, 1), geo::BLOCK, || unsafe { kernels::ablate_grad_sq_partials(pt.get(), pc.get(), ps.get(), pp.get()) }).unwrap();
    let (pp, pcl) = (P::of_ref(&part), P::of(&mut clip));
    launch((1, 1), geo::BLOCK, || unsafe { kernels::ablate_grad_clip_finish(pp.get(), part.len() as i32, max_norm as f32, pcl.get()) }).unwrap();
    assert!((clip[0] as f64 - cpu_norm).abs() < 1e-6 * cpu_norm, "norm {} vs CPU {cpu_norm}", clip[0]);
    let want_factor = (max_norm / (cpu_norm + 1e-6)) as f32;
    assert!((clip[1] - want_factor).abs() <= 2.0 * f32::EPSILON * want_factor, "clip factor {} vs {want_factor}", clip[1]);
    // the clipped update: the CPU optimizer on the CPU-clipped gradients
    let cfg = OptimConfig { lr: 1e-3, eps: 1e-8, ..Default::default() };
    let mut opt = AdamW::new(&cfg, params.clone()).unwrap();
    opt.step(&grads, cfg.lr).unwrap();
    let (bc1, bc2) = AdamwScalars::corrections(cfg.beta1, cfg.beta2, 1);
    let s = AdamwScalars::new(cfg.beta1, cfg.beta2, cfg.eps, cfg.weight_decay, cfg.lr, bc1, bc2);
    let clip_used = [clip[0], want_factor];
    let pcl = P::of_ref(&clip_used);
    launch((chunk_tensor.len() as u32, 1), geo::BLOCK, || unsafe {
        kernels::ablate_adamw_multi(pt.get(), pc.get(), ps.get(), pcl.get(), s.b1, s.c1, s.b2, s.c2, s.inv_bc1, s.inv_bc2, s.eps, s.decay.unwrap_or(1.0), s.decay.is_some() as i32, s.lr)
    })
    .unwrap();
    for (i, (h, p)) in host.iter().zip(&params).enumerate() {
        assert_eq!(h.w, p.var.as_tensor().to_vec1::<f32>().unwrap(), "clipped update of parameter {i}");
    }
}
