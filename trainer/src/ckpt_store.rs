//! A checkpoint store shared by the workers, so a gang placed again on other workers resumes
//! where it stopped instead of from scratch: a folder every worker reaches at the same path
//! (NFS, Lustre, a mounted bucket: [`Folder`]) or an object store (S3 and compatible ones:
//! `ablate_worker::s3`), both behind [`Objects`].
//!
//! Every checkpoint rank 0 writes is also published here, with the run files a resume needs
//! (configuration, metrics, evaluations, per-image evaluation data):
//!
//! ```text
//! <store>/step-00000300/checkpoint.safetensors, config.toml, metrics.jsonl, ...
//! <store>/step-00000300/MANIFEST   one line per file: sha256, size, name
//! ```
//!
//! Each file is written whole (a folder: a synced temporary file renamed into place; an
//! object store: one upload), the manifest last: a step is published once its manifest is
//! there, and a crash before leaves a step without one, which is never restored. The newest
//! [`CheckpointStore::keep`] published steps stay; every step older than them goes, whole or
//! not. On resume the newest step whose every file matches its manifest (size and sha256,
//! checked while the files are fetched, in one pass) is restored; a corrupt or truncated one
//! is passed over for the one before it, with the reason said.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

const MANIFEST: &str = "MANIFEST";
/// The checkpoint itself: what makes a published step.
pub const CHECKPOINT: &str = "checkpoint.safetensors";

/// Where published steps live. Keys are `/`-separated paths below the store's root
/// (`step-00000300/MANIFEST`); implementations are shared between threads.
pub trait Objects: Send + Sync + std::fmt::Debug {
    /// Writes the local file `src` as `key`, whole (readers see all of it or nothing), and
    /// returns the sha256 (hex) and size of what it wrote, hashed in the same pass.
    fn put_file(&self, key: &str, src: &Path) -> io::Result<(String, u64)>;
    /// Writes `bytes` as `key`, whole.
    fn put_bytes(&self, key: &str, bytes: &[u8]) -> io::Result<()>;
    /// Streams `key` into `sink`; `NotFound` when there is no such key.
    fn get_into(&self, key: &str, sink: &mut dyn Write) -> io::Result<u64>;
    /// Every key below `prefix` (`""`: all), in no particular order.
    fn list(&self, prefix: &str) -> io::Result<Vec<String>>;
    /// Removes every key below `prefix` (none there: fine).
    fn delete_prefix(&self, prefix: &str) -> io::Result<()>;
    /// Where it is, for messages (a path or a URL).
    fn describe(&self) -> String;
}

/// A [`Write`] that hashes what passes through it on its way to `inner`.
pub struct Hashing<W> {
    inner: W,
    hash: Sha256,
    pub bytes: u64,
}

impl<W: Write> Hashing<W> {
    pub fn new(inner: W) -> Self {
        Self { inner, hash: Sha256::new(), bytes: 0 }
    }
    /// The sha256 (hex) and size of what was written, and the inner writer.
    pub fn finish(self) -> (String, u64, W) {
        (hex(&self.hash.finalize()), self.bytes, self.inner)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Copies `src` into `sink` in 1 MiB pieces, hashing them: sha256 (hex) and size.
pub fn copy_hashed(mut src: impl Read, sink: impl Write) -> io::Result<(String, u64)> {
    let mut w = Hashing::new(sink);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let k = src.read(&mut buf)?;
        if k == 0 {
            break;
        }
        w.write_all(&buf[..k])?;
    }
    let (sha, n, _) = w.finish();
    Ok((sha, n))
}

/// A folder as the store: each key a file, written through a hidden temporary file that is
/// synced and renamed into place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Folder {
    pub root: PathBuf,
}

impl Folder {
    fn path(&self, key: &str) -> PathBuf {
        key.split('/').filter(|p| !p.is_empty()).fold(self.root.clone(), |p, part| p.join(part))
    }

