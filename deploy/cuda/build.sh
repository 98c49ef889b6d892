#!/usr/bin/env bash
# Builds the CUDA + NCCL `ablate` binary on a machine with no GPU and no CUDA toolkit, for
# NVIDIA H100/H200 (sm_90) machines whose driver is CUDA 13.0 (R580), and stages what a device
# run needs in .gpu/ (ignored by git):
#
#   bash deploy/cuda/build.sh            # ~15-20 min the first time on 2 cores, ~2-4 min after
#   MODE=check bash deploy/cuda/build.sh # only `cargo check` the CUDA build (~5 min warm)
#
#   .gpu/ablate            the stripped binary (no CUDA library in DT_NEEDED: CUDA is dlopen()ed)
#   .gpu/device-env.sh     puts the GPU machine's libcuda and CUDA 13 libraries on LD_LIBRARY_PATH
#   .gpu/run-device.sh     the device check (copy of deploy/cuda/device-check.sh)
#   .gpu/nccl-rendezvous.sh  NCCL through coordinator + worker (run by the device check)
#
# On the GPU machine (the repository copied there with .gpu/ carried along):
#   bash .gpu/run-device.sh
#
# How: sources the recipe's cuda-env.sh (CUDA_ENV_SH=..., default ../shared/gpu/cuda-env.sh),
# which pip-installs the pinned CUDA 13.0 nvcc/headers/static runtime into ~/.cache/ablate-cuda
# and patches a cached copy of cudarc 0.19.10 so it dlopen()s the CUDA libraries at run time
# (candle-core 0.11.1 would otherwise link them). Nothing third-party is copied into the
# repository: the build points at the patched cache with the --config flag in CUDA_CARGO_ARGS.
# The CUDA build has its own target folder (CARGO_TARGET_DIR, default target/cuda) so it does
# not invalidate the CPU build. trainer/build.rs points `-lcudart` at the static runtime.
#
# Environment: CUDA_ENV_SH (recipe), CARGO_TARGET_DIR (default target/cuda),
# ABLATE_CUDA_CACHE (cache of the recipe, default ~/.cache/ablate-cuda),
# CUDA_COMPUTE_CAP (default 90), FEATURES (default cuda,nccl).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"

CUDA_ENV_SH="${CUDA_ENV_SH:-$root/../shared/gpu/cuda-env.sh}"
[ -f "$CUDA_ENV_SH" ] || { echo "build.sh: no CUDA recipe at $CUDA_ENV_SH (set CUDA_ENV_SH)" >&2; exit 1; }
DEVICE_ENV_SH="${DEVICE_ENV_SH:-$(dirname "$CUDA_ENV_SH")/device-env.sh}"
[ -f "$DEVICE_ENV_SH" ] || { echo "build.sh: no device-env.sh at $DEVICE_ENV_SH (set DEVICE_ENV_SH)" >&2; exit 1; }
FEATURES="${FEATURES:-cuda,nccl}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target/cuda}"

# shellcheck source=/dev/null
set +u; source "$CUDA_ENV_SH" || { echo "build.sh: $CUDA_ENV_SH failed" >&2; exit 1; }; set -u

# the patched cudarc is a path dependency: cargo rewrites Cargo.lock's cudarc entry for this
# build; the CPU build's lock file is put back whatever happens
lock_copy=$(mktemp)
cp Cargo.lock "$lock_copy"
trap 'cp "$lock_copy" Cargo.lock; rm -f "$lock_copy"' EXIT

start=$(date +%s)
if [ "${MODE:-build}" = check ]; then
  echo "== cargo check --release -p ablate-cli --features $FEATURES (target $CARGO_TARGET_DIR)"
  cargo check --release -p ablate-cli --features "$FEATURES" "${CUDA_CARGO_ARGS[@]}"
  echo "== checked in $(( $(date +%s) - start )) s"
  exit 0
fi
echo "== cargo build --release -p ablate-cli --features $FEATURES (target $CARGO_TARGET_DIR)"
cargo build --release -p ablate-cli --features "$FEATURES" "${CUDA_CARGO_ARGS[@]}"
echo "== built in $(( $(date +%s) - start )) s"

mkdir -p .gpu
grep -qxF '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
strip -o .gpu/ablate.new "$CARGO_TARGET_DIR/release/ablate"
mv .gpu/ablate.new .gpu/ablate
cp "$DEVICE_ENV_SH" .gpu/device-env.sh
cp deploy/cuda/device-check.sh .gpu/run-device.sh
cp deploy/cuda/nccl-rendezvous.sh .gpu/nccl-rendezvous.sh
chmod +x .gpu/ablate .gpu/run-device.sh .gpu/nccl-rendezvous.sh

# The binary must start on a machine without any CUDA library installed at link paths: only
# libc/libm/libgcc_s (and libstdc++ if candle's MoE kernels ever get linked) may be needed.
needed=$(readelf -d .gpu/ablate | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' ')
echo "== DT_NEEDED: $needed"
if echo "$needed" | grep -qiE 'cuda|cublas|curand|nccl|nvrtc|cudnn'; then
  echo "build.sh: .gpu/ablate links a CUDA library at load time; it must dlopen them" >&2
  exit 1
fi
glibc=$(objdump -T .gpu/ablate 2>/dev/null | grep -oE 'GLIBC_[0-9.]+' | sort -uV | tail -1 || true)
echo "== .gpu/ablate: $(stat -c %s .gpu/ablate) bytes, needs ${glibc:-glibc ?}"
du -sh .gpu
total=$(du -sb .gpu | cut -f1)
[ "$total" -le $((60 * 1024 * 1024)) ] || { echo "build.sh: .gpu is $total bytes, over the 60 MiB the device tool carries" >&2; exit 1; }
echo "== ready: carry [\".gpu\"] and run: bash .gpu/run-device.sh"
