//! `ablate coordinator`, `ablate worker` and the hidden `ablate rank` (started by workers).

use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Args)]
pub struct CoordinatorArgs {
    /// gRPC address to listen on.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: String,
    /// The state store: a file path (embedded redb, created if missing), `memory:`, or an
    /// etcd cluster `etcd://host:port[,host:port...][/namespace/]`. With etcd, several
    /// coordinators can share the store: one leads and serves, the others wait as standbys.
    #[arg(long, default_value = "ablate-state/coordinator.redb")]
    store: String,
    /// This coordinator's id in the leader election (etcd stores); default <hostname>-<pid>.
    #[arg(long)]
    id: Option<String>,
    /// Leader lease (etcd stores): a leader that dies is replaced after this many seconds.
    #[arg(long, default_value_t = 5)]
    lease_ttl_s: u64,
    /// Where per-job metric and log files go.
    #[arg(long, default_value = "ablate-state/runs")]
    runs: PathBuf,
    /// Prometheus endpoint (`GET /metrics`); off when not given.
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Heartbeat interval asked of workers.
    #[arg(long, default_value_t = 500)]
    heartbeat_ms: u64,
    /// A worker silent this long is lost (its jobs restart elsewhere).
    #[arg(long, default_value_t = 10_000)]
    worker_expiry_ms: u64,
    /// Restarts after failures that may be the job's own (a stuck rank) before it fails.
    #[arg(long, default_value_t = 3)]
    max_restarts: u32,
    /// Restarts after the cluster's failures (a lost worker, a dead peer, a rank killed from
    /// outside, ranks not started in time) before a job fails; they do not spend
    /// --max-restarts.
    #[arg(long, default_value_t = 20)]
    max_infra_restarts: u32,
    /// A placed job whose ranks have not all started within this is placed again.
    #[arg(long, default_value_t = 600)]
    launch_deadline_s: u64,
    /// When the store holds no admin token (the first start), the one made then is written
    /// here (mode 0600); without this flag it is printed once on standard error.
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// Serve gRPC over TLS with this certificate (PEM; clients use https:// URLs and trust
    /// its CA through ABLATE_TLS_CA).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// `/metrics` asks scrapers for `Authorization: Bearer <the first line of FILE>`
    /// (Prometheus: `authorization: { credentials_file: FILE }`); `/healthz` stays open.
    #[arg(long, requires = "metrics_listen")]
    metrics_token_file: Option<PathBuf>,
    /// Refuse jobs of more ranks than this (a gang no cluster of yours can hold).
    #[arg(long, default_value_t = 4096)]
    max_world_size: u32,
    /// Refuse sweeps of more jobs than this.
    #[arg(long, default_value_t = 10_000)]
    max_sweep_jobs: usize,
    /// Log lines kept per job per minute; the rest are dropped, and counted in the log.
    #[arg(long, default_value_t = 20_000)]
    max_log_lines_per_minute: usize,
    /// Require workers to present a client certificate signed by this CA (PEM; mTLS).
    /// Users' CLI calls need none.
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
}

/// The TLS files of the flags, read before anything listens.
fn server_tls(a: &CoordinatorArgs) -> anyhow::Result<Option<ablate_coordinator::server::ServerTls>> {
    let read = |flag: &str, p: &PathBuf| std::fs::read(p).with_context(|| format!("{flag} {}", p.display()));
    let (Some(cert), Some(key)) = (&a.tls_cert, &a.tls_key) else { return Ok(None) };
    Ok(Some(ablate_coordinator::server::ServerTls {
        cert_pem: read("--tls-cert", cert)?,
        key_pem: read("--tls-key", key)?,
        client_ca_pem: a.tls_client_ca.as_ref().map(|p| read("--tls-client-ca", p)).transpose()?,
    }))
}

/// The first start: no admin token in the store yet, so one is made and handed over once.
fn bootstrap_admin(store: &std::sync::Arc<dyn ablate_coordinator::store::Kv>, file: Option<&std::path::Path>) -> anyhow::Result<()> {
    use ablate_coordinator::auth::{Auth, Role};
    let auth = Auth::open(store.clone())?;
    if auth.has_admin()? {
        return Ok(());
    }
    let (rec, token) = auth.create("admin", Role::Admin, None, "first start")?;
    match file {
        Some(f) => {
            ablate_proto::auth::write_token_file(f, &token).with_context(|| format!("--admin-token-file {}", f.display()))?;
            eprintln!("first start: admin token {} written to {} (make more with `ablate token create`)", rec.id, f.display());
        }
        None => eprintln!("first start: the admin token, shown this once (make more with `ablate token create`):\n{token}"),
    }
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

/// The first Ctrl-C or SIGTERM cancels `first`, the next one `second`.
fn drain_then_kill_on_signals(first: CancellationToken, second: CancellationToken) {
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        for token in [first, second] {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            token.cancel();
        }
    });
}

