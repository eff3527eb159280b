#!/usr/bin/env bash
# Runs one ignored benchmark test of operator/tests/autoscale.rs on the real
# local system (bench/scale-out.sh and bench/scale-flap.sh; see those for what
# each measures). The preamble is bench/cluster-bench.sh.
#
#   bench/autoscale-bench.sh LOG_NAME TEST_NAME     # e.g. scale-out bench::scale_out_bench
#
# BENCH_SKIP_BUILD=1 uses the binaries already in target/release.
set -euo pipefail
NAME=${1:?usage: bench/autoscale-bench.sh LOG_NAME TEST_NAME}
TEST=${2:?usage: bench/autoscale-bench.sh LOG_NAME TEST_NAME}
exec "$(dirname "${BASH_SOURCE[0]}")/cluster-bench.sh" autoscale "$NAME" "$TEST"
