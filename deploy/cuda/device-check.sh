#!/usr/bin/env bash
# The one script to run on the lent GPU machine (H100/H200, CUDA 13.0 driver, PyTorch venv at
# /opt/torch/.venv), after `bash deploy/cuda/build.sh` here has staged .gpu/ (this file is
# copied there as .gpu/run-device.sh). From the repository root on the device:
#
#   bash .gpu/run-device.sh          # device tool: carry [".gpu"], timeout_s 540
#
# 1. nvidia-smi; 2. `ablate selfcheck-cuda` (the CUDA tests: ops vs CPU forward+backward,
# CPU/CUDA loss parity in fp32 and bf16, loss falls and every parameter moves, NCCL at world
# size 1); 2b. nccl-rendezvous.sh (a job through coordinator, worker and NCCL); 3. `ablate bench train --device cuda` for mini and prx-small at 256 image tokens;
# 4. bench/torch_reference.py, eager and torch.compile, same shapes (taken from ablate's JSON)
# and batches; 4b. `ablate bench embed` (the CMMD and DINO-MMD networks at their released
# sizes, images/s); 5. a side-by-side table. Every stage is bounded by `timeout` and the whole
# script by a budget (DEVICE_CHECK_BUDGET_S, default 500 s): a stage that would start too
# late is skipped and says so. Logs also go to $OUT/device-check/ when $OUT is set.
#
# Dry run on a CPU machine (checks the script end to end before GPU time is spent on it):
#   cargo build --release -p ablate-cli && DRY_RUN=1 bash deploy/cuda/device-check.sh
# runs every stage with target/release/ablate on the CPU: selfcheck (the CPU against itself),
# the rendezvous over the TCP ring with two CPU ranks, the benchmark at `tiny` and `mini` with
# small batches, PyTorch only if the python has torch, a 40-step train-tiny, and the table.
#
# Knobs: MINI_BATCH (64), PRX_BATCH (8: candle keeps ~3 GB of activations per prx-small sample,
# measured on the CPU with the composed ops; 16 would not fit 80 GB), BENCH_STEPS (5), BENCH_WARMUP (2), IMAGE_TOKENS (256),
# PY (/opt/torch/.venv/bin/python), SKIP_COMPILE=1, SKIP_SELFCHECK=1, PRESETS ("preset:batch:timeout ..."),
# TINY_STEPS (300), DRY_RUN=1, ABLATE (the binary).
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
[ -f "$root/bench/torch_reference.py" ] || root="$(cd "$here/../.." && pwd)" # run from deploy/cuda
cd "$root"
GPU="$root/.gpu"
LOG="${OUT:-/tmp}/device-check"
mkdir -p "$LOG"
DRY="${DRY_RUN:-0}"
if [ "$DRY" = 1 ]; then
  BIN="${ABLATE:-$root/target/release/ablate}"
  DEV=cpu
  PY="${PY:-python3}"
  PRESETS="${PRESETS:-tiny:4:120 mini:2:300}"
  TINY_STEPS="${TINY_STEPS:-40}"
  EMBED_BATCH="${EMBED_BATCH:-1}"
  BUDGET="${DEVICE_CHECK_BUDGET_S:-1800}"
else
  BIN="${ABLATE:-$GPU/ablate}"
  DEV=cuda
  PY="${PY:-/opt/torch/.venv/bin/python}"
  PRESETS="${PRESETS:-mini:${MINI_BATCH:-64}:70 prx-small:${PRX_BATCH:-8}:120}"
  TINY_STEPS="${TINY_STEPS:-300}"
  EMBED_BATCH="${EMBED_BATCH:-16}"
  BUDGET="${DEVICE_CHECK_BUDGET_S:-500}"
fi
STEPS="${BENCH_STEPS:-5}"
WARMUP="${BENCH_WARMUP:-2}"
TOKENS="${IMAGE_TOKENS:-256}"
export RUST_LIB_BACKTRACE=0   # anyhow backtraces of a stripped binary say nothing
START=$(date +%s)
declare -a SUMMARY=()

