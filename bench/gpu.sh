#!/usr/bin/env bash
# The engine benchmark on a GPU machine that has a CUDA build of torch 2.11
# in its Python but no Rust toolchain: prebuilt binaries are brought along
# (the engine links only libtorch's CPU library and loads libtorch_cuda.so
# from the machine's torch/lib at start), everything else is this checkout.
#
#   GPU_BIN=DIR GPU_OUT=DIR bench/gpu.sh
#
# GPU_BIN holds steward-engine, steward-loadgen and step_timing (from
# `cargo build --release -p steward-engine -p steward-loadgen --all-targets`,
# stripped); GPU_OUT gets at most a handful of files: gpu.txt (the card),
# steps.txt (decode step by batch on the device, f32 and bf16), parity.txt
# (the same greedy request to the engine on CUDA, the engine on CPU and
# transformers on CUDA), summary.txt (bench/engine-vs-hf.sh on the device),
# bench.tgz (every file of that run) and gpu.log. STEWARD_PYTHON: the
# Python with torch and transformers (default python3). GPU_QUICK=1 shrinks
# every run (to check this script on a CPU machine: figures meaningless).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN="$(cd "${GPU_BIN:?GPU_BIN: folder of the prebuilt binaries}" && pwd)"
OUT="${GPU_OUT:?GPU_OUT: results folder}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
export STEWARD_PYTHON="${STEWARD_PYTHON:-python3}"
WORK="$(mktemp -d /tmp/steward-gpu.XXXXXX)"
exec > >(tee -a "$OUT/gpu.log") 2>&1
say() { printf '[gpu] %s %s\n' "$(date +%T)" "$*"; }

TORCH_LIB=$("$STEWARD_PYTHON" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$TORCH_LIB:${LD_LIBRARY_PATH:-}"
DEVICE=cpu
if "$STEWARD_PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then DEVICE=cuda; fi
{
  echo "device: $DEVICE"
  "$STEWARD_PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda,
        torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")'
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null || true
  nproc; uptime
} | tee "$OUT/gpu.txt"

MODEL="$WORK/model-bench"
say "making the bench model"
"$BIN/steward-engine" make-model --size bench "$MODEL" 2>&1 | tail -1

say "decode step by batch size (examples/step_timing), f32 and bf16"
for d in f32 bf16; do
  timeout 120 "$BIN/step_timing" "$MODEL" "$d" 2>&1 | grep -v "^\s*$" | tee -a "$OUT/steps.txt"
done

say "parity: one greedy request, engine on $DEVICE vs engine on CPU vs transformers"
parity_req='{"model":"bench","prompt":"the water is","max_tokens":16,"temperature":0,"ignore_eos":true}'
{
  for side in "engine-$DEVICE" engine-cpu; do
    env_cpu=()
    [[ $side == engine-cpu ]] && env_cpu=(CUDA_VISIBLE_DEVICES=)
    env "${env_cpu[@]}" "$BIN/steward-engine" serve --model "$MODEL" --served-model-name bench --port 18290 \
      >"$WORK/$side.log" 2>&1 &
    pid=$!
    for _ in $(seq 600); do curl -sf localhost:18290/ready >/dev/null 2>&1 && break; sleep 0.1; done
    echo "$side: $(curl -s localhost:18290/v1/completions -H 'content-type: application/json' -d "$parity_req" \
      | python3 -c 'import json,sys; print(repr(json.load(sys.stdin)["choices"][0]["text"]))' 2>&1)"
    grep -h "device chosen\|threads chosen\|weights loaded" "$WORK/$side.log" | sed 's/\x1b\[[0-9;]*m//g' | cut -c1-300
    kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  done
  "$STEWARD_PYTHON" bench/hf_server.py --model "$MODEL" --port 18291 --device "$DEVICE" >"$WORK/hf-parity.log" 2>&1 &
  pid=$!
  for _ in $(seq 1200); do curl -sf localhost:18291/health >/dev/null 2>&1 && break; sleep 0.1; done
  echo "hf-$DEVICE: $(curl -s localhost:18291/v1/completions -H 'content-type: application/json' -d "$parity_req" \
    | python3 -c 'import json,sys; print(repr(json.load(sys.stdin)["choices"][0]["text"]))' 2>&1)"
  kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
} 2>&1 | tee "$OUT/parity.txt"

say "bench/engine-vs-hf.sh on $DEVICE"
BENCH_NO_SETUP=1 BENCH_BIN="$BIN" BENCH_DEVICE="$DEVICE" BENCH_MODEL="$MODEL" BENCH_OUT="$WORK/bench" \
  BENCH_MIX_REQUESTS="${GPU_MIX_REQUESTS:-64}" BENCH_QUICK="${GPU_QUICK:-0}" BENCH_OMP_WAIT_POLICY=PASSIVE \
  timeout "${GPU_BENCH_TIMEOUT:-420}" bench/engine-vs-hf.sh
cp "$WORK/bench/summary.txt" "$OUT/summary.txt" 2>/dev/null || say "no summary"
tar czf "$OUT/bench.tgz" -C "$WORK" bench
say "done; results in $OUT"
