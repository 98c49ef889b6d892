//! A checkpoint store shared by the workers (a shared filesystem path: NFS, Lustre, a
//! mounted bucket), so a gang placed again on other workers resumes where it stopped instead
//! of from scratch.
//!
//! Every checkpoint rank 0 writes is also published here, with the run files a resume needs
//! (configuration, metrics, evaluations, per-image evaluation data):
//!
//! ```text
//! <store>/step-00000300/checkpoint.safetensors, config.toml, metrics.jsonl, ...
//! <store>/step-00000300/MANIFEST   one line per file: sha256, size, name
//! ```
//!
//! A checkpoint is written into a hidden temporary folder, each file synced, the manifest
//! last, then the folder renamed into place: a crash leaves no half-published step. The last
//! [`CheckpointStore::keep`] steps stay, older ones are removed. On resume the newest step
//! whose every file matches its manifest (size and sha256) is restored; a corrupt or
//! truncated one is passed over for the one before it, with the reason said.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

const MANIFEST: &str = "MANIFEST";
/// The checkpoint itself: what makes a published step.
pub const CHECKPOINT: &str = "checkpoint.safetensors";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointStore {
    pub root: PathBuf,
    /// Published steps kept (at least 1).
    pub keep: usize,
}

/// A published step that checked out whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub step: usize,
    pub dir: PathBuf,
}

fn step_dir_name(step: usize) -> String {
    format!("step-{step:08}")
}

/// sha256 (hex) and size of what `src` yields, read in 1 MiB pieces, each also written to
/// `sink` (a copy hashed in the same pass).
fn digest_into(mut src: impl Read, mut sink: impl Write) -> std::io::Result<(String, u64)> {
    let (mut h, mut n, mut buf) = (Sha256::new(), 0u64, vec![0u8; 1 << 20]);
    loop {
        let k = src.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        sink.write_all(&buf[..k])?;
        n += k as u64;
    }
    Ok((h.finalize().iter().map(|b| format!("{b:02x}")).collect(), n))
}

/// sha256 (hex) and size of a file.
fn digest(path: &Path) -> std::io::Result<(String, u64)> {
    digest_into(std::fs::File::open(path)?, std::io::sink())
}

impl CheckpointStore {
    pub fn new(root: impl Into<PathBuf>, keep: usize) -> Self {
        Self { root: root.into(), keep: keep.max(1) }
    }

