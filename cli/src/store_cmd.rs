//! `ablate store backup|restore|inspect`: the coordinator's state as a file and back.
//!
//! `backup FILE` asks a running coordinator (an admin's token) for every key of its store as
//! one consistent snapshot (`ExportStore`: one read transaction of redb, one revision of
//! etcd) and writes it, mode 0600 (it holds the token hashes and the job-secret key), as
//! JSON lines: a header, one line per key (the value in hex), and a trailer with the
//! SHA-256 of everything before it. `restore FILE --store SPEC` checks the file whole first,
//! then writes every key into a store that must be empty (the coordinator stopped; a redb
//! file, or an etcd namespace), so nothing stored is ever overwritten. `inspect` counts the
//! keys of a backup or of a store (stopped) by kind.

use ablate_coordinator::store::{self, Op};
use ablate_proto::v1::{self, admin_service_client::AdminServiceClient};
use anyhow::{bail, Context};
use clap::Subcommand;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::conn::{channel, token_from};

const FORMAT: &str = "ablate-store-backup";
const VERSION: u64 = 1;

#[derive(Subcommand)]
pub enum StoreCmd {
    /// Write a running coordinator's whole store to FILE (mode 0600: it holds secrets).
    Backup {
        file: PathBuf,
        /// The coordinator's gRPC URL (several, comma-separated, for an HA set).
        #[arg(long, default_value = "http://127.0.0.1:7070")]
        coordinator: String,
        /// A file holding an admin's token (default: $ABLATE_TOKEN or $ABLATE_TOKEN_FILE).
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// Write a backup into an empty store (the coordinator stopped): a redb path or etcd://.
    Restore {
        file: PathBuf,
        #[arg(long)]
        store: String,
    },
    /// Count the keys of a backup file or of a store (stopped) by kind.
    Inspect {
        /// A backup file.
        #[arg(long, conflicts_with = "store", required_unless_present = "store")]
        backup: Option<PathBuf>,
        /// A store: a redb path or etcd://.
        #[arg(long)]
        store: Option<String>,
    },
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// The lines of a backup: header, entries, trailer with the SHA-256 of the lines before it.
fn encode(entries: &[(String, Vec<u8>)]) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let mut body = serde_json::json!({"format": FORMAT, "version": VERSION, "keys": entries.len(), "created_unix_ms": now}).to_string() + "\n";
    for (k, v) in entries {
        body.push_str(&(serde_json::json!({"key": k, "value": hex(v)}).to_string() + "\n"));
    }
    let sha = hex(&Sha256::digest(body.as_bytes()));
    body + &serde_json::json!({"sha256": sha}).to_string() + "\n"
}

/// The entries of a backup, checked whole: format, version, every line, the key count and
/// the checksum. Any damage is an error naming it.
fn decode(path: &Path) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let bad = |why: String| anyhow::anyhow!("{} is not a whole ablate store backup: {why}", path.display());
    let body_end = text.trim_end_matches('\n').rfind('\n').map(|i| i + 1).ok_or_else(|| bad("it has no trailer".into()))?;
    let (body, trailer) = text.split_at(body_end);
    let trailer: serde_json::Value = serde_json::from_str(trailer.trim()).map_err(|e| bad(format!("its last line is not the checksum ({e})")))?;
    let want = trailer["sha256"].as_str().ok_or_else(|| bad("its last line is not the checksum".into()))?;
    let got = hex(&Sha256::digest(body.as_bytes()));
    if got != want {
        return Err(bad(format!("its SHA-256 is {got}, the trailer says {want} (truncated or changed)")));
    }
    let mut lines = body.lines();
    let header: serde_json::Value = serde_json::from_str(lines.next().unwrap_or("")).map_err(|e| bad(format!("no header ({e})")))?;
    if header["format"] != FORMAT {
        return Err(bad(format!("its format is {}, not {FORMAT}", header["format"])));
    }
    if header["version"].as_u64() != Some(VERSION) {
        bail!("{} is a version {} backup; this ablate reads version {VERSION}", path.display(), header["version"]);
    }
    let mut out = Vec::new();
    for (i, l) in lines.enumerate() {
        let v: serde_json::Value = serde_json::from_str(l).map_err(|e| bad(format!("line {}: {e}", i + 2)))?;
        let (Some(k), Some(val)) = (v["key"].as_str(), v["value"].as_str().and_then(unhex)) else { return Err(bad(format!("line {} is not a key and a hex value", i + 2))) };
        out.push((k.to_string(), val));
    }
    if header["keys"].as_u64() != Some(out.len() as u64) {
        return Err(bad(format!("its header says {} keys, it holds {}", header["keys"], out.len())));
    }
    Ok(out)
}

