// AdamW on CUDA for all parameters in one launch, the algorithm of optim/adamw.rs's fused
// update, plus the global gradient norm and its clip factor computed on the device.
//
// The parameters are described by a table of `AdamwTensor` (device pointers) and cut into
// chunks of ABL_ADAMW_CHUNK elements, one block each (`chunk_tensor`/`chunk_start` say which
// tensor and where). The update does the CPU op's f32 operations in the same order with
// explicitly rounded intrinsics (no FMA contraction), so it agrees with the CPU update bit
// for bit; it optionally writes the bf16 copy of each new weight in the same pass (the copy
// bf16 matmuls read, so no cast per use).
//
// Clipping: `ablate_grad_sq_partials` sums g^2 per chunk in double, `ablate_grad_clip_finish`
// adds the partials in chunk order, writes the norm and the factor
// `max_norm / (norm + 1e-6)` (1 when off or not exceeded) that the update multiplies every
// gradient by first (`g * s + 0`, as candle's affine does on the CPU).
#include "common.cuh"

#define ABL_ADAMW_CHUNK 65536

struct AdamwTensor {
  float* w;
  const float* g;
  float* m;
  float* v;
  bf16* w_bf16;  // may be null
  long n;
};

extern "C" __global__ void ablate_grad_sq_partials(const AdamwTensor* table, const int* chunk_tensor,
                                                   const long* chunk_start, double* part) {
  __shared__ double scratch[32];
  const AdamwTensor t = table[chunk_tensor[blockIdx.x]];
  const long c0 = chunk_start[blockIdx.x], c1 = min(c0 + ABL_ADAMW_CHUNK, t.n);
  double s = 0.0;
  for (long k = c0 + threadIdx.x; k < c1; k += blockDim.x) {
    const double g = (double)t.g[k];
    s += g * g;
  }
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) part[blockIdx.x] = s;
}

// out[0] = global norm, out[1] = the factor the update multiplies gradients by; one block
extern "C" __global__ void ablate_grad_clip_finish(const double* part, int parts, float max_norm, float* out) {
  __shared__ double scratch[32];
  double s = 0.0;
  for (int i = threadIdx.x; i < parts; i += blockDim.x) s += part[i];
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) {
    const double norm = sqrt(s);
    out[0] = (float)norm;
    out[1] = (max_norm > 0.0f && norm > (double)max_norm) ? (float)((double)max_norm / (norm + 1e-6)) : 1.0f;
  }
}

// `clip` null: gradients used as they are; otherwise clip[1] scales them. `use_decay` 0: no
// weight decay (`decay` = 1 - lr * weight_decay is ignored). b1 = beta1, c1 = 1 - beta1 (each rounded to f32 from f64, like the CPU op).
extern "C" __global__ void ablate_adamw_multi(const AdamwTensor* table, const int* chunk_tensor, const long* chunk_start,
                                              const float* clip, float b1, float c1, float b2, float c2,
                                              float inv_bc1, float inv_bc2, float eps, float decay, int use_decay,
                                              float lr) {
  const AdamwTensor t = table[chunk_tensor[blockIdx.x]];
  const long c0 = chunk_start[blockIdx.x], cend = min(c0 + ABL_ADAMW_CHUNK, t.n);
  const float s = clip ? clip[1] : 1.0f;
  for (long k = c0 + threadIdx.x; k < cend; k += blockDim.x) {
    float g = t.g[k];
    if (clip && s != 1.0f) g = __fadd_rn(__fmul_rn(g, s), 0.0f);
    const float mk = __fadd_rn(__fadd_rn(__fmul_rn(t.m[k], b1), 0.0f), __fadd_rn(__fmul_rn(g, c1), 0.0f));
    const float vk = __fadd_rn(__fadd_rn(__fmul_rn(t.v[k], b2), 0.0f), __fadd_rn(__fmul_rn(__fmul_rn(g, g), c2), 0.0f));
    const float denom = __fadd_rn(__fmul_rn(__fsqrt_rn(__fadd_rn(__fmul_rn(vk, inv_bc2), 0.0f)), 1.0f), eps);
    const float update = __fdiv_rn(__fadd_rn(__fmul_rn(mk, inv_bc1), 0.0f), denom);
    const float w = use_decay ? __fadd_rn(__fmul_rn(t.w[k], decay), 0.0f) : t.w[k];
    const float nw = __fadd_rn(w, -__fadd_rn(__fmul_rn(update, lr), 0.0f));
    t.w[k] = nw;
    t.m[k] = mk;
    t.v[k] = vk;
    if (t.w_bf16) t.w_bf16[k] = __float2bfloat16(nw);
  }
}
