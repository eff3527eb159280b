#!/usr/bin/env bash
# Time from fault onset to Firing: how long the operator takes to mark a
# revision's TTFT leaf Firing in status.alarms once load reaches a revision
# whose engine has an injected 800 ms prefill delay, at analysis interval
# 2 s and at the default 15 s.
#
#   bench/signals-detection.sh            # builds, runs, prints min / median / max
#
# Environment (all optional):
#   STEWARD_BENCH_RUNS=N           runs per interval (default 5)
#   STEWARD_BENCH_INTERVALS=LIST   analysis intervals (default "2s,15s")
#   BENCH_SKIP_BUILD=1             use the binaries already in target/release
#
# It runs the ignored test `detection_time` of operator/tests/signals.rs on
# the real local system (local cluster, Prometheus scraping every 1 s, tiny
# real engines, steward-loadgen, the operator in-process); see that file's
# header for how two revisions are kept serving. Onset = load starts reaching
# the slow revision; Firing = the first status read (every 100 ms) showing
# its ttftP99 leaf Firing. Between runs the load stops and the leaf is left
# to go back to unknown, so each run starts cold. The load average is
# printed with every run: on a shared machine absolute figures are noisy.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck disable=SC1090
source <(tools/setup.sh --print-env)
export STEWARD_BIN_DIR="$ROOT/target/release"
if [[ -z "${BENCH_SKIP_BUILD:-}" ]]; then
  cargo build --release -p steward-engine -p steward-loadgen -p steward-e2e --bins
fi
echo "load average at start: $(cat /proc/loadavg)"
timeout 3600 cargo test --release -p steward-operator --test signals -- \
  --ignored --exact detection_time --nocapture 2>&1 | grep -E '^\[(bench|signals)\]|^BENCH|panicked|test result'
echo "load average at end: $(cat /proc/loadavg)"
