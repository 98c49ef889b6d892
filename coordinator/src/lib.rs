//! # ablate-coordinator
//!
//! Takes jobs, keeps cluster state, gang-schedules data-parallel jobs onto workers, runs
//! the rendezvous and serves metrics. Never depends on candle.
//!
//! # Layout
//! - `store/`: the etcd-shaped KV trait, its embedded redb backend, the etcd backend, an
//!   in-memory one, and the conformance suite every backend passes;
//! - `leader`: leader election among coordinators sharing an etcd store (HA);
//! - `scheduler`: the gang scheduler, a pure function over a cluster snapshot;
//! - `domain`: the coordinator's types (jobs, states, placements, workers, typed ids);
//! - `wire`: their conversions to and from `ablate.v1` (requests, answers, the stored job);
//! - `core`: job state machine, worker registry, rendezvous tables, result collection;
//! - `auth`: tokens, roles and the token check of every call; job secrets;
//! - `service`: the gRPC `JobService`, `WorkerService` and `AdminService` over `core`,
//!   converting through `wire`, each call checked against the caller's role;
//! - `pki`: a throwaway certificate authority (tests, a secured local etcd);
//! - `runs`: per-job metric and log files on the coordinator;
//! - `metrics`: the Prometheus recorder and the metric names;
//! - `metrics_http`: the `/metrics` and `/healthz` listener (hyper), optionally behind a token;
//! - `server`: wires it all to listeners and a shutdown token;
//! - `error`: `CoordinatorError` and its mapping to gRPC statuses.

pub mod auth;
pub mod core;
pub mod domain;
pub mod error;
pub mod leader;
pub mod metrics;
pub mod metrics_http;
pub mod pki;
pub mod runs;
pub mod scheduler;
pub mod server;
pub mod service;
pub mod store;
pub mod wire;

pub use core::{ConfigCheck, Core, Options};
pub use error::CoordinatorError;
