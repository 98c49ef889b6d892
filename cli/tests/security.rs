//! The attack suite of docs/security.md: every RPC of the coordinator called without a
//! token, with a malformed, forged or revoked one, with a role that may not, and as another
//! worker; a forged rendezvous entry and a forged ring join. Every one must be refused, and
//! the same calls with the right identity must pass the check. The counts are printed
//! (`cargo test -p ablate-cli --test security -- --nocapture`).

use ablate_coordinator::auth::Role;
use ablate_coordinator::{server, store, Core, Options};
use ablate_proto::v1::{self, admin_service_client::AdminServiceClient, job_service_client::JobServiceClient, worker_service_client::WorkerServiceClient};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tonic::Code;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Rpc {
    SubmitJob,
    SubmitSweep,
    GetSweepResults,
    GetJob,
    ListJobs,
    CancelJob,
    RetryJob,
    ExtendJob,
    WatchJob,
    GetMetrics,
    GetLogs,
    GetEvalSamples,
    ListWorkers,
    DrainWorker,
    Register,
    Heartbeat,
    RendezvousPublish,
    RendezvousFetch,
    ReportMetrics,
    ReportCheckpoint,
    ReportCompletion,
    CreateToken,
    ListTokens,
    RevokeToken,
    ExportStore,
}

use Rpc::*;

const JOB_RPCS: [Rpc; 14] = [SubmitJob, SubmitSweep, GetSweepResults, GetJob, ListJobs, CancelJob, RetryJob, ExtendJob, WatchJob, GetMetrics, GetLogs, GetEvalSamples, ListWorkers, DrainWorker];
const WORKER_RPCS: [Rpc; 7] = [Register, Heartbeat, RendezvousPublish, RendezvousFetch, ReportMetrics, ReportCheckpoint, ReportCompletion];
const ADMIN_RPCS: [Rpc; 4] = [CreateToken, ListTokens, RevokeToken, ExportStore];

fn all() -> Vec<Rpc> {
    JOB_RPCS.iter().chain(&WORKER_RPCS).chain(&ADMIN_RPCS).copied().collect()
}

/// What a call acts on.
struct Target {
    url: String,
    /// A job of `ana`'s, placed on worker w1 (both ranks), generation 1.
    job: String,
    sweep: String,
    /// The worker the call claims to be.
    worker: String,
    /// A token id to revoke.
    revoke: String,
}

fn reg(id: &str) -> v1::Registration {
    v1::Registration {
        worker_id: id.into(),
        host: "127.0.0.1".into(),
        devices: (0..2).map(|i| v1::Device { kind: v1::DeviceKind::Cpu as i32, index: i, ..Default::default() }).collect(),
        protocol_version: ablate_proto::PROTOCOL_VERSION,
        ..Default::default()
    }
}

