#!/usr/bin/env bash
# Router overhead benchmark (not a test): steward-router and nginx as plain
# reverse proxies in front of the same fast stub backend, side by side, with
# steward-loadgen. Prints a table and writes JSON reports under OUT.
#
#   router/bench/router-vs-nginx.sh [OUT_DIR]
#
# Needs nginx (Debian: apt-get install nginx-light) and a release build of
# steward-router, steward-loadgen and steward-stub-backend (built here).
# Everything binds 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-target/bench/router}
RATE=${RATE:-1000}
DURATION=${DURATION:-10s}
CONC=${CONC:-64}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cargo build --release -q -p steward-router -p steward-loadgen
BIN=target/release
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
STUB_PORT=$(free_port) ROUTER_PORT=$(free_port) NGINX_PORT=$(free_port)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

"$BIN/steward-stub-backend" --host 127.0.0.1 --port $STUB_PORT --threads 1 >"$OUT/stub.log" 2>&1 &
pids+=($!)

cat >"$OUT/routes.json" <<JSON
{"services": [{"namespace": "bench", "name": "stub", "model": "bench",
               "traffic": [{"revision": "r1", "weight": 100}]}],
 "endpoints": [{"namespace": "bench", "service": "stub", "revision": "r1",
                "addr": "127.0.0.1:$STUB_PORT"}]}
JSON
RUST_LOG=warn "$BIN/steward-router" --listen 127.0.0.1:$ROUTER_PORT --static-routes "$OUT/routes.json" >"$OUT/router.log" 2>&1 &
pids+=($!)

# nginx as an equivalent plain reverse proxy: HTTP/1.1 keep-alive pool to
# the backend, no buffering (streams pass through), no access log.
mkdir -p "$OUT/nginx"
cat >"$OUT/nginx/nginx.conf" <<NGINX
worker_processes auto;
pid $OUT/nginx/nginx.pid;
error_log $OUT/nginx/error.log warn;
daemon off;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $OUT/nginx/body;
  proxy_temp_path $OUT/nginx/proxy;
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
nginx -c "$OUT/nginx/nginx.conf" -p "$OUT/nginx" >"$OUT/nginx/out.log" 2>&1 &
pids+=($!)

for port in $STUB_PORT $ROUTER_PORT $NGINX_PORT; do
  ok=
  for _ in $(seq 100); do
    if curl -fs -o /dev/null -X POST -H 'content-type: application/json' \
      -d '{"model":"bench","prompt":"x","max_tokens":1}' "http://127.0.0.1:$port/v1/completions"; then ok=1; break; fi
    sleep 0.1
  done
  [ -n "$ok" ] || { echo "nothing answers on 127.0.0.1:$port; see $OUT/*.log" >&2; exit 1; }
done

run() { # label port mode...
  local label=$1 port=$2; shift 2
  "$BIN/steward-loadgen" --url "http://127.0.0.1:$port" --model bench --no-stream \
    --prompt-len fixed:16 --output-len fixed:1 --duration "$DURATION" --grace 10s \
    --label "$label" --json "$OUT/$label.json" "$@" >"$OUT/$label.txt" 2>&1
}
for target in direct:$STUB_PORT router:$ROUTER_PORT nginx:$NGINX_PORT; do
  name=${target%%:*} port=${target##*:}
  run "$name-rate$RATE" "$port" --rate "$RATE"
  run "$name-max" "$port" --concurrency "$CONC"
done

python3 - "$OUT" "$RATE" <<'PY'
import json, sys
out, rate = sys.argv[1], sys.argv[2]
def load(n):
    with open(f"{out}/{n}.json") as f:
        return json.load(f)["report"]
rows = {}
for t in ["direct", "router", "nginx"]:
    lat, mx = load(f"{t}-rate{rate}"), load(f"{t}-max")
    e = lat.get("e2e_ms") or {}
    rows[t] = dict(p50=e.get("p50"), p99=e.get("p99"), rps=lat["requests_per_s"], failed=lat["failed"],
                   max_rps=mx["requests_per_s"], max_failed=mx["failed"])
d = rows["direct"]
print(f"| target | p50 ms @{rate}/s | p99 ms @{rate}/s | added p50 | added p99 | failed | max req/s | failed |")
print("|---|---|---|---|---|---|---|---|")
for t, r in rows.items():
    ap50 = r["p50"] - d["p50"] if t != "direct" else 0.0
    ap99 = r["p99"] - d["p99"] if t != "direct" else 0.0
    print(f"| {t} | {r['p50']:.3f} | {r['p99']:.3f} | {ap50:+.3f} | {ap99:+.3f} | {r['failed']} | {r['max_rps']:.0f} | {r['max_failed']} |")
print(f"router/nginx max throughput ratio: {rows['router']['max_rps'] / rows['nginx']['max_rps']:.2f}")
json.dump(rows, open(f"{out}/summary.json", "w"), indent=1)
PY
