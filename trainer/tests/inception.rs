//! Parity of the candle FID Inception with pytorch-fid's network, layer by layer.
//!
//! Fixtures: `scripts/reference/inception_fixtures.py` built pytorch-fid 0.3.0's network
//! (torch 2.15, CPU), gave every parameter the deterministic value of
//! `ablate_trainer::eval::detvalues` under its state-dict name, ran it in float64 on two
//! deterministic input sets (2 x 64x64: upsampling; 1 x 320x320: downsampling) and stored per
//! stage statistics and 64 sampled values, plus the final 2048-d features. The same weights
//! and inputs are rebuilt here from the formula, so nothing large is committed.

use ablate_trainer::eval::{detvalues, InceptionFid};
use candle_core::{Device, Tensor};
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inception")
}

/// Largest |a - b| relative to the largest |b|.
fn rel_max(a: &[f32], b: &[f64]) -> f64 {
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
    a.iter().zip(b).map(|(x, y)| (*x as f64 - y).abs()).fold(0.0, f64::max) / scale
}

#[test]
fn detvalues_match_the_python_formula() {
    // Printed by `python3 scripts/reference/detvalues.py` (self-check).
    let want = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/reference/README.md")).unwrap();
    for i in 0..3u64 {
        let hex = format!("{:016x}", detvalues::unit("check", i).to_bits());
        assert!(want.contains(&hex), "unit(\"check\", {i}) = {hex} is not in scripts/reference/README.md");
    }
}

#[test]
fn inception_matches_pytorch_fid_layer_by_layer() {
    let dev = Device::Cpu;
    let net = InceptionFid::deterministic(&dev).unwrap();
    let parity: Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("parity.json")).unwrap()).unwrap();
    for set in ["small", "large"] {
        let spec = &parity["sets"][set];
        let shape: Vec<usize> = spec["input_shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        let n: usize = shape.iter().product();
        let input: Vec<f32> = detvalues::units(&format!("inception/input/{set}"), n).into_iter().map(|v| v as f32).collect();
        let images = Tensor::from_vec(input, shape.as_slice(), &dev).unwrap();
        let mut seen: HashMap<String, Vec<f32>> = HashMap::new();
        let features = net
            .features_with(&images, &mut |name, t| {
                seen.insert(name.to_string(), t.flatten_all().unwrap().to_vec1::<f32>().unwrap());
            })
            .unwrap();
        for stage in spec["stages"].as_array().unwrap() {
            let name = stage["stage"].as_str().unwrap();
            let got = seen.get(name).unwrap_or_else(|| panic!("stage {name} was not produced"));
            let numel: u64 = stage["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).product();
            assert_eq!(got.len() as u64, numel, "{set}/{name}: element count");
            let idx: Vec<usize> = stage["sample_index"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
            let want: Vec<f64> = stage["samples"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            let got_s: Vec<f32> = idx.iter().map(|&i| got[i]).collect();
            let max_abs = stage["max_abs"].as_f64().unwrap();
            let err = got_s.iter().zip(&want).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max) / max_abs;
            let mean: f64 = got.iter().map(|v| *v as f64).sum::<f64>() / got.len() as f64;
            let mean_err = (mean - stage["mean"].as_f64().unwrap()).abs() / max_abs;
            eprintln!("{set:5} {name:14} samples rel {err:.2e}  mean rel {mean_err:.2e}");
            assert!(err < 1e-4 && mean_err < 1e-4, "{set}/{name}: samples off by {err:.3e}, mean by {mean_err:.3e} of max |x|");
        }
        let want = Tensor::read_npy(fixtures().join(format!("features_{set}.npy"))).unwrap();
        let want: Vec<f64> = want.to_dtype(candle_core::DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let got: Vec<f32> = features.flatten_all().unwrap().to_vec1().unwrap();
        let err = rel_max(&got, &want);
        eprintln!("{set:5} features max |diff| / max |ref| = {err:.2e}");
        assert!(err < 1e-4, "{set}: features differ by {err:.3e} relative");
    }
}
