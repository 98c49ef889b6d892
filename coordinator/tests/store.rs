//! The store conformance suite against every backend, and crash-safety of the embedded one.

use ablate_coordinator::store::local_etcd::{self, LocalEtcd};
use ablate_coordinator::store::{conformance, etcd::{self, EtcdStore}, memory::MemoryStore, redb::RedbStore, Compare, Kv, Op};
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

#[test]
fn etcd_backend_conforms() {
    let Some(bin) = local_etcd::binary_or_skip("etcd_backend_conforms") else { return };
    // every check gets a fresh cluster: the suite expects a store at revision 0
    let clusters = std::sync::Mutex::new(Vec::new());
    conformance::run_all(&|| {
        let e = LocalEtcd::start(&bin).unwrap();
        let s = Arc::new(EtcdStore::open(&e.spec("ablate/")).unwrap()) as Arc<dyn Kv>;
        clusters.lock().unwrap().push(e);
        s
    });
}

/// The same suite against etcd as a shared cluster runs it: TLS with client certificates,
/// user auth, a user whose role holds one namespace only.
#[test]
fn etcd_backend_conforms_with_tls_and_auth() {
    let Some(bin) = local_etcd::binary_or_skip("etcd_backend_conforms_with_tls_and_auth") else { return };
    let clusters = std::sync::Mutex::new(Vec::new());
    conformance::run_all(&|| {
        let e = LocalEtcd::start_secure(&bin, "ablate/", 300).unwrap();
        let spec = e.spec("ablate/");
        assert!(spec.contains("ca=") && spec.contains("user=ablate"), "{spec}");
        let s = Arc::new(EtcdStore::open(&spec).unwrap()) as Arc<dyn Kv>;
        clusters.lock().unwrap().push(e);
        s
    });
}

/// A secured etcd refuses every client that lacks a piece (CA, client certificate, user,
/// right password, permission on the namespace), each with an error that says so; a token
/// that expired is fetched again without the caller noticing.
#[test]
fn a_secured_etcd_refuses_what_lacks_a_piece_and_tokens_are_renewed() {
    let Some(bin) = local_etcd::binary_or_skip("a_secured_etcd_refuses") else { return };
    let e = LocalEtcd::start_secure(&bin, "team-a/", 1).unwrap();
    let good = e.spec("team-a/");
    let open_err = |spec: &str| EtcdStore::open(spec).err().map(|e| e.to_string()).unwrap_or_else(|| panic!("{spec} must be refused"));
    let mut refused = 0;
    // plaintext to a TLS port
    let err = open_err(&format!("etcd://{}/team-a/", e.endpoint));
    assert!(err.contains("does not answer"), "{err}");
    refused += 1;
    // TLS without a client certificate
    let ca_only = good.split('&').next().unwrap().to_string();
    assert!(ca_only.ends_with("ca.pem"), "{ca_only}");
    let err = open_err(&ca_only);
    assert!(err.contains("does not answer"), "{err}");
    refused += 1;
    // TLS and a certificate but no user, now that auth is on
    let err = open_err(&e.tls_only_spec("team-a/"));
    assert!(err.contains("refuses the store") && (err.contains("user name is empty") || err.contains("permission denied")), "{err}");
    refused += 1;
    // a wrong password
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    let pw_at = good.find("password-file=").unwrap();
    let err = open_err(&format!("{}password-file={}", &good[..pw_at], wrong.display()));
    assert!(err.contains("authentication failed"), "{err}");
    refused += 1;
    // the right user on a namespace its role does not hold
    let other = e.spec("team-b/");
    let err = open_err(&other);
    assert!(err.contains("permission denied"), "{err}");
    refused += 1;
    eprintln!("secured etcd: {refused}/5 clients lacking a piece refused (last: {err})");

    let s = EtcdStore::open(&good).unwrap();
    s.put("jobs/a", b"1").unwrap();
    // the token (ttl 1 s) expires while idle; the next call authenticates again
    std::thread::sleep(std::time::Duration::from_millis(3500));
    s.put("jobs/b", b"2").unwrap();
    assert_eq!(s.range("jobs/").unwrap().len(), 2);
    assert_eq!(s.auth_tokens_fetched(), 2, "one token at open, one after the first expired");
}

