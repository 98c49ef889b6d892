#!/usr/bin/env bash
# Renders a sweep's report.html in headless Chromium and saves a screenshot, to check that it
# looks right (docs/img/report-quick.png comes from here; CI runs it on its own short sweep).
#   bash scripts/report-screenshot.sh RUN_DIR OUT.png [WIDTH] [HEIGHT]
# RUN_DIR: the --out folder of `ablate run` (its report.html is written first if missing).
# Needs: chromium (Debian: apt-get install -y chromium), target/release/ablate or ABLATE=.
set -euo pipefail
dir=${1:?usage: report-screenshot.sh RUN_DIR OUT.png [WIDTH] [HEIGHT]}
out=${2:?usage: report-screenshot.sh RUN_DIR OUT.png [WIDTH] [HEIGHT]}
width=${3:-1280}
height=${4:-3000}
ABLATE=${ABLATE:-target/release/ablate}
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
[[ -n $browser ]] || { echo "report-screenshot: no chromium found (apt-get install -y chromium)" >&2; exit 1; }
[[ -f $dir/report.html ]] || "$ABLATE" report "$dir"
html=$(realpath "$dir/report.html")
rm -f "$out"
# --no-sandbox: CI runs as root; the page is a local file with no scripts
timeout 120 "$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars \
  --window-size="$width,$height" --screenshot="$(realpath -m "$out")" "file://$html" 2>/dev/null
[[ -s $out ]] || { echo "report-screenshot: chromium wrote no screenshot" >&2; exit 1; }
python3 - "$out" <<'PY'
import struct, sys
with open(sys.argv[1], 'rb') as f:
    head = f.read(24)
assert head[:8] == b'\x89PNG\r\n\x1a\n', 'not a PNG'
w, h = struct.unpack('>II', head[16:24])
print(f'{sys.argv[1]}: {w}x{h} PNG')
PY
