#!/usr/bin/env bash
# Canary detection time: how long a regressing canary keeps its weight.
# Issue 11 scenarios 2 (TTFT regression: 800 ms injected prefill delay against
# a 600 ms ttftP99 objective), 3 (30% of the canary's requests answered 500,
# errorRate) and 4 (one sampled token in two corrupted: answers wrong, latency
# and errors fine; the quality gate), N runs each, interleaved, at
# analysis.interval 2 s, with steward-loadgen streaming through steward-router
# (2 streams, 8-token prompts and outputs) during every run.
#
#   bench/canary-detection.sh      # builds, runs, prints min / median / max per scenario
#
# Environment (all optional):
#   STEWARD_BENCH_RUNS=N              runs per scenario (default 5)
#   STEWARD_BENCH_SCENARIOS=LIST      any of ttft,5xx,quality (default all three)
#   BENCH_SKIP_BUILD=1                use the binaries already in target/release
#
# It runs the ignored test `bench::detection_bench` of operator/tests/canary.rs
# (operator/tests/canary/bench.rs) on the real local system: the local cluster,
# Prometheus scraping every 1 s, tiny real engines (`--torch-threads 1`), the
# operator in-process, the router following status.traffic. Per run:
#   onset    = the first bad response of the canary's engine: its
#              steward_engine_faults_injected_total first above 0, read every
#              100 ms (the first delayed request, the first 500, the first
#              corrupted token of a golden-set answer);
#   weight 0 = the first status read (every 100 ms) with the canary rolled
#              back (the rollback writes weight 0 in the same status write).
# It also prints the time from the canary's first weight to weight 0 (the
# quality gate decides before step 1: a wrong-answer canary never gets
# weight), requests sent / failed / streams cut over each run (scenario 3's
# failed requests are the canary's injected 500s), and the load average.
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/cluster-bench.sh" canary canary-detection bench::detection_bench