#[test]
fn etcd_namespaces_share_a_cluster_without_seeing_each_other_and_ranges_page() {
    let Some(bin) = local_etcd::binary_or_skip("etcd_namespaces_share_a_cluster") else { return };
    let e = LocalEtcd::start(&bin).unwrap();
    let (a, b) = (EtcdStore::open(&e.spec("team-a/")).unwrap(), EtcdStore::open(&e.spec("team-b/")).unwrap());
    a.put("jobs/j1", b"a1").unwrap();
    b.put("jobs/j1", b"b1").unwrap();
    assert_eq!(a.get("jobs/j1").unwrap().unwrap().value, b"a1");
    assert_eq!(b.range("").unwrap().iter().map(|e| e.key.as_str()).collect::<Vec<_>>(), ["jobs/j1"]);
    assert!(b.delete("jobs/j1").unwrap());
    assert!(a.get("jobs/j1").unwrap().is_some(), "b's delete stays in b");
    // more keys than one range page, in key order, every one once
    let n = etcd::PAGE as usize * 2 + 7;
    let puts: Vec<Op> = (0..n).map(|i| Op::Put(format!("many/{i:05}"), vec![(i % 251) as u8])).collect();
    for chunk in puts.chunks(100) {
        assert!(a.txn(&[], chunk, &[]).unwrap().succeeded);
    }
    let all = a.range("many/").unwrap();
    assert_eq!(all.len(), n);
    assert!(all.iter().enumerate().all(|(i, e)| e.key == format!("many/{i:05}") && e.value == [(i % 251) as u8]));
}

#[test]
fn an_unreachable_etcd_is_an_error_that_names_it_and_a_dead_one_fails_calls() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let spec = format!("etcd://127.0.0.1:{port}/x/");
    let t = std::time::Instant::now();
    let err = EtcdStore::open(&spec).err().expect("nothing listens there").to_string();
    assert!(err.contains(&format!("127.0.0.1:{port}")) && err.contains("does not answer"), "{err}");
    assert!(t.elapsed() < etcd::TIMEOUT + std::time::Duration::from_secs(2));
    let Some(bin) = local_etcd::binary_or_skip("an_unreachable_etcd") else { return };
    let mut e = LocalEtcd::start(&bin).unwrap();
    let s = EtcdStore::open(&e.spec("x/")).unwrap();
    s.put("jobs/a", b"1").unwrap();
    e.kill();
    let err = s.put("jobs/b", b"2").unwrap_err().to_string();
    assert!(err.contains("put") && err.contains("jobs/b") && err.contains(&e.endpoint), "{err}");
}

fn sweep_of(n: usize) -> Vec<ablate_coordinator::domain::JobSpec> {
    let job = |i: usize| ablate_coordinator::domain::JobSpec { config_toml: "[train]\nsteps = 1\n".into(), world_size: 1, arm: format!("arm{i}"), ..Default::default() };
    (0..n).map(job).collect()
}

fn core_on(kv: Arc<dyn Kv>, dir: &std::path::Path) -> ablate_coordinator::Core {
    ablate_coordinator::Core::open(kv, ablate_coordinator::Options { runs_dir: dir.to_path_buf(), ..Default::default() }).unwrap()
}

/// A sweep larger than the store's transactions is written in chunks, and still all or
/// none: when a later chunk fails, the chunks already written are taken back.
#[test]
fn sweeps_larger_than_one_transaction_are_stored_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let kv: Arc<dyn Kv> = Arc::new(MemoryStore::with_max_txn_ops(4));
    let core = core_on(kv.clone(), dir.path());
    let (_, jobs) = core.submit_sweep("big", sweep_of(10)).unwrap();
    assert_eq!(jobs.len(), 10);
    assert_eq!(kv.range("jobs/").unwrap().len(), 10);
    // the next sweep's ids are j000011..j000020: plant a stranger's j000017 (third chunk)
    kv.put("jobs/j000017", b"someone else's").unwrap();
    let e = core.submit_sweep("big", sweep_of(10)).unwrap_err().to_string();
    assert!(e.contains("job ids are taken"), "{e}");
    let keys: Vec<String> = kv.range("jobs/").unwrap().into_iter().map(|e| e.key).collect();
    assert_eq!(keys.len(), 11, "the first two chunks were taken back: {keys:?}");
    assert!(core.list(&[], None).len() == 10, "nothing of the failed sweep is queued");
}

