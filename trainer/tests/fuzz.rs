//! Fuzz tests (stable Rust, proptest): the training-config parser, the checkpoint loader,
//! the image decoder and the checkpoint store's manifest check take mutated valid inputs and
//! random bytes; each gives a value or an error, never a panic. `ABLATE_FUZZ_CASES` sets the
//! inputs per target (default 256); each target prints how many it ran.

use ablate_proto::fuzz;
use ablate_trainer::ckpt_store::{CheckpointStore, CHECKPOINT};
use ablate_trainer::{TrainConfig, Trainer};
use candle_core::Device;

fn example(name: &str) -> String {
    std::fs::read_to_string(format!("{}/../examples/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn training_configs_parse_or_are_refused() {
    let seeds = vec![example("train-tiny.toml"), example("train-tiny-minilm.toml"), TrainConfig::default().to_toml()];
    fuzz::run("training config", fuzz::text_mutations_of(seeds), |text| {
        let full = TrainConfig::from_toml_str(&text, "fuzz.toml");
        let portable = TrainConfig::from_toml_str_portable(&text, "fuzz.toml");
        // what passes the full check passes the file-free one
        if full.is_ok() && portable.is_err() {
            return Err(format!("valid, but refused without files: {:?}", portable.err()));
        }
        Ok(())
    });
}

/// A model small enough that a mutated copy of its checkpoint is quick to write.
fn small() -> TrainConfig {
    let text = "[model]\nhidden = 32\ndepth = 1\nheads = 2\n[text]\nwidth = 16\nlayers = 1\nheads = 2\nmax_tokens = 8\n[latent]\nimage_size = 8\n";
    TrainConfig::from_toml_str(text, "small.toml").unwrap()
}

#[test]
fn checkpoints_load_or_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let trainer = Trainer::new(small(), &Device::Cpu).unwrap();
    let good = dir.path().join("good.safetensors");
    trainer.save(&good).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    // safetensors: 8 bytes of header length, the JSON header, then the tensors; most edits go
    // to the header, where parsing happens
    let head = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let body = bytes[head..].to_vec();
    let strategy = proptest::prop_oneof![
        3 => proptest::strategy::Strategy::prop_map(fuzz::mutations_of(vec![bytes[..head].to_vec()]), move |h| [h, body.clone()].concat()),
        1 => fuzz::mutations_of(vec![bytes.clone()]),
    ];
    let path = dir.path().join("fuzzed.safetensors");
    let mut target = Trainer::new(small(), &Device::Cpu).unwrap();
    let target = std::sync::Mutex::new(&mut target);
    fuzz::run("checkpoint loader", strategy, |b| {
        std::fs::write(&path, &b).map_err(|e| e.to_string())?;
        let _ = target.lock().unwrap().load(&path);
        let _ = ablate_trainer::checkpoint::read_step(&path);
        Ok(())
    });
}

fn encoded(format: image::ImageFormat) -> Vec<u8> {
    let img = image::RgbImage::from_fn(12, 9, |x, y| image::Rgb([(x * 20) as u8, (y * 25) as u8, 128]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

#[test]
fn images_decode_or_are_refused() {
    let seeds = vec![encoded(image::ImageFormat::Png), encoded(image::ImageFormat::Jpeg)];
    assert_eq!(ablate_trainer::data::real::decode(&seeds[0], 8).unwrap().len(), 3 * 64, "the seeds decode");
    fuzz::run("image decoder", fuzz::mutations_of(seeds), |b| {
        if let Ok(chw) = ablate_trainer::data::real::decode(&b, 8) {
            if chw.len() != 3 * 64 || chw.iter().any(|v| !(-1.0..=1.0).contains(v)) {
                return Err("a decoded image outside [-1, 1] or of the wrong size".into());
            }
        }
        Ok(())
    });
}

#[test]
fn checkpoint_store_manifests_check_or_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join(CHECKPOINT), b"weights").unwrap();
    std::fs::write(run.join("metrics.jsonl"), b"{}\n").unwrap();
    let store = CheckpointStore::new(dir.path().join("store"), 1);
    let published = store.publish(7, &run, &[CHECKPOINT, "metrics.jsonl"]).unwrap();
    let manifest = dir.path().join("store").join(published).join("MANIFEST");
    let seed = std::fs::read(&manifest).unwrap();
    fuzz::run("checkpoint store manifest", fuzz::mutations_of(vec![seed.clone()]), |m| {
        std::fs::write(&manifest, &m).map_err(|e| e.to_string())?;
        let verdict = store.check(7);
        if m == seed && verdict.is_some() {
            return Err(format!("the untouched manifest was refused: {verdict:?}"));
        }
        Ok(())
    });
}
