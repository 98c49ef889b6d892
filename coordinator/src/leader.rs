//! One leader among the coordinators that share an etcd store (high availability).
//!
//! Each coordinator campaigns before it serves: it takes a lease of [`Election::ttl`] and
//! creates the key `leader` (in the store's namespace) with its id, bound to that lease,
//! if the key does not exist. The winner serves; the others wait as standbys, polling, and
//! listen on nothing, so clients and workers given several coordinator URLs reach the
//! leader. The leader keeps its lease alive; if it dies, the lease expires after the ttl,
//! etcd deletes the key and a standby wins, loads every job from the store, and workers
//! re-attach with their next heartbeat.
//!
//! A leader that loses its lease (partitioned from etcd, paused too long) learns it from
//! [`Leadership::lost`], before etcd can expire the lease, and must stop serving; should it
//! still write after that, fencing ([`EtcdStore::fence`]: the leader key must be bound to its
//! lease) refuses the write, so it can never overwrite its successor's state.
//! A clean shutdown revokes the lease: a standby takes over at once.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::store::etcd::EtcdStore;
use crate::store::StoreError;

/// The key that names the leader, in the store's namespace.
pub const LEADER_KEY: &str = "leader";

pub struct Election {
    /// This coordinator's id (unique among the contenders).
    pub id: String,
    /// Lease time-to-live: how long a dead leader keeps the post (whole seconds).
    pub ttl: Duration,
    /// How often a standby tries again.
    pub poll: Duration,
}

/// Held leadership.
pub struct Leadership {
    pub id: String,
    pub lease: i64,
    /// Cancelled when the lease is lost: stop serving.
    pub lost: CancellationToken,
    /// Cancel to stop the keep-alives (then revoke the lease).
    stop: CancellationToken,
}

impl Leadership {
    /// Gives the post up at once (a clean shutdown): stops the keep-alives and revokes the
    /// lease, which deletes the leader key.
    pub fn resign(&self, store: &EtcdStore) -> Result<(), StoreError> {
        self.stop.cancel();
        store.revoke_lease(self.lease)
    }
}

impl Election {
    /// Waits until this coordinator leads (or `cancel`), then fences `store` with the
    /// leadership. `waiting(holder)` is called whenever another coordinator holds the post
    /// (once per holder).
    pub fn campaign(&self, store: &mut EtcdStore, cancel: &CancellationToken, mut waiting: impl FnMut(&str)) -> Result<Option<Leadership>, StoreError> {
        let mut seen = None::<Vec<u8>>;
        loop {
            let stop = CancellationToken::new();
            let granted = Instant::now();
            let lease = store.grant_lease(self.ttl)?;
            let lost = store.keep_alive(lease, self.ttl, granted, stop.clone());
            // keep trying under this lease while it lives
            while !lost.is_cancelled() {
                match store.acquire(LEADER_KEY, self.id.as_bytes(), lease)? {
                    Ok(()) => {
                        store.fence(LEADER_KEY, lease);
                        return Ok(Some(Leadership { id: self.id.clone(), lease, lost, stop }));
                    }
                    Err(holder) => {
                        if seen.as_ref() != Some(&holder) {
                            waiting(&String::from_utf8_lossy(&holder));
                            seen = Some(holder);
                        }
                    }
                }
                let until = Instant::now() + self.poll;
                while Instant::now() < until {
                    if cancel.is_cancelled() {
                        stop.cancel();
                        let _ = store.revoke_lease(lease);
                        return Ok(None);
                    }
                    std::thread::sleep(Duration::from_millis(50).min(self.poll));
                }
            }
            stop.cancel();
        }
    }
}
