//! The full configuration of one training run (one ablation arm), read from TOML.
//!
//! Every section rejects unknown keys; `validate()` refuses impossible combinations before
//! anything is built, naming the offending key.

use serde::{Deserialize, Serialize};

use crate::data::DataConfig;
use crate::model::text::TextEncoderConfig;
use crate::model::DenoiserConfig;
use crate::objective::repa::RepaConfig;
use crate::objective::ObjectiveConfig;
use crate::optim::OptimConfig;
use crate::precision::PrecisionPolicy;
use crate::routing::RoutingConfig;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("invalid config {path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// "tiny", "mini", "prx-small" or "prx-1.2b" (the same: the published PRX-1.2B shape).
    pub preset: String,
    pub hidden: Option<usize>,
    pub depth: Option<usize>,
    pub heads: Option<usize>,
    pub mlp_ratio: Option<f64>,
    pub patch: Option<usize>,
}

impl Default for ModelSection {
    fn default() -> Self {
        Self { preset: "tiny".into(), hidden: None, depth: None, heads: None, mlp_ratio: None, patch: None }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TextSection {
    /// "learned" (trained with the denoiser), or "bert" / "t5" (frozen, from `dir`).
    pub encoder: String,
    /// Directory with config.json, model.safetensors, tokenizer.json (default:
    /// assets/text/minilm for "bert", filled by `ablate assets fetch minilm`; assets/text/t5
    /// for "t5"). `bert_dir` is read as this too.
    #[serde(alias = "bert_dir")]
    pub dir: Option<String>,
    pub max_tokens: usize,
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
}

impl Default for TextSection {
    fn default() -> Self {
        Self { encoder: "learned".into(), dir: None, max_tokens: 64, width: 128, layers: 2, heads: 4 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LatentSection {
    /// "pixel" (patchified RGB), "ae-lean", "ae-rich" or "ae-repa-e".
    pub kind: String,
    pub image_size: usize,
    /// Explicit autoencoder weights (default: the built-in file in assets/autoencoders/).
    pub weights: Option<String>,
    /// REPA-E: train the autoencoder end to end through the REPA loss (stop-gradient on the
    /// diffusion loss). Needs an `ae-*` kind and `repa.enabled`.
    pub end_to_end: bool,
}

impl Default for LatentSection {
    fn default() -> Self {
        Self { kind: "pixel".into(), image_size: 32, weights: None, end_to_end: false }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    pub steps: usize,
    pub batch_size: usize,
    pub log_every: usize,
    /// Checkpoint every N steps (0 = only at the end).
    pub checkpoint_every: usize,
    /// This job's shared checkpoint store, over the worker's `--checkpoint-store`: an
    /// absolute folder every worker reaches, or `s3://bucket/prefix[?endpoint=URL&region=R]`
    /// (the job publishes under `<store>/<job>/`; docs/distributed.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_store: Option<String>,
    /// Samples per optimizer step over all ranks (0: `batch_size` per rank, so world size x
    /// `batch_size`); set, each rank trains on `global_batch / world size` of them, so a
    /// study's batch does not depend on how many GPUs it got.
    #[serde(skip_serializing_if = "is_zero")]
    pub global_batch: usize,
    /// Samples per forward and backward pass on a rank (0: the rank's whole batch at once). A
    /// larger rank batch is accumulated over passes of this size, with one gradient exchange
    /// and one optimizer step: activation memory follows the micro-batch, the update the batch.
    #[serde(skip_serializing_if = "is_zero")]
    pub micro_batch: usize,
}

fn is_zero(v: &usize) -> bool {
    *v == 0
}

impl TrainSection {
    /// The samples one rank of `world` trains on per step.
    pub fn rank_batch(&self, world: usize) -> Result<usize, ConfigError> {
        if self.global_batch == 0 {
            return Ok(self.batch_size);
        }
        if world == 0 || self.global_batch % world != 0 {
            return Err(ConfigError::Invalid(format!("train.global_batch = {} does not split over a world size of {world}: choose a multiple of it", self.global_batch)));
        }
        Ok(self.global_batch / world)
    }
}

impl Default for TrainSection {
    fn default() -> Self {
        Self { steps: 1000, batch_size: 16, log_every: 10, checkpoint_every: 200, checkpoint_store: None, global_batch: 0, micro_batch: 0 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SampleSection {
    pub count: usize,
    pub steps: usize,
    pub guidance: f64,
    pub seed: u64,
}

impl Default for SampleSection {
    fn default() -> Self {
        Self { count: 16, steps: 30, guidance: 3.5, seed: 0 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct PrecisionSection {
    pub policy: PrecisionPolicy,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub name: String,
    pub seed: u64,
    pub model: ModelSection,
    pub text: TextSection,
    pub latent: LatentSection,
    pub objective: ObjectiveConfig,
    pub repa: RepaConfig,
    pub routing: RoutingConfig,
    pub optim: OptimConfig,
    pub precision: PrecisionSection,
    pub data: DataConfig,
    pub train: TrainSection,
    pub sample: SampleSection,
    /// Evaluation during and at the end of training (off unless `eval.samples` > 0).
    pub eval: crate::eval::config::EvalConfig,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            name: "run".into(),
            seed: 0,
            model: ModelSection::default(),
            text: TextSection::default(),
            latent: LatentSection::default(),
            objective: ObjectiveConfig::default(),
            repa: RepaConfig::default(),
            routing: RoutingConfig::default(),
            optim: OptimConfig::default(),
            precision: PrecisionSection::default(),
            data: DataConfig::default(),
            train: TrainSection::default(),
            sample: SampleSection::default(),
            eval: crate::eval::config::EvalConfig::default(),
        }
    }
}

impl TrainConfig {
    /// Every file or folder the config names (key, path as written): what a worker
    /// confines to its data roots. Defaults (the shipped assets, environment variables of the
    /// worker itself) are not listed: the operator chose them.
    pub fn input_paths(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut add = |key: String, p: &Option<String>| {
            if let Some(p) = p.as_ref().filter(|p| !p.is_empty()) {
                out.push((key, p.clone()));
            }
        };
        add("text.dir".into(), &self.text.dir);
        add("latent.weights".into(), &self.latent.weights);
        add("repa.teacher_weights".into(), &self.repa.teacher_weights);
        for (i, ph) in self.data.phases.iter().enumerate() {
            add(format!("data.phases[{i}].path"), &ph.path);
        }
        add("eval.set.path".into(), &self.eval.set.as_ref().map(|s| s.path.clone()));
        add("eval.inception_weights".into(), &self.eval.inception_weights);
        add("eval.clip_weights".into(), &self.eval.clip_weights);
        add("eval.dino_weights".into(), &self.eval.dino_weights);
        out
    }

    pub fn from_toml_str(text: &str, path: &str) -> Result<Self, ConfigError> {
        let cfg: TrainConfig = toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.into(), message: describe_toml_error_in(&e, text) })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: p.clone(), source })?;
        Self::from_toml_str(&text, &p)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }

    /// Parses and runs [`TrainConfig::validate_portable`]: what a coordinator checks of a
    /// submitted config (it has no model files to read).
    pub fn from_toml_str_portable(text: &str, path: &str) -> Result<Self, ConfigError> {
        let cfg: TrainConfig = toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.into(), message: describe_toml_error_in(&e, text) })?;
        cfg.validate_portable()?;
        Ok(cfg)
    }

    /// The denoiser architecture after preset, overrides, latent and text encoder (a frozen
    /// text encoder's width is read from its files).
    pub fn denoiser(&self) -> Result<DenoiserConfig, ConfigError> {
        let mut d = self.denoiser_shape()?;
        if let name @ ("bert" | "t5") = self.text.encoder.as_str() {
            let family = crate::model::frozen_text::Family::parse(name).expect("bert or t5");
            d.text_dim = crate::model::frozen_text::hidden_size(family, &self.text_dir()).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        }
        Ok(d)
    }

    /// The denoiser's shape without reading any file: a frozen text encoder's width is taken
    /// as `text.width` (nothing checked here depends on it).
    fn denoiser_shape(&self) -> Result<DenoiserConfig, ConfigError> {
        let mut d = DenoiserConfig::preset(&self.model.preset).ok_or_else(|| {
            ConfigError::Invalid(format!("unknown model.preset \"{}\" (expected one of {})", self.model.preset, DenoiserConfig::PRESETS.join(", ")))
        })?;
        if let Some(v) = self.model.hidden { d.hidden = v }
        if let Some(v) = self.model.depth { d.depth = v }
        if let Some(v) = self.model.heads { d.heads = v }
        if let Some(v) = self.model.mlp_ratio { d.mlp_ratio = v }
        d.in_channels = self.latent_channels()?;
        d.patch = self.model.patch.unwrap_or(match self.latent.kind.as_str() {
            "pixel" => 4,
            // FLUX.2 latents arrive already patchified 2x2 (128 channels)
            "flux2" => 1,
            _ => d.patch,
        });
        d.text_dim = self.text.width;
        Ok(d)
    }

    /// The frozen text encoder's directory (`text.dir`, else the default of `text.encoder`).
    pub fn text_dir(&self) -> std::path::PathBuf {
        let default = if self.text.encoder == "t5" { "t5" } else { "minilm" };
        self.text.dir.as_ref().map(std::path::PathBuf::from).unwrap_or_else(|| crate::teacher::assets_dir().join("text").join(default))
    }

    /// (channels, downsampling) of the configured latent space.
    fn latent_shape(&self) -> Result<(usize, usize), ConfigError> {
        crate::latent::shape_of(&self.latent.kind).ok_or_else(|| {
            ConfigError::Invalid(format!("unknown latent.kind \"{}\" (expected one of {})", self.latent.kind, crate::latent::KINDS.join(", ")))
        })
    }

    pub fn latent_channels(&self) -> Result<usize, ConfigError> {
        Ok(self.latent_shape()?.0)
    }

    /// Latent grid side for the configured image size.
    pub fn latent_size(&self) -> usize {
        self.latent.image_size / self.latent_shape().map(|s| s.1).unwrap_or(1)
    }

    pub fn text_encoder(&self, vocab: usize) -> TextEncoderConfig {
        TextEncoderConfig { vocab, max_len: self.text.max_tokens, width: self.text.width, layers: self.text.layers, heads: self.text.heads }
    }

    /// Every check, those that read files (a frozen text encoder's) included.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_portable()?;
        self.denoiser().map(|_| ())
    }

    /// Every check that needs nothing but the config itself.
    pub fn validate_portable(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if !["learned", "bert", "t5"].contains(&self.text.encoder.as_str()) {
            return bad(format!("unknown text.encoder \"{}\" (expected \"learned\", \"bert\" or \"t5\")", self.text.encoder));
        }
        // fields that only make sense positive, named before anything divides by them
        for (key, v) in [
            ("train.steps", self.train.steps),
            ("train.batch_size", self.train.batch_size),
            ("train.log_every", self.train.log_every),
            ("sample.count", self.sample.count),
            ("sample.steps", self.sample.steps),
            ("text.max_tokens", self.text.max_tokens),
            ("text.width", self.text.width),
            ("text.layers", self.text.layers),
            ("text.heads", self.text.heads),
            ("latent.image_size", self.latent.image_size),
        ] {
            if v == 0 {
                return bad(format!("{key} must be positive, got 0"));
            }
        }
        if self.train.global_batch > 0 && self.train.micro_batch > self.train.global_batch {
            return bad(format!("train.micro_batch = {} is larger than train.global_batch = {}", self.train.micro_batch, self.train.global_batch));
        }
        if self.train.micro_batch > 0 && self.latent.end_to_end {
            return bad("train.micro_batch cannot be used with latent.end_to_end (REPA-E normalises latents with the whole batch's statistics)".into());
        }
        if let Some(store) = &self.train.checkpoint_store {
            let bucket = store.strip_prefix("s3://").map(|r| r.split(['/', '?']).next().unwrap_or(""));
            if !(bucket.is_some_and(|b| !b.is_empty()) || (std::path::Path::new(store).is_absolute() && !store.contains("://"))) {
                return bad(format!("train.checkpoint_store = {store:?} is neither an absolute folder nor s3://bucket/prefix"));
            }
        }
        for (key, v) in [("sample.guidance", self.sample.guidance), ("optim.weight_decay", self.optim.weight_decay), ("optim.grad_clip", self.optim.grad_clip)] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(format!("{key} must be a number >= 0, got {v}"));
            }
        }
        if !(self.optim.eps.is_finite() && self.optim.eps > 0.0) {
            return bad(format!("optim.eps must be positive, got {}", self.optim.eps));
        }
        if !(0.0..1.0).contains(&self.optim.muon_momentum) {
            return bad(format!("optim.muon_momentum must be in [0, 1), got {}", self.optim.muon_momentum));
        }
        let d = self.denoiser_shape()?;
        d.validate().map_err(ConfigError::Invalid)?;
        self.eval.validate().map_err(ConfigError::Invalid)?;
        if self.text.width % self.text.heads != 0 {
            return bad(format!("text.width ({}) must be divisible by text.heads ({})", self.text.width, self.text.heads));
        }
        let (_, down) = self.latent_shape()?;
        if self.latent.image_size % down != 0 {
            return bad(format!("latent.image_size {} is not divisible by the autoencoder's downsampling {down}", self.latent.image_size));
        }
        if self.latent.end_to_end && (!self.latent.kind.starts_with("ae-") || !self.repa.enabled) {
            return bad("latent.end_to_end (REPA-E) needs one of the project's autoencoders (latent.kind = \"ae-...\") and repa.enabled = true".into());
        }
        let ls = self.latent_size();
        if ls % d.patch != 0 {
            return bad(format!("latent.image_size {} is not divisible by the patch size {}", ls, d.patch));
        }
        self.repa.validate(d.depth).map_err(ConfigError::Invalid)?;
        self.routing.validate(d.depth).map_err(ConfigError::Invalid)?;
        self.optim.validate().map_err(ConfigError::Invalid)?;
        self.data.validate().map_err(ConfigError::Invalid)?;
        if let Some(set) = self.eval.set.as_ref().filter(|s| s.holdout > 0) {
            if !self.data.phases.iter().any(|p| p.source == set.source && p.path.as_deref() == Some(set.path.as_str())) {
                return bad(format!("eval.set.holdout = {} holds samples out of training, but no data phase reads {} \"{}\" (for a separate set, leave holdout at 0)", set.holdout, set.source.name(), set.path));
            }
        }
        if self.routing.enabled() && self.train.batch_size > 0 && (ls / d.patch).pow(2) < 2 {
            return bad("routing needs at least 2 image tokens".into());
        }
        if !(0.0..1.0).contains(&self.objective.caption_dropout) {
            return bad(format!("objective.caption_dropout must be in [0, 1), got {}", self.objective.caption_dropout));
        }
        Ok(())
    }
}

/// Turns toml's error on `text` into one line with location and, for unknown keys, a
/// suggestion; any other error starts with the key it is about (`model.preset: invalid
/// type...`) where the location shows one.
fn describe_toml_error_in(e: &toml::de::Error, text: &str) -> String {
    let msg = e.message().trim().to_string();
    let loc = e.span().map(|s| format!(" (at byte {})", s.start)).unwrap_or_default();
    match describe_unknown_field(&msg) {
        Some(ours) => format!("{ours}{loc}"),
        None => match e.span().and_then(|s| key_at(text, s.start)) {
            Some(key) => format!("{key}: {msg}{loc}"),
            None => format!("{msg}{loc}"),
        },
    }
}

/// The dotted key whose value starts at byte `at` of a TOML text: the last `[table]` (or
/// `[[array]]`, without its index) header before it, then the keys of the inline tables the value sits in (`model = { preset = 3 }`
/// gives `model.preset`). None where the value is not after a `key =` on its line.
pub fn key_at(text: &str, at: usize) -> Option<String> {
    let before = text.get(..at)?;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let table = before[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .and_then(|l| l.trim_start_matches('[').split(']').next())
        .map(|t| t.trim().to_string());
    let mut keys: Vec<String> = table.into_iter().collect();
    let line = &before[line_start..];
    let segments: Vec<&str> = line.split('{').collect();
    for seg in &segments {
        // the key of this level: the word before the last '=' of the segment
        let head = seg.rsplit_once('=')?.0;
        let key = head.rsplit(',').next()?.trim().trim_matches('"');
        if key.is_empty() || key.contains(char::is_whitespace) {
            return None;
        }
        keys.push(key.to_string());
    }
    Some(keys.join("."))
}

/// serde's "unknown field `x`, expected one of `a`, `b`" in the project's words:
/// `unknown key "x" (did you mean "a"?)`, or the list when nothing is near; None for any
/// other message. Shared by run configs and sweep files.
pub fn describe_unknown_field(msg: &str) -> Option<String> {
    let rest = msg.trim().strip_prefix("unknown field `")?;
    let (field, expected) = rest.split_once('`').unwrap_or((rest, ""));
    let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    Some(match closest(field, candidates.iter().copied()) {
        Some(best) => format!("unknown key \"{field}\" (did you mean \"{best}\"?)"),
        None => format!("unknown key \"{field}\" (expected one of: {})", candidates.join(", ")),
    })
}

/// The candidate nearest to `word` for a did-you-mean: a small edit distance (strsim's
/// Levenshtein), or one a prefix of the other ("optimizer" -> "optim").
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::levenshtein(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3) || (c.len() >= 3 && word.len() >= 3 && (word.starts_with(c) || c.starts_with(word))))
        .min()
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        TrainConfig::from_toml_str(text, "t.toml").unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_valid_and_round_trip() {
        let c = TrainConfig::default();
        c.validate().unwrap();
        assert_eq!(TrainConfig::from_toml_str(&c.to_toml(), "x").unwrap(), c);
    }

