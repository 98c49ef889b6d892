//! The store conformance suite against every backend, and crash-safety of the embedded one.

use ablate_coordinator::store::{conformance, memory::MemoryStore, redb::RedbStore, Compare, Kv, Op};
use std::sync::Arc;

#[test]
fn memory_backend_conforms() {
    conformance::run_all(&|| Arc::new(MemoryStore::default()) as Arc<dyn Kv>);
}

#[test]
fn redb_backend_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let n = std::sync::atomic::AtomicUsize::new(0);
    conformance::run_all(&|| {
        let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Arc::new(RedbStore::open(&dir.path().join(format!("s{i}/store.redb"))).unwrap()) as Arc<dyn Kv>
    });
}

#[test]
fn redb_keeps_everything_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.redb");
    let rev = {
        let s = RedbStore::open(&path).unwrap();
        s.put("jobs/a", b"1").unwrap();
        s.txn(&[], &[Op::Put("jobs/b".into(), b"2".to_vec())], &[]).unwrap();
        s.put("jobs/a", b"3").unwrap()
    };
    let s = RedbStore::open(&path).unwrap();
    assert_eq!(s.revision().unwrap(), rev);
    let a = s.get("jobs/a").unwrap().unwrap();
    assert_eq!((a.value.as_slice(), a.version, a.mod_revision), (&b"3"[..], 2, rev));
    assert_eq!(s.range("jobs/").unwrap().len(), 2);
    // revisions continue from where they were
    assert!(s.txn(&[Compare::ModRevision("jobs/a".into(), rev)], &[Op::Delete("jobs/b".into())], &[]).unwrap().revision > rev);
}

#[test]
fn a_file_that_is_not_a_store_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "hello, not a database").unwrap();
    let e = RedbStore::open(&path).err().expect("garbage must not open").to_string();
    assert!(e.contains("notes.txt"), "{e}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "hello, not a database", "the file is left as it was");
}
