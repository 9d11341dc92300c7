#!/usr/bin/env python3
"""Certify PyTorch's scaled_dot_product_attention as a `gqla.decode.gqa` kernel.

    gqla vectors export --out pack --filter gqla.decode.gqa
    python examples/certify_sdpa.py pack [--device cuda] [--native]
    gqla certify --kernel external:pack --filter gqla.decode.gqa

For every gqla.decode.gqa case of the pack it reads NNNNN.inputs.safetensors, runs SDPA per
sequence (the rope key joined to each group's key, an explicit bottom-right causal mask, GQA via
enable_gqa) and writes NNNNN.outputs.safetensors with `out` [B, s_q, H, d_v] and `lse` [B, s_q, H].
SDPA returns no LSE, so it is computed beside it; rows with no visible key get out = 0, lse = -inf
as the definition says (SDPA itself would give NaN there). SDPA does not split the KV range, so
`num_splits` (present in split-KV cases) is ignored, as the definition allows.

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


def params(case_id):
    op, rest = case_id.split(":", 1)
    kv = dict(p.split("=", 1) for p in rest.split(";"))
    return op, kv


def rows(t, name, b, n, paged, page):
    """The first n cache rows of sequence b, [n, width]."""
    cache = t[name]
    if paged:
        pages = t["block_table"][b, : math.ceil(n / page)].long().to(cache.device)
        return cache[pages].reshape(-1, cache.shape[-1])[:n]
    return cache[b, :n]


def run_case(t, kv, device, native):
    h, g, dn, dr, dv, sq = (int(kv[k]) for k in ("h", "g", "dn", "dr", "dv", "sq"))
    dtype = t["q"].dtype if native else torch.float32
    t = {k: (x.to(device, dtype) if x.is_floating_point() and k != "scale" else x.to(device)) for k, x in t.items()}
    q = t["q"]
    batch = q.shape[0]
    scale = float(t["scale"])
    lens = t["seq_lens"].tolist()
    paged = kv["page"] != "none"
    page = int(kv["page"]) if paged else 0
    out = torch.zeros(batch, sq, h, dv, device=device)
    lse = torch.full((batch, sq, h), float("-inf"), device=device)
    for b in range(batch):
        n = lens[b]
        if n == 0:
            continue
        if kv["rope"] == "once":
            k_nope = rows(t, "k_nope", b, n, paged, page).view(n, g, dn)
            k_rope = rows(t, "k_rope", b, n, paged, page).view(n, 1, dr).expand(n, g, dr)
            k = torch.cat([k_nope, k_rope], dim=-1)
        else:
            k = rows(t, "k", b, n, paged, page).view(n, g, dn + dr)
        v = rows(t, "v", b, n, paged, page).view(n, g, dv)
        qb = q[b].permute(1, 0, 2).unsqueeze(0)  # [1, H, sq, D]
        kb, vb = k.permute(1, 0, 2).unsqueeze(0), v.permute(1, 0, 2).unsqueeze(0)  # [1, G, n, .]
        pos = torch.arange(n, device=device)
        mask = pos.unsqueeze(0) <= (n - sq + torch.arange(sq, device=device)).unsqueeze(1)  # bottom-right causal
        o = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, scale=scale, enable_gqa=True).float()
        # The LSE beside it, in f32 from the same (possibly rounded) operands.
        scores = scale * qb.float() @ kb.float().repeat_interleave(h // g, dim=1).transpose(-1, -2)
        l = torch.logsumexp(scores.masked_fill(~mask, float("-inf")), dim=-1)  # [1, H, sq]
        empty = ~mask.any(dim=-1)  # queries that see no key
        o[..., empty, :] = 0.0
        out[b] = o[0].permute(1, 0, 2)
        lse[b] = l[0].permute(1, 0)
    return out.cpu(), lse.cpu()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("pack", help="a vector pack from `gqla vectors export`")
    ap.add_argument("--device", default="cpu", help="torch device (default cpu)")
    ap.add_argument("--native", action="store_true", help="run SDPA in the case's storage dtype instead of f32")
    args = ap.parse_args()
    pack, device = args.pack, torch.device(args.device)
    with open(os.path.join(pack, "manifest.json")) as f:
        manifest = json.load(f)
    done = 0
    for case in manifest["cases"]:
        op, kv = params(case["id"])
        if op != "gqla.decode.gqa":
            continue
        t = load_file(os.path.join(pack, case["inputs"]))
        out, lse = run_case(t, kv, device, args.native)
        save_file({"out": out.contiguous(), "lse": lse.contiguous()}, os.path.join(pack, case["outputs"]))
        done += 1
    # Name the kernel in the certificate (optional; without it the pack's path is used).
    kernel = {
        "name": "torch-sdpa",
        "version": torch.__version__,
        "description": "torch.nn.functional.scaled_dot_product_attention, "
        + ("in the case dtype" if args.native else "f32")
        + ", per sequence (examples/certify_sdpa.py)",
        "environment": {
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        },
    }
    with open(os.path.join(pack, "kernel.json"), "w") as f:
        json.dump(kernel, f, indent=2)
    print(f"wrote outputs for {done} gqla.decode.gqa cases")


if __name__ == "__main__":
    main()
