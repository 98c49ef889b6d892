//! The compute device of a run, chosen once at the top (`cpu`, `cuda`, `cuda:N`) and passed
//! down to everything that creates tensors, plus what the benchmarks ask of it: a
//! synchronisation point before the clock stops, a description, and peak memory.
//!
//! CUDA support is a cargo feature (`--features cuda`, built by deploy/cuda/build.sh). That
//! build loads the CUDA libraries at run time, and cudarc panics when one is missing, so
//! `open` checks each library first and says which one is absent.

use candle_core::Device;

pub mod selfcheck;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device \"{0}\" (expected cpu, cuda or cuda:N)")]
    Unknown(String),
    #[error("device \"{0}\" needs a build with --features cuda (deploy/cuda/build.sh); this build has the CPU only")]
    NotBuilt(String),
    #[error("CUDA library {0} cannot be loaded: no NVIDIA driver here, or its folder is not on LD_LIBRARY_PATH (source .gpu/device-env.sh)")]
    MissingLibrary(&'static str),
    #[error("opening {spec}: {source}")]
    Open { spec: String, source: candle_core::Error },
}

/// Parses `cpu`, `cuda` (= `cuda:0`) or `cuda:N` into a CUDA ordinal (`None` for the CPU).
pub fn parse(spec: &str) -> Result<Option<usize>, DeviceError> {
    match spec.trim() {
        "cpu" => Ok(None),
        "cuda" | "gpu" => Ok(Some(0)),
        s => s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(Some)
            .ok_or_else(|| DeviceError::Unknown(spec.to_string())),
    }
}

