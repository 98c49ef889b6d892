//! `/metrics` behind a bearer token (`--metrics-token-file`): a scrape without it, or with
//! another, gets 401; with it, the exposition; `/healthz` stays open.

use ablate_coordinator::server::{self, Listeners};
use ablate_coordinator::{store, Core, Options};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

async fn get(addr: std::net::SocketAddr, path: &str, auth: Option<&str>) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let header = auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{header}\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_the_scrape_token() {
    let dir = tempfile::tempdir().unwrap();
    let core = Arc::new(Core::open(store::open("memory:").unwrap(), Options { runs_dir: dir.path().to_path_buf(), ..Options::default() }).unwrap());
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = metrics.local_addr().unwrap();
    let stop = CancellationToken::new();
    let served = tokio::spawn(server::serve(core, Listeners { grpc, metrics: Some(metrics), tls: None, metrics_token: Some("s3cret".into()) }, stop.clone()));
    // the first scheduling pass publishes the gauges
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    for auth in [None, Some("Bearer wrong"), Some("s3cret")] {
        let r = get(addr, "/metrics", auth).await;
        assert!(r.starts_with("HTTP/1.1 401") && r.to_ascii_lowercase().contains("www-authenticate: bearer"), "{auth:?}: {r}");
        assert!(!r.contains("ablate_jobs"), "nothing leaks with a 401");
    }
    let r = get(addr, "/metrics", Some("Bearer s3cret")).await;
    assert!(r.starts_with("HTTP/1.1 200") && r.contains("ablate_jobs"), "{r}");
    assert!(get(addr, "/healthz", None).await.starts_with("HTTP/1.1 200"));
    // a keep-alive client (as Prometheus is) gets two answers on one connection
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n\r\n";
    s.write_all(format!("{req}{req}").as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    while String::from_utf8_lossy(&got).matches("HTTP/1.1 200").count() < 2 {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf)).await.expect("two answers in time").unwrap();
        assert!(n > 0, "the connection closed after {} bytes", got.len());
        got.extend_from_slice(&buf[..n]);
    }
    stop.cancel();
    served.await.unwrap().unwrap();
}