/// Makes `rpc` with `token` (raw header value); Ok when the token check let it through
/// (the call itself may still fail for its own reasons: a fetch that times out, a job with
/// no evaluation data).
async fn attempt(t: &Target, token: Option<&str>, rpc: Rpc) -> Result<(), tonic::Status> {
    let (_, ch) = ablate_proto::connect_authed(&t.url, token).await.expect("loopback coordinator");
    let mut jobs = JobServiceClient::new(ch.clone());
    let mut workers = WorkerServiceClient::new(ch.clone());
    let mut admin = AdminServiceClient::new(ch);
    let job = t.job.clone();
    let cfg = "[train]\nsteps = 5\n".to_string();
    let r = match rpc {
        SubmitJob => jobs.submit_job(v1::SubmitJobRequest { config_toml: cfg, world_size: 1, ..Default::default() }).await.map(|_| ()),
        SubmitSweep => jobs.submit_sweep(v1::SubmitSweepRequest { name: "s".into(), jobs: vec![v1::SubmitJobRequest { config_toml: cfg, world_size: 1, arm: "baseline".into(), ..Default::default() }] }).await.map(|_| ()),
        GetSweepResults => jobs.get_sweep_results(v1::GetSweepResultsRequest { sweep: t.sweep.clone() }).await.map(|_| ()),
        GetJob => jobs.get_job(v1::GetJobRequest { id: job }).await.map(|_| ()),
        ListJobs => jobs.list_jobs(v1::ListJobsRequest::default()).await.map(|_| ()),
        CancelJob => jobs.cancel_job(v1::CancelJobRequest { id: job, reason: String::new() }).await.map(|_| ()),
        RetryJob => jobs.retry_job(v1::RetryJobRequest { id: job }).await.map(|_| ()),
        ExtendJob => jobs.extend_job(v1::ExtendJobRequest { id: job, config_toml: cfg }).await.map(|_| ()),
        WatchJob => jobs.watch_job(v1::WatchJobRequest { id: job }).await.map(|_| ()),
        GetMetrics => jobs.get_metrics(v1::GetMetricsRequest { id: job, from_step: 0 }).await.map(|_| ()),
        GetLogs => jobs.get_logs(v1::GetLogsRequest { id: job, from_line: 0 }).await.map(|_| ()),
        GetEvalSamples => jobs.get_eval_samples(v1::GetEvalSamplesRequest { id: job }).await.map(|_| ()),
        ListWorkers => jobs.list_workers(v1::ListWorkersRequest {}).await.map(|_| ()),
        DrainWorker => jobs.drain_worker(v1::DrainWorkerRequest { worker_id: "w2".into(), undo: true, cordon: false }).await.map(|_| ()),
        Register => workers.register(v1::RegisterRequest { registration: Some(reg(&t.worker)) }).await.map(|_| ()),
        Heartbeat => workers.heartbeat(v1::HeartbeatRequest { registration: Some(reg(&t.worker)), running: vec![] }).await.map(|_| ()),
        RendezvousPublish => workers.rendezvous_publish(v1::RendezvousPublishRequest { job_id: job, generation: 1, rank: 1, address: "127.0.0.1:9".into(), params_hash: "h".into() }).await.map(|_| ()),
        RendezvousFetch => workers.rendezvous_fetch(v1::RendezvousFetchRequest { job_id: job, generation: 1, rank: 0, timeout_ms: 50 }).await.map(|_| ()),
        ReportMetrics => workers.report_metrics(v1::ReportMetricsRequest { job_id: job, generation: 1, log_lines: vec!["forged line".into()], ..Default::default() }).await.map(|_| ()),
        ReportCheckpoint => workers.report_checkpoint(v1::ReportCheckpointRequest { job_id: job, generation: 1, step: 1, path: "/x".into(), ..Default::default() }).await.map(|_| ()),
        // generation 99: a late report, so the right identity changes nothing
        ReportCompletion => workers.report_completion(v1::ReportCompletionRequest { worker_id: t.worker.clone(), job_id: job, generation: 99, rank: 0, success: true, ..Default::default() }).await.map(|_| ()),
        CreateToken => admin.create_token(v1::CreateTokenRequest { name: "newbie".into(), role: "viewer".into(), worker_id: String::new() }).await.map(|_| ()),
        ListTokens => admin.list_tokens(v1::ListTokensRequest {}).await.map(|_| ()),
        RevokeToken => admin.revoke_token(v1::RevokeTokenRequest { id: t.revoke.clone() }).await.map(|_| ()),
        ExportStore => admin.export_store(v1::ExportStoreRequest {}).await.map(|_| ()),
    };
    match r {
        Err(s) if matches!(s.code(), Code::Unauthenticated | Code::PermissionDenied) => Err(s),
        _ => Ok(()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_without_the_right_identity_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options { heartbeat: Duration::from_millis(100), runs_dir: dir.path().to_path_buf(), ..Options::default() };
    let core = Arc::new(Core::open(store::open("memory:").unwrap(), opts).unwrap());
    let tok = |name: &str, role: Role, worker: Option<&str>| core.auth.create(name, role, worker, "test").unwrap();
    let (_, admin) = tok("root", Role::Admin, None);
    let (_, ana) = tok("ana", Role::Researcher, None);
    let (_, bob) = tok("bob", Role::Researcher, None);
    let (_, viewer) = tok("vic", Role::Viewer, None);
    let (_, w1) = tok("w1", Role::Worker, Some("w1"));
    let (_, w2) = tok("w2", Role::Worker, Some("w2"));
    let (revoked_rec, revoked) = tok("gone", Role::Admin, None);
    core.auth.revoke(&revoked_rec.id).unwrap();
    let (spare, _) = tok("spare", Role::Viewer, None);

    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", grpc.local_addr().unwrap());
    let stop = CancellationToken::new();
    let served = tokio::spawn(server::serve(core.clone(), server::Listeners { grpc, metrics: None, tls: None, metrics_token: None }, stop.clone()));

    // ana's 2-rank job on w1; a sweep; w2 registered too
    let (_, ch) = ablate_proto::connect_authed(&url, Some(&w1)).await.unwrap();
    let mut w1c = WorkerServiceClient::new(ch);
    w1c.register(v1::RegisterRequest { registration: Some(reg("w1")) }).await.unwrap();
    let (_, ch) = ablate_proto::connect_authed(&url, Some(&w2)).await.unwrap();
    WorkerServiceClient::new(ch).register(v1::RegisterRequest { registration: Some(reg("w2")) }).await.unwrap();
    let (_, ch) = ablate_proto::connect_authed(&url, Some(&ana)).await.unwrap();
    let mut anac = JobServiceClient::new(ch);
    let job = anac.submit_job(v1::SubmitJobRequest { config_toml: "[train]\nsteps = 5\n".into(), world_size: 2, ..Default::default() }).await.unwrap().into_inner().job.unwrap();
    assert_eq!(job.owner, "ana", "the owner comes from the token, not the request");
    let sweep = anac.submit_sweep(v1::SubmitSweepRequest { name: "s".into(), jobs: vec![v1::SubmitJobRequest { config_toml: "[train]\nsteps = 5\n".into(), world_size: 9, arm: "baseline".into(), ..Default::default() }] }).await.unwrap().into_inner().sweep;
    let mut secret = Vec::new();
    for _ in 0..100 {
        let a = w1c.heartbeat(v1::HeartbeatRequest { registration: Some(reg("w1")), running: vec![] }).await.unwrap().into_inner().assignments;
        if let Some(x) = a.iter().find(|x| x.job_id == job.id) {
            secret = x.secret.clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(secret.len(), 32, "the placed worker gets the job's secret");
    // another worker's heartbeat never carries it
    let (_, ch) = ablate_proto::connect_authed(&url, Some(&w2)).await.unwrap();
    let other = WorkerServiceClient::new(ch).heartbeat(v1::HeartbeatRequest { registration: Some(reg("w2")), running: vec![] }).await.unwrap().into_inner();
    assert!(other.assignments.iter().all(|a| a.job_id != job.id));

    let target = |worker: &str| Target { url: url.clone(), job: job.id.clone(), sweep: sweep.clone(), worker: worker.into(), revoke: spare.id.clone() };
    let as_w1 = target("w1");
    let (id_part, _) = admin.rsplit_once('_').unwrap();
    let forged = format!("{id_part}_{}", "f".repeat(64));
    // (who, token, the calls that must be refused, as which worker)
    let jobs_and_admin: Vec<Rpc> = JOB_RPCS.iter().chain(&ADMIN_RPCS).copied().collect();
    let cases: Vec<(&str, Option<&str>, Vec<Rpc>, &Target)> = vec![
        ("no token", None, all(), &as_w1),
        ("a malformed token", Some("ablt_nonsense"), all(), &as_w1),
        ("a forged secret on a real token id", Some(&forged), all(), &as_w1),
        ("a revoked admin token", Some(&revoked), all(), &as_w1),
        ("a viewer", Some(&viewer), [SubmitJob, SubmitSweep, CancelJob, RetryJob, ExtendJob, DrainWorker].into_iter().chain(WORKER_RPCS).chain(ADMIN_RPCS).collect(), &as_w1),
        ("another researcher (bob on ana's job)", Some(&bob), [CancelJob, RetryJob, ExtendJob, DrainWorker].into_iter().chain(WORKER_RPCS).chain(ADMIN_RPCS).collect(), &as_w1),
        ("a worker token on the user services", Some(&w1), jobs_and_admin, &as_w1),
        ("an admin token on the worker service", Some(&admin), WORKER_RPCS.to_vec(), &as_w1),
    ];
    let w2_as_w1 = target("w1");
    let w2_as_itself = target("w2");
    let mut refused = 0;
    let mut tried = 0;
    for (who, token, rpcs, t) in &cases {
        for rpc in rpcs {
            tried += 1;
            match attempt(t, *token, *rpc).await {
                Err(_) => refused += 1,
                Ok(()) => panic!("{who}: {rpc:?} was let through"),
            }
        }
    }
    // another worker: claiming w1's id, or as itself on w1's job (every worker call names the job)
    for (t, rpcs) in [(&w2_as_w1, WORKER_RPCS.to_vec()), (&w2_as_itself, vec![RendezvousPublish, RendezvousFetch, ReportMetrics, ReportCheckpoint, ReportCompletion])] {
        for rpc in rpcs {
            tried += 1;
            match attempt(t, Some(&w2), rpc).await {
                Err(s) => {
                    assert_eq!(s.code(), Code::PermissionDenied, "{rpc:?}: {}", s.message());
                    refused += 1;
                }
                Ok(()) => panic!("worker w2 as {}: {rpc:?} was let through", t.worker),
            }
        }
    }
    // a forged ring join: a stranger with another secret dials rank 0 of the real group first;
    // it is dropped and the group forms with its real rank 1
    let before = ablate_worker::collective::refused_joins();
    let (l0, l1) = (std::net::TcpListener::bind("127.0.0.1:0").unwrap(), std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let addrs = vec![l0.local_addr().unwrap().to_string(), l1.local_addr().unwrap().to_string()];
    let stranger_target = addrs.clone();
    let stranger = std::thread::spawn(move || {
        let fake = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        ablate_worker::collective::Ring::connect(1, fake, &stranger_target, b"a guess at the secret", Duration::from_millis(600)).is_err()
    });
    assert!(stranger.join().unwrap(), "the stranger's ring must not form");
    let (a0, k0, a1, k1) = (addrs.clone(), secret.clone(), addrs.clone(), secret.clone());
    let r0 = std::thread::spawn(move || ablate_worker::collective::Ring::connect(0, l0, &a0, &k0, Duration::from_secs(5)));
    let r1 = std::thread::spawn(move || ablate_worker::collective::Ring::connect(1, l1, &a1, &k1, Duration::from_secs(5)));
    let (mut r0, mut r1) = (r0.join().unwrap().unwrap(), r1.join().unwrap().unwrap());
    let (mut b0, mut b1) = (vec![1.0f32, 2.0], vec![3.0f32, 4.0]);
    let t = std::thread::spawn(move || {
        use ablate_trainer::collective::Collective;
        r1.all_reduce_sum(&mut b1).unwrap();
        b1
    });
    ablate_trainer::collective::Collective::all_reduce_sum(&mut r0, &mut b0).unwrap();
    assert_eq!((b0, t.join().unwrap()), (vec![4.0, 6.0], vec![4.0, 6.0]), "the real ranks still form their group");
    tried += 1;
    assert!(ablate_worker::collective::refused_joins() > before, "the stranger's join was refused");
    refused += 1;
    println!("attack suite: {refused} of {tried} forged or unauthorised calls refused");
    assert_eq!(refused, tried);
    assert!(tried >= 130, "{tried}");

    // the same calls with the right identity pass the check
    let right: Vec<(Rpc, &str)> = all()
        .into_iter()
        .map(|rpc| {
            let token = match rpc {
                _ if WORKER_RPCS.contains(&rpc) => w1.as_str(),
                _ if ADMIN_RPCS.contains(&rpc) || rpc == DrainWorker => admin.as_str(),
                GetSweepResults | GetJob | ListJobs | WatchJob | GetMetrics | GetLogs | GetEvalSamples | ListWorkers => viewer.as_str(),
                _ => ana.as_str(),
            };
            (rpc, token)
        })
        .collect();
    // a retry (and an extension) queues ana's job again and clears its placement: they go
    // last, after the worker calls that act on that placement
    let mut right = right;
    right.sort_by_key(|(rpc, _)| matches!(rpc, RetryJob | ExtendJob));
    for (rpc, token) in &right {
        if let Err(s) = attempt(&as_w1, Some(token), *rpc).await {
            panic!("{rpc:?} with the right identity was refused: {}", s.message());
        }
    }
    println!("right identities: {} of {} calls let through", right.len(), right.len());
    let (_, ch) = ablate_proto::connect_authed(&url, Some(&ana)).await.unwrap();
    let cancelled = JobServiceClient::new(ch).get_job(v1::GetJobRequest { id: job.id.clone() }).await.unwrap().into_inner();
    assert!(cancelled.reason.contains("cancelled by ana"), "{}", cancelled.reason);
    stop.cancel();
    served.await.unwrap().unwrap();
}
