//! The image embedding networks behind CMMD and DINO-MMD: CLIP's projected image embedding
//! (CMMD: ViT-L/14 at 336 px) and DINOv2's CLS token after the final norm (DINO-MMD: ViT-B/14
//! at 224 px), loaded from local safetensors files with Hugging Face's tensor names.
//!
//! Images arrive as (B, 3, H, W) floats in [0, 1]; each network resizes them bicubically to its
//! input size (PyTorch's `interpolate`, no antialiasing, as the CMMD PyTorch port and the
//! DINOv2 MMD code do), normalises with its mean and std, and returns one unnormalised
//! embedding per image (the MMD estimator L2-normalises). The shape of the network (width,
//! depth, patch, positions) is read from the tensors; the head count from the file's
//! `num_attention_heads` metadata, else width / 64 as in every released CLIP and DINOv2.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::weights::{Loaded, Shapes};
use super::{dino, EvalError};
pub use super::weights::{read_weights, write_weights};

/// Which embedding network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbedKind {
    Clip,
    Dino,
}

impl EmbedKind {
    /// The metric it serves.
    pub fn metric(self) -> &'static str {
        match self {
            Self::Clip => "cmmd",
            Self::Dino => "dino_mmd",
        }
    }

    /// The file `ablate assets` expects, under the assets directory's `eval/`.
    pub fn weights_file(self) -> &'static str {
        match self {
            Self::Clip => "clip-vit-large-patch14-336.safetensors",
            Self::Dino => "dinov2-base.safetensors",
        }
    }

    fn env_var(self) -> &'static str {
        match self {
            Self::Clip => "ABLATE_CLIP_WEIGHTS",
            Self::Dino => "ABLATE_DINO_WEIGHTS",
        }
    }

    /// The weights file: `$ABLATE_CLIP_WEIGHTS` / `$ABLATE_DINO_WEIGHTS`, else the assets
    /// directory's `eval/<weights_file>`.
    pub fn default_path(self) -> PathBuf {
        std::env::var_os(self.env_var()).map(PathBuf::from).unwrap_or_else(|| crate::teacher::assets_dir().join("eval").join(self.weights_file()))
    }

    /// The Hugging Face repository whose `model.safetensors` loads as is.
    pub fn hub_name(self) -> &'static str {
        match self {
            Self::Clip => "openai/clip-vit-large-patch14-336",
            Self::Dino => "facebook/dinov2-base",
        }
    }

    fn mean_std(self) -> ([f64; 3], [f64; 3]) {
        match self {
            Self::Clip => ([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]),
            Self::Dino => ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        }
    }

    /// The name this module reads a checkpoint's tensor by (DINOv2 files saved by
    /// transformers 5 name the attention projections differently; CLIP names are kept).
    pub fn checkpoint_name(self, name: &str) -> String {
        match self {
            Self::Dino => dino::checkpoint_name(name),
            Self::Clip => name.to_string(),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Clip => "CLIP image_embeds (CMMD)",
            Self::Dino => "DINOv2 pooler_output (DINO-MMD)",
        }
    }
}

/// A network file of the fixtures' deterministic weights ([`super::detvalues::network_weight`])
/// for the given `(name, shape)` list, e.g. to test or time a network without its real weights.
pub fn write_deterministic(path: &Path, entries: &[(String, Vec<usize>)], metadata: HashMap<String, String>) -> Result<(), EvalError> {
    write_weights(path, &deterministic_tensors(entries, &Device::Cpu)?, metadata)
}

/// The tensors of `entries` with the fixtures' deterministic values (f64 formula, stored f32).
fn deterministic_tensors(entries: &[(String, Vec<usize>)], device: &Device) -> Result<HashMap<String, Tensor>, EvalError> {
    let mut tensors = HashMap::new();
    for (name, shape) in entries {
        let v = super::detvalues::network_weight(name, shape).ok_or_else(|| EvalError::Shape(format!("no deterministic rule for {name} {shape:?}")))?;
        let v: Vec<f32> = v.into_iter().map(|x| x as f32).collect();
        tensors.insert(name.clone(), Tensor::from_vec(v, shape.as_slice(), device)?);
    }
    Ok(tensors)
}

/// The `(name, shape)` lines of a fixtures names file (`name d0,d1,...`; `#` starts a
/// comment); a line that is not a name and a shape (e.g. `not-assigned`) is an error.
pub fn names_file_entries(text: &str) -> Result<Vec<(String, Vec<usize>)>, EvalError> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let parsed = l.split_once(' ').and_then(|(n, d)| Some((n.to_string(), d.split(',').map(|x| x.parse().ok()).collect::<Option<Vec<usize>>>()?)));
            parsed.ok_or_else(|| EvalError::Shape(format!("names file line {l:?} is not `name d0,d1,...`")))
        })
        .collect()
}

