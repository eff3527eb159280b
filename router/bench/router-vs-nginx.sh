#!/usr/bin/env bash
# Router overhead benchmark (not a test): steward-router and nginx as plain
# reverse proxies in front of the same fast stub backend, side by side, with
# steward-loadgen. Prints a table and writes JSON reports under OUT.
#
#   router/bench/router-vs-nginx.sh [OUT_DIR]
#
# Knobs (environment):
#   RATE=1000 DURATION=10s CONC=64  the fixed-rate step and the closed-loop step
#   REPEAT=1                        rounds; each round runs every target once,
#                                   in turn, so all targets see the same machine
#                                   (direct first, then the proxies in an order
#                                   rotated by one per round)
#   BASELINE_BIN=path               also bench this steward-router binary
#                                   (e.g. an older build) as target "baseline"
#   PROFILE=1                       perf-record the router during its closed-loop
#                                   step (cpu-clock; top symbols in profile-*.txt)
#   SKIP_BUILD=1                    use the binaries already in target/release
#   ROUTER_ARGS="..."               extra flags for the router under test
#   WORKERS=N                       the router's --workers and nginx's
#                                   worker_processes (default: both use all CPUs)
#   STUB_THREADS=1 LOADGEN_THREADS=2  threads of the stub backend and of the
#                                   load generator (raise them on a big machine,
#                                   or they, not the proxy, set the maximum rate)
#   BIN=target/release NGINX_BIN=nginx  where the binaries are (e.g. prebuilt ones
#                                   copied to another machine)
#
# Besides latency and rate, the closed-loop step reports each proxy's CPU
# time per request (user + system of its processes, from /proc): on a
# shared machine the maximum rate mostly measures how much CPU a process
# was given, while CPU per request measures what it needs.
#
# Needs nginx (Debian: apt-get install nginx-light) and a release build of
# steward-router, steward-loadgen and steward-stub-backend (built here).
# Everything binds 127.0.0.1. The load average is recorded at every step:
# on a shared machine, compare targets within a round, not across runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-target/bench/router}
RATE=${RATE:-1000}
DURATION=${DURATION:-10s}
CONC=${CONC:-64}
REPEAT=${REPEAT:-1}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
echo "cpus=$(nproc) $(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2 | sed "s/^ //") nginx=$("${NGINX_BIN:-nginx}" -v 2>&1 | cut -d/ -f2)" >"$OUT/machine.txt"
[ -n "${SKIP_BUILD:-}" ] || cargo build --release -q -p steward-router -p steward-loadgen
BIN=${BIN:-target/release}
NGINX_BIN=${NGINX_BIN:-nginx}
STUB_THREADS=${STUB_THREADS:-1}
LOADGEN_THREADS=${LOADGEN_THREADS:-2}
NGINX_WORKERS=${WORKERS:-auto}
[ -z "${WORKERS:-}" ] || ROUTER_ARGS="--workers $WORKERS ${ROUTER_ARGS:-}"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
STUB_PORT=$(free_port) ROUTER_PORT=$(free_port) NGINX_PORT=$(free_port) BASE_PORT=$(free_port)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

"$BIN/steward-stub-backend" --host 127.0.0.1 --port $STUB_PORT --threads $STUB_THREADS >"$OUT/stub.log" 2>&1 &
pids+=($!)

cat >"$OUT/routes.json" <<JSON
{"services": [{"namespace": "bench", "name": "stub", "model": "bench",
               "traffic": [{"revision": "r1", "weight": 100}]}],
 "endpoints": [{"namespace": "bench", "service": "stub", "revision": "r1",
                "addr": "127.0.0.1:$STUB_PORT"}]}