    #[test]
    fn bad_input_is_refused_with_the_key_named() {
        assert_eq!(err("[repa]\nlamda = 0.5\n"), "invalid config t.toml: unknown key \"lamda\" (did you mean \"lambda\"?) (at byte 7)");
        assert!(err("[optim]\nlr = \"fast\"\n").contains("invalid type: string \"fast\", expected f64"));
        assert_eq!(err("[repa]\nenabled = true\nblock = 9\n"), "invalid config: repa.block = 9 is outside the model's blocks 1..8");
        assert!(err("[routing]\nkind = \"tread\"\nstart = 2\nend = 12\n").contains("routing.start..routing.end (2..12)"));
        assert!(err("[model]\npreset = \"huge\"\n").contains("unknown model.preset \"huge\""));
        assert!(err("[model]\nheads = 5\n").contains("model.hidden (192) must be divisible by model.heads (5)"));
        assert!(err("[routing]\nkind = \"sideways\"\n").contains("unknown variant `sideways`"));
        // a wrong type names its key, in a table or an inline table
        assert!(err("[model]\npreset = 3\n").starts_with("invalid config t.toml: model.preset: invalid type: integer `3`, expected a string"), "{}", err("[model]\npreset = 3\n"));
        assert!(err("model = { hidden = 128, preset = 3 }\n").contains("model.preset: invalid type"));
    }

