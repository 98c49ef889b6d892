//! The checkpoint store on an S3-compatible object store (AWS S3, MinIO, Ceph RGW, GCS's S3
//! interface, moto in the tests), through the `object_store` crate, and the one parser of a
//! `--checkpoint-store` spec:
//!
//! - a folder: `/shared/ckpt` (every worker must reach it at that path);
//! - an object store: `s3://bucket/prefix?endpoint=http://host:9000&region=eu-west-1`.
//!   Credentials come from the usual environment (`AWS_ACCESS_KEY_ID`,
//!   `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, or the instance's role), never from the
//!   spec, which shows in process lists; `endpoint` and `region` may come from
//!   `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT`) and `AWS_REGION` too. A plain-http endpoint is allowed only on a
//!   loopback address.
//!
//! Each job gets its own prefix (`<spec>/<job>`: [`for_job`]). Files go up in 8 MiB parts,
//! hashed on the way; downloads stream into the caller's sink.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use ablate_trainer::ckpt_store::{CheckpointStore, Folder, Hashing, Objects};
use futures_util::{StreamExt, TryStreamExt};
use object_store::{path::Path as Key, ObjectStore, WriteMultipart};

/// Upload part size (S3's minimum is 5 MiB for all parts but the last).
const PART: usize = 8 << 20;

/// The store a spec names, holding at most `keep` published steps.
pub fn open(spec: &str, keep: usize) -> Result<CheckpointStore, String> {
    if spec.starts_with("s3://") {
        return Ok(CheckpointStore::on(Arc::new(S3::open(spec)?), keep));
    }
    if spec.contains("://") {
        return Err(format!("checkpoint store {spec:?}: only folders and s3://bucket/prefix are known"));
    }
    Ok(CheckpointStore::on(Arc::new(Folder { root: spec.into() }), keep))
}

/// The spec of `job`'s own part of the store `spec` names.
pub fn for_job(spec: &str, job: &str) -> String {
    if spec.starts_with("s3://") {
        let (base, query) = spec.split_once('?').map(|(b, q)| (b, Some(q))).unwrap_or((spec, None));
        let base = format!("{}/{job}", base.trim_end_matches('/'));
        return query.map(|q| format!("{base}?{q}")).unwrap_or(base);
    }
    Path::new(spec).join(job).display().to_string()
}

/// An S3 bucket and a prefix in it, with the runtime its calls run on (the trainer that
/// publishes and restores is synchronous).
pub struct S3 {
    store: Box<dyn ObjectStore>,
    prefix: String,
    url: String,
    rt: tokio::runtime::Runtime,
}

impl std::fmt::Debug for S3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

fn is_loopback(endpoint: &str) -> bool {
    let rest = endpoint.trim_start_matches("http://");
    let host = match rest.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => rest.split(['/', ':']).next().unwrap_or(""),
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl S3 {
    /// `s3://bucket[/prefix][?endpoint=URL&region=R]`.
    pub fn open(spec: &str) -> Result<Self, String> {
        let err = |m: String| format!("checkpoint store {spec:?}: {m}");
        let rest = spec.strip_prefix("s3://").ok_or_else(|| err("not an s3:// URL".into()))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        if bucket.is_empty() {
            return Err(err("names no bucket (s3://bucket/prefix)".into()));
        }
        let mut b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
        let mut endpoint = std::env::var("AWS_ENDPOINT_URL").or_else(|_| std::env::var("AWS_ENDPOINT")).ok();
        for kv in query.split('&').filter(|kv| !kv.is_empty()) {
            match kv.split_once('=') {
                Some(("endpoint", v)) => endpoint = Some(v.to_string()),
                Some(("region", v)) => b = b.with_region(v),
                _ => return Err(err(format!("unknown option {kv:?} (endpoint=URL, region=NAME; credentials come from the environment)"))),
            }
        }
        if std::env::var_os("AWS_REGION").is_none() && std::env::var_os("AWS_DEFAULT_REGION").is_none() && !query.contains("region=") {
            b = b.with_region("us-east-1");
        }
        if let Some(e) = &endpoint {
            if e.starts_with("http://") {
                if !is_loopback(e) {
                    return Err(err(format!("endpoint {e} is plain http on a non-loopback address: use https")));
                }
                b = b.with_allow_http(true);
            }
            b = b.with_endpoint(e);
        }
        // a few quick retries: a checkpoint write is not worth minutes of backing off, and an
        // unreachable store must say so soon
        b = b.with_retry(object_store::RetryConfig { max_retries: 4, retry_timeout: std::time::Duration::from_secs(30), ..Default::default() });
        let store = b.build().map_err(|e| err(e.to_string()))?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| err(format!("runtime: {e}")))?;
        let prefix = prefix.trim_matches('/').to_string();
        Ok(Self { store: Box::new(store), prefix, url: spec.split('?').next().unwrap_or(spec).to_string(), rt })
    }

    fn key(&self, key: &str) -> Key {
        Key::from(if self.prefix.is_empty() { key.to_string() } else { format!("{}/{key}", self.prefix) })
    }

    fn fail(&self, key: &str) -> impl Fn(object_store::Error) -> io::Error + '_ {
        let at = format!("{}/{key}", self.url);
        move |e| match e {
            object_store::Error::NotFound { .. } => io::Error::new(io::ErrorKind::NotFound, format!("{at}: not found")),
            e => io::Error::other(format!("{at}: {e}")),
        }
    }
}

