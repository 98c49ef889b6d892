//! What a sweep's report and tables are made from, wherever it ran: the jobs per arm, the
//! results rows, each job's metric and evaluation series, and the sample grids at hand.

use ablate_proto::v1;
use std::collections::HashMap;

use super::iso::Series;
use super::results::Row;

/// Everything the report shows.
pub struct SweepData {
    pub name: String,
    pub description: String,
    /// Where the numbers come from (a folder or a coordinator).
    pub source: String,
    pub jobs: Vec<(String, v1::Job)>,
    pub rows: Vec<Row>,
    pub series: HashMap<String, Series>,
    /// job id -> sample grid (PNG) and its prompts, when the files are at hand (local runs).
    pub samples: HashMap<String, (Vec<u8>, String)>,
}
