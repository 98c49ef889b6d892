// The attention's input preparation on CUDA, in one pass: from the image projections `qkv`
// (B, N, 3 H) and the text projections `tkv` (B, T, 2 H), with H = heads * Dh,
//   q = RoPE(RMSNorm(q_img) * wq)                                  (B, heads, N, Dh)
//   k = [RoPE(RMSNorm(k_img) * wk) ; RMSNorm(k_txt) * wt]          (B, heads, N + T, Dh)
//   v = [v_img ; v_txt]                                            (B, heads, N + T, Dh)
// written into one packed output [q | k | v]: the head split, the QK norms, the rotation and
// the text-key concatenation of `layers::attention_core_composed` without its intermediates.
// One warp per output row (lanes over the Dh/2 rotation pairs). Backward takes the packed
// [dq | dk | dv], rotates back, runs the RMSNorm backward and scatters into dqkv and dtkv;
// the three weights' gradients are column sums over rows in two passes (per-chunk partials
// here, norm.cu's column sum after), with per-row 1/rms saved by the dx kernel.
#include "common.cuh"

// What output row `r` (of the packed [q | k | v], each (B, heads, L, Dh)) is made from.
struct QkvRow {
  int part;   // 0 q, 1 k, 2 v
  long b, head, tok;  // tok < N: an image token; otherwise text token tok - N (k and v only)
  bool text;
};

ABL_FN QkvRow qkv_row(long r, long B, int heads, int N, int T) {
  const long nq = B * heads * (long)N, nk = B * heads * (long)(N + T);
  QkvRow o;
  long i;
  if (r < nq) {
    o.part = 0;
    i = r;
    o.tok = i % N;
    o.head = (i / N) % heads;
    o.b = i / ((long)N * heads);
  } else {
    o.part = r < nq + nk ? 1 : 2;
    i = r - nq - (o.part == 2 ? nk : 0);
    o.tok = i % (N + T);
    o.head = (i / (N + T)) % heads;
    o.b = i / ((long)(N + T) * heads);
  }
  o.text = o.tok >= N;
  return o;
}

// offset of the source row in qkv (image) or tkv (text)
ABL_FN long qkv_src(const QkvRow& o, int N, int T, int heads, int dh) {
  const long H = (long)heads * dh;
  if (!o.text) return (o.b * N + o.tok) * 3 * H + o.part * H + o.head * dh;
  return (o.b * T + (o.tok - N)) * 2 * H + (o.part - 1) * H + o.head * dh;
}

// the RoPE table row of an image token
ABL_FN long qkv_tab(const QkvRow& o, int N, int dh, int per_sample) {
  return ((per_sample ? o.b * N : 0) + o.tok) * (dh / 2);
}

// which of the three norm weights (rows of w: wq, wk, wt) a q or k row uses
ABL_FN int qkv_weight(const QkvRow& o) { return o.part == 0 ? 0 : (o.text ? 2 : 1); }

