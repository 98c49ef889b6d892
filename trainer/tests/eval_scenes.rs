//! The built-in scene evaluator (shipped weights) and the in-training evaluation.

mod common;

use ablate_trainer::data::scene::{Scene, Style};
use ablate_trainer::eval::scenes::{render_batch, train::heldout_accuracy, SceneEvaluator, EMBED_DIM};
use ablate_trainer::eval::{frechet_distance, mmd::mmd, FeatureStats};
use ablate_trainer::run::{run, NoProgress, RunOptions};
use candle_core::Device;

fn embeddings(net: &SceneEvaluator, style: Style, seed: u64, n: usize) -> Vec<f32> {
    let mut out = Vec::new();
    for start in (0..n as u64).step_by(64) {
        let scenes: Vec<(Scene, u64)> = (start..(start + 64).min(n as u64)).map(|i| (Scene::generate(seed, i, style), seed ^ i)).collect();
        let x = render_batch(&scenes, 32, &Device::Cpu).unwrap();
        out.extend(net.embed(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }
    out
}

fn fd(a: &[f32], b: &[f32]) -> f64 {
    let stats = |x: &[f32]| {
        let mut s = FeatureStats::new(EMBED_DIM);
        s.add_rows(x).unwrap();
        s.finish().unwrap()
    };
    frechet_distance(&stats(a), &stats(b)).unwrap().value
}

#[test]
fn evaluator_reads_held_out_renders_above_95_percent_per_head() {
    let net = SceneEvaluator::load(None, &Device::Cpu).unwrap();
    let acc = heldout_accuracy(&net, 0xabc, 512).unwrap();
    eprintln!("held-out accuracy: {acc:?}");
    for (head, v) in [("shape", acc.shape), ("colour", acc.color), ("position", acc.position), ("count", acc.count), ("style", acc.style)] {
        assert!(v > 0.95, "{head} head: {:.1}% on held-out renders", v * 100.0);
    }
}

#[test]
fn fd_scenes_separates_styles_and_not_samples_of_one_style() {
    let net = SceneEvaluator::load(None, &Device::Cpu).unwrap();
    let n = 768;
    let photo_a = embeddings(&net, Style::Photo, 11, n);
    let photo_b = embeddings(&net, Style::Photo, 12, n);
    let synth = embeddings(&net, Style::Synthetic, 13, n);
    let (same, diff) = (fd(&photo_a, &photo_b), fd(&synth, &photo_b));
    let (mmd_same, mmd_diff) = (mmd(&photo_a, &photo_b, EMBED_DIM).unwrap(), mmd(&synth, &photo_b, EMBED_DIM).unwrap());
    eprintln!("FD-scenes photo vs photo {same:.3}, synthetic vs photo {diff:.3}; MMD {mmd_same:.4} vs {mmd_diff:.4}");
    assert!(diff > 10.0 * same, "synthetic vs photo ({diff}) should dwarf two photo sets ({same})");
    assert!(mmd_diff > 5.0 * mmd_same.max(1e-6), "MMD: {mmd_diff} vs {mmd_same}");
}

/// With CLIP and DINOv2 weights at hand (tiny deterministic ones here), every evaluation
/// also reports CMMD and DINO-MMD with their protocols; `off` says so, and `on` without the
/// weights stops the run before it trains.
#[test]
fn training_reports_cmmd_and_dino_mmd_when_their_networks_are_installed() {
    use ablate_trainer::eval::config::FidMode;
    let out = std::env::temp_dir().join(format!("ablate-eval-embed-{}", std::process::id()));
    std::fs::remove_dir_all(&out).ok();
    let (clip, dino) = ablate_trainer::eval::embed::write_tiny_networks(&out.join("nets")).unwrap();
    let config = |cmmd: FidMode, clip: &std::path::Path| {
        let mut cfg = common::small_config();
        cfg.train.steps = 2;
        cfg.eval.samples = 4;
        cfg.eval.sampler_steps = 2;
        cfg.eval.cmmd = cmmd;
        cfg.eval.dino_mmd = FidMode::On;
        cfg.eval.clip_weights = Some(clip.display().to_string());
        cfg.eval.dino_weights = Some(dino.display().to_string());
        cfg
    };
    let opts = |name: &str| RunOptions { out: out.join(name), resume: false, samples: false, eval_cache: None, checkpoint_store: None };
    let report = run(config(FidMode::On, &clip), &opts("on"), &mut NoProgress).unwrap().final_eval.unwrap();
    let (cmmd, dmmd) = (report.cmmd.clone().expect("CMMD"), report.dino_mmd.clone().expect("DINO-MMD"));
    eprintln!("CMMD {} ({}), DINO-MMD {}", cmmd.value, cmmd.protocol.describe(), dmmd.value);
    assert!(cmmd.value.is_finite() && cmmd.value >= 0.0 && dmmd.value.is_finite() && dmmd.value >= 0.0);
    assert!(cmmd.protocol.network.contains("CLIP") && dmmd.protocol.network.contains("DINOv2"));
    assert!(cmmd.protocol.resize.contains("bicubic to 42x42") && dmmd.protocol.resize.contains("bicubic to 56x56"));
    assert_eq!((cmmd.protocol.samples, report.value("cmmd"), report.value("dino_mmd")), (4, Some(cmmd.value), Some(dmmd.value)));
    assert!(std::fs::read_to_string(out.join("on/eval.jsonl")).unwrap().contains("\"dino_mmd\""));

    // two jobs sharing one evaluation cache (as a worker's jobs do): the second reads the
    // reference embeddings the first wrote, and gets the same numbers
    let shared = out.join("shared-cache");
    let with_cache = |name: &str| RunOptions { eval_cache: Some(shared.clone()), ..opts(name) };
    let first = run(config(FidMode::On, &clip), &with_cache("a"), &mut NoProgress).unwrap().final_eval.unwrap();
    let stamps = || -> Vec<(std::path::PathBuf, std::time::SystemTime)> {
        let mut v: Vec<_> = std::fs::read_dir(&shared).unwrap().map(|e| e.unwrap()).map(|e| (e.path(), e.metadata().unwrap().modified().unwrap())).collect();
        v.sort();
        v
    };
    let written = stamps();
    assert!(written.iter().filter(|(p, _)| p.to_string_lossy().contains("embeddings")).count() >= 2, "CLIP and DINOv2 reference embeddings cached: {written:?}");
    assert!(!out.join("a/eval-cache").exists(), "the job's own folder holds no cache");
    let second = run(config(FidMode::On, &clip), &with_cache("b"), &mut NoProgress).unwrap().final_eval.unwrap();
    assert_eq!(stamps(), written, "the second job read the cache and wrote nothing");
    assert_eq!((second.value("cmmd"), second.value("dino_mmd")), (first.value("cmmd"), first.value("dino_mmd")));

    let off = run(config(FidMode::Off, &clip), &opts("off"), &mut NoProgress).unwrap().final_eval.unwrap();
    assert!(off.cmmd.is_none() && off.cmmd_unavailable.as_deref().unwrap().contains("turned off"), "{:?}", off.cmmd_unavailable);
    assert_eq!(off.dino_mmd.as_ref().map(|m| m.value), Some(dmmd.value), "DINO-MMD does not depend on CLIP");

    let missing = out.join("nets/absent.safetensors");
    let err = run(config(FidMode::On, &missing), &opts("missing"), &mut NoProgress).err().expect("eval.cmmd = on without the weights").to_string();
    assert!(err.contains("CMMD is unavailable") && err.contains("absent.safetensors"), "{err}");
    assert!(!out.join("missing/checkpoint.safetensors").exists(), "nothing trained");
    std::fs::remove_dir_all(&out).unwrap();
}

/// A long evaluation says how far it is, about every tenth of its images.
#[test]
fn long_evaluations_show_progress() {
    struct Messages(Vec<String>);
    impl ablate_trainer::run::Progress for Messages {
        fn message(&mut self, msg: &str) {
            self.0.push(msg.to_string());
        }
    }
    let mut cfg = common::small_config();
    cfg.train.steps = 1;
    cfg.eval.samples = 320;
    cfg.eval.sampler_steps = 1;
    let out = std::env::temp_dir().join(format!("ablate-eval-progress-{}", std::process::id()));
    std::fs::remove_dir_all(&out).ok();
    let mut seen = Messages(Vec::new());
    run(cfg, &RunOptions { out: out.clone(), resume: false, samples: false, eval_cache: None, checkpoint_store: None }, &mut seen).unwrap();
    let ticks: Vec<&String> = seen.0.iter().filter(|m| m.starts_with("evaluating: ")).collect();
    assert!(ticks.len() >= 5 && ticks.len() <= 10, "{:?}", seen.0);
    assert_eq!(ticks[0], "evaluating: 32/320 images of this rank");
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn training_evaluates_at_the_end_with_protocols() {
    let mut cfg = common::small_config();
    cfg.train.steps = 4;
    cfg.eval.samples = 6;
    cfg.eval.every = 2;
    cfg.eval.sampler_steps = 2;
    let out = std::env::temp_dir().join(format!("ablate-eval-run-{}", std::process::id()));
    std::fs::remove_dir_all(&out).ok();
    let summary = run(cfg, &RunOptions { out: out.clone(), resume: false, samples: false, eval_cache: None, checkpoint_store: None }, &mut NoProgress).unwrap();
    let report = summary.final_eval.expect("evaluation at the last step");
    assert_eq!(report.step, 4);
    assert!(report.value("fd_scenes").is_some_and(|v| v > 0.0));
    assert_eq!(report.fd_scenes.as_ref().unwrap().protocol.samples, 6);
    assert_eq!(report.composition.as_ref().unwrap().images, 6);
    // No Inception weights in the repository: FID says why instead of giving a number.
    if report.fid.is_none() {
        assert!(report.fid_unavailable.as_deref().unwrap_or("").contains("convert_inception.py"));
    }
    let lines = std::fs::read_to_string(out.join("eval.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 2, "evaluations at steps 2 and 4");
    // Resuming a finished run keeps the evaluations and reports the last one.
    let mut cfg = common::small_config();
    cfg.train.steps = 4;
    cfg.eval.samples = 6;
    cfg.eval.every = 2;
    cfg.eval.sampler_steps = 2;
    let again = run(cfg, &RunOptions { out: out.clone(), resume: true, samples: false, eval_cache: None, checkpoint_store: None }, &mut NoProgress).unwrap();
    assert_eq!(again.final_eval.map(|r| r.step), Some(4));
    assert_eq!(std::fs::read_to_string(out.join("eval.jsonl")).unwrap(), lines);
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn rank_shards_merge_to_the_single_process_evaluation() {
    use ablate_trainer::eval::suite::{EvalConfig, Evaluator};
    let cfg = common::small_config();
    let trainer = ablate_trainer::Trainer::new(cfg, &Device::Cpu).unwrap();
    let ecfg = EvalConfig { samples: 7, sampler_steps: 2, ..EvalConfig::default() };
    let dir = std::env::temp_dir().join(format!("ablate-eval-shards-{}", std::process::id()));
    let ev = Evaluator::new(&ecfg, 16, dir.clone(), &Device::Cpu).unwrap();
    let one = ev.finish(0, ev.generated_shard(&trainer, 0, 1).unwrap(), 0.0).unwrap();
    // Three ranks with uneven shares (3, 2, 2 images), merged in another order.
    let mut merged = ev.generated_shard(&trainer, 2, 3).unwrap();
    merged.merge(&ev.generated_shard(&trainer, 0, 3).unwrap()).unwrap();
    merged.merge(&ev.generated_shard(&trainer, 1, 3).unwrap()).unwrap();
    let three = ev.finish(0, merged, 0.0).unwrap();
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * a.abs().max(1.0);
    assert!(close(one.value("fd_scenes").unwrap(), three.value("fd_scenes").unwrap()), "{:?} vs {:?}", one.fd_scenes, three.fd_scenes);
    assert!(close(one.value("mmd").unwrap(), three.value("mmd").unwrap()));
    assert_eq!(one.composition, three.composition);
    assert_eq!(one.fd_scenes.as_ref().unwrap().protocol, three.fd_scenes.as_ref().unwrap().protocol);
    std::fs::remove_dir_all(&dir).ok();
}
