//! Build script: only does something for the CUDA build (`--features cuda`).
//!
//! candle-kernels 0.11.1 compiles its MoE / GGUF kernels into a static library with `nvcc -c`
//! and then asks the linker for `-lcudart`. The pinned toolkit of deploy/cuda/build.sh ships
//! only the static runtime, and a run-time dependency on libcudart.so.13 is unwanted anyway,
//! so this script puts a folder first on the link path in which `libcudart.a` is a copy of
//! `libcudart_static.a`: `-lcudart` resolves to the static runtime (which dlopen()s the
//! driver's libcuda.so.1 itself) and the binary has no CUDA library among its DT_NEEDED
//! entries. The search path reaches every binary that links this crate (the `ablate` CLI and
//! this crate's test binaries). Without the feature nothing is read, written or required.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    for v in ["CUDA_ROOT", "CUDA_HOME", "CUDA_PATH"] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    let Some(root) = ["CUDA_ROOT", "CUDA_HOME", "CUDA_PATH"].iter().find_map(|v| std::env::var_os(v)).map(PathBuf::from)
    else {
        panic!("the cuda feature needs CUDA_ROOT (the folder with bin/nvcc and lib/libcudart_static.a): build with deploy/cuda/build.sh");
    };
    let Some(static_rt) =
        ["lib/libcudart_static.a", "lib64/libcudart_static.a"].iter().map(|p| root.join(p)).find(|p| p.is_file())
    else {
        panic!("libcudart_static.a not found under {}", root.display());
    };
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("cudart-static");
    std::fs::create_dir_all(&out).expect("create the cudart link folder");
    let shim = out.join("libcudart.a");
    let _ = std::fs::remove_file(&shim);
    std::fs::copy(&static_rt, &shim).unwrap_or_else(|e| panic!("copy {}: {e}", static_rt.display()));
    println!("cargo:rustc-link-search=native={}", out.display());
}
