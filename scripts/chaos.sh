#!/usr/bin/env bash
# The chaos harness's long run (docs/reliability.md): FAULTS seeded faults (default 60) over
# rounds of world-size-2 sweeps on 3 workers with a shared checkpoint store, then the figures
# (faults by kind, jobs lost / hung / run twice, resume times, restarts by class).
#   scripts/chaos.sh [FAULTS] [SEED]
# CI runs the short version (6 faults, one of each kind) inside `cargo test --workspace`.
set -euo pipefail
cd "$(dirname "$0")/.."
export ABLATE_CHAOS_FAULTS="${1:-60}" ABLATE_CHAOS_SEED="${2:-7}"
exec cargo test -q -p ablate-cli --test chaos -- --nocapture
