//! Writes a batch of images as one PNG grid.

use std::io::BufWriter;
use std::path::Path;

/// `images`: (n, 3, s, s) in [-1, 1]. Pixels are repeated `scale` times; 2-pixel white gaps.
pub fn write_grid(path: &Path, images: &[f32], n: usize, s: usize, cols: usize, scale: usize) -> std::io::Result<()> {
    let cols = cols.min(n).max(1);
    let rows = n.div_ceil(cols);
    let gap = 2;
    let cell = s * scale;
    let (w, h) = (cols * (cell + gap) + gap, rows * (cell + gap) + gap);
    let mut buf = vec![255u8; w * h * 3];
    for k in 0..n {
        let (r, c) = (k / cols, k % cols);
        let (ox, oy) = (gap + c * (cell + gap), gap + r * (cell + gap));
        for y in 0..cell {
            for x in 0..cell {
                for ch in 0..3 {
                    let v = images[((k * 3 + ch) * s + y / scale) * s + x / scale];
                    let byte = (((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round()) as u8;
                    buf[((oy + y) * w + ox + x) * 3 + ch] = byte;
                }
            }
        }
    }
    crate::fsutil::write_durable_with(path, |tmp| {
        let f = std::fs::File::create(tmp)?;
        let mut enc = png::Encoder::new(BufWriter::new(f), w as u32, h as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut wr = enc.write_header().map_err(std::io::Error::other)?;
        wr.write_image_data(&buf).map_err(std::io::Error::other)?;
        wr.finish().map_err(std::io::Error::other)
    })
}
