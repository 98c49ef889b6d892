//! Joining a group through the coordinator. Every rank publishes one entry and its
//! parameter-layout hash under (job, generation), then waits (with a deadline) for every
//! rank's entry ([`exchange`]). The entry says how the rank joins:
//! - the TCP ring: the rank's listener address (`host:port`); [`RendezvousRing`] then
//!   connects the ring, each connection proven with the group's secret (a later generation
//!   has another secret, so a stale rank cannot enter a newer group, nor can a stranger);
//! - NCCL: rank 0 publishes the communicator's unique id (`nccl-id=<hex>`), the others
//!   `nccl-member` ([`nccl_entry`], [`nccl_id`]). A new generation is a new id.
//!
//! A rank that joined with the other backend fails the whole group with an error naming it.
//! The rendezvous calls carry the worker's token ([`Credentials`]): the coordinator answers
//! only the workers placed for the job.

use ablate_proto::v1::{self, worker_service_client::WorkerServiceClient};
use ablate_trainer::collective::{Collective, CollectiveError};
use std::net::TcpListener;
use std::time::Duration;

use super::Ring;

/// What a rank proves itself with: its worker's token (the rendezvous calls) and its
/// group's secret (the ring's handshake key).
#[derive(Clone, Default)]
pub struct Credentials {
    pub token: Option<String>,
    pub secret: Vec<u8>,
}

impl Credentials {
    /// What the worker agent hands its ranks: `ABLATE_TOKEN` and `ABLATE_JOB_SECRET` (hex).
    pub fn from_env() -> Result<Self, String> {
        let token = ablate_proto::auth::client_token()?;
        let secret = match std::env::var(ablate_proto::auth::JOB_SECRET_ENV) {
            Ok(h) => ablate_proto::auth::unhex(h.trim()).ok_or_else(|| format!("{} is not hex", ablate_proto::auth::JOB_SECRET_ENV))?,
            Err(_) => Vec::new(),
        };
        Ok(Self { token, secret })
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // never print a secret
        write!(f, "Credentials {{ token: {}, secret: {} bytes }}", if self.token.is_some() { "set" } else { "none" }, self.secret.len())
    }
}

pub struct RendezvousRing {
    pub coordinator: String,
    pub credentials: Credentials,
    pub job: String,
    pub generation: u64,
    pub rank: usize,
    pub world: usize,
    /// Host name or IP the other ranks reach this one at.
    pub advertise_host: String,
    pub rendezvous_timeout: Duration,
    pub collective_timeout: Duration,
    ring: Option<Ring>,
}

impl RendezvousRing {
    #[allow(clippy::too_many_arguments)]
    pub fn new(coordinator: String, credentials: Credentials, job: String, generation: u64, rank: usize, world: usize, advertise_host: String, rendezvous_timeout: Duration, collective_timeout: Duration) -> Self {
        Self { coordinator, credentials, job, generation, rank, world, advertise_host, rendezvous_timeout, collective_timeout, ring: None }
    }

    fn ring(&mut self) -> &mut Ring {
        self.ring.as_mut().expect("connect() runs before any collective (run_distributed does so)")
    }

    fn join(&self, params_hash: &str, listener: &TcpListener) -> Result<Vec<String>, String> {
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let address = format!("{}:{port}", self.advertise_host);
        let table = exchange(&self.coordinator, self.credentials.token.as_deref(), &self.job, self.generation, self.rank, address, params_hash, self.rendezvous_timeout)?;
        ring_addresses(&table)?;
        Ok(table)
    }
}

/// Publishes this rank's `entry` and waits for every rank's, indexed by rank.
#[allow(clippy::too_many_arguments)]
pub fn exchange(coordinator: &str, token: Option<&str>, job: &str, generation: u64, rank: usize, entry: String, params_hash: &str, timeout: Duration) -> Result<Vec<String>, String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let (_, channel) = ablate_proto::connect_authed(coordinator, token).await.map_err(|e| format!("cannot reach the coordinator: {e}"))?;
        let mut c = WorkerServiceClient::new(channel);
        c.rendezvous_publish(v1::RendezvousPublishRequest { job_id: job.to_string(), generation, rank: rank as u32, address: entry, params_hash: params_hash.to_string() })
            .await
            .map_err(|s| s.message().to_string())?;
        let r = c
            .rendezvous_fetch(v1::RendezvousFetchRequest { job_id: job.to_string(), generation, rank: rank as u32, timeout_ms: timeout.as_millis() as u64 })
            .await
            .map_err(|s| s.message().to_string())?;
        Ok(r.into_inner().addresses)
    })
}

const NCCL_ID: &str = "nccl-id=";
const NCCL_MEMBER: &str = "nccl-member";

