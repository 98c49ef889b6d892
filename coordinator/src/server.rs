//! Runs a coordinator: the gRPC services (with health and reflection, so `grpcurl` works),
//! the periodic scheduling pass, and the Prometheus endpoint. The caller binds the
//! listeners and owns shutdown, so tests bind `127.0.0.1:0` and stop servers cleanly.

use ablate_proto::v1::{job_service_server::JobServiceServer, worker_service_server::WorkerServiceServer};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::core::{Core, Options};
use crate::error::CoordinatorError;
use crate::service::{Jobs, Workers};
use crate::store::Kv;

pub struct Listeners {
    pub grpc: tokio::net::TcpListener,
    pub metrics: Option<tokio::net::TcpListener>,
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
        tasks.spawn(crate::metrics::serve(l, handle.clone(), shutdown.clone()));
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
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ablate_proto::DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| CoordinatorError::InvalidJob(format!("reflection descriptors: {e}")))?;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listeners.grpc);
    let r = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(JobServiceServer::new(Jobs(core.clone())).max_encoding_message_size(ablate_proto::MAX_MESSAGE_BYTES))
        // a completion carries the final evaluation's per-image data (N x 320 floats, twice)
        .add_service(WorkerServiceServer::new(Workers(core.clone())).max_decoding_message_size(ablate_proto::MAX_MESSAGE_BYTES))
        .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned())
        .await;
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
    r.map_err(|e| CoordinatorError::Io { path: "grpc listener".into(), source: std::io::Error::other(e) })
}