    fn put_with(&self, key: &str, fill: impl FnOnce(&mut std::fs::File) -> io::Result<(String, u64)>) -> io::Result<(String, u64)> {
        let path = self.path(key);
        let dir = path.parent().expect("a key names a file below the root");
        std::fs::create_dir_all(dir)?;
        let mut out = (String::new(), 0);
        crate::fsutil::write_durable_with(&path, |tmp| {
            let mut f = std::fs::File::create(tmp)?;
            out = fill(&mut f)?;
            Ok(())
        })?;
        Ok(out)
    }
}

impl Objects for Folder {
    fn put_file(&self, key: &str, src: &Path) -> io::Result<(String, u64)> {
        let from = std::fs::File::open(src).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", src.display())))?;
        self.put_with(key, |f| copy_hashed(from, f))
    }
    fn put_bytes(&self, key: &str, bytes: &[u8]) -> io::Result<()> {
        self.put_with(key, |f| copy_hashed(bytes, f)).map(|_| ())
    }
    fn get_into(&self, key: &str, sink: &mut dyn Write) -> io::Result<u64> {
        io::copy(&mut std::fs::File::open(self.path(key))?, sink)
    }
    fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        let mut stack = vec![(self.path(prefix), prefix.trim_end_matches('/').to_string())];
        while let Some((dir, key)) = stack.pop() {
            let rd = match std::fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => continue,
                Err(e) => return Err(e),
            };
            for e in rd {
                let e = e?;
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue; // a write in progress (or one a crash left)
                }
                let k = if key.is_empty() { name } else { format!("{key}/{name}") };
                if e.file_type()?.is_dir() {
                    stack.push((e.path(), k));
                } else {
                    out.push(k);
                }
            }
        }
        Ok(out)
    }
    fn delete_prefix(&self, prefix: &str) -> io::Result<()> {
        let p = self.path(prefix);
        let gone = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
        match gone {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
    fn describe(&self) -> String {
        self.root.display().to_string()
    }
}

#[derive(Debug, Clone)]
pub struct CheckpointStore {
    pub objects: Arc<dyn Objects>,
    /// Published steps kept (at least 1).
    pub keep: usize,
}

fn step_dir_name(step: usize) -> String {
    format!("step-{step:08}")
}

/// The step a key belongs to (`step-00000300/...`).
fn step_of(key: &str) -> Option<usize> {
    key.split('/').next()?.strip_prefix("step-")?.parse().ok()
}

/// One line of a manifest: sha256, size, name (checked to stay inside its step).
fn manifest_line(line: &str) -> Result<(&str, u64, &str), String> {
    let mut parts = line.splitn(3, ' ');
    let (Some(sha), Some(size), Some(name)) = (parts.next(), parts.next().and_then(|s| s.parse::<u64>().ok()), parts.next()) else {
        return Err(format!("{MANIFEST} line {line:?} is not \"sha256 size name\""));
    };
    if name.is_empty() || name.contains('/') || name.contains('\\') || name.contains("..") || name.starts_with('.') || name == MANIFEST {
        return Err(format!("{MANIFEST} names {name:?}, outside the step"));
    }
    Ok((sha, size, name))
}

impl CheckpointStore {
    /// A store in the folder `root`.
    pub fn new(root: impl Into<PathBuf>, keep: usize) -> Self {
        Self::on(Arc::new(Folder { root: root.into() }), keep)
    }

    pub fn on(objects: Arc<dyn Objects>, keep: usize) -> Self {
        Self { objects, keep: keep.max(1) }
    }

    /// Publishes `files` (from the run directory; `checkpoint.safetensors` among them,
    /// missing others skipped) as `step`, the manifest last, then removes every step older
    /// than the newest `keep` published ones. Returns the step's key (`step-00000300`).
    pub fn publish(&self, step: usize, run_dir: &Path, files: &[&str]) -> io::Result<String> {
        let at = self.objects.describe();
        let dir = step_dir_name(step);
        let src = run_dir.join(CHECKPOINT);
        if !src.exists() {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("{} does not exist", src.display())));
        }
        // a step published again (an evaluation after its checkpoint) is unpublished first:
        // a crash half way then leaves a step without a manifest, never a mismatched one
        let mut result = self.objects.delete_prefix(&format!("{dir}/{MANIFEST}"));
        let mut manifest = String::new();
        for name in files {
            let src = run_dir.join(name);
            if result.is_err() {
                break;
            }
            if !src.exists() {
                continue;
            }
            result = self.objects.put_file(&format!("{dir}/{name}"), &src).map(|(sha, size)| manifest.push_str(&format!("{sha} {size} {name}\n")));
        }
        let result = result.and_then(|()| self.objects.put_bytes(&format!("{dir}/{MANIFEST}"), manifest.as_bytes()));
        if let Err(e) = result {
            let _ = self.objects.delete_prefix(&dir);
            return Err(io::Error::new(e.kind(), format!("checkpoint store {at}: publishing step {step}: {e}")));
        }
        let published = self.published()?;
        if let Some(&oldest_kept) = published.iter().rev().take(self.keep).last() {
            for old in self.steps()?.into_iter().filter(|s| *s < oldest_kept) {
                let _ = self.objects.delete_prefix(&step_dir_name(old));
            }
        }
        Ok(dir)
    }

    /// Steps in the store, oldest first, published (with a manifest) or not.
    pub fn steps(&self) -> io::Result<Vec<usize>> {
        let mut steps: Vec<usize> = self.objects.list("")?.iter().filter_map(|k| step_of(k)).collect();
        steps.sort_unstable();
        steps.dedup();
        Ok(steps)
    }

    /// Steps with a manifest, oldest first.
    pub fn published(&self) -> io::Result<Vec<usize>> {
        let mut steps: Vec<usize> = self.objects.list("")?.iter().filter(|k| k.ends_with(&format!("/{MANIFEST}"))).filter_map(|k| step_of(k)).collect();
        steps.sort_unstable();
        Ok(steps)
    }

    /// Reads `step`'s manifest and streams each file it lists through a hash into a sink
    /// `stage` gives for its name (None: just hashed). Err: why the step cannot be used.
    fn verify(&self, step: usize, stage: &mut dyn FnMut(&str) -> io::Result<Box<dyn Write>>) -> Result<Vec<String>, String> {
        let dir = step_dir_name(step);
        let mut text = Vec::new();
        if let Err(e) = self.objects.get_into(&format!("{dir}/{MANIFEST}"), &mut text) {
            return Err(format!("no readable {MANIFEST} ({e})"));
        }
        let text = String::from_utf8(text).map_err(|_| format!("{MANIFEST} is not UTF-8"))?;
        let mut names = Vec::new();
        for line in text.lines() {
            let (sha, size, name) = manifest_line(line)?;
            let sink = stage(name).map_err(|e| format!("{name}: {e}"))?;
            let mut w = Hashing::new(sink);
            self.objects.get_into(&format!("{dir}/{name}"), &mut w).map_err(|e| format!("{name}: {e}"))?;
            w.flush().map_err(|e| format!("{name}: {e}"))?;
            let (got, n, _) = w.finish();
            if n != size {
                return Err(format!("{name} is {n} bytes, the manifest says {size} (truncated?)"));
            }
            if got != sha {
                return Err(format!("{name}: sha256 {got} differs from the manifest's {sha} (corrupt)"));
            }
            names.push(name.to_string());
        }
        if !names.iter().any(|n| n == CHECKPOINT) {
            return Err(format!("{MANIFEST} lists no {CHECKPOINT}"));
        }
        Ok(names)
    }

    /// Why the published `step` cannot be used, or None when every file matches its manifest.
    pub fn check(&self, step: usize) -> Option<String> {
        self.verify(step, &mut |_| Ok(Box::new(io::sink()))).err()
    }

    /// Restores into `run_dir` the newest step newer than `newer_than` whose files all match
    /// its manifest, fetching and checking in one pass (into hidden files renamed into place
    /// once all matched); `skipped` hears of every newer step passed over and why. Returns
    /// the step restored, if any.
    pub fn restore_newest(&self, run_dir: &Path, newer_than: Option<usize>, skipped: &mut dyn FnMut(usize, String)) -> io::Result<Option<usize>> {
        std::fs::create_dir_all(run_dir)?;
        let staged = |name: &str| run_dir.join(format!(".{name}.restore"));
        for step in self.published()?.into_iter().rev() {
            if newer_than.is_some_and(|l| step <= l) {
                break;
            }
            let mut open = |name: &str| -> io::Result<Box<dyn Write>> { Ok(Box::new(io::BufWriter::new(std::fs::File::create(staged(name))?))) };
            match self.verify(step, &mut open) {
                Ok(names) => {
                    for name in &names {
                        std::fs::File::open(staged(name))?.sync_all()?;
                        std::fs::rename(staged(name), run_dir.join(name))?;
                    }
                    crate::fsutil::sync_dir(run_dir);
                    return Ok(Some(step));
                }
                Err(why) => {
                    for e in std::fs::read_dir(run_dir)?.flatten() {
                        if e.file_name().to_string_lossy().ends_with(".restore") {
                            let _ = std::fs::remove_file(e.path());
                        }
                    }
                    skipped(step, why)
                }
            }
        }
        Ok(None)
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
        let into = tempfile::tempdir().unwrap();
        let mut skipped = Vec::new();
        assert_eq!(store.restore_newest(into.path(), None, &mut |s, why| skipped.push((s, why))).unwrap(), Some(300));
        assert!(skipped.is_empty());
        let mut names: Vec<String> = std::fs::read_dir(into.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        assert_eq!(names, vec![CHECKPOINT.to_string(), "metrics.jsonl".into()], "absent files are not published, nothing staged is left");
        assert_eq!(std::fs::read_to_string(into.path().join("metrics.jsonl")).unwrap(), "{\"step\":300}\n");
        // nothing newer than what the run directory holds: nothing restored
        assert_eq!(store.restore_newest(into.path(), Some(300), &mut |_, _| {}).unwrap(), None);
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
        let into = tempfile::tempdir().unwrap();
        let mut skipped = Vec::new();
        assert_eq!(store.restore_newest(into.path(), None, &mut |s, why| skipped.push((s, why))).unwrap(), Some(10));
        assert_eq!(skipped.len(), 2);
        assert!(skipped[0].0 == 30 && skipped[0].1.contains("sha256") && skipped[0].1.contains("corrupt"), "{skipped:?}");
        assert!(skipped[1].0 == 20 && skipped[1].1.contains("truncated"), "{skipped:?}");
        assert_eq!(std::fs::read(into.path().join(CHECKPOINT)).unwrap(), "weights at 10".repeat(100).into_bytes());
        assert_eq!(std::fs::read_dir(into.path()).unwrap().count(), 1, "the staged files of the skipped steps are gone");
        // a step without its manifest (a crash before it was written) is not published
        std::fs::remove_file(store_dir.path().join("step-00000010").join(MANIFEST)).unwrap();
        assert!(store.restore_newest(into.path(), None, &mut |_, _| {}).unwrap().is_none());
    }

    #[test]
    fn a_failed_publish_leaves_nothing_behind_and_a_crash_left_step_is_pruned() {
        let store_dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(store_dir.path(), 1);
        let empty = tempfile::tempdir().unwrap();
        assert!(store.publish(5, empty.path(), &[CHECKPOINT]).is_err());
        assert_eq!(std::fs::read_dir(store_dir.path()).unwrap().count(), 0);
        // a step a crash left without its manifest does not count among the kept ones, and
        // goes once a newer step is published
        std::fs::create_dir_all(store_dir.path().join("step-00000007")).unwrap();
        std::fs::write(store_dir.path().join("step-00000007").join(CHECKPOINT), b"half").unwrap();
        store.publish(6, run_dir(6).path(), &[CHECKPOINT]).unwrap();
        assert_eq!((store.steps().unwrap(), store.published().unwrap()), (vec![6, 7], vec![6]));
        store.publish(8, run_dir(8).path(), &[CHECKPOINT]).unwrap();
        assert_eq!(store.steps().unwrap(), vec![8]);
    }
}
