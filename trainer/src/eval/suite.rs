//! Evaluating a model being trained: sample N images for fixed prompts and seeds, then
//! FD-scenes, MMD and compositional accuracy with the scene evaluator, and FID when the
//! Inception weights are present.
//!
//! Prompts are long captions of held-out scenes drawn in the reference style; the reference
//! set is the renders of those same scenes, so FD and MMD ask "does it look like what was
//! asked for". Image `i` always gets the same prompt and the same starting noise, whatever
//! the number of ranks: rank r of W evaluates indices r, r+W, ..., and the shards merge
//! ([`EvalShard::merge`]), so no rank waits on another's sample count. In a data-parallel run
//! every rank samples its share ([`Evaluator::evaluate_in`]); the shares are gathered and
//! rank 0 computes the numbers. FD-scenes, MMD and accuracy then equal the single-process
//! ones exactly (the scene statistics are rebuilt from the gathered embeddings in image
//! order); FID's Inception statistics are merged, equal to float rounding.

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::composition::{Composition, CompositionCounts};
use super::files::ReferenceCache;
use super::embed::{EmbedKind, Embedder};
use super::inception::{self, InceptionFid};
use super::scenes::{self, SceneEvaluator, EMBED_DIM};
use super::{frechet_distance, EvalError, FeatureStats, Measured, Protocol};
use crate::data::captions::long_caption;
use crate::collective::Collective;
use crate::data::real::RealDataset;
use crate::data::scene::Scene;
use crate::train::Trainer;

pub use super::config::{EvalConfig, FidMode};

/// One rank's share of an evaluation.
#[derive(Debug, Clone)]
pub struct EvalShard {
    pub scene_stats: FeatureStats,
    /// (index, embedding) pairs, for MMD.
    pub embeddings: Vec<(u64, Vec<f32>)>,
    pub composition: CompositionCounts,
    pub inception: Option<FeatureStats>,
    /// (index, compositional score) per generated image, for confidence intervals.
    pub scores: Vec<(u64, f32)>,
    /// (index, embedding) pairs of the CLIP and DINOv2 networks (for CMMD, DINO-MMD), when loaded.
    pub clip: Vec<(u64, Vec<f32>)>,
    pub dino: Vec<(u64, Vec<f32>)>,
}

fn put_rows(out: &mut Vec<u8>, rows: &[(u64, Vec<f32>)]) {
    put_u64(out, rows.len() as u64);
    for (i, e) in rows {
        put_u64(out, *i);
        put_u64(out, e.len() as u64);
        e.iter().for_each(|v| out.extend(v.to_le_bytes()));
    }
}

/// How long ranks wait for each other's share of an evaluation.
const SHARE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(3600);

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend(v.to_le_bytes());
}