/// Opens the device named by `spec` (see `parse`).
pub fn open(spec: &str) -> Result<Device, DeviceError> {
    match parse(spec)? {
        None => Ok(Device::Cpu),
        Some(ordinal) => open_cuda(spec, ordinal),
    }
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(spec: &str, _ordinal: usize) -> Result<Device, DeviceError> {
    Err(DeviceError::NotBuilt(spec.to_string()))
}

#[cfg(feature = "cuda")]
fn open_cuda(spec: &str, ordinal: usize) -> Result<Device, DeviceError> {
    cuda::check_libraries()?;
    let dev = Device::new_cuda(ordinal).map_err(|source| DeviceError::Open { spec: spec.to_string(), source })?;
    if let Device::Cuda(d) = &dev {
        cuda::keep_pool_memory(d);
    }
    Ok(dev)
}

/// Waits for all queued work on `dev` (a no-op on the CPU): call before reading a clock.
pub fn synchronize(dev: &Device) -> candle_core::Result<()> {
    dev.synchronize()
}

/// One line naming the device: `cpu (2 threads)`, `cuda:0 NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB)`.
pub fn describe(dev: &Device) -> String {
    match dev {
        Device::Cpu => format!("cpu ({} threads)", rayon::current_num_threads()),
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => cuda::describe(d),
        #[allow(unreachable_patterns)]
        _ => format!("{:?}", dev.location()),
    }
}

/// Device memory figures, in bytes. `peak_in_use` is the high-water mark of memory handed out
/// by the device's stream-ordered memory pool (where candle's allocations come from; the
/// analogue of `torch.cuda.max_memory_allocated`) since the last `reset_peak_memory`;
/// `in_use` is what the whole device has allocated now (cuMemGetInfo: total - free, every
/// process and library included).
#[derive(Debug, Clone, Copy)]
pub struct MemoryStats {
    pub peak_in_use: Option<u64>,
    pub in_use: u64,
    pub total: u64,
}

/// Memory figures of `dev`; `None` on the CPU.
pub fn memory(dev: &Device) -> Option<MemoryStats> {
    match dev {
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => cuda::memory(d),
        _ => None,
    }
}

/// Restarts the peak measured by `memory` (no-op on the CPU).
pub fn reset_peak_memory(dev: &Device) {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = dev {
        cuda::reset_peak(d);
    }
    let _ = dev;
}

#[cfg(feature = "cuda")]
pub(crate) mod cuda {
    //! The few CUDA driver queries candle does not offer, through the cudarc it re-exports.
    use super::{DeviceError, MemoryStats};
    use candle_core::cuda_backend::cudarc;
    use candle_core::CudaDevice;
    use cudarc::driver::{result, sys};

    pub fn check_libraries() -> Result<(), DeviceError> {
        // SAFETY: these only try to dlopen the library and report whether it loaded.
        let libs: [(&'static str, unsafe fn() -> bool); 4] = [
            ("libcuda.so.1 (driver)", cudarc::driver::sys::is_culib_present),
            ("libcublas", cudarc::cublas::sys::is_culib_present),
            ("libcublasLt", cudarc::cublaslt::sys::is_culib_present),
            ("libcurand", cudarc::curand::sys::is_culib_present),
        ];
        for (name, present) in libs {
            if !unsafe { present() } {
                return Err(DeviceError::MissingLibrary(name));
            }
        }
        Ok(())
    }

    pub fn describe(d: &CudaDevice) -> String {
        let ctx = d.cuda_stream().context().clone();
        let name = ctx.name().unwrap_or_else(|e| format!("? ({e})"));
        let cc = ctx.compute_capability().map(|(a, b)| format!("sm_{a}{b}")).unwrap_or_else(|_| "sm_?".into());
        let mem = ctx.total_mem().map(|b| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)).unwrap_or_default();
        format!("cuda:{} {name} ({cc}, {mem})", ctx.ordinal())
    }

    fn pool(d: &CudaDevice) -> Option<sys::CUmemoryPool> {
        let ctx = d.cuda_stream().context().clone();
        ctx.bind_to_thread().ok()?;
        // SAFETY: the device handle comes from a live context.
        unsafe { result::device::get_mem_pool(ctx.cu_device()) }.ok()
    }

    /// candle allocates from the device's stream-ordered memory pool (cuMemAllocAsync), whose
    /// default release threshold of 0 hands all free memory back to the driver at every
    /// synchronisation (each training step has some), so the next step maps it again. Keep
    /// it instead, as PyTorch's caching allocator does.
    pub fn keep_pool_memory(d: &CudaDevice) {
        if let Some(p) = pool(d) {
            let mut keep: u64 = u64::MAX;
            // SAFETY: RELEASE_THRESHOLD is a cuuint64_t attribute and `keep` is one.
            let r = unsafe {
                result::mem_pool::set_attribute(p, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, (&mut keep as *mut u64).cast())
            };
            if let Err(e) = r {
                tracing::warn!(error = ?e, "cannot raise the CUDA memory pool's release threshold");
            }
        }
    }

    pub fn memory(d: &CudaDevice) -> Option<MemoryStats> {
        let ctx = d.cuda_stream().context().clone();
        let (free, total) = ctx.mem_get_info().ok()?;
        let peak_in_use = pool(d).and_then(|p| {
            let mut v: u64 = 0;
            // SAFETY: USED_MEM_HIGH is a cuuint64_t attribute and `v` is one.
            let r = unsafe {
                result::mem_pool::get_attribute(p, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH, (&mut v as *mut u64).cast())
            };
            r.ok().map(|_| v)
        });
        Some(MemoryStats { peak_in_use, in_use: (total - free) as u64, total: total as u64 })
    }

    pub fn reset_peak(d: &CudaDevice) {
        let _ = d.cuda_stream().synchronize();
        if let Some(p) = pool(d) {
            let mut zero: u64 = 0;
            // SAFETY: the high-water mark may only be reset to zero, which this does.
            let _ = unsafe {
                result::mem_pool::set_attribute(p, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH, (&mut zero as *mut u64).cast())
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_parse() {
        assert_eq!(parse("cpu").unwrap(), None);
        assert_eq!(parse("cuda").unwrap(), Some(0));
        assert_eq!(parse("cuda:3").unwrap(), Some(3));
        assert_eq!(parse("cuda:x").unwrap_err().to_string(), "unknown device \"cuda:x\" (expected cpu, cuda or cuda:N)");
        assert!(open("cpu").unwrap().is_cpu());
        #[cfg(not(feature = "cuda"))]
        assert!(open("cuda:0").unwrap_err().to_string().contains("--features cuda"));
        assert!(memory(&Device::Cpu).is_none());
    }
}

/// Runs candle's element-wise CPU ops on the calling thread (`CANDLE_NUM_THREADS=1`) unless
/// the environment already sets `CANDLE_NUM_THREADS`. Call at start-up, before other threads.
///
/// candle splits large element-wise ops over its own barrier pool, guarded by one lock. The
/// trainer instead runs one micro-batch per core (`Trainer::compute_grads`), and two
/// micro-batches contending for that pool were slower than none: `ablate bench train --batch
/// 32` (2 cores) took 867 ms per step with the pool and 613 ms without. Parallelism then comes
/// from the micro-batches, the fused kernels and the matrix products (rayon).
pub fn candle_ops_on_calling_thread() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// Makes glibc's allocator keep freed memory for reuse instead of returning it to the kernel.
///
/// candle allocates a fresh buffer for every intermediate tensor; with glibc's defaults every
/// buffer above 128 KiB (most activations) is a new `mmap`, so each training step page-faults,
/// zeroes and unmaps its whole working set again (~10% of a CPU step in `perf`, with TLB
/// shootdowns across threads). Raising the mmap threshold to its maximum (32 MiB) and the trim
/// threshold keeps those pages in the heap. Measured on `ablate bench train --batch 32`
/// (2 cores): 1736 -> 1622 ms and 1821 -> 1599 ms per step. Call once at start-up; a no-op
/// where the C library is not glibc.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning parameters; called before threads allocate heavily.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}
