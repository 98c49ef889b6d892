//! Bounded inputs: an oversize message, a config past the size limit, a huge sweep, a world
//! size no cluster may hold, an overlong name: each a clear error, and nothing stored. Lists
//! and logs come a page at a time; a job's log lines are rate-limited and cut.

use ablate_coordinator::auth::Role;
use ablate_coordinator::core::Limits;
use ablate_coordinator::server::{self, Listeners};
use ablate_coordinator::{store, Core, Options};
use ablate_proto::v1::{self, job_service_client::JobServiceClient, worker_service_client::WorkerServiceClient};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tonic::Code;

fn job(cfg: &str) -> v1::SubmitJobRequest {
    v1::SubmitJobRequest { config_toml: cfg.into(), world_size: 1, arm: "baseline".into(), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_a_limit_is_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits { max_page: 10, max_log_lines_per_minute: 30, max_log_line_bytes: 100, ..Limits::default() };
    let core = Arc::new(Core::open(store::open("memory:").unwrap(), Options { runs_dir: dir.path().to_path_buf(), heartbeat: Duration::from_millis(100), limits, ..Options::default() }).unwrap());
    let user = core.auth.ephemeral("ana", Role::Researcher, None);
    let worker = core.auth.ephemeral("w1", Role::Worker, Some("w1"));
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", grpc.local_addr().unwrap());
    let stop = CancellationToken::new();
    let served = tokio::spawn(server::serve(core.clone(), Listeners { grpc, metrics: None, tls: None, metrics_token: None }, stop.clone()));
    let mut j = JobServiceClient::new(ablate_proto::connect_authed(&url, Some(&user)).await.unwrap().1);
    let stored = || core.list(&[], None).len();

    // a message past gRPC's limit (4 MiB on the user service): refused by the transport
    let e = j.submit_job(job(&format!("# {}\n", "x".repeat(5 << 20)))).await.unwrap_err();
    assert!(matches!(e.code(), Code::OutOfRange | Code::ResourceExhausted), "{e:?}");
    // under it but past the config limit (1 MiB)
    let e = j.submit_job(job(&format!("# {}\n[train]\nsteps = 1\n", "x".repeat(2 << 20)))).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("config_toml is") && e.message().contains("past the limit of 1048576"), "{}", e.message());
    // a huge sweep
    let e = j.submit_sweep(v1::SubmitSweepRequest { name: "huge".into(), jobs: vec![job("[train]\nsteps = 1\n"); 10_001] }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("sweep \"huge\" has 10001 jobs, past this coordinator's limit of 10000"), "{}", e.message());
    // a world size no cluster may hold, a name past the limit
    let e = j.submit_job(v1::SubmitJobRequest { world_size: 5000, ..job("[train]\nsteps = 1\n") }).await.unwrap_err();
    assert!(e.message().contains("world_size 5000 is past this coordinator's limit of 4096 ranks"), "{}", e.message());
    let e = j.submit_job(v1::SubmitJobRequest { name: "n".repeat(300), ..job("[train]\nsteps = 1\n") }).await.unwrap_err();
    assert!(e.message().contains("name is 300 bytes, past the limit of 256"), "{}", e.message());
    assert_eq!(stored(), 0, "nothing of a refused request is stored");

    // lists come a page at a time
    j.submit_sweep(v1::SubmitSweepRequest { name: "ok".into(), jobs: vec![job("[train]\nsteps = 1\n"); 25] }).await.unwrap();
    let (mut seen, mut token, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let r = j.list_jobs(v1::ListJobsRequest { page_token: token, ..Default::default() }).await.unwrap().into_inner();
        pages += 1;
        seen.extend(r.jobs.into_iter().map(|x| x.id));
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    assert_eq!((pages, seen.len()), (3, 25));
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in id order, none twice");

    // a job's log lines: at most 30 a minute, each cut to 100 bytes, read 10 at a time
    let mut w = WorkerServiceClient::new(ablate_proto::connect_authed(&url, Some(&worker)).await.unwrap().1);
    let reg = v1::Registration { worker_id: "w1".into(), protocol_version: ablate_proto::PROTOCOL_VERSION, devices: vec![v1::Device { kind: v1::DeviceKind::Cpu as i32, ..Default::default() }], ..Default::default() };
    let first = seen[0].clone();
    let mut placed = false;
    for _ in 0..100 {
        let a = w.heartbeat(v1::HeartbeatRequest { registration: Some(reg.clone()), running: vec![] }).await.unwrap().into_inner().assignments;
        if a.iter().any(|x| x.job_id == first) {
            placed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(placed, "the first job is placed on w1");
    let mut lines: Vec<String> = (0..50).map(|i| format!("line {i}")).collect();
    lines[0] = "y".repeat(500);
    w.report_metrics(v1::ReportMetricsRequest { job_id: first.clone(), generation: 1, log_lines: lines, ..Default::default() }).await.unwrap();
    let (mut got, mut from) = (Vec::new(), 0);
    loop {
        let r = j.get_logs(v1::GetLogsRequest { id: first.clone(), from_line: from }).await.unwrap().into_inner();
        if r.lines.is_empty() {
            break;
        }
        assert!(r.lines.len() <= 10);
        got.extend(r.lines);
        from = r.next_line;
    }
    assert_eq!(got.len(), 30, "the rate limit keeps 30 of 50");
    assert_eq!(got[0], format!("{} [cut]", "y".repeat(100)));
    assert_eq!(got[29], "line 29");

    stop.cancel();
    served.await.unwrap().unwrap();
}
