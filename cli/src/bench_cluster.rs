//! `ablate bench ring` and `ablate bench scheduler`: the distributed runtime's figures.

use ablate_coordinator::domain::{Device, DeviceKind, JobId, JobSpec, JobState, Worker, WorkerId};
use ablate_coordinator::scheduler::{schedule, Pending, WorkerSlots};
use ablate_proto::v1;
use ablate_trainer::collective::Collective;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// Raw loopback TCP: one thread writes `bytes` in 4 MiB chunks, another reads them. GB/s.
fn loopback_tcp(bytes: usize) -> anyhow::Result<f64> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let reader = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = l.accept()?;
        let mut buf = vec![0u8; 4 << 20];
        let mut left = bytes;
        while left > 0 {
            let n = s.read(&mut buf[..left.min(4 << 20)])?;
            if n == 0 {
                break;
            }
            left -= n;
        }
        Ok(())
    });
    let mut s = std::net::TcpStream::connect(addr)?;
    let chunk = vec![1u8; 4 << 20];
    let t = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len());
        s.write_all(&chunk[..n])?;
        left -= n;
    }
    drop(s);
    reader.join().map_err(|_| anyhow::anyhow!("reader thread panicked"))??;
    Ok(bytes as f64 / t.elapsed().as_secs_f64() / 1e9)
}

/// Seconds per all-reduce of `floats` values on a loopback group of `world` (median of ranks' means).
fn ring_allreduce(world: usize, floats: usize, iters: usize) -> f64 {
    let rings = ablate_worker::collective::loopback_group(world, Duration::from_secs(120));
    let hs: Vec<_> = rings
        .into_iter()
        .map(|mut r| {
            std::thread::spawn(move || {
                let mut v = vec![1.0f32; floats];
                r.all_reduce_sum(&mut v).expect("warm-up all-reduce");
                r.barrier(Duration::from_secs(60)).expect("barrier");
                let t = Instant::now();
                for _ in 0..iters {
                    r.all_reduce_sum(&mut v).expect("all-reduce");
                }
                t.elapsed().as_secs_f64() / iters as f64
            })
        })
        .collect();
    let mut times: Vec<f64> = hs.into_iter().map(|h| h.join().expect("rank thread")).collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

pub fn ring(sizes_mb: &[usize], worlds: &[usize]) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let raw = (0..3).map(|_| loopback_tcp(512 << 20)).collect::<anyhow::Result<Vec<_>>>()?.into_iter().fold(0f64, f64::max);
    println!("raw loopback TCP, one stream, 512 MiB: {raw:.2} GB/s (best of 3); {cores} cores");
    println!("TCP ring all-reduce (f32 sum, reduce-scatter + all-gather); busbw = size / time x 2(n-1)/n");
    println!("{:>6} {:>8} {:>6} {:>12} {:>11} {:>11} {:>10}", "ranks", "size", "iters", "time", "algbw GB/s", "busbw GB/s", "busbw/raw");
    for &w in worlds {
        for &mb in sizes_mb {
            let floats = mb * (1 << 20) / 4;
            let iters = (256 / mb.max(1)).clamp(2, 20);
            let t = ring_allreduce(w, floats, iters);
            let alg = (floats * 4) as f64 / t / 1e9;
            let bus = alg * 2.0 * (w as f64 - 1.0) / w as f64;
            println!("{w:>6} {:>6}MB {iters:>6} {:>10.2}ms {alg:>11.3} {bus:>11.3} {:>10.2}", mb, t * 1e3, bus / raw);
        }
    }
    Ok(())
}

fn cluster(workers: usize, slots: u32) -> Vec<WorkerSlots> {
    (0..workers).map(|i| WorkerSlots { worker: WorkerId(format!("w{i:04}")), kind: DeviceKind::Cpu, free: (0..slots).collect() }).collect()
}

