//! Training data: the synthetic scene world (renderer + captions), data phases, per-rank
//! sharding and a loader thread that prepares batches ahead of compute.
//!
//! A batch is a pure function of (data seed, step, rank, world size), so resuming at step s
//! needs no saved loader state beyond s, and ranks read disjoint samples:
//! sample i of rank r at step s is dataset index `((s * world + r) * batch + i) mod size`.

pub mod captions;
pub mod real;
pub mod render;
pub mod scene;

use serde::{Deserialize, Serialize};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::rng::Rng;
pub use captions::{CaptionMode, Tokenizer};
pub use real::RealDataset;
pub use scene::{Scene, Style};

/// Where a phase's samples come from: one of the synthetic scene styles, or real data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Synthetic,
    Photo,
    Curated,
    /// An image folder with `captions.jsonl` (needs `path`).
    Folder,
    /// WebDataset `.tar` shards (needs `path`: a shard or a directory of shards).
    Webdataset,
}

impl Source {
    pub fn style(self) -> Option<Style> {
        match self {
            Source::Synthetic => Some(Style::Synthetic),
            Source::Photo => Some(Style::Photo),
            Source::Curated => Some(Style::Curated),
            Source::Folder | Source::Webdataset => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Source::Synthetic => "synthetic",
            Source::Photo => "photo",
            Source::Curated => "curated",
            Source::Folder => "folder",
            Source::Webdataset => "webdataset",
        }
    }
}

/// One stretch of training on one dataset with one caption mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    pub source: Source,
    /// Dataset location for `folder` and `webdataset` sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default = "default_captions")]
    pub captions: CaptionMode,
    /// Steps in this phase; omitted on the last phase = until the end of training.
    #[serde(default)]
    pub steps: Option<usize>,
}

fn default_captions() -> CaptionMode {
    CaptionMode::Long
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    pub phases: Vec<Phase>,
    /// Distinct images per synthetic dataset (indices wrap around).
    pub dataset_size: u64,
    /// Seed of the dataset itself (which scenes exist), separate from the run seed.
    pub seed: u64,
    /// Batches prepared ahead of compute.
    pub prefetch: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self { phases: vec![Phase { source: Source::Synthetic, path: None, captions: CaptionMode::Long, steps: None }], dataset_size: 100_000, seed: 0, prefetch: 4 }
    }
}

impl DataConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.phases.is_empty() {
            return Err("data.phases must list at least one phase".into());
        }
        for (i, p) in self.phases.iter().enumerate() {
            let last = i + 1 == self.phases.len();
            if p.source.style().is_none() && p.path.is_none() {
                return Err(format!("data.phases[{i}]: source \"{}\" needs `path`", p.source.name()));
            }
            match p.steps {
                None if !last => return Err(format!("data.phases[{i}] needs `steps` (only the last phase may omit it)")),
                Some(0) => return Err(format!("data.phases[{i}].steps must be positive")),
                _ => {}
            }
        }
        if self.dataset_size == 0 {
            return Err("data.dataset_size must be positive".into());
        }
        Ok(())
    }

    /// Index of the phase in force at `step` (the last phase continues forever).
    pub fn phase_index(&self, step: usize) -> usize {
        let mut start = 0;
        for (i, p) in self.phases.iter().enumerate() {
            match p.steps {
                Some(n) if step < start + n => return i,
                Some(n) => start += n,
                None => return i,
            }
        }
        self.phases.len() - 1
    }

    pub fn phase_at(&self, step: usize) -> &Phase {
        &self.phases[self.phase_index(step)]
    }
}

/// What the trainer needs from the loader for one step on one rank.
#[derive(Debug, Clone)]
pub struct Batch {
    pub step: usize,
    pub size: usize,
    /// (size, 3, H, W) row-major, in [-1, 1].
    pub images: Vec<f32>,
    /// (size, max_tokens) token ids, PAD-padded.
    pub ids: Vec<u32>,
    pub lens: Vec<usize>,
    pub captions: Vec<String>,
    /// Real samples skipped as unreadable so far (all real datasets of the run).
    pub skipped: u64,
}