/// Tiny CLIP and DINOv2 networks of the real architectures (width 64, 2 layers, 4 heads; the
/// parity fixtures' shapes, `tests/fixtures/embed`) with deterministic weights, written to
/// `dir` as `clip.safetensors` and `dino.safetensors`: for tests and smoke runs of the whole
/// path without the real weights. Never for a reported number.
pub fn write_tiny_networks(dir: &Path) -> Result<(PathBuf, PathBuf), EvalError> {
    std::fs::create_dir_all(dir).map_err(|e| EvalError::File { path: dir.display().to_string(), msg: e.to_string() })?;
    let mut out = Vec::new();
    for (name, names, size) in [("clip", include_str!("../../tests/fixtures/embed/clip_names.txt"), 42), ("dino", include_str!("../../tests/fixtures/embed/dino_names.txt"), 56)] {
        let path = dir.join(format!("{name}.safetensors"));
        let meta = HashMap::from([("num_attention_heads".to_string(), "4".to_string()), ("input_size".to_string(), size.to_string())]);
        write_deterministic(&path, &names_file_entries(names)?, meta)?;
        out.push(path);
    }
    Ok((out[0].clone(), out[1].clone()))
}

/// The tensors (names and shapes) of the released network the metric is defined with: CLIP
/// ViT-L/14 at 336 px (vision tower and projection) or DINOv2 ViT-B/14, as their Hugging Face
/// `model.safetensors` hold them.
pub fn released_entries(kind: EmbedKind) -> Vec<(String, Vec<usize>)> {
    let mut e: Vec<(String, Vec<usize>)> = Vec::new();
    let mut add = |name: String, shape: &[usize]| e.push((name, shape.to_vec()));
    let linear = |add: &mut dyn FnMut(String, &[usize]), name: String, out: usize, inp: usize| {
        add(format!("{name}.weight"), &[out, inp]);
        add(format!("{name}.bias"), &[out]);
    };
    let norm = |add: &mut dyn FnMut(String, &[usize]), name: String, w: usize| {
        add(format!("{name}.weight"), &[w]);
        add(format!("{name}.bias"), &[w]);
    };
    match kind {
        EmbedKind::Clip => {
            let (w, layers, mlp, grid) = (1024, 24, 4096, 24);
            let p = "vision_model";
            add(format!("{p}.embeddings.class_embedding"), &[w]);
            add(format!("{p}.embeddings.patch_embedding.weight"), &[w, 3, 14, 14]);
            add(format!("{p}.embeddings.position_embedding.weight"), &[grid * grid + 1, w]);
            norm(&mut add, format!("{p}.pre_layrnorm"), w);
            for i in 0..layers {
                let l = format!("{p}.encoder.layers.{i}");
                for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                    linear(&mut add, format!("{l}.self_attn.{proj}"), w, w);
                }
                norm(&mut add, format!("{l}.layer_norm1"), w);
                linear(&mut add, format!("{l}.mlp.fc1"), mlp, w);
                linear(&mut add, format!("{l}.mlp.fc2"), w, mlp);
                norm(&mut add, format!("{l}.layer_norm2"), w);
            }
            norm(&mut add, format!("{p}.post_layernorm"), w);
            add("visual_projection.weight".into(), &[768, w]);
        }
        EmbedKind::Dino => {
            let (w, layers, mlp, grid) = (768, 12, 3072, 37);
            add("embeddings.cls_token".into(), &[1, 1, w]);
            add("embeddings.mask_token".into(), &[1, w]);
            add("embeddings.position_embeddings".into(), &[1, grid * grid + 1, w]);
            add("embeddings.patch_embeddings.projection.weight".into(), &[w, 3, 14, 14]);
            add("embeddings.patch_embeddings.projection.bias".into(), &[w]);
            for i in 0..layers {
                let l = format!("encoder.layer.{i}");
                norm(&mut add, format!("{l}.norm1"), w);
                for proj in ["attention.attention.query", "attention.attention.key", "attention.attention.value", "attention.output.dense"] {
                    linear(&mut add, format!("{l}.{proj}"), w, w);
                }
                add(format!("{l}.layer_scale1.lambda1"), &[w]);
                norm(&mut add, format!("{l}.norm2"), w);
                linear(&mut add, format!("{l}.mlp.fc1"), mlp, w);
                linear(&mut add, format!("{l}.mlp.fc2"), w, mlp);
                add(format!("{l}.layer_scale2.lambda1"), &[w]);
            }
            norm(&mut add, "layernorm".into(), w);
        }
    }
    e
}

