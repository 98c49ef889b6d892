//! The Frechet distance against pytorch-fid's formula computed by NumPy/SciPy.
//!
//! `scripts/reference/fd_fixtures.py` generated the feature sets from the shared
//! deterministic formula (`ablate_trainer::eval::detvalues`), computed FD with
//! `pytorch_fid.fid_score.calculate_frechet_distance` (np.cov + scipy.linalg.sqrtm) and stored
//! the numbers in `tests/fixtures/fd/cases.json`. Here the same features are rebuilt, streamed
//! through `FeatureStats` in uneven batches, and must agree to 1e-6 relative.

use ablate_trainer::eval::{detvalues, frechet_distance, FeatureStats};
use serde_json::Value;

fn features(name: &str, n: usize, d: usize, b: bool, dim_shift: &str) -> Vec<f64> {
    let x = detvalues::syms(name, n * d);
    if !b {
        return x;
    }
    let shift = detvalues::syms(dim_shift, d);
    x.iter().enumerate().map(|(k, v)| 0.8 * v + 0.05 * shift[k % d]).collect()
}

#[test]
fn fd_agrees_with_pytorch_fid_scipy() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fd/cases.json");
    let cases: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for case in cases["cases"].as_array().unwrap() {
        let (d, n) = (case["D"].as_u64().unwrap() as usize, case["N"].as_u64().unwrap() as usize);
        let shift = format!("fd/{d}/{n}/shift");
        let a = features(&format!("fd/{d}/{n}/a"), n, d, false, &shift);
        let b = features(&format!("fd/{d}/{n}/b"), n, d, true, &shift);
        let stats = |x: &[f64]| {
            let mut s = FeatureStats::new(d);
            // uneven batches, as evaluation produces them
            for chunk in x.chunks(d * 37) {
                s.add_rows(chunk).unwrap();
            }
            s.finish().unwrap()
        };
        let (sa, sb) = (stats(&a), stats(&b));
        assert!((sa.mu[0] - case["mu_a_head"][0].as_f64().unwrap()).abs() < 1e-12, "D={d} N={n}: features differ from the fixture's");
        let fd = frechet_distance(&sa, &sb).unwrap();
        let want = case["fd_pytorch_fid"].as_f64().unwrap();
        let rel = (fd.value - want).abs() / want;
        eprintln!("D={d:5} N={n:5}  ablate {:.12}  pytorch-fid {want:.12}  rel {rel:.1e}", fd.value);
        assert!(rel < 1e-6, "D={d} N={n}: {} vs pytorch-fid {want} (rel {rel:.2e})", fd.value);
        assert_eq!(fd.eps_offset, None);
    }
}
