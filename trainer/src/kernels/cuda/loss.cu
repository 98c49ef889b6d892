// The flow-matching loss's squared error on CUDA, the algorithm of kernels/loss.rs:
// `mean((a - b)^2)` as per-chunk sums in double (chunks of ABL_MSE_CHUNK elements, one block
// each), then one block adding the partials in order; backward `da = 2 (a - b) g / n`,
// `db = -da`, with g read from device memory (no host round trip).
#include "common.cuh"

#define ABL_MSE_CHUNK 16384

template <typename T>
ABL_FN void mse_partials(const T* a, const T* b, double* part, long n) {
  __shared__ double scratch[32];
  const long c0 = (long)blockIdx.x * ABL_MSE_CHUNK;
  const long c1 = min(c0 + ABL_MSE_CHUNK, n);
  double s = 0.0;
  for (long i = c0 + threadIdx.x; i < c1; i += blockDim.x) {
    const double dv = (double)(to_f(a[i]) - to_f(b[i]));
    s += dv * dv;
  }
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) part[blockIdx.x] = s;
}

// out[0] = sum(part) / n; one block
template <typename T>
ABL_FN void mse_finish(const double* part, int parts, T* out, long n) {
  __shared__ double scratch[32];
  double s = 0.0;
  for (int i = threadIdx.x; i < parts; i += blockDim.x) s += part[i];
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) out[0] = from_f<T>((float)(s / (double)n));
}

template <typename T>
ABL_FN void mse_bwd(const T* a, const T* b, const T* g, T* da, T* db, long n) {
  const float s = 2.0f * to_f(g[0]) / (float)(n > 0 ? n : 1);
  ABL_FOR(i, n) {
    const float d = s * (to_f(a[i]) - to_f(b[i]));
    da[i] = from_f<T>(d);
    db[i] = from_f<T>(-d);
  }
}

#define ABL_LOSS_KERNELS(T, S)                                                                                       \
  extern "C" __global__ void ablate_mse_partials_##S(const T* a, const T* b, double* part, long n) {                 \
    mse_partials<T>(a, b, part, n);                                                                                 \
  }                                                                                                                 \
  extern "C" __global__ void ablate_mse_finish_##S(const double* part, int parts, T* out, long n) {                  \
    mse_finish<T>(part, parts, out, n);                                                                             \
  }                                                                                                                 \
  extern "C" __global__ void ablate_mse_bwd_##S(const T* a, const T* b, const T* g, T* da, T* db, long n) {          \
    mse_bwd<T>(a, b, g, da, db, n);                                                                                 \
  }

ABL_LOSS_KERNELS(float, f32)
ABL_LOSS_KERNELS(bf16, bf16)
