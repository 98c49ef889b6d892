//! The coordinator's errors, and the one conversion to gRPC statuses the handlers use.

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("no job {0:?}")]
    NoJob(String),
    #[error("no sweep {0:?}")]
    NoSweep(String),
    #[error("no worker {0:?} has registered (known: {1})")]
    NoWorker(String, String),
    #[error("invalid job: {0}")]
    InvalidJob(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("job {job} is {state}: {what}")]
    WrongState { job: String, state: &'static str, what: &'static str },
    #[error("worker {worker} speaks protocol {got}, this coordinator {want}: upgrade the older side")]
    Protocol { worker: String, got: u32, want: u32 },
    #[error("job {job}: generation {got} is stale (current {current}); this rank belongs to an earlier start")]
    StaleGeneration { job: String, got: u64, current: u64 },
    #[error("rendezvous of job {job} generation {generation}: {message}")]
    Rendezvous { job: String, generation: u64, message: String },
    #[error("rendezvous of job {job} generation {generation}: only {present} of {world} ranks arrived within {waited_ms} ms")]
    RendezvousTimeout { job: String, generation: u64, present: usize, world: usize, waited_ms: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A worker speaking for a job it does not run.
    #[error("{0}")]
    NotPlaced(String),
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    #[error("run directory {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("the store is at schema version {found}, newer than this coordinator's {supported}: run the newer ablate (this one would not understand what it stores); nothing was changed")]
    Schema { found: String, supported: u64 },
}

impl From<CoordinatorError> for tonic::Status {
    fn from(e: CoordinatorError) -> Self {
        use CoordinatorError::*;
        let msg = e.to_string();
        match e {
            NoJob(_) | NoSweep(_) | NoWorker(..) => tonic::Status::not_found(msg),
            InvalidJob(_) | BadRequest(_) => tonic::Status::invalid_argument(msg),
            WrongState { .. } | Protocol { .. } | StaleGeneration { .. } | Rendezvous { .. } => tonic::Status::failed_precondition(msg),
            RendezvousTimeout { .. } => tonic::Status::deadline_exceeded(msg),
            Store(_) | Io { .. } | Schema { .. } => tonic::Status::internal(msg),
            Auth(e) => e.into(),
            NotPlaced(_) => crate::auth::denied(msg),
        }
    }
}