    /// Publishes `files` (from the run directory; `checkpoint.safetensors` among them,
    /// missing others skipped) as `step`, then removes all but the newest `keep` steps.
    pub fn publish(&self, step: usize, run_dir: &Path, files: &[&str]) -> std::io::Result<PathBuf> {
        let io = |what: String| move |e: std::io::Error| std::io::Error::new(e.kind(), format!("checkpoint store {what}: {e}"));
        std::fs::create_dir_all(&self.root).map_err(io(self.root.display().to_string()))?;
        let dest = self.root.join(step_dir_name(step));
        let tmp = self.root.join(format!(".{}.{}.tmp", step_dir_name(step), std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(io(tmp.display().to_string()))?;
        let mut manifest = String::new();
        let result = (|| {
            for name in files {
                let src = run_dir.join(name);
                if !src.exists() {
                    if *name == CHECKPOINT {
                        return Err(std::io::Error::new(std::io::ErrorKind::NotFound, format!("{} does not exist", src.display())));
                    }
                    continue;
                }
                let to = tmp.join(name);
                let mut out = std::fs::File::create(&to)?;
                let (sha, size) = digest_into(std::fs::File::open(&src)?, &mut out).map_err(io(format!("copying {}", src.display())))?;
                out.sync_all()?;
                manifest.push_str(&format!("{sha} {size} {name}\n"));
            }
            let mut m = std::fs::File::create(tmp.join(MANIFEST))?;
            m.write_all(manifest.as_bytes())?;
            m.sync_all()?;
            crate::fsutil::sync_dir(&tmp);
            if dest.exists() {
                std::fs::remove_dir_all(&dest)?;
            }
            std::fs::rename(&tmp, &dest).map_err(io(format!("renaming into {}", dest.display())))?;
            crate::fsutil::sync_dir(&self.root);
            Ok(())
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        for old in self.steps()?.into_iter().rev().skip(self.keep) {
            let _ = std::fs::remove_dir_all(self.root.join(step_dir_name(old)));
        }
        Ok(dest)
    }

    /// Published steps, oldest first (whole or not; temporary folders excluded).
    pub fn steps(&self) -> std::io::Result<Vec<usize>> {
        let rd = match std::fs::read_dir(&self.root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut steps: Vec<usize> = rd.filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("step-")?.parse().ok()).collect();
        steps.sort_unstable();
        Ok(steps)
    }

    /// Why the published `step` cannot be used, or None when every file matches its manifest.
    pub fn check(&self, step: usize) -> Option<String> {
        let dir = self.root.join(step_dir_name(step));
        let text = match std::fs::read_to_string(dir.join(MANIFEST)) {
            Ok(t) => t,
            Err(e) => return Some(format!("no readable {MANIFEST} ({e})")),
        };
        let mut has_checkpoint = false;
        for line in text.lines() {
            let mut parts = line.splitn(3, ' ');
            let (Some(sha), Some(size), Some(name)) = (parts.next(), parts.next().and_then(|s| s.parse::<u64>().ok()), parts.next()) else {
                return Some(format!("{MANIFEST} line {line:?} is not \"sha256 size name\""));
            };
            if name.contains('/') || name.contains("..") {
                return Some(format!("{MANIFEST} names {name:?}, outside the step"));
            }
            has_checkpoint |= name == CHECKPOINT;
            match digest(&dir.join(name)) {
                Err(e) => return Some(format!("{name}: {e}")),
                Ok((_, got)) if got != size => return Some(format!("{name} is {got} bytes, the manifest says {size} (truncated?)")),
                Ok((got, _)) if got != sha => return Some(format!("{name}: sha256 {got} differs from the manifest's {sha} (corrupt)")),
                Ok(_) => {}
            }
        }
        (!has_checkpoint).then(|| format!("{MANIFEST} lists no {CHECKPOINT}"))
    }

    /// The newest step that checks out whole; `skipped` hears of every newer one passed over
    /// and why.
    pub fn latest_whole(&self, skipped: &mut dyn FnMut(usize, String)) -> std::io::Result<Option<Published>> {
        for step in self.steps()?.into_iter().rev() {
            match self.check(step) {
                None => return Ok(Some(Published { step, dir: self.root.join(step_dir_name(step)) })),
                Some(why) => skipped(step, why),
            }
        }
        Ok(None)
    }

    /// Copies a published step's files into `run_dir` (each written durably).
    pub fn restore(&self, p: &Published, run_dir: &Path) -> std::io::Result<Vec<String>> {
        std::fs::create_dir_all(run_dir)?;
        let text = std::fs::read_to_string(p.dir.join(MANIFEST))?;
        let mut names = Vec::new();
        for line in text.lines() {
            let name = line.splitn(3, ' ').nth(2).unwrap_or_default();
            crate::fsutil::write_durable_with(&run_dir.join(name), |tmp| std::fs::copy(p.dir.join(name), tmp).map(|_| ()))?;
            names.push(name.to_string());
        }
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_dir(step: usize) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(CHECKPOINT), format!("weights at {step}").repeat(100)).unwrap();
        std::fs::write(d.path().join("metrics.jsonl"), format!("{{\"step\":{step}}}\n")).unwrap();
        d
    }

    #[test]
    fn publishes_keeps_the_last_k_and_restores_the_newest_whole_step() {
        let store_dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(store_dir.path().join("job"), 2);
        for step in [100, 200, 300] {
            let d = run_dir(step);
            store.publish(step, d.path(), &[CHECKPOINT, "metrics.jsonl", "eval.jsonl"]).unwrap();
        }
        assert_eq!(store.steps().unwrap(), vec![200, 300], "the last 2 kept");
        let mut skipped = Vec::new();
        let p = store.latest_whole(&mut |s, why| skipped.push((s, why))).unwrap().unwrap();
        assert_eq!((p.step, skipped.len()), (300, 0));
        let into = tempfile::tempdir().unwrap();
        let names = store.restore(&p, into.path()).unwrap();
        assert_eq!(names, vec![CHECKPOINT.to_string(), "metrics.jsonl".into()], "absent files are not published");
        assert_eq!(std::fs::read_to_string(into.path().join("metrics.jsonl")).unwrap(), "{\"step\":300}\n");
    }

    #[test]
    fn a_corrupt_or_truncated_latest_step_falls_back_to_the_one_before() {
        let store_dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(store_dir.path(), 3);
        for step in [10, 20, 30] {
            store.publish(step, run_dir(step).path(), &[CHECKPOINT]).unwrap();
        }
        // 30: one flipped byte; 20: cut short
        let p30 = store_dir.path().join("step-00000030").join(CHECKPOINT);
        let mut bytes = std::fs::read(&p30).unwrap();
        bytes[5] ^= 1;
        std::fs::write(&p30, bytes).unwrap();
        let p20 = store_dir.path().join("step-00000020").join(CHECKPOINT);
        let bytes = std::fs::read(&p20).unwrap();
        std::fs::write(&p20, &bytes[..bytes.len() / 2]).unwrap();
        let mut skipped = Vec::new();
        let p = store.latest_whole(&mut |s, why| skipped.push((s, why))).unwrap().unwrap();
        assert_eq!(p.step, 10);
        assert_eq!(skipped.len(), 2);
        assert!(skipped[0].0 == 30 && skipped[0].1.contains("sha256") && skipped[0].1.contains("corrupt"), "{skipped:?}");
        assert!(skipped[1].0 == 20 && skipped[1].1.contains("truncated"), "{skipped:?}");
        // a step without its manifest (a crash before the rename cannot leave one; a hand
        // copy can) is passed over too
        std::fs::remove_file(store_dir.path().join("step-00000010").join(MANIFEST)).unwrap();
        assert!(store.latest_whole(&mut |_, _| {}).unwrap().is_none());
    }

    #[test]
    fn a_failed_publish_leaves_nothing_behind() {
        let store_dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(store_dir.path(), 3);
        let empty = tempfile::tempdir().unwrap();
        assert!(store.publish(5, empty.path(), &[CHECKPOINT]).is_err());
        assert_eq!(std::fs::read_dir(store_dir.path()).unwrap().count(), 0);
    }
}
