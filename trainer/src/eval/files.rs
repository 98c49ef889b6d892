//! Statistics files and feature matrices.
//!
//! ablate's statistics file is safetensors with `mu` (f64, D), `sigma` (f64, D x D, N-1
//! normalisation), `n` (i64, 1: sample count) and `protocol` (u8: the JSON of the
//! [`Protocol`] the features were taken under, empty if unknown). pytorch-fid's `.npz`
//! (`mu`, `sigma`; no count, no protocol) is read and written too, so reference statistics
//! can move between the tools. Feature matrices are `.npy` (N x D, f32 or f64).

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{EvalError, FeatureStats, GaussianStats, Protocol};

fn err(path: &Path, msg: impl Into<String>) -> EvalError {
    EvalError::File { path: path.display().to_string(), msg: msg.into() }
}

fn is_npz(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("npz"))
}

fn vec_f64(t: &Tensor) -> candle_core::Result<Vec<f64>> {
    t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()
}

/// Saves statistics: `.npz` in pytorch-fid's layout, anything else as ablate's safetensors.
pub fn save_stats(path: &Path, stats: &GaussianStats, protocol: Option<&Protocol>) -> Result<(), EvalError> {
    let d = stats.dim();
    stats.validate("statistics to save")?;
    let mu = Tensor::from_vec(stats.mu.clone(), d, &Device::Cpu)?;
    let sigma = Tensor::from_vec(stats.sigma.clone(), (d, d), &Device::Cpu)?;
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| err(dir, e.to_string()))?;
    }
    if is_npz(path) {
        let write = |tmp: &Path| Tensor::write_npz(&[("mu", &mu), ("sigma", &sigma)], tmp).map_err(std::io::Error::other);
        return crate::fsutil::write_durable_with(path, write).map_err(|e| err(path, e.to_string()));
    }
    let json = protocol.map(|p| serde_json::to_vec(p).expect("protocol serialises")).unwrap_or_default();
    let n = stats.n.ok_or_else(|| err(path, "statistics without a sample count can only be saved as pytorch-fid .npz"))?;
    let mut t = HashMap::new();
    t.insert("mu".to_string(), mu);
    t.insert("sigma".to_string(), sigma);
    t.insert("n".to_string(), Tensor::new(&[n as i64], &Device::Cpu)?);
    let len = json.len();
    t.insert("protocol".to_string(), Tensor::from_vec(json, len, &Device::Cpu)?);
    crate::fsutil::write_durable_with(path, |tmp| candle_core::safetensors::save(&t, tmp).map_err(std::io::Error::other)).map_err(|e| err(path, e.to_string()))
}

/// Loads statistics saved by [`save_stats`] or by pytorch-fid (`.npz` with `mu`, `sigma`).
pub fn load_stats(path: &Path) -> Result<(GaussianStats, Option<Protocol>), EvalError> {
    if !path.is_file() {
        return Err(err(path, "no such statistics file"));
    }
    let (stats, protocol) = if is_npz(path) {
        let arrays: HashMap<String, Tensor> = Tensor::read_npz(path).map_err(|e| err(path, format!("not a readable .npz: {e}")))?.into_iter().collect();
        let get = |k: &str| arrays.get(k).ok_or_else(|| err(path, format!("no `{k}` array (pytorch-fid statistics hold `mu` and `sigma`)")));
        (GaussianStats { mu: vec_f64(get("mu")?)?, sigma: vec_f64(get("sigma")?)?, n: None }, None)
    } else {
        let t = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| err(path, format!("not a statistics file: {e}")))?;
        let get = |k: &str| t.get(k).ok_or_else(|| err(path, format!("no `{k}` tensor: not an ablate statistics file")));
        let n = get("n")?.to_dtype(DType::I64).and_then(|t| t.flatten_all()?.to_vec1::<i64>()).map_err(|e| err(path, format!("`n`: {e}")))?;
        let n = match n.first() {
            Some(&v) => Some(u64::try_from(v).map_err(|_| err(path, format!("`n` is {v}, not a sample count")))?),
            None => return Err(err(path, "`n` is empty")),
        };
        let json = get("protocol")?.flatten_all().and_then(|t| t.to_vec1::<u8>()).map_err(|e| err(path, format!("`protocol` must be UTF-8 JSON bytes: {e}")))?;
        let protocol = if json.is_empty() { None } else { Some(serde_json::from_slice(&json).map_err(|e| err(path, format!("protocol: {e}")))?) };
        (GaussianStats { mu: vec_f64(get("mu")?)?, sigma: vec_f64(get("sigma")?)?, n }, protocol)
    };
    stats.validate(&path.display().to_string()).map_err(|e| err(path, e.to_string()))?;
    Ok((stats, protocol))
}

/// Reads an N x D `.npy` feature matrix (f32 or f64) into statistics.
pub fn stats_from_npy(path: &Path) -> Result<GaussianStats, EvalError> {
    let t = Tensor::read_npy(path).map_err(|e| err(path, format!("not a readable .npy: {e}")))?;
    let (n, d) = t.dims2().map_err(|_| err(path, format!("expected an N x D feature matrix, got shape {:?}", t.dims())))?;
    if !matches!(t.dtype(), DType::F32 | DType::F64) {
        return Err(err(path, format!("features must be float32 or float64, got {:?}", t.dtype())));
    }
    let mut s = FeatureStats::new(d);
    s.add_rows(&vec_f64(&t)?).map_err(|e| err(path, e.to_string()))?;
    if n < 2 {
        return Err(err(path, format!("{n} feature rows: FD needs at least 2")));
    }
    s.finish()
}

