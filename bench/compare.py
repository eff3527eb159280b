#!/usr/bin/env python3
"""Prints the engine-vs-transformers comparison from a results folder that
bench/engine-vs-hf.sh filled ({engine,engine-bf16,hf}-{mix,b1,b16}.json from
steward-loadgen, hw.json from hw_probe.py, *-ttft.json from ttft_probe.py,
the engine's /metrics around each run), and writes summary.json there.

The decode step is read two ways: from outside, the median time per output
token (TPOT: (e2e - TTFT) / (tokens - 1)) of the b1 run (one stream) and of
the b16 run (16 streams of equal length started together); and from inside,
the engine's own step histograms (steward_engine_step_duration_seconds and
steward_engine_step_phase_seconds), differenced between the snapshots taken
before and after each run: mean and median of its decode-only steps, and how
much of a step went to scheduling, the forward pass and sampling.

    python3 bench/compare.py target/bench/<run>
"""
import json
import os
import re
import sys

SIDES = ("engine", "engine-bf16", "hf")
RUNS = ("mix", "b1", "b16")


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


LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+([^\s]+)')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(path):
    """Prometheus text -> list of (name, labels dict, value)."""
    out = []
    try:
        with open(path) as f:
            for line in f:
                m = LINE.match(line)
                if not m or line.startswith("#"):
                    continue
                labels = dict(LABEL.findall(m.group(3) or ""))
                try:
                    out.append((m.group(1), labels, float(m.group(4))))
                except ValueError:
                    pass
    except OSError:
        return None
    return out


def hist(samples, name, **match):
    """(sum, count, [(le, cumulative count)]) of one histogram series."""
    if samples is None:
        return None
    s = c = 0.0
    buckets = {}
    for n, labels, v in samples:
        if any(labels.get(k) != want for k, want in match.items()):
            continue
        if n == name + "_sum":
            s += v
        elif n == name + "_count":
            c += v
        elif n == name + "_bucket":
            le = float(labels["le"].replace("+Inf", "inf"))
            buckets[le] = buckets.get(le, 0.0) + v
    return s, c, sorted(buckets.items())


def hist_delta(before, after, name, **match):
    """Mean and median (from buckets, linear inside one) between two snapshots."""
    a = hist(after, name, **match)
    if a is None:
        return None
    b = hist(before, name, **match) or (0.0, 0.0, [])
    bmap = dict(b[2])
    count = a[1] - b[1]
    if count <= 0:
        return None
    cum = [(le, v - bmap.get(le, 0.0)) for le, v in a[2]]
    half, prev_le, prev_c, p50 = count / 2, 0.0, 0.0, None
    for le, c in cum:
        if c >= half:
            if le == float("inf"):
                p50 = prev_le
            else:
                p50 = prev_le + (le - prev_le) * ((half - prev_c) / (c - prev_c) if c > prev_c else 1.0)
            break
        prev_le, prev_c = le, c
    return {"count": count, "mean_ms": (a[0] - b[0]) / count * 1e3,
            "p50_ms": p50 * 1e3 if p50 is not None else None}


def step_stats(out, side, run):
    before = parse_metrics(os.path.join(out, f"{side}-metrics-{run}-before.txt"))
    after = parse_metrics(os.path.join(out, f"{side}-metrics-{run}-after.txt"))
    if after is None:
        return None
    res = {}
    for kind in ("decode", "prefill", "mixed"):
        d = hist_delta(before, after, "steward_engine_step_duration_seconds", kind=kind)
        if d:
            res[f"step_{kind}"] = d
    for phase in ("schedule", "decode", "sample"):
        d = hist_delta(before, after, "steward_engine_step_phase_seconds", phase=phase)
        if d:
            res[f"phase_{phase}"] = d
    tok = hist_delta(before, after, "steward_engine_step_tokens")
    if tok:
        res["tokens_per_step_mean"] = tok["mean_ms"] / 1e3
    return res


