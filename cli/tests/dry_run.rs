//! `ablate train --dry-run`: a run's size before it starts, without training or writing.

use std::process::Command;

#[test]
fn the_prx_1_2b_example_prints_its_size_and_memory_without_training() {
    let dir = tempfile::tempdir().unwrap();
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/prx-1.2b.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_ablate")).current_dir(dir.path()).args(["train", example.to_str().unwrap(), "--dry-run"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("1167.3M trainable parameters") && text.contains("256 image + 128 text tokens"), "{text}");
    let rows: Vec<&str> = text.lines().filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit())).collect();
    assert_eq!(rows.len(), 4, "batch 1, 2, 4, 8: {text}");
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none(), "a dry run writes nothing");
}
