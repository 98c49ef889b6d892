//! `ablate run`: a sweep runs to its table, and a run killed mid-sweep resumes without
//! redoing finished jobs or finished steps.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ablate");

fn sweep_file(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("s.toml");
    std::fs::write(
        &p,
        r#"
name = "resume-test"
steps = 30
[baseline]
model.preset = "tiny"
latent = { kind = "pixel", image_size = 32 }
train = { batch_size = 2, checkpoint_every = 5 }
sample = { count = 2, steps = 2 }
eval = { samples = 8, sampler_steps = 2 }
[[arm]]
name = "muon"
overrides = { "optim.kind" = "muon" }
"#,
    )
    .unwrap();
    p
}

fn steps_in(metrics: &Path) -> Vec<u64> {
    std::fs::read_to_string(metrics).unwrap_or_default().lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["step"].as_u64()).collect()
}

#[test]
fn a_killed_sweep_resumes_without_redoing_work() {
    let dir = tempfile::tempdir().unwrap();
    let file = sweep_file(dir.path());
    let out = dir.path().join("out");
    let run = || {
        let mut c = Command::new(BIN);
        c.args(["run", file.to_str().unwrap(), "--workers", "1", "--out", out.to_str().unwrap()]);
        c
    };
    // one worker: the baseline runs first, then muon
    let mut first = run().stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let base = out.join("work/jobs/j000001/metrics.jsonl");
    let muon = out.join("work/jobs/j000002/metrics.jsonl");
    let deadline = Instant::now() + Duration::from_secs(240);
    while steps_in(&muon).len() < 12 {
        assert!(Instant::now() < deadline, "the first run did not get muon past step 12");
        assert!(first.try_wait().unwrap().is_none(), "the first run ended early");
        std::thread::sleep(Duration::from_millis(100));
    }
    first.kill().unwrap(); // SIGKILL: no clean-up at all
    first.wait().unwrap();
    let base_before = std::fs::read_to_string(&base).unwrap();
    assert_eq!(steps_in(&base), (0..30).collect::<Vec<_>>());

    let second = run().output().unwrap();
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert!(second.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&second.stderr));
    // the finished baseline was not touched; muon continued from a checkpoint, each step once
    assert_eq!(std::fs::read_to_string(&base).unwrap(), base_before);
    assert_eq!(steps_in(&muon), (0..30).collect::<Vec<_>>());
    let log = std::fs::read_to_string(out.join("work/jobs/j000002/rank-0.log")).unwrap();
    let resumed: u64 = log.lines().find_map(|l| l.strip_prefix("resumed from step ")?.split_whitespace().next()?.parse().ok()).expect("muon resumed from its checkpoint");
    assert!(resumed >= 10 && resumed % 5 == 0, "resumed from step {resumed}");
    // the table has both arms with their evaluation and the delta
    assert!(stdout.contains("baseline") && stdout.contains("muon") && stdout.contains("succeeded"), "{stdout}");
    let results: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(results[0]["arm"], "baseline");
    assert_eq!(results[1]["status"], "succeeded");
    assert!(results[1]["fd_scenes"].as_f64().is_some() && results[1]["delta_vs_baseline"]["fd_scenes"].as_f64().is_some());
    // `ablate results` prints the same table again
    let again = Command::new(BIN).args(["results", out.to_str().unwrap(), "--format", "csv"]).output().unwrap();
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).starts_with("arm,job_ids,status,steps,fd_scenes"));
    // another file into the same folder is refused
    std::fs::write(&file, std::fs::read_to_string(&file).unwrap().replace("steps = 30", "steps = 31")).unwrap();
    let refused = run().output().unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("holds a run of a different sweep"));
}
