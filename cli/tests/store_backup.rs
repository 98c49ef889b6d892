//! `ablate store backup|restore|inspect` on the real binary: a running coordinator's store
//! (jobs, tokens, a drained worker) goes to a file (mode 0600); restored into an empty store,
//! a coordinator started on it has every job and token (the old admin token works); a
//! damaged file and a store that is not empty are refused, the store untouched.

mod common;

use common::*;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

#[test]
fn a_store_backed_up_from_a_running_coordinator_restores_whole() {
    let mut c = Cluster::start(1);
    let a = c.submit(3, 1);
    c.wait(120, "the job succeeded", |c| state(&c.job(&a)) == "succeeded");
    let queued = c.submit(5, 4); // too large: stays queued
    c.cli(&["token", "create", "alice", "--role", "researcher", "--out", c.dir.path().join("alice.token").to_str().unwrap()]);
    let backup = c.dir.path().join("state.backup");
    let out = c.cli(&["store", "backup", backup.to_str().unwrap()]);
    assert!(out.contains("jobs") && out.contains("auth"), "{out}");
    assert_eq!(std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777, 0o600, "a backup holds secrets");
    let again = c.ablate().args(["store", "backup", backup.to_str().unwrap(), "--coordinator", &c.url]).output().unwrap();
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("never overwrites"));
    let before: Value = serde_json::from_str(&c.cli(&["jobs", "list", "--output", "json"])).unwrap();

    // a new, empty store gets it all; a coordinator on it has the jobs and the tokens
    drop(c.coordinator.take());
    let fresh = c.dir.path().join("restored.redb");
    let inspect = Command::new(BIN).args(["store", "inspect", "--backup", backup.to_str().unwrap()]).output().unwrap();
    assert!(inspect.status.success() && String::from_utf8_lossy(&inspect.stdout).contains("checksum good"));
    let restore = Command::new(BIN).args(["store", "restore", backup.to_str().unwrap(), "--store", fresh.to_str().unwrap()]).output().unwrap();
    assert!(restore.status.success(), "{}", String::from_utf8_lossy(&restore.stderr));
    // into a store that is not empty: refused
    let twice = Command::new(BIN).args(["store", "restore", backup.to_str().unwrap(), "--store", fresh.to_str().unwrap()]).output().unwrap();
    assert!(!twice.status.success() && String::from_utf8_lossy(&twice.stderr).contains("empty store only"));
    // a damaged file: refused before anything is written
    let damaged = c.dir.path().join("damaged.backup");
    let text = std::fs::read_to_string(&backup).unwrap();
    std::fs::write(&damaged, &text[..text.len() / 2]).unwrap();
    let other = c.dir.path().join("other.redb");
    let bad = Command::new(BIN).args(["store", "restore", damaged.to_str().unwrap(), "--store", other.to_str().unwrap()]).output().unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("not a whole ablate store backup"), "{}", String::from_utf8_lossy(&bad.stderr));
    let empty = Command::new(BIN).args(["store", "inspect", "--store", other.to_str().unwrap()]).output().unwrap();
    assert!(String::from_utf8_lossy(&empty.stdout).contains(": 0 keys"), "{}", String::from_utf8_lossy(&empty.stdout));

    let port = c.grpc_port;
    let (p, first) = c.spawn_coordinator(port, fresh.to_str().unwrap(), &[]);
    serving(&first, 30).expect("a coordinator on the restored store serves");
    c.coordinator = Some(p);
    let after: Value = serde_json::from_str(&c.cli(&["jobs", "list", "--output", "json"])).unwrap();
    let ids = |v: &Value| v.as_array().unwrap().iter().map(|j| (j["id"].as_str().unwrap().to_string(), j["state"].as_str().unwrap().to_string())).collect::<Vec<_>>();
    assert_eq!(ids(&after), ids(&before));
    assert_eq!(state(&c.job(&queued)), "queued");
    let tokens = c.cli(&["token", "list", "--output", "json"]);
    assert!(tokens.contains("\"name\":\"alice\""), "{tokens}");
    // and the restored coordinator works on: a job cancelled there is queued again on request
    c.cli(&["cancel", &queued]);
    assert_eq!(state(&c.job(&queued)), "cancelled");
    c.cli(&["jobs", "retry", &queued]);
    assert_eq!(state(&c.job(&queued)), "queued");
}
