//! Real image-text datasets: folders with captions.jsonl and WebDataset shards, with
//! unreadable samples skipped and counted.

mod common;

use ablate_trainer::data::{BatchSpec, CaptionMode, Phase, RealDataset, Source, Tokenizer};
use std::path::Path;

fn png_bytes(w: u32, h: u32, rgb: [u8; 3]) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(w, h, image::Rgb(rgb));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("ablate-real-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write_folder(dir: &Path) {
    std::fs::write(dir.join("red.png"), png_bytes(40, 20, [255, 0, 0])).unwrap();
    std::fs::write(dir.join("broken.png"), b"not a png at all").unwrap();
    std::fs::write(dir.join("blue.png"), png_bytes(20, 20, [0, 0, 255])).unwrap();
    std::fs::write(
        dir.join("captions.jsonl"),
        "{\"file\": \"red.png\", \"caption\": \"A red square. It is bright.\"}\n{\"file\": \"broken.png\", \"caption\": \"corrupt\"}\n{\"file\": \"blue.png\", \"caption\": \"A blue square.\"}\n",
    )
    .unwrap();
}

#[test]
fn folder_dataset_crops_resizes_and_skips_corrupt_samples() {
    let dir = tmp("folder");
    write_folder(&dir);
    let ds = RealDataset::open_folder(&dir).unwrap();
    assert_eq!(ds.len(), 3);
    let (img, cap) = ds.get(0, 8).unwrap();
    assert_eq!(img.len(), 3 * 64);
    assert_eq!(cap, "A red square. It is bright.");
    assert!((img[0] - 1.0).abs() < 1e-6 && (img[64] + 1.0).abs() < 1e-6, "red in [-1, 1]");
    // index 1 is corrupt: the next sample is used and the skip is counted
    let (img, cap) = ds.get(1, 8).unwrap();
    assert_eq!(cap, "A blue square.");
    assert!((img[128] - 1.0).abs() < 1e-6);
    assert_eq!(ds.skipped(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn caption_entries_cannot_leave_their_folder() {
    for (name, file) in [("dotdot", "../outside.png"), ("abs", "/etc/passwd"), ("inner", "sub/../../x.png")] {
        let dir = tmp(name);
        std::fs::write(dir.join("captions.jsonl"), format!("{{\"file\": \"{file}\", \"caption\": \"c\"}}\n")).unwrap();
        let e = RealDataset::open_folder(&dir).err().expect("an escaping entry is refused").to_string();
        assert!(e.contains("line 1") && e.contains("must be a path inside the dataset folder"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn webdataset_shards_are_indexed_and_read() {
    let dir = tmp("wds");
    let shard = dir.join("shard-000.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&shard).unwrap());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
    };
    add("000.png", &png_bytes(16, 16, [0, 255, 0]));
    add("000.txt", b"A green field.");
    add("001.jpg", b"\xff\xd8 truncated jpeg");
    add("001.json", b"{\"caption\": \"broken\"}");
    add("002.png", &png_bytes(16, 16, [255, 255, 255]));
    add("002.json", b"{\"caption\": \"White. Nothing else.\"}");
    add("003.txt", b"caption without image");
    b.finish().unwrap();
    drop(b);
    let ds = RealDataset::open_webdataset(&dir).unwrap();
    assert_eq!(ds.len(), 3, "samples without an image are not indexed");
    assert_eq!(ds.get(0, 4).unwrap().1, "A green field.");
    assert_eq!(ds.get(1, 4).unwrap().1, "White. Nothing else.");
    assert_eq!(ds.skipped(), 1);

    // through the batch pipeline, with short captions = first sentence
    let mut cfg = common::small_config();
    cfg.objective.caption_dropout = 0.0;
    cfg.data.phases = vec![Phase { source: Source::Webdataset, path: Some(shard.display().to_string()), captions: CaptionMode::Short, steps: None }];
    cfg.validate().unwrap();
    let spec = BatchSpec::new(&cfg, 0, 1).unwrap();
    let batch = spec.make(0, &Tokenizer::new());
    assert_eq!(batch.captions, vec!["A green field.", "White.", "White.", "A green field."]);
    assert!(batch.skipped >= 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_datasets_are_refused_with_the_path() {
    let dir = tmp("bad");
    let err = RealDataset::open_folder(&dir).unwrap_err().to_string();
    assert!(err.contains("captions.jsonl") && err.contains("cannot read the caption index"), "{err}");
    std::fs::write(dir.join("captions.jsonl"), "{\"file\": 3}\n").unwrap();
    let err = RealDataset::open_folder(&dir).unwrap_err().to_string();
    assert!(err.contains("line 1: needs string fields \"file\" and \"caption\""), "{err}");
    let err = RealDataset::open_webdataset(&dir).unwrap_err().to_string();
    assert!(err.contains("no .tar shards found"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `n` images with distinct colours and captions, listed by a captions.jsonl in `dir` (files
/// may live elsewhere: `prefix` is prepended to the file names).
fn write_listed(dir: &Path, files_dir: &Path, prefix: &str, range: std::ops::Range<u8>) {
    std::fs::create_dir_all(files_dir).unwrap();
    let mut index = String::new();
    for i in range {
        std::fs::write(files_dir.join(format!("img{i:03}.png")), png_bytes(12, 12, [i.wrapping_mul(37), 255 - i, i.wrapping_mul(11)])).unwrap();
        index.push_str(&format!("{{\"file\": \"{prefix}img{i:03}.png\", \"caption\": \"image number {i}\"}}\n"));
    }
    std::fs::write(dir.join("captions.jsonl"), index).unwrap();
}

fn eval_config(train: &Path, set: &Path, holdout: usize) -> ablate_trainer::TrainConfig {
    let mut cfg = common::small_config();
    cfg.data.phases = vec![Phase { source: Source::Folder, path: Some(train.display().to_string()), captions: CaptionMode::Long, steps: None }];
    cfg.eval.samples = 4;
    cfg.eval.set = Some(ablate_trainer::eval::config::EvalSet { source: Source::Folder, path: set.display().to_string(), holdout });
    cfg
}

/// A held-out set that shares images with a training phase is refused before anything runs,
/// naming the shared files; separate sets pass.
#[test]
fn an_evaluation_set_overlapping_the_training_data_is_refused_with_the_files() {
    let root = tmp("overlap");
    let (train, set) = (root.join("train"), root.join("eval"));
    std::fs::create_dir_all(&set).unwrap();
    write_listed(&train, &train, "", 0..12);
    // the evaluation index lists two of the training files (links to them: entries never
    // leave their folder) and two of its own
    let mut index = String::new();
    for f in ["img003.png", "own-a.png", "img007.png", "own-b.png"] {
        if f.starts_with("own") {
            std::fs::write(set.join(f), png_bytes(12, 12, [1, 2, 3])).unwrap();
        } else {
            std::os::unix::fs::symlink(train.join(f), set.join(f)).unwrap();
        }
        index.push_str(&format!("{{\"file\": \"{f}\", \"caption\": \"{f}\"}}\n"));
    }
    std::fs::write(set.join("captions.jsonl"), index).unwrap();
    let err = BatchSpec::new(&eval_config(&train, &set, 0), 0, 1).err().expect("overlap refused").to_string();
    assert!(err.contains("not held out") && err.contains("trains on 2 of its 4 images"), "{err}");
    assert!(err.contains("img003.png") && err.contains("img007.png") && err.contains("data.phases[0]"), "{err}");

    // the same source for both without holdout: refused with the fix
    let err = BatchSpec::new(&eval_config(&train, &train, 0), 0, 1).err().expect("same source refused").to_string();
    assert!(err.contains("eval.set.holdout"), "{err}");

    // a separate set: fine
    let other = root.join("other");
    write_listed(&other, &other, "", 100..106);
    BatchSpec::new(&eval_config(&train, &other, 0), 0, 1).unwrap();
    let _ = std::fs::remove_dir_all(&root);
}

/// `holdout = K` on a training source: training never sees its first K samples, evaluation
/// uses them; config validation catches a holdout smaller than the evaluation or with no
/// training phase to hold out of.
#[test]
fn holdout_splits_one_source_between_evaluation_and_training() {
    let root = tmp("holdout");
    let data = root.join("data");
    write_listed(&data, &data, "", 0..10);
    let cfg = eval_config(&data, &data, 4);
    cfg.validate().unwrap();
    let spec = BatchSpec::new(&cfg, 0, 1).unwrap();
    let tok = Tokenizer::new();
    let seen: std::collections::HashSet<String> = (0..12).flat_map(|s| spec.make(s, &tok).captions).collect();
    for held in 0..4 {
        assert!(!seen.contains(&format!("image number {held}")), "held-out sample {held} was trained on: {seen:?}");
    }
    for trained in 4..10 {
        assert!(seen.contains(&format!("image number {trained}")), "sample {trained} never trained on: {seen:?}");
    }

    let mut small = eval_config(&data, &data, 2);
    let err = small.validate().unwrap_err().to_string();
    assert!(err.contains("eval.samples = 4 but eval.set.holdout = 2"), "{err}");
    small.eval.set.as_mut().unwrap().holdout = 4;
    small.data.phases[0].path = Some(root.join("elsewhere").display().to_string());
    let err = small.validate().unwrap_err().to_string();
    assert!(err.contains("no data phase reads folder"), "{err}");
    let _ = std::fs::remove_dir_all(&root);
}
