//! Mean and standard deviation over a sweep's seeds: the one statistic both the results table
//! (`results`) and iso-compute (`iso`) summarise runs with, kept below both.

/// Mean and (sample) standard deviation over the seeds that have the number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stat {
    pub mean: f64,
    pub std: f64,
    pub n: usize,
}

pub fn stat(xs: &[f64]) -> Option<Stat> {
    if xs.is_empty() {
        return None;
    }
    let n = xs.len();
    let mean = xs.iter().sum::<f64>() / n as f64;
    let std = if n > 1 { (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt() } else { 0.0 };
    Some(Stat { mean, std, n })
}
