#!/usr/bin/env python3
"""Time to first token for prompts of exact token lengths, one request at a
time, against any OpenAI-compatible /v1/completions that takes a prompt as
a list of token ids (steward-engine, bench/hf_server.py).

Two runs, both with `--max-tokens` output tokens per request:
  prefix   --requests prompts of --prompt-tokens tokens, first with no shared
           prefix (every prompt random), then with --shared of each prompt
           (90% by default) the same for all and the rest random. The first
           shared request fills a prefix cache and is not counted. The ratio
           of the two medians is the prefix cache's TTFT benefit.
  long     --long-requests prompts of --long-tokens tokens (2048 by default):
           the TTFT of a long prompt on an idle server.

Only the standard library is used, so any python3 runs it.

    python3 bench/ttft_probe.py --url http://127.0.0.1:8000 --model bench --vocab 8192 --json out.json
"""
import argparse
import http.client
import json
import random
import statistics
import sys
import time
import urllib.parse


def ttft(url, model, prompt, max_tokens, timeout):
    """Sends one streaming request; returns (seconds to the first choice event, prompt tokens)."""
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    body = json.dumps({
        "model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
        "stream": True, "ignore_eos": True, "stream_options": {"include_usage": True},
    })
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"content-type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"status {resp.status}: {resp.read()[:300]!r}")
    first = None
    prompt_tokens = None
    for raw in resp:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        ev = json.loads(data)
        if "error" in ev:
            raise RuntimeError(f"error event: {ev['error']}")
        if first is None and ev.get("choices"):
            first = time.perf_counter() - t0
        if ev.get("usage"):
            prompt_tokens = ev["usage"].get("prompt_tokens")
    conn.close()
    if first is None:
        raise RuntimeError("no token event")
    return first, prompt_tokens


def summary(xs):
    return {"n": len(xs), "p50_ms": statistics.median(xs) * 1e3, "min_ms": min(xs) * 1e3,
            "max_ms": max(xs) * 1e3, "all_ms": [x * 1e3 for x in xs]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("--model", default="bench")
    ap.add_argument("--vocab", type=int, required=True, help="vocabulary size (token ids are drawn below it)")
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--shared", type=float, default=0.9, help="fraction of the prompt shared by all requests")
    ap.add_argument("--requests", type=int, default=6)
    ap.add_argument("--long-tokens", type=int, default=2048)
    ap.add_argument("--long-requests", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=2)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--only", choices=["prefix", "long"], help="run one part only")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    rng = random.Random(args.seed)

    def tokens(n):
        return [rng.randrange(10, args.vocab) for _ in range(n)]

    out = {"settings": vars(args)}
    if args.only in (None, "prefix"):
        none = [ttft(args.url, args.model, tokens(args.prompt_tokens), args.max_tokens, args.timeout)[0]
                for _ in range(args.requests)]
        n_shared = int(args.prompt_tokens * args.shared)
        prefix = tokens(n_shared)
        shared = [ttft(args.url, args.model, prefix + tokens(args.prompt_tokens - n_shared), args.max_tokens,
                       args.timeout)[0] for _ in range(args.requests + 1)][1:]
        out["prefix"] = {"none": summary(none), "shared": summary(shared), "shared_tokens": n_shared,
                         "ratio_p50": statistics.median(shared) / statistics.median(none)}
        print(f"ttft_probe: {args.prompt_tokens}-token prompts, TTFT p50 {out['prefix']['none']['p50_ms']:.0f} ms "
              f"with no shared prefix, {out['prefix']['shared']['p50_ms']:.0f} ms with {n_shared} shared: "
              f"ratio {out['prefix']['ratio_p50']:.2f}", file=sys.stderr)
    if args.only in (None, "long"):
        res = [ttft(args.url, args.model, tokens(args.long_tokens), args.max_tokens, args.timeout)
               for _ in range(args.long_requests)]
        out["long"] = summary([r[0] for r in res])
        out["long"]["prompt_tokens"] = res[0][1]
        print(f"ttft_probe: {args.long_tokens}-token prompt TTFT p50 {out['long']['p50_ms']:.0f} ms",
              file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
