#!/usr/bin/env bash
# The autoscaler's cold-start rule under rising load, against a step, in one
# run: engines that take STEWARD_BENCH_MODEL_LOAD_SECS (default 20) to load
# (`--fault-load-delay`: the engine's own steward_engine_cold_start_seconds
# says so, as a real model loading onto a GPU would), `replicas {min: 2,
# max: 3, warm: 0}` (no warm pool to hide the cold start).
#
#   bench/scale-ramp.sh
#
# Environment (all optional):
#   STEWARD_BENCH_MODEL_LOAD_SECS=N  model load time (default 20)
#   STEWARD_RAMP_STEP=N              streams added per stage (default 4)
#   STEWARD_RAMP_EVERY=N             seconds between stages (default 6)
#   STEWARD_RAMP_TOP=N               streams at the top (default 36)
#   STEWARD_RAMP_HOLD=N              seconds held at the top (default 60)
#   STEWARD_BENCH_RUNS=N             ramp/step pairs (default 1)
#   BENCH_SKIP_BUILD=1               use the binaries already in target/release
#
# Case `ramp`: the load rises stage by stage; the rule projects utilisation
# one cold start ahead at its slope and starts the pod the projection needs
# as a warm pod before the reading reaches 70%. Case `step`: the same load at
# once (no slope to read ahead of the crossing): the baseline cold start.
# Per case, seconds from the start of the load: when status.capacity first
# kept an early warm pod, when a reading reached its target, when the added
# pod took its first request; crossing -> serving is the headline.
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/autoscale-bench.sh" scale-ramp bench::ramp_bench
