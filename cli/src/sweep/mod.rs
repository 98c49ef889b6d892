//! Sweeps: the file format (`spec`), the all-in-one local runner (`run`: an embedded
//! coordinator and local CPU workers; `grow`: re-runs that add arms and seeds or steps), the same through a remote coordinator (`remote`) and
//! the results table (`results`, its seed statistics in `stat`), iso-compute (`iso`) and the HTML report (`report`, `svg`).

pub mod api;
pub mod data;
pub mod display;
pub mod grow;
pub mod iso;
pub mod joined;
pub mod lifecycle;
pub mod local;
pub mod remote;
pub mod report;
pub mod results;
pub mod run;
pub mod spec;
pub mod stat;
pub mod svg;