/// What an NCCL rank publishes: rank 0 the unique id, the others that they are members.
pub fn nccl_entry(id: Option<&[u8]>) -> String {
    match id {
        Some(id) => format!("{NCCL_ID}{}", id.iter().map(|b| format!("{b:02x}")).collect::<String>()),
        None => NCCL_MEMBER.to_string(),
    }
}

fn backend(entry: &str) -> &'static str {
    if entry.starts_with(NCCL_ID) || entry == NCCL_MEMBER {
        "NCCL"
    } else {
        "the TCP ring"
    }
}

fn same_backend(table: &[String], want: &'static str) -> Result<(), String> {
    match table.iter().position(|e| backend(e) != want) {
        Some(r) => Err(format!("rank {r} joined with {} but this rank uses {want}: every rank of a job must use the same gradient exchange (CUDA ranks of an NCCL build use NCCL; ABLATE_COLLECTIVE=ring forces the ring)", backend(&table[r]))),
        None => Ok(()),
    }
}

/// Checks that every rank joined the TCP ring.
pub fn ring_addresses(table: &[String]) -> Result<(), String> {
    same_backend(table, "the TCP ring")
}

/// Rank 0's NCCL unique id (`len` bytes) from the table, after checking every rank joined
/// with NCCL.
pub fn nccl_id(table: &[String], len: usize) -> Result<Vec<u8>, String> {
    same_backend(table, "NCCL")?;
    let hex = table.first().and_then(|e| e.strip_prefix(NCCL_ID)).ok_or("rank 0 published no NCCL unique id")?;
    let bytes = (0..hex.len() / 2).map(|i| hex.get(2 * i..2 * i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect::<Option<Vec<u8>>>();
    match bytes {
        Some(b) if hex.len() == 2 * len && b.len() == len => Ok(b),
        _ => Err(format!("rank 0's NCCL unique id is not {len} bytes of hex: {hex:?}")),
    }
}

impl Collective for RendezvousRing {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.world
    }
    fn connect(&mut self, params_hash: &str) -> Result<(), CollectiveError> {
        let err = |message: String| CollectiveError { op: "rendezvous", rank: self.rank, message };
        let listener = TcpListener::bind((self.advertise_host.as_str(), 0)).or_else(|_| TcpListener::bind("0.0.0.0:0")).map_err(|e| err(format!("bind ring listener: {e}")))?;
        let addrs = self.join(params_hash, &listener).map_err(err)?;
        if addrs.len() != self.world {
            return Err(CollectiveError { op: "rendezvous", rank: self.rank, message: format!("coordinator returned {} addresses for a world of {}", addrs.len(), self.world) });
        }
        self.ring = Some(Ring::connect(self.rank, listener, &addrs, &self.credentials.secret, self.collective_timeout)?);
        Ok(())
    }
    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<(), CollectiveError> {
        self.ring().all_reduce_sum(buf)
    }
    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<(), CollectiveError> {
        self.ring().broadcast(buf, root)
    }
    fn broadcast_bytes(&mut self, bytes: &mut Vec<u8>, root: usize) -> Result<(), CollectiveError> {
        self.ring().broadcast_bytes(bytes, root)
    }
    fn all_gather(&mut self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, CollectiveError> {
        self.ring().all_gather(bytes)
    }
    fn barrier(&mut self, timeout: Duration) -> Result<(), CollectiveError> {
        self.ring().barrier(timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nccl_id_goes_through_the_table_and_mixed_backends_are_refused() {
        let id: Vec<u8> = (0..128u32).map(|i| (i * 37 % 256) as u8).collect();
        let table = vec![nccl_entry(Some(&id)), nccl_entry(None), nccl_entry(None)];
        assert_eq!(nccl_id(&table, 128).unwrap(), id);
        assert!(ring_addresses(&table).unwrap_err().contains("rank 0 joined with NCCL"));
        let mixed = vec![nccl_entry(Some(&id)), "10.0.0.2:4000".to_string()];
        let e = nccl_id(&mixed, 128).unwrap_err();
        assert!(e.contains("rank 1 joined with the TCP ring but this rank uses NCCL"), "{e}");
        assert!(ring_addresses(&["10.0.0.1:1".into(), "10.0.0.2:2".into()]).is_ok());
        assert!(nccl_id(&[nccl_entry(None)], 128).unwrap_err().contains("no NCCL unique id"));
        assert!(nccl_id(&[nccl_entry(Some(&id[..5]))], 128).unwrap_err().contains("not 128 bytes"));
        assert!(nccl_id(&["nccl-id=zz".into()], 1).unwrap_err().contains("not 1 bytes"));
    }
}
