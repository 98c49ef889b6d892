//! An in-process coordinator driven by fake workers over real gRPC: gang semantics,
//! rendezvous, lost workers, and a coordinator restart that keeps every job.

use ablate_coordinator::auth::{Auth, Role};
use ablate_coordinator::{server, store, Options};
use ablate_proto::auth::Authed;
use ablate_proto::v1::{self, job_service_client::JobServiceClient, worker_service_client::WorkerServiceClient, JobState};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

struct Coord {
    url: String,
    /// The served store, to make tokens in (weak: a shut-down coordinator releases it).
    kv: Weak<dyn store::Kv>,
    stop: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

async fn start(store_spec: &str, runs: &Path, expiry_ms: u64, port: u16) -> Coord {
    let opts = Options { heartbeat: Duration::from_millis(100), worker_expiry: Duration::from_millis(expiry_ms), max_restarts: 1, max_infra_restarts: 1, runs_dir: runs.to_path_buf(), ..Options::default() };
    start_with(store_spec, port, opts).await
}

async fn start_with(store_spec: &str, port: u16, opts: Options) -> Coord {
    let grpc = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let url = format!("http://{}", grpc.local_addr().unwrap());
    let kv = store::open(store_spec).unwrap();
    let stop = CancellationToken::new();
    let s2 = stop.clone();
    let weak = Arc::downgrade(&kv);
    let done = tokio::spawn(async move { server::run(kv, opts, server::Listeners { grpc, metrics: None, tls: None, metrics_token: None }, s2).await.unwrap() });
    Coord { url, kv: weak, stop, done }
}

impl Coord {
    async fn shutdown(self) {
        self.stop.cancel();
        self.done.await.unwrap();
    }
    /// An admin's job client (a token stored in the coordinator's store).
    async fn jobs(&self) -> JobServiceClient<Authed> {
        let token = Auth::open(self.kv.upgrade().expect("the coordinator runs")).unwrap().create("tester", Role::Admin, None, "test").unwrap().1;
        JobServiceClient::new(ablate_proto::connect_authed(&self.url, Some(&token)).await.unwrap().1)
    }
    /// Fake workers, each with its own worker token.
    async fn workers(&self) -> Fleet {
        Fleet { url: self.url.clone(), kv: self.kv.clone(), clients: HashMap::new() }
    }
}

struct Fleet {
    url: String,
    kv: Weak<dyn store::Kv>,
    clients: HashMap<String, WorkerServiceClient<Authed>>,
}

impl Fleet {
    /// The client of worker `id` (its token made on first use).
    async fn of(&mut self, id: &str) -> &mut WorkerServiceClient<Authed> {
        if !self.clients.contains_key(id) {
            let client = worker_client(&self.url, &self.kv, id).await;
            self.clients.insert(id.to_string(), client);
        }
        self.clients.get_mut(id).expect("inserted above")
    }
}

async fn worker_client(url: &str, kv: &Weak<dyn store::Kv>, id: &str) -> WorkerServiceClient<Authed> {
    let token = Auth::open(kv.upgrade().expect("the coordinator runs")).unwrap().create(id, Role::Worker, Some(id), "test").unwrap().1;
    WorkerServiceClient::new(ablate_proto::connect_authed(url, Some(&token)).await.unwrap().1)
}

fn reg(id: &str, slots: u32) -> v1::Registration {
    v1::Registration {
        worker_id: id.into(),
        host: "127.0.0.1".into(),
        devices: (0..slots).map(|i| v1::Device { kind: v1::DeviceKind::Cpu as i32, index: i, ..Default::default() }).collect(),
        protocol_version: ablate_proto::PROTOCOL_VERSION,
        ..Default::default()
    }
}

async fn beat(w: &mut Fleet, id: &str, slots: u32, running: Vec<v1::RunningRank>) -> Vec<v1::Assignment> {
    w.of(id).await.heartbeat(v1::HeartbeatRequest { registration: Some(reg(id, slots)), running }).await.unwrap().into_inner().assignments
}

async fn submit(c: &mut JobServiceClient<Authed>, world: u32) -> v1::Job {
    let req = v1::SubmitJobRequest { config_toml: "[train]\nsteps = 10\n".into(), name: "t".into(), world_size: world, ..Default::default() };
    c.submit_job(req).await.unwrap().into_inner().job.unwrap()
}

async fn state(c: &mut JobServiceClient<Authed>, id: &str) -> v1::Job {
    c.get_job(v1::GetJobRequest { id: id.into() }).await.unwrap().into_inner()
}

/// Polls until `f` holds (heartbeating `beats` meanwhile), or panics after `secs`.
async fn wait_for(secs: u64, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < deadline, "condition not reached within {secs} s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gang_waits_for_its_third_slot() {
    let dir = tempfile::tempdir().unwrap();
    let c = start("memory:", dir.path(), 5000, 0).await;
    let (mut w, mut j) = (c.workers().await, c.jobs().await);
    beat(&mut w, "a", 1, vec![]).await;
    beat(&mut w, "b", 1, vec![]).await;
    let job = submit(&mut j, 3).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(state(&mut j, &job.id).await.state(), JobState::Queued, "two slots cannot hold a world-3 gang");
    assert!(beat(&mut w, "a", 1, vec![]).await.is_empty());
    beat(&mut w, "c", 1, vec![]).await;
    wait_for(5, async || state(&mut j, &job.id).await.state() == JobState::Scheduled).await;
    let placed = state(&mut j, &job.id).await;
    assert_eq!(placed.generation, 1);
    let mut workers: Vec<&str> = placed.placement.iter().map(|p| p.worker_id.as_str()).collect();
    workers.sort();
    assert_eq!(workers, ["a", "b", "c"]);
    // each worker is told its rank; once all report a pid the job runs
    let mut running = Vec::new();
    for id in ["a", "b", "c"] {
        let a = beat(&mut w, id, 1, vec![]).await;
        assert_eq!(a.len(), 1);
        running.push((id, a[0].rank));
    }
    for (id, rank) in running {
        beat(&mut w, id, 1, vec![v1::RunningRank { job_id: job.id.clone(), generation: 1, rank, pid: 100 + rank, step: 0 }]).await;
    }
    assert_eq!(state(&mut j, &job.id).await.state(), JobState::Running);
    c.shutdown().await;
}

/// A gang larger than every live slot waits with a reason and does not block the queue
/// behind it; when enough slots register the reason goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_gang_says_why_it_waits_and_does_not_hold_up_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let c = start("memory:", dir.path(), 1500, 0).await;
    let (mut w, mut j) = (c.workers().await, c.jobs().await);
    let big = submit(&mut j, 3).await;
    let small = submit(&mut j, 1).await;
    // past the re-attach grace (one expiry period after the start), two one-slot workers
    let until = Instant::now() + Duration::from_millis(1700);
    while Instant::now() < until {
        beat(&mut w, "a", 1, vec![]).await;
        beat(&mut w, "b", 1, vec![]).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for(5, async || {
        beat(&mut w, "a", 1, vec![]).await;
        beat(&mut w, "b", 1, vec![]).await;
        state(&mut j, &small.id).await.state() == JobState::Scheduled
    })
    .await;
    let b = state(&mut j, &big.id).await;
    assert_eq!(b.state(), JobState::Queued);
    assert_eq!(b.reason, "waiting: a gang of 3 needs that many slots of one kind; the live workers have 2");
    // a third slot: the gang could fit now, so the reason goes (it waits for the busy slot)
    wait_for(5, async || {
        for id in ["a", "b", "c"] {
            beat(&mut w, id, 1, vec![]).await;
        }
        state(&mut j, &big.id).await.reason.is_empty()
    })
    .await;
    assert_eq!(state(&mut j, &big.id).await.state(), JobState::Queued);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendezvous_checks_generation_layout_and_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let c = start("memory:", dir.path(), 5000, 0).await;
    let (mut w, mut j) = (c.workers().await, c.jobs().await);
    beat(&mut w, "a", 2, vec![]).await;
    let job = submit(&mut j, 2).await;
    wait_for(5, async || state(&mut j, &job.id).await.state() == JobState::Scheduled).await;
    let publish = |rank: u32, generation: u64, hash: &str| v1::RendezvousPublishRequest { job_id: job.id.clone(), generation, rank, address: format!("127.0.0.1:{}", 4000 + rank), params_hash: hash.into() };
    let fetch = |timeout_ms| v1::RendezvousFetchRequest { job_id: job.id.clone(), generation: 1, rank: 0, timeout_ms };
    w.of("a").await.rendezvous_publish(publish(0, 1, "abc")).await.unwrap();
    let e = w.of("a").await.rendezvous_fetch(fetch(300)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::DeadlineExceeded);
    assert!(e.message().contains("only 1 of 2 ranks arrived within 300 ms"), "{}", e.message());
    let e = w.of("a").await.rendezvous_publish(publish(1, 7, "abc")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(e.message().contains("generation 7 is stale (current 1)"), "{}", e.message());
    let e = w.of("a").await.rendezvous_publish(publish(1, 1, "xyz")).await.unwrap_err();
    assert!(e.message().contains("rank 1 has parameter layout xyz but the group has abc"), "{}", e.message());
    // a waiting fetch returns as soon as the last rank publishes
    let mut w2 = worker_client(&c.url, &c.kv, "a").await;
    let waiter = tokio::spawn(async move { w2.rendezvous_fetch(v1::RendezvousFetchRequest { job_id: "j000001".into(), generation: 1, rank: 0, timeout_ms: 10_000 }).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    w.of("a").await.rendezvous_publish(publish(1, 1, "abc")).await.unwrap();
    let got = waiter.await.unwrap().unwrap().into_inner().addresses;
    assert_eq!(got, ["127.0.0.1:4000", "127.0.0.1:4001"]);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_worker_restarts_the_gang_under_a_new_generation() {
    let dir = tempfile::tempdir().unwrap();
    let c = start("memory:", dir.path(), 600, 0).await;
    let (mut w, mut j) = (c.workers().await, c.jobs().await);
    beat(&mut w, "a", 1, vec![]).await;
    beat(&mut w, "b", 1, vec![]).await;
    let job = submit(&mut j, 1).await;
    wait_for(5, async || state(&mut j, &job.id).await.state() == JobState::Scheduled).await;
    let on = state(&mut j, &job.id).await.placement[0].worker_id.clone();
    let other = if on == "a" { "b" } else { "a" };
    // only the other worker keeps beating: the job moves there as generation 2
    wait_for(10, async || {
        beat(&mut w, other, 1, vec![]).await;
        let s = state(&mut j, &job.id).await;
        s.generation == 2 && s.state() == JobState::Scheduled
    })
    .await;
    let s = state(&mut j, &job.id).await;
    assert_eq!((s.placement[0].worker_id.as_str(), s.infra_restarts, s.restarts), (other, 1, 0), "a lost worker is the cluster's failure, not the job's");
    assert!(s.reason.contains(&format!("worker {on} lost")), "{}", s.reason);
    // a late report of generation 1 changes nothing
    w.of(&on).await.report_completion(v1::ReportCompletionRequest { worker_id: on.clone(), job_id: job.id.clone(), generation: 1, rank: 0, success: false, reason: "old".into(), ..Default::default() }).await.unwrap();
    assert_eq!(state(&mut j, &job.id).await.state(), JobState::Scheduled);
    // with no restarts left, losing the second worker fails the job with the reason
    wait_for(10, async || state(&mut j, &job.id).await.state() == JobState::Failed).await;
    assert!(state(&mut j, &job.id).await.reason.contains("no infrastructure restarts left"));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_restart_keeps_every_job_and_running_ranks_reattach() {
    let dir = tempfile::tempdir().unwrap();
    restart_keeps_every_job(&dir.path().join("state/c.redb").display().to_string(), dir.path()).await;
}

/// The same restart with the state in etcd (skipped where no etcd is installed, unless
/// ABLATE_REQUIRE_ETCD=1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_restart_on_etcd_keeps_every_job() {
    use ablate_coordinator::store::local_etcd::{self, LocalEtcd};
    let Some(bin) = local_etcd::binary_or_skip("a_coordinator_restart_on_etcd_keeps_every_job") else { return };
    let etcd = tokio::task::spawn_blocking(move || LocalEtcd::start_secure(&bin, "ablate/", 300).unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    restart_keeps_every_job(&etcd.spec("ablate/"), dir.path()).await;
    tokio::task::spawn_blocking(move || drop(etcd)).await.unwrap();
}

async fn restart_keeps_every_job(spec: &str, dir: &Path) {
    let c = start(spec, dir, 2000, 0).await;
    let port: u16 = c.url.rsplit(':').next().unwrap().parse().unwrap();
    let (mut w, mut j) = (c.workers().await, c.jobs().await);
    beat(&mut w, "a", 1, vec![]).await;
    let running = submit(&mut j, 1).await;
    let queued = submit(&mut j, 1).await;
    wait_for(5, async || state(&mut j, &running.id).await.state() == JobState::Scheduled).await;
    let rank = v1::RunningRank { job_id: running.id.clone(), generation: 1, rank: 0, pid: 42, step: 3 };
    beat(&mut w, "a", 1, vec![rank.clone()]).await;
    assert_eq!(state(&mut j, &running.id).await.state(), JobState::Running);
    let cancelled = submit(&mut j, 4).await;
    j.cancel_job(v1::CancelJobRequest { id: cancelled.id.clone(), reason: "test".into() }).await.unwrap();
    c.shutdown().await;

    let c = start(spec, dir, 2000, port).await;
    let (mut w, mut j) = (c.workers().await, c.jobs().await);
    assert_eq!(state(&mut j, &running.id).await.state(), JobState::Running);
    assert_eq!(state(&mut j, &queued.id).await.state(), JobState::Queued);
    let cj = state(&mut j, &cancelled.id).await;
    assert_eq!((cj.state(), cj.reason.as_str()), (JobState::Cancelled, "test (cancelled by tester)"));
    // the worker re-attaches: same generation, its rank still assigned, nothing placed twice
    let a = beat(&mut w, "a", 1, vec![rank]).await;
    assert_eq!(a.len(), 1);
    assert_eq!((a[0].job_id.as_str(), a[0].generation), (running.id.as_str(), 1));
    // past the re-attach grace period, still beating: nothing moves
    let mut a = vec![];
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        a = beat(&mut w, "a", 1, vec![v1::RunningRank { job_id: running.id.clone(), generation: 1, rank: 0, pid: 42, step: 5 }]).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(a.len(), 1, "still the one rank: the queued job waits for the slot");
    assert_eq!(state(&mut j, &running.id).await.generation, 1);
    // new jobs continue the id sequence
    assert_eq!(submit(&mut j, 1).await.id, "j000004");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let c = start("memory:", dir.path(), 5000, 0).await;
    let (mut w, mut j) = (c.workers().await, c.jobs().await);
    let mut old = reg("old", 1);
    old.protocol_version = 1;
    let e = w.of("old").await.register(v1::RegisterRequest { registration: Some(old) }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(e.message().contains(&format!("worker old speaks protocol 1, this coordinator {}", ablate_proto::PROTOCOL_VERSION)), "{}", e.message());
    let e = j.submit_job(v1::SubmitJobRequest { config_toml: "[train\n".into(), world_size: 1, ..Default::default() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("invalid job: config_toml:"), "{}", e.message());
    let e = j.submit_job(v1::SubmitJobRequest { config_toml: String::new(), world_size: 0, ..Default::default() }).await.unwrap_err();
    assert_eq!(e.message(), "invalid job: world_size must be at least 1");
    let e = j.get_job(v1::GetJobRequest { id: "j999".into() }).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (tonic::Code::NotFound, "no job \"j999\""));
    let job = submit(&mut j, 1).await;
    j.cancel_job(v1::CancelJobRequest { id: job.id.clone(), reason: String::new() }).await.unwrap();
    let e = j.cancel_job(v1::CancelJobRequest { id: job.id.clone(), reason: String::new() }).await.unwrap_err();
    assert!(e.message().contains("is cancelled: it cannot be cancelled"), "{}", e.message());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_is_stored_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let c = start("memory:", dir.path(), 5000, 0).await;
    let mut j = c.jobs().await;
    let arm = |name: &str, cfg: &str| v1::SubmitJobRequest { config_toml: cfg.into(), name: name.into(), arm: name.into(), world_size: 1, ..Default::default() };
    let e = j
        .submit_sweep(v1::SubmitSweepRequest { name: "bad".into(), jobs: vec![arm("baseline", "[train]\nsteps = 5\n"), arm("repa", "[train\n")] })
        .await
        .unwrap_err();
    assert!(e.message().starts_with("invalid job: sweep \"bad\", job 1 (repa): invalid job: config_toml:"), "{}", e.message());
    assert!(j.list_jobs(v1::ListJobsRequest::default()).await.unwrap().into_inner().jobs.is_empty(), "nothing of a bad sweep is stored");
    let r = j.submit_sweep(v1::SubmitSweepRequest { name: "ok".into(), jobs: vec![arm("baseline", "[train]\nsteps = 5\n"), arm("muon", "[train]\nsteps = 5\n")] }).await.unwrap().into_inner();
    assert_eq!(r.sweep, "s000001");
    let res = j.get_sweep_results(v1::GetSweepResultsRequest { sweep: r.sweep.clone() }).await.unwrap().into_inner();
    let arms: Vec<(&str, &str)> = res.jobs.iter().map(|x| (x.arm.as_str(), x.sweep.as_str())).collect();
    assert_eq!(arms, [("baseline", "s000001"), ("muon", "s000001")]);
    let e = j.get_sweep_results(v1::GetSweepResultsRequest { sweep: "s9".into() }).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (tonic::Code::NotFound, "no sweep \"s9\""));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_ranks_cannot_fail_a_requeued_job_and_vanished_ranks_restart_it() {
    let dir = tempfile::tempdir().unwrap();
    let c = start("memory:", dir.path(), 600, 0).await;
    let (mut w, mut j) = (c.workers().await, c.jobs().await);
    beat(&mut w, "a", 1, vec![]).await;
    beat(&mut w, "b", 1, vec![]).await;
    let job = submit(&mut j, 2).await;
    wait_for(5, async || state(&mut j, &job.id).await.state() == JobState::Scheduled).await;
    let placed = state(&mut j, &job.id).await;
    let rank_on = |wid: &str| placed.placement.iter().find(|p| p.worker_id == wid).unwrap().rank;
    let running = |wid: &str, pid| vec![v1::RunningRank { job_id: job.id.clone(), generation: 1, rank: rank_on(wid), pid, step: 1 }];
    beat(&mut w, "a", 1, running("a", 10)).await;
    beat(&mut w, "b", 1, running("b", 11)).await;
    assert_eq!(state(&mut j, &job.id).await.state(), JobState::Running);

    // a rank number outside the world is refused and harms nothing
    let e = w.of("a").await.report_completion(v1::ReportCompletionRequest { worker_id: "a".into(), job_id: job.id.clone(), generation: 1, rank: 7, success: true, ..Default::default() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);

    // worker a goes silent: the gang is requeued and cannot be placed on b alone
    wait_for(10, async || {
        beat(&mut w, "b", 1, running("b", 11)).await;
        state(&mut j, &job.id).await.state() == JobState::Queued
    })
    .await;
    // b's rank saw its peer vanish and reports failure for generation 1: too late to matter
    let fail = v1::ReportCompletionRequest { worker_id: "b".into(), job_id: job.id.clone(), generation: 1, rank: rank_on("b"), success: false, reason: "peer closed".into(), ..Default::default() };
    w.of("b").await.report_completion(fail).await.unwrap();
    let s = state(&mut j, &job.id).await;
    assert_eq!(s.state(), JobState::Queued, "an old rank's failure must not fail the requeued job: {}", s.reason);
    assert!(beat(&mut w, "b", 1, vec![]).await.is_empty(), "a queued job has no assignments");

    // a comes back: the gang starts again as generation 2; then a's agent restarts and no
    // longer lists its rank: the job is requeued (restarts spent -> failed, max_restarts 1)
    beat(&mut w, "a", 1, vec![]).await;
    wait_for(5, async || state(&mut j, &job.id).await.generation == 2).await;
    let g2 = state(&mut j, &job.id).await;
    for p in &g2.placement {
        beat(&mut w, &p.worker_id, 1, vec![v1::RunningRank { job_id: job.id.clone(), generation: 2, rank: p.rank, pid: 20 + p.rank, step: 0 }]).await;
    }
    assert_eq!(state(&mut j, &job.id).await.state(), JobState::Running);
    let other = g2.placement.iter().find(|p| p.worker_id == "b").unwrap().rank;
    beat(&mut w, "a", 1, vec![]).await;
    beat(&mut w, "b", 1, vec![v1::RunningRank { job_id: job.id.clone(), generation: 2, rank: other, pid: 21, step: 0 }]).await;
    let s = state(&mut j, &job.id).await;
    assert_eq!(s.state(), JobState::Failed);
    assert!(s.reason.contains("vanished from worker a") && s.reason.contains("no infrastructure restarts left"), "{}", s.reason);
    c.shutdown().await;
}

/// The cluster's failures restart under their own cap and never spend the job's restarts;
/// a failure that may be the job's own (a stuck rank) spends them; one a restart would
/// repeat fails at once; a placement whose ranks never start goes elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_restart_by_class_and_unstarted_ranks_move() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options { heartbeat: Duration::from_millis(100), worker_expiry: Duration::from_secs(60), max_restarts: 1, max_infra_restarts: 5, launch_deadline: Duration::from_millis(1500), runs_dir: dir.path().to_path_buf(), ..Options::default() };
    let c = start_with("memory:", 0, opts).await;
    let (mut w, mut j) = (c.workers().await, c.jobs().await);
    beat(&mut w, "a", 1, vec![]).await;
    let job = submit(&mut j, 1).await;
    let fail = |generation: u64, retryable: bool, infrastructure: bool| v1::ReportCompletionRequest { worker_id: "a".into(), job_id: job.id.clone(), generation, rank: 0, success: false, reason: "boom".into(), retryable, infrastructure, ..Default::default() };
    // generation 1: a dead peer (the cluster's): infra restart 1, the job's restarts untouched
    wait_for(5, async || state(&mut j, &job.id).await.generation == 1).await;
    beat(&mut w, "a", 1, vec![v1::RunningRank { job_id: job.id.clone(), generation: 1, rank: 0, pid: 7, step: 3 }]).await;
    w.of("a").await.report_completion(fail(1, true, true)).await.unwrap();
    let s = state(&mut j, &job.id).await;
    assert_eq!((s.state(), s.infra_restarts, s.restarts), (JobState::Queued, 1, 0), "{}", s.reason);
    assert!(s.reason.starts_with("infrastructure restart 1 of 5: rank 0 on worker a: boom"), "{}", s.reason);
    // generation 2: its ranks never start (no pid in any heartbeat): placed again after the
    // launch deadline, as the cluster's failure
    wait_for(5, async || state(&mut j, &job.id).await.generation == 2).await;
    wait_for(10, async || {
        beat(&mut w, "a", 1, vec![]).await;
        state(&mut j, &job.id).await.generation == 3
    })
    .await;
    let s = state(&mut j, &job.id).await;
    assert_eq!((s.infra_restarts, s.restarts), (2, 0));
    assert!(s.reason.contains("not started within 1.5s (rank 0 on a)"), "{}", s.reason);
    // generation 3: a stuck rank (maybe the job's own) spends the job's one restart
    beat(&mut w, "a", 1, vec![v1::RunningRank { job_id: job.id.clone(), generation: 3, rank: 0, pid: 8, step: 3 }]).await;
    w.of("a").await.report_completion(fail(3, true, false)).await.unwrap();
    let s = state(&mut j, &job.id).await;
    assert_eq!((s.state(), s.infra_restarts, s.restarts), (JobState::Queued, 2, 1), "{}", s.reason);
    // generation 4: a failure a restart would repeat fails at once
    wait_for(5, async || state(&mut j, &job.id).await.generation == 4).await;
    beat(&mut w, "a", 1, vec![v1::RunningRank { job_id: job.id.clone(), generation: 4, rank: 0, pid: 9, step: 3 }]).await;
    w.of("a").await.report_completion(fail(4, false, false)).await.unwrap();
    let s = state(&mut j, &job.id).await;
    assert_eq!((s.state(), s.infra_restarts, s.restarts), (JobState::Failed, 2, 1), "{}", s.reason);
    c.shutdown().await;
}

/// An operator's drain: nothing new lands on the worker, its heartbeat answer tells it to
/// stop its ranks, a coordinator restart keeps the drain, and undrain ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_worker_gets_nothing_new_until_undrained() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("c.redb").display().to_string();
    let c = start(&store, dir.path(), 5000, 0).await;
    let port: u16 = c.url.rsplit(':').next().unwrap().parse().unwrap();
    let (mut w, mut j) = (c.workers().await, c.jobs().await);
    let drain_flag = async |w: &mut Fleet, id: &str| w.of(id).await.heartbeat(v1::HeartbeatRequest { registration: Some(reg(id, 1)), running: vec![] }).await.unwrap().into_inner().drain;
    assert!(!drain_flag(&mut w, "a").await && !drain_flag(&mut w, "b").await);
    let e = j.drain_worker(v1::DrainWorkerRequest { worker_id: "zz".into(), undo: false, cordon: false }).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (tonic::Code::NotFound, "no worker \"zz\" has registered (known: a, b)"));
    let info = j.drain_worker(v1::DrainWorkerRequest { worker_id: "a".into(), undo: false, cordon: false }).await.unwrap().into_inner();
    assert!(info.drained);
    assert!(drain_flag(&mut w, "a").await, "the drained worker is told to stop its ranks");
    let job = submit(&mut j, 1).await;
    wait_for(5, async || state(&mut j, &job.id).await.state() == JobState::Scheduled).await;
    assert_eq!(state(&mut j, &job.id).await.placement[0].worker_id, "b", "placed on the worker not drained");
    // b is busy and a drained: a second job waits
    let second = submit(&mut j, 1).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(state(&mut j, &second.id).await.state(), JobState::Queued);
    c.shutdown().await;

    // the drain is in the store
    let c = start(&store, dir.path(), 5000, port).await;
    let (mut w, mut j) = (c.workers().await, c.jobs().await);
    assert!(drain_flag(&mut w, "a").await, "a restart keeps the drain");
    let info = j.drain_worker(v1::DrainWorkerRequest { worker_id: "a".into(), undo: true, cordon: false }).await.unwrap().into_inner();
    assert!(!info.drained);
    assert!(!drain_flag(&mut w, "a").await);
    wait_for(15, async || {
        drain_flag(&mut w, "a").await;
        state(&mut j, &second.id).await.state() == JobState::Scheduled
    })
    .await;
    assert_eq!(state(&mut j, &second.id).await.placement[0].worker_id, "a");
    c.shutdown().await;
}

/// A cordoned worker keeps its running ranks (its heartbeat answer asks for no stop) but
/// gets nothing new; the cordon survives a restart and ends with uncordon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cordoned_worker_keeps_its_ranks_and_gets_nothing_new() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("c.redb").display().to_string();
    let c = start(&store, dir.path(), 5000, 0).await;
    let port: u16 = c.url.rsplit(':').next().unwrap().parse().unwrap();
    let (mut w, mut j) = (c.workers().await, c.jobs().await);
    // a job on a (the only worker yet), running
    beat(&mut w, "a", 1, vec![]).await;
    let first = submit(&mut j, 1).await;
    let mut on_a = Vec::new();
    wait_for(10, async || {
        on_a = beat(&mut w, "a", 1, vec![]).await;
        !on_a.is_empty()
    })
    .await;
    let running = vec![v1::RunningRank { job_id: first.id.clone(), generation: on_a[0].generation, rank: 0, pid: 4242, step: 3 }];
    beat(&mut w, "a", 1, running.clone()).await;
    beat(&mut w, "b", 1, vec![]).await;
    let info = j.drain_worker(v1::DrainWorkerRequest { worker_id: "a".into(), undo: false, cordon: true }).await.unwrap().into_inner();
    assert!(info.cordoned && !info.drained, "{info:?}");
    let answer = w.of("a").await.heartbeat(v1::HeartbeatRequest { registration: Some(reg("a", 1)), running: running.clone() }).await.unwrap().into_inner();
    assert!(!answer.drain && answer.assignments.iter().any(|x| x.job_id == first.id), "a cordon stops nothing: {answer:?}");
    // b is free: the next job goes there; a third waits (a is cordoned, not full)
    let second = submit(&mut j, 1).await;
    wait_for(5, async || state(&mut j, &second.id).await.state() == JobState::Scheduled).await;
    assert_eq!(state(&mut j, &second.id).await.placement[0].worker_id, "b");
    let third = submit(&mut j, 1).await;
    beat(&mut w, "a", 1, running.clone()).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(state(&mut j, &third.id).await.state(), JobState::Queued);
    c.shutdown().await;
    // kept across a restart, then ended
    let c = start(&store, dir.path(), 5000, port).await;
    let (mut w, mut j) = (c.workers().await, c.jobs().await);
    beat(&mut w, "a", 1, running.clone()).await;
    let listed = j.list_workers(v1::ListWorkersRequest {}).await.unwrap().into_inner().workers;
    assert!(listed.iter().any(|x| x.registration.as_ref().unwrap().worker_id == "a" && x.cordoned), "{listed:?}");
    j.drain_worker(v1::DrainWorkerRequest { worker_id: "a".into(), undo: false, cordon: true }).await.unwrap();
    let info = j.drain_worker(v1::DrainWorkerRequest { worker_id: "a".into(), undo: true, cordon: true }).await.unwrap().into_inner();
    assert!(!info.cordoned);
    // the first job ends, a is free and uncordoned: the third lands there
    w.of("a").await.report_completion(v1::ReportCompletionRequest { worker_id: "a".into(), job_id: first.id.clone(), generation: running[0].generation, rank: 0, success: true, ..Default::default() }).await.unwrap();
    wait_for(15, async || {
        beat(&mut w, "a", 1, vec![]).await;
        state(&mut j, &third.id).await.state() == JobState::Scheduled
    })
    .await;
    assert_eq!(state(&mut j, &third.id).await.placement[0].worker_id, "a");
    c.shutdown().await;
}