impl Objects for S3 {
    fn put_file(&self, key: &str, src: &Path) -> io::Result<(String, u64)> {
        let mut from = std::fs::File::open(src).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", src.display())))?;
        let location = self.key(key);
        self.rt.block_on(async {
            let upload = self.store.put_multipart(&location).await.map_err(self.fail(key))?;
            let mut parts = WriteMultipart::new_with_chunk_size(upload, PART);
            let mut hashed = Hashing::new(io::sink());
            let mut buf = vec![0u8; PART];
            loop {
                let n = match from.read(&mut buf) {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = parts.abort().await;
                        return Err(e);
                    }
                };
                if n == 0 {
                    break;
                }
                hashed.write_all(&buf[..n])?;
                // at most two parts in flight: memory stays bounded for any checkpoint size
                parts.wait_for_capacity(2).await.map_err(self.fail(key))?;
                parts.write(&buf[..n]);
            }
            parts.finish().await.map_err(self.fail(key))?;
            let (sha, size, _) = hashed.finish();
            Ok((sha, size))
        })
    }

    fn put_bytes(&self, key: &str, bytes: &[u8]) -> io::Result<()> {
        self.rt.block_on(self.store.put(&self.key(key), bytes.to_vec().into())).map(|_| ()).map_err(self.fail(key))
    }

    fn get_into(&self, key: &str, sink: &mut dyn Write) -> io::Result<u64> {
        self.rt.block_on(async {
            let mut stream = self.store.get(&self.key(key)).await.map_err(self.fail(key))?.into_stream();
            let mut n = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(self.fail(key))?;
                sink.write_all(&chunk)?;
                n += chunk.len() as u64;
            }
            Ok(n)
        })
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        let base = self.key(prefix.trim_end_matches('/'));
        let strip = if self.prefix.is_empty() { String::new() } else { format!("{}/", self.prefix) };
        let metas: Vec<object_store::ObjectMeta> = self.rt.block_on(self.store.list(Some(&base)).try_collect()).map_err(self.fail(prefix))?;
        Ok(metas.into_iter().filter_map(|m| m.location.as_ref().strip_prefix(&strip).map(str::to_string)).collect())
    }

    fn delete_prefix(&self, prefix: &str) -> io::Result<()> {
        let keys = self.list(prefix)?;
        // a key equal to the prefix itself (an object, not a folder) goes too
        let own = self.rt.block_on(self.store.head(&self.key(prefix))).is_ok();
        for k in keys.iter().map(String::as_str).chain(own.then_some(prefix)) {
            match self.rt.block_on(self.store.delete(&self.key(k))) {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.fail(k)(e)),
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        self.url.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_name_folders_or_buckets_and_each_job_gets_its_own_part() {
        assert_eq!(for_job("s3://b/ckpt?endpoint=http://127.0.0.1:9/&region=x", "j000001"), "s3://b/ckpt/j000001?endpoint=http://127.0.0.1:9/&region=x");
        assert_eq!(for_job("s3://b", "j1"), "s3://b/j1");
        assert_eq!(for_job("/shared/ckpt", "j1"), "/shared/ckpt/j1");
        for (bad, says) in [("gs://b/x", "only folders and s3://"), ("s3:///x", "names no bucket"), ("s3://b/x?secret=1", "unknown option \"secret=1\""), ("s3://b/x?endpoint=http://10.0.0.5:9000", "plain http on a non-loopback")] {
            let e = open(bad, 1).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert!(open("s3://b/x?endpoint=http://127.0.0.1:9000", 1).is_ok());
    }
}
