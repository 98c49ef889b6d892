//! The project's one way to write a file that must survive a crash whole (checkpoints,
//! evaluation data, statistics caches, sample grids, results, a sweep's record): the content
//! goes to a temporary file next to the target, which is fsynced and renamed over the target,
//! then the directory is fsynced so the rename itself is durable. A crash at any point leaves
//! either the old file or the new one, never a torn one; a failed write removes its temporary
//! file and leaves the old file untouched.

use std::io;
use std::path::{Path, PathBuf};

/// The temporary file a write of `path` goes through: hidden, next to it, unique per process.
fn temporary(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Writes `path` durably; `write` fills the temporary file whose path it is given (for
/// writers that take a path, such as safetensors).
pub fn write_durable_with(path: &Path, write: impl FnOnce(&Path) -> io::Result<()>) -> io::Result<()> {
    let tmp = temporary(path);
    let done = write(&tmp).and_then(|()| std::fs::File::open(&tmp)?.sync_all()).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = done {
        let _ = std::fs::remove_file(&tmp);
        return Err(io::Error::new(e.kind(), format!("writing {}: {e}", path.display())));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        sync_dir(dir);
    }
    Ok(())
}

/// Fsyncs a directory, so renames and creations in it are durable (a directory fsync is not
/// supported everywhere; what was renamed has been renamed either way).
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Writes `bytes` to `path` durably.
pub fn write_durable(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_durable_with(path, |tmp| std::fs::write(tmp, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_and_a_failed_write_keeps_the_old_file() {
        let dir = std::env::temp_dir().join(format!("ablate-fsutil-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("results.json");
        write_durable(&p, b"old").unwrap();
        write_durable(&p, b"new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        let err = write_durable_with(&p, |tmp| {
            std::fs::write(tmp, b"partial")?;
            Err(io::Error::other("disk full"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("results.json") && err.to_string().contains("disk full"), "{err}");
        assert_eq!(std::fs::read(&p).unwrap(), b"new", "the old file is untouched");
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 1, "no temporary file is left behind: {left:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