impl Batch {
    /// Samples `range` of this batch (a micro-batch).
    pub fn slice(&self, range: std::ops::Range<usize>) -> Batch {
        let per_image = self.images.len() / self.size.max(1);
        let per_ids = self.ids.len() / self.size.max(1);
        Batch {
            step: self.step,
            size: range.len(),
            images: self.images[range.start * per_image..range.end * per_image].to_vec(),
            ids: self.ids[range.start * per_ids..range.end * per_ids].to_vec(),
            lens: self.lens[range.clone()].to_vec(),
            captions: self.captions[range].to_vec(),
            skipped: self.skipped,
        }
    }
}

/// Everything needed to build batches; cheap to clone into the loader thread.
#[derive(Debug, Clone)]
pub struct BatchSpec {
    pub data: DataConfig,
    /// Opened real datasets, per phase (None for synthetic phases).
    pub real: Vec<Option<Arc<RealDataset>>>,
    pub batch: usize,
    pub image_size: usize,
    pub max_tokens: usize,
    pub caption_dropout: f64,
    pub run_seed: u64,
    pub rank: usize,
    pub world: usize,
}

impl BatchSpec {
    /// The batch recipe of a run on `rank` of `world`; opens (and indexes) real datasets.
    pub fn new(cfg: &crate::TrainConfig, rank: usize, world: usize) -> Result<Self, real::DataError> {
        let mut real = cfg
            .data
            .phases
            .iter()
            .map(|p| match p.source.style() {
                Some(_) => Ok(None),
                None => RealDataset::open(p.source, std::path::Path::new(p.path.as_deref().unwrap_or(""))).map(Some),
            })
            .collect::<Result<Vec<_>, _>>()?;
        // the evaluation set is held out of training: split off, or refused when shared
        if let Some(set) = cfg.eval.set.as_ref().filter(|_| cfg.eval.samples > 0) {
            let same = |p: &Phase| p.source == set.source && canonical(p.path.as_deref().unwrap_or("")) == canonical(&set.path);
            let mut eval_set = None;
            for (i, (phase, ds)) in cfg.data.phases.iter().zip(real.iter_mut()).enumerate() {
                let Some(d) = ds.as_mut() else { continue };
                if same(phase) {
                    if set.holdout == 0 {
                        return Err(real::DataError::Open {
                            path: set.path.clone(),
                            message: format!("data.phases[{i}] trains on the evaluation set itself: set eval.set.holdout = K to hold its first K samples out of training, or evaluate on other images"),
                        });
                    }
                    *d = d.held_out(set.holdout)?;
                } else {
                    if eval_set.is_none() {
                        eval_set = Some(RealDataset::open(set.source, std::path::Path::new(&set.path))?);
                    }
                    RealDataset::check_disjoint(eval_set.as_ref().expect("opened"), cfg.eval.samples, d, &format!("data.phases[{i}]"))?;
                }
            }
        }
        Ok(Self {
            data: cfg.data.clone(),
            real,
            // (a global batch that does not split over the world is refused before the run starts)
            batch: cfg.train.rank_batch(world).unwrap_or(cfg.train.batch_size),
            image_size: cfg.latent.image_size,
            max_tokens: cfg.text.max_tokens,
            caption_dropout: cfg.objective.caption_dropout,
            run_seed: cfg.seed,
            rank,
            world,
        })
    }

    pub fn make(&self, step: usize, tok: &Tokenizer) -> Batch {
        let pi = self.data.phase_index(step);
        let phase = &self.data.phases[pi];
        let s = self.image_size;
        let mut images = Vec::with_capacity(self.batch * 3 * s * s);
        let mut ids = Vec::with_capacity(self.batch * self.max_tokens);
        let mut lens = Vec::with_capacity(self.batch);
        let mut captions = Vec::with_capacity(self.batch);
        for i in 0..self.batch {
            let global = ((step * self.world + self.rank) * self.batch + i) as u64;
            // caption choices and dropout per global sample: independent of the world size
            let mut rng = Rng::derive(self.run_seed, &[0xda7a, global]);
            let caption = match (phase.source.style(), &self.real[pi]) {
                (Some(style), _) => {
                    let index = global % self.data.dataset_size;
                    let scene = Scene::generate(self.data.seed, index, style);
                    images.extend(render::render(&scene, s, self.data.seed ^ (index << 8) ^ style.tag()));
                    captions::caption(&scene, phase.captions, &mut rng)
                }
                (None, Some(ds)) => match ds.get(global, s) {
                    Some((img, text)) => {
                        images.extend(img);
                        captions::real_caption(&text, phase.captions, &mut rng)
                    }
                    None => {
                        // every sample unreadable: a black image with an empty caption
                        images.extend(std::iter::repeat_n(-1f32, 3 * s * s));
                        String::new()
                    }
                },
                (None, None) => unreachable!("real phases are opened in BatchSpec::new"),
            };
            let text = if rng.chance(self.caption_dropout) { String::new() } else { caption };
            let (t, n) = tok.encode(&text, self.max_tokens);
            ids.extend(t);
            lens.push(n);
            captions.push(text);
        }
        let skipped = self.real.iter().flatten().map(|d| d.skipped()).sum();
        Batch { step, size: self.batch, images, ids, lens, captions, skipped }
    }
}

