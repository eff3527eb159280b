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
exec "$(dirname "${BASH_SOURCE[0]}")/autoscale-bench.sh" scale-flap bench::flap_bench
