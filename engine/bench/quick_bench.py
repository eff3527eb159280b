"""Quick throughput/latency check of a running steward-engine (not the
project's benchmark; that is the loadgen crate). Standard library only.

    python3 engine/bench/quick_bench.py http://127.0.0.1:8000 MODEL CONCURRENCY MAX_TOKENS

Prints output tokens/s over the run and ITL p50/p99 across all streams.
"""
import json
import sys
import threading
import time
import urllib.request


def one(url, model, max_tokens, itls, counts, idx):
    body = json.dumps({"model": model, "prompt": "The quick brown fox jumps over the lazy dog %d" % idx,
                       "max_tokens": max_tokens, "ignore_eos": True, "stream": True,
                       "temperature": 0}).encode()
    req = urllib.request.Request(url + "/v1/completions", data=body, headers={"content-type": "application/json"})
    last = None
    n = 0
    with urllib.request.urlopen(req) as r:
        for line in r:
            line = line.strip()
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            now = time.perf_counter()
            if last is not None:
                itls.append(now - last)
            last = now
            n += 1
    counts[idx] = json.loads(line[6:]) if False else n


def main():
    url, model, conc, max_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    itls, counts = [], [0] * conc
    t0 = time.perf_counter()
    ts = [threading.Thread(target=one, args=(url, model, max_tokens, itls, counts, i)) for i in range(conc)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    dt = time.perf_counter() - t0
    itls.sort()
    p = lambda q: itls[min(len(itls) - 1, int(q * len(itls)))] * 1000 if itls else float("nan")
    print(json.dumps({"concurrency": conc, "max_tokens": max_tokens, "seconds": round(dt, 2),
                      "output_tokens_per_s": round(conc * max_tokens / dt, 1),
                      "itl_p50_ms": round(p(0.5), 1), "itl_p99_ms": round(p(0.99), 1)}))


if __name__ == "__main__":
    main()
