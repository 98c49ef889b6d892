//! The fused ops on CUDA (`--features cuda`): the kernels of this folder's `.cu` files,
//! compiled to PTX by `trainer/build.rs` with the pinned nvcc and loaded once per device with
//! `get_or_load_custom_func`. The forward of each op is its `CustomOp`'s `cuda_fwd`
//! (`fwd.rs`); the backward is one more custom op per fused op (`bwd.rs`) whose output packs
//! all input gradients, cut apart with views. Launch geometry comes from `kernels::launch`,
//! shared with the CPU tests that run the same kernel sources under host emulation
//! (`cuda-emu/`). Tensors must be contiguous and f32 or bf16 (every input of an op the same);
//! `model::layers` keeps the composed ops for everything else.

pub(crate) mod adamw;
pub(crate) mod bwd;
pub(crate) mod fwd;
pub mod qkv;
pub mod softmax;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaFunction, CudaView, DeviceRepr, LaunchConfig};
use candle_core::cuda_backend::CudaDType;
use candle_core::{CudaDevice, CudaStorage, DType, Layout, Result, Tensor, WithDType};

use super::launch::Launch;

/// One PTX module: its name in the device's module cache and its text.
pub(crate) struct Module {
    name: &'static str,
    ptx: &'static str,
}

pub(crate) const NORM: Module = Module { name: "ablate-norm", ptx: include_str!(concat!(env!("OUT_DIR"), "/norm.ptx")) };
pub(crate) const POINTWISE: Module = Module { name: "ablate-pointwise", ptx: include_str!(concat!(env!("OUT_DIR"), "/pointwise.ptx")) };
pub(crate) const LOSS: Module = Module { name: "ablate-loss", ptx: include_str!(concat!(env!("OUT_DIR"), "/loss.ptx")) };
pub(crate) const ADAMW: Module = Module { name: "ablate-adamw", ptx: include_str!(concat!(env!("OUT_DIR"), "/adamw.ptx")) };
pub(crate) const ATTENTION: Module = Module { name: "ablate-attention", ptx: include_str!(concat!(env!("OUT_DIR"), "/attention.ptx")) };
pub(crate) const QKV: Module = Module { name: "ablate-qkv", ptx: include_str!(concat!(env!("OUT_DIR"), "/qkv.ptx")) };

/// Whether `t` can take a CUDA kernel: fused ops on, a CUDA tensor, f32 or bf16.
pub fn applies(t: &Tensor) -> bool {
    super::enabled() && t.device().is_cuda() && matches!(t.dtype(), DType::F32 | DType::BF16)
}

/// The kernel `base` for element type `T` (`_f32` / `_bf16` instances).
pub(crate) fn func<T: WithDType>(dev: &CudaDevice, m: &Module, base: &str) -> Result<CudaFunction> {
    let suffix = match T::DTYPE {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        other => candle_core::bail!("{base}: no CUDA kernel for {other:?}"),
    };
    Ok(dev.get_or_load_custom_func(&format!("{base}_{suffix}"), m.name, m.ptx)?.into_cuda_function())
}

/// A kernel without a type suffix.
pub(crate) fn plain_func(dev: &CudaDevice, m: &Module, name: &str) -> Result<CudaFunction> {
    Ok(dev.get_or_load_custom_func(name, m.name, m.ptx)?.into_cuda_function())
}

pub(crate) fn config(l: Launch) -> LaunchConfig {
    LaunchConfig { grid_dim: (l.0 .0, l.0 .1, 1), block_dim: (l.1, 1, 1), shared_mem_bytes: 0 }
}

/// The contiguous elements of a tensor's storage as a view.
pub(crate) fn view<'a, T: CudaDType + DeviceRepr>(s: &'a CudaStorage, l: &Layout, what: &str) -> Result<CudaView<'a, T>> {
    let (a, b) = l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg(format!("{what}: the CUDA kernel expects a contiguous tensor")))?;
    Ok(s.as_cuda_slice::<T>()?.slice(a..b))
}

/// All storages of one op share one element type; returns it.
pub(crate) fn same_dtype(what: &str, ss: &[&CudaStorage]) -> Result<DType> {
    let dt = ss[0].dtype();
    if ss.iter().any(|s| s.dtype() != dt) {
        candle_core::bail!("{what}: inputs of different dtypes {:?}", ss.iter().map(|s| s.dtype()).collect::<Vec<_>>());
    }
    Ok(dt)
}

/// Runs `$body` with `$t` bound to the Rust element type of `$dtype` (f32 or bf16).
macro_rules! with_elem {
    ($dtype:expr, $what:expr, $t:ident => $body:expr) => {
        match $dtype {
            candle_core::DType::F32 => {
                type $t = f32;
                $body
            }
            candle_core::DType::BF16 => {
                type $t = half::bf16;
                $body
            }
            other => candle_core::bail!("{}: no CUDA kernel for {other:?}", $what),
        }
    };
}
pub(crate) use with_elem;

/// Launches `$func` on `$dev`'s stream with `$cfg` and the arguments (device views and
/// scalars, by value).
macro_rules! launch {
    ($dev:expr, $func:expr, $cfg:expr, $($arg:expr),* $(,)?) => {{
        use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
        use candle_core::cuda_backend::WrapErr;
        let func = $func;
        let stream = $dev.cuda_stream();
        let mut b = stream.launch_builder(&func);
        candle_core::builder_arg!(b, $($arg),*);
        // SAFETY: the arguments match the kernel's parameters in number, order and type
        // (checked against the `extern "C"` declarations of the `.cu` file), and every view
        // covers the elements the kernel indexes for this geometry.
        unsafe { b.launch($cfg) }.w()?;
    }};
}
pub(crate) use launch;

/// The `cpu_fwd` of the CUDA-only custom ops: a CPU tensor reaching one is a routing bug.
pub(crate) fn cpu_refused(name: &str) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
    candle_core::bail!("{name}: a CPU tensor reached the CUDA op")
}

/// Cuts a packed output `p` (gradients or outputs one after another) into tensors of
/// `shapes`, in order.
pub(crate) fn unpack(p: &Tensor, shapes: &[&candle_core::Shape]) -> Result<Vec<Tensor>> {
    let mut at = 0;
    shapes
        .iter()
        .map(|s| {
            let n = s.elem_count();
            let t = p.narrow(0, at, n)?.reshape(*s)?;
            at += n;
            Ok(t)
        })
        .collect()
}

/// Second pass of a column sum (`norm.cu`'s `ablate_col_sum`): `groups * d` sums of `chunks`
/// partials into `out` (a view of element type `$t`).
macro_rules! col_sum {
    ($dev:expr, $t:ty, $part:expr, $out:expr, $groups:expr, $chunks:expr, $d:expr) => {
        $crate::kernels::cuda::launch!($dev, $crate::kernels::cuda::func::<$t>($dev, &$crate::kernels::cuda::NORM, "ablate_col_sum")?, $crate::kernels::cuda::config($crate::kernels::launch::column_sum($groups, $d)), $part, $out, $groups as i32, $chunks as i32, $d as i32)
    };
}
pub(crate) use col_sum;

/// A storage on `dev` wrapping a freshly computed slice.
pub(crate) fn wrap<T: CudaDType>(slice: candle_core::cuda_backend::cudarc::driver::CudaSlice<T>, dev: &CudaDevice) -> CudaStorage {
    CudaStorage::wrap_cuda_slice(slice, dev.clone())
}