// rows = B * heads * (N + 2 (N + T)); w: (3, Dh) = [wq; wk; wt]; tables f32
template <typename T>
ABL_FN void qkv_prep_fwd(const T* qkv, const T* tkv, const T* w, const float* cos_t, const float* sin_t, T* out, long B,
                         int heads, int N, int Tt, int dh, int per_sample, double eps) {
  const long rows = B * heads * (long)(N + 2 * (N + Tt));
  const long warps = (long)gridDim.x * (blockDim.x / 32);
  const int lane = threadIdx.x % 32, half = dh / 2;
  for (long r = (long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; r < rows; r += warps) {
    const QkvRow o = qkv_row(r, B, heads, N, Tt);
    const T* x = (o.text ? tkv : qkv) + qkv_src(o, N, Tt, heads, dh);
    T* y = out + r * dh;
    if (o.part == 2) {
      for (int j = lane; j < dh; j += 32) y[j] = x[j];
      continue;
    }
    const float rs = rms_row_rstd(x, dh, eps);
    const T* wr = w + qkv_weight(o) * dh;
    for (int p = lane; p < half; p += 32) {
      const float a = to_f(x[2 * p]) * rs * to_f(wr[2 * p]), c = to_f(x[2 * p + 1]) * rs * to_f(wr[2 * p + 1]);
      if (o.text) {
        y[2 * p] = from_f<T>(a);
        y[2 * p + 1] = from_f<T>(c);
      } else {
        const long t = qkv_tab(o, N, dh, per_sample) + p;
        const float cs = cos_t[t], sn = sin_t[t];
        y[2 * p] = from_f<T>(a * cs - c * sn);
        y[2 * p + 1] = from_f<T>(a * sn + c * cs);
      }
    }
  }
}

// The upstream gradient of row r rotated back (image q and k) at pair p: (g0, g1).
template <typename T>
ABL_FN void qkv_unrotated(const T* g, const QkvRow& o, const float* cos_t, const float* sin_t, int N, int dh,
                          int per_sample, int p, float& g0, float& g1) {
  const float a = to_f(g[2 * p]), c = to_f(g[2 * p + 1]);
  if (o.text) {
    g0 = a;
    g1 = c;
    return;
  }
  const long t = qkv_tab(o, N, dh, per_sample) + p;
  const float cs = cos_t[t], sn = sin_t[t];
  g0 = a * cs + c * sn;
  g1 = -a * sn + c * cs;
}

// dqkv (B, N, 3H) and dtkv (B, T, 2H) from the packed gradient `g`; 1/rms of every q and k row
// to `stats` (indexed by the packed row, v rows unused)
template <typename T>
ABL_FN void qkv_prep_bwd(const T* qkv, const T* tkv, const T* w, const float* cos_t, const float* sin_t, const T* g,
                         T* dqkv, T* dtkv, float* stats, long B, int heads, int N, int Tt, int dh, int per_sample,
                         double eps) {
  const long rows = B * heads * (long)(N + 2 * (N + Tt));
  const long warps = (long)gridDim.x * (blockDim.x / 32);
  const int lane = threadIdx.x % 32, half = dh / 2;
  for (long r = (long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; r < rows; r += warps) {
    const QkvRow o = qkv_row(r, B, heads, N, Tt);
    const long src = qkv_src(o, N, Tt, heads, dh);
    const T* x = (o.text ? tkv : qkv) + src;
    T* dx = (o.text ? dtkv : dqkv) + src;
    const T* gr = g + r * dh;
    if (o.part == 2) {
      for (int j = lane; j < dh; j += 32) dx[j] = gr[j];
      continue;
    }
    const float rs = rms_row_rstd(x, dh, eps);
    const T* wr = w + qkv_weight(o) * dh;
    float m = 0.0f;
    for (int p = lane; p < half; p += 32) {
      float g0, g1;
      qkv_unrotated(gr, o, cos_t, sin_t, N, dh, per_sample, p, g0, g1);
      m += g0 * to_f(wr[2 * p]) * to_f(x[2 * p]) * rs + g1 * to_f(wr[2 * p + 1]) * to_f(x[2 * p + 1]) * rs;
    }
    m = warp_sum(m) / dh;
    for (int p = lane; p < half; p += 32) {
      float g0, g1;
      qkv_unrotated(gr, o, cos_t, sin_t, N, dh, per_sample, p, g0, g1);
      const float w0 = to_f(wr[2 * p]), w1 = to_f(wr[2 * p + 1]);
      dx[2 * p] = from_f<T>(rs * (g0 * w0 - to_f(x[2 * p]) * rs * m));
      dx[2 * p + 1] = from_f<T>(rs * (g1 * w1 - to_f(x[2 * p + 1]) * rs * m));
    }
    if (lane == 0) stats[r] = rs;
  }
}

// Weight-gradient partials: for weight `which` (0 wq over the q rows, 1 wk over the image k
// rows, 2 wt over the text k rows), part[(which * chunks + c) * dh + j] sums g_unrotated * x *
// rstd over the rows of chunk c of that weight's rows. Grid (ceil(dh / blockDim.x), 3 * chunks).
template <typename T>
ABL_FN void qkv_prep_dw_partials(const T* qkv, const T* tkv, const float* cos_t, const float* sin_t, const T* g,
                                 const float* stats, float* part, long B, int heads, int N, int Tt, int dh,
                                 int per_sample, int chunk_rows, int chunks) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= dh) return;
  const int which = blockIdx.y / chunks, c = blockIdx.y % chunks;
  // that weight's rows, numbered 0..count: (b, head, token) in the packed q or k layout
  const long per_bh = which == 2 ? Tt : N;
  const long count = B * heads * per_bh;
  const long nq = B * heads * (long)N;
  float acc = 0.0f;
  for (long i = (long)c * chunk_rows; i < min((long)(c + 1) * chunk_rows, count); ++i) {
    const long bh = i / per_bh, tok = i % per_bh + (which == 2 ? N : 0);
    const long r = which == 0 ? i : nq + bh * (N + Tt) + tok;
    const QkvRow o = qkv_row(r, B, heads, N, Tt);
    const T* x = (o.text ? tkv : qkv) + qkv_src(o, N, Tt, heads, dh);
    float g0, g1;
    qkv_unrotated(g + r * dh, o, cos_t, sin_t, N, dh, per_sample, j / 2, g0, g1);
    acc += (j % 2 == 0 ? g0 : g1) * to_f(x[j]) * stats[r];
  }
  part[(long)blockIdx.y * dh + j] = acc;
}

#define ABL_QKV_KERNELS(T, S)                                                                                         \
  extern "C" __global__ void ablate_qkv_prep_fwd_##S(const T* qkv, const T* tkv, const T* w, const float* cos_t,       \
                                                     const float* sin_t, T* out, long B, int heads, int N, int Tt,     \
                                                     int dh, int per_sample, double eps) {                            \
    qkv_prep_fwd<T>(qkv, tkv, w, cos_t, sin_t, out, B, heads, N, Tt, dh, per_sample, eps);                          \
  }                                                                                                                  \
  extern "C" __global__ void ablate_qkv_prep_bwd_##S(const T* qkv, const T* tkv, const T* w, const float* cos_t,       \
                                                     const float* sin_t, const T* g, T* dqkv, T* dtkv, float* stats,   \
                                                     long B, int heads, int N, int Tt, int dh, int per_sample,         \
                                                     double eps) {                                                    \
    qkv_prep_bwd<T>(qkv, tkv, w, cos_t, sin_t, g, dqkv, dtkv, stats, B, heads, N, Tt, dh, per_sample, eps);         \
  }                                                                                                                  \
  extern "C" __global__ void ablate_qkv_prep_dw_partials_##S(const T* qkv, const T* tkv, const float* cos_t,           \
                                                             const float* sin_t, const T* g, const float* stats,       \
                                                             float* part, long B, int heads, int N, int Tt, int dh,    \
                                                             int per_sample, int chunk_rows, int chunks) {            \
    qkv_prep_dw_partials<T>(qkv, tkv, cos_t, sin_t, g, stats, part, B, heads, N, Tt, dh, per_sample, chunk_rows,    \
                            chunks);                                                                                 \
  }

ABL_QKV_KERNELS(float, f32)
ABL_QKV_KERNELS(bf16, bf16)