/// The released network with the fixtures' deterministic weights, in memory: for timing the
/// real shapes without the real weights (`ablate bench embed`). Never for a reported number.
pub fn deterministic_released(kind: EmbedKind, device: &Device) -> Result<Embedder, EvalError> {
    let tensors = deterministic_tensors(&released_entries(kind), device)?;
    let loaded = Loaded { tensors, metadata: HashMap::new(), sha256: "deterministic-test-weights".into() };
    Embedder::from_loaded(kind, loaded, Path::new("<deterministic weights>"), device)
}

/// What a weights file lacks against the released network: missing tensors and wrong
/// shapes (tensors the network does not use, such as CLIP's text tower, are fine).
pub fn check_released(kind: EmbedKind, tensors: &HashMap<String, Tensor>) -> Vec<String> {
    let renamed: HashMap<String, Vec<usize>> = tensors.iter().map(|(k, t)| (kind.checkpoint_name(k), t.dims().to_vec())).collect();
    released_entries(kind)
        .into_iter()
        .filter_map(|(name, shape)| match renamed.get(&name) {
            None => Some(format!("{name} is missing")),
            Some(s) if *s != shape => Some(format!("{name} has shape {s:?}, the released network's is {shape:?}")),
            _ => None,
        })
        .collect()
}

/// An embedding network ready to run.
pub struct Embedder {
    pub kind: EmbedKind,
    net: Box<dyn Module + Send + Sync>,
    /// Side of the square input the images are resized to.
    pub input_size: usize,
    /// Length of one embedding.
    pub dim: usize,
    pub weights_sha256: String,
    device: Device,
}

impl Embedder {
    /// Loads `kind` from `path`; a missing file is [`EvalError::Unavailable`] with the command
    /// that installs it.
    pub fn load(kind: EmbedKind, path: &Path, device: &Device) -> Result<Self, EvalError> {
        if !path.is_file() {
            return Err(EvalError::Unavailable(
                kind.metric().to_uppercase().replace("DINO_MMD", "DINO-MMD"),
                format!(
                    "the {} weights {} are not there: install Hugging Face's {} model.safetensors with `ablate assets convert`, or point eval.{} / ${} at it (docs/eval.md)",
                    kind.describe(),
                    path.display(),
                    kind.hub_name(),
                    match kind {
                        EmbedKind::Clip => "clip_weights",
                        EmbedKind::Dino => "dino_weights",
                    },
                    kind.env_var()
                ),
            ));
        }
        Self::from_loaded(kind, read_weights(path, device)?, path, device)
    }

    /// The network from tensors already in memory (`path` names them in errors).
    pub fn from_loaded(kind: EmbedKind, mut loaded: Loaded, path: &Path, device: &Device) -> Result<Self, EvalError> {
        loaded.tensors = loaded.tensors.into_iter().map(|(k, t)| (kind.checkpoint_name(&k), t)).collect();
        let heads = |width: usize| -> Result<usize, EvalError> {
            match loaded.metadata.get("num_attention_heads") {
                Some(h) => h.parse().map_err(|_| EvalError::File { path: path.display().to_string(), msg: format!("metadata num_attention_heads = {h:?} is not a number") }),
                None => Ok((width / 64).max(1)),
            }
        };
        let shapes = Shapes { tensors: &loaded.tensors, path };
        let vb = VarBuilder::from_tensors(loaded.tensors.clone(), DType::F32, device);
        let size_meta = loaded.metadata.get("input_size").map(|s| s.parse::<usize>().map_err(|_| shapes.err(format!("metadata input_size = {s:?} is not a number")))).transpose()?;
        let (net, input_size, dim): (Box<dyn Module + Send + Sync>, usize, usize) = match kind {
            EmbedKind::Clip => {
                let (net, native, dim) = clip(&shapes, vb, heads)?;
                (Box::new(net), size_meta.unwrap_or(native), dim)
            }
            EmbedKind::Dino => {
                let net = dino::Dinov2::new(&shapes, vb, heads)?;
                let dim = net.width;
                (Box::new(net), size_meta.unwrap_or(224), dim)
            }
        };
        Ok(Self { kind, net, input_size, dim, weights_sha256: loaded.sha256, device: device.clone() })
    }

    /// The network, for the protocol line (its weights are named by their sha256 there).
    pub fn network(&self) -> String {
        format!("{} at {}px, {} dims", self.kind.describe(), self.input_size, self.dim)
    }

    /// How images reach the network, for the protocol line.
    pub fn resize(&self) -> String {
        let (m, s) = self.kind.mean_std();
        format!("bicubic to {0}x{0} (torch interpolate, align_corners=false, no antialias), normalised mean {m:?} std {s:?}", self.input_size)
    }

