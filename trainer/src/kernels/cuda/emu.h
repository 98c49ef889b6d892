// Host emulation of the CUDA subset ablate's kernels use, so the exact kernel sources run on a
// CPU in CI (`cuda-emu/`, whose tests compare them with the CPU fused ops). Included by
// common.cuh when the compiler is not nvcc; never part of the CUDA build.
//
// Model: a launch runs its blocks one after another; the threads of a block are real OS
// threads, so `__syncthreads()` is a barrier over them and `__shared__` variables (made
// `static`) are shared by exactly the threads of the running block. A warp shuffle is a
// write to the warp's slots, a barrier over the warp's 32 threads, a read of the partner's
// slot and a second barrier. Kernels must therefore keep every thread of a block (and every
// lane of a warp) reaching each barrier and shuffle, as CUDA requires; one that does not
// deadlocks here, which the launcher turns into an error after a timeout.
#pragma once
#include <barrier>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3() = default;
  dim3(unsigned x_, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace emu {
struct Block {
  std::unique_ptr<std::barrier<>> all;
  std::vector<std::unique_ptr<std::barrier<>>> warps;
  std::vector<float> fslots;   // one slot per thread for float shuffles
  std::vector<double> dslots;  // and for double shuffles
};
inline thread_local dim3 t_thread, t_block;
inline dim3 g_grid, g_block_dim;
inline Block* g_block = nullptr;
}  // namespace emu

#define threadIdx (emu::t_thread)
#define blockIdx (emu::t_block)
#define blockDim (emu::g_block_dim)
#define gridDim (emu::g_grid)
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__
#define __shared__ static
#define __launch_bounds__(...)

inline void __syncthreads() { emu::g_block->all->arrive_and_wait(); }

namespace emu {
inline unsigned flat_tid() { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }
template <typename T>
inline T shuffle(std::vector<T>& slots, T v, unsigned src_lane) {
  unsigned tid = flat_tid(), warp = tid / 32;
  slots[tid] = v;
  g_block->warps[warp]->arrive_and_wait();
  T r = slots[warp * 32 + (src_lane & 31)];
  g_block->warps[warp]->arrive_and_wait();
  return r;
}
}  // namespace emu

inline float __shfl_xor_sync(unsigned, float v, int mask) {
  return emu::shuffle(emu::g_block->fslots, v, (emu::flat_tid() % 32) ^ mask);
}
inline double __shfl_xor_sync(unsigned, double v, int mask) {
  return emu::shuffle(emu::g_block->dslots, v, (emu::flat_tid() % 32) ^ mask);
}

// IEEE round-to-nearest single-precision operations, never contracted into an FMA (the host
// build uses -ffp-contract=off, so plain operators are already exact roundings).
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline float rsqrtf(float a) { return 1.0f / std::sqrt(a); }
inline double rsqrt(double a) { return 1.0 / std::sqrt(a); }
using std::exp;
using std::fabs;
using std::sqrt;
inline float __expf(float a) { return std::exp(a); }

// bf16 as 16 bits of storage, converted with round-to-nearest-even like __float2bfloat16.
struct __nv_bfloat16 {
  uint16_t bits;
};
inline float __bfloat162float(__nv_bfloat16 h) {
  uint32_t u = uint32_t(h.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline __nv_bfloat16 __float2bfloat16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{uint16_t((u >> 16) | 0x40)};  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return __nv_bfloat16{uint16_t(u >> 16)};
}

namespace emu {
// Serialises launches (shared memory is static storage) and runs `kernel` over the grid.
inline std::mutex& launch_lock() {
  static std::mutex m;
  return m;
}

// Runs `kernel()` for every thread of every block; throws if a block does not finish within
// `timeout_s` (a thread skipped a barrier) or a thread threw.
inline void launch(dim3 grid, dim3 block, const std::function<void()>& kernel, double timeout_s = 60.0) {
  std::lock_guard<std::mutex> guard(launch_lock());
  unsigned nthreads = block.x * block.y * block.z;
  if (nthreads == 0 || nthreads > 1024) throw std::runtime_error("block of " + std::to_string(nthreads) + " threads");
  if (nthreads % 32 != 0) throw std::runtime_error("block of " + std::to_string(nthreads) + " threads: not whole warps");
  g_grid = grid;
  g_block_dim = block;
  Block b;
  b.all = std::make_unique<std::barrier<>>(nthreads);
  for (unsigned w = 0; w < nthreads / 32; ++w) b.warps.push_back(std::make_unique<std::barrier<>>(32));
  b.fslots.assign(nthreads, 0.0f);
  b.dslots.assign(nthreads, 0.0);
  g_block = &b;
  // between two blocks every thread waits here, so a fast thread never starts the next block
  // while slower ones still read the shared memory of this one
  std::barrier<> between(nthreads + 1);
  std::mutex err_lock;
  std::string error;
  std::vector<std::thread> threads;
  unsigned long nblocks = (unsigned long)grid.x * grid.y * grid.z;
  for (unsigned t = 0; t < nthreads; ++t) {
    threads.emplace_back([&, t] {
      t_thread = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
      for (unsigned long bi = 0; bi < nblocks; ++bi) {
        t_block = dim3(bi % grid.x, (bi / grid.x) % grid.y, bi / ((unsigned long)grid.x * grid.y));
        try {
          kernel();
        } catch (const std::exception& e) {
          std::lock_guard<std::mutex> l(err_lock);
          if (error.empty()) error = e.what();
        }
        between.arrive_and_wait();
      }
    });
  }
  // the launching thread paces the blocks; a watchdog aborts if no block finishes in time
  std::mutex wl;
  std::condition_variable wcv;
  unsigned long finished = 0;
  bool all_done = false;
  std::thread watchdog([&] {
    std::unique_lock<std::mutex> l(wl);
    unsigned long seen = finished;
    while (!all_done) {
      if (!wcv.wait_for(l, std::chrono::duration<double>(timeout_s), [&] { return all_done || finished != seen; })) {
        std::fprintf(stderr, "emu: a block did not finish in %.0f s (a thread skipped a barrier?)\n", timeout_s);
        std::abort();
      }
      seen = finished;
    }
  });
  for (unsigned long bi = 0; bi < nblocks; ++bi) {
    between.arrive_and_wait();
    {
      std::lock_guard<std::mutex> l(wl);
      ++finished;
    }
    wcv.notify_one();
  }
  {
    std::lock_guard<std::mutex> l(wl);
    all_done = true;
  }
  wcv.notify_one();
  watchdog.join();
  for (auto& th : threads) th.join();
  g_block = nullptr;
  if (!error.empty()) throw std::runtime_error(error);
}
}  // namespace emu

using std::max;
using std::min;
