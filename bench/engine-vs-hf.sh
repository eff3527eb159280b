#!/usr/bin/env bash
# steward-engine against the Hugging Face transformers baseline and against
# this machine's limits, on the bench model (about 100M parameters, fp32).
#
#   bench/engine-vs-hf.sh            # builds, makes the model, runs both, prints the comparison
#
# Environment (all optional):
#   BENCH_OUT=DIR          results folder (default target/bench/<UTC time>); JSON per run
#   BENCH_MODEL=DIR        model directory (default target/bench/model-bench, made once)
#   BENCH_SKIP_BUILD=1     use the binaries already in target/release
#   BENCH_BIN=DIR          where steward-engine and steward-loadgen are (default target/release)
#   BENCH_NO_SETUP=1       do not source tools/setup.sh (a machine with its own torch:
#                          set STEWARD_PYTHON and LD_LIBRARY_PATH yourself)
#   BENCH_ONLY=engine|hf   run one side only
#   BENCH_ENGINE_DTYPES    engine weight dtypes to run, in order (default "f32 bf16"; the
#                          bf16 pass is named engine-bf16 and runs mix, b1 and b16)
#   BENCH_DEVICE=cpu|cuda  device of the baseline and the probe (the engine picks CUDA
#                          by itself when libtorch sees a GPU; default cpu)
#   BENCH_ENGINE_ARGS      extra steward-engine serve flags
#   BENCH_QUICK=1          a smoke run of the script itself: few, short requests (figures meaningless)
#   BENCH_MIX_REQUESTS=N   requests in the concurrency-16 mix run (default 32)
#   BENCH_OMP_WAIT_POLICY  OpenMP wait policy for both servers: bounded (default: the
#                          engine's own default, GOMP_SPINCOUNT=10000 with OMP_WAIT_POLICY
#                          unset: spin briefly, then sleep), PASSIVE (sleep at once) or
#                          ACTIVE (spin without bound: only on a machine to itself)
#   BENCH_THREADS=N        torch threads for both servers and the probe (default 2)
#   BENCH_PROFILE=1        record the server with perf during b1 and b16 and write the
#                          top symbols to <name>-profile-<run>.txt ("where the time goes")
#   LOADGEN_EXTRA="..."    extra steward-loadgen flags for every run
#
# Each server runs alone (one at a time) and gets the same requests (same
# seed). Runs per server: a warm-up, "mix" (concurrency 16, prompts of
# 16-64 words, outputs lognormal median 48 sigma 0.7 clipped at 192, ignore_eos),
# "b1" (one stream, 64 tokens: its ITL is the batch-1 decode step) and
# "b16" (16 streams of 64 tokens started together: the batch-16 step),
# then bench/ttft_probe.py: TTFT with a 90% shared prefix vs none ("prefix")
# and of a 2048-token prompt ("long"). For the engine, /metrics is saved
# before and after each run (its step histograms give the step time from
# inside) and the cold start (spawn to /ready) is timed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [[ "${BENCH_NO_SETUP:-0}" != 1 ]]; then
  # shellcheck disable=SC1090
  source <(tools/setup.sh --print-env)
  [[ -x "${STEWARD_PYTHON:-}" ]] || tools/setup.sh python
fi
OUT="${BENCH_OUT:-$ROOT/target/bench/$(date -u +%Y%m%dT%H%M%SZ)}"
MODEL="${BENCH_MODEL:-$ROOT/target/bench/model-bench}"
THREADS="${BENCH_THREADS:-2}"
MIX_REQUESTS="${BENCH_MIX_REQUESTS:-32}"
B_TOKENS=64 B1_REQUESTS=3 B16=16 TTFT_ARGS=()
if [[ "${BENCH_QUICK:-0}" == 1 ]]; then
  MIX_REQUESTS=4 B_TOKENS=8 B1_REQUESTS=1 B16=4
  TTFT_ARGS=(--requests 1 --prompt-tokens 64 --long-tokens 128 --long-requests 1)
