//! Leader election and fencing on a throwaway local etcd with TLS and user auth (skipped where none is installed,
//! unless ABLATE_REQUIRE_ETCD=1): one leader at a time, a standby takes over when the
//! leader dies (after the lease) or resigns (at once), and a deposed leader cannot write.

use ablate_coordinator::leader::{Election, LEADER_KEY};
use ablate_coordinator::store::etcd::EtcdStore;
use ablate_coordinator::store::local_etcd::{self, LocalEtcd};
use ablate_coordinator::store::{Compare, Kv, Op, StoreError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn election(id: &str) -> Election {
    Election { id: id.into(), ttl: Duration::from_secs(2), poll: Duration::from_millis(100) }
}

#[test]
fn one_leader_a_standby_takes_over_and_the_deposed_cannot_write() {
    let Some(bin) = local_etcd::binary_or_skip("one_leader_a_standby_takes_over") else { return };
    let etcd = LocalEtcd::start_secure(&bin, "ha/", 300).unwrap();
    let spec = etcd.spec("ha/");
    let never = CancellationToken::new();

    // a leads
    let mut a = EtcdStore::open(&spec).unwrap();
    let a_lead = election("coord-a").campaign(&mut a, &never, |_| panic!("nobody leads yet")).unwrap().unwrap();
    a.put("jobs/j1", b"queued").unwrap();

    // b waits as a standby, seeing a as the holder
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let (seen2, spec2) = (seen.clone(), spec.clone());
    let standby = std::thread::spawn(move || {
        let mut b = EtcdStore::open(&spec2).unwrap();
        let lead = election("coord-b").campaign(&mut b, &CancellationToken::new(), |h| seen2.lock().unwrap().push(h.to_string())).unwrap().unwrap();
        (b, lead, Instant::now())
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!standby.is_finished(), "b must not lead while a does");
    assert_eq!(*seen.lock().unwrap(), ["coord-a"]);

    // a dies without resigning (its client stops: no more keep-alives); b leads after the lease
    let died = Instant::now();
    drop(a);
    let (b, b_lead, took_over) = standby.join().unwrap();
    let after = took_over - died;
    assert!(after < Duration::from_secs(5), "takeover took {after:?} (lease 2 s)");
    assert_eq!(b.get(LEADER_KEY).unwrap().unwrap().value, b"coord-b");
    assert_eq!(b.get("jobs/j1").unwrap().unwrap().value, b"queued", "the new leader sees the old one's state");

    // a deposed leader that still believes it leads (a paused process with a's lease): every
    // write is refused, nothing written; the same id under a new lease would not pass either
    let mut stale = EtcdStore::open(&spec).unwrap();
    stale.fence(LEADER_KEY, a_lead.lease);
    let before = b.revision().unwrap();
    for e in [
        stale.put("jobs/j1", b"overwritten").map(|_| ()).unwrap_err(),
        stale.delete("jobs/j1").map(|_| ()).unwrap_err(),
        stale.txn(&[Compare::Exists("jobs/j2".into(), false)], &[Op::Put("jobs/j2".into(), b"x".to_vec())], &[]).map(|_| ()).unwrap_err(),
    ] {
        assert!(matches!(&e, StoreError::Fenced { holder, .. } if holder == "coord-b"), "{e}");
        assert!(e.to_string().contains("no longer the leader"), "{e}");
    }
    // a second contender that took b's id (`--id` need not be unique) has another lease
    let mut twin = EtcdStore::open(&spec).unwrap();
    twin.fence(LEADER_KEY, b.grant_lease(Duration::from_secs(2)).unwrap());
    assert!(matches!(twin.put("jobs/j1", b"twin").unwrap_err(), StoreError::Fenced { .. }));
    assert_eq!(b.revision().unwrap(), before, "the refused writes changed nothing");
    assert_eq!(b.get("jobs/j1").unwrap().unwrap().value, b"queued");
    assert!(b.get("jobs/j2").unwrap().is_none());
    // the leader's own fenced writes go through, including transactions and their failure branch
    b.put("jobs/j1", b"running").unwrap();
    let t = b.txn(&[Compare::Value("jobs/j1".into(), b"queued".to_vec())], &[], &[Op::Put("jobs/j3".into(), b"else".to_vec())]).unwrap();
    assert!(!t.succeeded);
    assert_eq!(b.get("jobs/j3").unwrap().unwrap().value, b"else");
    assert!(b.delete("jobs/j3").unwrap());

    // a clean resignation hands over at once
    let mut c = EtcdStore::open(&spec).unwrap();
    b_lead.resign(&b).unwrap();
    let t = Instant::now();
    let c_lead = election("coord-c").campaign(&mut c, &never, |h| panic!("{h} still holds the post after resigning")).unwrap().unwrap();
    assert!(t.elapsed() < Duration::from_secs(1));

    // a leader whose lease is revoked behind its back learns it has lost the post
    let t = Instant::now();
    b.revoke_lease(c_lead.lease).unwrap();
    while !c_lead.lost.is_cancelled() {
        assert!(t.elapsed() < Duration::from_secs(4), "the loss of the lease was not noticed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let e = c.put("jobs/j1", b"late").unwrap_err();
    assert!(matches!(e, StoreError::Fenced { .. }), "{e}");
}

#[test]
fn a_standby_campaign_can_be_cancelled() {
    let Some(bin) = local_etcd::binary_or_skip("a_standby_campaign_can_be_cancelled") else { return };
    let etcd = LocalEtcd::start_secure(&bin, "ha/", 300).unwrap();
    let mut a = EtcdStore::open(&etcd.spec("ha/")).unwrap();
    let _lead = election("a").campaign(&mut a, &CancellationToken::new(), |_| {}).unwrap().unwrap();
    let mut b = EtcdStore::open(&etcd.spec("ha/")).unwrap();
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        c2.cancel();
    });
    let t = Instant::now();
    assert!(election("b").campaign(&mut b, &cancel, |_| {}).unwrap().is_none());
    assert!(t.elapsed() < Duration::from_secs(1));
}
