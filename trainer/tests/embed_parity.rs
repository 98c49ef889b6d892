//! CLIP and DINOv2 embeddings, the bicubic resize and the CMMD estimator against Hugging Face
//! `transformers` (fixtures of `scripts/reference/embed_fixtures.py`): tiny networks of the
//! real architectures with deterministic weights that both sides build from a formula of each
//! tensor's name, so nothing is downloaded or shipped but names, inputs and outputs.

use ablate_trainer::eval::detvalues::{syms, units};
use ablate_trainer::eval::embed::{write_deterministic, EmbedKind, Embedder};
use ablate_trainer::eval::resize::bicubic_planes;
use candle_core::{Device, Tensor};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/embed")
}

fn parity() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("parity.json")).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    match v {
        Value::Array(a) => a.iter().flat_map(floats).collect(),
        v => vec![v.as_f64().unwrap()],
    }
}

/// `name d0,d1,...` lines of a names file (every entry of the fixture networks has a formula
/// value: a `not-assigned` line is an error).
fn entries(file: &str) -> Vec<(String, Vec<usize>)> {
    ablate_trainer::eval::embed::names_file_entries(&std::fs::read_to_string(fixtures().join(file)).unwrap()).unwrap()
}

/// The network of `kind` from the fixture's names, written and loaded the way real weights are.
fn network(kind: EmbedKind, names: &str, section: &Value, dir: &Path) -> Embedder {
    let cfg = &section["config"];
    // "F.interpolate(x, size=(42, 42), ...)"
    let size: usize = section["resize"].as_str().unwrap().split("size=(").nth(1).unwrap().split(',').next().unwrap().parse().unwrap();
    let meta = HashMap::from([("num_attention_heads".to_string(), cfg["num_attention_heads"].to_string()), ("input_size".to_string(), size.to_string())]);
    let path = dir.join(format!("{names}.safetensors"));
    write_deterministic(&path, &entries(&format!("{names}_names.txt")), meta).unwrap();
    Embedder::load(kind, &path, &Device::Cpu).unwrap()
}

fn input(shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    let v: Vec<f32> = units("embed/input", n).into_iter().map(|x| x as f32).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Max |ours - reference| / max |reference|.
fn rel_err(ours: &[f64], want: &[f64]) -> f64 {
    assert_eq!(ours.len(), want.len());
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    ours.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f64, f64::max) / scale
}

fn check(kind: EmbedKind, names: &str) {
    let p = parity();
    let section = &p[names];
    let dir = std::env::temp_dir().join(format!("ablate-embed-parity-{}-{names}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let net = network(kind, names, section, &dir);
    let shape: Vec<usize> = floats(&section["input_shape"]).into_iter().map(|v| v as usize).collect();
    let x = input(&shape);

    let pre: Vec<f64> = net.preprocess(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f64::from).collect();
    let head = floats(&section["resized_head"]);
    let pre_err = rel_err(&pre[..head.len()], &head);

    let got: Vec<f64> = net.embed(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f64::from).collect();
    let err = rel_err(&got, &floats(&section["embeds_f64"]));
    let err_all = rel_err(&got, &floats(&section["embeds_f64_all_f64"]));
    println!("{names}: resized input max rel err {pre_err:.2e}; embeddings max rel err {err:.2e} vs transformers (f64 run), {err_all:.2e} vs its all-f64 variant; dim {}", net.dim);
    assert!(pre_err < 1e-5, "{names}: the resized, normalised input is off by {pre_err:e}");
    assert!(err < 1e-5 && err_all < 1e-5, "{names}: embeddings off by {err:e} / {err_all:e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn clip_image_embeds_match_transformers() {
    check(EmbedKind::Clip, "clip");
}

#[test]
fn dinov2_pooler_output_matches_transformers() {
    check(EmbedKind::Dino, "dino");
}

#[test]
fn bicubic_resize_matches_torch_interpolate() {
    let p = parity();
    let b = &p["bicubic"];
    let shape: Vec<usize> = floats(&b["input_shape"]).into_iter().map(|v| v as usize).collect();
    let x = syms("embed/bicubic", shape.iter().product());
    let mut worst = 0f64;
    for case in b["cases"].as_array().unwrap() {
        let size = floats(&case["size"]);
        let got = bicubic_planes(&x, shape[2], shape[3], size[0] as usize, size[1] as usize);
        let err = rel_err(&got, &floats(&case["output"]));
        worst = worst.max(err);
        assert!(err < 1e-12, "{size:?}: {err:e}");
    }
    println!("bicubic: max rel err {worst:.2e} over {} cases", b["cases"].as_array().unwrap().len());
}

#[test]
fn cmmd_estimator_matches_the_reference_formula() {
    let p = parity();
    let m = &p["mmd"];
    let rows = |name: &str, n: usize, a: f64, c: f64| -> Vec<f32> { syms(name, n * 32).into_iter().map(|v| (a * v + c) as f32).collect() };
    let (x, y) = (rows("embed/mmd/x", 6, 1.0, 0.0), rows("embed/mmd/y", 5, 0.7, 0.2));
    let got = ablate_trainer::eval::mmd::mmd(&x, &y, 32).unwrap();
    let want = m["value"].as_f64().unwrap();
    let rel = (got - want).abs() / want.abs();
    println!("CMMD estimator: {got} vs {want}, rel err {rel:.2e}");
    assert!(rel < 1e-5, "{got} vs {want}");
}

#[test]
fn a_missing_weights_file_is_unavailable_with_the_install_command() {
    let err = match Embedder::load(EmbedKind::Clip, Path::new("/nonexistent/clip.safetensors"), &Device::Cpu) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("loaded a missing file"),
    };
    assert!(err.contains("CMMD is unavailable") && err.contains("openai/clip-vit-large-patch14-336") && err.contains("eval.clip_weights"), "{err}");
}