fi
case "${BENCH_OMP_WAIT_POLICY:-bounded}" in
  bounded) unset OMP_WAIT_POLICY; export GOMP_SPINCOUNT=10000 ;;
  *) export OMP_WAIT_POLICY="$BENCH_OMP_WAIT_POLICY"; unset GOMP_SPINCOUNT ;;
esac
ENGINE_PORT=18200
HF_PORT=18100
BIN="${BENCH_BIN:-$ROOT/target/release}"
DEVICE="${BENCH_DEVICE:-cpu}"
ENGINE_DTYPES="${BENCH_ENGINE_DTYPES:-f32 bf16}"
mkdir -p "$OUT"

say() { printf '[bench] %s\n' "$*" >&2; }

if [[ "${BENCH_SKIP_BUILD:-0}" != 1 && -z "${BENCH_BIN:-}" ]]; then
  say "building steward-engine and steward-loadgen (release)"
  cargo build --release -p steward-engine -p steward-loadgen >&2
fi

if [[ ! -f "$MODEL/config.json" ]]; then
  say "making the bench model in $MODEL"
  "$BIN/steward-engine" make-model --size bench "$MODEL" >&2
fi

# Other work on the machine skews every figure: record the load around the run.
echo "before: $(cat /proc/loadavg)" >"$OUT/loadavg.txt"

say "probing the hardware ($THREADS threads)"
"$STEWARD_PYTHON" bench/hw_probe.py --model "$MODEL" --threads "$THREADS" --device "$DEVICE" --json "$OUT/hw.json" \
  || say "hardware probe failed"
VOCAB=$(python3 -c 'import json,sys;print(json.load(open(sys.argv[1]))["vocab_size"])' "$MODEL/config.json")

SERVER_PID=""
stop_server() {
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=""
}
trap stop_server EXIT

wait_ready() { # wait_ready URL NAME
  for _ in $(seq 6000); do
    if curl -sf "$1" >/dev/null 2>&1; then return 0; fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then say "$2 exited before it was ready (log: $OUT/$2.log)"; return 1; fi
    sleep 0.05
  done
  say "$2 was not ready after 300s"; return 1
}

now_ms() { date +%s%3N; }

snap() { # snap NAME PORT FILE : the engine's /metrics (nothing for the baseline)
  [[ "$1" == engine* ]] || return 0
  curl -sf "http://127.0.0.1:$2/metrics" >"$OUT/$1-metrics-$3.txt" || true
}

loadgen() { # loadgen NAME PORT RUN FLAGS...
  local name=$1 port=$2 run=$3; shift 3
  # shellcheck disable=SC2086
  "$BIN/steward-loadgen" --url "http://127.0.0.1:$port" --model bench --seed 7 \
    --label "$name-$run" --json "$OUT/$name-$run.json" --request-timeout 600s --threads 1 \
    "$@" ${LOADGEN_EXTRA:-}
}

profiled() { # profiled NAME RUN CMD... : runs CMD, under perf on the server when BENCH_PROFILE=1
  local name=$1 run=$2; shift 2
  if [[ "${BENCH_PROFILE:-0}" != 1 ]] || ! command -v perf >/dev/null; then "$@"; return; fi
  perf record -q -F 499 -g -p "$SERVER_PID" -o "$OUT/$name-$run.perf" >/dev/null 2>&1 &
  local perf_pid=$!
  sleep 0.5
  "$@"
  kill -INT "$perf_pid" 2>/dev/null || true
  wait "$perf_pid" 2>/dev/null || true
  {
    echo "# by library"
    perf report -i "$OUT/$name-$run.perf" --stdio --no-children -g none --sort dso --percent-limit 1 2>/dev/null \
      | grep -E '^ +[0-9]' | sed -E 's/ +- +-? *$//; s/ {2,}/  /g'
    echo "# by symbol"
    perf report -i "$OUT/$name-$run.perf" --stdio --no-children -g none --sort dso,symbol --percent-limit 0.7 \
      2>/dev/null | grep -E '^ +[0-9]' | sed -E 's/ +- +-? *$//; s/ {2,}/  /g' | head -40
  } >"$OUT/$name-profile-$run.txt" || true
  say "$name: profile of $run in $OUT/$name-profile-$run.txt"
}

