//! The `/metrics` listener: HTTP/1.1 through hyper (the HTTP stack tonic already brings), so
//! Prometheus's keep-alive scrapes work. `GET /metrics` asks for `Authorization: Bearer
//! <token>` when the coordinator has a scrape token (401 otherwise, counted as a rejected
//! call); `GET /healthz` is always open. (metrics-exporter-prometheus's own listener has no
//! way to ask for a token, hence this one.)

use std::convert::Infallible;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

/// A connection idle this long between requests (or slow to send a head) is closed.
const IDLE: Duration = Duration::from_secs(30);

fn answer(status: StatusCode, ctype: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_str(ctype).expect("a valid content type"));
    r
}

/// Whether `req` carries `Authorization: Bearer <token>` (compared in constant time).
fn bearer_ok<B>(req: &Request<B>, token: &str) -> bool {
    let want = format!("Bearer {token}");
    req.headers().get_all(hyper::header::AUTHORIZATION).iter().any(|v| ablate_proto::auth::ct_eq(v.as_bytes(), want.as_bytes()))
}

fn route<B>(req: &Request<B>, handle: &PrometheusHandle, token: Option<&str>) -> Response<Full<Bytes>> {
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
        return answer(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET\n".into());
    }
    match req.uri().path() {
        "/metrics" if token.is_some_and(|t| !bearer_ok(req, t)) => {
            crate::metrics::auth_rejected("unauthenticated");
            let mut r = answer(StatusCode::UNAUTHORIZED, "text/plain", "/metrics needs Authorization: Bearer <token> (the coordinator's --metrics-token-file)\n".into());
            r.headers_mut().insert(hyper::header::WWW_AUTHENTICATE, hyper::header::HeaderValue::from_static("Bearer"));
            r
        }
        "/metrics" => answer(StatusCode::OK, "text/plain; version=0.0.4", handle.render()),
        "/healthz" => answer(StatusCode::OK, "text/plain", "ok\n".into()),
        _ => answer(StatusCode::NOT_FOUND, "text/plain", "not found: try /metrics\n".into()),
    }
}

/// Serves `/metrics` and `/healthz` on `listener` until `shutdown`; open connections end
/// gracefully (the request in flight is answered).
pub async fn serve(listener: tokio::net::TcpListener, handle: PrometheusHandle, token: Option<String>, shutdown: CancellationToken) {
    loop {
        let (sock, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("metrics listener: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (handle, token, shutdown) = (handle.clone(), token.clone(), shutdown.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let r = route(&req, &handle, token.as_deref());
                async move { Ok::<_, Infallible>(r) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(IDLE).max_buf_size(64 << 10);
            let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(sock), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r { tracing::debug!("metrics connection: {e}") },
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
        });
    }
}
