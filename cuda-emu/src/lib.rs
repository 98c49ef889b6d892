//! Host emulation of ablate's CUDA kernels (`trainer/src/kernels/cuda/*.cu`), for CI, which
//! has no GPU: `build.rs` compiles the very sources nvcc turns into PTX as host C++, with
//! `emu.h` providing CUDA's thread indices, `__syncthreads`, warp shuffles and bf16.
//! [`launch`] runs a closure as every thread of a grid (the threads of a block are OS
//! threads, blocks run one after another); the closure calls one of the `extern "C"` kernels
//! declared in [`kernels`]. The tests in `tests/` check each kernel's forward and backward
//! against the CPU fused ops of `ablate-trainer`, at f32 and bf16.

use std::ffi::c_void;

extern "C" {
    fn ablate_emu_launch(gx: u32, gy: u32, bx: u32, thread_fn: extern "C" fn(*mut c_void), data: *mut c_void, err: *mut u8, err_len: u64) -> i32;
}

extern "C" fn trampoline<F: Fn() + Sync>(data: *mut c_void) {
    // SAFETY: `data` is the `&F` that `launch` passed, alive until the launch returns.
    let f = unsafe { &*(data as *const F) };
    f();
}

/// Runs `thread` as every thread of a (gx, gy) grid of 1-D blocks of `bx` threads (whole
/// warps, at most 1024). Errors name what the emulator refused.
pub fn launch<F: Fn() + Sync>(grid: (u32, u32), bx: u32, thread: F) -> Result<(), String> {
    let mut err = vec![0u8; 256];
    // SAFETY: the emulator calls `trampoline::<F>` with the pointer to `thread` from its
    // threads, all joined before it returns; `F: Sync` makes the shared calls sound.
    let rc = unsafe { ablate_emu_launch(grid.0, grid.1, bx, trampoline::<F>, &thread as *const F as *mut c_void, err.as_mut_ptr(), err.len() as u64) };
    if rc == 0 {
        return Ok(());
    }
    let end = err.iter().position(|&b| b == 0).unwrap_or(err.len());
    Err(String::from_utf8_lossy(&err[..end]).into_owned())
}

/// A raw pointer that may be shared by the emulated threads (each kernel writes disjoint
/// elements, as on the GPU).
pub struct P<T>(pub *mut T);
impl<T> Clone for P<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for P<T> {}
// SAFETY: only handed to kernels, which access disjoint elements or synchronise themselves.
unsafe impl<T> Sync for P<T> {}
unsafe impl<T> Send for P<T> {}

impl<T> P<T> {
    pub fn of(v: &mut [T]) -> Self {
        P(v.as_mut_ptr())
    }
    pub fn of_ref(v: &[T]) -> Self {
        P(v.as_ptr() as *mut T)
    }
    pub fn null() -> Self {
        P(std::ptr::null_mut())
    }
    /// The pointer (a method, so closures capture the whole `P`, which is `Sync`, rather
    /// than its raw-pointer field).
    pub fn get(self) -> *mut T {
        self.0
    }
}

/// One parameter of the multi-tensor AdamW (`adamw.cu`'s `AdamwTensor`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct AdamwTensor {
    pub w: *mut f32,
    pub g: *const f32,
    pub m: *mut f32,
    pub v: *mut f32,
    pub w_bf16: *mut u16,
    pub n: i64,
}

/// The kernels' `extern "C"` entry points (bf16 as its 16 bits).
pub mod kernels {
    use super::AdamwTensor;

