// Attention's softmax on CUDA: `softmax(scores * scale + bias)` over the keys, with the
// additive key mask `bias` (B, Nk) of the padded text keys, fused into one pass per row
// (rows = B * H * Nq), computed in fp32 and stored in the scores' type; backward
// `dscores = scale * p * (dp - sum(p * dp))`. The score and value products stay batched
// cuBLAS GEMMs (candle's matmul). This replaces the composed scale, cast, broadcast add,
// max, subtract, exp, sum and divide (and their backward) of `layers::attention_composed`.
#include "common.cuh"

// one block per row (grid-stride over rows); `bias` may be null
template <typename T>
ABL_FN void masked_softmax_fwd(const T* s, const float* bias, T* p, long rows, long rows_per_sample, int nk, float scale) {
  __shared__ float scratch[32];
  for (long r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* sr = s + r * nk;
    const float* br = bias ? bias + (r / rows_per_sample) * nk : nullptr;
    float m = -INFINITY;
    for (int j = threadIdx.x; j < nk; j += blockDim.x) m = fmaxf(m, to_f(sr[j]) * scale + (br ? br[j] : 0.0f));
    m = block_max(m, scratch);
    float z = 0.0f;
    for (int j = threadIdx.x; j < nk; j += blockDim.x) z += expf(to_f(sr[j]) * scale + (br ? br[j] : 0.0f) - m);
    z = block_sum(z, scratch);
    const float inv = 1.0f / z;
    for (int j = threadIdx.x; j < nk; j += blockDim.x)
      p[r * nk + j] = from_f<T>(expf(to_f(sr[j]) * scale + (br ? br[j] : 0.0f) - m) * inv);
  }
}

template <typename T>
ABL_FN void masked_softmax_bwd(const T* p, const T* dp, T* ds, long rows, int nk, float scale) {
  __shared__ float scratch[32];
  for (long r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* pr = p + r * nk;
    const T* gr = dp + r * nk;
    float dot = 0.0f;
    for (int j = threadIdx.x; j < nk; j += blockDim.x) dot += to_f(pr[j]) * to_f(gr[j]);
    dot = block_sum(dot, scratch);
    for (int j = threadIdx.x; j < nk; j += blockDim.x) ds[r * nk + j] = from_f<T>(scale * to_f(pr[j]) * (to_f(gr[j]) - dot));
  }
}

#define ABL_ATTENTION_KERNELS(T, S)                                                                                  \
  extern "C" __global__ void ablate_masked_softmax_fwd_##S(const T* s, const float* bias, T* p, long rows,           \
                                                           long rows_per_sample, int nk, float scale) {             \
    masked_softmax_fwd<T>(s, bias, p, rows, rows_per_sample, nk, scale);                                            \
  }                                                                                                                 \
  extern "C" __global__ void ablate_masked_softmax_bwd_##S(const T* p, const T* dp, T* ds, long rows, int nk,        \
                                                           float scale) {                                           \
    masked_softmax_bwd<T>(p, dp, ds, rows, nk, scale);                                                              \
  }

ABL_ATTENTION_KERNELS(float, f32)
ABL_ATTENTION_KERNELS(bf16, bf16)
