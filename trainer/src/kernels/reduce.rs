//! Row reductions in f64 for the norms' statistics, in four interleaved lanes. A single f64
//! accumulator is one long chain of dependent adds the compiler may not reorder (about four
//! cycles per element); four lanes let it vectorise and overlap them. The lanes change only
//! the order of the f64 additions, far below the f32 precision of the results.

const L: usize = 4;

#[inline]
fn finish(acc: [f64; L], rest: f64) -> f64 {
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + rest
}

/// sum of `a`.
#[inline]
pub fn sum(a: &[f32]) -> f64 {
    let c = a.chunks_exact(L);
    let rest = c.remainder().iter().map(|&v| v as f64).sum();
    let mut acc = [0f64; L];
    for x in c {
        for l in 0..L {
            acc[l] += x[l] as f64;
        }
    }
    finish(acc, rest)
}

/// sum of `(a - mean)^2`.
#[inline]
pub fn sum_sq_dev(a: &[f32], mean: f64) -> f64 {
    let c = a.chunks_exact(L);
    let rest = c.remainder().iter().map(|&v| (v as f64 - mean).powi(2)).sum();
    let mut acc = [0f64; L];
    for x in c {
        for l in 0..L {
            let d = x[l] as f64 - mean;
            acc[l] += d * d;
        }
    }
    finish(acc, rest)
}

/// sum of `a * b` (products in f64), over equal-length slices.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f64 {
    debug_assert_eq!(a.len(), b.len(), "reduce::dot of slices of different lengths");
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let (ca, cb) = (a.chunks_exact(L), b.chunks_exact(L));
    let rest = ca.remainder().iter().zip(cb.remainder()).map(|(&x, &y)| x as f64 * y as f64).sum();
    let mut acc = [0f64; L];
    for (x, y) in ca.zip(cb) {
        for l in 0..L {
            acc[l] += x[l] as f64 * y[l] as f64;
        }
    }
    finish(acc, rest)
}

#[cfg(test)]
mod tests {
    /// Against plain sequential f64 sums, for lengths with and without a remainder.
    #[test]
    fn lane_sums_match_sequential_sums() {
        for n in [0, 1, 3, 4, 7, 32, 61, 192] {
            let a: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.71).sin() * 3.0 + 0.5).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i as f32) * 1.3).cos()).collect();
            let s: f64 = a.iter().map(|&v| v as f64).sum();
            let mean = if n > 0 { s / n as f64 } else { 0.0 };
            let sq: f64 = a.iter().map(|&v| (v as f64 - mean).powi(2)).sum();
            let d: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
            let close = |x: f64, y: f64| (x - y).abs() <= 1e-12 * (1.0 + y.abs());
            assert!(close(super::sum(&a), s), "sum n={n}");
            assert!(close(super::sum_sq_dev(&a, mean), sq), "sum_sq_dev n={n}");
            assert!(close(super::dot(&a, &b), d), "dot n={n}");
        }
    }
}
