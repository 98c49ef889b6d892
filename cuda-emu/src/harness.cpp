// The CUDA kernel sources compiled for the host (see build.rs), and the one launcher the Rust
// side calls: it runs a callback as every thread of every block of the grid.
#include "adamw.cu"
#include "attention.cu"
#include "loss.cu"
#include "norm.cu"
#include "pointwise.cu"
#include "qkv.cu"

extern "C" int ablate_emu_launch(unsigned gx, unsigned gy, unsigned bx, void (*thread_fn)(void*), void* data,
                                 char* err, unsigned long err_len) {
  try {
    emu::launch(dim3(gx, gy), dim3(bx), [=] { thread_fn(data); });
    return 0;
  } catch (const std::exception& e) {
    std::snprintf(err, err_len, "%s", e.what());
    return 1;
  }
}

// what the tests read to check they drive the same geometry the kernels see
extern "C" unsigned ablate_emu_thread_x() { return threadIdx.x; }
