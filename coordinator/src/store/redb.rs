//! The embedded [`Kv`] backend: one redb file (copy-on-write B-trees, ACID, crash-safe:
//! every call commits durably before it returns). Each value is stored behind a 24-byte
//! header holding its create revision, mod revision and version.

use ::redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;

use super::{check_key, holds, Compare, Entry, Kv, Op, StoreError, TxnResult};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION: &str = "revision";

pub struct RedbStore {
    db: Database,
    path: String,
}

fn backend<'a>(op: &'static str, key: &'a str) -> impl Fn(String) -> StoreError + 'a {
    move |message| StoreError::Backend { op, key: key.to_string(), message }
}

fn decode(key: &str, raw: &[u8]) -> Result<Entry, StoreError> {
    if raw.len() < 24 {
        return Err(StoreError::Backend { op: "decode", key: key.into(), message: format!("stored value of {} bytes lacks its 24-byte header", raw.len()) });
    }
    let n = |i: usize| u64::from_le_bytes(raw[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    Ok(Entry { key: key.to_string(), value: raw[24..].to_vec(), create_revision: n(0), mod_revision: n(1), version: n(2) })
}

fn encode(create: u64, modified: u64, version: u64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + value.len());
    for x in [create, modified, version] {
        out.extend(x.to_le_bytes());
    }
    out.extend_from_slice(value);
    out
}

impl RedbStore {
    /// Opens (or creates) the store file; its folder is created if missing.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_err = |message: String| StoreError::Open { path: path.display().to_string(), message };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
        }
        let db = Database::create(path).map_err(|e| open_err(e.to_string()))?;
        let w = db.begin_write().map_err(|e| open_err(e.to_string()))?;
        {
            w.open_table(KV).map_err(|e| open_err(e.to_string()))?;
            w.open_table(META).map_err(|e| open_err(e.to_string()))?;
        }
        w.commit().map_err(|e| open_err(e.to_string()))?;
        Ok(Self { db, path: path.display().to_string() })
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// Runs `f` in one write transaction with the next revision; commits when `f` says so.
    fn write<T>(&self, op: &'static str, key: &str, f: impl FnOnce(&mut ::redb::Table<&str, &[u8]>, u64) -> Result<(T, bool), StoreError>) -> Result<(T, u64), StoreError> {
        let e = backend(op, key);
        let w = self.db.begin_write().map_err(|x| e(x.to_string()))?;
        let (out, rev) = {
            let mut meta = w.open_table(META).map_err(|x| e(x.to_string()))?;
            let current = meta.get(REVISION).map_err(|x| e(x.to_string()))?.map(|g| g.value()).unwrap_or(0);
            let mut kv = w.open_table(KV).map_err(|x| e(x.to_string()))?;
            let (out, wrote) = f(&mut kv, current + 1)?;
            let rev = if wrote {
                meta.insert(REVISION, current + 1).map_err(|x| e(x.to_string()))?;
                current + 1
            } else {
                current
            };
            (out, rev)
        };
        w.commit().map_err(|x| e(x.to_string()))?;
        Ok((out, rev))
    }
}

fn get_in(kv: &impl ReadableTable<&'static str, &'static [u8]>, key: &str) -> Result<Option<Entry>, StoreError> {
    let g = kv.get(key).map_err(|x| backend("get", key)(x.to_string()))?;
    g.map(|g| decode(key, g.value())).transpose()
}

fn apply(kv: &mut ::redb::Table<&str, &[u8]>, rev: u64, op: &Op) -> Result<(), StoreError> {
    match op {
        Op::Put(k, v) => {
            let (create, version) = get_in(kv, k)?.map(|e| (e.create_revision, e.version + 1)).unwrap_or((rev, 1));
            kv.insert(k.as_str(), encode(create, rev, version, v).as_slice()).map_err(|x| backend("put", k)(x.to_string()))?;
        }
        Op::Delete(k) => {
            kv.remove(k.as_str()).map_err(|x| backend("delete", k)(x.to_string()))?;
        }
    }
    Ok(())
}

impl Kv for RedbStore {
    fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let e = backend("get", key);
        let r = self.db.begin_read().map_err(|x| e(x.to_string()))?;
        let kv = r.open_table(KV).map_err(|x| e(x.to_string()))?;
        get_in(&kv, key)
    }

    fn range(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        let e = backend("range", prefix);
        let r = self.db.begin_read().map_err(|x| e(x.to_string()))?;
        let kv = r.open_table(KV).map_err(|x| e(x.to_string()))?;
        let mut out = Vec::new();
        for item in kv.range(prefix..).map_err(|x| e(x.to_string()))? {
            let (k, v) = item.map_err(|x| e(x.to_string()))?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    fn put(&self, key: &str, value: &[u8]) -> Result<u64, StoreError> {
        check_key(key)?;
        let op = Op::Put(key.into(), value.to_vec());
        Ok(self.write("put", key, |kv, rev| apply(kv, rev, &op).map(|_| ((), true)))?.1)
    }

    fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let op = Op::Delete(key.into());
        Ok(self
            .write("delete", key, |kv, rev| {
                let existed = get_in(kv, key)?.is_some();
                if existed {
                    apply(kv, rev, &op)?;
                }
                Ok((existed, existed))
            })?
            .0)
    }

    fn txn(&self, compares: &[Compare], success: &[Op], failure: &[Op]) -> Result<TxnResult, StoreError> {
        for op in success.iter().chain(failure) {
            if let Op::Put(k, _) = op {
                check_key(k)?;
            }
        }
        let (ok, rev) = self.write("txn", "", |kv, rev| {
            let mut ok = true;
            for c in compares {
                if !holds(c, &mut |k| get_in(kv, k))? {
                    ok = false;
                    break;
                }
            }
            let ops = if ok { success } else { failure };
            for op in ops {
                apply(kv, rev, op)?;
            }
            Ok((ok, !ops.is_empty()))
        })?;
        Ok(TxnResult { succeeded: ok, revision: rev })
    }

    fn revision(&self) -> Result<u64, StoreError> {
        let e = backend("revision", "");
        let r = self.db.begin_read().map_err(|x| e(x.to_string()))?;
        let meta = r.open_table(META).map_err(|x| e(x.to_string()))?;
        Ok(meta.get(REVISION).map_err(|x| e(x.to_string()))?.map(|g| g.value()).unwrap_or(0))
    }
}
