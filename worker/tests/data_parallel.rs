//! Data parallelism changes nothing but speed: 2 ranks x batch b over the TCP ring end with
//! the parameters (and losses) of 1 rank x batch 2b, and both ranks end bit-identical.

use ablate_trainer::run::{read_metrics, run_distributed, run_on, NoProgress, RunOptions};
use ablate_trainer::TrainConfig;
use ablate_worker::collective::loopback_group;
use candle_core::Device;
use std::path::Path;
use std::time::Duration;

fn config(batch: usize) -> TrainConfig {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/train-tiny.toml")).unwrap();
    let mut c = TrainConfig::from_toml_str(&text, "train-tiny.toml").unwrap();
    c.train.steps = 4;
    c.train.batch_size = batch;
    c.optim.warmup_steps = 1;
    // The example's eps = 1e-15 turns any nonzero gradient into a full-size Adam step. Some
    // gradients are zero in exact arithmetic (the key bias of attention: softmax ignores a
    // shift) and pure rounding noise in floats, so their sign, and the step, depends on the
    // summation order. A larger eps keeps noise-sized gradients from moving anything.
    c.optim.eps = 1e-6;
    c.eval.samples = 0;
    c
}

fn params(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let t = ablate_trainer::checkpoint::load(&dir.join("checkpoint.safetensors"), &Device::Cpu).unwrap();
    let mut out: Vec<(String, Vec<f32>)> = t.into_iter().filter(|(k, _)| k.starts_with("param.")).map(|(k, v)| (k, v.flatten_all().unwrap().to_vec1::<f32>().unwrap())).collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn two_ranks_of_batch_b_match_one_rank_of_batch_2b() {
    let dir = tempfile::tempdir().unwrap();
    let single = dir.path().join("single");
    let one = run_on(config(4), &RunOptions { out: single.clone(), resume: false, samples: false, eval_cache: None, checkpoint_store: None }, &Device::Cpu, &mut NoProgress).unwrap();

    let rings = loopback_group(2, Duration::from_secs(60));
    let handles: Vec<_> = rings
        .into_iter()
        .enumerate()
        .map(|(r, mut ring)| {
            let out = dir.path().join(format!("rank{r}"));
            std::thread::spawn(move || run_distributed(config(2), &RunOptions { out, resume: false, samples: false, eval_cache: None, checkpoint_store: None }, &Device::Cpu, &mut NoProgress, &mut ring).unwrap())
        })
        .collect();
    let sums: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(sums[0].checksum.to_bits(), sums[1].checksum.to_bits(), "both ranks hold the same bits");
    assert_eq!(sums[0].steps, 4);

    // the same parameters as the single rank, to float tolerance (summation order differs)
    let (a, b) = (params(&single), params(&dir.path().join("rank0")));
    assert_eq!(a.len(), b.len());
    let mut worst = (0f64, String::new());
    for ((na, va), (nb, vb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        let diff: f64 = va.iter().zip(vb).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>().sqrt();
        let norm: f64 = va.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let rel = diff / norm.max(1e-6);
        if rel > worst.0 {
            worst = (rel, na.clone());
        }
    }
    assert!(worst.0 < 1e-4, "tensor {} differs by {:.3e} (relative L2)", worst.1, worst.0);
    // and the same loss curve: rank 0 reports the group's mean loss
    let la = read_metrics(&single.join("metrics.jsonl"), usize::MAX).unwrap();
    let lb = read_metrics(&dir.path().join("rank0/metrics.jsonl"), usize::MAX).unwrap();
    for (p, q) in la.iter().zip(&lb) {
        assert!((p.loss - q.loss).abs() < 1e-5 * p.loss.abs().max(1.0), "step {}: {} vs {}", p.step, p.loss, q.loss);
        assert!((p.grad_norm - q.grad_norm).abs() < 1e-5 * p.grad_norm, "step {}: grad norm {} vs {}", p.step, p.grad_norm, q.grad_norm);
        assert!(q.comm_seconds > 0.0);
    }
    assert!((one.checksum - sums[0].checksum).abs() < 1e-4 * one.checksum.abs(), "{} vs {}", one.checksum, sums[0].checksum);
    // only rank 0 writes the checkpoint
    assert!(!dir.path().join("rank1/checkpoint.safetensors").exists());
}

/// Every rank samples its share of an evaluation and rank 0 computes the numbers from all
/// of them: the same numbers as one process evaluating alone, with shares of unequal size
/// (10 images over 3 ranks: 4, 3, 3).
#[test]
fn a_distributed_evaluation_equals_the_single_process_one() {
    use ablate_trainer::eval::suite::Evaluator;
    use ablate_trainer::train::Trainer;
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(2);
    c.eval.samples = 10;
    c.eval.sampler_steps = 2;
    let evaluator = |r: usize| Evaluator::new(&c.eval, c.latent.image_size, dir.path().join(format!("cache{r}")), &Device::Cpu).unwrap();
    let single = evaluator(9).evaluate(&Trainer::new(c.clone(), &Device::Cpu).unwrap()).unwrap();
    let rings = loopback_group(3, Duration::from_secs(60));
    let handles: Vec<_> = rings
        .into_iter()
        .enumerate()
        .map(|(r, mut ring)| {
            let (c, ev) = (c.clone(), evaluator(r));
            // the same seed: every rank holds the same weights, as after a broadcast
            std::thread::spawn(move || ev.evaluate_in(&Trainer::new(c, &Device::Cpu).unwrap(), &mut ring).unwrap())
        })
        .collect();
    let reports: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(reports[1].is_none() && reports[2].is_none(), "only rank 0 computes the numbers");
    let group = reports[0].clone().expect("rank 0's report");
    for m in ["fd_scenes", "mmd", "accuracy"] {
        let (a, b) = (single.value(m).unwrap(), group.value(m).unwrap());
        assert_eq!(a.to_bits(), b.to_bits(), "{m}: one process {a}, three ranks {b}");
    }
    assert_eq!(single.composition, group.composition);
    assert_eq!(single.samples, group.samples, "the per-image numbers, in image order");
    assert_eq!(single.fd_scenes.as_ref().unwrap().protocol, group.fd_scenes.as_ref().unwrap().protocol);
}

/// Gradient accumulation: a global batch of 8 in micro-batches of 2 trains the same whether
/// one rank runs 4 passes, 2 ranks 2 each or 4 ranks 1 each, and the same as one pass over
/// the 8 (equal weights after 4 steps, to the float tolerance of the summation order).
#[test]
fn a_global_batch_trains_alike_on_1_2_and_4_ranks_with_accumulation() {
    let dir = tempfile::tempdir().unwrap();
    let global = |micro: usize| {
        let mut c = config(1);
        c.train.global_batch = 8;
        c.train.micro_batch = micro;
        c
    };
    let whole = dir.path().join("whole");
    run_on(global(0), &RunOptions { out: whole.clone(), resume: false, samples: false, eval_cache: None, checkpoint_store: None }, &Device::Cpu, &mut NoProgress).unwrap();
    let reference = params(&whole);
    for world in [1usize, 2, 4] {
        let rings = loopback_group(world, Duration::from_secs(60));
        let handles: Vec<_> = rings
            .into_iter()
            .enumerate()
            .map(|(r, mut ring)| {
                let out = dir.path().join(format!("w{world}-rank{r}"));
                std::thread::spawn(move || run_distributed(global(2), &RunOptions { out, resume: false, samples: false, eval_cache: None, checkpoint_store: None }, &Device::Cpu, &mut NoProgress, &mut ring).unwrap())
            })
            .collect();
        let sums: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(sums.iter().all(|s| s.checksum.to_bits() == sums[0].checksum.to_bits() && s.steps == 4), "world {world}: every rank holds the same bits");
        let got = params(&dir.path().join(format!("w{world}-rank0")));
        let worst = reference
            .iter()
            .zip(&got)
            .map(|((_, a), (_, b))| {
                let diff: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>().sqrt();
                diff / a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt().max(1e-6)
            })
            .fold(0.0, f64::max);
        assert!(worst < 1e-4, "world {world} x {} passes: relative L2 {worst:.3e} from one pass over the batch", 4 / world);
    }
    // a global batch that does not split over the world is refused before any step
    let mut rings = loopback_group(3, Duration::from_secs(10));
    let mut c = global(2);
    c.train.global_batch = 8;
    let ring = rings.remove(0);
    drop(rings);
    let mut ring = ring;
    let e = run_distributed(c, &RunOptions { out: dir.path().join("bad"), resume: false, samples: false, eval_cache: None, checkpoint_store: None }, &Device::Cpu, &mut NoProgress, &mut ring).unwrap_err();
    assert!(e.to_string().contains("train.global_batch = 8 does not split over a world size of 3"), "{e}");
}