/// etcd: a transaction over its 128-op limit is refused by name; a 300-job sweep goes
/// through the coordinator in chunks; a dead first endpoint is passed over.
#[test]
fn etcd_takes_big_sweeps_in_chunks_and_passes_over_a_dead_member() {
    let Some(bin) = local_etcd::binary_or_skip("etcd_takes_big_sweeps") else { return };
    let e = LocalEtcd::start(&bin).unwrap();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let spec = format!("etcd://127.0.0.1:{dead},{}/big/", e.endpoint);
    let store = Arc::new(EtcdStore::open(&spec).unwrap());
    let puts: Vec<Op> = (0..129).map(|i| Op::Put(format!("k{i}"), vec![])).collect();
    let err = store.txn(&[], &puts, &[]).unwrap_err().to_string();
    assert!(err.contains("129 operations") && err.contains("at most 128"), "{err}");
    assert_eq!(store.revision().unwrap(), 0, "nothing was written");
    let dir = tempfile::tempdir().unwrap();
    let core = core_on(store.clone(), dir.path());
    let (_, jobs) = core.submit_sweep("big", sweep_of(300)).unwrap();
    assert_eq!(jobs.len(), 300);
    assert_eq!(store.range("jobs/").unwrap().len(), 300);
    // a second coordinator on the same store sees every job
    drop(core);
    assert_eq!(core_on(Arc::new(EtcdStore::open(&spec).unwrap()), dir.path()).list(&[], None).len(), 300);
}

#[test]
fn memory_store_limit_is_reported() {
    let s = MemoryStore::with_max_txn_ops(2);
    assert_eq!(s.max_txn_ops(), 2);
    let e = s.txn(&[], &[Op::Put("a".into(), vec![]), Op::Put("b".into(), vec![]), Op::Put("c".into(), vec![])], &[]).unwrap_err().to_string();
    assert!(e.contains("3 operations") && e.contains("at most 2"), "{e}");
    assert_eq!(s.revision().unwrap(), 0);
}

/// The store carries its schema version: the first coordinator stamps it (a store from before
/// versions included, its jobs kept), and one from a newer version is refused untouched.
#[test]
fn the_store_schema_is_stamped_and_a_newer_one_refused_untouched() {
    use ablate_coordinator::store::{memory::MemoryStore, Kv};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let opts = || ablate_coordinator::Options { runs_dir: dir.path().to_path_buf(), ..Default::default() };
    let kv: Arc<dyn Kv> = Arc::new(MemoryStore::default());
    let core = ablate_coordinator::Core::open(kv.clone(), opts()).unwrap();
    core.submit(ablate_coordinator::domain::JobSpec { config_toml: "[train]\nsteps = 1\n".into(), world_size: 1, ..Default::default() }).unwrap();
    drop(core);
    assert_eq!(kv.get("meta/schema").unwrap().unwrap().value, ablate_coordinator::core::STORE_SCHEMA.to_string().into_bytes());
    // a store from before versions: stamped, its job kept
    kv.delete("meta/schema").unwrap();
    assert_eq!(ablate_coordinator::Core::open(kv.clone(), opts()).unwrap().list(&[], None).len(), 1);
    assert!(kv.get("meta/schema").unwrap().is_some());
    // a newer schema: refused, nothing written
    kv.put("meta/schema", b"99").unwrap();
    let revision = kv.revision().unwrap();
    let e = ablate_coordinator::Core::open(kv.clone(), opts()).err().expect("a newer schema is refused").to_string();
    assert!(e.contains("schema version 99, newer than this coordinator's 1"), "{e}");
    assert_eq!(kv.revision().unwrap(), revision, "nothing was written");
}
