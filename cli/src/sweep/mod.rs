//! Sweeps: the file format (`spec`), the all-in-one local runner (`run`: an embedded
//! coordinator and local CPU workers), the same through a remote coordinator (`remote`) and
//! the results table (`results`), iso-compute (`iso`) and the HTML report (`report`, `svg`).

pub mod iso;
pub mod remote;
pub mod report;
pub mod results;
pub mod run;
pub mod spec;
pub mod svg;
