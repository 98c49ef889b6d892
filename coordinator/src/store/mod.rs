//! The coordinator's state store: one key-value interface shaped like etcd v3 (get, range by
//! prefix, put, delete, transactions that compare revisions), so an etcd backend can plug
//! in behind the same trait. Keys are UTF-8 paths (`jobs/j000001`), values opaque bytes.
//!
//! Every successful write bumps the store's revision; each entry remembers the revision
//! that created it, the one that last modified it, and its version (writes since creation),
//! exactly the numbers etcd's compare-and-swap works on.
//!
//! Backends: [`redb::RedbStore`] (embedded, crash-safe, the default),
//! [`etcd::EtcdStore`] (an etcd cluster: `etcd://host:port,.../namespace/`) and
//! [`memory::MemoryStore`] (tests, benchmarks). [`conformance`] holds the tests every
//! backend must pass.

pub mod conformance;
pub mod etcd;
pub mod etcd_access;
pub mod local_etcd;
pub mod memory;
pub mod redb;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
}

/// A condition of a transaction on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key's last modification happened at this revision (0: the key does not exist).
    ModRevision(String, u64),
    /// The key holds exactly this value.
    Value(String, Vec<u8>),
    /// The key exists (true) or does not (false).
    Exists(String, bool),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put(String, Vec<u8>),
    Delete(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResult {
    /// Whether every compare held (and so the success ops ran).
    pub succeeded: bool,
    /// The store's revision after the transaction.
    pub revision: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {message}")]
    Open { path: String, message: String },
    #[error("store {op} of {key:?}: {message}")]
    Backend { op: &'static str, key: String, message: String },
    #[error("store key {0:?} is empty or not a path")]
    BadKey(String),
    #[error("store {op} of {key:?} refused: this coordinator is no longer the leader ({holder} holds the leadership now); nothing was written")]
    Fenced { op: &'static str, key: String, holder: String },
}

/// The store interface. Implementations are shared between tasks (`Arc<dyn Kv>`); every
/// call is one atomic, durable operation.
pub trait Kv: Send + Sync {
    fn get(&self, key: &str) -> Result<Option<Entry>, StoreError>;
    /// Every entry whose key starts with `prefix`, in key order.
    fn range(&self, prefix: &str) -> Result<Vec<Entry>, StoreError>;
    /// Returns the new revision.
    fn put(&self, key: &str, value: &[u8]) -> Result<u64, StoreError>;
    /// Whether the key existed.
    fn delete(&self, key: &str) -> Result<bool, StoreError>;
    /// If every compare holds, applies `success`, else `failure`, atomically.
    fn txn(&self, compares: &[Compare], success: &[Op], failure: &[Op]) -> Result<TxnResult, StoreError>;
    /// The revision of the last write (0 for an empty store).
    fn revision(&self) -> Result<u64, StoreError>;
    /// The most compares, and the most operations per branch, that one [`Kv::txn`] takes
    /// (etcd: its `--max-txn-ops`, 128 by default); a caller splits larger writes.
    fn max_txn_ops(&self) -> usize {
        usize::MAX
    }
}

pub(crate) fn check_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() || key.starts_with('/') || key.contains('\0') {
        return Err(StoreError::BadKey(key.to_string()));
    }
    Ok(())
}

/// Evaluates compares against a lookup (shared by the backends).
pub(crate) fn holds(c: &Compare, get: &mut dyn FnMut(&str) -> Result<Option<Entry>, StoreError>) -> Result<bool, StoreError> {
    Ok(match c {
        Compare::ModRevision(k, r) => get(k)?.map(|e| e.mod_revision).unwrap_or(0) == *r,
        Compare::Value(k, v) => get(k)?.is_some_and(|e| &e.value == v),
        Compare::Exists(k, want) => get(k)?.is_some() == *want,
    })
}

/// Opens the store named on the command line: a file path (redb), `etcd://...` or `memory:`.
pub fn open(spec: &str) -> Result<std::sync::Arc<dyn Kv>, StoreError> {
    if spec == "memory:" {
        return Ok(std::sync::Arc::new(memory::MemoryStore::default()));
    }
    if spec.starts_with("etcd://") {
        return Ok(std::sync::Arc::new(etcd::EtcdStore::open(spec)?));
    }
    if spec.starts_with("http://") || spec.starts_with("https://") {
        return Err(StoreError::Open { path: spec.into(), message: "an etcd store is named etcd://host:port[,host:port...][/namespace/][?ca=...&user=...] (TLS and auth are options after the ?; see docs/security.md)".into() });
    }
    Ok(std::sync::Arc::new(redb::RedbStore::open(std::path::Path::new(spec))?))
}
