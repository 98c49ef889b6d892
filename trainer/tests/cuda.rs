//! CUDA variants of the training checks (`--features cuda`, ignored by default since CI has no
//! GPU): `cargo test -p ablate-trainer --features cuda,nccl --test cuda -- --ignored`.
//! The same functions run in the shipped binary as `ablate selfcheck-cuda` (the device
//! script, deploy/cuda/device-check.sh, runs that, as the GPU machine has no toolchain).
#![cfg(feature = "cuda")]

use ablate_trainer::device::{self, selfcheck};
use ablate_trainer::precision::PrecisionPolicy;
use candle_core::Device;

fn cuda() -> Device {
    device::open("cuda:0").expect("a CUDA device (source .gpu/device-env.sh)")
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn layers_match_the_cpu_forward_and_backward() {
    println!("{}", selfcheck::ops(&cuda()).unwrap());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn fp32_training_steps_match_the_cpu() {
    println!("{}", selfcheck::train_parity(&cuda(), PrecisionPolicy::Fp32, 8, 1e-3).unwrap());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn bf16_autocast_steps_match_the_cpu_within_bf16_tolerance() {
    println!("{}", selfcheck::train_parity(&cuda(), PrecisionPolicy::Bf16Mixed, 8, 5e-2).unwrap());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn loss_falls_and_every_parameter_moves_on_cuda() {
    println!("{}", selfcheck::loss_falls(&cuda(), 40, 0.85).unwrap());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn peak_memory_is_reported() {
    println!("{}", selfcheck::memory(&cuda()).unwrap());
}

#[cfg(feature = "nccl")]
#[test]
#[ignore = "needs a CUDA GPU"]
fn nccl_all_reduce_at_world_size_one() {
    println!("{}", selfcheck::nccl(&cuda()).unwrap());
}
