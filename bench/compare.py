#!/usr/bin/env python3
"""Prints the engine-vs-transformers comparison from a results folder that
bench/engine-vs-hf.sh filled ({engine,hf}-{mix,b1,b16}.json from
steward-loadgen, hw.json from hw_probe.py), and writes summary.json there.

The decode step time is read from outside: the median time per output token
(TPOT: (e2e - TTFT) / (tokens - 1), robust to servers that put several
tokens in one event) of the b1 run (one stream) and of the b16 run (16
streams of equal length started together, so one batch of 16 while they all
run).

    python3 bench/compare.py target/bench/<run>
"""
import json
import os
import sys


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def get(doc, *keys):
    for k in keys:
        if doc is None:
            return None
        doc = doc.get(k) if isinstance(doc, dict) else None
    return doc


def fmt(v, unit=""):
    if v is None:
        return "-"
    if isinstance(v, int):
        return f"{v}{unit}"
    if abs(v) >= 100:
        return f"{v:.0f}{unit}"
    return f"{v:.1f}{unit}" if abs(v) >= 10 else f"{v:.2f}{unit}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "."
    runs = {(s, r): load(os.path.join(out, f"{s}-{r}.json")) for s in ("engine", "hf") for r in ("mix", "b1", "b16")}
    hw = load(os.path.join(out, "hw.json"))

    rows = [
        ("output tok/s (c16 mix)", ("mix", "report", "output_tokens_per_s"), "higher"),
        ("requests/s (c16 mix)", ("mix", "report", "requests_per_s"), "higher"),
        ("TTFT p50 ms", ("mix", "report", "ttft_ms", "p50"), "lower"),
        ("TTFT p99 ms", ("mix", "report", "ttft_ms", "p99"), "lower"),
        ("ITL p50 ms", ("mix", "report", "itl_ms", "p50"), "lower"),
        ("ITL p99 ms", ("mix", "report", "itl_ms", "p99"), "lower"),
        ("e2e p50 ms", ("mix", "report", "e2e_ms", "p50"), "lower"),
        ("e2e p99 ms", ("mix", "report", "e2e_ms", "p99"), "lower"),
        ("failed requests (mix)", ("mix", "report", "failed"), "lower"),
        ("decode step b1 ms (TPOT p50)", ("b1", "report", "tpot_ms", "p50"), "lower"),
        ("decode step b16 ms (TPOT p50)", ("b16", "report", "tpot_ms", "p50"), "lower"),
        ("ITL p99 ms b16", ("b16", "report", "itl_ms", "p99"), "lower"),
        ("tok/s b16 (16 x 64 tokens)", ("b16", "report", "output_tokens_per_s"), "higher"),
    ]
    summary = {"rows": {}, "bounds": {}}
    print(f"{'':32} {'engine':>10} {'hf':>10} {'engine/hf':>10}")
    for name, (run, *keys), better in rows:
        e = get(runs[("engine", run)], *keys)
        h = get(runs[("hf", run)], *keys)
        r = ratio(e, h)
        summary["rows"][name] = {"engine": e, "hf": h, "engine_over_hf": r, "better": better}
        print(f"{name:32} {fmt(e):>10} {fmt(h):>10} {fmt(r, 'x'):>10}")

    if hw:
        bw = hw["bandwidth"]
        mm = hw["matmul_gflops"]
        print()
        print(f"machine: {hw['machine']['cpu']}, torch {hw['machine']['torch']}, {hw['machine']['threads']} threads; "
              f"bandwidth copy {bw['copy_gbs']:.1f} GB/s, triad {bw['triad_gbs']:.1f} GB/s; "
              f"fp32 matmul peak {mm['peak']:.0f} GFLOP/s")
        print(f"model: {hw['model']['params_per_step'] / 1e6:.1f}M params read per decode step "
              f"({hw['model']['weight_bytes_per_step'] / 1e6:.0f} MB)")
        print(f"{'decode step vs bound':32} {'bound ms':>10} {'engine ms':>10} {'engine/bound':>12} {'hf ms':>10} {'hf/bound':>10}")
        for b, run in (("batch1", "b1"), ("batch16", "b16")):
            bound = hw["decode_step"][b]["bound_ms"]
            e = get(runs[("engine", run)], "report", "tpot_ms", "p50")
            h = get(runs[("hf", run)], "report", "tpot_ms", "p50")
            summary["bounds"][b] = {"bound_ms": bound, "engine_ms": e, "hf_ms": h,
                                    "engine_over_bound": ratio(e, bound), "hf_over_bound": ratio(h, bound),
                                    "limited_by": "memory" if hw["decode_step"][b]["memory_ms"] >= hw["decode_step"][b]["compute_ms"] else "compute",
                                    "torch_linears_ms": hw["decode_step"][b]["torch_linears_ms"]}
            print(f"{b:32} {fmt(bound):>10} {fmt(e):>10} {fmt(ratio(e, bound), 'x'):>12} {fmt(h):>10} "
                  f"{fmt(ratio(h, bound), 'x'):>10}")
    try:
        with open(os.path.join(out, "loadavg.txt")) as f:
            loadavg = f.read().strip().replace("\n", "; ")
        print(f"load average (1/5/15 min) {loadavg}")
        summary["loadavg"] = loadavg
    except OSError:
        pass
    summary["hw"] = hw
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