/// Cancels on Ctrl-C or SIGTERM.
fn stop_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        token.cancel();
    });
}

fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname").map(|s| s.trim().to_string()).ok().filter(|s| !s.is_empty()).unwrap_or_else(|| "host".into())
}

pub fn coordinator(a: CoordinatorArgs) -> anyhow::Result<()> {
    if a.store.starts_with("etcd://") {
        return coordinator_ha(a);
    }
    let store = ablate_coordinator::store::open(&a.store)?;
    serve(a, store, None)
}

/// A coordinator on an etcd store: campaigns for the leadership (waiting as a standby while
/// another leads), serves while it leads, and stops with an error if it loses the post (a
/// supervisor restarts it as a standby). A clean stop resigns, so a standby takes over at once.
fn coordinator_ha(a: CoordinatorArgs) -> anyhow::Result<()> {
    use ablate_coordinator::leader::Election;
    use ablate_coordinator::store::etcd::EtcdStore;
    let mut store = EtcdStore::open(&a.store)?;
    let election = Election { id: a.id.clone().unwrap_or_else(|| format!("{}-{}", host_name(), std::process::id())), ttl: Duration::from_secs(a.lease_ttl_s.max(1)), poll: Duration::from_millis(500) };
    let cancel = CancellationToken::new();
    let rt = runtime()?;
    rt.block_on(async { stop_on_signals(cancel.clone()) });
    eprintln!("coordinator {}: campaigning for the leadership on {} (lease {} s)", election.id, a.store, election.ttl.as_secs());
    // a takeover (the old leader's lease, then a standby's poll) must end before the workers'
    // leases do, or every running rank fences itself during it (ablate_worker::lease)
    let worker_lease = ablate_worker::lease::lease_for(Duration::from_millis(a.worker_expiry_ms));
    if worker_lease < election.ttl + election.poll + Duration::from_secs(1) {
        eprintln!(
            "warning: --worker-expiry-ms {} gives workers a {:.1} s lease, not more than a takeover takes (lease {} s + poll {:.1} s + 1 s): running ranks would stop during one; raise --worker-expiry-ms",
            a.worker_expiry_ms,
            worker_lease.as_secs_f64(),
            election.ttl.as_secs(),
            election.poll.as_secs_f64()
        );
    }
    let lead = election.campaign(&mut store, &cancel, |holder| eprintln!("standby: {holder} leads; waiting"))?;
    let Some(lead) = lead else {
        eprintln!("stopped while a standby");
        return Ok(());
    };
    eprintln!("coordinator {}: leading", lead.id);
    let store = std::sync::Arc::new(store);
    drop(rt);
    let result = serve(a, store.clone(), Some(lead.lost.clone()));
    if lead.lost.is_cancelled() {
        anyhow::bail!("coordinator {}: lost the leadership (its etcd lease expired); stopped serving", lead.id);
    }
    if let Err(e) = lead.resign(&store) {
        eprintln!("could not resign the leadership ({e}); a standby takes over when the lease expires");
    }
    result
}

