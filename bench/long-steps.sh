#!/usr/bin/env bash
# Where the inter-token tail comes from: one engine, the bench mix several
# times in a row, and per pass the engine's own long steps (from its step
# histogram) beside the client's inter-token percentiles. A long step that
# shows up on every pass is not a first-use cost; one that goes away with
# --torch-threads 1 is a thread held off a core.
#
#   bench/long-steps.sh                         # 3 passes, 2 torch threads
#   LS_THREADS=1 bench/long-steps.sh            # the same with one thread
#   LS_ENGINE_ARGS="--prefill-step-ratio 2" LS_PASSES=5 bench/long-steps.sh
#
# Environment (all optional): LS_OUT (folder, default target/bench/long-steps-<UTC time>),
# LS_MODEL (default target/bench/model-bench, made by bench/engine-vs-hf.sh),
# LS_BIN (default target/release), LS_PORT (18250), LS_REQUESTS (32 per pass).
# Needs steward-engine and steward-loadgen built (cargo build --release -p
# steward-engine -p steward-loadgen) and libtorch (tools/setup.sh).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
[[ -n "${BENCH_NO_SETUP:-}" ]] || source <(tools/setup.sh --print-env)
BIN="${LS_BIN:-$ROOT/target/release}"
MODEL="${LS_MODEL:-$ROOT/target/bench/model-bench}"
OUT="${LS_OUT:-$ROOT/target/bench/long-steps-$(date -u +%Y%m%dT%H%M%SZ)}"
PORT="${LS_PORT:-18250}"
THREADS="${LS_THREADS:-2}"
PASSES="${LS_PASSES:-3}"
REQUESTS="${LS_REQUESTS:-32}"
for b in steward-engine steward-loadgen; do
  [[ -x "$BIN/$b" ]] || { echo "long-steps: $BIN/$b is missing: cargo build --release -p $b" >&2; exit 2; }
done
[[ -f "$MODEL/config.json" ]] || { echo "long-steps: no model in $MODEL: run bench/engine-vs-hf.sh once, or steward-engine make-model --size bench $MODEL" >&2; exit 2; }
mkdir -p "$OUT"
export GOMP_SPINCOUNT="${GOMP_SPINCOUNT:-10000}"
# shellcheck disable=SC2086
"$BIN/steward-engine" serve --model "$MODEL" --served-model-name bench --host 127.0.0.1 --port "$PORT" \
  --torch-threads "$THREADS" ${LS_ENGINE_ARGS:-} >"$OUT/engine.log" 2>&1 &
ENGINE=$!
trap 'kill $ENGINE 2>/dev/null || true; wait $ENGINE 2>/dev/null || true' EXIT
for _ in $(seq 600); do
  curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null 2>&1 && break
  kill -0 $ENGINE 2>/dev/null || { echo "long-steps: the engine exited before it was ready (log: $OUT/engine.log)" >&2; exit 1; }
  sleep 0.1
done
lg() { "$BIN/steward-loadgen" --url "http://127.0.0.1:$PORT" --model bench "$@"; }
lg --seed 7 --concurrency 4 --requests 4 --prompt-len fixed:16 --output-len fixed:8 >/dev/null 2>&1
echo "long-steps: $PASSES passes of $REQUESTS requests at c16, $THREADS torch threads, args: ${LS_ENGINE_ARGS:-none}; load $(cut -d' ' -f1-3 /proc/loadavg)"
for pass in $(seq "$PASSES"); do
  curl -sf "http://127.0.0.1:$PORT/metrics" >"$OUT/metrics-$pass-before.txt"
  lg --seed $((7 + pass)) --concurrency 16 --requests "$REQUESTS" \
    --prompt-len uniform:16-64 --output-len lognormal:48,0.7@192 >"$OUT/loadgen-$pass.txt" 2>&1
  curl -sf "http://127.0.0.1:$PORT/metrics" >"$OUT/metrics-$pass-after.txt"
  python3 - "$OUT" "$pass" <<'PY'
import re, sys
out, p = sys.argv[1], sys.argv[2]
pat = re.compile(r'steward_engine_step_duration_seconds_bucket\{(.*)\} (\S+)')
def hist(path):
    d = {}
    for line in open(path):
        m = pat.match(line)
        if not m:
            continue
        labels = dict(kv.split('=', 1) for kv in m.group(1).split(','))
        d[(labels['kind'].strip('"'), labels['le'].strip('"'))] = float(m.group(2))
    return d
a, b = hist(f"{out}/metrics-{p}-after.txt"), hist(f"{out}/metrics-{p}-before.txt")
def over(kind, ms):
    # steps of `kind` above the smallest bucket bound at or over `ms`
    bounds = sorted((float(le), le) for (k, le) in a if k == kind and le != '+Inf')
    le = next((s for v, s in bounds if v * 1000 >= ms), '+Inf')
    n = lambda l: a.get((kind, l), 0) - b.get((kind, l), 0)
    return n('+Inf'), n('+Inf') - n(le)
cols = []
for kind in ('decode', 'mixed'):
    total, _ = over(kind, 0)
    cols.append(f"{kind} {total:.0f} steps, over 32/54/92 ms: " + "/".join(f"{over(kind, ms)[1]:.0f}" for ms in (32, 54, 92)))
itl = next((l.split() for l in open(f"{out}/loadgen-{p}.txt") if l.startswith('itl')), None)
cli = f"client ITL p50 {itl[2]} p99 {itl[4]} ms" if itl else "client ITL: none (see loadgen log)"
print(f"pass {p}: " + "; ".join(cols) + f"; {cli}")
PY
done
echo "long-steps: results in $OUT; load $(cut -d' ' -f1-3 /proc/loadavg)"
