//! # ablate-proto
//!
//! What the coordinator, the workers and the CLI share:
//! - `v1`: the generated `ablate.v1` messages, `JobService` and `WorkerService` clients and
//!   servers (proto/ablate/v1/ablate.proto, compiled by protox in build.rs);
//! - `etcd`: clients of etcd's v3 KV and Lease services (proto/etcd/kv.proto);
//! - `DESCRIPTOR_SET`: the encoded descriptors, for gRPC reflection;
//! - `auth`: the bearer-token header of every call and the HMAC primitives of the ring;
//! - `fuzz` (feature `fuzz`, tests only): input mutations and a counting runner for the
//!   workspace's fuzz tests;
//! - `PROTOCOL_VERSION` and the coordinator URL helpers (the coordinator's typed ids and
//!   domain types live in the coordinator, converted at its service boundary).


/// Bumped on every incompatible change of the coordinator <-> worker protocol.
pub const PROTOCOL_VERSION: u32 = 5;

pub mod auth;
#[cfg(feature = "fuzz")]
pub mod fuzz;
pub mod tls;

/// The largest gRPC message the coordinator takes and the CLI reads: a completion report
/// and `GetEvalSamples` carry an evaluation's per-image data (2 x N x 320 floats: 64 MiB
/// holds N = 26,000).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("ablate.v1");
}

/// etcd's v3 KV, Lease and Auth clients (proto/etcd/kv.proto), for the coordinator's etcd store.
#[allow(clippy::all, missing_docs)]
pub mod etcd {
    tonic::include_proto!("etcdserverpb");
}

/// The encoded `FileDescriptorSet` of ablate.v1 (for tonic-reflection).
pub const DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ablate_v1_descriptor.bin"));

impl v1::JobState {
    /// Succeeded, failed or cancelled: nothing more happens to the job.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    /// Lowercase name as users see it (`queued`, `running`, ...).
    pub fn label(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::Queued => "queued",
            Self::Scheduled => "scheduled",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Queued, Self::Scheduled, Self::Running, Self::Succeeded, Self::Failed, Self::Cancelled].into_iter().find(|x| x.label() == s)
    }
}

/// The URLs of a `--coordinator` value: one URL, or several separated by commas
/// (coordinators sharing an etcd store: the leader serves and the standbys listen on
/// nothing, so a client takes the first that answers).
pub fn coordinator_urls(spec: &str) -> Vec<String> {
    spec.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

/// Connects to the first coordinator of `spec` (see [`coordinator_urls`]) that answers;
/// returns its URL and channel, or every URL's error. `https://` URLs use the TLS settings
/// of the environment ([`tls::ClientTls::from_env`]).
pub async fn connect_first(spec: &str) -> Result<(String, tonic::transport::Channel), String> {
    connect_first_with(spec, tls::ClientTls::from_env()?.as_ref()).await
}

/// [`connect_first`] with explicit TLS settings (used for `https://` URLs only).
pub async fn connect_first_with(spec: &str, tls: Option<&tls::ClientTls>) -> Result<(String, tonic::transport::Channel), String> {
    let mut errors = Vec::new();
    for url in coordinator_urls(spec) {
        let endpoint = match tonic::transport::Endpoint::from_shared(url.clone()) {
            Ok(e) => e.connect_timeout(std::time::Duration::from_secs(3)),
            Err(e) => {
                errors.push(format!("{url}: {e}"));
                continue;
            }
        };
        let endpoint = match (url.starts_with("https://"), tls) {
            (false, _) => endpoint,
            (true, None) => {
                errors.push(format!("{url}: an https:// coordinator needs {} (the CA file that signed its certificate)", tls::CA_ENV));
                continue;
            }
            (true, Some(t)) => match endpoint.tls_config(t.config()) {
                Ok(e) => e,
                Err(e) => {
                    errors.push(format!("{url}: TLS settings: {e}"));
                    continue;
                }
            },
        };
        match endpoint.connect().await {
            Ok(channel) => return Ok((url, channel)),
            Err(e) => {
                let mut msg = format!("{url}: {e}");
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    msg.push_str(&format!(": {s}"));
                    source = s.source();
                }
                errors.push(msg);
            }
        }
    }
    Err(if errors.is_empty() { format!("no coordinator URL in {spec:?}") } else { errors.join("; ") })
}

/// [`connect_first`], with every call carrying `token` (see [`auth::Bearer`]).
pub async fn connect_authed(spec: &str, token: Option<&str>) -> Result<(String, auth::Authed), String> {
    connect_authed_with(spec, token, tls::ClientTls::from_env()?.as_ref()).await
}

/// [`connect_authed`] with explicit TLS settings.
pub async fn connect_authed_with(spec: &str, token: Option<&str>, tls: Option<&tls::ClientTls>) -> Result<(String, auth::Authed), String> {
    let bearer = auth::Bearer::new(token)?;
    let (url, channel) = connect_first_with(spec, tls).await?;
    Ok((url, tonic::service::interceptor::InterceptedService::new(channel, bearer)))
}