fn canonical(path: &str) -> std::path::PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| std::path::PathBuf::from(path))
}

/// Background loader: renders batches for steps `start..end` ahead of the consumer.
pub struct Loader {
    rx: Option<Receiver<Batch>>,
    handle: Option<JoinHandle<()>>,
}

impl Loader {
    pub fn start(spec: BatchSpec, start: usize, end: usize) -> Self {
        let (tx, rx) = sync_channel(spec.data.prefetch.max(1));
        let handle = std::thread::Builder::new()
            .name("ablate-loader".into())
            .spawn(move || {
                let tok = Tokenizer::new();
                for step in start..end {
                    if tx.send(spec.make(step, &tok)).is_err() {
                        return; // consumer gone
                    }
                }
            })
            .expect("spawn loader thread");
        Self { rx: Some(rx), handle: Some(handle) }
    }

    pub fn next(&self) -> Option<Batch> {
        self.rx.as_ref()?.recv().ok()
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Closing the channel makes the producer's next send fail, so it returns.
        drop(self.rx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(rank: usize, world: usize) -> BatchSpec {
        let mut c = crate::TrainConfig::default();
        c.train.batch_size = 4;
        c.latent.image_size = 16;
        c.text.max_tokens = 32;
        c.objective.caption_dropout = 0.0;
        c.seed = 1;
        BatchSpec::new(&c, rank, world).unwrap()
    }

    #[test]
    fn ranks_read_disjoint_samples_and_batches_are_reproducible() {
        let tok = Tokenizer::new();
        let a = spec(0, 2).make(3, &tok);
        let b = spec(1, 2).make(3, &tok);
        assert_ne!(a.images, b.images);
        assert_eq!(a.images, spec(0, 2).make(3, &tok).images);
        // rank 1's samples at world 2 are the second half of the world-1 batch of twice the size
        let mut big = spec(0, 1);
        big.batch = 8;
        let c = big.make(3, &tok);
        assert_eq!(&c.images[c.images.len() / 2..], &b.images[..]);
        assert_eq!(&c.captions[4..], &b.captions[..]);
    }

    #[test]
    fn phases_switch_at_their_boundaries() {
        let d = DataConfig {
            phases: vec![
                Phase { source: Source::Synthetic, path: None, captions: CaptionMode::Long, steps: Some(10) },
                Phase { source: Source::Photo, path: None, captions: CaptionMode::Long, steps: Some(5) },
                Phase { source: Source::Curated, path: None, captions: CaptionMode::Mixed, steps: None },
            ],
            ..Default::default()
        };
        d.validate().unwrap();
        assert_eq!(d.phase_at(9).source, Source::Synthetic);
        assert_eq!(d.phase_at(10).source, Source::Photo);
        assert_eq!(d.phase_at(15).source, Source::Curated);
        assert_eq!(d.phase_at(10_000).source, Source::Curated);
        let bad = DataConfig { phases: vec![Phase { source: Source::Photo, path: None, captions: CaptionMode::Long, steps: None }, d.phases[0].clone()], ..Default::default() };
        assert!(bad.validate().unwrap_err().contains("data.phases[0] needs `steps`"));
        let bad = DataConfig { phases: vec![Phase { source: Source::Folder, path: None, captions: CaptionMode::Long, steps: None }], ..Default::default() };
        assert_eq!(bad.validate().unwrap_err(), "data.phases[0]: source \"folder\" needs `path`");
    }

    #[test]
    fn loader_delivers_steps_in_order() {
        let l = Loader::start(spec(0, 1), 5, 9);
        let steps: Vec<usize> = std::iter::from_fn(|| l.next()).map(|b| b.step).collect();
        assert_eq!(steps, vec![5, 6, 7, 8]);
    }
}
