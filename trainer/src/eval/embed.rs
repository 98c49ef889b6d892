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

use super::{dino, EvalError};
use super::inception::sha256_hex;

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

    fn describe(self) -> &'static str {
        match self {
            Self::Clip => "CLIP image_embeds (CMMD)",
            Self::Dino => "DINOv2 pooler_output (DINO-MMD)",
        }
    }
}

/// What `load` read from a weights file.
pub struct Loaded {
    pub tensors: HashMap<String, Tensor>,
    pub metadata: HashMap<String, String>,
    pub sha256: String,
}

/// Reads a safetensors file with its metadata and hash (f32 tensors on `device`).
pub fn read_weights(path: &Path, device: &Device) -> Result<Loaded, EvalError> {
    let file_err = |msg: String| EvalError::File { path: path.display().to_string(), msg };
    let bytes = std::fs::read(path).map_err(|e| file_err(e.to_string()))?;
    let metadata = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| file_err(format!("not a safetensors file: {e}")))?.1.metadata().clone().unwrap_or_default();
    let tensors = candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| file_err(e.to_string()))?;
    let tensors = tensors.into_iter().map(|(k, t)| Ok((k, if t.dtype().is_float() { t.to_dtype(DType::F32)? } else { t }))).collect::<candle_core::Result<_>>()?;
    Ok(Loaded { tensors, metadata, sha256: sha256_hex(&bytes) })
}

/// Writes `tensors` as a safetensors file with `metadata` (e.g. `num_attention_heads`,
/// `input_size`), durably.
pub fn write_weights(path: &Path, tensors: &HashMap<String, Tensor>, metadata: HashMap<String, String>) -> Result<(), EvalError> {
    let mut named: Vec<(&String, &Tensor)> = tensors.iter().collect();
    named.sort_by_key(|(k, _)| k.as_str());
    let bytes = safetensors::serialize(named, Some(metadata)).map_err(|e| EvalError::File { path: path.display().to_string(), msg: e.to_string() })?;
    crate::fsutil::write_durable(path, &bytes).map_err(|e| EvalError::File { path: path.display().to_string(), msg: e.to_string() })
}

/// A network file of the fixtures' deterministic weights ([`super::detvalues::network_weight`])
/// for the given `(name, shape)` list, e.g. to test or time a network without its real weights.
pub fn write_deterministic(path: &Path, entries: &[(String, Vec<usize>)], metadata: HashMap<String, String>) -> Result<(), EvalError> {
    let mut tensors = HashMap::new();
    for (name, shape) in entries {
        let v = super::detvalues::network_weight(name, shape).ok_or_else(|| EvalError::Shape(format!("no deterministic rule for {name} {shape:?}")))?;
        let v: Vec<f32> = v.into_iter().map(|x| x as f32).collect();
        tensors.insert(name.clone(), Tensor::from_vec(v, shape.as_slice(), &Device::Cpu)?);
    }
    write_weights(path, &tensors, metadata)
}

/// Tiny CLIP and DINOv2 networks of the real architectures (width 64, 2 layers, 4 heads; the
/// parity fixtures' shapes, `tests/fixtures/embed`) with deterministic weights, written to
/// `dir` as `clip.safetensors` and `dino.safetensors`: for tests and smoke runs of the whole
/// path without the real weights. Never for a reported number.
pub fn write_tiny_networks(dir: &Path) -> Result<(PathBuf, PathBuf), EvalError> {
    let entries = |names: &str| -> Vec<(String, Vec<usize>)> {
        names
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| {
                let (n, d) = l.split_once(' ')?;
                Some((n.to_string(), d.split(',').map(|x| x.parse().ok()).collect::<Option<Vec<usize>>>()?))
            })
            .collect()
    };
    std::fs::create_dir_all(dir).map_err(|e| EvalError::File { path: dir.display().to_string(), msg: e.to_string() })?;
    let mut out = Vec::new();
    for (name, names, size) in [("clip", include_str!("../../tests/fixtures/embed/clip_names.txt"), 42), ("dino", include_str!("../../tests/fixtures/embed/dino_names.txt"), 56)] {
        let path = dir.join(format!("{name}.safetensors"));
        let meta = HashMap::from([("num_attention_heads".to_string(), "4".to_string()), ("input_size".to_string(), size.to_string())]);
        write_deterministic(&path, &entries(names), meta)?;
        out.push(path);
    }
    Ok((out[0].clone(), out[1].clone()))
}

/// Shape facts read off the tensors.
pub(crate) struct Shapes<'a> {
    pub tensors: &'a HashMap<String, Tensor>,
    pub path: &'a Path,
}

impl Shapes<'_> {
    pub fn dims(&self, name: &str) -> Result<Vec<usize>, EvalError> {
        self.tensors.get(name).map(|t| t.dims().to_vec()).ok_or_else(|| EvalError::File { path: self.path.display().to_string(), msg: format!("tensor {name} is missing") })
    }

    /// One more than the largest `i` of tensors named `<prefix><i>.…`.
    pub fn layers(&self, prefix: &str) -> usize {
        self.tensors.keys().filter_map(|k| k.strip_prefix(prefix)?.split('.').next()?.parse::<usize>().ok()).map(|i| i + 1).max().unwrap_or(0)
    }

    pub fn err(&self, msg: String) -> EvalError {
        EvalError::File { path: self.path.display().to_string(), msg }
    }
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
                    "the {} weights {} are not there: put Hugging Face's {} model.safetensors there, or point eval.{} / ${} at it (docs/eval.md)",
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
        let mut loaded = read_weights(path, device)?;
        if kind == EmbedKind::Dino {
            loaded.tensors = loaded.tensors.into_iter().map(|(k, t)| (dino::checkpoint_name(&k), t)).collect();
        }
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
