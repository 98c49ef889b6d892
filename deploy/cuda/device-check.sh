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
# and batches; 5. a side-by-side table. Every stage is bounded by `timeout` and the whole
# script by a budget (DEVICE_CHECK_BUDGET_S, default 500 s): a stage that would start too
# late is skipped and says so. Logs also go to $OUT/device-check/ when $OUT is set.
#
# Knobs: MINI_BATCH (64), PRX_BATCH (8: candle keeps ~3 GB of activations per prx-small sample,
# measured on the CPU with the composed ops; 16 would not fit 80 GB), BENCH_STEPS (5), BENCH_WARMUP (2), IMAGE_TOKENS (256),
# PY (/opt/torch/.venv/bin/python), SKIP_COMPILE=1, SKIP_SELFCHECK=1.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
[ -f "$root/bench/torch_reference.py" ] || root="$(cd "$here/../.." && pwd)" # run from deploy/cuda
cd "$root"
GPU="$root/.gpu"
LOG="${OUT:-/tmp}/device-check"
mkdir -p "$LOG"
PY="${PY:-/opt/torch/.venv/bin/python}"
MINI_BATCH="${MINI_BATCH:-64}"
PRX_BATCH="${PRX_BATCH:-8}"
STEPS="${BENCH_STEPS:-5}"
WARMUP="${BENCH_WARMUP:-2}"
TOKENS="${IMAGE_TOKENS:-256}"
BUDGET="${DEVICE_CHECK_BUDGET_S:-500}"
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
  local msg="rc $rc, $(( $(date +%s) - t0 ))s"
  [ "$rc" -eq 124 ] && msg="TIMED OUT after ${secs}s"
  SUMMARY+=("$name: $msg")
}

hdr "machine"
head -2 /etc/os-release 2>/dev/null; ldd --version 2>/dev/null | head -1; nproc
# shellcheck source=/dev/null
source "$GPU/device-env.sh"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
timeout 15 nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total,memory.used,clocks.max.sm,power.limit --format=csv 2>&1
timeout 10 nvidia-smi 2>&1 | head -20
ls -la "$GPU"
"$GPU/ablate" --version

if [ "${SKIP_SELFCHECK:-0}" != 1 ]; then
  stage selfcheck-cuda 110 "$GPU/ablate" selfcheck-cuda --device cuda
fi

# NCCL through the coordinator's rendezvous: coordinator + worker + a world-size-<GPUs> job
stage nccl-rendezvous 90 bash "$GPU/nccl-rendezvous.sh"

ABLATE_JSON="$LOG/ablate.jsonl"
: > "$ABLATE_JSON"
for pb in "mini:$MINI_BATCH:70" "prx-small:$PRX_BATCH:120"; do
  IFS=: read -r preset batch secs <<< "$pb"
  stage "ablate-$preset" "$secs" "$GPU/ablate" bench train --device cuda --preset "$preset" --image-tokens "$TOKENS" \
    --batch "$batch" --arms baseline --precision bf16_mixed --steps "$STEPS" --warmup "$WARMUP" --json
  grep '^bench-json ' "$LOG/ablate-$preset.log" >> "$ABLATE_JSON"
done

TORCH_ARGS=(bench/torch_reference.py --preset "mini:$MINI_BATCH,prx-small:$PRX_BATCH" --image-tokens "$TOKENS"
  --steps "$STEPS" --warmup "$WARMUP" --ablate-json "$ABLATE_JSON" --json)
stage torch-eager 90 "$PY" "${TORCH_ARGS[@]}" --mode eager
if [ "${SKIP_COMPILE:-0}" != 1 ]; then
  stage torch-compile 170 "$PY" "${TORCH_ARGS[@]}" --mode compile
fi

# a short real run on CUDA (fp32, the CPU study's config): loss curve, checkpoint, samples
rm -rf /tmp/train-tiny-cuda
stage train-tiny-cuda 60 "$GPU/ablate" train examples/train-tiny.toml --device cuda --steps 300 --out /tmp/train-tiny-cuda
"$PY" - /tmp/train-tiny-cuda/metrics.jsonl <<'EOF' 2>/dev/null
import json, sys
m = [json.loads(l) for l in open(sys.argv[1])]
mean = lambda v: sum(v) / len(v)
print(f"train-tiny on CUDA: mean MSE of steps 1-50 {mean([p['mse'] for p in m[:50]]):.3f}, of the last 50 {mean([p['mse'] for p in m[-50:]]):.3f}"
      f" (CPU, docs: 0.830 -> 0.169); {len(m)} steps")
EOF
ls -la /tmp/train-tiny-cuda 2>/dev/null
cp /tmp/train-tiny-cuda/{samples.png,samples.txt,metrics.jsonl} "$LOG/" 2>/dev/null   # not the 90 MB checkpoint

hdr "side by side (image tokens $TOKENS, bf16 autocast + fp32 master weights, AdamW, same batch)"
cat "$LOG"/ablate-*.log "$LOG"/torch-*.log 2>/dev/null | grep '^bench-json ' | sed 's/^bench-json //' > "$LOG/all.jsonl"
"$PY" - "$LOG/all.jsonl" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
order = {"ablate": 0, "torch-eager": 1, "torch-compile": 2}
rows.sort(key=lambda r: (r["preset"], order.get(r["impl"], 9)))
print(f"{'preset':<10} {'impl':<14} {'batch':>5} {'params':>13} {'step ms':>9} {'samples/s':>10} {'vs eager':>9} {'peak GiB':>9} {'TFLOP/step':>11} {'MFU %':>6}")
eager = {r["preset"]: r["samples_per_s"] for r in rows if r["impl"] == "torch-eager"}
for r in rows:
    rel = f"{r['samples_per_s'] / eager[r['preset']]:.2f}x" if r["preset"] in eager else "-"
    peak = "-" if r.get("peak_mem_bytes") is None else f"{r['peak_mem_bytes'] / 2**30:.2f}"
    mfu = "-" if r.get("mfu") is None else f"{100 * r['mfu']:.1f}"
    print(f"{r['preset']:<10} {r['impl']:<14} {r['batch']:>5} {r['params']:>13} {r['step_ms']:>9.1f} {r['samples_per_s']:>10.2f} {rel:>9} {peak:>9} {r['train_flops_per_step'] / 1e12:>11.2f} {mfu:>6}")
print(f"device: {rows[0]['device'] if rows else '?'}; MFU = model FLOPs (3x forward matmuls) / step time / 989 TFLOP/s")
EOF

hdr "summary"
printf '%s\n' "${SUMMARY[@]}"
echo "total $(( $(date +%s) - START ))s; logs in $LOG"
