//! # ablate-worker
//!
//! Will own the node agent: registration and heartbeats, one training process per rank,
//! rendezvous, the gradient exchange (TCP ring on CPU, NCCL on CUDA), metric streaming.
//! Not built yet (see docs/architecture.md); training runs today through `ablate train`.
