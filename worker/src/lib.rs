//! # ablate-worker
//!
//! The node agent and everything that runs next to training on a node.
//!
//! # Layout
//! - `agent`: `ablate worker`: registration, heartbeats, rank processes and their
//!   supervision, batching of metrics, logs and completions to the coordinator;
//! - `rank`: `ablate rank`: one training process of a data-parallel job;
//! - `events`: the JSON lines a rank process prints for its agent;
//! - `journal`: a rank's own record of its start, steps, checkpoints and end, with times;
//! - `lease`: fencing: ranks stop on their own once their worker's lease with the
//!   coordinator ends, before the job can be placed again;
//! - `s3`: the checkpoint store on an S3-compatible object store, and the parser of every
//!   `--checkpoint-store` spec;
//! - `local_s3`: a throwaway moto S3 server for the tests;
//! - `evalwire`: the evaluation report to and from `ablate.v1` (the worker sends it, the CLI
//!   reads it back);
//! - `collective/`: gradient exchange backends (TCP ring; ring joined through the
//!   coordinator's rendezvous).

pub mod agent;
pub mod collective;
pub mod confine;
pub mod evalwire;
pub mod events;
pub mod journal;
pub mod lease;
pub mod local_s3;
pub mod rank;
pub mod s3;
