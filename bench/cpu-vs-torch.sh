#!/usr/bin/env bash
# ablate's CPU training step next to the same step in PyTorch eager, both pinned to the same
# cores with the same thread count, f32, forward + backward + AdamW. Prints one table:
#   row | params (ablate, torch) | tokens (image+text) | batch | samples/s (ablate, PyTorch) | ablate / PyTorch
#
# Rows: ablate's real `tiny` preset, and the sizes of issue 4 (hidden x depth 128x6, 192x8,
# 256x8 at 64 image + 32 text tokens, batch 32; 128x6 at 256+32 tokens, batch 16). The custom
# sizes need `ablate bench train` options for width, depth, heads and text tokens; the script
# reads `ablate bench train --help`, uses --hidden/--depth/--heads/--text-tokens when all are
# listed, and otherwise runs only the PyTorch side of those rows and says which options are
# missing. PyTorch always takes its shapes from ablate's own `bench-json` line when ablate ran,
# so the parameter counts are checked, not assumed.
#
# Needs: target/release/ablate (cargo build --release), python3 with torch
# (`pip install torch`; large, so not part of CI or the default setup), taskset (util-linux).
#
# Settings (environment):
#   CPUS=0,1        cores for both (taskset -c); THREADS defaults to their count
#   THREADS=N       RAYON_NUM_THREADS for ablate, torch.set_num_threads(N) for PyTorch
#   STEPS=3 WARMUP=1  timed / untimed steps per run
#   TINY_BATCH=32   batch of the `tiny` row
#   ABLATE=target/release/ablate  PYTHON=python3
#   ROWS="tiny 128x6 192x8 256x8 128x6-256"   which rows to run
#   ABLATE_FUSED=0  passed through to ablate (composed ops instead of its fused CPU kernels)
# Usage: bash bench/cpu-vs-torch.sh 2>&1 | tee cpu-vs-torch.out
set -uo pipefail

cd "$(dirname "$0")/.."
CPUS=${CPUS:-0,1}
if [[ -z ${THREADS:-} ]]; then
  THREADS=0
  IFS=, read -ra parts <<<"$CPUS"
  for p in "${parts[@]}"; do
    if [[ $p == *-* ]]; then THREADS=$((THREADS + ${p#*-} - ${p%-*} + 1)); else THREADS=$((THREADS + 1)); fi
  done
fi
STEPS=${STEPS:-3}
WARMUP=${WARMUP:-1}
TINY_BATCH=${TINY_BATCH:-32}
ABLATE=${ABLATE:-target/release/ablate}
PYTHON=${PYTHON:-python3}
ROWS=${ROWS:-tiny 128x6 192x8 256x8 128x6-256}

die() { echo "cpu-vs-torch: $*" >&2; exit 1; }
command -v taskset >/dev/null || die "taskset not found (util-linux); it pins both runs to CPUS=$CPUS"
[[ -x $ABLATE ]] || die "$ABLATE not found: build it with cargo build --release (or set ABLATE=)"
"$PYTHON" -c "import torch" 2>/dev/null || die "$PYTHON cannot import torch: pip install torch (CPU is enough), or set PYTHON="
taskset -c "$CPUS" true 2>/dev/null || die "taskset -c $CPUS failed: not cores of this machine? (set CPUS=)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# row name, hidden, depth, heads, image tokens, text tokens, batch (tiny: ablate's preset as is)
row_spec() {
  case $1 in
    tiny) echo "tiny - - - - - $TINY_BATCH" ;;
    128x6) echo "128x6 128 6 4 64 32 32" ;;
    192x8) echo "192x8 192 8 6 64 32 32" ;;
    256x8) echo "256x8 256 8 8 64 32 32" ;;
    128x6-256) echo "128x6-256 128 6 4 256 32 16" ;;
    *) die "unknown row $1 (known: tiny 128x6 192x8 256x8 128x6-256)" ;;
  esac
}

help=$("$ABLATE" bench train --help 2>&1)
missing=()
for opt in --hidden --depth --heads --text-tokens; do
  grep -qE -- "(^|[[:space:]])$opt([[:space:]=]|\$)" <<<"$help" || missing+=("$opt")
done

