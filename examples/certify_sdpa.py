#!/usr/bin/env python3
"""Certify PyTorch's scaled_dot_product_attention as a decode kernel, in process, with the
`gqla` package (pip install ./python).

    python examples/certify_sdpa.py [--native] [--device cuda] [--seed S | --seeds N] [--out DIR]
    python examples/certify_sdpa.py --pack PACK --outputs DIR   # over a vector pack instead

The adapter is `case.dense()` (each sequence's keys and values, padded, with the bottom-right
causal mask) handed to SDPA, GQA through enable_gqa: on the absorb path one KV head whose key is
[c; k^R] and value c. By default SDPA runs in f32; --native runs it in the case's storage dtype,
as a serving stack would. The honest profile:
- SDPA returns no LSE, so none is declared (the certificate covers `out` alone);
- a row that sees no key gets NaN from SDPA: its output is declared unspecified;
- SDPA does not split the KV range, so requested split counts are declared ignored.
"""
import argparse
import functools
import sys

import torch
import torch.nn.functional as F

import gqla

PROFILE = {
    "operations": ["gqla.decode.absorb", "gqla.decode.gqa", "gqa.decode"],
    "dtypes": ["f32", "bf16", "f16"],
    "contiguous": True,
    "page_sizes": "any",
    "s_q": {"min": 1, "max": 64},
    "split_counts": "ignored",
    "rope_layouts": ["once", "per_group"],
    "scale": "input",
    "out_empty_row": "unspecified",
    "lse": "none",
}


def sdpa(case, device, native):
    d = case.dense()  # q [B, s_q, H, W], k/v [B, N, K, .], mask [B, 1, s_q, N]
    dtype = None if native else torch.float32
    q, k, v = (gqla.torch_tensor(x, device).to(dtype).transpose(1, 2) for x in (d.q, d.k, d.v))
    mask = torch.from_numpy(d.mask).to(device)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=d.scale, enable_gqa=True)
    return {"out": o.transpose(1, 2)}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--native", action="store_true")
    a, rest = ap.parse_known_args()
    device = torch.device(a.device)
    sys.exit(gqla.main(
        functools.partial(sdpa, device=device, native=a.native),
        PROFILE,
        name="torch-sdpa-" + ("native" if a.native else "f32"),
        version=torch.__version__,
        description=f"torch.nn.functional.scaled_dot_product_attention on {device}, "
        + ("in the case dtype" if a.native else "in f32") + " (examples/certify_sdpa.py)",
        environment={
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        },
        argv=rest,
    ))