/// Reads little-endian words off the front of a byte slice.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], EvalError> {
        if self.0.len() < n {
            return Err(EvalError::Shape("an evaluation share was cut short".into()));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u64(&mut self) -> Result<u64, EvalError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn f32(&mut self) -> Result<f32, EvalError> {
        Ok(f32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    /// (index, row) pairs, each row of `dim` values when given.
    fn rows(&mut self, dim: Option<usize>) -> Result<Vec<(u64, Vec<f32>)>, EvalError> {
        let n = self.u64()? as usize;
        let mut rows = Vec::with_capacity(n.min(1 << 20));
        for _ in 0..n {
            let i = self.u64()?;
            let d = self.u64()? as usize;
            if dim.is_some_and(|want| want != d) || d > self.0.len() / 4 {
                return Err(EvalError::Shape(format!("an embedding of {d} dimensions, not {dim:?}")));
            }
            rows.push((i, (0..d).map(|_| self.f32()).collect::<Result<Vec<f32>, _>>()?));
        }
        Ok(rows)
    }
}

impl EvalShard {
    /// The share as bytes for a gather across ranks (embeddings and scores by image index,
    /// composition counts, Inception statistics).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = b"ABES2".to_vec();
        put_rows(&mut out, &self.embeddings);
        put_u64(&mut out, self.scores.len() as u64);
        for (i, s) in &self.scores {
            put_u64(&mut out, *i);
            out.extend(s.to_le_bytes());
        }
        let c = &self.composition;
        for v in [c.images, c.object, c.color, c.count, c.position, c.layout, c.color_position, c.all_correct] {
            put_u64(&mut out, v);
        }
        match &self.inception {
            Some(st) => {
                out.push(1);
                out.extend(st.to_bytes());
            }
            None => out.push(0),
        }
        put_rows(&mut out, &self.clip);
        put_rows(&mut out, &self.dino);
        out
    }

    /// Reads [`to_bytes`](Self::to_bytes). The scene statistics are rebuilt from the
    /// embeddings, in the order they were sampled.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EvalError> {
        let mut r = Reader(bytes.strip_prefix(b"ABES2").ok_or_else(|| EvalError::Shape("not an evaluation share".into()))?);
        let embeddings = r.rows(Some(EMBED_DIM))?;
        let n = r.u64()? as usize;
        let scores = (0..n).map(|_| Ok((r.u64()?, r.f32()?))).collect::<Result<Vec<_>, EvalError>>()?;
        let mut w = [0u64; 8];
        for v in w.iter_mut() {
            *v = r.u64()?;
        }
        let composition = CompositionCounts { images: w[0], object: w[1], color: w[2], count: w[3], position: w[4], layout: w[5], color_position: w[6], all_correct: w[7] };
        let inception = match r.take(1)?[0] {
            0 => None,
            _ => {
                let (st, used) = FeatureStats::from_bytes(r.0)?;
                r.take(used)?;
                Some(st)
            }
        };
        let (clip, dino) = (r.rows(None)?, r.rows(None)?);
        let mut scene_stats = FeatureStats::new(EMBED_DIM);
        scene_stats.add_rows(&embeddings.iter().flat_map(|(_, e)| e.iter().copied()).collect::<Vec<f32>>())?;
        Ok(Self { scene_stats, embeddings, composition, inception, scores, clip, dino })
    }

    /// All ranks' shares as one, as a single process would have built it: embeddings and
    /// scores in image order, the scene statistics added in the same chunks of 32 images
    /// (so FD-scenes is bit-identical), counts summed, Inception statistics merged.
    pub fn gathered(shares: Vec<EvalShard>) -> Result<Self, EvalError> {
        let mut it = shares.into_iter();
        let mut all = it.next().ok_or_else(|| EvalError::Shape("no evaluation shares".into()))?;
        for s in it {
            all.merge(&s)?;
        }
        all.embeddings.sort_by_key(|(i, _)| *i);
        all.scores.sort_by_key(|(i, _)| *i);
        all.clip.sort_by_key(|(i, _)| *i);
        all.dino.sort_by_key(|(i, _)| *i);
        let mut stats = FeatureStats::new(EMBED_DIM);
        for chunk in all.embeddings.chunks(32) {
            let rows: Vec<f32> = chunk.iter().flat_map(|(_, e)| e.iter().copied()).collect();
            stats.add_rows(&rows)?;
        }
        all.scene_stats = stats;
        Ok(all)
    }

    pub fn merge(&mut self, o: &EvalShard) -> Result<(), EvalError> {
        self.scene_stats.merge(&o.scene_stats)?;
        self.embeddings.extend(o.embeddings.iter().cloned());
        self.composition.merge(&o.composition);
        self.scores.extend(o.scores.iter().copied());
        self.clip.extend(o.clip.iter().cloned());
        self.dino.extend(o.dino.iter().cloned());
        match (&mut self.inception, &o.inception) {
            (Some(a), Some(b)) => a.merge(b)?,
            (None, None) => {}
            _ => return Err(EvalError::Shape("one shard has Inception features and another does not".into())),
        }
        Ok(())
    }
}

/// The numbers of one evaluation.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct EvalReport {
    pub step: usize,
    /// FD-scenes, MMD and compositional accuracy: the scene world's metrics (None when the
    /// evaluation ran on the user's own set, `eval.set`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub fd_scenes: Option<Measured>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mmd_scenes: Option<Measured>,
    /// Compositional accuracy, overall (mean of the categories).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub accuracy: Option<Measured>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub composition: Option<Composition>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub fid: Option<Measured>,
    /// Why FID is missing, when it is.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub fid_unavailable: Option<String>,
    /// CMMD: MMD of CLIP image embeddings (`embed`), when the CLIP weights are installed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cmmd: Option<Measured>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cmmd_unavailable: Option<String>,
    /// DINO-MMD: the same estimator over DINOv2 embeddings.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub dino_mmd: Option<Measured>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub dino_mmd_unavailable: Option<String>,
    pub seconds: f64,
    /// The per-image numbers behind FD-scenes, MMD and accuracy (saved next to the report as
    /// `eval-samples.safetensors`, for confidence intervals of differences between runs).
    #[serde(skip)]
    pub samples: Option<super::bootstrap::EvalSamples>,
}

