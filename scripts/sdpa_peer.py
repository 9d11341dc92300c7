#!/usr/bin/env python3
"""The peer for the GQA path: PyTorch's scaled_dot_product_attention timed on the shapes that
`gqla bench decode` times (bf16, keys [k_g; k^R] of width d_n + d_r, values d_v, G kv heads,
enable_gqa), with CUDA events. Prints a markdown table.

The rope key is already joined to each group's key here (the per-group layout), which SDPA needs;
that reads G·d_r more bytes per token than the rope-once layout, and the table counts the bytes
SDPA actually reads. No causal mask: for s_q = 2 the bottom-right mask hides one key of one row,
and a mask would send SDPA to a slower backend.
"""
import math

import torch
import torch.nn.functional as F

GEOMETRIES = {"llama3-8b-gqla": (32, 8, 128, 64, 128), "deepseek-v3-gqla": (128, 8, 128, 64, 128)}


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


def main():
    dev = torch.device("cuda")
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}\n")
    print("Times: median of event-timed runs on a cold L2 (p10–p90 beside it), as `gqla bench decode`.\n")
    print("| geometry | path | s_q | batch | context | time (µs) | p10–p90 (µs) | GB/s | TFLOP/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, (h, g, dn, dr, dv) in GEOMETRIES.items():
        for batch in (1, 16, 64, 128):
            for ctx in (1024, 4096, 16384, 65536):
                k = torch.randn(batch, g, ctx, dn + dr, device=dev, dtype=torch.bfloat16)
                v = torch.randn(batch, g, ctx, dv, device=dev, dtype=torch.bfloat16)
                for sq in (1, 2):
                    q = torch.randn(batch, h, sq, dn + dr, device=dev, dtype=torch.bfloat16)
                    scale = (dn + dr) ** -0.5
                    ms, p10, p90 = time_ms(lambda: F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=True))
                    nbytes = 2 * (k.numel() + v.numel() + q.numel() + batch * h * sq * dv)
                    flops = 2 * batch * h * sq * ctx * (dn + dr + dv)
                    print(f"| {name} | sdpa | {sq} | {batch} | {ctx} | {ms * 1e3:.1f} | {p10 * 1e3:.1f}–{p90 * 1e3:.1f} | {nbytes / ms / 1e6:.0f} | {flops / ms / 1e9:.2f} |")
                del k, v
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
