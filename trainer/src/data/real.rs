//! Real image-text data: an image folder with `captions.jsonl`, or WebDataset tar shards.
//!
//! - Folder: `DIR/captions.jsonl`, one JSON object per line with `file` (path relative to
//!   DIR) and `caption`.
//! - WebDataset: `.tar` files (a single file, or every `.tar` in a directory, sorted); members
//!   are grouped by key (the name up to the first dot); a sample has an image member
//!   (`.jpg`, `.jpeg`, `.png`, `.webp` is not supported) and a caption from `.txt` or from
//!   the `caption` field of `.json`.
//!
//! Images are centre-cropped to a square and resized (bilinear) to the training size. A
//! sample that cannot be read or decoded is skipped (the next index is used instead),
//! counted, and reported; it never stops training.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {message}")]
    Open { path: String, message: String },
}

/// Where one sample's bytes live.
#[derive(Debug, Clone)]
enum Location {
    File(PathBuf),
    /// (tar file index, byte offset, length)
    Tar(usize, u64, u64),
}

#[derive(Debug, Clone)]
struct Sample {
    image: Location,
    caption: String,
}

/// An indexed real dataset. Cheap to share between threads.
#[derive(Debug)]
pub struct RealDataset {
    pub root: PathBuf,
    samples: Vec<Sample>,
    tars: Vec<PathBuf>,
    skipped: AtomicU64,
}

fn open_err(path: &Path, message: impl Into<String>) -> DataError {
    DataError::Open { path: path.display().to_string(), message: message.into() }
}

