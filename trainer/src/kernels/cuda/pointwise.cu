// Element-wise kernels of the PRX block on CUDA, the algorithms of kernels/gelu.rs,
// kernels/residual.rs and kernels/rope.rs: the gated MLP activation (separate and packed
// gate|up), the adaLN-zero gated residual, 2-axis RoPE on interleaved pairs. Grid-stride
// loops over elements; the gated residual's gate gradient is a per-sample column sum done in
// two deterministic passes (partials per chunk of rows, then norm.cu's column sum).
#include "common.cuh"

#define ABL_GELU_C 0.7978845608028654f  // sqrt(2 / pi)
#define ABL_GELU_A 0.044715f

// gelu_tanh(a) and its derivative
ABL_FN void gelu_and_grad(float a, float& g, float& dg) {
  const float u = ABL_GELU_C * (a + ABL_GELU_A * a * a * a);
  const float t = tanhf(u);
  g = 0.5f * a * (1.0f + t);
  dg = 0.5f * (1.0f + t) + 0.5f * a * (1.0f - t * t) * ABL_GELU_C * (1.0f + 3.0f * ABL_GELU_A * a * a);
}

// y = gelu(gate) * up (up == nullptr: y = gelu(gate))
template <typename T>
ABL_FN void gated_gelu_fwd(const T* gate, const T* up, T* y, long n) {
  ABL_FOR(i, n) {
    float g, dg;
    gelu_and_grad(to_f(gate[i]), g, dg);
    y[i] = from_f<T>(up ? g * to_f(up[i]) : g);
  }
}

// dgate = dy * up * gelu'(gate), dup = dy * gelu(gate) (up == nullptr: dgate = dy * gelu'(gate))
template <typename T>
ABL_FN void gated_gelu_bwd(const T* gate, const T* up, const T* dy, T* dgate, T* dup, long n) {
  ABL_FOR(i, n) {
    float g, dg;
    gelu_and_grad(to_f(gate[i]), g, dg);
    const float d = to_f(dy[i]);
    if (up) {
      dgate[i] = from_f<T>(d * to_f(up[i]) * dg);
      dup[i] = from_f<T>(d * g);
    } else {
      dgate[i] = from_f<T>(d * dg);
    }
  }
}

// packed x (rows, 2m): gate = x[:, :m], up = x[:, m:]; y (rows, m)
template <typename T>
ABL_FN void gated_gelu_packed_fwd(const T* x, T* y, long rows, int m) {
  ABL_FOR(i, rows * m) {
    const long r = i / m, j = i % m;
    float g, dg;
    gelu_and_grad(to_f(x[r * 2 * m + j]), g, dg);
    y[i] = from_f<T>(g * to_f(x[r * 2 * m + m + j]));
  }
}

// dx (rows, 2m) from dy (rows, m)
template <typename T>
ABL_FN void gated_gelu_packed_bwd(const T* x, const T* dy, T* dx, long rows, int m) {
  ABL_FOR(i, rows * m) {
    const long r = i / m, j = i % m;
    float g, dg;
    gelu_and_grad(to_f(x[r * 2 * m + j]), g, dg);
    const float d = to_f(dy[i]);
    dx[r * 2 * m + j] = from_f<T>(d * to_f(x[r * 2 * m + m + j]) * dg);
    dx[r * 2 * m + m + j] = from_f<T>(d * g);
  }
}

// out = x + y * gate[b]; x, y (B, n, d), gate (B, d)
template <typename T>
ABL_FN void gated_residual_fwd(const T* x, const T* y, const T* gate, T* out, long total, int n, int d) {
  ABL_FOR(i, total) {
    const long b = i / ((long)n * d), j = i % d;
    out[i] = from_f<T>(to_f(x[i]) + to_f(y[i]) * to_f(gate[b * d + j]));
  }
}

// dy = dout * gate[b]
template <typename T>
ABL_FN void gated_residual_bwd_dy(const T* gate, const T* dout, T* dy, long total, int n, int d) {
  ABL_FOR(i, total) {
    const long b = i / ((long)n * d), j = i % d;
    dy[i] = from_f<T>(to_f(dout[i]) * to_f(gate[b * d + j]));
  }
}

