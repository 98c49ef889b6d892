//! Pretrained components for GPU users, checked on shapes with random weights (no weights
//! are downloaded in tests): FLUX.1 and SD autoencoders, DINOv2 teacher, BERT text encoder.

mod common;

use ablate_trainer::latent::pretrained::Pretrained;
use ablate_trainer::model::frozen_text::{Family, FrozenTextEncoder};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};

fn random_vb(map: &VarMap) -> VarBuilder<'_> {
    VarBuilder::from_varmap(map, DType::F32, &Device::Cpu)
}

#[test]
fn flux1_and_sd_autoencoders_have_the_published_latent_shapes() {
    let x = Tensor::zeros((1, 3, 64, 64), DType::F32, &Device::Cpu).unwrap();
    for (kind, channels, side) in [("flux1", 16, 8), ("sd", 4, 8), ("flux2", 128, 4)] {
        let map = VarMap::new();
        let ae = Pretrained::build(kind, random_vb(&map)).unwrap();
        let z = ae.encode(&x).unwrap();
        assert_eq!(z.dims(), &[1, channels, side, side], "{kind}");
        assert_eq!(ae.decode(&z).unwrap().dims(), &[1, 3, 64, 64], "{kind}");
    }
}

#[test]
fn flux2_patchify_round_trips() {
    use ablate_trainer::latent::pretrained::{patchify2, unpatchify2};
    let z = Tensor::arange(0f32, 2.0 * 3.0 * 4.0 * 6.0, &Device::Cpu).unwrap().reshape((2, 3, 4, 6)).unwrap();
    let p = patchify2(&z).unwrap();
    assert_eq!(p.dims(), &[2, 12, 2, 3]);
    // channel 4c + 2i + j of the patch holds pixel (2y + i, 2x + j) of channel c
    let at = |t: &Tensor, idx: [usize; 4]| t.get(idx[0]).unwrap().get(idx[1]).unwrap().get(idx[2]).unwrap().get(idx[3]).unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(at(&p, [1, 4 * 2 + 2 + 1, 1, 2]), at(&z, [1, 2, 3, 5]));
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(flat(&unpatchify2(&p).unwrap()), flat(&z));
}