/// Serves until Ctrl-C or SIGTERM, or, for a leader, until `lost` (the leadership is gone).
fn serve(a: CoordinatorArgs, store: std::sync::Arc<dyn ablate_coordinator::store::Kv>, lost: Option<CancellationToken>) -> anyhow::Result<()> {
    let opts = ablate_coordinator::Options {
        heartbeat: Duration::from_millis(a.heartbeat_ms),
        worker_expiry: Duration::from_millis(a.worker_expiry_ms),
        max_restarts: a.max_restarts,
        max_infra_restarts: a.max_infra_restarts,
        launch_deadline: Duration::from_secs(a.launch_deadline_s.max(1)),
        runs_dir: a.runs.clone(),
        limits: ablate_coordinator::core::Limits { max_world_size: a.max_world_size, max_sweep_jobs: a.max_sweep_jobs, max_log_lines_per_minute: a.max_log_lines_per_minute, ..Default::default() },
        config_check: Some(crate::config_check::trainer_config_check()),
    };
    bootstrap_admin(&store, a.admin_token_file.as_deref())?;
    let tls = server_tls(&a)?;
    let metrics_token = a.metrics_token_file.as_deref().map(ablate_proto::auth::read_token_file).transpose().map_err(anyhow::Error::msg)?;
    runtime()?.block_on(async move {
        let grpc = tokio::net::TcpListener::bind(&a.listen).await.with_context(|| format!("--listen {}", a.listen))?;
        let metrics = match &a.metrics_listen {
            Some(m) => Some(tokio::net::TcpListener::bind(m).await.with_context(|| format!("--metrics-listen {m}"))?),
            None => None,
        };
        let addr = grpc.local_addr()?;
        if tls.is_none() && !addr.ip().is_loopback() {
            eprintln!("warning: gRPC on {addr} without TLS: tokens and job configs cross the network in the clear (--tls-cert, --tls-key; docs/security.md)");
        }
        // one line a script can wait for, with the real ports (`:0` picks free ones)
        println!(
            "coordinator listening on {}{}{} (store {})",
            addr,
            if tls.is_some() { " (TLS)" } else { "" },
            metrics.as_ref().map(|m| format!(", metrics on http://{}/metrics", m.local_addr().expect("bound"))).unwrap_or_default(),
            a.store
        );
        let token = CancellationToken::new();
        stop_on_signals(token.clone());
        if let Some(lost) = lost {
            let t = token.clone();
            tokio::spawn(async move {
                lost.cancelled().await;
                eprintln!("lost the leadership: stopping");
                t.cancel();
            });
        }
        ablate_coordinator::server::run(store, opts, ablate_coordinator::server::Listeners { grpc, metrics, tls, metrics_token }, token).await?;
        Ok(())
    })
}

#[derive(Args)]
pub struct WorkerArgs {
    /// The coordinator's URL; several, comma-separated, for coordinators sharing an etcd
    /// store (the worker and its ranks use the first that answers: the leader).
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    coordinator: String,
    /// `cpu:N` (N CPU slots) or `cuda:0,1,...`.
    #[arg(long, default_value = "cpu:1")]
    devices: String,
    /// Job directories (checkpoints, rank logs) go under DIR/jobs/.
    #[arg(long, default_value = "ablate-state/worker")]
    work_dir: PathBuf,
    /// This worker's id; its token must name it (`ablate token create --role worker
    /// --worker-id ID`). Defaults to the host name.
    #[arg(long)]
    id: Option<String>,
    /// A file holding this worker's token (default: $ABLATE_TOKEN, or the file
    /// $ABLATE_TOKEN_FILE names). Its ranks get it too.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// A folder jobs may read from (repeatable): every dataset, weights or evaluation path
    /// in a job's config must resolve inside one, or the job is refused. None given: jobs
    /// may name any path this worker can read.
    #[arg(long)]
    data_root: Vec<PathBuf>,
    /// Address other ranks reach this worker's ranks at.
    #[arg(long, default_value = "127.0.0.1")]
    advertise_host: String,
    /// A rank with no step advance for this long is killed and reported stuck.
    #[arg(long, default_value_t = 600)]
    stuck_after_s: u64,
    /// On SIGTERM, how long the ranks get to stop at a common step and checkpoint before
    /// they are killed.
    #[arg(long, default_value_t = 120)]
    drain_timeout_s: u64,
    #[arg(long, default_value_t = 120)]
    rendezvous_timeout_s: u64,
    /// Deadline of one collective operation (a dead peer errors at once; a stuck one after this).
    #[arg(long, default_value_t = 120)]
    collective_timeout_s: u64,
    /// Threads per CPU rank (default: the cores divided by the CPU slots).
    #[arg(long)]
    threads_per_rank: Option<usize>,
    /// Where every checkpoint is also published, so a gang placed on other workers resumes
    /// from the newest whole one instead of from scratch: a folder every worker reaches at the
    /// same path (NFS, Lustre, a mounted bucket) or an S3-compatible object store,
    /// `s3://bucket/prefix[?endpoint=URL&region=R]` (credentials from AWS_ACCESS_KEY_ID and
    /// AWS_SECRET_ACCESS_KEY). Each job publishes under STORE/<job>/.
    #[arg(long, value_name = "STORE")]
    checkpoint_store: Option<String>,
    /// Published checkpoints kept per job in the checkpoint store.
    #[arg(long, default_value_t = 3)]
    checkpoint_keep: usize,
}