    #[test]
    fn keys_are_found_from_a_position() {
        let t = "name = \"x\"\n[optim]\nlr = 3\n[[data.phases]]\nsteps = 2\n";
        assert_eq!(key_at(t, t.find('3').unwrap()).as_deref(), Some("optim.lr"));
        assert_eq!(key_at(t, t.find('x').unwrap() - 1).as_deref(), Some("name"));
        assert_eq!(key_at(t, t.find('2').unwrap()).as_deref(), Some("data.phases.steps"));
        let t = "train = { steps = 5, batch_size = { a = 1 } }";
        assert_eq!(key_at(t, t.find('1').unwrap()).as_deref(), Some("train.batch_size.a"));
        assert_eq!(key_at("[a]\n[1, 2]", 5), None);
    }

    #[test]
    fn portable_checks_read_no_file() {
        // a frozen encoder whose files are absent: refused by validate, not by the portable one
        let text = "[text]\nencoder = \"bert\"\ndir = \"/nonexistent/minilm\"\n";
        TrainConfig::from_toml_str_portable(text, "submitted").unwrap();
        assert!(TrainConfig::from_toml_str(text, "t.toml").is_err());
        let e = TrainConfig::from_toml_str_portable("[model]\nheads = 5\n", "submitted").unwrap_err().to_string();
        assert!(e.contains("model.heads"), "{e}");
    }
}
