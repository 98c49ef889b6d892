//! `examples/real-data.toml` end to end: an image folder made by `ablate data export`, a
//! sweep trained on it and evaluated on its held-out images, and a results table with FID,
//! CMMD and DINO-MMD columns. The networks carry deterministic weights (tiny CLIP and DINOv2 of
//! the real architectures, the full Inception-v3), so the whole path runs without a download.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_ablate");

#[test]
fn the_real_data_example_runs_to_a_table_with_fid_cmmd_and_dino_mmd() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let export = Command::new(BIN).current_dir(root).args(["data", "export", "--source", "photo", "--count", "96", "--out", "data/scenes"]).output().unwrap();
    assert!(export.status.success(), "{}", String::from_utf8_lossy(&export.stderr));
    assert_eq!(std::fs::read_to_string(root.join("data/scenes/captions.jsonl")).unwrap().lines().count(), 96);

    let (clip, dino) = ablate_trainer::eval::embed::write_tiny_networks(&root.join("nets")).unwrap();
    let inception = root.join("nets/inception.safetensors");
    ablate_trainer::eval::InceptionFid::write_deterministic(&inception).unwrap();

    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/real-data.toml");
    let out = Command::new(BIN)
        .current_dir(root)
        .env("ABLATE_CLIP_WEIGHTS", &clip)
        .env("ABLATE_DINO_WEIGHTS", &dino)
        .env("ABLATE_INCEPTION_WEIGHTS", &inception)
        .args(["run", example.to_str().unwrap(), "--steps", "4", "--workers", "2", "--out", "out"])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    println!("{stdout}");
    let header = stdout.lines().find(|l| l.starts_with("arm ")).expect("the results table");
    for col in ["FID", "CMMD", "DINO-MMD"] {
        assert!(header.contains(col), "{col} column: {header}");
    }
    assert!(stdout.contains("Evaluation: 64 generated images") && stdout.contains("reference folder:data/scenes (first 64 held out)"), "the protocol line:\n{stdout}");

    let results: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(root.join("out/results.json")).unwrap()).unwrap();
    let rows = results["rows"].as_array().or_else(|| results.as_array()).expect("rows");
    assert_eq!(rows.len(), 3);
    for row in rows {
        for m in ["fid", "cmmd", "dino_mmd"] {
            let v = row[m].as_f64().unwrap_or(f64::NAN);
            assert!(v.is_finite() && v >= 0.0, "{} {m} = {}", row["arm"], row[m]);
        }
        assert!(row["fd_scenes"].is_null(), "no scene metrics on a user's set: {row}");
    }
}
