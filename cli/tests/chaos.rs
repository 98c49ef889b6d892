//! The chaos harness: rounds of world-size-2 jobs (a sweep each) on three workers with a
//! shared checkpoint store, and a seeded run of faults at random moments: SIGKILL of a rank,
//! of a worker agent and of the coordinator, SIGSTOP/SIGCONT of an agent or of the
//! coordinator (a partition: up to 9 s, past the 4.8 s lease and the 6 s expiry), and SIGTERM
//! of an agent (a preemption). The first six faults are one of each kind, in a seeded order.
//!
//! Then every job must end `succeeded`, with its ranks' checksums equal; from the ranks' own
//! journals (`ablate_worker::journal`): no two generations of a job trained at the same time,
//! no rank of a generation ran twice, and every generation started at a step rank 0 had
//! begun to checkpoint and at or past the newest checkpoint saved before it. It prints the
//! faults by kind, the jobs lost, hung and run twice, resume times (fault to the first step of
//! the next generation: p50 and max) and restarts by class.
//!
//! CI runs the default, short version. A long run (docs/reliability.md):
//! `ABLATE_CHAOS_FAULTS=60 ABLATE_CHAOS_SEED=7 cargo test -p ablate-cli --test chaos -- --nocapture`.
//! Settings: `ABLATE_CHAOS_SEED` (1), `ABLATE_CHAOS_FAULTS` (6), `ABLATE_CHAOS_JOBS` per round
//! (3), `ABLATE_CHAOS_STEPS` per job (120), `ABLATE_CHAOS_DEADLINE_S` for the jobs to end
//! after the last fault (600).

mod common;

use ablate_worker::journal::{self, Entry, Kind};
use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// xorshift64*: the harness's only randomness, from its seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillRank,
    KillWorker,
    KillCoordinator,
    FreezeWorker,
    FreezeCoordinator,
    PreemptWorker,
}

const KINDS: [Fault; 6] = [Fault::KillRank, Fault::KillWorker, Fault::KillCoordinator, Fault::FreezeWorker, Fault::FreezeCoordinator, Fault::PreemptWorker];

impl Fault {
    fn label(self) -> &'static str {
        match self {
            Fault::KillRank => "SIGKILL rank",
            Fault::KillWorker => "SIGKILL worker",
            Fault::KillCoordinator => "SIGKILL coordinator",
            Fault::FreezeWorker => "SIGSTOP worker",
            Fault::FreezeCoordinator => "SIGSTOP coordinator",
            Fault::PreemptWorker => "SIGTERM worker",
        }
    }
}

struct Injected {
    kind: Fault,
    unix_ms: u64,
    /// The jobs it hit, with their generation then.
    hit: Vec<(String, u64)>,
}

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))).unwrap_or(default)
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// A signal that may find the process gone (a rank that just ended): whether it was sent.
fn send(pid: u64, sig: &str) -> bool {
    Command::new("kill").args([sig, &pid.to_string()]).stderr(std::process::Stdio::null()).status().map(|s| s.success()).unwrap_or(false)
}

fn jobs(c: &Cluster) -> Vec<Value> {
    serde_json::from_str::<Value>(&c.cli(&["jobs", "list", "--output", "json"])).unwrap().as_array().unwrap().clone()
}

fn terminal(j: &Value) -> bool {
    matches!(state(j), "succeeded" | "failed" | "cancelled")
}

/// Submits round `round`: `n` world-size-2 jobs of `steps` steps, checkpointed every 5.
fn submit_round(c: &Cluster, round: usize, n: u64, steps: u64) {
    let file = c.dir.path().join(format!("chaos-{round}.toml"));
    let seeds: Vec<String> = (0..n).map(|s| (round as u64 * 100 + s).to_string()).collect();
    let text = format!(
        "name = \"chaos-{round}\"\nsteps = {steps}\nseeds = [{}]\nworld_size = 2\n[baseline]\ntrain = {{ batch_size = 2, checkpoint_every = 5, log_every = 50 }}\nsample = {{ count = 1, steps = 1 }}\neval = {{ samples = 0 }}\n",
        seeds.join(", ")
    );
    std::fs::write(&file, text).unwrap();
    c.cli(&["sweep", "submit", file.to_str().unwrap(), "--json"]);
}

