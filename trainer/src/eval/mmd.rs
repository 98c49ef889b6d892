//! Maximum mean discrepancy with a Gaussian RBF kernel over L2-normalised embeddings, the
//! estimator of CMMD (Jayasumana et al., 2024) and DINO-MMD: sigma 10, scale 1000, the
//! biased (V-statistic) form with kernel means over all pairs. Computed in f64.

use super::EvalError;

pub const SIGMA: f64 = 10.0;
pub const SCALE: f64 = 1000.0;

fn normalised(rows: &[f32], dim: usize, what: &str) -> Result<Vec<Vec<f64>>, EvalError> {
    if dim == 0 || rows.len() % dim != 0 || rows.is_empty() {
        return Err(EvalError::Shape(format!("{what}: {} values are not whole {dim}-dimensional rows", rows.len())));
    }
    rows.chunks(dim)
        .enumerate()
        .map(|(i, r)| {
            let v: Vec<f64> = r.iter().map(|x| *x as f64).collect();
            let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            if !norm.is_finite() {
                return Err(EvalError::NonFinite(format!("{what}: embedding {i}")));
            }
            Ok(if norm > 0.0 { v.into_iter().map(|x| x / norm).collect() } else { v })
        })
        .collect()
}

fn kernel_mean(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    let gamma = 1.0 / (2.0 * SIGMA * SIGMA);
    let mut sum = 0.0;
    for x in a {
        for y in b {
            let d2: f64 = x.iter().zip(y).map(|(p, q)| (p - q) * (p - q)).sum();
            sum += (-gamma * d2).exp();
        }
    }
    sum / (a.len() * b.len()) as f64
}

/// MMD between two sets of embeddings (row-major, `dim` columns each).
pub fn mmd(x: &[f32], y: &[f32], dim: usize) -> Result<f64, EvalError> {
    let (x, y) = (normalised(x, dim, "first set")?, normalised(y, dim, "second set")?);
    Ok(SCALE * (kernel_mean(&x, &x) + kernel_mean(&y, &y) - 2.0 * kernel_mean(&x, &y)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_for_equal_sets_and_matches_the_closed_form() {
        let x = [1.0f32, 0.0, 0.0, 1.0];
        assert!(mmd(&x, &x, 2).unwrap().abs() < 1e-12);
        // One point each, orthogonal unit vectors: d^2 = 2.
        let y = [1.0f32, 0.0];
        let z = [0.0f32, 3.0]; // normalised to (0, 1)
        let want = SCALE * (2.0 - 2.0 * (-2.0 / (2.0 * SIGMA * SIGMA)).exp());
        assert!((mmd(&y, &z, 2).unwrap() - want).abs() < 1e-9);
        assert!(mmd(&y, &[1.0f32, 2.0, 3.0], 2).is_err());
    }
}