impl EvalReport {
    /// A headline number by its results name: `fd_scenes`, `mmd`, `accuracy`, `fid`, `cmmd`,
    /// `dino_mmd` (None when not measured or not finite).
    pub fn value(&self, name: &str) -> Option<f64> {
        let v = match name {
            "fd_scenes" => self.fd_scenes.as_ref()?.value,
            "mmd" => self.mmd_scenes.as_ref()?.value,
            "accuracy" => self.accuracy.as_ref()?.value,
            "fid" => self.fid.as_ref()?.value,
            "cmmd" => self.cmmd.as_ref()?.value,
            "dino_mmd" => self.dino_mmd.as_ref()?.value,
            _ => return None,
        };
        v.is_finite().then_some(v)
    }

    /// The protocol that decides whether two evaluations compare: FD-scenes' in the scene
    /// world, else the first of FID, CMMD, DINO-MMD that was measured.
    pub fn headline(&self) -> Option<&Measured> {
        [&self.fd_scenes, &self.fid, &self.cmmd, &self.dino_mmd].into_iter().find_map(|m| m.as_ref())
    }

    /// One line for logs: every number measured.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        for (name, m, scale, digits) in [("FD-scenes", &self.fd_scenes, 1.0, 3), ("MMD", &self.mmd_scenes, 1.0, 3), ("accuracy %", &self.accuracy, 100.0, 1), ("FID", &self.fid, 1.0, 2), ("CMMD", &self.cmmd, 1.0, 3), ("DINO-MMD", &self.dino_mmd, 1.0, 3)] {
            if let Some(m) = m {
                parts.push(format!("{name} {:.*}", digits, m.value * scale));
            }
        }
        if parts.is_empty() {
            parts.push("no metric measured".into());
        }
        parts.join(", ")
    }
}

/// An embedding network as `mode` asks: loaded, or why not (a missing file under `auto`, or
/// `off`); a missing file under `on`, or a damaged file, is an error.
fn load_embedder(kind: EmbedKind, mode: FidMode, path: Option<&str>, device: &Device) -> Result<Result<Embedder, String>, EvalError> {
    if mode == FidMode::Off {
        return Ok(Err(format!("turned off (eval.{} = \"off\")", kind.metric())));
    }
    let path = path.map(PathBuf::from).unwrap_or_else(|| kind.default_path());
    match (mode, Embedder::load(kind, Path::new(&path), device)) {
        (_, Ok(net)) => Ok(Ok(net)),
        (FidMode::Auto, Err(e @ EvalError::Unavailable(..))) => Ok(Err(e.to_string())),
        (_, Err(e)) => Err(e),
    }
}

/// The networks, loaded once per run.
pub struct Evaluator {
    pub cfg: EvalConfig,
    scenes: SceneEvaluator,
    inception: Option<InceptionFid>,
    fid_unavailable: Option<String>,
    /// CLIP and DINOv2, each loaded or with why not.
    clip: Result<Embedder, String>,
    dino: Result<Embedder, String>,
    /// The user's evaluation set (`eval.set`); None: the scene world.
    set: Option<std::sync::Arc<RealDataset>>,
    /// The reference set's CLIP and DINOv2 embeddings, computed once per run.
    reference_embeds: OnceLock<(Vec<f32>, Vec<f32>)>,
    cache: ReferenceCache,
    device: Device,
    /// Side of the generated images; the reference scenes are rendered at the same size.
    image_size: usize,
}

const SCENE_RESIZE: &str = "bilinear to 32x32 (align_corners=false), [-1,1]";
const FID_RESIZE: &str = "bilinear to 299x299 (align_corners=false, no antialias), [-1,1]";

