#!/usr/bin/env bash
# Scale-out under a load step, warm pool against cold start, in one run:
# the same step on an object with `replicas {min: 2, max: 3, warm: 1}` and
# then on one with `warm: 0`.
#
#   bench/scale-out.sh            # builds, runs, prints a table and the headline
#
# Environment (all optional):
#   STEWARD_BENCH_RUNS=N            warm/cold pairs (default 1)
#   STEWARD_BENCH_CONCURRENCY=N     streams of the step (default 36: two pods
#                                   overloaded (KV full, requests wait), three
#                                   at about 85%)
#   STEWARD_BENCH_STEP_SECS=N       how long the step's load runs (default 90)
#   STEWARD_BENCH_MODEL_LOAD_SECS=L a list of model load times to run (default
#                                   "0 20"): 0 is the tiny engine as it is (ready
#                                   about 0.3 s after its process starts); N > 0
#                                   starts every engine of the case through a
#                                   wrapper that sleeps N s first, as a real model
#                                   loading from a volume onto a GPU would
#   BENCH_SKIP_BUILD=1              use the binaries already in target/release
#
# It runs the ignored test `bench::scale_out_bench` of operator/tests/autoscale.rs
# on the real local system: the local cluster, Prometheus scraping every 1 s,
# tiny real engines (`--torch-threads 1`, 40 ms between tokens, 64 KV blocks,
# `--shed-kv-usage 1` so overload queues instead of shedding), the operator
# in-process (analysis interval 2 s, window 30 s), steward-router in front and
# steward-loadgen through it (closed loop, 16-word prompts (about 33 tokens),
# 64-token streams). Per case, seconds from the step: when a reading of the
# autoscaler (its own PromQL, evaluated by Prometheus every second) first
# reached its target (utilisation 70%, or 1 waiting request per pod: under an
# overload the queue comes first), when status said 3 serving, when the added
# pod took its first request (its engine's prompt-token counter, read every
# 100 ms) = time to capacity; TTFT p50/p99 of the load generator over the whole
# step and the engines' TTFT p99 over the 30 s after the crossing. The headline
# is cold/warm of TTFT p99 and of time to capacity, per model load time. The
# load average is printed with each case: on a shared machine absolute figures
# are noisy.
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/autoscale-bench.sh" scale-out bench::scale_out_bench
