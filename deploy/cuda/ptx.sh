#!/usr/bin/env bash
# Compiles every CUDA kernel of ablate (trainer/src/kernels/cuda/*.cu) to PTX with the pinned
# nvcc 13.0 and assembles each module with ptxas for sm_90a, failing on any compiler error, a
# PTX ISA newer than the CUDA 13.0 driver accepts (9.0), or any register spill. Seconds, not
# the full candle CUDA build; CI runs it (.ci/run).
#
#   bash deploy/cuda/ptx.sh [OUT_DIR]     # PTX and ptxas reports in OUT_DIR (default target/ptx)
#
# nvcc: $NVCC if set (deploy/cuda/build.sh's recipe exports it), else the pinned wheels of
# deploy/cuda/nvcc-requirements.txt pip-installed once into
# ${ABLATE_CUDA_CACHE:-~/.cache/ablate-cuda}/nvcc (about 270 MB unpacked).
# The flags are those of trainer/build.rs, which compiles the same sources for the CUDA build.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
src="$root/trainer/src/kernels/cuda"
out="${1:-$root/target/ptx}"
mkdir -p "$out"

if [ -z "${NVCC:-}" ]; then
  cache="${ABLATE_CUDA_CACHE:-$HOME/.cache/ablate-cuda}/nvcc"
  req="$root/deploy/cuda/nvcc-requirements.txt"
  if [ "$(cat "$cache/.installed-from" 2>/dev/null)" != "$(sha256sum "$req" | cut -d' ' -f1)" ]; then
    echo "[ptx] installing the pinned nvcc 13.0 wheels into $cache"
    rm -rf "$cache"
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --no-cache-dir \
      --require-hashes --target "$cache" -r "$req"
    sha256sum "$req" | cut -d' ' -f1 > "$cache/.installed-from"
  fi
  NVCC="$cache/nvidia/cu13/bin/nvcc"
fi
bin="$(dirname "$NVCC")"
"$NVCC" --version | grep -q 'release 13\.0,' || { echo "[ptx] $NVCC is not nvcc 13.0: $("$NVCC" --version | tail -1)" >&2; exit 1; }

fail=0
for cu in "$src"/*.cu; do
  name="$(basename "$cu" .cu)"
  t0=$(date +%s%N)
  # the flags of trainer/build.rs
  "$NVCC" -ptx -arch=sm_90a -O3 -std=c++17 -o "$out/$name.ptx" "$cu"
  version=$(sed -n 's/^\.version \([0-9.]*\)$/\1/p' "$out/$name.ptx")
  if ! awk -v v="$version" 'BEGIN { exit !(v + 0 <= 9.0) }'; then
    echo "FAIL $name: PTX ISA $version is newer than the CUDA 13.0 driver's 9.0" >&2; fail=1
  fi
  "$bin/ptxas" -arch=sm_90a -v -o /dev/null "$out/$name.ptx" > "$out/$name.ptxas.txt" 2>&1
  kernels=$(grep -c "Compiling entry function" "$out/$name.ptxas.txt" || true)
  spills=$(grep -E "[1-9][0-9]* bytes spill (stores|loads)" "$out/$name.ptxas.txt" || true)
  regs=$(sed -n 's/.*Used \([0-9]*\) registers.*/\1/p' "$out/$name.ptxas.txt" | sort -n | tail -1)
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  if [ -n "$spills" ]; then
    echo "FAIL $name: register spills" >&2; echo "$spills" >&2; fail=1
  else
    echo "PASS $name: $kernels kernels, PTX ISA $version, no spills, at most $regs registers per thread (${ms} ms)"
  fi
done
exit $fail
