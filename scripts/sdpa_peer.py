#!/usr/bin/env python3
"""The peer for the GQA path: PyTorch's scaled_dot_product_attention timed on the shapes that
`gqla bench decode` times (bf16, keys [k_g; k^R] of width d_n + d_r, values d_v, G kv heads,
enable_gqa), with CUDA events. Prints a markdown table.

The rope key is already joined to each group's key here (the per-group layout), which SDPA needs;
that reads G·d_r more bytes per token than the rope-once layout, and the table counts the bytes
SDPA actually reads. No causal mask: for s_q = 2 the bottom-right mask hides one key of one row,
and a mask would send SDPA to a slower backend.

    python3 scripts/sdpa_peer.py                                   # the benchmark's full grid
    python3 scripts/sdpa_peer.py --batch 64 --context 4096,32768   # some of its points
    python3 scripts/sdpa_peer.py --device cpu --batch 2 --context 256 --geometry tiny  # a dry run
"""
import argparse
import math
import time

import torch
import torch.nn.functional as F

GEOMETRIES = {
    "llama3-8b-gqla": (32, 8, 128, 64, 128),
    "deepseek-v3-gqla": (128, 8, 128, 64, 128),
    # The emulator benchmark test's geometry, for dry runs on a CPU.
    "tiny": (8, 2, 16, 16, 16),
}


def time_ms_cpu(fn, budget_ms=300.0, max_reps=100):
    """The same statistics on a CPU, by wall clock (no L2 flush): for dry runs only."""
    fn()
    samples = []
    start = time.perf_counter()
    while len(samples) < 5 or (len(samples) < max_reps and (time.perf_counter() - start) * 1e3 < budget_ms):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    samples.sort()
    n = len(samples)
    return samples[n // 2], samples[max(0, math.ceil(0.1 * n) - 1)], samples[max(0, math.ceil(0.9 * n) - 1)]


def time_ms(fn, budget_ms=300.0, max_reps=100):
    """Median and 10th/90th percentile ms of `fn`, timed as `gqla bench decode` times its kernels
    (cuda_impl/src/timing.rs): before each run a buffer of max(4 x L2, 256 MiB) is zeroed to evict
    L2, each run sits between its own pair of events, at least 5 runs and at most `max_reps`."""
    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 0)
    flush = torch.empty(max(4 * l2, 256 << 20), dtype=torch.uint8, device="cuda")

    def runs(n):
        pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
        for e0, e1 in pairs:
            flush.zero_()
            e0.record()
            fn()
            e1.record()
        torch.cuda.synchronize()
        return [e0.elapsed_time(e1) for e0, e1 in pairs]

    runs(1)
    first = runs(1)[0]
    samples = sorted(runs(max(5, min(max_reps, int(budget_ms / max(first, 1e-3))))))
    n = len(samples)
    rank = lambda q: samples[min(n, max(1, math.ceil(q * n))) - 1]
    median = samples[n // 2] if n % 2 else 0.5 * (samples[n // 2 - 1] + samples[n // 2])
    return median, rank(0.1), rank(0.9)


def ints(text):
    return [int(x) for x in text.split(",")]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--geometry", default="llama3-8b-gqla,deepseek-v3-gqla", help="comma-separated: " + ", ".join(GEOMETRIES))
    ap.add_argument("--batch", type=ints, default=[1, 16, 64, 128])
    ap.add_argument("--context", type=ints, default=[1024, 4096, 16384, 65536])
    ap.add_argument("--sq", type=ints, default=[1, 2])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    a = ap.parse_args()
    names = a.geometry.split(",")
    unknown = [n for n in names if n not in GEOMETRIES]
    if unknown:
        ap.error(f"unknown geometry {unknown}: expected some of {', '.join(GEOMETRIES)}")
    dev = torch.device(a.device)
    timer = time_ms if a.device == "cuda" else time_ms_cpu
    where = torch.cuda.get_device_name() if a.device == "cuda" else "the CPU (wall clock, dry run)"
    print(f"torch {torch.__version__} on {where}\n")
    print("Times: median of event-timed runs on a cold L2 (p10–p90 beside it), as `gqla bench decode`.\n")
    print("| geometry | path | s_q | batch | context | time (µs) | p10–p90 (µs) | GB/s | TFLOP/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in names:
        h, g, dn, dr, dv = GEOMETRIES[name]
        for batch in a.batch:
            for ctx in a.context:
                k = torch.randn(batch, g, ctx, dn + dr, device=dev, dtype=torch.bfloat16)
                v = torch.randn(batch, g, ctx, dv, device=dev, dtype=torch.bfloat16)
                for sq in a.sq:
                    q = torch.randn(batch, h, sq, dn + dr, device=dev, dtype=torch.bfloat16)
                    scale = (dn + dr) ** -0.5
                    ms, p10, p90 = timer(lambda: F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=True))
                    nbytes = 2 * (k.numel() + v.numel() + q.numel() + batch * h * sq * dv)
                    flops = 2 * batch * h * sq * ctx * (dn + dr + dv)
                    print(f"| {name} | sdpa | {sq} | {batch} | {ctx} | {ms * 1e3:.1f} | {p10 * 1e3:.1f}–{p90 * 1e3:.1f} | {nbytes / ms / 1e6:.0f} | {flops / ms / 1e9:.2f} |")
                del k, v
                if a.device == "cuda":
                    torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
