// Shared by ablate's CUDA kernels: element types, conversions and deterministic reductions.
// Compiled by nvcc into PTX for the CUDA build (trainer/build.rs) and, with emu.h standing in
// for the CUDA runtime, by the host C++ compiler for the CPU tests of the kernels' algorithms
// (cuda-emu/). Everything here must mean the same in both.
//
// Conventions of every kernel file:
// - element type T is float or bf16; statistics and accumulations are float (or double where
//   the CPU op accumulates in f64), results are rounded to T once, at the store;
// - no atomics: reductions are trees over a fixed thread order, and column sums over rows are
//   two passes (per-chunk partials, then a sum of the partials in chunk order), so a run is
//   bit-for-bit repeatable;
// - blocks are whole warps; every thread reaches every __syncthreads and shuffle.
#pragma once
#ifdef __CUDACC__
#include <cuda_bf16.h>
#else
#include "emu.h"
#endif

typedef __nv_bfloat16 bf16;

#define ABL_FN __device__ __forceinline__

ABL_FN float to_f(float v) { return v; }
ABL_FN float to_f(bf16 v) { return __bfloat162float(v); }

template <typename T>
ABL_FN T from_f(float v);
template <>
ABL_FN float from_f<float>(float v) { return v; }
template <>
ABL_FN bf16 from_f<bf16>(float v) { return __float2bfloat16(v); }

// Sum of `v` over the warp (float or double); every lane gets the result.
template <typename A>
ABL_FN A warp_sum(A v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum of `v` over the block (1-D blocks of whole warps, at most 1024 threads); every thread
// gets the result. `scratch` is 32 elements of shared memory, free again when this returns.
template <typename A>
ABL_FN A block_sum(A v, A* scratch) {
  const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  v = warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  A t = lane < warps ? scratch[lane] : A(0);
  t = warp_sum(t);
  __syncthreads();
  return t;
}

// 1 / sqrt(mean(x^2) + eps) of row `xr` (d elements), computed by one warp (lanes over the
// row, sums in double); every lane gets it.
template <typename T>
ABL_FN float rms_row_rstd(const T* xr, int d, double eps) {
  double s = 0.0;
  for (int j = threadIdx.x % 32; j < d; j += 32) {
    const double v = (double)to_f(xr[j]);
    s += v * v;
  }
  return (float)(1.0 / sqrt(warp_sum(s) / d + eps));
}

// The grid-stride loop over `n` elements of a 1-D launch.
#define ABL_FOR(i, n) \
  for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < (long)(n); i += (long)gridDim.x * blockDim.x)

ABL_FN float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Maximum of `v` over the block (as block_sum).
ABL_FN float block_max(float v, float* scratch) {
  const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  v = warp_max(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float t = lane < warps ? scratch[lane] : -INFINITY;
  t = warp_max(t);
  __syncthreads();
  return t;
}