impl Evaluator {
    /// `image_size`: side of the images the model generates (`latent.image_size`).
    pub fn new(cfg: &EvalConfig, image_size: usize, cache_dir: PathBuf, device: &Device) -> Result<Self, EvalError> {
        let scenes = SceneEvaluator::load(None, device)?;
        let (inception, fid_unavailable) = match cfg.fid {
            FidMode::Off => (None, Some("turned off (eval.fid = \"off\")".to_string())),
            mode => match InceptionFid::load(&cfg.inception_weights.as_ref().map(PathBuf::from).unwrap_or_else(inception::default_weights_path), device) {
                Ok(n) => (Some(n), None),
                Err(e @ EvalError::Unavailable(..)) if mode == FidMode::Auto => (None, Some(e.to_string())),
                Err(e) => return Err(e),
            },
        };
        let clip = load_embedder(EmbedKind::Clip, cfg.cmmd, cfg.clip_weights.as_deref(), device)?;
        let dino = load_embedder(EmbedKind::Dino, cfg.dino_mmd, cfg.dino_weights.as_deref(), device)?;
        let set = match &cfg.set {
            None => None,
            Some(s) => {
                let ds = RealDataset::open(s.source, Path::new(&s.path)).map_err(|e| EvalError::Unavailable("the evaluation set".into(), e.to_string()))?;
                if ds.len() < cfg.samples {
                    return Err(EvalError::Images(format!("eval.set {} has {} samples, fewer than eval.samples = {}", s.path, ds.len(), cfg.samples)));
                }
                Some(ds)
            }
        };
        Ok(Self { cfg: cfg.clone(), scenes, inception, fid_unavailable, clip, dino, set, reference_embeds: OnceLock::new(), cache: ReferenceCache { dir: cache_dir }, device: device.clone(), image_size })
    }

    fn protocol(&self, metric: &str, network: &str, hash: &str, resize: &str) -> Protocol {
        Protocol {
            metric: metric.into(),
            network: network.into(),
            weights_sha256: hash.into(),
            samples: self.cfg.samples as u64,
            sampler_steps: Some(self.cfg.sampler_steps),
            guidance: Some(self.cfg.guidance),
            seed: Some(self.cfg.seed),
            reference: format!("{} n={} at {}px", self.cfg.reference_name(), self.cfg.samples, self.image_size),
            resize: resize.into(),
        }
    }

    /// Features of a batch of images in [0, 1] into a shard.
    fn add_images(&self, shard: &mut EvalShard, images: &Tensor, indices: &[u64], prompts: Option<&[Scene]>, embeds: bool) -> Result<(), EvalError> {
        super::images::validate(images)?;
        if self.set.is_none() {
            let out = self.scenes.outputs(images)?;
            let emb: Vec<f32> = out.embedding.flatten_all()?.to_vec1()?;
            shard.scene_stats.add_rows(&emb)?;
            for (k, row) in emb.chunks(EMBED_DIM).enumerate() {
                shard.embeddings.push((indices[k], row.to_vec()));
            }
        }
        if let Some(prompts) = prompts {
            let read = self.scenes.read(images)?;
            for ((scene, cells), i) in prompts.iter().zip(&read.cells).zip(indices) {
                let score = shard.composition.add(scene, cells);
                shard.scores.push((*i, score));
            }
        }
        if let (Some(net), Some(st)) = (&self.inception, shard.inception.as_mut()) {
            st.add_rows(&net.features(images)?.flatten_all()?.to_vec1::<f32>()?)?;
        }
        for (net, rows) in [(&self.clip, &mut shard.clip), (&self.dino, &mut shard.dino)] {
            if let (Ok(net), true) = (net, embeds) {
                let emb: Vec<f32> = net.embed(images)?.flatten_all()?.to_vec1()?;
                rows.extend(indices.iter().zip(emb.chunks(net.dim)).map(|(i, e)| (*i, e.to_vec())));
            }
        }
        Ok(())
    }

    fn empty_shard(&self) -> EvalShard {
        EvalShard {
            scene_stats: FeatureStats::new(EMBED_DIM),
            embeddings: Vec::new(),
            composition: CompositionCounts::default(),
            inception: self.inception.as_ref().map(|_| FeatureStats::new(inception::FEATURE_DIM)),
            scores: Vec::new(),
            clip: Vec::new(),
            dino: Vec::new(),
        }
    }

