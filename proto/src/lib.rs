//! # ablate-proto
//!
//! Types shared by the coordinator, the workers and the CLI: typed ids and the protocol
//! version. The gRPC services (`JobService`, `WorkerService`, package `ablate.v1`) land
//! here with the distributed runtime; until then this crate holds only what exists.

use serde::{Deserialize, Serialize};

/// Bumped on every incompatible change of the coordinator <-> worker protocol.
pub const PROTOCOL_VERSION: u32 = 1;

macro_rules! id {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(pub String);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id!(/// A training job (one arm x one seed of a sweep, or a standalone job).
    JobId);
id!(/// A sweep: a baseline and its arms.
    SweepId);
id!(/// A registered worker (node agent).
    WorkerId);

/// A rank within a job's data-parallel group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Rank(pub u32);

/// Rendezvous generation: bumped on every (re)start of a job's gang, so a stale rank can
/// never join a newer group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Generation(pub u64);
