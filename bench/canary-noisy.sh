#!/usr/bin/env bash
# Noisy but healthy canary (issue 11 scenario 5): a canary slower and jittery
# but inside its objectives, run N times: the count of false rollbacks (must
# be 0) and the time from apply to promotion.
#
#   bench/canary-noisy.sh          # builds, runs, prints the count and min / median / max
#
# Environment (all optional):
#   STEWARD_NOISY_RUNS=N       runs (default 10)
#   STEWARD_NOISY_ARGS="..."   the canary engine's fault flags (default
#                              "--fault-token-jitter 40ms --fault-prefill-delay 150ms":
#                              up to 40 ms more after every decode step, 150 ms
#                              more before every first token)
#   BENCH_SKIP_BUILD=1         use the binaries already in target/release
#
# It runs the ignored test `bench::noisy_bench` of operator/tests/canary.rs
# (operator/tests/canary/bench.rs) on the real local system (same set-up as
# bench/canary-detection.sh). The canary walks 30% (8 s) and 60% (8 s) at
# analysis.interval 2 s, judged by rollbackOn any of ttftP99 (600 ms), itlP99
# (150 ms), errorRate, latencySpike and errorRise, with steward-loadgen
# streaming through the router; after each run a clean revision with
# `steps: []` becomes the stable again, so each noisy canary is compared with a
# clean one.
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/cluster-bench.sh" canary canary-noisy bench::noisy_bench