/// Cache of reference statistics keyed by (dataset, network weights hash, N).
pub struct ReferenceCache {
    pub dir: PathBuf,
}

impl ReferenceCache {
    pub fn path(&self, dataset: &str, network_hash: &str, n: u64) -> PathBuf {
        let safe: String = dataset.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' }).collect();
        self.dir.join(format!("{safe}-{}-n{n}.safetensors", &network_hash[..network_hash.len().min(16)]))
    }

    /// The cached statistics, or `compute()` saved for next time.
    pub fn get_or_compute(
        &self,
        dataset: &str,
        network_hash: &str,
        n: u64,
        protocol: &Protocol,
        compute: impl FnOnce() -> Result<GaussianStats, EvalError>,
    ) -> Result<GaussianStats, EvalError> {
        let path = self.path(dataset, network_hash, n);
        if path.is_file() {
            if let Ok((s, Some(p))) = load_stats(&path) {
                if s.n == Some(n) && p.weights_sha256 == network_hash {
                    return Ok(s);
                }
            }
        }
        let s = compute()?;
        save_stats(&path, &s, Some(protocol))?;
        Ok(s)
    }

    /// The cached reference embeddings (`n` rows of `dim`, row-major) for `protocol`, or
    /// `compute()` saved for next time. A file made under another protocol, or of another
    /// shape, is recomputed over.
    pub fn embeddings(&self, dataset: &str, network_hash: &str, n: u64, dim: usize, protocol: &Protocol, compute: impl FnOnce() -> Result<Vec<f32>, EvalError>) -> Result<Vec<f32>, EvalError> {
        let path = self.path(&format!("{dataset}-embeddings"), network_hash, n);
        let want = serde_json::to_string(protocol).expect("protocol serialises");
        if let Ok(l) = super::weights::read_weights(&path, &Device::Cpu) {
            if let (Some(t), Some(p)) = (l.tensors.get("embeddings"), l.metadata.get("protocol")) {
                if *p == want && t.dims() == [n as usize, dim] {
                    return Ok(t.flatten_all()?.to_vec1()?);
                }
            }
        }
        let rows = compute()?;
        if rows.len() != n as usize * dim {
            return Err(EvalError::Shape(format!("{} reference embedding values are not {n} x {dim}", rows.len())));
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(dir, e.to_string()))?;
        }
        let t = HashMap::from([("embeddings".to_string(), Tensor::from_vec(rows.clone(), (n as usize, dim), &Device::Cpu)?)]);
        super::weights::write_weights(&path, &t, HashMap::from([("protocol".to_string(), want)]))?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> GaussianStats {
        let mut s = FeatureStats::new(3);
        s.add_rows(&[1.0f64, 2.0, 0.5, 0.0, 1.0, 4.0, 2.0, 2.0, 2.0, 1.5, -1.0, 0.0]).unwrap();
        s.finish().unwrap()
    }

    /// Reference embeddings are computed once per (set, network, N, protocol): the second
    /// call reads the file, another protocol (e.g. another resize) computes anew.
    #[test]
    fn reference_embeddings_are_cached_by_protocol() {
        let dir = std::env::temp_dir().join(format!("ablate-emb-cache-{}", std::process::id()));
        let cache = ReferenceCache { dir: dir.clone() };
        let mut p = Protocol { metric: "cmmd".into(), network: "clip".into(), weights_sha256: "abcdef0123456789ff".into(), samples: 2, sampler_steps: Some(20), guidance: Some(3.5), seed: Some(1), reference: "r".into(), resize: "bicubic 336".into() };
        let rows = vec![0.5f32, -1.0, 2.0, 0.25, 1.0, 3.0];
        let mut calls = 0;
        let mut get = |p: &Protocol| cache.embeddings("set-32px", &p.weights_sha256, 2, 3, p, || {
            calls += 1;
            Ok(rows.clone())
        });
        assert_eq!(get(&p).unwrap(), rows);
        assert_eq!(get(&p).unwrap(), rows);
        p.resize = "bicubic 224".into();
        assert_eq!(get(&p).unwrap(), rows);
        assert_eq!(calls, 2, "computed for the first protocol, read back, computed for the second");
        let wrong = cache.embeddings("set-32px", "abcdef0123456789ff", 3, 3, &p, || Ok(vec![1.0; 8]));
        assert!(wrong.unwrap_err().to_string().contains("8 reference embedding values are not 3 x 3"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn safetensors_and_npz_round_trip() {
        let dir = std::env::temp_dir().join(format!("ablate-stats-{}", std::process::id()));
        let s = stats();
        let p = Protocol {
            metric: "fid".into(),
            network: "x".into(),
            weights_sha256: "00".into(),
            samples: 4,
            sampler_steps: None,
            guidance: None,
            seed: None,
            reference: "r".into(),
            resize: "none".into(),
        };
        save_stats(&dir.join("a.safetensors"), &s, Some(&p)).unwrap();
        let (back, proto) = load_stats(&dir.join("a.safetensors")).unwrap();
        assert_eq!(back, s);
        assert_eq!(proto.unwrap(), p);
        save_stats(&dir.join("a.npz"), &s, None).unwrap();
        let (npz, none) = load_stats(&dir.join("a.npz")).unwrap();
        assert_eq!((npz.mu.clone(), npz.sigma.clone(), npz.n, none), (s.mu.clone(), s.sigma.clone(), None, None));
        let e = load_stats(&dir.join("missing.npz")).unwrap_err().to_string();
        assert!(e.contains("no such statistics file"), "{e}");
        std::fs::write(dir.join("bad.safetensors"), b"garbage").unwrap();
        assert!(load_stats(&dir.join("bad.safetensors")).unwrap_err().to_string().contains("not a statistics file"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
