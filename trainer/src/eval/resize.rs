//! Bicubic resizing as PyTorch's `F.interpolate(x, size, mode="bicubic", align_corners=False)`
//! does it (no antialiasing): the source coordinate of output pixel `o` is
//! `(o + 0.5) * in / out - 0.5`, Keys' cubic kernel with A = -0.75, and taps beyond the border
//! clamped to the edge pixel. The CMMD PyTorch port resizes images this way before CLIP, and
//! Hugging Face's DINOv2 interpolates its position embeddings this way. Computed in f64 and
//! separably (rows, then columns), which equals the 16-tap form up to f64 rounding.

use candle_core::{DType, Device, Tensor};

use super::EvalError;

const A: f64 = -0.75;

fn cubic_near(t: f64) -> f64 {
    ((A + 2.0) * t - (A + 3.0)) * t * t + 1.0
}

fn cubic_far(t: f64) -> f64 {
    ((A * t - 5.0 * A) * t + 8.0 * A) * t - 4.0 * A
}

/// For each output index: the four clamped source indices and their weights.
fn taps(input: usize, output: usize) -> Vec<([usize; 4], [f64; 4])> {
    let scale = input as f64 / output as f64;
    (0..output)
        .map(|o| {
            let real = scale * (o as f64 + 0.5) - 0.5;
            let base = real.floor();
            let t = real - base;
            let w = [cubic_far(t + 1.0), cubic_near(t), cubic_near(1.0 - t), cubic_far(2.0 - t)];
            let idx = std::array::from_fn(|k| (base as i64 - 1 + k as i64).clamp(0, input as i64 - 1) as usize);
            (idx, w)
        })
        .collect()
}

/// Resizes row-major planes of `h`x`w` values (any number of them) to `oh`x`ow`.
pub fn bicubic_planes(data: &[f64], h: usize, w: usize, oh: usize, ow: usize) -> Vec<f64> {
    let planes = data.len() / (h * w);
    let (ty, tx) = (taps(h, oh), taps(w, ow));
    let mut out = Vec::with_capacity(planes * oh * ow);
    let mut rows = vec![0.0; oh * w];
    for p in data.chunks_exact(h * w) {
        for (oy, (idx, wt)) in ty.iter().enumerate() {
            for x in 0..w {
                rows[oy * w + x] = (0..4).map(|k| wt[k] * p[idx[k] * w + x]).sum();
            }
        }
        for oy in 0..oh {
            let r = &rows[oy * w..(oy + 1) * w];
            out.extend(tx.iter().map(|(idx, wt)| (0..4).map(|k| wt[k] * r[idx[k]]).sum::<f64>()));
        }
    }
    debug_assert_eq!(out.len(), planes * oh * ow);
    out
}

/// Resizes a (B, C, H, W) tensor to (B, C, oh, ow), returned as f32 on `device`.
pub fn bicubic(images: &Tensor, oh: usize, ow: usize, device: &Device) -> Result<Tensor, EvalError> {
    let (b, c, h, w) = images.dims4()?;
    let data: Vec<f64> = images.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
    let out: Vec<f32> = bicubic_planes(&data, h, w, oh, ow).into_iter().map(|v| v as f32).collect();
    Ok(Tensor::from_vec(out, (b, c, oh, ow), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_interpolates_and_keeps_constants() {
        // the four weights sum to 1 at every phase, and at t = 0 only the centre tap counts
        for k in 0..=10 {
            let t = k as f64 / 10.0;
            let s = cubic_far(t + 1.0) + cubic_near(t) + cubic_near(1.0 - t) + cubic_far(2.0 - t);
            assert!((s - 1.0).abs() < 1e-12, "{t}: {s}");
        }
        assert_eq!((cubic_far(1.0), cubic_near(0.0), cubic_near(1.0), cubic_far(2.0)), (0.0, 1.0, 0.0, 0.0));
        let same: Vec<f64> = (0..12).map(|i| i as f64 * 0.37).collect();
        assert_eq!(bicubic_planes(&same, 3, 4, 3, 4), same, "same size is the identity");
        let flat = vec![0.25; 6 * 5];
        assert!(bicubic_planes(&flat, 6, 5, 11, 3).iter().all(|v| (v - 0.25).abs() < 1e-15));
    }
}