    /// Declares each kernel once, with `E` for its element type, under its name without
    /// the dtype suffix; the module it expands in says `E` and the suffix.
    macro_rules! element_kernels {
        ($suffix:literal) => {
            declare!($suffix;
                ablate_ln_modulate_fwd(x: *const E, shift: *const E, scale: *const E, y: *mut E, rows: i32, n: i32, d: i32, shared: i32, offset: f32, eps: f64);
                ablate_ln_modulate_bwd_dx(x: *const E, scale: *const E, dy: *const E, dx: *mut E, stats: *mut f32, rows: i32, n: i32, d: i32, shared: i32, offset: f32, eps: f64);
                ablate_ln_modulate_param_partials(x: *const E, dy: *const E, stats: *const f32, ps: *mut f32, pc: *mut f32, group_rows: i32, chunk_rows: i32, chunks: i32, d: i32);
                ablate_col_sum(part: *const f32, out: *mut E, groups: i32, chunks: i32, d: i32);
                ablate_rms_norm_fwd(x: *const E, w: *const E, y: *mut E, rows: i64, d: i32, eps: f64);
                ablate_rms_norm_bwd_dx(x: *const E, w: *const E, dy: *const E, dx: *mut E, stats: *mut f32, rows: i64, d: i32, eps: f64);
                ablate_rms_norm_dw_partials(x: *const E, dy: *const E, stats: *const f32, part: *mut f32, rows: i64, chunk_rows: i32, d: i32);
                ablate_gated_gelu_fwd(gate: *const E, up: *const E, y: *mut E, n: i64);
                ablate_gated_gelu_bwd(gate: *const E, up: *const E, dy: *const E, dgate: *mut E, dup: *mut E, n: i64);
                ablate_gated_gelu_packed_fwd(x: *const E, y: *mut E, rows: i64, m: i32);
                ablate_gated_gelu_packed_bwd(x: *const E, dy: *const E, dx: *mut E, rows: i64, m: i32);
                ablate_gated_residual_fwd(x: *const E, y: *const E, gate: *const E, out: *mut E, total: i64, n: i32, d: i32);
                ablate_gated_residual_bwd_dy(gate: *const E, dout: *const E, dy: *mut E, total: i64, n: i32, d: i32);
                ablate_gated_residual_dgate_partials(y: *const E, dout: *const E, part: *mut f32, n: i32, chunk_rows: i32, chunks: i32, d: i32);
                ablate_rope(x: *const E, cos: *const f32, sin: *const f32, y: *mut E, pairs: i64, h: i32, n: i32, dh: i32, per_sample: i32, sign: f32);
                ablate_mse_partials(a: *const E, b: *const E, part: *mut f64, n: i64);
                ablate_mse_finish(part: *const f64, parts: i32, out: *mut E, n: i64);
                ablate_mse_bwd(a: *const E, b: *const E, g: *const E, da: *mut E, db: *mut E, n: i64);
                ablate_masked_softmax_fwd(s: *const E, bias: *const f32, p: *mut E, rows: i64, rows_per_sample: i64, nk: i32, scale: f32);
                ablate_masked_softmax_bwd(p: *const E, dp: *const E, ds: *mut E, rows: i64, nk: i32, scale: f32);
                ablate_qkv_prep_fwd(qkv: *const E, tkv: *const E, w: *const E, cos: *const f32, sin: *const f32, out: *mut E, b: i64, heads: i32, n: i32, t: i32, dh: i32, per_sample: i32, eps: f64);
                ablate_qkv_prep_bwd(qkv: *const E, tkv: *const E, w: *const E, cos: *const f32, sin: *const f32, g: *const E, dqkv: *mut E, dtkv: *mut E, stats: *mut f32, b: i64, heads: i32, n: i32, t: i32, dh: i32, per_sample: i32, eps: f64);
                ablate_qkv_prep_dw_partials(qkv: *const E, tkv: *const E, cos: *const f32, sin: *const f32, g: *const E, stats: *const f32, part: *mut f32, b: i64, heads: i32, n: i32, t: i32, dh: i32, per_sample: i32, chunk_rows: i32, chunks: i32);
            );
        };
    }

    macro_rules! declare {
        ($suffix:literal; $($name:ident ( $($arg:ident : $ty:ty),* );)*) => {
            extern "C" { $(#[link_name = concat!(stringify!($name), "_", $suffix)] pub fn $name($($arg: $ty),*);)* }
        };
    }

    /// The f32 kernels.
    pub mod f32 {
        type E = f32;
        element_kernels!("f32");
    }

    /// The bf16 kernels (bf16 as its 16 bits).
    pub mod bf16 {
        type E = u16;
        element_kernels!("bf16");
    }

    extern "C" {
        pub fn ablate_grad_sq_partials(table: *const AdamwTensor, chunk_tensor: *const i32, chunk_start: *const i64, part: *mut f64);
        pub fn ablate_grad_clip_finish(part: *const f64, parts: i32, max_norm: f32, out: *mut f32);
        pub fn ablate_adamw_multi(table: *const AdamwTensor, chunk_tensor: *const i32, chunk_start: *const i64, clip: *const f32, b1: f32, c1: f32, b2: f32, c2: f32, inv_bc1: f32, inv_bc2: f32, eps: f32, decay: f32, use_decay: i32, lr: f32);
    }
}