echo "== cpu-vs-torch: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "host: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) cores online; pinned: taskset -c $CPUS, $THREADS threads each"
echo "ablate: $ABLATE ($(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo '+dirty tree'), binary built $(date -u -r "$ABLATE" +%Y-%m-%dT%H:%M:%SZ)), RAYON_NUM_THREADS=$THREADS, ABLATE_FUSED=${ABLATE_FUSED:-unset (fused kernels on)}"
echo "torch: $("$PYTHON" -c 'import torch; print(torch.__version__)') eager, fp32, SDPA, torch.set_num_threads($THREADS)"
echo "both: f32, forward + backward + AdamW (grad clip 0.2), $STEPS timed steps after $WARMUP warm-up, synthetic batches"
if ((${#missing[@]})); then
  echo "ablate bench train lacks ${missing[*]}: custom hidden x depth rows run on PyTorch only"
fi
echo

for row in $ROWS; do
  read -r name hidden depth heads itok ttok batch <<<"$(row_spec "$row")"
  a_json=$work/$name.ablate
  t_json=$work/$name.torch
  note=""
  ablate_args=(bench train --device cpu --arms baseline --precision fp32 --json --batch "$batch" --steps "$STEPS" --warmup "$WARMUP")
  if [[ $name == tiny ]]; then
    ablate_args+=(--preset tiny)
  elif ((${#missing[@]} == 0)); then
    ablate_args+=(--preset tiny --hidden "$hidden" --depth "$depth" --heads "$heads" --image-tokens "$itok" --text-tokens "$ttok")
  else
    ablate_args=()
    note="ablate not run: \`ablate bench train\` has no ${missing[*]} options (only --preset tiny|mini|prx-small; the model shape is not settable from the command line)"
  fi

  if ((${#ablate_args[@]})); then
    echo "-- $name: RAYON_NUM_THREADS=$THREADS taskset -c $CPUS $ABLATE ${ablate_args[*]}"
    RAYON_NUM_THREADS=$THREADS taskset -c "$CPUS" "$ABLATE" "${ablate_args[@]}" 2>&1 | tee "$a_json"
    rc=${PIPESTATUS[0]}
    if ((rc != 0)) || ! grep -q '^bench-json ' "$a_json"; then
      note="ablate failed (exit $rc), see its output above"
      rm -f "$a_json"
    fi
  fi

  if [[ -f $a_json ]]; then
    torch_args=(--threads "$THREADS" --steps "$STEPS" --warmup "$WARMUP" --row "$name" --ablate-json "$a_json")
  elif [[ $name == tiny ]]; then
    torch_args=(--threads "$THREADS" --steps "$STEPS" --warmup "$WARMUP" --row "$name" --preset tiny --batch "$batch")
  else
    torch_args=(--threads "$THREADS" --steps "$STEPS" --warmup "$WARMUP" --row "$name" --hidden "$hidden" --depth "$depth"
      --heads "$heads" --image-tokens "$itok" --text-tokens "$ttok" --batch "$batch")
  fi
  echo "-- $name: OMP_NUM_THREADS=$THREADS taskset -c $CPUS $PYTHON bench/torch_cpu_reference.py ${torch_args[*]}"
  OMP_NUM_THREADS=$THREADS taskset -c "$CPUS" "$PYTHON" bench/torch_cpu_reference.py "${torch_args[@]}" 2>&1 | tee "$t_json"
  rc=${PIPESTATUS[0]}
  if ((rc == 3)); then
    note="${note:+$note; }PARAMETER COUNT MISMATCH between ablate and PyTorch"
  elif ((rc != 0)) || ! grep -q '^torch-cpu-json ' "$t_json"; then
    note="${note:+$note; }PyTorch failed (exit $rc), see its output above"
  fi
  echo "$note" >"$work/$name.note"
  echo
done

ROWS="$ROWS" "$PYTHON" - "$work" <<'EOF'
import json, os, sys
work = sys.argv[1]

def line(path, prefix):
    try:
        for l in open(path):
            if l.startswith(prefix):
                return json.loads(l[len(prefix):])
    except FileNotFoundError:
        pass
    return None

rows, notes = [], []
for row in os.environ["ROWS"].split():
    a = line(f"{work}/{row}.ablate", "bench-json ")
    t = line(f"{work}/{row}.torch", "torch-cpu-json ")
    src = a or t or {}
    shape = f"{src['denoiser']['hidden']}x{src['denoiser']['depth']}" if a else (f"{t['hidden']}x{t['depth']}" if t else "?")
    tokens = f"{src['image_tokens']}+{src['text_tokens']}" if src else "?"
    a_sps, t_sps = (a or {}).get("samples_per_s"), (t or {}).get("samples_per_s")
    rows.append([
        row, shape,
        f"{a['params']:,}" if a else "not run", f"{t['params']:,}" if t else "not run",
        tokens, str(src.get("batch", "?")),
        f"{a_sps:.2f}" if a_sps else "-", f"{t_sps:.2f}" if t_sps else "-",
        f"{a_sps / t_sps:.2f}x" if a_sps and t_sps else "-",
    ])
    note = open(f"{work}/{row}.note").read().strip() if os.path.exists(f"{work}/{row}.note") else "not run"
    if a and t and a["params"] != t["params"]:
        note = (note + "; " if note else "") + f"params differ: ablate {a['params']} vs torch {t['params']}"
    if note:
        notes.append(f"{row}: {note}")

head = ["row", "hidden x depth", "params ablate", "params torch", "tokens (img+txt)", "batch",
        "ablate samples/s", "PyTorch samples/s", "ablate / PyTorch"]
print("| " + " | ".join(head) + " |")
print("|" + "|".join("---" for _ in head) + "|")
for r in rows:
    print("| " + " | ".join(r) + " |")
if notes:
    print()
    for n in notes:
        print("- " + n)
EOF
