//! Compiles the CUDA kernel sources of `trainer/src/kernels/cuda/` as host C++ with `emu.h`
//! standing in for the CUDA runtime (threads, barriers, warp shuffles, bf16), into one static
//! library whose `extern "C"` kernels the tests call through `ablate_cuda_emu::launch`.
//! `-ffp-contract=off`: no FMA contraction, so host float arithmetic rounds each operation as
//! the CUDA sources' explicitly rounded intrinsics do.

fn main() {
    let dir = std::path::Path::new("../trainer/src/kernels/cuda");
    let mut build = cc::Build::new();
    build.cpp(true).file("src/harness.cpp").include(dir).std("c++20").flag("-ffp-contract=off").flag("-pthread").opt_level(2).warnings(true);
    build.compile("ablate_cuda_emu");
    println!("cargo:rustc-link-lib=pthread");
    println!("cargo:rerun-if-changed=src/harness.cpp");
    for entry in std::fs::read_dir(dir).expect("the CUDA kernel sources") {
        println!("cargo:rerun-if-changed={}", entry.expect("a kernel source").path().display());
    }
}
