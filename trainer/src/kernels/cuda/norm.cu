// The norms of the PRX block on CUDA, the algorithms of kernels/norm.rs and kernels/rms.rs:
// - adaLN's `LayerNorm(x) * (offset + scale) + shift` (offset 1 with per-sample shift/scale,
//   offset 0 with shared ones = LayerNorm with affine weight and bias), one block per row;
// - RMSNorm with a weight (the per-head QK norms, rows of Dh = 64..128), one warp per row.
// Backward writes dx and the row statistics in one kernel; the parameter gradients are
// column sums over rows, done in two deterministic passes (`*_param_partials` per chunk of
// rows, then `ablate_col_sum_*` over the chunks in order). Row statistics in double, as the
// CPU ops accumulate in f64.
#include "common.cuh"

// mean and 1/std of row `xr` (d elements) over the block
template <typename T>
ABL_FN void ln_row_stats(const T* xr, int d, double eps, double* scratch, float& mean, float& rstd) {
  double s = 0.0;
  for (int j = threadIdx.x; j < d; j += blockDim.x) s += (double)to_f(xr[j]);
  const double m = block_sum(s, scratch) / d;
  double q = 0.0;
  for (int j = threadIdx.x; j < d; j += blockDim.x) {
    const double dv = (double)to_f(xr[j]) - m;
    q += dv * dv;
  }
  const double var = block_sum(q, scratch) / d;
  mean = (float)m;
  rstd = (float)(1.0 / sqrt(var + eps));
}

// y = (x - mean) * rstd * (offset + scale) + shift; x, y (rows, d) with rows = B * n;
// shift/scale (B, d), or (1, d) when `shared`.
template <typename T>
ABL_FN void ln_modulate_fwd(const T* x, const T* shift, const T* scale, T* y, int rows, int n, int d, int shared,
                            float offset, double eps) {
  __shared__ double scratch[32];
  for (int r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + (long)r * d;
    const long at = shared ? 0 : (long)(r / n) * d;
    float mean, rstd;
    ln_row_stats(xr, d, eps, scratch, mean, rstd);
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
      const float xh = (to_f(xr[j]) - mean) * rstd;
      y[(long)r * d + j] = from_f<T>(xh * (offset + to_f(scale[at + j])) + to_f(shift[at + j]));
    }
  }
}

// dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat)) with g = dy * (offset + scale); also
// writes (mean, rstd) of every row to `stats` (rows, 2) for the parameter pass.
template <typename T>
ABL_FN void ln_modulate_bwd_dx(const T* x, const T* scale, const T* dy, T* dx, float* stats, int rows, int n, int d,
                               int shared, float offset, double eps) {
  __shared__ double scratch[32];
  __shared__ float fscratch[32];
  for (int r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + (long)r * d;
    const T* gr = dy + (long)r * d;
    const long at = shared ? 0 : (long)(r / n) * d;
    float mean, rstd;
    ln_row_stats(xr, d, eps, scratch, mean, rstd);
    float sg = 0.0f, sgx = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
      const float g = to_f(gr[j]) * (offset + to_f(scale[at + j]));
      sg += g;
      sgx += g * (to_f(xr[j]) - mean) * rstd;
    }
    const float mg = block_sum(sg, fscratch) / d;
    const float mgx = block_sum(sgx, fscratch) / d;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
      const float g = to_f(gr[j]) * (offset + to_f(scale[at + j]));
      const float xh = (to_f(xr[j]) - mean) * rstd;
      dx[(long)r * d + j] = from_f<T>(rstd * (g - mg - xh * mgx));
    }
    if (threadIdx.x == 0) {
      stats[2 * (long)r] = mean;
      stats[2 * (long)r + 1] = rstd;
    }
  }
}

// Per chunk of `chunk_rows` rows inside a group of `group_rows` rows (a sample, or all rows
// when shared), the column sums of dy (-> dshift) and dy * x_hat (-> dscale):
// part_*[(group * chunks + c) * d + j]. Grid (ceil(d / blockDim.x), groups * chunks).
template <typename T>
ABL_FN void ln_modulate_param_partials(const T* x, const T* dy, const float* stats, float* part_shift,
                                       float* part_scale, int group_rows, int chunk_rows, int chunks, int d) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= d) return;  // no barrier below
  const int g = blockIdx.y / chunks, c = blockIdx.y % chunks;
  const long r0 = (long)g * group_rows + (long)c * chunk_rows;
  const long r1 = (long)g * group_rows + min((long)(c + 1) * chunk_rows, (long)group_rows);
  float ash = 0.0f, asc = 0.0f;
  for (long r = r0; r < r1; ++r) {
    const float gv = to_f(dy[r * d + j]);
    ash += gv;
    asc += gv * (to_f(x[r * d + j]) - stats[2 * r]) * stats[2 * r + 1];
  }
  part_shift[(long)blockIdx.y * d + j] = ash;
  part_scale[(long)blockIdx.y * d + j] = asc;
}

