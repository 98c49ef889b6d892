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

    macro_rules! typed {
        ($($name:ident ( $($arg:ident : $ty:ty),* );)*) => {
            extern "C" { $(pub fn $name($($arg: $ty),*);)* }
        };
    }

    typed!(
        ablate_ln_modulate_fwd_f32(x: *const f32, shift: *const f32, scale: *const f32, y: *mut f32, rows: i32, n: i32, d: i32, shared: i32, offset: f32, eps: f64);
        ablate_ln_modulate_bwd_dx_f32(x: *const f32, scale: *const f32, dy: *const f32, dx: *mut f32, stats: *mut f32, rows: i32, n: i32, d: i32, shared: i32, offset: f32, eps: f64);
        ablate_ln_modulate_param_partials_f32(x: *const f32, dy: *const f32, stats: *const f32, ps: *mut f32, pc: *mut f32, group_rows: i32, chunk_rows: i32, chunks: i32, d: i32);
        ablate_col_sum_f32(part: *const f32, out: *mut f32, groups: i32, chunks: i32, d: i32);
        ablate_rms_norm_fwd_f32(x: *const f32, w: *const f32, y: *mut f32, rows: i64, d: i32, eps: f64);
        ablate_rms_norm_bwd_dx_f32(x: *const f32, w: *const f32, dy: *const f32, dx: *mut f32, stats: *mut f32, rows: i64, d: i32, eps: f64);
        ablate_rms_norm_dw_partials_f32(x: *const f32, dy: *const f32, stats: *const f32, part: *mut f32, rows: i64, chunk_rows: i32, d: i32);
        ablate_gated_gelu_fwd_f32(gate: *const f32, up: *const f32, y: *mut f32, n: i64);
        ablate_gated_gelu_bwd_f32(gate: *const f32, up: *const f32, dy: *const f32, dgate: *mut f32, dup: *mut f32, n: i64);
        ablate_gated_gelu_packed_fwd_f32(x: *const f32, y: *mut f32, rows: i64, m: i32);
        ablate_gated_gelu_packed_bwd_f32(x: *const f32, dy: *const f32, dx: *mut f32, rows: i64, m: i32);
        ablate_gated_residual_fwd_f32(x: *const f32, y: *const f32, gate: *const f32, out: *mut f32, total: i64, n: i32, d: i32);
        ablate_gated_residual_bwd_dy_f32(gate: *const f32, dout: *const f32, dy: *mut f32, total: i64, n: i32, d: i32);
        ablate_gated_residual_dgate_partials_f32(y: *const f32, dout: *const f32, part: *mut f32, n: i32, chunk_rows: i32, chunks: i32, d: i32);
        ablate_rope_f32(x: *const f32, cos: *const f32, sin: *const f32, y: *mut f32, pairs: i64, h: i32, n: i32, dh: i32, per_sample: i32, sign: f32);
        ablate_mse_partials_f32(a: *const f32, b: *const f32, part: *mut f64, n: i64);
        ablate_mse_finish_f32(part: *const f64, parts: i32, out: *mut f32, n: i64);
        ablate_mse_bwd_f32(a: *const f32, b: *const f32, g: *const f32, da: *mut f32, db: *mut f32, n: i64);
        ablate_masked_softmax_fwd_f32(s: *const f32, bias: *const f32, p: *mut f32, rows: i64, rows_per_sample: i64, nk: i32, scale: f32);
        ablate_masked_softmax_bwd_f32(p: *const f32, dp: *const f32, ds: *mut f32, rows: i64, nk: i32, scale: f32);
        ablate_qkv_prep_fwd_f32(qkv: *const f32, tkv: *const f32, w: *const f32, cos: *const f32, sin: *const f32, out: *mut f32, b: i64, heads: i32, n: i32, t: i32, dh: i32, per_sample: i32, eps: f64);
        ablate_qkv_prep_bwd_f32(qkv: *const f32, tkv: *const f32, w: *const f32, cos: *const f32, sin: *const f32, g: *const f32, dqkv: *mut f32, dtkv: *mut f32, stats: *mut f32, b: i64, heads: i32, n: i32, t: i32, dh: i32, per_sample: i32, eps: f64);
        ablate_qkv_prep_dw_partials_f32(qkv: *const f32, tkv: *const f32, cos: *const f32, sin: *const f32, g: *const f32, stats: *const f32, part: *mut f32, b: i64, heads: i32, n: i32, t: i32, dh: i32, per_sample: i32, chunk_rows: i32, chunks: i32);
    );
    typed!(
        ablate_ln_modulate_fwd_bf16(x: *const u16, shift: *const u16, scale: *const u16, y: *mut u16, rows: i32, n: i32, d: i32, shared: i32, offset: f32, eps: f64);
        ablate_ln_modulate_bwd_dx_bf16(x: *const u16, scale: *const u16, dy: *const u16, dx: *mut u16, stats: *mut f32, rows: i32, n: i32, d: i32, shared: i32, offset: f32, eps: f64);
        ablate_ln_modulate_param_partials_bf16(x: *const u16, dy: *const u16, stats: *const f32, ps: *mut f32, pc: *mut f32, group_rows: i32, chunk_rows: i32, chunks: i32, d: i32);
        ablate_col_sum_bf16(part: *const f32, out: *mut u16, groups: i32, chunks: i32, d: i32);
        ablate_rms_norm_fwd_bf16(x: *const u16, w: *const u16, y: *mut u16, rows: i64, d: i32, eps: f64);
        ablate_rms_norm_bwd_dx_bf16(x: *const u16, w: *const u16, dy: *const u16, dx: *mut u16, stats: *mut f32, rows: i64, d: i32, eps: f64);
        ablate_rms_norm_dw_partials_bf16(x: *const u16, dy: *const u16, stats: *const f32, part: *mut f32, rows: i64, chunk_rows: i32, d: i32);
        ablate_gated_gelu_fwd_bf16(gate: *const u16, up: *const u16, y: *mut u16, n: i64);
        ablate_gated_gelu_bwd_bf16(gate: *const u16, up: *const u16, dy: *const u16, dgate: *mut u16, dup: *mut u16, n: i64);
        ablate_gated_gelu_packed_fwd_bf16(x: *const u16, y: *mut u16, rows: i64, m: i32);
        ablate_gated_gelu_packed_bwd_bf16(x: *const u16, dy: *const u16, dx: *mut u16, rows: i64, m: i32);
        ablate_gated_residual_fwd_bf16(x: *const u16, y: *const u16, gate: *const u16, out: *mut u16, total: i64, n: i32, d: i32);
        ablate_gated_residual_bwd_dy_bf16(gate: *const u16, dout: *const u16, dy: *mut u16, total: i64, n: i32, d: i32);
        ablate_gated_residual_dgate_partials_bf16(y: *const u16, dout: *const u16, part: *mut f32, n: i32, chunk_rows: i32, chunks: i32, d: i32);
        ablate_rope_bf16(x: *const u16, cos: *const f32, sin: *const f32, y: *mut u16, pairs: i64, h: i32, n: i32, dh: i32, per_sample: i32, sign: f32);
        ablate_mse_partials_bf16(a: *const u16, b: *const u16, part: *mut f64, n: i64);
        ablate_mse_finish_bf16(part: *const f64, parts: i32, out: *mut u16, n: i64);
        ablate_mse_bwd_bf16(a: *const u16, b: *const u16, g: *const u16, da: *mut u16, db: *mut u16, n: i64);
        ablate_masked_softmax_fwd_bf16(s: *const u16, bias: *const f32, p: *mut u16, rows: i64, rows_per_sample: i64, nk: i32, scale: f32);
        ablate_masked_softmax_bwd_bf16(p: *const u16, dp: *const u16, ds: *mut u16, rows: i64, nk: i32, scale: f32);
        ablate_qkv_prep_fwd_bf16(qkv: *const u16, tkv: *const u16, w: *const u16, cos: *const f32, sin: *const f32, out: *mut u16, b: i64, heads: i32, n: i32, t: i32, dh: i32, per_sample: i32, eps: f64);
        ablate_qkv_prep_bwd_bf16(qkv: *const u16, tkv: *const u16, w: *const u16, cos: *const f32, sin: *const f32, g: *const u16, dqkv: *mut u16, dtkv: *mut u16, stats: *mut f32, b: i64, heads: i32, n: i32, t: i32, dh: i32, per_sample: i32, eps: f64);
        ablate_qkv_prep_dw_partials_bf16(qkv: *const u16, tkv: *const u16, cos: *const f32, sin: *const f32, g: *const u16, stats: *const f32, part: *mut f32, b: i64, heads: i32, n: i32, t: i32, dh: i32, per_sample: i32, chunk_rows: i32, chunks: i32);
    );
    extern "C" {
        pub fn ablate_grad_sq_partials(table: *const AdamwTensor, chunk_tensor: *const i32, chunk_start: *const i64, part: *mut f64);
        pub fn ablate_grad_clip_finish(part: *const f64, parts: i32, max_norm: f32, out: *mut f32);
        pub fn ablate_adamw_multi(table: *const AdamwTensor, chunk_tensor: *const i32, chunk_start: *const i64, clip: *const f32, b1: f32, c1: f32, b2: f32, c2: f32, inv_bc1: f32, inv_bc2: f32, eps: f32, decay: f32, use_decay: i32, lr: f32);
    }
}