    /// The network's input for images in [0, 1]: resized and normalised.
    pub fn preprocess(&self, images: &Tensor) -> Result<Tensor, EvalError> {
        super::images::validate(images)?;
        let x = super::resize::bicubic(images, self.input_size, self.input_size, &self.device)?;
        let (m, s) = self.kind.mean_std();
        let mean = Tensor::from_vec(m.map(|v| v as f32).to_vec(), (1, 3, 1, 1), &self.device)?;
        let std = Tensor::from_vec(s.map(|v| v as f32).to_vec(), (1, 3, 1, 1), &self.device)?;
        Ok(x.broadcast_sub(&mean)?.broadcast_div(&std)?)
    }

    /// (B, dim) embeddings of images in [0, 1].
    pub fn embed(&self, images: &Tensor) -> Result<Tensor, EvalError> {
        Ok(self.net.forward(&self.preprocess(images)?)?)
    }
}

/// CLIP's vision tower with its projection (`CLIPVisionModelWithProjection`): candle's CLIP
/// vision transformer, then `visual_projection` (no bias).
struct ClipVision {
    tower: candle_transformers::models::clip::vision_model::ClipVisionTransformer,
    projection: candle_nn::Linear,
}

impl Module for ClipVision {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.projection.forward(&self.tower.forward(x)?)
    }
}

fn clip(s: &Shapes, vb: VarBuilder, heads: impl Fn(usize) -> Result<usize, EvalError>) -> Result<(ClipVision, usize, usize), EvalError> {
    use candle_transformers::models::clip::{text_model::Activation, vision_model::{ClipVisionConfig, ClipVisionTransformer}};
    let p = "vision_model.";
    let width = s.dims(&format!("{p}embeddings.class_embedding"))?[0];
    let patch = s.dims(&format!("{p}embeddings.patch_embedding.weight"))?;
    let positions = s.dims(&format!("{p}embeddings.position_embedding.weight"))?[0];
    let grid = ((positions.saturating_sub(1)) as f64).sqrt().round() as usize;
    if grid * grid + 1 != positions {
        return Err(s.err(format!("{positions} position embeddings are not a square grid plus the class token")));
    }
    let layers = s.layers(&format!("{p}encoder.layers."));
    let projection = s.dims("visual_projection.weight")?;
    let cfg = ClipVisionConfig {
        embed_dim: width,
        activation: Activation::QuickGelu,
        intermediate_size: s.dims(&format!("{p}encoder.layers.0.mlp.fc1.weight"))?[0],
        num_hidden_layers: layers,
        num_attention_heads: heads(width)?,
        projection_dim: projection[0],
        num_channels: patch[1],
        image_size: grid * patch[2],
        patch_size: patch[2],
    };
    if width % cfg.num_attention_heads != 0 {
        return Err(s.err(format!("width {width} is not divisible by {} heads", cfg.num_attention_heads)));
    }
    let tower = ClipVisionTransformer::new(vb.pp("vision_model"), &cfg)?;
    let projection = candle_nn::linear_no_bias(width, projection[0], vb.pp("visual_projection"))?;
    Ok((ClipVision { tower, projection }, cfg.image_size, cfg.projection_dim))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The released layouts have the published sizes: DINOv2 ViT-B/14 86.6M parameters, CLIP
    /// ViT-L/14-336's vision tower and projection 304.3M; a file missing a tensor or with
    /// another shape is named.
    #[test]
    fn released_layouts_have_the_published_sizes() {
        let count = |k| released_entries(k).iter().map(|(_, s)| s.iter().product::<usize>()).sum::<usize>();
        assert_eq!(count(EmbedKind::Dino), 86_580_480);
        assert_eq!(count(EmbedKind::Clip), 304_293_888);
        let mut tensors: HashMap<String, Tensor> = released_entries(EmbedKind::Dino).into_iter().map(|(n, s)| (n, Tensor::zeros(s.as_slice(), DType::F32, &Device::Cpu).unwrap())).collect();
        assert!(check_released(EmbedKind::Dino, &tensors).is_empty());
        tensors.remove("layernorm.bias");
        tensors.insert("encoder.layer.3.mlp.fc1.weight".into(), Tensor::zeros((10, 768), DType::F32, &Device::Cpu).unwrap());
        let issues = check_released(EmbedKind::Dino, &tensors);
        assert_eq!(issues.len(), 2, "{issues:?}");
        assert!(issues.iter().any(|i| i == "layernorm.bias is missing") && issues.iter().any(|i| i.contains("fc1.weight has shape [10, 768]")), "{issues:?}");
    }
}
