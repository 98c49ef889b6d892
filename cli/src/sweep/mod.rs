//! Sweeps: the file format (`spec`), the all-in-one local runner (`run`: an embedded
//! coordinator and local CPU workers), the same through a remote coordinator (`remote`) and
//! the results table (`results`).

pub mod remote;
pub mod results;
pub mod run;
pub mod spec;
