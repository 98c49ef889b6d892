#!/usr/bin/env bash
# NCCL through the coordinator's rendezvous, on the GPU machine: one coordinator, one worker
# holding every visible GPU, and a short `tiny` job whose world size is the number of GPUs. On a
# one-GPU machine (world size 1) it runs rank 0's unique id through the rendezvous, the
# communicator's creation and its first device all-reduce (the probe); the gradient buckets
# and the initial broadcast need world size 2 or more (a multi-GPU machine). Run by
# device-check.sh (copied to
# .gpu/nccl-rendezvous.sh by build.sh); by hand, from the repository root on the GPU machine:
#
#   source .gpu/device-env.sh && bash .gpu/nccl-rendezvous.sh
#
# Prints the job as JSON and the ranks' logs; exits 0 only if the job succeeded and every rank
# exchanged its gradients over NCCL. Knobs: ABLATE (binary, .gpu/ablate), STEPS (20), WORLD
# (number of GPUs), NCCL_DEBUG (e.g. INFO) passes through to the ranks. The script's own
# plumbing runs on a CPU machine too: DEVICES=cpu:2 WORLD=2 EXPECT="the TCP ring" ABLATE=...
set -uo pipefail
BIN="${ABLATE:-.gpu/ablate}"
STEPS="${STEPS:-20}"
EXPECT="${EXPECT:-NCCL}"
if [ -n "${DEVICES:-}" ]; then
  devices=$DEVICES
  WORLD="${WORLD:-1}"
else
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
  [ "${gpus:-0}" -ge 1 ] || { echo "nccl-rendezvous: no GPU visible (nvidia-smi -L)" >&2; exit 1; }
  WORLD="${WORLD:-$gpus}"
  devices="cuda:$(seq -s, 0 $((gpus - 1)))"
fi
dir=$(mktemp -d /tmp/nccl-rendezvous.XXXX)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url="http://127.0.0.1:$port"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; }
trap cleanup EXIT

"$BIN" coordinator --listen "127.0.0.1:$port" --metrics-listen 127.0.0.1:0 --store "$dir/coordinator.redb" --runs "$dir/runs" \
  --admin-token-file "$dir/admin.token" > "$dir/coordinator.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do grep -q 'coordinator listening' "$dir/coordinator.log" && break; sleep 0.2; done
# every call carries a token (docs/security.md): the admin's for the CLI, the worker's own
export ABLATE_TOKEN_FILE="$dir/admin.token"
"$BIN" token create gpu-worker --role worker --worker-id gpu-worker --out "$dir/worker.token" --coordinator "$url"
"$BIN" worker --coordinator "$url" --devices "$devices" --id gpu-worker --work-dir "$dir/worker" --collective-timeout-s 60 \
  --token-file "$dir/worker.token" > "$dir/worker.log" 2>&1 &
pids+=($!)

sed -e "s/^steps = 2000$/steps = $STEPS/" -e 's/^samples = 64 .*/samples = 0/' -e 's/^count = 16$/count = 2/' \
  examples/train-tiny.toml > "$dir/job.toml"
id=$("$BIN" submit "$dir/job.toml" --world-size "$WORLD" --coordinator "$url" --output json | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])') \
  || { echo "nccl-rendezvous: submit failed"; cat "$dir"/*.log; exit 1; }
echo "submitted $id: world size $WORLD on $devices, $STEPS steps"
state=""
for _ in $(seq 240); do
  state=$("$BIN" jobs show "$id" --coordinator "$url" --output json | python3 -c 'import json, sys; print(json.load(sys.stdin)["state"])')
  case "$state" in succeeded|failed|cancelled) break ;; esac
  sleep 0.5
done
"$BIN" jobs show "$id" --coordinator "$url" --output json
echo "---- logs"
"$BIN" logs "$id" --coordinator "$url" | tee "$dir/job.log" | grep -v '^\[rank [0-9]*\] step' | tail -40
ranks=$(grep -c "gradients over $EXPECT" "$dir/job.log" || true)
echo "---- job $id: $state; ranks exchanging gradients over $EXPECT: $ranks of $WORLD"
[ "$state" = succeeded ] && [ "$ranks" -eq "$WORLD" ] || exit 1
if [ "$EXPECT" = NCCL ]; then
  ready=$(grep -c 'nccl: rank .* ready' "$dir/job.log" || true)
  echo "---- NCCL communicators ready (rendezvous id, init, first device all-reduce checked): $ready of $WORLD"
  [ "$ready" -eq "$WORLD" ] || exit 1
fi
