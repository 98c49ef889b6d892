//! `ablate run`: a sweep runs to its table, a run killed mid-sweep resumes without redoing
//! finished jobs or finished steps, and the sweep grows in place: a new arm trains alone,
//! more steps extend every job from its checkpoint, a changed arm or fewer steps are refused.

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
    // an existing arm's config cannot change under its name: refused, naming the key, nothing touched
    let original = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, original.replace("\"optim.kind\" = \"muon\"", "\"optim.kind\" = \"muon\", \"optim.lr\" = 3e-4")).unwrap();
    let refused = run().output().unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("already ran muon (arm \"muon\", seed 0)") && err.contains("optim.lr: 0.0001 -> 0.0003") && err.contains("rename the arm"), "{err}");
    assert_eq!(std::fs::read_to_string(&base).unwrap(), base_before);

    // a new arm: only it trains; the table shows all three
    std::fs::write(&file, format!("{original}\n[[arm]]\nname = \"ema\"\noverrides = {{ \"optim.ema_decay\" = 0.99 }}\n")).unwrap();
    let muon_before = std::fs::read_to_string(&muon).unwrap();
    let grown = run().output().unwrap();
    let stdout = String::from_utf8_lossy(&grown.stdout);
    assert!(grown.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&grown.stderr));
    assert!(stdout.contains("growing the sweep") && stdout.contains("1 job(s) added (ema), 2 kept"), "{stdout}");
    assert_eq!((std::fs::read_to_string(&base).unwrap(), std::fs::read_to_string(&muon).unwrap()), (base_before.clone(), muon_before), "the finished arms were not retrained");
    assert_eq!(steps_in(&out.join("work/jobs/j000003/metrics.jsonl")), (0..30).collect::<Vec<_>>());
    let results: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let arms: Vec<&str> = results.as_array().unwrap().iter().map(|r| r["arm"].as_str().unwrap()).collect();
    assert_eq!(arms, ["baseline", "muon", "ema"]);
    assert!(results[2]["delta_vs_baseline"]["fd_scenes"].as_f64().is_some(), "the new arm is compared with the baseline already trained");

    // more steps: every job goes on from its checkpoint at step 30, each new step once
    let longer = std::fs::read_to_string(&file).unwrap().replace("steps = 30", "steps = 40");
    std::fs::write(&file, longer).unwrap();
    let extended = run().output().unwrap();
    let stdout = String::from_utf8_lossy(&extended.stdout);
    assert!(extended.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&extended.stderr));
    assert!(stdout.contains("3 job(s) extended from 30 to 40 steps"), "{stdout}");
    for j in ["j000001", "j000002", "j000003"] {
        assert_eq!(steps_in(&out.join(format!("work/jobs/{j}/metrics.jsonl"))), (0..40).collect::<Vec<_>>(), "{j}");
        let log = std::fs::read_to_string(out.join(format!("work/jobs/{j}/rank-0.log"))).unwrap();
        assert!(log.contains("resumed from step 30"), "{j}: {log}");
    }
    let losses = |text: &str| text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["loss"].as_f64()).collect::<Vec<f64>>();
    assert_eq!(losses(&std::fs::read_to_string(&base).unwrap())[..30], losses(&base_before)[..], "the first 30 steps are the ones trained before");
    let results: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert!(results.as_array().unwrap().iter().all(|r| r["steps"] == 40 && r["status"] == "succeeded"), "{results}");

    // fewer steps is refused, pointing at the earlier table
    std::fs::write(&file, std::fs::read_to_string(&file).unwrap().replace("steps = 40", "steps = 20")).unwrap();
    let refused = run().output().unwrap();
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("does not shrink"));
}

/// `ablate results A B`: a second sweep whose baseline is the first's run (seed aside) joins
/// its table: its arms are compared with the first sweep's baseline, its own baseline shows
/// as an A/A row; a sweep with another recipe is refused, naming the key.
#[test]
fn results_join_sweeps_whose_baselines_are_the_same_run() {
    let dir = tempfile::tempdir().unwrap();
    let sweep = |name: &str, batch: u32, arm: &str, overrides: &str| {
        let file = dir.path().join(format!("{name}.toml"));
        std::fs::write(&file, format!("name = \"{name}\"\nsteps = 6\n[baseline]\ntrain = {{ batch_size = {batch} }}\nsample = {{ count = 1, steps = 1 }}\neval = {{ samples = 8, sampler_steps = 2 }}\n[[arm]]\nname = \"{arm}\"\noverrides = {{ {overrides} }}\n")).unwrap();
        let out = dir.path().join(name);
        let r = Command::new(BIN).args(["run", file.to_str().unwrap(), "--workers", "2", "--out", out.to_str().unwrap()]).output().unwrap();
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        out
    };
    let a = sweep("first", 2, "muon", "\"optim.kind\" = \"muon\"");
    let b = sweep("later", 2, "ema", "\"optim.ema_decay\" = 0.99");
    let joined = Command::new(BIN).args(["results", a.to_str().unwrap(), b.to_str().unwrap(), "--format", "json"]).output().unwrap();
    assert!(joined.status.success(), "{}", String::from_utf8_lossy(&joined.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&joined.stdout).unwrap();
    let arms: Vec<&str> = rows.as_array().unwrap().iter().map(|r| r["arm"].as_str().unwrap()).collect();
    assert_eq!(arms, ["baseline", "muon", "baseline (later)", "ema"]);
    for r in &rows.as_array().unwrap()[1..] {
        assert!(r["delta_vs_baseline"]["fd_scenes"].as_f64().is_some(), "compared with the first sweep's baseline: {r}");
    }
    assert!(rows[3]["job_ids"][0].as_str().unwrap().starts_with("later:"), "{}", rows[3]);
    let table = Command::new(BIN).args(["results", a.to_str().unwrap(), b.to_str().unwrap()]).output().unwrap();
    assert!(String::from_utf8_lossy(&table.stdout).starts_with("joined: first + later"));
    // another recipe: refused, naming what differs
    let c = sweep("other", 4, "ema", "\"optim.ema_decay\" = 0.99");
    let refused = Command::new(BIN).args(["results", a.to_str().unwrap(), c.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("train.batch_size: 2 -> 4"), "{err}");
}
