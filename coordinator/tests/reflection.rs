//! Server reflection answers in both versions a client may ask: `grpc.reflection.v1` and
//! `grpc.reflection.v1alpha` (what grpcurl and most clients still use), without a token,
//! listing ablate's three services and describing them.

use ablate_coordinator::server::{self, Listeners};
use ablate_coordinator::{store, Core, Options};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_answers_v1_and_v1alpha_clients() {
    let dir = tempfile::tempdir().unwrap();
    let core = Arc::new(Core::open(store::open("memory:").unwrap(), Options { runs_dir: dir.path().to_path_buf(), ..Options::default() }).unwrap());
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", grpc.local_addr().unwrap());
    let stop = CancellationToken::new();
    let served = tokio::spawn(server::serve(core, Listeners { grpc, metrics: None, tls: None, metrics_token: None }, stop.clone()));
    let channel = tonic::transport::Endpoint::from_shared(url).unwrap().connect_lazy();

    {
        use tonic_reflection::pb::v1alpha::{server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest, server_reflection_response::MessageResponse, ServerReflectionRequest};
        let mut c = ServerReflectionClient::new(channel.clone());
        let ask = |m: MessageRequest| tokio_stream::iter(vec![ServerReflectionRequest { host: String::new(), message_request: Some(m) }]);
        let mut answers = None;
        for _ in 0..50 {
            match c.server_reflection_info(ask(MessageRequest::ListServices(String::new()))).await {
                Ok(r) => {
                    answers = Some(r.into_inner());
                    break;
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
        let mut answers = answers.expect("the server answers v1alpha reflection");
        let Some(MessageResponse::ListServicesResponse(list)) = answers.message().await.unwrap().unwrap().message_response else { panic!("not a service list") };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        for want in ["ablate.v1.JobService", "ablate.v1.WorkerService", "ablate.v1.AdminService"] {
            assert!(names.iter().any(|n| n == want), "v1alpha lists {names:?}");
        }
        let mut answers = c.server_reflection_info(ask(MessageRequest::FileContainingSymbol("ablate.v1.JobService".into()))).await.unwrap().into_inner();
        let Some(MessageResponse::FileDescriptorResponse(files)) = answers.message().await.unwrap().unwrap().message_response else { panic!("no descriptor for ablate.v1.JobService") };
        assert!(!files.file_descriptor_proto.is_empty());
    }
    {
        use tonic_reflection::pb::v1::{server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest, server_reflection_response::MessageResponse, ServerReflectionRequest};
        let mut c = ServerReflectionClient::new(channel);
        let req = ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::ListServices(String::new())) };
        let mut answers = c.server_reflection_info(tokio_stream::iter(vec![req])).await.unwrap().into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) = answers.message().await.unwrap().unwrap().message_response else { panic!("not a service list") };
        assert!(list.service.iter().any(|s| s.name == "ablate.v1.JobService"), "{:?}", list.service);
    }
    stop.cancel();
    served.await.unwrap().unwrap();
}
