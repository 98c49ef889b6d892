#!/usr/bin/env bash
# Where ablate's CUDA step time goes (run on the GPU machine after deploy/cuda/build.sh, carry
# [".gpu"]):   bash .gpu/profile.sh
# 1. `ablate bench train` on mini and prx-small with the forward+backward / optimizer split;
# 2. if Nsight Systems (nsys) is installed, a kernel summary of 2 prx-small steps: the kernels
#    that take the most GPU time.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."
source .gpu/device-env.sh
export RUST_LIB_BACKTRACE=0
A=.gpu/ablate
echo "== split"
timeout 60 $A bench train --device cuda --preset mini --image-tokens 256 --batch 64 --arms baseline --precision bf16_mixed --steps 3 --warmup 2
timeout 80 $A bench train --device cuda --preset prx-small --image-tokens 256 --batch 8 --arms baseline --precision bf16_mixed --steps 3 --warmup 2
timeout 60 $A bench train --device cuda --preset prx-small --image-tokens 256 --batch 8 --arms baseline --precision fp32 --steps 3 --warmup 2
NSYS=$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys /usr/local/cuda/nsight-systems*/bin/nsys 2>/dev/null | head -1)
echo "== nsys: ${NSYS:-not installed}; ncu: $(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null || echo not installed)"
if [ -n "$NSYS" ]; then
  timeout 150 "$NSYS" profile --force-overwrite true --trace cuda -o /tmp/ablate-prof \
    $A bench train --device cuda --preset prx-small --image-tokens 256 --batch 8 --arms baseline --precision bf16_mixed --steps 2 --warmup 1 > /tmp/nsys.log 2>&1
  tail -3 /tmp/nsys.log
  timeout 90 "$NSYS" stats --report cuda_gpu_kern_sum --format csv /tmp/ablate-prof.nsys-rep 2>/dev/null \
    | python3 -c '
import csv, sys
rows = list(csv.reader(l for l in sys.stdin if l.count(",") > 4))
head, rows = rows[0], rows[1:]
i_pct, i_tot, i_n, i_name = head.index("Time (%)"), head.index("Total Time (ns)"), head.index("Instances"), head.index("Name")
print(f"{len(rows)} kernels; top 30 by GPU time:")
for r in rows[:30]:
    print(f"{float(r[i_pct]):6.1f}%  {int(r[i_tot])/1e6:9.1f} ms  {int(r[i_n]):7d}x  {r[i_name][:110]}")
'
  timeout 60 "$NSYS" stats --report cuda_api_sum --format csv /tmp/ablate-prof.nsys-rep 2>/dev/null | head -12
fi
