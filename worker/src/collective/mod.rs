//! Gradient exchange backends for [`ablate_trainer::collective::Collective`]:
//! - [`ring::Ring`]: TCP ring, CPU (and any host);
//! - [`rendezvous::RendezvousRing`]: a ring whose members find each other through the
//!   coordinator's rendezvous (what CPU rank processes use);
//! - `nccl::NcclGroup` (`--features nccl`): NCCL on the GPUs' memory, its communicator made
//!   from rank 0's unique id under the rendezvous and owned by one thread
//!   ([`owned::Owned`]: deadlines and aborts instead of hangs).

#[cfg(feature = "nccl")]
pub mod nccl;
pub mod owned;
pub mod rendezvous;
pub mod ring;

pub use ring::Ring;

use std::sync::atomic::{AtomicU64, Ordering};

static REFUSED_JOINS: AtomicU64 = AtomicU64::new(0);

/// Counts a connection a ring listener dropped because it could not prove the group's
/// secret (or was not the expected rank).
pub(crate) fn refused_join() {
    REFUSED_JOINS.fetch_add(1, Ordering::Relaxed);
}

/// How many joins ring listeners of this process refused so far.
pub fn refused_joins() -> u64 {
    REFUSED_JOINS.load(Ordering::Relaxed)
}

use std::net::TcpListener;
use std::time::Duration;

/// A group of `world` rings on loopback, one per thread (tests and benchmarks).
pub fn loopback_group(world: usize, timeout: Duration) -> Vec<Ring> {
    let listeners: Vec<TcpListener> = (0..world).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind loopback")).collect();
    let addrs: Vec<String> = listeners.iter().map(|l| l.local_addr().expect("bound").to_string()).collect();
    let handles: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(r, l)| {
            let addrs = addrs.clone();
            std::thread::spawn(move || Ring::connect(r, l, &addrs, b"loopback", timeout).expect("loopback ring"))
        })
        .collect();
    handles.into_iter().map(|h| h.join().expect("ring thread")).collect()
}
