//! Rasterises a `Scene` into an RGB image (CHW, f32 in [-1, 1]) in one of three styles.
//!
//! Shapes are drawn with 2x2 supersampling so edges are anti-aliased. The photo style adds
//! what separates photographs from clean renders: a lighting gradient, shading on objects,
//! texture on surfaces and sensor noise. Every random choice comes from the scene's own
//! stream, so an image is a pure function of (seed, index, style, size).

use super::scene::{Scene, Style, BACKGROUNDS, COLORS};
use crate::rng::Rng;

/// Coverage test of shape `shape` at offset (dx, dy) from its centre, radius r.
fn inside(shape: usize, dx: f32, dy: f32, r: f32) -> bool {
    let (ax, ay) = (dx.abs(), dy.abs());
    let d = (dx * dx + dy * dy).sqrt();
    match shape {
        0 => d < r,
        1 => ax.max(ay) < r * 0.82,
        2 => dy > -r && dy < r * 0.75 && ax < (dy + r) * 0.58,
        3 => ax + ay < r,
        4 => (ax < r * 0.34 && ay < r) || (ay < r * 0.34 && ax < r),
        _ => d < r && d > r * 0.55,
    }
}

/// Object centre and radius in pixels.
pub fn placement(o: &super::scene::Object, size: usize) -> (f32, f32, f32) {
    let cell = size as f32 / 2.0;
    let cx = (o.col() as f32 + 0.5 + o.jitter[0]) * cell;
    let cy = (o.row() as f32 + 0.5 + o.jitter[1]) * cell;
    let r = cell * if o.size == 0 { 0.24 } else { 0.42 };
    (cx, cy, r)
}

/// Renders the scene at `size` x `size`; `noise_seed` drives photo-style texture and noise.
pub fn render(scene: &Scene, size: usize, noise_seed: u64) -> Vec<f32> {
    let photo = scene.style == Style::Photo;
    let bg = BACKGROUNDS[scene.background].1;
    let light_dir: [f32; 2] = match scene.light {
        0 => [-1.0, 0.0],
        1 => [1.0, 0.0],
        2 => [0.0, -1.0],
        _ => [0.0, 1.0],
    };
    let mut rng = Rng::derive(noise_seed, &[0x5ce4e]);
    // Per-image texture field: a coarse random grid, bilinearly interpolated.
    const TG: usize = 9;
    let tex: Vec<f32> = (0..TG * TG).map(|_| rng.uniform() as f32 - 0.5).collect();
    let texture_at = |x: f32, y: f32| -> f32 {
        // wraps around, so scaled lookups (finer texture) stay inside the grid
        let gx = (x / size as f32 * (TG - 1) as f32).rem_euclid((TG - 1) as f32);
        let gy = (y / size as f32 * (TG - 1) as f32).rem_euclid((TG - 1) as f32);
        let (x0, y0) = (gx.floor() as usize, gy.floor() as usize);
        let (x1, y1) = ((x0 + 1).min(TG - 1), (y0 + 1).min(TG - 1));
        let (fx, fy) = (gx - x0 as f32, gy - y0 as f32);
        let a = tex[y0 * TG + x0] * (1.0 - fx) + tex[y0 * TG + x1] * fx;
        let b = tex[y1 * TG + x0] * (1.0 - fx) + tex[y1 * TG + x1] * fx;
        a * (1.0 - fy) + b * fy
    };
    let places: Vec<_> = scene.objects.iter().map(|o| placement(o, size)).collect();
    let mut img = vec![0f32; 3 * size * size];
    let plane = size * size;
    for py in 0..size {
        for px in 0..size {
            let mut acc = [0f32; 3];
            for sy in 0..2 {
                for sx in 0..2 {
                    let x = px as f32 + 0.25 + 0.5 * sx as f32;
                    let y = py as f32 + 0.25 + 0.5 * sy as f32;
                    let mut c = bg;
                    if photo {
                        let u = (x / size as f32 - 0.5) * light_dir[0] + (y / size as f32 - 0.5) * light_dir[1];
                        let shade = 1.0 - 0.5 * u + 0.35 * texture_at(x, y);
                        c = [c[0] * shade, c[1] * shade, c[2] * shade];
                    }
                    // later objects never overlap earlier ones (one per cell), order is irrelevant
                    for (o, &(cx, cy, r)) in scene.objects.iter().zip(&places) {
                        let (dx, dy) = (x - cx, y - cy);
                        if inside(o.shape, dx, dy, r) {
                            c = COLORS[o.color].1;
                            if photo {
                                let u = (dx * light_dir[0] + dy * light_dir[1]) / r;
                                let mut shade = 1.0 - 0.25 * u;
                                if o.texture == 2 {
                                    shade += 0.3 * texture_at(x * 3.0, y * 3.0);
                                } else if o.texture == 1 && u < -0.4 {
                                    shade += 0.25;
                                }
                                c = [c[0] * shade, c[1] * shade, c[2] * shade];
                            }
                        }
                    }
                    for k in 0..3 {
                        acc[k] += c[k] * 0.25;
                    }
                }
            }
            for k in 0..3 {
                let mut v = acc[k];
                if photo {
                    v += 0.04 * rng.normal() as f32;
                }
                img[k * plane + py * size + px] = (v.clamp(0.0, 1.0)) * 2.0 - 1.0;
            }
        }
    }
    img
}

/// Per-pixel object map: index into `scene.objects` + 1, or 0 for background. Used to train
/// the REPA teachers and the scene evaluator on ground truth.
pub fn object_map(scene: &Scene, size: usize) -> Vec<u8> {
    let places: Vec<_> = scene.objects.iter().map(|o| placement(o, size)).collect();
    let mut out = vec![0u8; size * size];
    for py in 0..size {
        for px in 0..size {
            let (x, y) = (px as f32 + 0.5, py as f32 + 0.5);
            for (i, (o, &(cx, cy, r))) in scene.objects.iter().zip(&places).enumerate() {
                if inside(o.shape, x - cx, y - cy, r) {
                    out[py * size + px] = i as u8 + 1;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_is_deterministic_in_range_and_styles_differ() {
        let s = Scene::generate(1, 2, Style::Synthetic);
        let a = render(&s, 32, 9);
        assert_eq!(a, render(&s, 32, 9));
        assert_eq!(a.len(), 3 * 32 * 32);
        assert!(a.iter().all(|v| (-1.0..=1.0).contains(v)));
        let mut p = s.clone();
        p.style = Style::Photo;
        let b = render(&p, 32, 9);
        let diff: f32 = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32;
        assert!(diff > 0.02, "photo style indistinguishable from synthetic: {diff}");
    }

    #[test]
    fn objects_are_painted_in_their_colour() {
        for i in 0..20 {
            let s = Scene::generate(4, i, Style::Synthetic);
            let img = render(&s, 32, 0);
            let map = object_map(&s, 32);
            for (k, o) in s.objects.iter().enumerate() {
                let want = COLORS[o.color].1;
                let px: Vec<usize> = (0..32 * 32).filter(|&p| map[p] as usize == k + 1).collect();
                assert!(!px.is_empty(), "object {k} of scene {i} has no pixels");
                // interior pixels (all 4 subsamples covered) carry the exact colour somewhere
                let hit = px.iter().any(|&p| {
                    (0..3).all(|c| ((img[c * 1024 + p] + 1.0) / 2.0 - want[c]).abs() < 1e-4)
                });
                assert!(hit, "object {k} of scene {i} not drawn in {}", COLORS[o.color].0);
            }
        }
    }
}
