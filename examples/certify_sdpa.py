#!/usr/bin/env python3
"""Certify PyTorch's scaled_dot_product_attention as a `gqla.decode.gqa` and `gqa.decode` kernel.

    gqla vectors export --out pack --filter gqla.decode.gqa --filter gqa.decode
    python examples/certify_sdpa.py pack outputs [--device cuda] [--native]
    gqla certify --kernel external:pack --outputs outputs

The adapter only converts layouts: for every case its profile selects it gathers each sequence's
cache rows (through the block table when paged), joins the rope key to each group's key, builds
the bottom-right causal mask, and calls SDPA (GQA via enable_gqa). It writes
NNNNN.outputs.safetensors with `out` [B, s_q, H, d_v] and kernel.json with the honest profile:

- SDPA returns no LSE, so none is declared (the certificate covers `out` alone);
- a padding row (no keys) cannot be given to SDPA, so its output is declared unspecified;
- SDPA does not split the KV range, so requested split counts are declared ignored.

By default SDPA runs in f32 on the CPU. --device picks the torch device; --native runs SDPA in the
case's storage dtype (bf16, f16 or f32), as a serving stack would, instead of upcasting to f32.
"""
import argparse
import json
import math
import os

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

PROFILE = {
    "operations": ["gqla.decode.gqa", "gqa.decode"],
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


def rows(t, name, b, n, page):
    """The first n cache rows of sequence b, [n, width]."""
    cache = t[name]
    if page is not None:
        pages = t["block_table"][b, : math.ceil(n / page)].long().to(cache.device)
        return cache[pages].reshape(-1, cache.shape[-1])[:n]
    return cache[b, :n]


def run_case(t, p, device, native):
    op, h, g, sq, page = p["operation"], p["heads"], p["groups"], p["s_q"], p["page_size"]
    dtype = t["q"].dtype if native else torch.float32
    t = {k: (x.to(device, dtype) if x.is_floating_point() and k != "scale" else x.to(device)) for k, x in t.items()}
    q = t["q"]
    batch = q.shape[0]
    dv = p["d_v"]
    out = torch.zeros(batch, sq, h, dv, device=device)
    for b, n in enumerate(p["seq_lens"]):
        if n == 0:
            continue  # a padding row: declared unspecified
        if op == "gqa.decode":
            k = rows(t, "k", b, n, page).view(n, g, p["d_n"])
        elif p["rope_layout"] == "once":
            k_nope = rows(t, "k_nope", b, n, page).view(n, g, p["d_n"])
            k_rope = rows(t, "k_rope", b, n, page).view(n, 1, p["d_r"]).expand(n, g, p["d_r"])
            k = torch.cat([k_nope, k_rope], dim=-1)
        else:
            k = rows(t, "k", b, n, page).view(n, g, p["d_n"] + p["d_r"])
        v = rows(t, "v", b, n, page).view(n, g, dv)
        qb = q[b].permute(1, 0, 2).unsqueeze(0)  # [1, H, sq, D]
        kb, vb = k.permute(1, 0, 2).unsqueeze(0), v.permute(1, 0, 2).unsqueeze(0)  # [1, G, n, .]
        pos = torch.arange(n, device=device)
        mask = pos.unsqueeze(0) <= (n - sq + torch.arange(sq, device=device)).unsqueeze(1)  # bottom-right causal
        o = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, scale=float(t["scale"]), enable_gqa=True)
        out[b] = o[0].permute(1, 0, 2).float()
    return out.cpu()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("pack", help="a vector pack from `gqla vectors export`")
    ap.add_argument("outputs", help="where to write the outputs and kernel.json")
    ap.add_argument("--device", default="cpu", help="torch device (default cpu)")
    ap.add_argument("--native", action="store_true", help="run SDPA in the case's storage dtype instead of f32")
    args = ap.parse_args()
    device = torch.device(args.device)
    os.makedirs(args.outputs, exist_ok=True)
    with open(os.path.join(args.pack, "manifest.json")) as f:
        manifest = json.load(f)
    done = 0
    for case in manifest["cases"]:
        p = case["params"]
        if p["operation"] not in PROFILE["operations"]:
            continue
        t = load_file(os.path.join(args.pack, case["inputs"]))
        out = run_case(t, p, device, args.native)
        save_file({"out": out.contiguous()}, os.path.join(args.outputs, case["outputs"]))
        done += 1
    kernel = {
        "name": "torch-sdpa" + ("-native" if args.native else "-f32"),
        "version": torch.__version__,
        "description": "torch.nn.functional.scaled_dot_product_attention, "
        + ("in the case dtype" if args.native else "f32")
        + ", per sequence (examples/certify_sdpa.py)",
        "environment": {
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        },
        "profile": PROFILE,
    }
    with open(os.path.join(args.outputs, "kernel.json"), "w") as f:
        json.dump(kernel, f, indent=2)
    print(f"wrote outputs for {done} cases")


if __name__ == "__main__":
    main()
