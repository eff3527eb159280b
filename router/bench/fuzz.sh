#!/usr/bin/env bash
# Router request fuzzing, the long version (not a test): the same cases as
# router/tests/fuzz.rs (random and mutated JSON, huge fields, bad UTF-8,
# deep nesting, broken framing, header abuse, slowloris), many more of them,
# against the real steward-router binary on loopback.
#
#   router/bench/fuzz.sh [CASES] [SEED]      # default 50000 cases, seed 13
#
# Prints the counts per case kind and answer, peak RSS, and writes
# target/bench/fuzz/report-<seed>.json. Fails (non-zero) on a panic, a 5xx
# for a client mistake, a hang, or unbounded memory.
set -euo pipefail
cd "$(dirname "$0")/../.."
CASES=${1:-50000}
SEED=${2:-13}
OUT=target/bench/fuzz
mkdir -p "$OUT"
echo "load average before: $(cat /proc/loadavg)"
STEWARD_FUZZ_CASES=$CASES STEWARD_FUZZ_SEED=$SEED STEWARD_FUZZ_REPORT="$PWD/$OUT/report-$SEED.json" \
  timeout 3600 cargo test --release -p steward-router --test fuzz -- --nocapture
echo "load average after: $(cat /proc/loadavg)"
echo "report: $OUT/report-$SEED.json"