/// A worker's `--checkpoint-store`, checked before the worker starts: a folder made absolute
/// (ranks run elsewhere), an object store reached once (its bucket and credentials work).
fn checkpoint_store_spec(spec: &str) -> anyhow::Result<String> {
    let spec = if spec.contains("://") { spec.to_string() } else { std::path::absolute(spec).map(|p| p.display().to_string()).unwrap_or_else(|_| spec.to_string()) };
    let store = ablate_worker::s3::open(&spec, 1).map_err(anyhow::Error::msg)?;
    store.steps().with_context(|| format!("--checkpoint-store {spec}: cannot list it"))?;
    Ok(spec)
}

pub fn worker(a: WorkerArgs) -> anyhow::Result<()> {
    let devices = ablate_worker::agent::parse_devices(&a.devices)?;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let host = host_name();
    let exe = std::env::current_exe().context("locating the ablate binary to start ranks")?;
    let cfg = ablate_worker::agent::AgentConfig {
        coordinator: a.coordinator,
        worker_id: a.id.unwrap_or_else(|| host.clone()),
        token: crate::conn::token_from(a.token_file.as_deref())?,
        data_roots: ablate_worker::confine::resolve_roots(&a.data_root).map_err(anyhow::Error::msg)?,
        advertise_host: a.advertise_host,
        threads_per_rank: a.threads_per_rank.unwrap_or((cores / devices.len()).max(1)),
        devices,
        labels: Default::default(),
        work_dir: a.work_dir,
        rank_command: vec![exe.display().to_string(), "rank".into()],
        stuck_after: Duration::from_secs(a.stuck_after_s),
        rendezvous_timeout: Duration::from_secs(a.rendezvous_timeout_s),
        collective_timeout: Duration::from_secs(a.collective_timeout_s),
        drain_timeout: Duration::from_secs(a.drain_timeout_s),
        checkpoint_store: a.checkpoint_store.as_deref().map(checkpoint_store_spec).transpose()?,
        checkpoint_keep: a.checkpoint_keep.max(1),
        fence: true,
    };
    eprintln!("worker {} with {} slot(s), {} thread(s) per rank, coordinator {}", cfg.worker_id, cfg.devices.len(), cfg.threads_per_rank, cfg.coordinator);
    if cfg.data_roots.is_empty() {
        eprintln!("no --data-root: jobs may read any path this worker can (docs/security.md)");
    }
    runtime()?.block_on(async move {
        // SIGTERM (preemption) drains: the ranks stop at a common step with a checkpoint and
        // their jobs go elsewhere at once; a second SIGTERM (or Ctrl-C) kills them
        let (drain, kill) = (CancellationToken::new(), CancellationToken::new());
        drain_then_kill_on_signals(drain.clone(), kill.clone());
        ablate_worker::agent::run_draining(cfg, drain, kill).await?;
        Ok(())
    })
}

#[derive(Args)]
pub struct RankArgs {
    #[arg(long)]
    coordinator: String,
    #[arg(long)]
    job: String,
    #[arg(long)]
    generation: u64,
    #[arg(long)]
    rank: usize,
    #[arg(long)]
    world: usize,
    #[arg(long)]
    config: PathBuf,
    #[arg(long)]
    job_dir: PathBuf,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value = "127.0.0.1")]
    advertise_host: String,
    #[arg(long, default_value_t = 120_000)]
    rendezvous_timeout_ms: u64,
    #[arg(long, default_value_t = 120_000)]
    collective_timeout_ms: u64,
    /// This job's part of the shared checkpoint store, a folder or s3:// URL (rank 0
    /// publishes and restores).
    #[arg(long)]
    checkpoint_store: Option<String>,
    #[arg(long, default_value_t = 3)]
    checkpoint_keep: usize,
}

pub fn rank(a: RankArgs) -> anyhow::Result<()> {
    let credentials = ablate_worker::collective::rendezvous::Credentials::from_env().map_err(anyhow::Error::msg)?;
    let code = ablate_worker::rank::main(&ablate_worker::rank::RankArgs {
        coordinator: a.coordinator,
        credentials,
        job: a.job,
        generation: a.generation,
        rank: a.rank,
        world: a.world,
        config: a.config,
        job_dir: a.job_dir,
        device: a.device,
        advertise_host: a.advertise_host,
        rendezvous_timeout: Duration::from_millis(a.rendezvous_timeout_ms),
        collective_timeout: Duration::from_millis(a.collective_timeout_ms),
        checkpoint_store: a.checkpoint_store.as_deref().map(|spec| ablate_worker::s3::open(spec, a.checkpoint_keep)).transpose().map_err(anyhow::Error::msg)?,
    });
    std::process::exit(code)
}