JSON
RUST_LOG=warn "$BIN/steward-router" --listen 127.0.0.1:$ROUTER_PORT --static-routes "$OUT/routes.json" ${ROUTER_ARGS:-} >"$OUT/router.log" 2>&1 &
ROUTER_PID=$!
pids+=($ROUTER_PID)
targets="direct:$STUB_PORT router:$ROUTER_PORT nginx:$NGINX_PORT"
if [ -n "${BASELINE_BIN:-}" ]; then
  # An older binary may predate --workers: its tokio runtime reads the thread count from the environment.
  RUST_LOG=warn TOKIO_WORKER_THREADS=${WORKERS:-$(nproc)} "$BASELINE_BIN" --listen 127.0.0.1:$BASE_PORT --static-routes "$OUT/routes.json" >"$OUT/baseline.log" 2>&1 &
  BASE_PID=$!
  pids+=($BASE_PID)
  targets="$targets baseline:$BASE_PORT"
fi

# nginx as an equivalent plain reverse proxy: HTTP/1.1 keep-alive pool to
# the backend, no buffering (streams pass through), no access log.
mkdir -p "$OUT/nginx"
cat >"$OUT/nginx/nginx.conf" <<NGINX
worker_processes $NGINX_WORKERS;
pid $OUT/nginx/nginx.pid;
error_log $OUT/nginx/error.log warn;
daemon off;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $OUT/nginx/body;
  proxy_temp_path $OUT/nginx/proxy;
  fastcgi_temp_path $OUT/nginx/fastcgi;
  uwsgi_temp_path $OUT/nginx/uwsgi;
  scgi_temp_path $OUT/nginx/scgi;
  upstream stub { server 127.0.0.1:$STUB_PORT; keepalive 256; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://stub;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_request_buffering off;
    }
  }
}
NGINX
"$NGINX_BIN" -c "$OUT/nginx/nginx.conf" -p "$OUT/nginx" >"$OUT/nginx/out.log" 2>&1 &
NGINX_PID=$!
pids+=($NGINX_PID)
STUB_PID=${pids[0]}

