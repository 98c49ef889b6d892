//! The behaviour every [`Kv`] backend must show, written once and run against each
//! backend (coordinator/tests/store.rs): a new backend (etcd) passes by calling [`run_all`]
//! on a fresh instance.

use std::sync::Arc;

use super::{Compare, Kv, Op};

/// Runs every check on stores made by `fresh` (each check gets an empty store).
pub fn run_all(fresh: &dyn Fn() -> Arc<dyn Kv>) {
    put_get_and_revisions(&*fresh());
    range_is_prefix_ordered(&*fresh());
    delete(&*fresh());
    txn_compare_and_swap(&*fresh());
    txn_failure_branch_and_atomicity(&*fresh());
    racing_compare_and_put_has_one_winner(fresh());
    bad_keys_are_refused(&*fresh());
}

pub fn put_get_and_revisions(s: &dyn Kv) {
    assert_eq!(s.revision().unwrap(), 0);
    assert_eq!(s.get("a").unwrap(), None);
    let r1 = s.put("a", b"1").unwrap();
    let r2 = s.put("b", b"2").unwrap();
    let r3 = s.put("a", b"3").unwrap();
    assert!(r1 < r2 && r2 < r3, "revisions increase: {r1} {r2} {r3}");
    assert_eq!(s.revision().unwrap(), r3);
    let a = s.get("a").unwrap().unwrap();
    assert_eq!(a.value, b"3");
    assert_eq!((a.create_revision, a.mod_revision, a.version), (r1, r3, 2));
    // empty values are values
    s.put("e", b"").unwrap();
    assert_eq!(s.get("e").unwrap().unwrap().value, b"");
}

pub fn range_is_prefix_ordered(s: &dyn Kv) {
    for k in ["jobs/b", "jobs/a", "jobsx", "job", "workers/1", "jobs/c/x"] {
        s.put(k, k.as_bytes()).unwrap();
    }
    let keys: Vec<String> = s.range("jobs/").unwrap().into_iter().map(|e| e.key).collect();
    assert_eq!(keys, ["jobs/a", "jobs/b", "jobs/c/x"]);
    assert_eq!(s.range("none/").unwrap(), vec![]);
    assert_eq!(s.range("").unwrap().len(), 6);
}

pub fn delete(s: &dyn Kv) {
    s.put("k", b"v").unwrap();
    let r = s.revision().unwrap();
    assert!(s.delete("k").unwrap());
    assert!(s.revision().unwrap() > r);
    assert!(!s.delete("k").unwrap());
    assert_eq!(s.get("k").unwrap(), None);
    // a re-created key starts a new life
    let r = s.put("k", b"w").unwrap();
    let e = s.get("k").unwrap().unwrap();
    assert_eq!((e.create_revision, e.version), (r, 1));
}

pub fn txn_compare_and_swap(s: &dyn Kv) {
    // create-if-absent
    let t = s.txn(&[Compare::ModRevision("job".into(), 0)], &[Op::Put("job".into(), b"queued".to_vec())], &[]).unwrap();
    assert!(t.succeeded);
    let e = s.get("job").unwrap().unwrap();
    assert_eq!(e.mod_revision, t.revision);
    // a second create-if-absent fails and changes nothing
    let t2 = s.txn(&[Compare::Exists("job".into(), false)], &[Op::Put("job".into(), b"other".to_vec())], &[]).unwrap();
    assert!(!t2.succeeded);
    assert_eq!(t2.revision, t.revision);
    assert_eq!(s.get("job").unwrap().unwrap().value, b"queued");
    // swap on the revision read
    let t3 = s.txn(&[Compare::ModRevision("job".into(), e.mod_revision)], &[Op::Put("job".into(), b"running".to_vec())], &[]).unwrap();
    assert!(t3.succeeded);
    // a stale revision loses
    let t4 = s.txn(&[Compare::ModRevision("job".into(), e.mod_revision)], &[Op::Put("job".into(), b"lost".to_vec())], &[]).unwrap();
    assert!(!t4.succeeded);
    assert_eq!(s.get("job").unwrap().unwrap().value, b"running");
    assert!(s.txn(&[Compare::Value("job".into(), b"running".to_vec())], &[], &[]).unwrap().succeeded);
    assert!(!s.txn(&[Compare::Value("missing".into(), vec![])], &[], &[]).unwrap().succeeded);
}

pub fn txn_failure_branch_and_atomicity(s: &dyn Kv) {
    s.put("x", b"1").unwrap();
    let t = s
        .txn(&[Compare::Value("x".into(), b"2".to_vec())], &[Op::Put("y".into(), b"ok".to_vec())], &[Op::Put("y".into(), b"else".to_vec()), Op::Delete("x".into())])
        .unwrap();
    assert!(!t.succeeded);
    assert_eq!(s.get("y").unwrap().unwrap().value, b"else");
    assert_eq!(s.get("x").unwrap(), None);
    // several ops of one transaction share one revision
    let t = s.txn(&[], &[Op::Put("p".into(), vec![1]), Op::Put("q".into(), vec![2])], &[]).unwrap();
    assert_eq!(s.get("p").unwrap().unwrap().mod_revision, t.revision);
    assert_eq!(s.get("q").unwrap().unwrap().mod_revision, t.revision);
}

/// 20 threads race a create-if-absent on one key: exactly one wins.
pub fn racing_compare_and_put_has_one_winner(s: Arc<dyn Kv>) {
    let handles: Vec<_> = (0..20u8)
        .map(|i| {
            let s = s.clone();
            std::thread::spawn(move || s.txn(&[Compare::Exists("leader".into(), false)], &[Op::Put("leader".into(), vec![i])], &[]).unwrap().succeeded)
        })
        .collect();
    let wins = handles.into_iter().map(|h| h.join().unwrap()).filter(|w| *w).count();
    assert_eq!(wins, 1);
    assert_eq!(s.get("leader").unwrap().unwrap().version, 1);
}

pub fn bad_keys_are_refused(s: &dyn Kv) {
    for k in ["", "/abs", "nul\0"] {
        let e = s.put(k, b"v").unwrap_err().to_string();
        assert!(e.contains("is empty or not a path"), "{e}");
    }
    assert!(s.txn(&[], &[Op::Put(String::new(), vec![])], &[]).is_err());
    assert_eq!(s.revision().unwrap(), 0, "a refused write changes nothing");
}