bench_target() { # bench_target NAME PORT [ttft]
  local name=$1 port=$2
  say "$name: warm-up"
  loadgen "$name" "$port" warmup --concurrency 4 --requests 4 --output-len fixed:8 >/dev/null
  say "$name: mix (concurrency 16, $MIX_REQUESTS requests)"
  snap "$name" "$port" mix-before
  loadgen "$name" "$port" mix --concurrency 16 --requests "$MIX_REQUESTS" \
    --prompt-len uniform:16-64 --output-len lognormal:48,0.7@192
  snap "$name" "$port" mix-after
  say "$name: batch-1 decode"
  snap "$name" "$port" b1-before
  profiled "$name" b1 loadgen "$name" "$port" b1 --concurrency 1 --requests "$B1_REQUESTS" --prompt-len fixed:32 --output-len "fixed:$B_TOKENS"
  snap "$name" "$port" b1-after
  say "$name: batch-16 decode"
  snap "$name" "$port" b16-before
  profiled "$name" b16 loadgen "$name" "$port" b16 --concurrency "$B16" --requests "$B16" --prompt-len fixed:32 --output-len "fixed:$B_TOKENS"
  snap "$name" "$port" b16-after
  if [[ "${3:-}" == ttft ]]; then
    say "$name: TTFT with a shared prefix vs none, and of a 2048-token prompt"
    python3 bench/ttft_probe.py --url "http://127.0.0.1:$port" --model bench --vocab "$VOCAB" \
      "${TTFT_ARGS[@]}" --json "$OUT/$name-ttft.json" || say "$name: ttft probe failed"
  fi
}

if [[ "${BENCH_ONLY:-engine}" != hf ]]; then
  for dtype in $ENGINE_DTYPES; do
    name=engine; [[ "$dtype" == f32 ]] || name="engine-$dtype"
    dtype_flag=(); [[ "$dtype" == f32 ]] || dtype_flag=(--dtype "$dtype")
    say "starting steward-engine ($dtype) on :$ENGINE_PORT"
    t_spawn=$(now_ms)
    # shellcheck disable=SC2086
    "$BIN/steward-engine" serve --model "$MODEL" --served-model-name bench \
      --host 127.0.0.1 --port "$ENGINE_PORT" --torch-threads "$THREADS" "${dtype_flag[@]}" \
      ${BENCH_ENGINE_ARGS:-} >"$OUT/$name.log" 2>&1 &
    SERVER_PID=$!
    if wait_ready "http://127.0.0.1:$ENGINE_PORT/ready" "$name"; then
      echo "{\"spawn_to_ready_ms\": $(( $(now_ms) - t_spawn ))}" >"$OUT/$name-coldstart.json"
      if [[ "$name" == engine ]]; then bench_target "$name" "$ENGINE_PORT" ttft; else bench_target "$name" "$ENGINE_PORT"; fi
      curl -sf "http://127.0.0.1:$ENGINE_PORT/metrics" >"$OUT/$name-metrics.txt" || true
    fi
    stop_server
  done
fi

if [[ "${BENCH_ONLY:-hf}" != engine ]]; then
  say "starting the transformers baseline on :$HF_PORT"
  "$STEWARD_PYTHON" bench/hf_server.py --model "$MODEL" --served-model-name bench \
    --port "$HF_PORT" --threads "$THREADS" --max-batch 16 --device "$DEVICE" >"$OUT/hf.log" 2>&1 &
  SERVER_PID=$!
  if wait_ready "http://127.0.0.1:$HF_PORT/health" hf; then
    bench_target hf "$HF_PORT" ttft
  fi
  stop_server
fi

echo "after: $(cat /proc/loadavg)" >>"$OUT/loadavg.txt"
python3 bench/compare.py "$OUT" | tee "$OUT/summary.txt" || say "compare failed"
say "results in $OUT"
