//! Job inputs confined to a worker's data roots (`ablate worker --data-root`): every file or
//! folder a job's config names (datasets, autoencoder, teacher and text-encoder weights, the
//! evaluation set and networks) must resolve, after `..` and symlinks, inside one of them,
//! or the job is refused before a rank starts, with the key, the path and the roots in the
//! message. A worker without roots confines nothing (and says so when it starts).

use std::path::{Path, PathBuf};

/// The roots, resolved (each must exist).
pub fn resolve_roots(roots: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    roots.iter().map(|r| std::fs::canonicalize(r).map_err(|e| format!("--data-root {}: {e}", r.display()))).collect()
}

/// Ok when every input path of `config_toml` lies inside `roots` (resolved roots; empty:
/// no confinement).
pub fn check(config_toml: &str, roots: &[PathBuf]) -> Result<(), String> {
    if roots.is_empty() {
        return Ok(());
    }
    let cfg = ablate_trainer::TrainConfig::from_toml_str(config_toml, "the job's config").map_err(|e| e.to_string())?;
    let shown = || roots.iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", ");
    // a folder the job names for its checkpoints is written to: it must lie inside a root too
    let store = cfg.train.checkpoint_store.clone().filter(|s| !s.starts_with("s3://")).map(|s| ("train.checkpoint_store".to_string(), s));
    for (key, path) in cfg.input_paths().into_iter().chain(store) {
        let resolved = std::fs::canonicalize(Path::new(&path)).map_err(|e| format!("{key} = {path:?}: {e} on this worker (its data roots: {})", shown()))?;
        if !roots.iter().any(|r| resolved.starts_with(r)) {
            return Err(format!("{key} = {path:?} resolves to {} outside this worker's data roots ({})", resolved.display(), shown()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_outside_the_roots_are_refused_after_dotdot_and_symlinks() {
        let base = std::env::temp_dir().join(format!("ablate-confine-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let (root, outside) = (base.join("data"), base.join("secret"));
        std::fs::create_dir_all(root.join("set")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        let roots = resolve_roots(std::slice::from_ref(&root)).unwrap();
        let cfg = |p: &Path| format!("[[data.phases]]\nsource = \"folder\"\npath = {:?}\n", p.display().to_string());
        assert!(check(&cfg(&root.join("set")), &roots).is_ok());
        assert!(check(&cfg(&outside), &[]).is_ok(), "no roots, no confinement");
        for bad in [outside.clone(), root.join("set/../../secret"), root.join("link")] {
            let e = check(&cfg(&bad), &roots).unwrap_err();
            assert!(e.contains("data.phases[0].path") && e.contains("outside this worker's data roots"), "{e}");
        }
        let e = check(&cfg(&root.join("missing")), &roots).unwrap_err();
        assert!(e.contains("No such file"), "{e}");
        let e = check("[latent]\nkind = \"ae-lean\"\nweights = \"/etc/passwd\"\n", &roots).unwrap_err();
        assert!(e.contains("latent.weights"), "{e}");
        // a folder the job names for its checkpoints is written to: inside a root, or refused
        let store = |p: &Path| format!("[train]\ncheckpoint_store = {:?}\n", p.display().to_string());
        assert!(check(&store(&root.join("set")), &roots).is_ok());
        let e = check(&store(&outside), &roots).unwrap_err();
        assert!(e.contains("train.checkpoint_store") && e.contains("outside this worker's data roots"), "{e}");
        assert!(check("[train]\ncheckpoint_store = \"s3://bucket/ckpt\"\n", &roots).is_ok(), "an object store is no path of this worker");
        assert!(resolve_roots(&[base.join("nope")]).unwrap_err().contains("--data-root"));
        let _ = std::fs::remove_dir_all(&base);
    }
}
