#!/usr/bin/env bash
# Runs one ignored benchmark test of an operator cluster-test binary on the
# real local system and keeps its full output: the shared part of
# bench/scale-out.sh, bench/scale-flap.sh (through bench/autoscale-bench.sh),
# bench/canary-detection.sh and bench/canary-noisy.sh; see those for what
# each measures.
#
#   bench/cluster-bench.sh TEST_BINARY LOG_NAME TEST_NAME
#       # e.g. canary canary-detection bench::detection_bench
#
# BENCH_SKIP_BUILD=1 uses the binaries already in target/release.
set -euo pipefail
BINARY=${1:?usage: bench/cluster-bench.sh TEST_BINARY LOG_NAME TEST_NAME}
NAME=${2:?usage: bench/cluster-bench.sh TEST_BINARY LOG_NAME TEST_NAME}
TEST=${3:?usage: bench/cluster-bench.sh TEST_BINARY LOG_NAME TEST_NAME}
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck disable=SC1090
source <(tools/setup.sh --print-env)
export STEWARD_BIN_DIR="$ROOT/target/release"
if [[ -z "${BENCH_SKIP_BUILD:-}" ]]; then
  cargo build --release -p steward-engine -p steward-router -p steward-loadgen -p steward-e2e --bins
fi
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; load average at start: $(cat /proc/loadavg)"
LOG="$ROOT/target/bench/$NAME-$(date -u +%Y%m%dT%H%M%SZ).log"
mkdir -p "$(dirname "$LOG")"
echo "full output: $LOG"
timeout 3600 cargo test --release -p steward-operator --test "$BINARY" -- \
  --ignored --exact "$TEST" --nocapture 2>&1 | tee "$LOG" | grep -E "^\[(bench|$BINARY)\]|^BENCH|panicked|test result"
echo "load average at end: $(cat /proc/loadavg)"