impl RealDataset {
    pub fn open_folder(dir: &Path) -> Result<Arc<Self>, DataError> {
        let index = dir.join("captions.jsonl");
        let text = std::fs::read_to_string(&index).map_err(|e| open_err(&index, format!("cannot read the caption index: {e}")))?;
        let mut samples = Vec::new();
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line).map_err(|e| open_err(&index, format!("line {}: {e}", i + 1)))?;
            let (Some(file), Some(caption)) = (v.get("file").and_then(|f| f.as_str()), v.get("caption").and_then(|c| c.as_str())) else {
                return Err(open_err(&index, format!("line {}: needs string fields \"file\" and \"caption\"", i + 1)));
            };
            // an entry names a file inside the folder: never `..`, never an absolute path
            if !Path::new(file).components().all(|c| matches!(c, std::path::Component::Normal(_) | std::path::Component::CurDir)) {
                return Err(open_err(&index, format!("line {}: file {file:?} must be a path inside the dataset folder (no '..', not absolute)", i + 1)));
            }
            samples.push(Sample { image: Location::File(dir.join(file)), caption: caption.to_string() });
        }
        if samples.is_empty() {
            return Err(open_err(&index, "no samples listed"));
        }
        Ok(Arc::new(Self { root: dir.to_path_buf(), samples, tars: vec![], skipped: AtomicU64::new(0) }))
    }

    pub fn open_webdataset(path: &Path) -> Result<Arc<Self>, DataError> {
        let tars: Vec<PathBuf> = if path.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| open_err(path, e.to_string()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "tar"))
                .collect();
            v.sort();
            v
        } else {
            vec![path.to_path_buf()]
        };
        if tars.is_empty() {
            return Err(open_err(path, "no .tar shards found"));
        }
        let mut samples = Vec::new();
        for (ti, tar_path) in tars.iter().enumerate() {
            let f = std::fs::File::open(tar_path).map_err(|e| open_err(tar_path, e.to_string()))?;
            let mut ar = tar::Archive::new(f);
            // key -> (image location, caption)
            let mut groups: BTreeMap<String, (Option<Location>, Option<String>)> = BTreeMap::new();
            for entry in ar.entries().map_err(|e| open_err(tar_path, e.to_string()))? {
                let mut entry = entry.map_err(|e| open_err(tar_path, format!("corrupt shard: {e}")))?;
                let name = entry.path().map_err(|e| open_err(tar_path, e.to_string()))?.to_string_lossy().to_string();
                let Some((key, ext)) = name.split_once('.') else { continue };
                let ext = ext.to_ascii_lowercase();
                let g = groups.entry(key.to_string()).or_default();
                match ext.as_str() {
                    "jpg" | "jpeg" | "png" => g.0 = Some(Location::Tar(ti, entry.raw_file_position(), entry.size())),
                    "txt" => {
                        let mut s = String::new();
                        if entry.read_to_string(&mut s).is_ok() {
                            g.1 = Some(s.trim().to_string());
                        }
                    }
                    "json" => {
                        let mut s = String::new();
                        if entry.read_to_string(&mut s).is_ok() {
                            if let Some(c) = serde_json::from_str::<serde_json::Value>(&s).ok().and_then(|v| v.get("caption").and_then(|c| c.as_str()).map(String::from)) {
                                g.1.get_or_insert(c);
                            }
                        }
                    }
                    _ => {}
                }
            }
            for (_, (img, cap)) in groups {
                if let (Some(image), Some(caption)) = (img, cap) {
                    samples.push(Sample { image, caption });
                }
            }
        }
        if samples.is_empty() {
            return Err(open_err(path, "no complete samples (image + .txt/.json caption) in the shards"));
        }
        Ok(Arc::new(Self { root: path.to_path_buf(), samples, tars, skipped: AtomicU64::new(0) }))
    }

    /// A folder (`captions.jsonl`) or WebDataset source.
    pub fn open(source: super::Source, path: &Path) -> Result<Arc<Self>, DataError> {
        match source {
            super::Source::Folder => Self::open_folder(path),
            super::Source::Webdataset => Self::open_webdataset(path),
            other => Err(open_err(path, format!("\"{}\" is not a real-data source", other.name()))),
        }
    }

    /// The same dataset without its first `k` samples (held out for evaluation).
    pub fn held_out(&self, k: usize) -> Result<Arc<Self>, DataError> {
        if k >= self.samples.len() {
            return Err(open_err(&self.root, format!("holding out {k} samples leaves nothing to train on ({} in all)", self.samples.len())));
        }
        Ok(Arc::new(Self { root: self.root.clone(), samples: self.samples[k..].to_vec(), tars: self.tars.clone(), skipped: AtomicU64::new(0) }))
    }

    /// Sample `i`'s image file (canonical path), or `shard.tar#offset` for WebDataset.
    pub fn identity(&self, i: usize) -> String {
        match &self.samples[i].image {
            Location::File(p) => std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()).display().to_string(),
            Location::Tar(t, off, _) => format!("{}#{off}", std::fs::canonicalize(&self.tars[*t]).unwrap_or_else(|_| self.tars[*t].clone()).display()),
        }
    }

    /// A fingerprint of the first `n` samples as they are on disk now (file, size and
    /// modification time of each image, and its caption): a cache keyed by it goes stale
    /// when a file of the set is replaced.
    pub fn fingerprint(&self, n: usize) -> u64 {
        let mut h = crate::hash::Fnv1a::default();
        for i in 0..n.min(self.samples.len()) {
            let file = match &self.samples[i].image {
                Location::File(p) => p.clone(),
                Location::Tar(t, ..) => self.tars[*t].clone(),
            };
            let meta = std::fs::metadata(&file).ok();
            let stamp = meta.as_ref().and_then(|m| m.modified().ok()).and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_nanos()).unwrap_or(0);
            h.write(self.identity(i).as_bytes()).write(&meta.map(|m| m.len()).unwrap_or(0).to_le_bytes()).write(&stamp.to_le_bytes()).write(self.samples[i].caption.as_bytes()).write(&[0]);
        }
        h.finish()
    }

    /// Sample `i`'s caption, as written.
    pub fn caption(&self, i: usize) -> &str {
        &self.samples[i].caption
    }

    /// Sample `i` as CHW f32 in [-1, 1] (centre crop, bilinear to `size`); an unreadable
    /// image is an error here (an evaluation set is not silently changed).
    pub fn image(&self, i: usize, size: usize) -> Result<Vec<f32>, DataError> {
        let s = &self.samples[i];
        let what = self.identity(i);
        let bytes = self.bytes(&s.image).map_err(|e| DataError::Open { path: what.clone(), message: e.to_string() })?;
        decode(&bytes, size).map_err(|message| DataError::Open { path: what, message })
    }

    /// Refuses `train` when it shares an image with the first `n` samples of `eval` (named, up
    /// to five, with the count).
    pub fn check_disjoint(eval: &RealDataset, n: usize, train: &RealDataset, phase: &str) -> Result<(), DataError> {
        let held: std::collections::HashSet<String> = (0..n.min(eval.len())).map(|i| eval.identity(i)).collect();
        let shared: Vec<String> = (0..train.len()).map(|i| train.identity(i)).filter(|id| held.contains(id)).collect();
        if shared.is_empty() {
            return Ok(());
        }
        let names = shared.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
        let more = if shared.len() > 5 { format!(" and {} more", shared.len() - 5) } else { String::new() };
        Err(open_err(
            &eval.root,
            format!("the evaluation set is not held out: {phase} trains on {} of its {n} images ({names}{more}); evaluate on other images, or point both at one source with eval.set.holdout", shared.len()),
        ))
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Samples skipped so far because they could not be read or decoded.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    fn bytes(&self, loc: &Location) -> std::io::Result<Vec<u8>> {
        match loc {
            Location::File(p) => std::fs::read(p),
            Location::Tar(ti, off, len) => {
                let mut f = std::fs::File::open(&self.tars[*ti])?;
                f.seek(SeekFrom::Start(*off))?;
                let mut buf = vec![0u8; *len as usize];
                f.read_exact(&mut buf)?;
                Ok(buf)
            }
        }
    }

    /// Sample `index` (wrapping) as (CHW f32 in [-1, 1], caption); unreadable samples are
    /// skipped in favour of the next index. Fails only if every sample is unreadable.
    pub fn get(&self, index: u64, size: usize) -> Option<(Vec<f32>, String)> {
        let n = self.samples.len() as u64;
        for k in 0..n {
            let s = &self.samples[((index + k) % n) as usize];
            match self.bytes(&s.image).ok().and_then(|b| decode(&b, size).ok()) {
                Some(chw) => return Some((chw, s.caption.clone())),
                None => {
                    let count = self.skipped.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::warn!(dataset = %self.root.display(), skipped = count, "skipping unreadable sample");
                }
            }
        }
        None
    }
}

