#!/usr/bin/env bash
# Two steward-engine processes sharing this machine's cores, as two engine
# pods of the example on one node: does throughput collapse?
#
#   bench/two-engines.sh                 # builds, runs every case, prints a table
#
# Cases (each: both engines loaded at once, concurrency 3 each = 6 in all,
# 500-token streams on the tiny model, as the issue's reproduction):
#   alone      one engine, concurrency 6, automatic sizing: the reference
#   auto       two engines, automatic sizing, no limit known (both see every core)
#   limit      two engines told STEWARD_CPU_LIMIT=1 (the operator's downward-API
#              value for resources.cpu: 1)
#   spin       two engines with libtorch's own thread count (--torch-threads = cores)
#              and OMP_WAIT_POLICY=ACTIVE: what spinning OpenMP threads do
#   before     two engines of another build (BENCH_BEFORE_BIN=DIR), with its
#              defaults, e.g. the build before threads were sized
#
# Environment: BENCH_OUT (results folder), BENCH_SKIP_BUILD=1, BENCH_BIN (default
# target/release), BENCH_BEFORE_BIN, BENCH_REQUESTS (per engine, default 12),
# BENCH_TOKENS (default 500), BENCH_CASES (default "alone auto limit spin before").
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck disable=SC1090
source <(tools/setup.sh --print-env)
OUT="${BENCH_OUT:-$ROOT/target/bench/two-engines-$(date -u +%Y%m%dT%H%M%SZ)}"
BIN="${BENCH_BIN:-$ROOT/target/release}"
REQUESTS="${BENCH_REQUESTS:-12}"
TOKENS="${BENCH_TOKENS:-500}"
CASES="${BENCH_CASES:-alone auto limit spin before}"
MODEL="$ROOT/target/bench/model-tiny"
PORTS=(18211 18212)
mkdir -p "$OUT"
say() { printf '[two-engines] %s\n' "$*" >&2; }

if [[ "${BENCH_SKIP_BUILD:-0}" != 1 && -z "${BENCH_BIN:-}" ]]; then
  cargo build --release -p steward-engine -p steward-loadgen >&2
fi
[[ -f "$MODEL/config.json" ]] || "$BIN/steward-engine" make-model --size tiny "$MODEL" >&2

PIDS=()
stop_all() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
  PIDS=()
}
trap stop_all EXIT

start() { # start CASE INDEX BIN ENV... -- FLAGS...
  local case=$1 i=$2 bin=$3; shift 3
  local envs=()
  while [[ $# -gt 0 && "$1" != -- ]]; do envs+=("$1"); shift; done
  [[ $# -gt 0 ]] && shift
  env -u OMP_WAIT_POLICY "${envs[@]}" "$bin/steward-engine" serve --model "$MODEL" --served-model-name bench \
    --host 127.0.0.1 --port "${PORTS[$i]}" "$@" >"$OUT/$case-engine$i.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:${PORTS[$i]}/ready" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  say "$case: engine $i not ready"; return 1
}

load() { # load CASE INDEX CONCURRENCY
  "$BIN/steward-loadgen" --url "http://127.0.0.1:${PORTS[$2]}" --model bench --seed "$2" --threads 1 \
    --concurrency "$3" --requests "$(( REQUESTS * $3 / 3 ))" --prompt-len uniform:8-32 \
    --output-len "fixed:$TOKENS" --request-timeout 300s --label "$1-$2" --json "$OUT/$1-$2.json" >/dev/null
}

run_case() {
  local case=$1
  say "$case"
  echo "$case before: $(cat /proc/loadavg)" >>"$OUT/loadavg.txt"
  case $case in
    alone)
      start alone 0 "$BIN" --
      load alone 0 6 ;;
    auto|limit|spin|before)
      local bin=$BIN envs=() flags=()
      [[ $case == limit ]] && envs=(STEWARD_CPU_LIMIT=1)
      [[ $case == spin ]] && { envs=(OMP_WAIT_POLICY=ACTIVE); flags=(--torch-threads "$(nproc)"); }
      if [[ $case == before ]]; then
        [[ -n "${BENCH_BEFORE_BIN:-}" ]] || { say "before: BENCH_BEFORE_BIN not set, skipped"; return 0; }
        bin=$BENCH_BEFORE_BIN
      fi
      start "$case" 0 "$bin" "${envs[@]}" -- "${flags[@]}"
      start "$case" 1 "$bin" "${envs[@]}" -- "${flags[@]}"
      load "$case" 0 3 & local l0=$!
      load "$case" 1 3 & local l1=$!
      wait "$l0" "$l1" ;;
  esac
  grep -h "threads chosen" "$OUT/$case"-engine*.log | head -2 >&2 || true
  stop_all
}

for c in $CASES; do run_case "$c"; done

python3 - "$OUT" <<'EOF'
import glob, json, os, sys
out = sys.argv[1]
print(f"{'case':8} {'tok/s (sum)':>12} {'ITL p50 ms':>11} {'ITL p99 ms':>11} {'e2e max s':>10} {'failed':>7}")
for case in ("alone", "auto", "limit", "spin", "before"):
    reps = [json.load(open(p))["report"] for p in sorted(glob.glob(os.path.join(out, f"{case}-[01].json")))]
    if not reps:
        continue
    tps = sum(r["output_tokens_per_s"] for r in reps)
    itl50 = max(r["itl_ms"]["p50"] for r in reps)
    itl99 = max(r["itl_ms"]["p99"] for r in reps)
    e2e = max(r["e2e_ms"]["max"] for r in reps) / 1e3
    failed = sum(r["failed"] for r in reps)
    print(f"{case:8} {tps:12.0f} {itl50:11.1f} {itl99:11.1f} {e2e:10.1f} {failed:7d}")
print(open(os.path.join(out, "loadavg.txt")).read().strip())
EOF
say "results in $OUT"