pub fn scheduler(workers: usize, slots: u32, jobs: usize, store: &str) -> anyhow::Result<()> {
    // the pure function: a full queue onto an empty cluster
    let queue: Vec<Pending> = (0..jobs).map(|i| Pending { job: JobId(format!("j{i:06}")), priority: (i % 3) as i32, sequence: i as u64, world: [1, 2, 4, 8][i % 4] }).collect();
    let ws = cluster(workers, slots);
    let reps = 5;
    let t = Instant::now();
    let mut placed = 0;
    for _ in 0..reps {
        placed = schedule(&ws, &queue).len();
    }
    let dt = t.elapsed().as_secs_f64() / reps as f64;
    println!("scheduler (pure): {workers} workers x {slots} slots, {jobs} queued jobs (world 1/2/4/8): {placed} placed in {:.1} ms = {:.0} jobs placed/s", dt * 1e3, placed as f64 / dt);

    // the coordinator's scheduling pass: registry + store writes
    let dir = std::env::temp_dir().join(format!("ablate-bench-sched-{}", std::process::id()));
    let kv = ablate_coordinator::store::open(store)?;
    anyhow::ensure!(kv.range("")?.is_empty(), "bench scheduler needs an empty store: {store} already holds keys");
    let core = ablate_coordinator::Core::open(kv.clone(), ablate_coordinator::Options { worker_expiry: Duration::from_secs(3600), runs_dir: dir.clone(), ..Default::default() })?;
    for i in 0..workers {
        core.register(Worker {
            id: WorkerId(format!("w{i:04}")),
            host: String::new(),
            devices: (0..slots).map(|s| Device { kind: DeviceKind::Cpu, index: s, memory_bytes: 0, name: String::new() }).collect(),
            labels: Default::default(),
            protocol_version: ablate_proto::PROTOCOL_VERSION,
            draining: false,
        })?;
    }
    let t = Instant::now();
    for i in 0..jobs {
        core.submit(JobSpec { config_toml: "[train]\nsteps = 1\n".into(), world_size: [1, 2, 4, 8][i % 4], ..Default::default() })?;
    }
    let submit = t.elapsed().as_secs_f64();
    let t = Instant::now();
    core.tick()?;
    let pass = t.elapsed().as_secs_f64();
    let n = core.list(&[JobState::Scheduled], None).len();
    println!("coordinator (store {store}): {jobs} submits in {:.0} ms ({:.0}/s); one scheduling pass placed {n} jobs in {:.0} ms ({:.0} jobs/s, store writes included)", submit * 1e3, jobs as f64 / submit, pass * 1e3, n as f64 / pass);
    drop(core);
    for e in kv.range("")? {
        kv.delete(&e.key)?;
    }
    let _ = std::fs::remove_dir_all(dir);
    latency()
}

/// Submit-to-running latency over gRPC with one fake worker that starts ranks at once.
fn latency() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", grpc.local_addr()?);
        let dir = std::env::temp_dir().join(format!("ablate-bench-lat-{}", std::process::id()));
        let stop = tokio_util::sync::CancellationToken::new();
        let opts = ablate_coordinator::Options { heartbeat: Duration::from_millis(100), runs_dir: dir.clone(), ..Default::default() };
        let core = std::sync::Arc::new(ablate_coordinator::Core::open(ablate_coordinator::store::open("memory:")?, opts)?);
        let worker_token = core.auth.ephemeral("fake", ablate_coordinator::auth::Role::Worker, Some("fake"));
        let user_token = core.auth.ephemeral("bench", ablate_coordinator::auth::Role::Researcher, None);
        let server = tokio::spawn(ablate_coordinator::server::serve(core, ablate_coordinator::server::Listeners { grpc, metrics: None, tls: None, metrics_token: None }, stop.clone()));
        let mut w = v1::worker_service_client::WorkerServiceClient::new(crate::conn::channel(&url, Some(&worker_token)).await?);
        let mut j = v1::job_service_client::JobServiceClient::new(crate::conn::channel(&url, Some(&user_token)).await?);
        let reg = v1::Registration {
            worker_id: "fake".into(),
            devices: vec![v1::Device { kind: v1::DeviceKind::Cpu as i32, index: 0, ..Default::default() }],
            protocol_version: ablate_proto::PROTOCOL_VERSION,
            ..Default::default()
        };
        let mut lat = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            let job = j.submit_job(v1::SubmitJobRequest { config_toml: String::new(), world_size: 1, ..Default::default() }).await?.into_inner().job.expect("job");
            let mut running = vec![];
            loop {
                // a worker heartbeating every 100 ms that starts what it is given immediately
                let a = w.heartbeat(v1::HeartbeatRequest { registration: Some(reg.clone()), running: running.clone() }).await?.into_inner().assignments;
                running = a.iter().map(|a| v1::RunningRank { job_id: a.job_id.clone(), generation: a.generation, rank: a.rank, pid: 1, step: 0 }).collect();
                if j.get_job(v1::GetJobRequest { id: job.id.clone() }).await?.into_inner().state() == v1::JobState::Running {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            lat.push(t.elapsed().as_secs_f64() * 1e3);
            j.cancel_job(v1::CancelJobRequest { id: job.id, reason: "bench".into() }).await?;
        }
        lat.sort_by(f64::total_cmp);
        println!(
            "submit-to-running (gRPC, scheduling pass every 200 ms, heartbeats every 100 ms): p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms over {} jobs",
            lat[lat.len() / 2],
            lat[lat.len() * 95 / 100],
            lat[lat.len() - 1],
            lat.len()
        );
        stop.cancel();
        server.await??;
        let _ = std::fs::remove_dir_all(dir);
        Ok(())
    })
}
