//! # ablate-coordinator
//!
//! Will own the gRPC services, the job/sweep state machine, the gang scheduler, the
//! rendezvous service and the store (see docs/architecture.md). Not built yet: nothing in
//! this crate runs today, and the CLI offers no coordinator command until it does.
//! It must never depend on candle.
