#!/usr/bin/env python3
"""Measures what this CPU can do in libtorch and the decode-step bound that
implies for a model.

Memory bandwidth: best of several passes of a large copy (`b.copy_(a)`,
2 x size bytes moved), a STREAM-style triad (`a = b + s*c`, 3 x size) and a
read-only sum (`a.sum()`, 1 x size: what a decode step does to its weights),
with buffers far larger than the last-level cache; the bound takes the best. Matmul: fp32 GEMM FLOP/s
for a large square product (the machine's achievable peak) and for the
shapes a decode step multiplies at batch 1 and 16 (the model's own layers).

The bound for one decode step of a model at batch B is
max(weight bytes / bandwidth, 2 x params x B / FLOP/s): every weight is read
once per step (batch 1 is bandwidth-bound), and every weight does one
multiply-add per sequence. KV-cache reads for --context tokens per sequence
are added to the bytes. Embedding rows are not counted (one row per token).

The same bound is also given for bf16 weights (half the bytes, bf16 GEMM
rate), the engine's `--dtype bf16`. `--device cuda` measures a GPU instead.

    $STEWARD_PYTHON bench/hw_probe.py --model DIR [--threads 2] [--device cuda] [--json FILE]
"""
import argparse
import json
import os
import platform
import time

import torch


DEV = "cpu"


def sync():
    if DEV != "cpu":
        torch.cuda.synchronize()


def best_time(fn, reps):
    fn()  # warm-up: page faults and allocator first touch
    sync()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def bandwidth(mib, reps):
    n = mib * 1024 * 1024 // 4
    a = torch.rand(n, device=DEV)
    b = torch.empty(n, device=DEV)
    c = torch.rand(n, device=DEV)
    t_copy = best_time(lambda: b.copy_(a), reps)
    t_triad = best_time(lambda: torch.add(b, c, alpha=1.5, out=a), reps)
    # Read-only, as a decode step reads its weights (no stores).
    t_read = best_time(lambda: a.sum(), reps)
    size = n * 4
    return {
        "buffer_mib": mib,
        "copy_gbs": 2 * size / t_copy / 1e9,
        "triad_gbs": 3 * size / t_triad / 1e9,
        "read_gbs": size / t_read / 1e9,
    }


def gemm_flops(m, k, n, reps, dtype=torch.float32):
    a = torch.rand(m, k, device=DEV).to(dtype)
    w = torch.rand(n, k, device=DEV).to(dtype)
    out = torch.empty(m, n, device=DEV, dtype=dtype)
    t = best_time(lambda: torch.matmul(a, w.t(), out=out), reps)
    return 2 * m * k * n / t