def metric_value(samples, name):
    for n, _, v in samples or []:
        if n == name:
            return v
    return None


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "."
    runs = {(s, r): load(os.path.join(out, f"{s}-{r}.json")) for s in SIDES for r in RUNS}
    sides = [s for s in SIDES if any(runs[(s, r)] for r in RUNS)]
    hw = load(os.path.join(out, "hw.json"))
    ttft = {s: load(os.path.join(out, f"{s}-ttft.json")) for s in SIDES}

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
    summary = {"rows": {}, "bounds": {}, "steps": {}, "ttft": {}, "cold_start": {}}
    head = "".join(f"{s:>12}" for s in sides)
    print(f"{'':32}{head} {'engine/hf':>10}")
    for name, (run, *keys), better in rows:
        vals = {s: get(runs[(s, run)], *keys) for s in sides}
        r = ratio(vals.get("engine"), vals.get("hf"))
        summary["rows"][name] = dict(vals, engine_over_hf=r, better=better)
        print(f"{name:32}" + "".join(f"{fmt(vals[s]):>12}" for s in sides) + f" {fmt(r, 'x'):>10}")

    # TTFT: shared prefix vs none, and a 2048-token prompt.
    for s in sides:
        t = ttft.get(s)
        if t:
            summary["ttft"][s] = {
                "prefix_none_p50_ms": get(t, "prefix", "none", "p50_ms"),
                "prefix_shared_p50_ms": get(t, "prefix", "shared", "p50_ms"),
                "prefix_ratio": get(t, "prefix", "ratio_p50"),
                "long_p50_ms": get(t, "long", "p50_ms"),
                "long_prompt_tokens": get(t, "long", "prompt_tokens"),
            }
    if summary["ttft"]:
        print()
        print(f"{'TTFT (one request at a time)':32} {'no prefix':>10} {'90% shared':>10} {'ratio':>8} "
              f"{'2048-token':>11}")
        for s, t in summary["ttft"].items():
            print(f"{s:32} {fmt(t['prefix_none_p50_ms']):>10} {fmt(t['prefix_shared_p50_ms']):>10} "
                  f"{fmt(t['prefix_ratio'], 'x'):>8} {fmt(t['long_p50_ms']):>11}")

    # Cold start and the engine's own step histograms.
    for s in sides:
        if not s.startswith("engine"):
            continue
        m = parse_metrics(os.path.join(out, f"{s}-metrics.txt"))
        cs = load(os.path.join(out, f"{s}-coldstart.json")) or {}
        summary["cold_start"][s] = {
            "spawn_to_ready_ms": cs.get("spawn_to_ready_ms"),
            "load_s": metric_value(m, "steward_engine_cold_start_load_seconds"),
            "warmup_s": metric_value(m, "steward_engine_cold_start_warmup_seconds"),
            "startup_s": metric_value(m, "steward_engine_cold_start_seconds"),
        }
        summary["steps"][s] = {r: step_stats(out, s, r) for r in RUNS}
    if summary["cold_start"]:
        print()
        for s, c in summary["cold_start"].items():
            print(f"cold start {s}: spawn to ready {fmt(c['spawn_to_ready_ms'])} ms (engine's own: load "
                  f"{fmt(c['load_s'])} s, warm-up {fmt(c['warmup_s'])} s, process start to ready "
                  f"{fmt(c['startup_s'])} s)")
        print(f"{'engine step histograms':32} {'decode step':>12} {'p50':>8} {'forward':>8} {'schedule':>9} "
              f"{'sample':>8} {'tok/step':>9}")
        for s, per in summary["steps"].items():
            for r, st in per.items():
                if not st:
                    continue
                print(f"{s + ' ' + r:32} {fmt(get(st, 'step_decode', 'mean_ms')):>12} "
                      f"{fmt(get(st, 'step_decode', 'p50_ms')):>8} {fmt(get(st, 'phase_decode', 'mean_ms')):>8} "
                      f"{fmt(get(st, 'phase_schedule', 'mean_ms')):>9} {fmt(get(st, 'phase_sample', 'mean_ms')):>8} "
                      f"{fmt(st.get('tokens_per_step_mean')):>9}")

    if hw:
        bw = hw["bandwidth"]
        mm = hw["matmul_gflops"]
        print()
        dev = hw["machine"].get("gpu") or hw["machine"]["cpu"]
        print(f"machine: {dev}, torch {hw['machine']['torch']}, {hw['machine']['threads']} threads; "
              f"bandwidth copy {bw['copy_gbs']:.1f} GB/s, triad {bw['triad_gbs']:.1f} GB/s, read {bw.get('read_gbs', 0):.1f} GB/s; "
              f"fp32 matmul peak {mm['peak']:.0f} GFLOP/s, bf16 {mm.get('peak_bf16', 0):.0f}")
        print(f"model: {hw['model']['params_per_step'] / 1e6:.1f}M params read per decode step "
              f"({hw['model']['weight_bytes_per_step'] / 1e6:.0f} MB)")
        print(f"{'decode step vs bound (TPOT p50)':32} {'f32 bound':>9} {'bf16 bnd':>9} {'engine':>8} {'/f32':>6} "
              f"{'eng-bf16':>9} {'/f32':>6} {'/bf16':>6} {'hf':>8} {'/f32':>6}")
        for b, run in (("batch1", "b1"), ("batch16", "b16")):
            d = hw["decode_step"][b]
            bound = d["bound_ms"]
            bound16 = get(d, "bf16", "bound_ms")
            e = get(runs[("engine", run)], "report", "tpot_ms", "p50")
            e16 = get(runs[("engine-bf16", run)], "report", "tpot_ms", "p50")
            h = get(runs[("hf", run)], "report", "tpot_ms", "p50")
            inside = get(summary["steps"], "engine", run, "step_decode", "p50_ms")
            inside16 = get(summary["steps"], "engine-bf16", run, "step_decode", "p50_ms")
            summary["bounds"][b] = {
                "bound_ms": bound, "bound_bf16_ms": bound16, "engine_ms": e, "engine_bf16_ms": e16, "hf_ms": h,
                "engine_step_p50_ms": inside, "engine_bf16_step_p50_ms": inside16,
                "engine_over_bound": ratio(e, bound), "engine_bf16_over_bound": ratio(e16, bound),
                "engine_bf16_over_bf16_bound": ratio(e16, bound16), "hf_over_bound": ratio(h, bound),
                "limited_by": "memory" if d["memory_ms"] >= d["compute_ms"] else "compute",
                "torch_linears_ms": d["torch_linears_ms"],
            }
            print(f"{b:32} {fmt(bound):>9} {fmt(bound16):>9} {fmt(e):>8} {fmt(ratio(e, bound), 'x'):>6} "
                  f"{fmt(e16):>9} {fmt(ratio(e16, bound), 'x'):>6} {fmt(ratio(e16, bound16), 'x'):>6} "
                  f"{fmt(h):>8} {fmt(ratio(h, bound), 'x'):>6}")
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
