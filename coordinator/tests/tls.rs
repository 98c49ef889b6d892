//! TLS on the coordinator's gRPC listener, with certificates made here (rcgen): a client
//! that trusts the CA gets in; a plaintext client and one that trusts another CA do not; with
//! mTLS on, a worker without a client certificate (or with one from another CA) is refused
//! while a user needs none.

use ablate_coordinator::auth::Role;
use ablate_coordinator::server::{self, Listeners, ServerTls};
use ablate_coordinator::pki::Ca;
use ablate_coordinator::{store, Core, Options};
use ablate_proto::tls::ClientTls;
use ablate_proto::v1::{self, job_service_client::JobServiceClient, worker_service_client::WorkerServiceClient};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

fn reg(id: &str) -> v1::Registration {
    v1::Registration { worker_id: id.into(), host: "127.0.0.1".into(), protocol_version: ablate_proto::PROTOCOL_VERSION, devices: vec![v1::Device { kind: v1::DeviceKind::Cpu as i32, ..Default::default() }], ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_worker_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, other_ca) = (Ca::new("ablate test CA"), Ca::new("someone else's CA"));
    let (cert_pem, key_pem) = ca.leaf(&["localhost", "127.0.0.1"]);
    let core = Arc::new(Core::open(store::open("memory:").unwrap(), Options { runs_dir: dir.path().to_path_buf(), ..Options::default() }).unwrap());
    let user = core.auth.ephemeral("ana", Role::Researcher, None);
    let worker = core.auth.ephemeral("w1", Role::Worker, Some("w1"));
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = grpc.local_addr().unwrap().port();
    let stop = CancellationToken::new();
    let tls = ServerTls { cert_pem, key_pem, client_ca_pem: Some(ca.pem()) };
    let served = tokio::spawn(server::serve(core, Listeners { grpc, metrics: None, tls: Some(tls), metrics_token: None }, stop.clone()));
    let https = format!("https://localhost:{port}");

    // a user trusting the CA, no client certificate: in
    let trusting = ClientTls { ca_pem: ca.pem(), ..Default::default() };
    let (_, ch) = ablate_proto::connect_authed_with(&https, Some(&user), Some(&trusting)).await.unwrap();
    JobServiceClient::new(ch).list_jobs(v1::ListJobsRequest::default()).await.expect("a user needs no client certificate");

    // plaintext to the TLS port, or trusting another CA: no connection
    let plain = format!("http://127.0.0.1:{port}");
    match ablate_proto::connect_authed_with(&plain, Some(&user), None).await {
        Err(_) => {}
        Ok((_, ch)) => assert!(JobServiceClient::new(ch).list_jobs(v1::ListJobsRequest::default()).await.is_err(), "plaintext must not be served"),
    }
    let wrong = ClientTls { ca_pem: other_ca.pem(), ..Default::default() };
    let refused = match ablate_proto::connect_authed_with(&https, Some(&user), Some(&wrong)).await {
        Err(_) => true,
        Ok((_, ch)) => JobServiceClient::new(ch).list_jobs(v1::ListJobsRequest::default()).await.is_err(),
    };
    assert!(refused, "a client must not accept a certificate its CA did not sign");
    // an https URL with no CA configured says what is missing
    let e = ablate_proto::connect_authed_with(&https, Some(&user), None).await.err().expect("no CA, no connection");
    assert!(e.contains("ABLATE_TLS_CA"), "{e}");

    // a worker with its token but no client certificate: refused
    let (_, ch) = ablate_proto::connect_authed_with(&https, Some(&worker), Some(&trusting)).await.unwrap();
    let e = WorkerServiceClient::new(ch).register(v1::RegisterRequest { registration: Some(reg("w1")) }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert!(e.message().contains("client certificate"), "{}", e.message());
    // with a certificate from another CA: the handshake fails
    let foreign = ClientTls { ca_pem: ca.pem(), identity: Some(other_ca.leaf(&["w1"])), domain: None };
    let refused = match ablate_proto::connect_authed_with(&https, Some(&worker), Some(&foreign)).await {
        Err(_) => true,
        Ok((_, ch)) => WorkerServiceClient::new(ch).register(v1::RegisterRequest { registration: Some(reg("w1")) }).await.is_err(),
    };
    assert!(refused, "a client certificate of another CA must be refused");
    // with the cluster's client certificate: in
    let good = ClientTls { ca_pem: ca.pem(), identity: Some(ca.leaf(&["w1"])), domain: None };
    let (_, ch) = ablate_proto::connect_authed_with(&https, Some(&worker), Some(&good)).await.unwrap();
    WorkerServiceClient::new(ch).register(v1::RegisterRequest { registration: Some(reg("w1")) }).await.expect("a worker with its certificate and token registers");

    stop.cancel();
    served.await.unwrap().unwrap();
}