    /// This rank's share of the generated images.
    pub fn generated_shard(&self, trainer: &Trainer, rank: usize, world: usize) -> Result<EvalShard, crate::TrainError> {
        self.generated_shard_with(trainer, rank, world, &mut |_, _| {})
    }

    /// As [`generated_shard`](Self::generated_shard), calling `tick(done, total)` after each
    /// chunk of this rank's images.
    pub fn generated_shard_with(&self, trainer: &Trainer, rank: usize, world: usize, tick: &mut dyn FnMut(usize, usize)) -> Result<EvalShard, crate::TrainError> {
        let mut shard = self.empty_shard();
        let idx: Vec<u64> = (rank as u64..self.cfg.samples as u64).step_by(world.max(1)).collect();
        let mut done = 0;
        for chunk in idx.chunks(32) {
            // the user's captions, or long captions of the held-out scenes
            let (scenes, prompts): (Vec<Scene>, Vec<String>) = match &self.set {
                Some(set) => (Vec::new(), chunk.iter().map(|&i| set.caption(i as usize).to_string()).collect()),
                None => chunk.iter().map(|&i| self.cfg.scene(i)).map(|sc| (sc.clone(), long_caption(&sc))).unzip(),
            };
            let ema = self.cfg.weights == super::config::EvalWeights::Ema;
            let imgs = trainer.sample_weights(&prompts, Some(chunk), self.cfg.seed, self.cfg.sampler_steps, self.cfg.guidance, ema)?;
            let imgs = ((imgs.to_dtype(DType::F32)? + 1.0)? * 0.5)?.clamp(0f32, 1f32)?;
            let scenes = Some(scenes.as_slice()).filter(|_| self.set.is_none());
            self.add_images(&mut shard, &imgs, chunk, scenes, true).map_err(|e| crate::TrainError::Data(format!("evaluation: {e}")))?;
            done += chunk.len();
            tick(done, idx.len());
        }
        Ok(shard)
    }

    /// The reference renders (all N, on one rank, at the generated size): every run of the same
    /// protocol sees the same. Inception features only when asked (a reference-cache miss),
    /// CLIP and DINOv2 embeddings only when asked (once per run).
    fn reference_shard(&self, with_inception: bool, with_embeds: bool) -> Result<EvalShard, EvalError> {
        let mut shard = self.empty_shard();
        if !with_inception {
            shard.inception = None;
        }

        let n = self.cfg.samples as u64;
        for start in (0..n).step_by(32) {
            let idx: Vec<u64> = (start..(start + 32).min(n)).collect();
            let imgs = match &self.set {
                Some(set) => {
                    // the set's images as training sees them: centre crop, bilinear to the generated size
                    let mut v = Vec::with_capacity(idx.len() * 3 * self.image_size * self.image_size);
                    for &i in &idx {
                        v.extend(set.image(i as usize, self.image_size).map_err(|e| EvalError::Images(e.to_string()))?.into_iter().map(|x| ((x + 1.0) * 0.5).clamp(0.0, 1.0)));
                    }
                    Tensor::from_vec(v, (idx.len(), 3, self.image_size, self.image_size), &self.device)?
                }
                None => {
                    let scenes: Vec<(Scene, u64)> = idx.iter().map(|&i| (self.cfg.scene(i), self.cfg.seed ^ i)).collect();
                    scenes::render_batch(&scenes, self.image_size, &self.device)?
                }
            };
            self.add_images(&mut shard, &imgs, &idx, None, with_embeds)?;
        }
        Ok(shard)
    }