// dgate partials: part[(b * chunks + c) * d + j] = sum over rows of chunk c of sample b of
// dout * y. Grid (ceil(d / blockDim.x), B * chunks).
template <typename T>
ABL_FN void gated_residual_dgate_partials(const T* y, const T* dout, float* part, int n, int chunk_rows, int chunks,
                                          int d) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= d) return;
  const int b = blockIdx.y / chunks, c = blockIdx.y % chunks;
  const long r0 = (long)b * n + (long)c * chunk_rows, r1 = (long)b * n + min((long)(c + 1) * chunk_rows, (long)n);
  float a = 0.0f;
  for (long r = r0; r < r1; ++r) a += to_f(dout[r * d + j]) * to_f(y[r * d + j]);
  part[(long)blockIdx.y * d + j] = a;
}

// RoPE on x (B, H, n, dh), interleaved pairs: (x0, x1) -> (x0 c - x1 s, x0 s + x1 c) with
// tables (n, dh/2), or (B, n, dh/2) when `per_sample`; `sign` -1 rotates back (backward).
template <typename T>
ABL_FN void rope(const T* x, const float* cos_t, const float* sin_t, T* y, long pairs, int h, int n, int dh,
                 int per_sample, float sign) {
  const int half = dh / 2;
  ABL_FOR(i, pairs) {
    const long p = i % half, t = (i / half) % n, bh = i / ((long)half * n);
    const long tab = (per_sample ? (bh / h) * (long)n * half : 0) + t * half + p;
    const float c = cos_t[tab], s = sign * sin_t[tab];
    const float x0 = to_f(x[2 * i]), x1 = to_f(x[2 * i + 1]);
    y[2 * i] = from_f<T>(x0 * c - x1 * s);
    y[2 * i + 1] = from_f<T>(x0 * s + x1 * c);
  }
}

#define ABL_POINTWISE_KERNELS(T, S)                                                                                    \
  extern "C" __global__ void ablate_gated_gelu_fwd_##S(const T* gate, const T* up, T* y, long n) {                    \
    gated_gelu_fwd<T>(gate, up, y, n);                                                                                \
  }                                                                                                                   \
  extern "C" __global__ void ablate_gated_gelu_bwd_##S(const T* gate, const T* up, const T* dy, T* dgate, T* dup,      \
                                                       long n) {                                                      \
    gated_gelu_bwd<T>(gate, up, dy, dgate, dup, n);                                                                   \
  }                                                                                                                   \
  extern "C" __global__ void ablate_gated_gelu_packed_fwd_##S(const T* x, T* y, long rows, int m) {                   \
    gated_gelu_packed_fwd<T>(x, y, rows, m);                                                                          \
  }                                                                                                                   \
  extern "C" __global__ void ablate_gated_gelu_packed_bwd_##S(const T* x, const T* dy, T* dx, long rows, int m) {     \
    gated_gelu_packed_bwd<T>(x, dy, dx, rows, m);                                                                     \
  }                                                                                                                   \
  extern "C" __global__ void ablate_gated_residual_fwd_##S(const T* x, const T* y, const T* gate, T* out, long total, \
                                                           int n, int d) {                                            \
    gated_residual_fwd<T>(x, y, gate, out, total, n, d);                                                              \
  }                                                                                                                   \
  extern "C" __global__ void ablate_gated_residual_bwd_dy_##S(const T* gate, const T* dout, T* dy, long total, int n,  \
                                                              int d) {                                                \
    gated_residual_bwd_dy<T>(gate, dout, dy, total, n, d);                                                            \
  }                                                                                                                   \
  extern "C" __global__ void ablate_gated_residual_dgate_partials_##S(const T* y, const T* dout, float* part, int n,   \
                                                                      int chunk_rows, int chunks, int d) {            \
    gated_residual_dgate_partials<T>(y, dout, part, n, chunk_rows, chunks, d);                                        \
  }                                                                                                                   \
  extern "C" __global__ void ablate_rope_##S(const T* x, const float* cos_t, const float* sin_t, T* y, long pairs,     \
                                             int h, int n, int dh, int per_sample, float sign) {                      \
    rope<T>(x, cos_t, sin_t, y, pairs, h, n, dh, per_sample, sign);                                                   \
  }

ABL_POINTWISE_KERNELS(float, f32)
ABL_POINTWISE_KERNELS(bf16, bf16)