#[test]
fn dinov2_teacher_gives_features_on_the_token_grid() {
    let dir = std::env::temp_dir().join(format!("ablate-dino-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("dinov2.safetensors");
    let map = VarMap::new();
    candle_transformers::models::dinov2::vit_small(random_vb(&map)).unwrap();
    map.save(&path).unwrap();
    let cfg = ablate_trainer::objective::repa::RepaConfig { enabled: true, teacher: "dinov2".into(), teacher_weights: Some(path.display().to_string()), ..Default::default() };
    let t = ablate_trainer::teacher::Teacher::load(&cfg, &Device::Cpu).unwrap();
    assert_eq!(t.dim(), 384);
    let images = Tensor::zeros((2, 3, 32, 32), DType::F32, &Device::Cpu).unwrap();
    // 32 px images, 4 px per token -> 8x8 grid -> DINOv2 sees 112 px
    assert_eq!(t.features(&images, 4).unwrap().dims(), &[2, 64, 384]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A BERT directory with random weights and a word-level tokenizer.
fn fake_bert_dir() -> std::path::PathBuf {
    use tokenizers::models::wordlevel::WordLevel;
    use tokenizers::pre_tokenizers::whitespace::Whitespace;
    let dir = std::env::temp_dir().join(format!("ablate-bert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = r#"{"vocab_size": 50, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 64, "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "max_position_embeddings": 64,
        "type_vocab_size": 2, "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0}"#;
    std::fs::write(dir.join("config.json"), config).unwrap();
    let cfg: candle_transformers::models::bert::Config = serde_json::from_str(config).unwrap();
    let map = VarMap::new();
    candle_transformers::models::bert::BertModel::load(random_vb(&map), &cfg).unwrap();
    map.save(dir.join("model.safetensors")).unwrap();
    let words = ["[UNK]", "a", "red", "circle", "on", "grey", "background", "blue", "square"];
    let vocab = words.iter().enumerate().map(|(i, w)| (w.to_string(), i as u32)).collect();
    let model = WordLevel::builder().vocab(vocab).unk_token("[UNK]".into()).build().unwrap();
    let mut tok = tokenizers::Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(Whitespace {}));
    tok.save(dir.join("tokenizer.json"), false).unwrap();
    dir
}

#[test]
fn bert_encoder_embeds_caches_and_trains_a_denoiser() {
    let dir = fake_bert_dir();
    let enc = FrozenTextEncoder::load(Family::Bert, &dir, 8, &Device::Cpu).unwrap();
    let caps = vec!["a red circle on grey background".to_string(), String::new(), "a red circle on grey background".to_string()];
    let (t, lens) = enc.encode(&caps).unwrap();
    assert_eq!(t.dims(), &[3, 8, 32]);
    assert_eq!(lens, vec![6, 0, 6]);
    assert_eq!(enc.cached(), 2, "each distinct caption is encoded once");
    let rows = t.to_vec3::<f32>().unwrap();
    assert_eq!(rows[0], rows[2]);

    // a denoiser trained on the frozen encoder's features
    let mut cfg = common::small_config();
    cfg.text.encoder = "bert".into();
    cfg.text.dir = Some(dir.display().to_string());
    cfg.text.max_tokens = 8;
    assert_eq!(cfg.denoiser().unwrap().text_dim, 32);
    let mut t = ablate_trainer::Trainer::new(cfg, &Device::Cpu).unwrap();
    assert!(t.params.iter().all(|p| !p.name.starts_with("text.")), "the frozen encoder has no trainable parameters");
    for b in common::batches(&t.cfg, 2) {
        assert!(t.train_step(&b).unwrap().loss.is_finite());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A cut-down T5 encoder directory (candle-transformers' T5, gated-GELU feed-forward as in
/// T5-v1.1) with the fixtures' deterministic weights and a word-level tokenizer.
fn fake_t5_dir() -> std::path::PathBuf {
    use tokenizers::models::wordlevel::WordLevel;
    use tokenizers::pre_tokenizers::whitespace::Whitespace;
    let dir = std::env::temp_dir().join(format!("ablate-t5-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = r#"{"vocab_size": 50, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_heads": 4,
        "relative_attention_num_buckets": 8, "relative_attention_max_distance": 16, "dropout_rate": 0.0,
        "layer_norm_epsilon": 1e-6, "initializer_factor": 1.0, "feed_forward_proj": "gated-gelu",
        "is_encoder_decoder": true, "pad_token_id": 0, "eos_token_id": 1}"#;
    std::fs::write(dir.join("config.json"), config).unwrap();
    let cfg: candle_transformers::models::t5::Config = serde_json::from_str(config).unwrap();
    let map = VarMap::new();
    candle_transformers::models::t5::T5EncoderModel::load(random_vb(&map), &cfg).unwrap();
    for (name, var) in map.data().lock().unwrap().iter() {
        let v = ablate_trainer::eval::detvalues::network_weight(name, var.dims()).unwrap_or_else(|| panic!("no rule for {name}"));
        var.set(&Tensor::from_vec(v.into_iter().map(|x| x as f32).collect::<Vec<f32>>(), var.dims(), &Device::Cpu).unwrap()).unwrap();
    }
    map.save(dir.join("model.safetensors")).unwrap();
    let words = ["<pad>", "</s>", "<unk>", "a", "red", "circle", "on", "grey", "background", "blue", "square"];
    let vocab = words.iter().enumerate().map(|(i, w)| (w.to_string(), i as u32)).collect();
    let model = WordLevel::builder().vocab(vocab).unk_token("<unk>".into()).build().unwrap();
    let mut tok = tokenizers::Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(Whitespace {}));
    tok.save(dir.join("tokenizer.json"), false).unwrap();
    dir
}

/// The T5 route: the encoder's last hidden states per caption (deterministic, cached,
/// different captions apart), and a denoiser trained on them with `text.encoder = "t5"`.
#[test]
fn t5_encoder_embeds_caches_and_trains_a_denoiser() {
    let dir = fake_t5_dir();
    let enc = FrozenTextEncoder::load(Family::T5, &dir, 8, &Device::Cpu).unwrap();
    let caps = vec!["a red circle on grey background".to_string(), String::new(), "a blue square".to_string(), "a red circle on grey background".to_string()];
    let (t, lens) = enc.encode(&caps).unwrap();
    assert_eq!(t.dims(), &[4, 8, 32]);
    assert_eq!(lens, vec![6, 0, 3, 6]);
    assert_eq!(enc.cached(), 3, "each distinct caption is encoded once");
    let rows = t.to_vec3::<f32>().unwrap();
    assert_eq!(rows[0], rows[3]);
    assert_ne!(rows[0][..3], rows[2][..3], "different captions, different features");
    assert!(rows.iter().flatten().flatten().all(|v| v.is_finite()));
    assert!(rows[1].iter().flatten().all(|v| *v == 0.0) && rows[0][6..].iter().flatten().all(|v| *v == 0.0), "padding is zero");
    // a second load of the same files gives the same features (frozen, deterministic)
    let again = FrozenTextEncoder::load(Family::T5, &dir, 8, &Device::Cpu).unwrap().encode(&caps[..1]).unwrap().0.to_vec3::<f32>().unwrap();
    assert_eq!(again[0], rows[0]);

    let mut cfg = common::small_config();
    cfg.text.encoder = "t5".into();
    cfg.text.dir = Some(dir.display().to_string());
    cfg.text.max_tokens = 8;
    assert_eq!(cfg.denoiser().unwrap().text_dim, 32);
    let mut t = ablate_trainer::Trainer::new(cfg, &Device::Cpu).unwrap();
    assert!(t.params.iter().all(|p| !p.name.starts_with("text.")), "the frozen encoder has no trainable parameters");
    for b in common::batches(&t.cfg, 2) {
        assert!(t.train_step(&b).unwrap().loss.is_finite());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn missing_encoder_files_name_the_fix() {
    let mut cfg = common::small_config();
    cfg.text.encoder = "bert".into();
    cfg.text.dir = Some("/nonexistent/minilm".into());
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("/nonexistent/minilm") && err.contains("ablate assets fetch minilm"), "{err}");
}

#[test]
fn missing_teacher_weights_name_the_path_and_the_fix() {
    let cfg = ablate_trainer::objective::repa::RepaConfig { enabled: true, teacher: "weak".into(), teacher_weights: Some("/nonexistent/t.safetensors".into()), ..Default::default() };
    let err = ablate_trainer::teacher::Teacher::load(&cfg, &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("/nonexistent/t.safetensors") && err.contains("ablate assets train-teacher weak"), "{err}");
    let cfg = ablate_trainer::objective::repa::RepaConfig { enabled: true, teacher: "dinov2".into(), ..Default::default() };
    let err = ablate_trainer::teacher::Teacher::load(&cfg, &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("needs repa.teacher_weights"), "{err}");
}