/// An encoded image (PNG, JPEG) as CHW f32 in [-1, 1] at `size` (see [`to_chw`]); the error
/// says why it cannot be decoded. The image crate's default limits bound what a header may
/// make it allocate.
pub fn decode(bytes: &[u8], size: usize) -> Result<Vec<f32>, String> {
    let img = image::load_from_memory(bytes).map_err(|e| format!("cannot decode the image: {e}"))?;
    if img.width() == 0 || img.height() == 0 {
        return Err(format!("the image is {}x{}", img.width(), img.height()));
    }
    Ok(to_chw(&img, size))
}

/// Centre crop to a square, bilinear resize to `size`, CHW in [-1, 1].
pub fn to_chw(img: &image::DynamicImage, size: usize) -> Vec<f32> {
    let rgb = img.to_rgb8();
    let (w, h) = rgb.dimensions();
    let side = w.min(h);
    let crop = image::imageops::crop_imm(&rgb, (w - side) / 2, (h - side) / 2, side, side).to_image();
    let resized = image::imageops::resize(&crop, size as u32, size as u32, image::imageops::FilterType::Triangle);
    let plane = size * size;
    let mut out = vec![0f32; 3 * plane];
    for (i, px) in resized.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = px[c] as f32 / 127.5 - 1.0;
        }
    }
    out
}
