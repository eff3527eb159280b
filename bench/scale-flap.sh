#!/usr/bin/env bash
# Flapping: load oscillating around the autoscaling target for a bounded time;
# counts scale events and checks them against the documented bound
# (docs/operator.md, "Flapping"): events <= 2*floor(T/scaleInAfter) + (max - min).
#
#   bench/scale-flap.sh            # builds, runs five minutes, prints the count
#
# Environment (all optional):
#   STEWARD_FLAP_SECS=N             how long the load oscillates (default 300)
#   STEWARD_FLAP_PERIOD=N           seconds per oscillation (default 60)
#   STEWARD_FLAP_LOW=N / _HIGH=N    streams at the trough / at the peak
#                                   (default 16 / 36: two pods at about 45% / 90%
#                                   KV usage; three at about 30% / 65%)
#   STEWARD_FLAP_SCALE_IN_AFTER=N   the object's scaleInAfter in seconds (default 30)
#   BENCH_SKIP_BUILD=1              use the binaries already in target/release
#
# It runs the ignored test `bench::flap_bench` of operator/tests/autoscale.rs on
# the real local system (same set-up as bench/scale-out.sh; object
# `replicas {min: 2, max: 4, warm: 1}`): a base load of LOW streams for the whole
# time and a burst of HIGH-LOW more streams for the first half of every period,
# all through steward-router. It prints the scale-outs, scale-ins, the serving
# count over time and the bound. The pure decision is also pinned against
# flapping by the unit tests in operator/src/autoscale/simulation.rs (CI).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck disable=SC1090
source <(tools/setup.sh --print-env)
export STEWARD_BIN_DIR="$ROOT/target/release"
if [[ -z "${BENCH_SKIP_BUILD:-}" ]]; then
  cargo build --release -p steward-engine -p steward-router -p steward-loadgen -p steward-e2e --bins
fi
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; load average at start: $(cat /proc/loadavg)"
LOG="$ROOT/target/bench/scale-flap-$(date -u +%Y%m%dT%H%M%SZ).log"
mkdir -p "$(dirname "$LOG")"
echo "full output: $LOG"
timeout 3600 cargo test --release -p steward-operator --test autoscale -- \
  --ignored --exact bench::flap_bench --nocapture 2>&1 | tee "$LOG" | grep -E '^\[(bench|autoscale)\]|^BENCH|panicked|test result'
echo "load average at end: $(cat /proc/loadavg)"