hdr() { echo; echo "==================== $* (t+$(( $(date +%s) - START ))s, $(date +%T))"; }
# stage NAME SECONDS CMD...: runs CMD under timeout, tees to $LOG/NAME.log, records the outcome.
stage() {
  local name=$1 secs=$2; shift 2
  local left=$(( BUDGET - ($(date +%s) - START) ))
  hdr "$name (timeout ${secs}s)"
  if [ "$left" -lt 20 ]; then
    echo "SKIPPED $name: only ${left}s of the ${BUDGET}s budget left"
    SUMMARY+=("$name: skipped (budget)"); return
  fi
  [ "$secs" -gt "$left" ] && secs=$left
  local t0=$(date +%s)
  timeout --kill-after=10 "$secs" "$@" 2>&1 | tee "$LOG/$name.log"
  local rc=${PIPESTATUS[0]}
  local msg="PASS $name (rc 0, $(( $(date +%s) - t0 ))s)"
  [ "$rc" -ne 0 ] && msg="FAIL $name (rc $rc, $(( $(date +%s) - t0 ))s)"
  [ "$rc" -eq 124 ] && msg="FAIL $name (timed out after ${secs}s)"
  SUMMARY+=("$msg")
}

hdr "machine"
head -2 /etc/os-release 2>/dev/null; ldd --version 2>/dev/null | head -1; nproc
if [ "$DRY" = 1 ]; then
  echo "DRY RUN on the CPU with $BIN: every stage runs on device cpu; nothing here measures a GPU"
else
  # shellcheck source=/dev/null
  source "$GPU/device-env.sh"
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  timeout 15 nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total,memory.used,clocks.max.sm,power.limit --format=csv 2>&1
  timeout 10 nvidia-smi 2>&1 | head -20
  ls -la "$GPU"
fi
"$BIN" --version

if [ "${SKIP_SELFCHECK:-0}" != 1 ]; then
  # the CUDA tests: ops and every fused kernel at mini and prx-small shapes vs the CPU,
  # loss parity, loss falls, memory, NCCL at world size 1
  stage selfcheck-cuda 140 "$BIN" selfcheck-cuda --device "$DEV"
fi

# NCCL through the coordinator's rendezvous: coordinator + worker + a world-size-<GPUs> job
# (dry run: the same plumbing over the TCP ring with two CPU ranks)
if [ "$DRY" = 1 ]; then
  stage nccl-rendezvous 120 env DEVICES=cpu:2 WORLD=2 EXPECT="the TCP ring" ABLATE="$BIN" bash "$root/deploy/cuda/nccl-rendezvous.sh"
else
  stage nccl-rendezvous 90 bash "$GPU/nccl-rendezvous.sh"
fi

ABLATE_JSON="$LOG/ablate.jsonl"
: > "$ABLATE_JSON"
torch_presets=""
for pb in $PRESETS; do
  IFS=: read -r preset batch secs <<< "$pb"
  stage "ablate-$preset" "$secs" "$BIN" bench train --device "$DEV" --preset "$preset" --image-tokens "$TOKENS" \
    --batch "$batch" --arms baseline --precision bf16_mixed --steps "$STEPS" --warmup "$WARMUP" --json
  grep '^bench-json ' "$LOG/ablate-$preset.log" >> "$ABLATE_JSON"
  torch_presets="${torch_presets:+$torch_presets,}$preset:$batch"
done

TORCH_ARGS=(bench/torch_reference.py --preset "$torch_presets" --image-tokens "$TOKENS"
  --steps "$STEPS" --warmup "$WARMUP" --ablate-json "$ABLATE_JSON" --json)
if "$PY" -c 'import torch' 2>/dev/null; then
  stage torch-eager 90 "$PY" "${TORCH_ARGS[@]}" --mode eager
  if [ "${SKIP_COMPILE:-0}" != 1 ]; then
    stage torch-compile 170 "$PY" "${TORCH_ARGS[@]}" --mode compile
  fi
else
  hdr "torch"; echo "SKIPPED torch stages: $PY has no torch"; SUMMARY+=("torch: skipped (no torch)")
fi

# the device's own bf16 GEMM peak (cuBLAS through torch, 8192^3, best of 10), for the MFU
# column next to the nominal 989 TFLOP/s
if [ "$DRY" != 1 ] && "$PY" -c 'import torch' 2>/dev/null; then
  stage gemm-peak 60 "$PY" - <<'EOF'
import torch, time
n = 8192
a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
for _ in range(3):
    a @ b
torch.cuda.synchronize()
best = 0.0
for _ in range(10):
    t = time.perf_counter(); a @ b; torch.cuda.synchronize()
    best = max(best, 2 * n ** 3 / (time.perf_counter() - t) / 1e12)
print(f"gemm-peak-tflops {best:.1f}")
EOF
fi