    /// Numbers from the merged shards of all ranks.
    pub fn finish(&self, step: usize, mut gen: EvalShard, seconds: f64) -> Result<EvalReport, EvalError> {
        let flat = |e: &[(u64, Vec<f32>)]| e.iter().flat_map(|(_, v)| v.iter().copied()).collect::<Vec<f32>>();
        let scene = match self.set {
            Some(_) => None,
            None => Some(self.scene_metrics(&mut gen)?),
        };
        let fid = match (&self.inception, &gen.inception) {
            (Some(net), Some(g)) => {
                let p = self.protocol("fid", "pytorch-fid inception-v3 pool3", &net.weights_hash, FID_RESIZE);
                let dataset = self.reference_key();
                let reference_stats = self.cache.get_or_compute(&dataset, &net.weights_hash, self.cfg.samples as u64, &p, || {
                    self.reference_shard(true, false)?.inception.expect("Inception features were asked for").finish()
                })?;
                Some(Measured { value: frechet_distance(&g.finish()?, &reference_stats)?.value, protocol: p })
            }
            _ => None,
        };
        let embeds = |net: &Result<Embedder, String>, gen: &mut Vec<(u64, Vec<f32>)>, pick: fn(&(Vec<f32>, Vec<f32>)) -> &Vec<f32>| -> Result<(Option<Measured>, Option<String>), EvalError> {
            let net = match net {
                Ok(n) => n,
                Err(why) => return Ok((None, Some(why.clone()))),
            };
            let reference = self.reference_embeddings()?;
            gen.sort_by_key(|(i, _)| *i);
            let p = self.protocol(net.kind.metric(), &net.network(), &net.weights_sha256, &net.resize());
            let value = super::mmd::mmd(&flat(gen), pick(reference), net.dim)?;
            Ok((Some(Measured { value, protocol: p }), None))
        };
        let (cmmd, cmmd_unavailable) = embeds(&self.clip, &mut gen.clip, |r| &r.0)?;
        let (dino_mmd, dino_mmd_unavailable) = embeds(&self.dino, &mut gen.dino, |r| &r.1)?;
        Ok(EvalReport {
            step,
            cmmd,
            cmmd_unavailable,
            dino_mmd,
            dino_mmd_unavailable,
            fid_unavailable: if fid.is_some() { None } else { self.fid_unavailable.clone() },
            fid,
            seconds,
            ..scene.unwrap_or_default()
        })
    }

    /// What names the reference images in cache file names: the reference set (with a
    /// fingerprint of the user's files, so a changed set is not read from a stale cache) and
    /// the size the images are compared at.
    fn reference_key(&self) -> String {
        let print = self.set.as_ref().map(|s| format!("-{:016x}", s.fingerprint(self.cfg.samples))).unwrap_or_default();
        format!("{}{print}-{}px", self.cfg.reference_name(), self.image_size)
    }

    /// The reference images' CLIP and DINOv2 embeddings (empty for a network not loaded):
    /// from the reference cache when it has them under this protocol, else computed (both
    /// networks from one pass over the images) and cached; kept in memory for the run.
    fn reference_embeddings(&self) -> Result<&(Vec<f32>, Vec<f32>), EvalError> {
        if let Some(r) = self.reference_embeds.get() {
            return Ok(r);
        }
        let flat = |e: &[(u64, Vec<f32>)]| e.iter().flat_map(|(_, v)| v.iter().copied()).collect::<Vec<f32>>();
        let mut shard: Option<EvalShard> = None;
        let key = self.reference_key();
        let mut cached = |net: &Result<Embedder, String>, pick: fn(&EvalShard) -> &Vec<(u64, Vec<f32>)>| -> Result<Vec<f32>, EvalError> {
            let Ok(net) = net else { return Ok(Vec::new()) };
            let p = self.protocol(net.kind.metric(), &net.network(), &net.weights_sha256, &net.resize());
            self.cache.embeddings(&key, &net.weights_sha256, self.cfg.samples as u64, net.dim, &p, || {
                if shard.is_none() {
                    shard = Some(self.reference_shard(false, true)?);
                }
                Ok(flat(pick(shard.as_ref().expect("computed above"))))
            })
        };
        let clip = cached(&self.clip, |s| &s.clip)?;
        let dino = cached(&self.dino, |s| &s.dino)?;
        Ok(self.reference_embeds.get_or_init(|| (clip, dino)))
    }

