//! Slurm for real: a single-node Slurm (`deploy/slurm/local-cluster.sh`: Debian slurm-wlm
//! and munge, `.ci/run` installs them; skipped without them or without root, unless
//! `ABLATE_REQUIRE_SLURM=1`) runs `deploy/slurm/ablate-workers.sbatch`, whose allocation
//! becomes a worker of the coordinator:
//! - a world-size-2 job submitted to ablate runs to success on it, with equal checksums;
//! - `scancel` of the allocation is a preemption: Slurm's SIGTERM reaches the worker and its
//!   ranks, the gang stops after one common step with a checkpoint and is requeued without
//!   spending the job's restarts, and the next allocation resumes it from that step.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// A local Slurm, stopped (by the pids in its folder) when dropped.
struct LocalSlurm {
    dir: tempfile::TempDir,
    conf: String,
}

impl LocalSlurm {
    fn start_or_skip(test: &str) -> Option<Self> {
        let root = Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false);
        let installed = Command::new("slurmctld").arg("-V").output().is_ok() && Command::new("munged").arg("--version").output().is_ok();
        if !root || !installed {
            let why = if installed { "not root (slurmd starts jobs as their submitter)" } else { "no slurm-wlm and munge (apt-get install slurm-wlm munge)" };
            assert!(std::env::var("ABLATE_REQUIRE_SLURM").as_deref() != Ok("1"), "{test}: ABLATE_REQUIRE_SLURM=1 but {why}");
            eprintln!("{test}: skipped, {why}");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("bash").arg(format!("{ROOT}/deploy/slurm/local-cluster.sh")).arg("start").arg(dir.path()).output().unwrap();
        assert!(out.status.success(), "local Slurm: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let conf = dir.path().join("slurm.conf").display().to_string();
        Some(Self { dir, conf })
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &self.conf);
        c
    }

    fn run(&self, program: &str, args: &[&str]) -> String {
        let out = self.cmd(program).args(args).output().unwrap();
        assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// What the allocations printed (for failure messages).
    fn outputs(&self) -> String {
        std::fs::read_dir(self.dir.path()).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with("slurm-")).map(|e| std::fs::read_to_string(e.path()).unwrap_or_default()).collect::<Vec<_>>().join("\n")
    }
}

impl Drop for LocalSlurm {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(format!("{ROOT}/deploy/slurm/local-cluster.sh")).arg("stop").arg(self.dir.path()).status();
    }
}

fn hostname() -> String {
    String::from_utf8(Command::new("hostname").arg("-s").output().unwrap().stdout).unwrap().trim().to_string()
}

#[test]
fn a_slurm_allocation_is_a_worker_pool_and_scancel_preempts_its_gang() {
    let Some(slurm) = LocalSlurm::start_or_skip("slurm") else { return };
    let c = Cluster::start(0);
    let node = hostname();
    let worker = format!("slurm-{node}");
    let tokens = c.dir.path().join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    c.cli(&["token", "create", &node, "--role", "worker", "--worker-id", &worker, "--out", tokens.join(format!("{node}.token")).to_str().unwrap()]);
    let allocate = || -> String {
        slurm.run(
            "sbatch",
            &[
                "--parsable",
                &format!("--output={}/slurm-%j.out", slurm.dir.path().display()),
                &format!("--export=ALL,ABLATE_COORDINATOR={},ABLATE_TOKEN_DIR={},ABLATE_BIN={BIN},ABLATE_WORK_DIR={},ABLATE_DEVICES=cpu:2,ABLATE_ADVERTISE_HOST=127.0.0.1", c.url, tokens.display(), c.dir.path().join("slurm-work").display()),
                &format!("{ROOT}/deploy/slurm/ablate-workers.sbatch"),
            ],
        )
    };
    let registered = |c: &Cluster| c.cli(&["workers", "--output", "json"]).lines().any(|l| l.contains(&format!("\"id\":\"{worker}\"")) && l.contains("\"alive\":true") && !l.contains("\"draining\":true"));
    let first = allocate();
    let t0 = std::time::Instant::now();
    while !registered(&c) {
        assert!(t0.elapsed() < std::time::Duration::from_secs(90), "the allocation's worker did not register; squeue: {}; its output:\n{}", slurm.run("squeue", &["-h"]), slurm.outputs());
        std::thread::sleep(std::time::Duration::from_millis(250));
    }

    // a job submitted to ablate runs to success on the Slurm allocation
    let id = c.submit(12, 2);
    c.wait(300, "the job succeeded on the Slurm worker", |c| state(&c.job(&id)) == "succeeded");
    let j = c.job(&id);
    assert!(j["placement"].as_array().unwrap().iter().all(|p| p["worker"] == worker.as_str()), "{j}");
    let sums = j["result"]["rank_checksums"].as_array().unwrap();
    assert_eq!(sums[0], sums[1]);

    // scancel of the allocation preempts the gang running on it
    let long = c.submit(5000, 2);
    c.wait(120, "the long job training", |c| c.job(&long)["step"].as_u64().unwrap_or(0) >= 3);
    slurm.run("scancel", &[&first]);
    c.wait(90, "the gang preempted and requeued", |c| {
        let j = c.job(&long);
        j["reason"].as_str().unwrap_or("").contains("preempted") && j["generation"] == 1
    });
    let j = c.job(&long);
    assert_eq!((j["restarts"].as_u64(), j["infra_restarts"].as_u64()), (Some(0), Some(1)), "a preemption spends no restart: {j}");
    let logs = c.cli(&["logs", &long]);
    let stop: u64 = logs.lines().find_map(|l| l.split("the group stops after step ").nth(1)).and_then(|r| r.split(' ').next()?.parse().ok()).unwrap_or_else(|| panic!("no common stop step in the logs:\n{logs}"));
    assert!(logs.contains("(checkpoint written)"), "{logs}");

    // the next allocation picks it up where it stopped
    let second = allocate();
    c.wait(180, "the job resumed on the next allocation", |c| c.cli(&["logs", &long]).contains(&format!("resumed from step {stop}")));
    let j = c.job(&long);
    assert_eq!((j["generation"].as_u64(), j["restarts"].as_u64()), (Some(2), Some(0)), "{j}");
    c.cli(&["cancel", &long]);
    slurm.run("scancel", &[&second]);
    assert!(Path::new(&slurm.conf).exists());
}
