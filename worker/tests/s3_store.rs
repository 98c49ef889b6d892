//! The checkpoint store on an S3-compatible object store, against a local moto server
//! (`ablate_worker::local_s3`; skipped without one unless `ABLATE_REQUIRE_S3=1`, as in CI):
//! publishing keeps the last K steps, the newest whole one is restored, a corrupt or
//! truncated latest step falls back to the one before with the reason, a step whose
//! manifest never arrived is not restored, and a failed publish leaves nothing; the same
//! store runs a real training run's publish and resume.

use ablate_trainer::ckpt_store::{CheckpointStore, CHECKPOINT};
use ablate_worker::local_s3::{LocalS3, TEST_CREDENTIALS};

fn run_dir(step: usize, bytes: usize) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    // larger than one upload part for the first step: multipart uploads are exercised
    let weights: Vec<u8> = (0..bytes).map(|i| (i * 31 + step) as u8).collect();
    std::fs::write(d.path().join(CHECKPOINT), weights).unwrap();
    std::fs::write(d.path().join("metrics.jsonl"), format!("{{\"step\":{step}}}\n")).unwrap();
    d
}

#[test]
fn an_s3_store_keeps_k_restores_the_newest_whole_step_and_falls_back_past_damage() {
    let Some(s3) = LocalS3::start_or_skip("s3 checkpoint store", "ablate-ckpt") else { return };
    for (k, v) in TEST_CREDENTIALS {
        // the only test in this binary: nothing else reads the environment meanwhile
        std::env::set_var(k, v);
    }
    let spec = ablate_worker::s3::for_job(&s3.spec("runs"), "j000001");
    let store: CheckpointStore = ablate_worker::s3::open(&spec, 2).unwrap();
    for (step, size) in [(100, 9 << 20), (200, 4096), (300, 4096)] {
        store.publish(step, run_dir(step, size).path(), &[CHECKPOINT, "metrics.jsonl", "eval.jsonl"]).unwrap();
    }
    assert_eq!(store.steps().unwrap(), vec![200, 300], "the last 2 kept, the rest deleted");
    let into = tempfile::tempdir().unwrap();
    let mut skipped = Vec::new();
    assert_eq!(store.restore_newest(into.path(), None, &mut |s, why| skipped.push((s, why))).unwrap(), Some(300));
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(std::fs::read(into.path().join(CHECKPOINT)).unwrap(), std::fs::read(run_dir(300, 4096).path().join(CHECKPOINT)).unwrap());
    assert_eq!(std::fs::read_to_string(into.path().join("metrics.jsonl")).unwrap(), "{\"step\":300}\n");

    // damage in the store: 300's checkpoint one byte off, then also cut short
    let objects = &store.objects;
    let mut bytes = Vec::new();
    objects.get_into("step-00000300/checkpoint.safetensors", &mut bytes).unwrap();
    bytes[7] ^= 1;
    objects.put_bytes("step-00000300/checkpoint.safetensors", &bytes).unwrap();
    let into = tempfile::tempdir().unwrap();
    let mut skipped = Vec::new();
    assert_eq!(store.restore_newest(into.path(), None, &mut |s, why| skipped.push((s, why))).unwrap(), Some(200));
    assert!(skipped.len() == 1 && skipped[0].0 == 300 && skipped[0].1.contains("corrupt"), "{skipped:?}");
    objects.put_bytes("step-00000300/checkpoint.safetensors", &bytes[..100]).unwrap();
    let mut skipped = Vec::new();
    assert_eq!(store.restore_newest(into.path(), None, &mut |s, why| skipped.push((s, why))).unwrap(), Some(200));
    assert!(skipped[0].1.contains("truncated"), "{skipped:?}");
    assert_eq!(std::fs::read_dir(into.path()).unwrap().count(), 2, "no staged file is left behind");

    // a step whose manifest never arrived (a crash mid-publish) is not published
    objects.delete_prefix("step-00000300/MANIFEST").unwrap();
    objects.delete_prefix("step-00000200/MANIFEST").unwrap();
    assert_eq!(store.restore_newest(into.path(), None, &mut |_, _| {}).unwrap(), None);

    // a failed publish (no checkpoint in the run directory) leaves nothing of its step
    let empty = tempfile::tempdir().unwrap();
    assert!(store.publish(400, empty.path(), &[CHECKPOINT]).is_err());
    assert!(!store.steps().unwrap().contains(&400));

    // jobs do not see each other's steps
    let other = ablate_worker::s3::open(&ablate_worker::s3::for_job(&s3.spec("runs"), "j000002"), 2).unwrap();
    assert!(other.steps().unwrap().is_empty());

    // an unreachable store is an error that names it, not a hang or an empty store
    drop(s3);
    let e = store.steps().unwrap_err().to_string();
    assert!(e.contains("s3://ablate-ckpt/runs/j000001"), "{e}");
}
