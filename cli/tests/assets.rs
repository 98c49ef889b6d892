//! `ablate assets convert` and `ablate assets status` for the CMMD / DINO-MMD networks.

use ablate_trainer::eval::embed::{read_weights, write_tiny_networks, write_weights, EmbedKind, Embedder};
use candle_core::{Device, Tensor};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_ablate");

#[test]
fn convert_keeps_the_vision_tower_refuses_pickles_and_other_layouts() {
    let dir = tempfile::tempdir().unwrap();
    let (clip, _) = write_tiny_networks(&dir.path().join("nets")).unwrap();
    // a whole CLIPModel checkpoint also holds the text tower
    let mut l = read_weights(&clip, &Device::Cpu).unwrap();
    l.tensors.insert("text_model.embeddings.token_embedding.weight".into(), Tensor::zeros((10, 8), candle_core::DType::F32, &Device::Cpu).unwrap());
    let full = dir.path().join("model.safetensors");
    write_weights(&full, &l.tensors, l.metadata.clone()).unwrap();
    let out = dir.path().join("installed/clip.safetensors");
    let convert = |extra: &[&str], input: &std::path::Path| {
        let mut c = Command::new(BIN);
        c.args(["assets", "convert", "clip", input.to_str().unwrap(), "--out", out.to_str().unwrap()]).args(extra);
        c.output().unwrap()
    };

    let refused = convert(&[], &full);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("not the released openai/clip-vit-large-patch14-336"), "{err}");
    assert!(!out.exists(), "nothing installed");

    let ok = convert(&["--any-layout"], &full);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let installed = read_weights(&out, &Device::Cpu).unwrap();
    assert_eq!(installed.tensors.len(), l.tensors.len() - 1, "the text tower is dropped");
    assert!(!installed.tensors.contains_key("text_model.embeddings.token_embedding.weight"));
    assert_eq!(installed.metadata.get("num_attention_heads").map(String::as_str), Some("4"));
    let net = Embedder::load(EmbedKind::Clip, &out, &Device::Cpu).unwrap();
    assert_eq!(net.dim, 32);

    let pickle = dir.path().join("pytorch_model.bin");
    std::fs::write(&pickle, b"not read").unwrap();
    let refused = convert(&[], &pickle);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("PyTorch pickle") && err.contains("model.safetensors"), "{err}");
}

#[test]
fn status_names_each_network_and_where_it_goes() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .env("ABLATE_CLIP_WEIGHTS", dir.path().join("none-clip.safetensors"))
        .env("ABLATE_DINO_WEIGHTS", dir.path().join("none-dino.safetensors"))
        .env("ABLATE_INCEPTION_WEIGHTS", dir.path().join("none-inception.safetensors"))
        .args(["assets", "status"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for want in ["FID (pytorch-fid Inception-v3)", "CMMD (openai/clip-vit-large-patch14-336)", "DINO-MMD (facebook/dinov2-base)", "none-clip.safetensors", "3 of 3 not installed"] {
        assert!(text.contains(want), "{want}: {text}");
    }
}
