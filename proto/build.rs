//! Compiles proto/ablate/v1/ablate.proto with protox (pure Rust: no protoc on the machine)
//! and generates the tonic services. The encoded descriptor set is kept for gRPC reflection.
//! proto/etcd/kv.proto (the etcd v3 KV and Lease services) gets clients only.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/ablate/v1/ablate.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("ablate_v1_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // stored as JSON lines by the coordinator (runs/<job>/metrics.jsonl, evals.jsonl)
        // (missing fields default: lines written before a field existed stay readable)
        .type_attribute("ablate.v1.MetricPoint", "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]")
        .type_attribute("ablate.v1.EvalPoint", "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]")
        .type_attribute("ablate.v1.EvalReport", "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]")
        .type_attribute("ablate.v1.Measured", "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]")
        .type_attribute("ablate.v1.EvalProtocol", "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]")
        .type_attribute("ablate.v1.Composition", "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]")
        .type_attribute("ablate.v1.EvalSamples", "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]")
        .compile_fds(fds)?;
    let etcd = "proto/etcd/kv.proto";
    println!("cargo:rerun-if-changed={etcd}");
    tonic_prost_build::configure().build_client(true).build_server(false).compile_fds(protox::compile([etcd], ["proto"])?)?;
    Ok(())
}
