//! Process-level cluster tests: the real `ablate` binary as coordinator, two workers and
//! their rank processes on loopback.
//! - a world-size-2 job succeeds with identical parameter checksums on both ranks, metrics
//!   in the API and on /metrics (checked by `promtool` when installed; CI installs it);
//! - SIGKILL of one rank mid-job: the survivor leaves its collective with an error, the gang
//!   restarts under a new generation with the reason, counted as the cluster's failure (the
//!   job's own restarts untouched), nothing hangs;
//! - SIGKILL of a worker agent: its ranks die with it, the gang is requeued;
//! - SIGTERM of a worker agent (preemption): the gang stops at one step with a checkpoint
//!   and is placed on the other workers at once, without spending the job's restarts;
//! - SIGKILL of the coordinator mid-job: restarted on the same store, it still has the job,
//!   the workers re-attach and the job finishes;
//! - two coordinators on one etcd store (TLS and user auth): SIGKILL of the leader mid-job, the standby takes
//!   over, the workers (given both URLs) re-attach to it and the job finishes;
//! - a sweep submitted to the cluster runs to its table, and `ablate results` prints the same
//!   table, seed-level intervals included, with the workers' directories deleted.

mod common;

use common::*;
use serde_json::Value;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn a_world_size_two_job_succeeds_with_identical_ranks_and_metrics() {
    let c = Cluster::start(2);
    let id = c.submit_eval(8, 2, 8);
    c.wait(300, "job succeeded", |c| state(&c.job(&id)) == "succeeded");
    let j = c.job(&id);
    let sums = j["result"]["rank_checksums"].as_array().unwrap();
    assert_eq!(sums.len(), 2);
    assert_eq!(sums[0], sums[1], "ranks ended with different parameters");
    let workers: Vec<&str> = j["placement"].as_array().unwrap().iter().map(|p| p["worker"].as_str().unwrap()).collect();
    assert!(workers.contains(&"w0") && workers.contains(&"w1"), "{workers:?}");
    assert_eq!(j["result"]["steps"], 8);
    // both ranks sampled their share of the evaluation, rank 0 computed it; the report reaches the job
    let fd = j["result"]["eval"]["fd_scenes"]["value"].as_f64().expect("final evaluation in the result");
    assert!(fd.is_finite() && fd > 0.0);
    assert_eq!(j["result"]["eval"]["fd_scenes"]["protocol"]["samples"], 8);
    // metric points in the API: every step once, with the communication time measured
    let points: Vec<Value> = c.cli(&["jobs", "metrics", &id, "--output", "json"]).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(points.iter().map(|p| p["step"].as_u64().unwrap()).collect::<Vec<_>>(), (0..8).collect::<Vec<_>>());
    assert!(points.iter().all(|p| p["comm_seconds"].as_f64().unwrap() > 0.0 && p["loss"].as_f64().unwrap().is_finite()));
    // both ranks' logs reach the coordinator
    let logs = c.cli(&["logs", &id]);
    assert!(logs.contains("[rank 0] rank 0/2 of job") && logs.contains("[rank 1] rank 1/2 of job"), "{logs}");
    // and Prometheus sees the job
    let text = http_get(&c.metrics, "/metrics");
    let loss = format!("ablate_job_train_loss{{job_id=\"{id}\"");
    for needle in [loss.as_str(), "ablate_collective_allreduce_seconds_bucket", "ablate_workers{state=\"alive\"} 2", "ablate_rendezvous_duration_seconds_count 1", "ablate_job_fd_scenes{"] {
        assert!(text.contains(needle), "/metrics lacks {needle}:\n{text}");
    }
    match Command::new("promtool").args(["check", "metrics"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn() {
        Ok(mut p) => {
            p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
            let out = p.wait_with_output().unwrap();
            assert!(out.status.success(), "promtool check metrics: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        }
        Err(_) if std::env::var_os("CI").is_none() => eprintln!("promtool not installed: skipped the exposition-format check (CI runs it)"),
        Err(e) => panic!("CI must have promtool (Debian package prometheus): {e}"),
    }
}



#[test]
fn killing_one_rank_frees_the_survivor_and_restarts_the_gang() {
    let c = Cluster::start(2);
    let id = c.submit(5000, 2);
    c.wait(120, "job training", |c| c.job(&id)["step"].as_u64().unwrap_or(0) >= 2);
    let j = c.job(&id);
    let rank = |r: u64| j["placement"].as_array().unwrap().iter().find(|p| p["rank"] == r).unwrap().clone();
    let (victim, survivor) = (rank(1)["pid"].as_u64().unwrap(), rank(0)["pid"].as_u64().unwrap());
    // freeze the survivor's worker, so only the survivor itself can end its process: the
    // agent would otherwise stop it as soon as the job fails
    let w: usize = rank(0)["worker"].as_str().unwrap()[1..].parse().unwrap();
    let agent = c.workers[w].0.id() as u64;
    signal(agent, "-STOP");
    let t0 = Instant::now();
    signal(victim, "-9");
    // the collective deadline is 60 s: the survivor leaves its all-reduce with an error and
    // exits well inside it
    let deadline = Instant::now() + Duration::from_secs(30);
    while !exited(survivor) {
        assert!(Instant::now() < deadline, "the surviving rank hangs");
        std::thread::sleep(Duration::from_millis(100));
    }
    let survivor_done = t0.elapsed();
    signal(agent, "-CONT");
    // a killed rank is retryable: the gang restarts as generation 2 (from rank 0's checkpoint)
    c.wait(60, "gang restarted", |c| {
        let j = c.job(&id);
        j["generation"] == 2 && state(&j) == "running"
    });
    let j = c.job(&id);
    // a killed rank and a dead peer are the cluster's failures: they do not spend the job's restarts
    assert_eq!((j["infra_restarts"].as_u64(), j["restarts"].as_u64()), (Some(1), Some(0)), "{j}");
    let reason = j["reason"].as_str().unwrap().to_string();
    assert!(reason.starts_with("infrastructure restart 1 of 20: rank ") && (reason.contains("killed by signal 9") || reason.contains("closed the connection")), "{reason}");
    c.wait(15, "the survivor's collective error logged", |c| c.cli(&["logs", &id]).contains("rank 0 failed: all-reduce on rank 0: rank 1 closed the connection"));
    eprintln!("survivor exited {survivor_done:?} after its peer was killed");
    c.cli(&["cancel", &id]);
    // no rank process is left behind
    c.wait(15, "workers idle", |c| c.cli(&["workers", "--output", "json"]).lines().all(|l| l.contains("\"busy\":0")));
}

/// SIGTERM to a worker (preemption) drains it: the gang, ranks on other workers included,
/// stops after one common step with rank 0's checkpoint there, the job is placed again at
/// once (not after the worker's heartbeats expire) on the workers left, counted as the
/// cluster's failure, and the agent leaves by itself.
#[test]
fn a_sigterm_drains_a_worker_and_its_gang_moves_without_spending_restarts() {
    let mut c = Cluster::start(3);
    let id = c.submit(5000, 2);
    c.wait(120, "job training", |c| c.job(&id)["step"].as_u64().unwrap_or(0) >= 3);
    let placed: Vec<String> = c.job(&id)["placement"].as_array().unwrap().iter().map(|p| p["worker"].as_str().unwrap().to_string()).collect();
    let w: usize = placed[1][1..].parse().unwrap();
    let agent = c.workers[w].0.id() as u64;
    let t0 = Instant::now();
    signal(agent, "-TERM");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = c.workers[w].0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the drained agent did not leave");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "the agent leaves cleanly after a drain: {status:?}");
    eprintln!("drained in {:?}", t0.elapsed());
    let j = c.job(&id);
    assert!(j["generation"].as_u64().unwrap() >= 2 || state(&j) == "queued", "{j}");
    assert_eq!((j["restarts"].as_u64(), j["infra_restarts"].as_u64()), (Some(0), Some(1)), "{j}");
    assert!(j["reason"].as_str().unwrap().contains("preempted: the group stopped after step"), "{j}");
    // both ranks stopped after the same step, rank 0 with its checkpoint (the other
    // worker's log lines arrive with its next heartbeat)
    let stop_lines = |logs: &str| logs.lines().filter_map(|l| l.split("the group stops after step ").nth(1)).map(|r| r.split(' ').next().unwrap().to_string()).collect::<Vec<_>>();
    c.wait(30, "both ranks' stop lines", |c| stop_lines(&c.cli(&["logs", &id])).len() == 2);
    let logs = c.cli(&["logs", &id]);
    let stops = stop_lines(&logs);
    assert_eq!(stops[0], stops[1], "{logs}");
    assert!(logs.contains("(checkpoint written)"), "{logs}");
    // the gang runs again on the two workers left, at once (the drained one's heartbeats
    // have not even expired yet: 6 s)
    c.wait(60, "gang placed again", |c| {
        let j = c.job(&id);
        j["generation"].as_u64() == Some(2) && matches!(state(&j), "scheduled" | "running")
    });
    let j = c.job(&id);
    let again: Vec<&str> = j["placement"].as_array().unwrap().iter().map(|p| p["worker"].as_str().unwrap()).collect();
    assert!(!again.contains(&placed[1].as_str()), "placed on the drained worker: {again:?}");
    // a cancel stops the same way: SIGTERM first, so the new gang too stops at one step
    c.wait(120, "the new gang training", |c| c.job(&id)["state"] == "running" && c.cli(&["logs", &id]).matches("(generation 2)").count() == 2);
    c.cli(&["cancel", &id]);
    c.wait(30, "the cancelled gang's stop lines", |c| stop_lines(&c.cli(&["logs", &id])).len() == 4);
    let stops = stop_lines(&c.cli(&["logs", &id]));
    assert_eq!(stops[2], stops[3], "{stops:?}");
    c.wait(15, "workers idle", |c| c.cli(&["workers", "--output", "json"]).lines().all(|l| l.contains("\"busy\":0")));
}

#[test]
fn a_coordinator_restart_mid_job_loses_nothing() {
    let mut c = Cluster::start(2);
    let id = c.submit(40, 2);
    c.wait(120, "job training", |c| c.job(&id)["step"].as_u64().unwrap_or(0) >= 2);
    let queued = c.submit(5, 4); // cannot be placed on two slots: stays queued
    drop(c.coordinator.take()); // SIGKILL
    std::thread::sleep(Duration::from_millis(1500));
    c.start_coordinator();
    let j = c.job(&id);
    assert!(matches!(state(&j), "running" | "succeeded"), "{j}");
    assert_eq!(state(&c.job(&queued)), "queued");
    c.wait(300, "job succeeded after the restart", |c| state(&c.job(&id)) == "succeeded");
    let j = c.job(&id);
    assert_eq!(j["generation"], 1, "the job ran once, never twice");
    let sums = j["result"]["rank_checksums"].as_array().unwrap();
    assert_eq!(sums[0], sums[1]);
}

#[test]
fn a_killed_worker_takes_its_ranks_along_and_the_gang_is_requeued() {
    let mut c = Cluster::start(2);
    let id = c.submit(5000, 2);
    c.wait(120, "job training", |c| c.job(&id)["step"].as_u64().unwrap_or(0) >= 2);
    let j = c.job(&id);
    let on_w0 = j["placement"].as_array().unwrap().iter().find(|p| p["worker"] == "w0").unwrap()["pid"].as_u64().unwrap();
    drop(c.workers.remove(0)); // SIGKILL the agent w0
    let deadline = Instant::now() + Duration::from_secs(10);
    while !exited(on_w0) {
        assert!(Instant::now() < deadline, "the rank outlived its killed agent");
        std::thread::sleep(Duration::from_millis(100));
    }
    // the survivor's retryable failure requeues the gang at once; once w0's heartbeats are
    // overdue (6 s) it is lost, and with one slot left the gang waits in the queue
    c.wait(30, "job requeued for the lost worker", |c| {
        let j = c.job(&id);
        state(&j) == "queued" && j["reason"].as_str().unwrap().contains("worker w0 lost")
    });
    std::thread::sleep(Duration::from_secs(2));
    let j = c.job(&id);
    assert_eq!(state(&j), "queued", "{j}");
    assert!(j["infra_restarts"].as_u64().unwrap() >= 1 && j["restarts"] == 0, "{j}");
    c.wait(15, "w1 idle", |c| c.cli(&["workers", "--output", "json"]).lines().any(|l| l.contains("\"id\":\"w1\"") && l.contains("\"busy\":0")));
}

#[test]
fn a_sweep_submitted_to_the_cluster_runs_to_its_table() {
    let c = Cluster::start(2);
    let file = c.dir.path().join("sweep.toml");
    std::fs::write(
        &file,
        r#"
name = "remote"
steps = 6
seeds = [0, 1]
[baseline]
train = { batch_size = 2 }
sample = { count = 2, steps = 2 }
eval = { samples = 4, every = 3, sampler_steps = 2 }
[[arm]]
name = "muon"
overrides = { "optim.kind" = "muon" }
"#,
    )
    .unwrap();
    let v: Value = serde_json::from_str(&c.cli(&["sweep", "submit", file.to_str().unwrap(), "--json"])).unwrap();
    let id = v["sweep"].as_str().unwrap().to_string();
    assert_eq!(v["jobs"].as_array().unwrap().len(), 4);
    // `ablate watch <sweep>` follows it to the end and prints the table
    let out = c.ablate().args(["watch", &id, "--coordinator", &c.url]).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}{}", String::from_utf8_lossy(&out.stderr));
    assert!(table.lines().any(|l| l.starts_with("baseline") && l.contains("succeeded")), "{table}");
    let rows: Value = serde_json::from_str(&c.cli(&["results", &id, "--format", "json"])).unwrap();
    assert_eq!(rows[1]["arm"], "muon");
    assert_eq!(rows[1]["steps"], 6);
    assert!(rows[1]["delta_vs_baseline"]["samples_per_sec"].as_f64().is_some());
    // the evaluations along the runs (steps 3 and 6) reached the coordinator: iso-compute
    let iso = &rows[1]["iso_compute"];
    assert!(iso["train_seconds"]["budget"].as_f64().unwrap() > 0.0, "{iso}");
    assert_eq!(iso["samples_seen"]["budget"].as_f64(), Some(12.0), "{iso}");
    assert!(iso["samples_seen"]["fd_scenes"].as_f64().unwrap() > 0.0, "{iso}");
    // the per-image data reached the coordinator: seed-level intervals with the workers'
    // directories gone, the same table as before
    let before = c.cli(&["results", &id]);
    // (the job folders and caches: the running agents keep renewing their lease files)
    for w in ["w0", "w1"] {
        for d in ["jobs", "eval-cache"] {
            let p = c.dir.path().join(w).join(d);
            if p.exists() {
                std::fs::remove_dir_all(&p).unwrap();
            }
        }
    }
    let rows: Value = serde_json::from_str(&c.cli(&["results", &id, "--format", "json"])).unwrap();
    assert_eq!(rows[1]["n_seeds"], 2, "{}", rows[1]);
    assert_eq!(rows[1]["interval"], "seeds-t");
    for m in ["fd_scenes", "mmd", "accuracy"] {
        let ci = rows[1]["ci95"][m].as_array().unwrap_or_else(|| panic!("no {m} interval: {}", rows[1]));
        assert!(ci[0].as_f64().unwrap() <= ci[1].as_f64().unwrap());
        assert!(rows[1]["significant"][m].is_boolean());
    }
    assert_eq!(c.cli(&["results", &id]), before);
    // and the report of the remote sweep is written from the API alone
    let out = c.dir.path().join("report");
    c.cli(&["report", &id, "--out", out.to_str().unwrap()]);
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    for needle in ["<svg", "muon", "optim.kind", "At equal samples seen: 12", "No sample grids at hand"] {
        assert!(html.contains(needle), "report.html lacks {needle}");
    }
}

#[test]
fn with_etcd_a_standby_coordinator_takes_over_when_the_leader_dies() {
    use ablate_coordinator::store::local_etcd::{self, LocalEtcd};
    let Some(etcd_bin) = local_etcd::binary_or_skip("with_etcd_a_standby_coordinator_takes_over") else { return };
    let mut standby = None;
    let mut c = Cluster::start_with(1, |c| {
        // etcd as a shared cluster runs it: TLS with client certificates and user auth
        let etcd = LocalEtcd::start_secure(&etcd_bin, "ha/", 300).unwrap();
        let store = etcd.spec("ha/");
        let (a_port, b_port) = (c.grpc_port, free_port());
        let (a, a_first) = c.spawn_coordinator(a_port, &store, &["--id", "coord-a", "--lease-ttl-s", "2"]);
        c.metrics = serving(&a_first, 30).expect("the first coordinator leads");
        let (b, b_first) = c.spawn_coordinator(b_port, &store, &["--id", "coord-b", "--lease-ttl-s", "2"]);
        assert!(serving(&b_first, 2).is_none(), "the second coordinator must wait as a standby");
        assert!(std::net::TcpStream::connect(("127.0.0.1", b_port)).is_err(), "a standby listens on nothing");
        // clients and workers get both URLs and use the one that answers
        c.url = format!("http://127.0.0.1:{a_port},http://127.0.0.1:{b_port}");
        c.coordinator = Some(a);
        standby = Some(b_first);
        c.extra.push(Box::new(etcd));
        c.extra.push(Box::new(b));
    });
    let id = c.submit(60, 1);
    c.wait(120, "job training", |c| c.job(&id)["step"].as_u64().unwrap_or(0) >= 2);
    let killed = Instant::now();
    drop(c.coordinator.take()); // SIGKILL of the leader
    let b_metrics = serving(standby.as_ref().unwrap(), 20).expect("the standby takes over within the lease (2 s) and its polling");
    let took_over = killed.elapsed();
    c.wait(300, "job succeeded under the new leader", |c| state(&c.job(&id)) == "succeeded");
    let j = c.job(&id);
    assert_eq!(j["generation"], 1, "the running rank re-attached to the new leader: the job ran once");
    assert_eq!(j["result"]["steps"], 60);
    // the new leader serves metrics for the job
    assert!(http_get(&b_metrics, "/metrics").contains("ablate_workers{state=\"alive\"} 1"));
    eprintln!("standby took over {took_over:?} after the leader was killed");
}

/// A client other than this CLI (raw gRPC, as a Python script would call it) gets
/// INVALID_ARGUMENT naming the key for a config the trainer refuses, for a job and for a
/// sweep holding one such config; nothing is stored. A good config goes through.
#[test]
fn the_coordinator_checks_every_submitted_config_itself() {
    use ablate_proto::v1::{self, job_service_client::JobServiceClient};
    let c = Cluster::start(0);
    let token = std::fs::read_to_string(c.admin_token()).unwrap().trim().to_string();
    let good = std::fs::read_to_string(job_config_eval(c.dir.path(), 2, 0)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (_, ch) = ablate_proto::connect_authed(&c.url, Some(&token)).await.unwrap();
        let mut jobs = JobServiceClient::new(ch);
        let spec = |toml: &str| v1::SubmitJobRequest { config_toml: toml.into(), world_size: 1, ..Default::default() };
        for (bad, key) in [("[model]\npreset = 3\n", "model.preset: invalid type: integer `3`, expected a string"), ("[model]\npreset = \"huge\"\n", "unknown model.preset \"huge\""), ("[train]\nbatch_size = 0\n", "train.batch_size must be positive")] {
            let e = jobs.submit_job(spec(bad)).await.expect_err("a bad config is refused");
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
            assert!(e.message().contains(key), "{bad:?}: {}", e.message());
        }
        let e = jobs.submit_sweep(v1::SubmitSweepRequest { name: "s".into(), jobs: vec![spec(&good), spec("[optim]\nlr = \"fast\"\n")] }).await.expect_err("a sweep with a bad config is refused whole");
        assert!(e.code() == tonic::Code::InvalidArgument && e.message().contains("optim.lr"), "{e:?}");
        let listed = jobs.list_jobs(v1::ListJobsRequest::default()).await.unwrap().into_inner();
        assert!(listed.jobs.is_empty(), "nothing stored: {:?}", listed.jobs);
        jobs.submit_job(spec(&good)).await.expect("a good config goes through");
    });
}

/// With a checkpoint store shared by the workers, a job whose worker is preempted (SIGTERM)
/// resumes on another worker from the step it stopped at, not from scratch, and the
/// preemption spends none of the job's own restarts: on a shared folder, and on an S3 object
/// store (a local moto server; skipped without one unless ABLATE_REQUIRE_S3=1, as in CI).
#[test]
fn with_a_checkpoint_store_a_preempted_job_resumes_on_another_worker() {
    let store = tempfile::tempdir().unwrap();
    let root = store.path().to_path_buf();
    preempted_job_resumes_elsewhere(&store.path().display().to_string(), vec![], move |id, step| root.join(id).join(format!("step-{step:08}")).join("MANIFEST").exists());
}

#[test]
fn with_an_s3_checkpoint_store_a_preempted_job_resumes_on_another_worker() {
    use ablate_worker::local_s3::{LocalS3, TEST_CREDENTIALS};
    let Some(s3) = LocalS3::start_or_skip("with_an_s3_checkpoint_store", "ablate-cluster") else { return };
    let env: Vec<(String, String)> = TEST_CREDENTIALS.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let spec = s3.spec("ckpt");
    let listing = spec.clone();
    preempted_job_resumes_elsewhere(&spec, env.clone(), move |id, step| {
        let out = Command::new(BIN).args(["checkpoints", &ablate_worker::s3::for_job(&listing, id)]).envs(env.iter().map(|(k, v)| (k, v))).output().unwrap();
        String::from_utf8_lossy(&out.stdout).lines().any(|l| l.split_whitespace().next() == Some(&step.to_string()))
    });
    drop(s3);
}

fn preempted_job_resumes_elsewhere(store: &str, env: Vec<(String, String)>, published: impl Fn(&str, u64) -> bool) {
    let mut c = Cluster::start_with(2, |c| {
        c.worker_args = vec!["--checkpoint-store".into(), store.to_string(), "--checkpoint-keep".into(), "2".into()];
        c.worker_env = env;
        Cluster::start_coordinator(c)
    });
    let id = c.submit(5000, 1);
    c.wait(120, "job training", |c| c.job(&id)["step"].as_u64().unwrap_or(0) >= 3);
    let first = c.job(&id)["placement"][0]["worker"].as_str().unwrap().to_string();
    let w: usize = first[1..].parse().unwrap();
    signal(c.workers[w].0.id() as u64, "-TERM");
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.workers[w].0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the preempted agent did not leave");
        std::thread::sleep(Duration::from_millis(100));
    }
    let stopped_at = |logs: &str| logs.lines().find_map(|l| l.split("the group stops after step ").nth(1)).map(|r| r.split(' ').next().unwrap().parse::<u64>().unwrap());
    c.wait(30, "the stop line", |c| stopped_at(&c.cli(&["logs", &id])).is_some());
    let stop = stopped_at(&c.cli(&["logs", &id])).unwrap();
    c.wait(120, "the job resumed on the other worker", |c| c.cli(&["logs", &id]).contains(&format!("resumed from step {stop}")));
    let logs = c.cli(&["logs", &id]);
    assert!(logs.contains(&format!("restored step {stop} from the checkpoint store")), "{logs}");
    let j = c.job(&id);
    let now_on = j["placement"][0]["worker"].as_str().unwrap();
    assert_ne!(now_on, first, "{j}");
    assert_eq!((j["restarts"].as_u64(), j["generation"].as_u64()), (Some(0), Some(2)), "the preemption spends no restart: {j}");
    assert!(published(&id, stop), "step {stop} is published in the store");
    c.cli(&["cancel", &id]);
}

/// Fencing: a frozen agent (SIGSTOP) cannot kill its ranks, so they stop themselves when its
/// lease ends, which is before the coordinator declares the worker lost and places the job
/// again: the job never runs twice at once.
#[test]
fn a_frozen_worker_s_ranks_stop_before_the_job_is_placed_again() {
    let c = Cluster::start(2);
    let id = c.submit(5000, 1);
    c.wait(120, "job training", |c| c.job(&id)["step"].as_u64().unwrap_or(0) >= 3);
    let first = c.job(&id)["placement"][0]["worker"].as_str().unwrap().to_string();
    let w: usize = first[1..].parse().unwrap();
    let agent = c.workers[w].0.id() as u64;
    let ranks = ranks_of(agent);
    assert_eq!(ranks.len(), 1, "one rank under the agent: {ranks:?}");
    let t0 = Instant::now();
    signal(agent, "-STOP");
    let (mut fenced, mut placed_again) = (None, None);
    while fenced.is_none() || placed_again.is_none() {
        assert!(t0.elapsed() < Duration::from_secs(60), "fenced {fenced:?}, placed again {placed_again:?}");
        if fenced.is_none() && exited(ranks[0]) {
            fenced = Some(t0.elapsed());
        }
        if placed_again.is_none() && c.job(&id)["generation"].as_u64().unwrap_or(0) >= 2 {
            placed_again = Some(t0.elapsed());
            assert!(exited(ranks[0]), "the job was placed again while its first rank still ran");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("frozen agent: its rank stopped itself after {:?}, the job was placed again after {:?}", fenced.unwrap(), placed_again.unwrap());
    assert!(fenced < placed_again);
    signal(agent, "-CONT");
    c.wait(120, "the job training on the other worker", |c| {
        let j = c.job(&id);
        j["state"] == "running" && j["placement"][0]["worker"].as_str() != Some(first.as_str())
    });
    let j = c.job(&id);
    assert_eq!(j["restarts"].as_u64(), Some(0), "a lost worker spends no restart: {j}");
    c.cli(&["cancel", &id]);
}

/// Fencing when the coordinator is gone (SIGSTOP): the workers' heartbeats go unanswered,
/// the leases end and the ranks stop; once the coordinator is back, the job is placed again
/// (a failure of the cluster's class, no restart spent) and trains on.
#[test]
fn ranks_stop_when_the_coordinator_is_gone_past_the_lease_and_the_job_goes_on() {
    let c = Cluster::start(1);
    let id = c.submit(5000, 1);
    c.wait(120, "job training", |c| c.job(&id)["step"].as_u64().unwrap_or(0) >= 3);
    let ranks = ranks_of(c.workers[0].0.id() as u64);
    assert_eq!(ranks.len(), 1, "{ranks:?}");
    let coordinator = c.coordinator.as_ref().unwrap().0.id() as u64;
    signal(coordinator, "-STOP");
    let t0 = Instant::now();
    while !exited(ranks[0]) {
        if t0.elapsed() > Duration::from_secs(30) {
            signal(coordinator, "-CONT");
            panic!("the rank still runs {:?} after the coordinator stopped answering", t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("coordinator gone: the rank stopped itself after {:?} (lease 4.8 s of a 6 s expiry)", t0.elapsed());
    signal(coordinator, "-CONT");
    c.wait(120, "the job placed again and training", |c| {
        let j = c.job(&id);
        j["generation"].as_u64().unwrap_or(0) >= 2 && j["state"] == "running"
    });
    let j = c.job(&id);
    assert_eq!(j["restarts"].as_u64(), Some(0), "{j}");
    c.wait(30, "the fenced rank's report", |c| c.cli(&["logs", &id]).contains("fenced: worker w0 lost its lease") || c.job(&id)["reason"].as_str().unwrap_or("").contains("fenced"));
    c.cli(&["cancel", &id]);
}

/// A sweep's life on the cluster: it grows from its file (a new arm trains alone; more steps
/// extend every job from its checkpoint), a changed arm is refused naming the key, `sweep
/// list` shows it, and `sweep cancel` / `sweep retry` stop and requeue its jobs.
#[test]
fn a_sweep_on_the_cluster_grows_is_listed_cancelled_and_retried() {
    // a shared checkpoint store: an extended job resumes on whichever worker it lands
    let store = tempfile::tempdir().unwrap();
    let store_arg = store.path().display().to_string();
    let c = Cluster::start_with(2, |c| {
        c.worker_args = vec!["--checkpoint-store".into(), store_arg.clone()];
        Cluster::start_coordinator(c)
    });
    let file = c.dir.path().join("growing.toml");
    let head = |steps: u64| format!("name = \"growing\"\nsteps = {steps}\n[baseline]\ntrain = {{ batch_size = 2, checkpoint_every = 3 }}\nsample = {{ count = 1, steps = 1 }}\neval = {{ samples = 0 }}\n");
    let muon = "[[arm]]\nname = \"muon\"\noverrides = { \"optim.kind\" = \"muon\" }\n";
    std::fs::write(&file, head(6)).unwrap();
    let v: Value = serde_json::from_str(&c.cli(&["sweep", "submit", file.to_str().unwrap(), "--json"])).unwrap();
    let id = v["sweep"].as_str().unwrap().to_string();
    let watch = |c: &Cluster| {
        let out = c.ablate().args(["watch", &id, "--coordinator", &c.url]).output().unwrap();
        assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    };
    watch(&c);
    let jobs = |c: &Cluster| -> Vec<Value> { serde_json::from_str::<Value>(&c.cli(&["jobs", "list", "--sweep", &id, "--output", "json"])).unwrap().as_array().unwrap().clone() };

    // a new arm: only it trains
    std::fs::write(&file, format!("{}{muon}", head(6))).unwrap();
    let out = c.cli(&["sweep", "grow", &id, file.to_str().unwrap()]);
    assert!(out.contains("1 job(s) added (muon), 1 kept"), "{out}");
    watch(&c);
    let js = jobs(&c);
    assert_eq!(js.len(), 2);
    assert_eq!(js[0]["generation"], 1, "the baseline was not run again: {}", js[0]);
    assert_eq!((js[1]["arm"].as_str(), state(&js[1])), (Some("muon"), "succeeded"));

    // a changed arm is refused before anything changes
    std::fs::write(&file, format!("{}{muon}", head(6).replace("batch_size = 2", "batch_size = 4"))).unwrap();
    let refused = c.ablate().args(["sweep", "grow", &id, file.to_str().unwrap(), "--coordinator", &c.url]).output().unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("train.batch_size: 2 -> 4"), "{err}");

    // more steps: every job goes on from its checkpoint at step 6
    std::fs::write(&file, format!("{}{muon}", head(9))).unwrap();
    let out = c.cli(&["sweep", "grow", &id, file.to_str().unwrap()]);
    assert!(out.contains("2 job(s) extended from 6 to 9 steps"), "{out}");
    watch(&c);
    for j in jobs(&c) {
        assert_eq!((j["result"]["steps"].as_u64(), j["restarts"].as_u64()), (Some(9), Some(0)), "{j}");
        let logs = c.cli(&["logs", j["id"].as_str().unwrap()]);
        assert!(logs.contains("resumed from step 6"), "{logs}");
    }
    let listed = c.cli(&["sweep", "list", "--json"]);
    let line: Value = serde_json::from_str(listed.lines().find(|l| l.contains(&id)).unwrap()).unwrap();
    assert_eq!((line["jobs"].as_u64(), line["states"]["succeeded"].as_u64()), (Some(2), Some(2)), "{line}");

    // cancel and retry: a long extension, cancelled, then queued again
    std::fs::write(&file, format!("{}{muon}", head(5000))).unwrap();
    c.cli(&["sweep", "grow", &id, file.to_str().unwrap()]);
    c.wait(120, "the extended jobs running", |c| jobs(c).iter().all(|j| state(j) == "running"));
    assert!(c.cli(&["sweep", "cancel", &id]).contains("2 job(s) cancelled"));
    c.wait(30, "both cancelled", |c| jobs(c).iter().all(|j| state(j) == "cancelled"));
    assert!(c.cli(&["sweep", "retry", &id]).contains("2 failed or cancelled job(s) queued again"));
    c.wait(120, "both running again", |c| jobs(c).iter().all(|j| state(j) == "running"));
    c.cli(&["sweep", "cancel", &id]);
}
