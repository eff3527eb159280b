#!/usr/bin/env bash
# Long request fuzzing of a real engine process (the CI test runs 300
# requests; this runs many more). Prints the counts by status, the raw-TCP
# abuse counts, panics and RSS before/after.
#
#   engine/bench/fuzz.sh [ITERATIONS] [SEED]      # default 20000, 13
set -euo pipefail
cd "$(dirname "$0")/../.."
source <(tools/setup.sh --print-env)
export STEWARD_FUZZ_ITERATIONS="${1:-20000}" STEWARD_FUZZ_SEED="${2:-13}"
echo "load average before: $(cat /proc/loadavg)"
timeout 3600 cargo test --release -p steward-engine --test robustness \
  fuzzed_requests_never_panic_never_5xx_and_memory_stays_bounded -- --nocapture
echo "load average after: $(cat /proc/loadavg)"
