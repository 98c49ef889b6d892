//! An in-memory [`Kv`]: the reference semantics, for tests and benchmarks.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{check_key, holds, Compare, Entry, Kv, Op, StoreError, TxnResult};

#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<(u64, BTreeMap<String, Entry>)>,
    /// A limit on transaction sizes, as etcd's (tests of callers that split their writes).
    max_txn_ops: Option<usize>,
}

impl MemoryStore {
    /// A store that refuses transactions with more than `n` compares or ops per branch.
    pub fn with_max_txn_ops(n: usize) -> Self {
        Self { max_txn_ops: Some(n), ..Default::default() }
    }
}

fn apply(rev: u64, map: &mut BTreeMap<String, Entry>, op: &Op) {
    match op {
        Op::Put(k, v) => {
            let (create, version) = map.get(k).map(|e| (e.create_revision, e.version + 1)).unwrap_or((rev, 1));
            map.insert(k.clone(), Entry { key: k.clone(), value: v.clone(), create_revision: create, mod_revision: rev, version });
        }
        Op::Delete(k) => {
            map.remove(k);
        }
    }
}

impl Kv for MemoryStore {
    fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        Ok(self.inner.lock().expect("store lock").1.get(key).cloned())
    }

    fn range(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        let g = self.inner.lock().expect("store lock");
        Ok(g.1.range(prefix.to_string()..).take_while(|(k, _)| k.starts_with(prefix)).map(|(_, e)| e.clone()).collect())
    }

    fn put(&self, key: &str, value: &[u8]) -> Result<u64, StoreError> {
        check_key(key)?;
        let mut g = self.inner.lock().expect("store lock");
        g.0 += 1;
        let rev = g.0;
        apply(rev, &mut g.1, &Op::Put(key.into(), value.to_vec()));
        Ok(rev)
    }

    fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let mut g = self.inner.lock().expect("store lock");
        if !g.1.contains_key(key) {
            return Ok(false);
        }
        g.0 += 1;
        g.1.remove(key);
        Ok(true)
    }

    fn txn(&self, compares: &[Compare], success: &[Op], failure: &[Op]) -> Result<TxnResult, StoreError> {
        if let Some(limit) = self.max_txn_ops {
            let most = compares.len().max(success.len()).max(failure.len());
            if most > limit {
                return Err(StoreError::Backend { op: "txn", key: String::new(), message: format!("{most} operations in one branch of a transaction; this store takes at most {limit}") });
            }
        }
        for op in success.iter().chain(failure) {
            if let Op::Put(k, _) = op {
                check_key(k)?;
            }
        }
        let mut g = self.inner.lock().expect("store lock");
        let mut ok = true;
        for c in compares {
            let map = &g.1;
            if !holds(c, &mut |k| Ok(map.get(k).cloned()))? {
                ok = false;
                break;
            }
        }
        let ops = if ok { success } else { failure };
        if !ops.is_empty() {
            g.0 += 1;
            let rev = g.0;
            for op in ops {
                apply(rev, &mut g.1, op);
            }
        }
        Ok(TxnResult { succeeded: ok, revision: g.0 })
    }

    fn max_txn_ops(&self) -> usize {
        self.max_txn_ops.unwrap_or(usize::MAX)
    }

    fn revision(&self) -> Result<u64, StoreError> {
        Ok(self.inner.lock().expect("store lock").0)
    }
}