def model_shape(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    h, i, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    heads = cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads") or heads
    hd = cfg.get("head_dim") or h // heads
    vocab = cfg["vocab_size"]
    dtype_bytes = {"float32": 4, "bfloat16": 2, "float16": 2}.get(cfg.get("torch_dtype", "float32"), 4)
    attn = h * heads * hd + 2 * h * kv * hd + heads * hd * h
    mlp = 3 * h * i
    per_layer = attn + mlp + 2 * h
    params_step = layers * per_layer + h + vocab * h  # + final norm + lm_head
    return {
        "hidden": h, "intermediate": i, "layers": layers, "heads": heads, "kv_heads": kv,
        "head_dim": hd, "vocab": vocab, "dtype_bytes": dtype_bytes,
        "params_per_step": params_step,
        "weight_bytes_per_step": params_step * dtype_bytes,
        "kv_bytes_per_token": 2 * layers * kv * hd * dtype_bytes,
        # the layer GEMMs of one step: (k, n) pairs
        "linears": [(h, heads * hd), (h, kv * hd), (h, kv * hd), (heads * hd, h), (h, i), (h, i), (i, h)] * layers
        + [(h, vocab)],
    }


def step_gemm_time(shape, batch, reps):
    """Times the model's own linear layers at this batch, as torch runs them."""
    ws = [torch.rand(n, k, device=DEV) for k, n in shape["linears"]]
    xs = {k: torch.rand(batch, k, device=DEV) for k, _ in shape["linears"]}

    def run():
        for w in ws:
            torch.matmul(xs[w.shape[1]], w.t())

    return best_time(run, reps)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model directory (config.json)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--buffer-mib", type=int, default=512, help="bandwidth buffer size (>> L3)")
    ap.add_argument("--context", type=int, default=128, help="tokens of KV cache read per sequence per step")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    global DEV
    DEV = args.device

    bw = bandwidth(args.buffer_mib, args.reps)
    bw_best = max(bw["copy_gbs"], bw["triad_gbs"], bw["read_gbs"]) * 1e9
    big = 2048 if DEV == "cpu" else 8192
    peak = gemm_flops(big, big, big, 3)
    peak_bf16 = gemm_flops(big, big, big, 3, torch.bfloat16)
    shape = model_shape(args.model)
    h, i = shape["hidden"], shape["intermediate"]
    flops_b1 = gemm_flops(1, h, i, 50)
    flops_b16 = gemm_flops(16, h, i, 50)
    # A bound must not be beaten: take the best rate any shape reached.
    peak = max(peak, flops_b1, flops_b16)
    peak_bf16 = max(peak_bf16, gemm_flops(16, h, i, 50, torch.bfloat16))

    bounds = {}
    for b in (1, 16):
        nbytes = shape["weight_bytes_per_step"] + b * args.context * shape["kv_bytes_per_token"]
        flops = 2 * shape["params_per_step"] * b
        t_mem = nbytes / bw_best
        t_cmp = flops / peak
        bounds[f"batch{b}"] = {
            "bytes": nbytes, "flops": flops,
            "memory_ms": t_mem * 1e3, "compute_ms": t_cmp * 1e3,
            "bound_ms": max(t_mem, t_cmp) * 1e3,
            "bound_tokens_per_s": b / max(t_mem, t_cmp),
            "torch_linears_ms": step_gemm_time(shape, b, 5) * 1e3,
        }
        # bf16 weights and KV: half the bytes, the bf16 GEMM rate.
        t_mem16 = (nbytes * 2 / shape["dtype_bytes"]) / bw_best
        t_cmp16 = flops / peak_bf16
        bounds[f"batch{b}"]["bf16"] = {
            "memory_ms": t_mem16 * 1e3, "compute_ms": t_cmp16 * 1e3, "bound_ms": max(t_mem16, t_cmp16) * 1e3,
        }

    out = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "device": DEV,
        },
        "bandwidth": bw,
        "matmul_gflops": {"peak": peak / 1e9, "peak_bf16": peak_bf16 / 1e9, f"decode_b1_{h}x{i}": flops_b1 / 1e9,
                          f"decode_b16_{h}x{i}": flops_b16 / 1e9},
        "model": {k: v for k, v in shape.items() if k != "linears"},
        "context_tokens": args.context,
        "decode_step": bounds,
    }
    if DEV != "cpu":
        out["machine"]["gpu"] = torch.cuda.get_device_name(0)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    out["machine"]["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    print(f"hw_probe: {out['machine'].get('gpu', out['machine']['cpu'])}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"  bandwidth: copy {bw['copy_gbs']:.1f} GB/s, triad {bw['triad_gbs']:.1f} GB/s, read {bw['read_gbs']:.1f} GB/s ({args.buffer_mib} MiB buffers)")
    print(f"  matmul bf16 peak {peak_bf16 / 1e9:.1f} GFLOP/s; fp32: peak {peak / 1e9:.1f} GFLOP/s, {flops_b1 / 1e9:.1f} at 1x{h}x{i}, "
          f"{flops_b16 / 1e9:.1f} at 16x{h}x{i}")
    print(f"  model: {shape['params_per_step'] / 1e6:.1f}M params read per step, "
          f"{shape['weight_bytes_per_step'] / 1e6:.0f} MB")
    for k, v in bounds.items():
        print(f"  decode step {k}: bound {v['bound_ms']:.2f} ms (memory {v['memory_ms']:.2f}, compute "
              f"{v['compute_ms']:.2f}) = {v['bound_tokens_per_s']:.0f} tok/s; torch linears alone "
              f"{v['torch_linears_ms']:.2f} ms; with bf16 weights {v['bf16']['bound_ms']:.2f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
