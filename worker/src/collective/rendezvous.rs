//! A [`Ring`] joined through the coordinator: the rank binds its listener, publishes its
//! address and parameter-layout hash under (job, generation), waits for every rank's
//! address (with a deadline), then connects the ring. A later generation has another
//! token, so a stale rank cannot enter a newer group.

use ablate_proto::v1::{self, worker_service_client::WorkerServiceClient};
use ablate_trainer::collective::{Collective, CollectiveError};
use std::net::TcpListener;
use std::time::Duration;

use super::Ring;

pub struct RendezvousRing {
    pub coordinator: String,
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
    pub fn new(coordinator: String, job: String, generation: u64, rank: usize, world: usize, advertise_host: String, rendezvous_timeout: Duration, collective_timeout: Duration) -> Self {
        Self { coordinator, job, generation, rank, world, advertise_host, rendezvous_timeout, collective_timeout, ring: None }
    }

    fn ring(&mut self) -> &mut Ring {
        self.ring.as_mut().expect("connect() runs before any collective (run_distributed does so)")
    }

    fn join(&self, params_hash: &str, listener: &TcpListener) -> Result<Vec<String>, String> {
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let address = format!("{}:{port}", self.advertise_host);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        rt.block_on(async {
            let mut c = WorkerServiceClient::connect(self.coordinator.clone()).await.map_err(|e| format!("coordinator {}: {e}", self.coordinator))?;
            c.rendezvous_publish(v1::RendezvousPublishRequest {
                job_id: self.job.clone(),
                generation: self.generation,
                rank: self.rank as u32,
                address,
                params_hash: params_hash.to_string(),
            })
            .await
            .map_err(|s| s.message().to_string())?;
            let r = c
                .rendezvous_fetch(v1::RendezvousFetchRequest {
                    job_id: self.job.clone(),
                    generation: self.generation,
                    rank: self.rank as u32,
                    timeout_ms: self.rendezvous_timeout.as_millis() as u64,
                })
                .await
                .map_err(|s| s.message().to_string())?;
            Ok(r.into_inner().addresses)
        })
    }
}

/// The ring's handshake token for a (job, generation).
pub fn token(job: &str, generation: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ generation;
    for b in job.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
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
        self.ring = Some(Ring::connect(self.rank, listener, &addrs, token(&self.job, self.generation), self.collective_timeout)?);
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