/// The jobs placed on worker `w`, with their generation.
fn placed_on(jobs: &[Value], w: &str) -> Vec<(String, u64)> {
    jobs.iter()
        .filter(|j| matches!(state(j), "scheduled" | "running") && j["placement"].as_array().is_some_and(|p| p.iter().any(|p| p["worker"] == w)))
        .map(|j| (j["id"].as_str().unwrap().to_string(), j["generation"].as_u64().unwrap()))
        .collect()
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

#[test]
fn a_seeded_storm_of_kills_partitions_and_preemptions_loses_no_job() {
    let seed = setting("ABLATE_CHAOS_SEED", 1);
    let faults = setting("ABLATE_CHAOS_FAULTS", 6) as usize;
    let per_round = setting("ABLATE_CHAOS_JOBS", 3);
    let steps = setting("ABLATE_CHAOS_STEPS", 120);
    let settle = Duration::from_secs(setting("ABLATE_CHAOS_DEADLINE_S", 600));
    let store = tempfile::tempdir().unwrap();
    let store_arg = store.path().display().to_string();
    let mut c = Cluster::start_with(3, |c| {
        c.worker_args = vec!["--checkpoint-store".into(), store_arg.clone(), "--checkpoint-keep".into(), "3".into()];
        c.worker_devices = "cpu:2".into();
        Cluster::start_coordinator(c)
    });
    let mut rng = Rng::new(seed);
    let mut first: Vec<Fault> = KINDS.to_vec();
    for i in (1..first.len()).rev() {
        first.swap(i, rng.below(i + 1));
    }
    let t0 = Instant::now();
    let mut rounds = 1;
    submit_round(&c, 0, per_round, steps);
    let mut injected: Vec<Injected> = Vec::new();
    while injected.len() < faults {
        std::thread::sleep(rng.millis(2000, 6000));
        let now = jobs(&c);
        if now.iter().all(terminal) {
            submit_round(&c, rounds, per_round, steps);
            rounds += 1;
            continue;
        }
        let running: Vec<&Value> = now.iter().filter(|j| state(j) == "running").collect();
        if running.is_empty() {
            continue; // nothing to hit yet: the gangs are starting
        }
        let kind = first.get(injected.len()).copied().unwrap_or_else(|| KINDS[rng.below(KINDS.len())]);
        let job = running[rng.below(running.len())];
        let placement = job["placement"].as_array().unwrap();
        let p = &placement[rng.below(placement.len())];
        let (worker, pid) = (p["worker"].as_str().unwrap().to_string(), p["pid"].as_u64().unwrap_or(0));
        let w: usize = worker[1..].parse().unwrap();
        let agent = c.workers[w].0.id() as u64;
        let at = unix_ms();
        let hit;
        let detail;
        match kind {
            Fault::KillRank => {
                if pid == 0 || !send(pid, "-KILL") {
                    continue; // the rank ended on its own meanwhile
                }
                hit = vec![(job["id"].as_str().unwrap().to_string(), job["generation"].as_u64().unwrap())];
                detail = format!("{} of {} (pid {pid})", p["rank"], hit[0].0);
            }
            Fault::KillWorker => {
                hit = placed_on(&now, &worker);
                let _ = c.workers[w].0.kill();
                let _ = c.workers[w].0.wait();
                std::thread::sleep(rng.millis(500, 3000));
                c.workers[w] = c.spawn_worker(w);
                detail = format!("agent {worker}, restarted");
            }
            Fault::PreemptWorker => {
                hit = placed_on(&now, &worker);
                assert!(send(agent, "-TERM"));
                let deadline = Instant::now() + Duration::from_secs(120);
                while c.workers[w].0.try_wait().unwrap().is_none() {
                    assert!(Instant::now() < deadline, "hang: the preempted agent {worker} did not leave within 120 s");
                    std::thread::sleep(Duration::from_millis(100));
                }
                let drained = Duration::from_millis(unix_ms() - at);
                c.workers[w] = c.spawn_worker(w);
                detail = format!("agent {worker}, drained in {:.1} s, restarted", drained.as_secs_f64());
            }
            Fault::FreezeWorker => {
                hit = placed_on(&now, &worker);
                let d = rng.millis(1000, 9000);
                assert!(send(agent, "-STOP"));
                std::thread::sleep(d);
                assert!(send(agent, "-CONT"));
                detail = format!("agent {worker} for {:.1} s", d.as_secs_f64());
            }
            Fault::KillCoordinator => {
                hit = now.iter().filter(|j| matches!(state(j), "scheduled" | "running")).map(|j| (j["id"].as_str().unwrap().to_string(), j["generation"].as_u64().unwrap())).collect();
                drop(c.coordinator.take());
                std::thread::sleep(rng.millis(200, 2000));
                c.start_coordinator();
                detail = "restarted on its store".into();
            }
            Fault::FreezeCoordinator => {
                hit = now.iter().filter(|j| matches!(state(j), "scheduled" | "running")).map(|j| (j["id"].as_str().unwrap().to_string(), j["generation"].as_u64().unwrap())).collect();
                let d = rng.millis(1000, 9000);
                let pid = c.coordinator.as_ref().unwrap().0.id() as u64;
                assert!(send(pid, "-STOP"));
                std::thread::sleep(d);
                assert!(send(pid, "-CONT"));
                detail = format!("for {:.1} s", d.as_secs_f64());
            }
        }
        eprintln!("fault {}/{faults} at {:.0} s: {} {detail}", injected.len() + 1, t0.elapsed().as_secs_f64(), kind.label());
        injected.push(Injected { kind, unix_ms: at, hit });
    }
    let chaos_s = t0.elapsed().as_secs_f64();

    // every job ends: one still placed or queued at the deadline hangs
    let deadline = Instant::now() + settle;
    let last = loop {
        let now = jobs(&c);
        if now.iter().all(terminal) {
            break now;
        }
        if Instant::now() > deadline {
            let hung: Vec<String> = now.iter().filter(|j| !terminal(j)).map(|j| format!("{} {} ({})", j["id"], state(j), j["reason"])).collect();
            panic!("hang: {} job(s) not ended {} s after the last fault: {hung:?}", hung.len(), settle.as_secs());
        }
        std::thread::sleep(Duration::from_secs(1));
    };

    // the ranks' own journals, from every worker's job folders
    let journal_of = |id: &str| -> Vec<Entry> {
        (0..3).flat_map(|w| journal::read_dir(&c.dir.path().join(format!("w{w}/jobs/{id}"))).unwrap_or_default()).collect()
    };
    let (mut lost, mut twice, mut unequal, mut resume_wrong) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut fresh, mut resumed) = (0, 0);
    let mut first_step_after: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new(); // job -> (generation, first step ms)
    for j in &last {
        let id = j["id"].as_str().unwrap().to_string();
        if state(j) != "succeeded" {
            lost.push(format!("{id}: {} ({})", state(j), j["reason"]));
            continue;
        }
        let sums = j["result"]["rank_checksums"].as_array().unwrap();
        if sums.len() != 2 || sums[0] != sums[1] {
            unequal.push(format!("{id}: {sums:?}"));
        }
        let entries = journal_of(&id);
        // each generation's step times; one process per (generation, rank)
        let mut span: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
        let mut pids: BTreeMap<(u64, usize), BTreeSet<u32>> = BTreeMap::new();
        for e in &entries {
            pids.entry((e.generation, e.rank)).or_default().insert(e.pid);
            if e.event == Kind::Step {
                let s = span.entry(e.generation).or_insert((e.unix_ms, e.unix_ms));
                s.0 = s.0.min(e.unix_ms);
                s.1 = s.1.max(e.unix_ms);
            }
        }
        for ((g, r), p) in &pids {
            if p.len() > 1 {
                twice.push(format!("{id}: generation {g} rank {r} ran as {} processes {p:?}", p.len()));
            }
        }
        let spans: Vec<(u64, (u64, u64))> = span.into_iter().collect();
        for (i, (g, (_, end))) in spans.iter().enumerate() {
            for (g2, (start2, _)) in &spans[i + 1..] {
                if end > start2 {
                    twice.push(format!("{id}: generation {g} still stepped at {end} ms after generation {g2} began at {start2} ms"));
                }
            }
        }
        first_step_after.insert(id.clone(), spans.iter().map(|(g, (s, _))| (*g, *s)).collect());
        // every generation resumed from a checkpoint that was being written, and lost none that was saved
        for start in entries.iter().filter(|e| e.rank == 0 && e.event == Kind::Started) {
            let before = |k: Kind| entries.iter().filter(move |e| e.rank == 0 && e.event == k && e.generation < start.generation);
            let begun: BTreeSet<usize> = before(Kind::CheckpointBegun).map(|e| e.step).collect();
            let saved = before(Kind::CheckpointSaved).map(|e| e.step).max().unwrap_or(0);
            if start.step == 0 {
                fresh += 1;
            } else {
                resumed += 1;
            }
            let ok = if start.step == 0 { saved == 0 } else { begun.contains(&start.step) && start.step >= saved };
            if !ok {
                resume_wrong.push(format!("{id}: generation {} started at step {}, newest saved before it {saved}, begun {begun:?}", start.generation, start.step));
            }
        }
    }
    // resume time: from a fault to the first step of a later generation of a job it hit
    let mut resumes: Vec<f64> = injected
        .iter()
        .flat_map(|f| f.hit.iter().map(move |h| (f, h)))
        .filter_map(|(f, (id, g))| first_step_after.get(id)?.iter().filter(|(g2, t)| g2 > g && *t >= f.unix_ms).map(|(_, t)| (t - f.unix_ms) as f64 / 1000.0).reduce(f64::min))
        .collect();
    resumes.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (infra, own): (u64, u64) = last.iter().fold((0, 0), |(i, o), j| (i + j["infra_restarts"].as_u64().unwrap_or(0), o + j["restarts"].as_u64().unwrap_or(0)));
    let mut by_kind: BTreeMap<Fault, usize> = BTreeMap::new();
    for f in &injected {
        *by_kind.entry(f.kind).or_default() += 1;
    }

    println!("chaos, seed {seed}: {} faults in {chaos_s:.0} s over {rounds} round(s) of {per_round} world-size-2 jobs ({steps} steps each) on 3 workers", injected.len());
    println!("  faults: {}", by_kind.iter().map(|(k, n)| format!("{} {n}", k.label())).collect::<Vec<_>>().join(", "));
    println!("  jobs: {} succeeded, {} lost, 0 hung, {} run twice at once; rank checksums equal in {} of {}", last.len() - lost.len(), lost.len(), twice.len(), last.len() - lost.len() - unequal.len(), last.len() - lost.len());
    println!("  generation starts: {fresh} fresh, {resumed} resumed; at a checkpoint's step and past every saved one: {} of {}", fresh + resumed - resume_wrong.len(), fresh + resumed);
    if resumes.is_empty() {
        println!("  resume after a fault: none needed");
    } else {
        println!("  resume after a fault (to the next generation's first step): p50 {:.1} s, max {:.1} s, n = {}", percentile(&resumes, 0.5), resumes.last().unwrap(), resumes.len());
    }
    println!("  restarts: infrastructure {infra}, the jobs' own {own}");
    assert!(lost.is_empty(), "jobs lost: {lost:?}");
    assert!(twice.is_empty(), "jobs run twice at once: {twice:?}");
    assert!(unequal.is_empty(), "ranks' checksums differ: {unequal:?}");
    assert!(resume_wrong.is_empty(), "resumed at the wrong step: {resume_wrong:?}");
    assert_eq!(own, 0, "only the cluster's failures happened: the jobs' own restarts stay unspent");
    assert_eq!(injected.len(), faults);
}
