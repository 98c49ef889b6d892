//! Launch geometry of the CUDA kernels (`kernels/cuda/*.cu`): block sizes, grids and the row
//! chunks of the two-pass column sums. Plain functions, compiled in every build, so the CUDA
//! launches (`kernels::cuda`) and the CPU tests that run the kernel sources under host
//! emulation (`cuda-emu/`) use the same geometry.

/// Threads per block of the element-wise and column kernels.
pub const BLOCK: u32 = 256;
/// Rows per chunk of the first pass of a column sum: enough work per thread, enough chunks
/// to fill the device.
pub const CHUNK_ROWS: usize = 64;
/// Elements per block of the squared-error partial sums (`loss.cu`'s `ABL_MSE_CHUNK`).
pub const MSE_CHUNK: usize = 16_384;
/// Elements per block of the multi-tensor AdamW (`adamw.cu`'s `ABL_ADAMW_CHUNK`).
pub const ADAMW_CHUNK: usize = 65_536;
/// Grid-stride kernels need no more blocks than this to fill an H100 (132 SMs).
const MAX_GRID: usize = 132 * 32;

/// A 1-D launch: (blocks, threads per block).
pub type Launch = ((u32, u32), u32);

fn ceil_div(a: usize, b: usize) -> usize {
    a.div_ceil(b.max(1))
}

/// `d` rounded up to whole warps, between 32 and 256 threads.
pub fn row_block(d: usize) -> u32 {
    (ceil_div(d, 32) * 32).clamp(32, 256) as u32
}

/// Element-wise kernels over `n` elements (grid-stride).
pub fn elementwise(n: usize) -> Launch {
    ((ceil_div(n, BLOCK as usize).clamp(1, MAX_GRID) as u32, 1), BLOCK)
}

/// LayerNorm-modulate forward and dx: one block per row (grid-stride over rows).
pub fn ln_rows(rows: usize, d: usize) -> Launch {
    ((rows.clamp(1, 65_535) as u32, 1), row_block(d))
}

/// RMSNorm forward and dx: one warp per row, 8 warps per block.
pub fn rms_rows(rows: usize) -> Launch {
    ((ceil_div(rows, 8).clamp(1, MAX_GRID) as u32, 1), 256)
}

/// CUDA's limit on `gridDim.y`.
const MAX_GRID_Y: usize = 65_535;

/// Rows per chunk of the first pass of a column sum over `groups` groups of `group_rows` rows:
/// `CHUNK_ROWS`, or more where the chunks would not fit in one grid's y dimension.
pub fn chunk_rows(groups: usize, group_rows: usize) -> usize {
    let per_group = (MAX_GRID_Y / groups.max(1)).max(1);
    CHUNK_ROWS.max(ceil_div(group_rows, per_group))
}

/// Chunks per group (see [`chunk_rows`]).
pub fn chunks(groups: usize, group_rows: usize) -> usize {
    ceil_div(group_rows, chunk_rows(groups, group_rows)).max(1)
}

/// First pass of a column sum over `groups` groups of `group_rows` rows of width `d`: a
/// thread per column and chunk of rows.
pub fn column_partials(groups: usize, group_rows: usize, d: usize) -> Launch {
    let block = row_block(d);
    ((ceil_div(d, block as usize) as u32, (groups * chunks(groups, group_rows)) as u32), block)
}

/// Second pass: `groups * d` sums over the chunks.
pub fn column_sum(groups: usize, d: usize) -> Launch {
    elementwise(groups * d)
}

/// Squared-error partial sums: one block per `MSE_CHUNK` elements.
pub fn mse_partials(n: usize) -> Launch {
    ((ceil_div(n, MSE_CHUNK).max(1) as u32, 1), BLOCK)
}

/// The chunk table of a multi-tensor AdamW over tensors of these sizes: for every block, the
/// tensor it updates and the first element of its chunk.
pub fn adamw_chunks(sizes: &[usize]) -> (Vec<i32>, Vec<i64>) {
    let (mut tensor, mut start) = (Vec::new(), Vec::new());
    for (i, &n) in sizes.iter().enumerate() {
        for c in 0..ceil_div(n, ADAMW_CHUNK) {
            tensor.push(i as i32);
            start.push((c * ADAMW_CHUNK) as i64);
        }
    }
    (tensor, start)
}

#[cfg(test)]
mod tests {
    #[test]
    fn geometry_covers_the_work() {
        assert_eq!(super::row_block(1), 32);
        assert_eq!(super::row_block(64), 64);
        assert_eq!(super::row_block(100), 128);
        assert_eq!(super::row_block(4096), 256);
        let ((gx, gy), b) = super::column_partials(3, 130, 300);
        assert_eq!((gx, gy, b), (2, 3 * 3, 256));
        let (t, s) = super::adamw_chunks(&[1, 65_536, 65_537, 0]);
        assert_eq!(t, vec![0, 1, 2, 2]);
        assert_eq!(s, vec![0, 0, 0, 65_536]);
        assert_eq!(super::elementwise(0).0 .0, 1);
        // a column sum over more rows than 64-row chunks fit in gridDim.y takes longer chunks
        let (groups, rows) = (1, 256 * 16 * 1024);
        let ((_, gy), _) = super::column_partials(groups, rows, 64);
        assert!(gy as usize <= 65_535 && gy as usize * super::chunk_rows(groups, rows) >= rows, "{gy}");
        assert_eq!(super::chunk_rows(3, 130), super::CHUNK_ROWS);
    }
}
