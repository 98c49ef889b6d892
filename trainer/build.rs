//! Build script: only does something for the CUDA build (`--features cuda`).
//!
//! candle-kernels 0.11.1 compiles its MoE / GGUF kernels into a static library with `nvcc -c`
//! and then asks the linker for `-lcudart`. The pinned toolkit of deploy/cuda/build.sh ships
//! only the static runtime, and a run-time dependency on libcudart.so.13 is unwanted anyway,
//! so this script puts a folder first on the link path in which `libcudart.a` is a copy of
//! `libcudart_static.a`: `-lcudart` resolves to the static runtime (which dlopen()s the
//! driver's libcuda.so.1 itself) and the binary has no CUDA library among its DT_NEEDED
//! entries. The search path reaches every binary that links this crate (the `ablate` CLI and
//! this crate's test binaries).
//!
//! It also compiles ablate's own kernels, `src/kernels/cuda/*.cu`, to PTX in `OUT_DIR` with the
//! same nvcc (`$NVCC`, else `$CUDA_ROOT/bin/nvcc`) for `sm_<CUDA_COMPUTE_CAP>a` (default 90,
//! H100/H200), with the flags of `deploy/cuda/ptx.sh`; `kernels::cuda` embeds them with
//! `include_str!`. Without the feature nothing is read, written or required.

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
    compile_ptx(&root);
}

/// Every `src/kernels/cuda/*.cu` to `OUT_DIR/<name>.ptx`.
fn compile_ptx(root: &std::path::Path) {
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    let nvcc = std::env::var_os("NVCC").map(PathBuf::from).unwrap_or_else(|| root.join("bin/nvcc"));
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let arch = if cap.parse::<u32>().is_ok_and(|c| c >= 90) { format!("sm_{cap}a") } else { format!("sm_{cap}") };
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let src = PathBuf::from("src/kernels/cuda");
    for entry in std::fs::read_dir(&src).expect("src/kernels/cuda") {
        let path = entry.expect("a kernel source").path();
        println!("cargo:rerun-if-changed={}", path.display());
        if path.extension().is_none_or(|e| e != "cu") {
            continue;
        }
        let ptx = out.join(path.with_extension("ptx").file_name().expect("a file name"));
        let status = std::process::Command::new(&nvcc)
            .args(["-ptx", &format!("-arch={arch}"), "-O3", "-std=c++17", "-o"])
            .arg(&ptx)
            .arg(&path)
            .status()
            .unwrap_or_else(|e| panic!("run {}: {e}", nvcc.display()));
        assert!(status.success(), "nvcc failed on {}", path.display());
    }
}