// out[g * d + j] = sum over c < chunks of part[(g * chunks + c) * d + j], in chunk order.
template <typename T>
ABL_FN void col_sum(const float* part, T* out, int groups, int chunks, int d) {
  ABL_FOR(i, (long)groups * d) {
    const long g = i / d, j = i % d;
    float s = 0.0f;
    for (int c = 0; c < chunks; ++c) s += part[(g * chunks + c) * d + j];
    out[i] = from_f<T>(s);
  }
}

// RMSNorm: one warp per row (blocks of whole warps), y = x * rstd * w.
template <typename T>
ABL_FN void rms_norm_fwd(const T* x, const T* w, T* y, long rows, int d, double eps) {
  const long warps = (long)gridDim.x * (blockDim.x / 32);
  for (long r = (long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; r < rows; r += warps) {
    const T* xr = x + r * d;
    const float rs = rms_row_rstd(xr, d, eps);
    for (int j = threadIdx.x % 32; j < d; j += 32) y[r * d + j] = from_f<T>(to_f(xr[j]) * rs * to_f(w[j]));
  }
}

// dx = rstd * (g - x_hat * mean(g * x_hat)), g = dy * w, x_hat = x * rstd; rstd per row to `stats`.
template <typename T>
ABL_FN void rms_norm_bwd_dx(const T* x, const T* w, const T* dy, T* dx, float* stats, long rows, int d, double eps) {
  const long warps = (long)gridDim.x * (blockDim.x / 32);
  for (long r = (long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; r < rows; r += warps) {
    const T* xr = x + r * d;
    const T* gr = dy + r * d;
    const float rs = rms_row_rstd(xr, d, eps);
    float s = 0.0f;
    for (int j = threadIdx.x % 32; j < d; j += 32) s += to_f(gr[j]) * to_f(w[j]) * to_f(xr[j]) * rs;
    const float m = warp_sum(s) / d;
    for (int j = threadIdx.x % 32; j < d; j += 32) {
      const float g = to_f(gr[j]) * to_f(w[j]);
      dx[r * d + j] = from_f<T>(rs * (g - to_f(xr[j]) * rs * m));
    }
    if (threadIdx.x % 32 == 0) stats[r] = rs;
  }
}

// dw partials: part[c * d + j] = sum over the rows of chunk c of dy * x * rstd.
template <typename T>
ABL_FN void rms_norm_dw_partials(const T* x, const T* dy, const float* stats, float* part, long rows, int chunk_rows,
                                 int d) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= d) return;
  const long r0 = (long)blockIdx.y * chunk_rows, r1 = min(r0 + chunk_rows, rows);
  float a = 0.0f;
  for (long r = r0; r < r1; ++r) a += to_f(dy[r * d + j]) * to_f(x[r * d + j]) * stats[r];
  part[(long)blockIdx.y * d + j] = a;
}

#define ABL_NORM_KERNELS(T, S)                                                                                        \
  extern "C" __global__ void ablate_ln_modulate_fwd_##S(const T* x, const T* shift, const T* scale, T* y, int rows,   \
                                                        int n, int d, int shared, float offset, double eps) {         \
    ln_modulate_fwd<T>(x, shift, scale, y, rows, n, d, shared, offset, eps);                                        \
  }                                                                                                                   \
  extern "C" __global__ void ablate_ln_modulate_bwd_dx_##S(const T* x, const T* scale, const T* dy, T* dx,            \
                                                           float* stats, int rows, int n, int d, int shared,          \
                                                           float offset, double eps) {                                \
    ln_modulate_bwd_dx<T>(x, scale, dy, dx, stats, rows, n, d, shared, offset, eps);                                 \
  }                                                                                                                   \
  extern "C" __global__ void ablate_ln_modulate_param_partials_##S(const T* x, const T* dy, const float* stats,       \
                                                                   float* ps, float* pc, int group_rows,             \
                                                                   int chunk_rows, int chunks, int d) {              \
    ln_modulate_param_partials<T>(x, dy, stats, ps, pc, group_rows, chunk_rows, chunks, d);                         \
  }                                                                                                                   \
  extern "C" __global__ void ablate_col_sum_##S(const float* part, T* out, int groups, int chunks, int d) {          \
    col_sum<T>(part, out, groups, chunks, d);                                                                         \
  }                                                                                                                   \
  extern "C" __global__ void ablate_rms_norm_fwd_##S(const T* x, const T* w, T* y, long rows, int d, double eps) {   \
    rms_norm_fwd<T>(x, w, y, rows, d, eps);                                                                          \
  }                                                                                                                   \
  extern "C" __global__ void ablate_rms_norm_bwd_dx_##S(const T* x, const T* w, const T* dy, T* dx, float* stats,    \
                                                        long rows, int d, double eps) {                               \
    rms_norm_bwd_dx<T>(x, w, dy, dx, stats, rows, d, eps);                                                           \
  }                                                                                                                   \
  extern "C" __global__ void ablate_rms_norm_dw_partials_##S(const T* x, const T* dy, const float* stats,            \
                                                             float* part, long rows, int chunk_rows, int d) {         \
    rms_norm_dw_partials<T>(x, dy, stats, part, rows, chunk_rows, d);                                                \
  }

ABL_NORM_KERNELS(float, f32)
ABL_NORM_KERNELS(bf16, bf16)