/// Keys by kind: the first path segment (`jobs`, `auth`, `drained`, ...).
fn kinds<'a>(keys: impl Iterator<Item = &'a str>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for k in keys {
        *out.entry(k.split('/').next().unwrap_or(k).to_string()).or_default() += 1;
    }
    out
}

fn print_kinds(what: &str, k: &BTreeMap<String, usize>) {
    println!("{what}: {} keys", k.values().sum::<usize>());
    for (kind, n) in k {
        println!("  {kind:<12} {n}");
    }
}

pub fn store(cmd: StoreCmd) -> anyhow::Result<()> {
    match cmd {
        StoreCmd::Backup { file, coordinator, token_file } => {
            if file.exists() {
                bail!("{} exists: a backup never overwrites a file", file.display());
            }
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let entries = rt.block_on(async {
                let token = token_from(token_file.as_deref())?;
                let mut c = AdminServiceClient::new(channel(&coordinator, token.as_deref()).await?).max_decoding_message_size(ablate_proto::MAX_MESSAGE_BYTES);
                let mut stream = c.export_store(v1::ExportStoreRequest {}).await.map_err(|e| anyhow::anyhow!("{}", e.message()))?.into_inner();
                let mut entries = Vec::new();
                loop {
                    let Some(b) = stream.message().await.map_err(|e| anyhow::anyhow!("{}", e.message()))? else { bail!("the coordinator ended the export early: nothing written") };
                    entries.extend(b.entries.into_iter().map(|e| (e.key, e.value)));
                    if b.last {
                        anyhow::ensure!(b.total == entries.len() as u64, "the export announced {} keys and sent {}: nothing written", b.total, entries.len());
                        break;
                    }
                }
                anyhow::Ok(entries)
            })?;
            let text = encode(&entries);
            write_secret(&file, text.as_bytes())?;
            print_kinds(&format!("backup of {coordinator} in {}", file.display()), &kinds(entries.iter().map(|(k, _)| k.as_str())));
            Ok(())
        }
        StoreCmd::Restore { file, store: spec } => {
            let entries = decode(&file)?;
            let kv = store::open(&spec).map_err(|e| anyhow::anyhow!("{e}"))?;
            let present = kv.range("").map_err(|e| anyhow::anyhow!("{e}"))?;
            if !present.is_empty() {
                bail!("{spec} already holds {} keys ({}): a restore goes into an empty store only, so nothing stored is overwritten", present.len(), kinds(present.iter().map(|e| e.key.as_str())).keys().cloned().collect::<Vec<_>>().join(", "));
            }
            let mut written = 0;
            for chunk in entries.chunks(kv.max_txn_ops().clamp(1, 128)) {
                let ops: Vec<Op> = chunk.iter().map(|(k, v)| Op::Put(k.clone(), v.clone())).collect();
                kv.txn(&[], &ops, &[]).map_err(|e| anyhow::anyhow!("{e} after {written} of {} keys: clear {spec} before trying again", entries.len()))?;
                written += chunk.len();
            }
            print_kinds(&format!("restored {} into {spec}", file.display()), &kinds(entries.iter().map(|(k, _)| k.as_str())));
            Ok(())
        }
        StoreCmd::Inspect { backup, store: spec } => {
            if let Some(f) = backup {
                let entries = decode(&f)?;
                print_kinds(&format!("backup {} (whole, checksum good)", f.display()), &kinds(entries.iter().map(|(k, _)| k.as_str())));
            } else if let Some(spec) = spec {
                let kv = store::open(&spec).map_err(|e| anyhow::anyhow!("{e}"))?;
                let entries = kv.range("").map_err(|e| anyhow::anyhow!("{e}"))?;
                print_kinds(&format!("store {spec} at revision {}", kv.revision().map_err(|e| anyhow::anyhow!("{e}"))?), &kinds(entries.iter().map(|e| e.key.as_str())));
            }
            Ok(())
        }
    }
}

/// Writes a new file readable by its owner only (durably: synced before it is named).
fn write_secret(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("partial");
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::hard_link(&tmp, path).with_context(|| format!("naming {}", path.display()))?;
    let _ = std::fs::remove_file(&tmp);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_decodes_to_what_was_encoded_and_any_damage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let entries = vec![("jobs/j000001".to_string(), vec![0u8, 1, 255]), ("auth/job-key".to_string(), b"secret".to_vec())];
        let p = dir.path().join("b.jsonl");
        std::fs::write(&p, encode(&entries)).unwrap();
        assert_eq!(decode(&p).unwrap(), entries);
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, text.replace("\"value\":\"0001ff\"", "\"value\":\"0002ff\"")).unwrap();
        assert!(decode(&p).unwrap_err().to_string().contains("SHA-256"));
        let cut: String = text.lines().take(2).map(|l| format!("{l}\n")).collect();
        std::fs::write(&p, cut).unwrap();
        assert!(decode(&p).unwrap_err().to_string().contains("not a whole ablate store backup"));
    }
}
