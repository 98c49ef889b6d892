//! Runs a coordinator: the gRPC services, each behind the token check (health and
//! reflection stay open: they tell no state, and `grpcurl` and load balancers use them),
//! the periodic scheduling pass, and the Prometheus endpoint. The caller binds the
//! listeners and owns shutdown, so tests bind `127.0.0.1:0` and stop servers cleanly.

use ablate_proto::v1::{admin_service_server::AdminServiceServer, job_service_server::JobServiceServer, worker_service_server::WorkerServiceServer};
use tonic::service::interceptor::InterceptedService;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::core::{Core, Options};
use crate::error::CoordinatorError;
use crate::service::{Admin, Jobs, Workers};
use crate::store::Kv;

pub struct Listeners {
    pub grpc: tokio::net::TcpListener,
    pub metrics: Option<tokio::net::TcpListener>,
    /// TLS on the gRPC listener (None: plaintext).
    pub tls: Option<ServerTls>,
    /// The bearer token `/metrics` asks of scrapers (None: open to whoever reaches it).
    pub metrics_token: Option<String>,
}

/// The coordinator's certificate and key (PEM), and the CA whose client certificates
/// workers must present (mTLS: a worker call without one is refused; users need none).
pub struct ServerTls {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub client_ca_pem: Option<Vec<u8>>,
}

/// Serves until `shutdown` is cancelled.
pub async fn run(store: Arc<dyn Kv>, opts: Options, listeners: Listeners, shutdown: CancellationToken) -> Result<(), CoordinatorError> {
    serve(Arc::new(Core::open(store, opts)?), listeners, shutdown).await
}

/// Serves `core` (which the caller may also use directly, as `ablate run` does).
pub async fn serve(core: Arc<Core>, listeners: Listeners, shutdown: CancellationToken) -> Result<(), CoordinatorError> {
    let handle = crate::metrics::install();
    {
        let (core, shutdown) = (core.clone(), shutdown.clone());
        tokio::spawn(async move {
            shutdown.cancelled().await;
            core.closing.cancel();
        });
    }
    let tasks = tokio_util::task::TaskTracker::new();
    if let Some(l) = listeners.metrics {
        tasks.spawn(crate::metrics_http::serve(l, handle.clone(), listeners.metrics_token.clone(), shutdown.clone()));
    }
    {
        let (core, shutdown) = (core.clone(), shutdown.clone());
        tasks.spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(200));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = every.tick() => {
                        if let Err(e) = core.tick() {
                            tracing::error!("scheduling pass: {e}");
                        }
                        handle.run_upkeep();
                    }
                }
            }
        });
    }
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<JobServiceServer<Jobs>>().await;
    health.set_serving::<WorkerServiceServer<Workers>>().await;
    // reflection in both versions: grpcurl and most clients still ask v1alpha
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ablate_proto::DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| CoordinatorError::InvalidJob(format!("reflection descriptors: {e}")))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ablate_proto::DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| CoordinatorError::InvalidJob(format!("reflection descriptors: {e}")))?;
    health.set_serving::<AdminServiceServer<Admin>>().await;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listeners.grpc);
    let mut builder = tonic::transport::Server::builder();
    let mut worker_certs = false;
    if let Some(t) = &listeners.tls {
        let mut cfg = tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(&t.cert_pem, &t.key_pem));
        if let Some(ca) = &t.client_ca_pem {
            cfg = cfg.client_ca_root(tonic::transport::Certificate::from_pem(ca)).client_auth_optional(true);
            worker_certs = true;
        }
        builder = builder.tls_config(cfg).map_err(|e| CoordinatorError::BadRequest(format!("TLS certificate or key: {e}")))?;
    }
    let check = core.auth.interceptor(worker_certs);
    let r = builder
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(InterceptedService::new(JobServiceServer::new(Jobs(core.clone())).max_encoding_message_size(ablate_proto::MAX_MESSAGE_BYTES), check.clone()))
        // a completion carries the final evaluation's per-image data (N x 320 floats, twice)
        .add_service(InterceptedService::new(WorkerServiceServer::new(Workers(core.clone())).max_decoding_message_size(ablate_proto::MAX_MESSAGE_BYTES), check.clone()))
        .add_service(InterceptedService::new(AdminServiceServer::new(Admin(core.clone())), check))
        .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned())
        .await;
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
    r.map_err(|e| CoordinatorError::Io { path: "grpc listener".into(), source: std::io::Error::other(e) })
}