# a short real run (fp32, the CPU study's config): loss curve, checkpoint, samples
rm -rf /tmp/train-tiny-cuda
stage train-tiny-cuda 90 "$BIN" train examples/train-tiny.toml --device "$DEV" --steps "$TINY_STEPS" --out /tmp/train-tiny-cuda
# the loss curve against the CPU's (docs/performance.md: mean MSE of steps 1-50 0.830, of the
# last 50 0.169, 300 steps of examples/train-tiny.toml on the CPU); PASS within 0.02 each
curve=$("$PY" - /tmp/train-tiny-cuda/metrics.jsonl "$TINY_STEPS" <<'EOF' 2>&1
import json, sys
m = [json.loads(l) for l in open(sys.argv[1])]
steps = int(sys.argv[2])
mean = lambda v: sum(v) / len(v)
first, last = mean([p['mse'] for p in m[:50]]), mean([p['mse'] for p in m[-50:]])
line = f"mean MSE of steps 1-50 {first:.3f}, of the last 50 {last:.3f} (CPU: 0.830 -> 0.169); {len(m)} steps"
if steps != 300 or len(m) != 300:
    print(f"SKIP train-tiny-curve: {line} (the CPU reference is for 300 steps)")
elif abs(first - 0.830) <= 0.02 and abs(last - 0.169) <= 0.02:
    print(f"PASS train-tiny-curve: {line}")
else:
    print(f"FAIL train-tiny-curve: {line}")
EOF
)
echo "$curve"
SUMMARY+=("$(echo "$curve" | tail -1 | cut -c1-200)")
ls -la /tmp/train-tiny-cuda 2>/dev/null
cp /tmp/train-tiny-cuda/{samples.png,samples.txt,metrics.jsonl} "$LOG/" 2>/dev/null   # not the 90 MB checkpoint

# the CMMD and DINO-MMD networks at their released sizes (deterministic weights): images/s
stage embed-dino 60 "$BIN" bench embed --network dino --device "$DEV" --batch "$EMBED_BATCH" --size 256 --batches 2
stage embed-clip 90 "$BIN" bench embed --network clip --device "$DEV" --batch "$EMBED_BATCH" --size 256 --batches 2

hdr "side by side (image tokens $TOKENS, bf16 autocast + fp32 master weights, AdamW, same batch)"
cat "$LOG"/ablate-*.log "$LOG"/torch-*.log 2>/dev/null | grep '^bench-json ' | sed 's/^bench-json //' > "$LOG/all.jsonl"
peak=$(sed -n 's/^gemm-peak-tflops //p' "$LOG/gemm-peak.log" 2>/dev/null | tail -1)
"$PY" - "$LOG/all.jsonl" "${peak:-0}" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
peak = float(sys.argv[2])
order = {"ablate": 0, "torch-eager": 1, "torch-compile": 2}
rows.sort(key=lambda r: (r["preset"], order.get(r["impl"], 9)))
print(f"{'preset':<10} {'impl':<14} {'batch':>5} {'params':>13} {'step ms':>9} {'samples/s':>10} {'vs eager':>9} {'peak GiB':>9} {'TFLOP/step':>11} {'MFU %':>6} {'of meas.':>8}")
eager = {r["preset"]: r["samples_per_s"] for r in rows if r["impl"] == "torch-eager"}
for r in rows:
    rel = f"{r['samples_per_s'] / eager[r['preset']]:.2f}x" if r["preset"] in eager else "-"
    peak_mem = "-" if r.get("peak_mem_bytes") is None else f"{r['peak_mem_bytes'] / 2**30:.2f}"
    mfu = "-" if r.get("mfu") is None else f"{100 * r['mfu']:.1f}"
    measured = "-" if not peak else f"{100 * r['train_flops_per_step'] / (r['step_ms'] / 1e3) / (peak * 1e12):.1f}"
    print(f"{r['preset']:<10} {r['impl']:<14} {r['batch']:>5} {r['params']:>13} {r['step_ms']:>9.1f} {r['samples_per_s']:>10.2f} {rel:>9} {peak_mem:>9} {r['train_flops_per_step'] / 1e12:>11.2f} {mfu:>6} {measured:>8}")
print(f"device: {rows[0]['device'] if rows else '?'}; MFU = model FLOPs (3x forward matmuls) / step time / 989 TFLOP/s; 'of meas.' against the measured bf16 GEMM peak ({peak:.0f} TFLOP/s)" if peak else f"device: {rows[0]['device'] if rows else '?'}; MFU = model FLOPs (3x forward matmuls) / step time / 989 TFLOP/s")
EOF

hdr "summary"
printf '%s\n' "${SUMMARY[@]}"
echo "total $(( $(date +%s) - START ))s; logs in $LOG"
printf '%s\n' "${SUMMARY[@]}" | grep -q '^FAIL' && exit 1
exit 0