for t in $targets; do
  port=${t##*:}
  ok=
  for _ in $(seq 100); do
    if curl -fs -o /dev/null -X POST -H 'content-type: application/json' \
      -d '{"model":"bench","prompt":"x","max_tokens":1}' "http://127.0.0.1:$port/v1/completions"; then ok=1; break; fi
    sleep 0.1
  done
  [ -n "$ok" ] || { echo "nothing answers on 127.0.0.1:$port; see $OUT/*.log" >&2; exit 1; }
done

# CPU time (clock ticks, user + system) used so far by a process and its children.
cpu_ticks() {
  local total=0 p
  for p in "$@" $(pgrep -P "$1" 2>/dev/null); do
    [ -r /proc/$p/stat ] && total=$((total + $(awk '{print $14 + $15}' /proc/$p/stat)))
  done
  echo $total
}
pid_of() {
  case $1 in
    direct) echo $STUB_PID ;; router) echo $ROUTER_PID ;; nginx) echo $NGINX_PID ;; baseline) echo $BASE_PID ;;
  esac
}
run() { # target label port mode...
  local target=$1 label=$2 port=$3; shift 3
  local pid; pid=$(pid_of "$target")
  echo "$label $(cat /proc/loadavg)" >>"$OUT/loadavg.txt"
  local c0; c0=$(cpu_ticks "$pid")
  "$BIN/steward-loadgen" --url "http://127.0.0.1:$port" --model bench --no-stream \
    --prompt-len fixed:16 --output-len fixed:1 --threads "$LOADGEN_THREADS" --duration "$DURATION" --grace 10s \
    --label "$label" --json "$OUT/$label.json" "$@" >"$OUT/$label.txt" 2>&1
  echo "$label $(( $(cpu_ticks "$pid") - c0 )) $(getconf CLK_TCK)" >>"$OUT/cpu.txt"
}
: >"$OUT/loadavg.txt"
: >"$OUT/cpu.txt"
: >"$OUT/order.txt"
# The direct step opens each round (the others' added latency is against
# it); the proxies follow in an order rotated by one each round, since the
# first target after a switch ran slower in traces (cold caches, a
# scheduler that has not yet spread the new processes): with a fixed order
# the same proxy always paid for it.
read -r -a proxies <<<"${targets#direct:$STUB_PORT }"
for round in $(seq "$REPEAT"); do
  k=$(( (round - 1) % ${#proxies[@]} ))
  order="direct:$STUB_PORT ${proxies[*]:k} ${proxies[*]:0:k}"
  echo "round $round: $(sed -E 's/:[0-9]+//g' <<<"$order")" >>"$OUT/order.txt"
  for t in $order; do
    name=${t%%:*} port=${t##*:}
    run "$name" "$name-rate$RATE-r$round" "$port" --rate "$RATE"
    if [ -n "${PROFILE:-}" ] && { [ "$name" = router ] || [ "$name" = baseline ]; }; then
      pid=$ROUTER_PID; [ "$name" = baseline ] && pid=$BASE_PID
      perf record -e cpu-clock -F 999 -g -p "$pid" -o "$OUT/perf-$name-r$round.data" >/dev/null 2>&1 &
      perf_pid=$!
      run "$name" "$name-max-r$round" "$port" --concurrency "$CONC"
      kill -INT $perf_pid; wait $perf_pid 2>/dev/null || true
      perf report -i "$OUT/perf-$name-r$round.data" --stdio --no-children --sort dso,symbol 2>/dev/null \
        | grep -v '^#' | grep '%' | head -60 >"$OUT/profile-$name-r$round.txt" || true
    else
      run "$name" "$name-max-r$round" "$port" --concurrency "$CONC"
    fi
  done
done
echo "end $(cat /proc/loadavg)" >>"$OUT/loadavg.txt"
cat "$OUT/machine.txt" "$OUT/order.txt"

python3 - "$OUT" "$RATE" "$REPEAT" "$targets" <<'PY'
import json, statistics, sys
out, rate, repeat, targets = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].split()
names = [t.split(":")[0] for t in targets]
def load(n):
    with open(f"{out}/{n}.json") as f:
        return json.load(f)["report"]
loads = {}
for line in open(f"{out}/loadavg.txt"):
    parts = line.split()
    loads[parts[0]] = float(parts[1])
cpu = {}
for line in open(f"{out}/cpu.txt"):
    label, ticks, hz = line.split()
    cpu[label] = int(ticks) / int(hz)
rows = {}
for r in range(1, repeat + 1):
    for t in names:
        lat, mx = load(f"{t}-rate{rate}-r{r}"), load(f"{t}-max-r{r}")
        e = lat.get("e2e_ms") or {}
        served = mx["ok"]
        rows[(t, r)] = dict(p50=e.get("p50"), p99=e.get("p99"), failed=lat["failed"],
                            max_rps=mx["requests_per_s"], max_failed=mx["failed"],
                            cpu_us=1e6 * cpu.get(f"{t}-max-r{r}", 0) / max(served, 1),
                            load=loads.get(f"{t}-max-r{r}"))
print(f"| round | target | p50 ms @{rate}/s | p99 ms @{rate}/s | added p50 | added p99 | failed | max req/s | failed | CPU µs/req at max | load avg |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
summary = {}
for r in range(1, repeat + 1):
    d = rows[("direct", r)]
    for t in names:
        x = rows[(t, r)]
        x["added_p50"] = x["p50"] - d["p50"]
        x["added_p99"] = x["p99"] - d["p99"]
        print(f"| {r} | {t} | {x['p50']:.3f} | {x['p99']:.3f} | {x['added_p50']:+.3f} | {x['added_p99']:+.3f} | {x['failed']} | {x['max_rps']:.0f} | {x['max_failed']} | {x['cpu_us']:.1f} | {x['load']} |")
    print(f"| {r} | router/nginx | | | | | | {rows[('router', r)]['max_rps'] / rows[('nginx', r)]['max_rps']:.2f}x | | {rows[('router', r)]['cpu_us'] / max(rows[('nginx', r)]['cpu_us'], 1e-9):.2f}x | |")
for t in names:
    xs = [rows[(t, r)] for r in range(1, repeat + 1)]
    summary[t] = {k: statistics.median([x[k] for x in xs]) for k in ("added_p50", "added_p99", "max_rps", "cpu_us")}
print()
print("medians over rounds:", json.dumps(summary))
json.dump({"rounds": {f"{t}-r{r}": v for (t, r), v in rows.items()}, "medians": summary},
          open(f"{out}/summary.json", "w"), indent=1)
PY