    /// FD-scenes, MMD and accuracy against the reference renders, with the per-image numbers
    /// behind them (the scene world only).
    fn scene_metrics(&self, gen: &mut EvalShard) -> Result<EvalReport, EvalError> {
        let reference = self.reference_shard(false, false)?;
        let scene_p = |m: &str| self.protocol(m, scenes::NAME, &self.scenes.weights_hash, SCENE_RESIZE);
        let fd = frechet_distance(&gen.scene_stats.finish()?, &reference.scene_stats.finish()?)?;
        gen.embeddings.sort_by_key(|(i, _)| *i);
        let flat = |e: &[(u64, Vec<f32>)]| e.iter().flat_map(|(_, v)| v.iter().copied()).collect::<Vec<f32>>();
        let mmd = super::mmd::mmd(&flat(&gen.embeddings), &flat(&reference.embeddings), EMBED_DIM)?;
        let composition = gen.composition.finish();
        gen.scores.sort_by_key(|(i, _)| *i);
        let samples = super::bootstrap::EvalSamples {
            dim: EMBED_DIM,
            generated: flat(&gen.embeddings),
            reference: flat(&reference.embeddings),
            scores: gen.scores.iter().map(|(_, s)| *s).collect(),
            protocol: scene_p("fd_scenes"),
        };
        Ok(EvalReport {
            fd_scenes: Some(Measured { value: fd.value, protocol: scene_p("fd_scenes") }),
            mmd_scenes: Some(Measured { value: mmd, protocol: scene_p("mmd_scenes") }),
            accuracy: Some(Measured { value: composition.overall, protocol: scene_p("accuracy") }),
            composition: Some(composition),
            samples: Some(samples),
            ..Default::default()
        })
    }

    /// The evaluation of a data-parallel group: every rank samples its share of the images,
    /// the shares are gathered, and rank 0 computes the numbers (`Some` there, `None` on the
    /// other ranks). A rank whose share failed makes the evaluation fail on rank 0 with its
    /// reason (every rank still joins the gather, so none is left waiting). With one rank
    /// this is [`evaluate`](Self::evaluate).
    pub fn evaluate_in(&self, trainer: &Trainer, group: &mut dyn Collective) -> Result<Option<EvalReport>, crate::TrainError> {
        self.evaluate_in_with(trainer, group, &mut |_, _| {})
    }

    /// As [`evaluate_in`](Self::evaluate_in), with `tick(done, total)` over this rank's images.
    pub fn evaluate_in_with(&self, trainer: &Trainer, group: &mut dyn Collective, tick: &mut dyn FnMut(usize, usize)) -> Result<Option<EvalReport>, crate::TrainError> {
        let (rank, world) = (group.rank(), group.world());
        if world <= 1 {
            return self.evaluate_with(trainer, tick).map(Some);
        }
        let t0 = std::time::Instant::now();
        let mine = match self.generated_shard_with(trainer, rank, world, tick) {
            Ok(s) => s.to_bytes(),
            Err(e) => format!("ERR{e}").into_bytes(),
        };
        // the shares take about equally long; the barrier gives the slowest up to an hour
        group.barrier(SHARE_DEADLINE).map_err(crate::TrainError::Collective)?;
        let all = group.all_gather(&mine).map_err(crate::TrainError::Collective)?;
        if rank != 0 {
            return Ok(None);
        }
        let fail = |m: String| crate::TrainError::Data(format!("evaluation: {m}"));
        let mut shares = Vec::with_capacity(all.len());
        for (r, b) in all.iter().enumerate() {
            if let Some(why) = b.strip_prefix(b"ERR") {
                return Err(fail(format!("rank {r}: {}", String::from_utf8_lossy(why))));
            }
            shares.push(EvalShard::from_bytes(b).map_err(|e| fail(format!("rank {r}'s share: {e}")))?);
        }
        let gen = EvalShard::gathered(shares).map_err(|e| fail(e.to_string()))?;
        let mut report = self.finish(trainer.step, gen, 0.0).map_err(|e| fail(e.to_string()))?;
        report.seconds = t0.elapsed().as_secs_f64();
        Ok(Some(report))
    }

    /// Single-process evaluation.
    pub fn evaluate(&self, trainer: &Trainer) -> Result<EvalReport, crate::TrainError> {
        self.evaluate_with(trainer, &mut |_, _| {})
    }

    fn evaluate_with(&self, trainer: &Trainer, tick: &mut dyn FnMut(usize, usize)) -> Result<EvalReport, crate::TrainError> {
        let t0 = std::time::Instant::now();
        let shard = self.generated_shard_with(trainer, 0, 1, tick)?;
        self.finish(trainer.step, shard, 0.0)
            .map(|mut r| {
                r.seconds = t0.elapsed().as_secs_f64();
                r
            })
            .map_err(|e| crate::TrainError::Data(format!("evaluation: {e}")))
    }
}
